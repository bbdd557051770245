//! The watch folder (`watch_dir` of the configuration): the daemon shares
//! every file or folder that appears in it, once it has stopped changing
//! for `watch_settle_ms`, and logs what it shared.
//!
//! The folder is polled (no notification API: it works the same on every
//! file system, network mounts included). An entry's signature is its
//! size, its number of files and its latest modification time (of the
//! file, or of anything under the folder); an entry is shared when two
//! looks at least the settle time apart see the same signature. A shared
//! entry that changes later is shared again (new bytes, a new id). Names
//! starting with `.` are skipped (editors' and downloaders' temporary
//! files). What this node already owns from the folder when the daemon
//! starts is not hashed again.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tracing::{info, warn};

use super::Daemon;

/// What is compared between two looks at an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signature {
    bytes: u64,
    files: u64,
    latest: SystemTime,
}

/// Most entries looked at under one watched folder entry; past it the
/// entry is too large to be a share anyway (see `MAX_TREE_ENTRIES`).
const MAX_ENTRIES: u64 = protocol::content::MAX_TREE_ENTRIES as u64 + 1;

fn signature(path: &Path) -> std::io::Result<Signature> {
    let md = std::fs::symlink_metadata(path)?;
    let mut sig = Signature {
        bytes: 0,
        files: 0,
        latest: md.modified()?,
    };
    if !md.is_dir() {
        sig.bytes = md.len();
        sig.files = 1;
        return Ok(sig);
    }
    let mut stack = vec![path.to_path_buf()];
    let mut seen = 0u64;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let md = e.metadata()?;
            seen += 1;
            if seen > MAX_ENTRIES {
                return Ok(sig);
            }
            sig.latest = sig.latest.max(md.modified()?);
            if md.is_dir() {
                stack.push(e.path());
            } else {
                sig.bytes += md.len();
                sig.files += 1;
            }
        }
    }
    Ok(sig)
}

/// Polls `dir` until the daemon stops.
pub async fn watch_loop(d: Arc<Daemon>, dir: PathBuf, settle: Duration) {
    let every = (settle / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
    // Entries seen changing: their last signature and since when it holds.
    let mut pending: HashMap<PathBuf, (Signature, Instant)> = HashMap::new();
    // Entries shared (or refused) with the signature they had then.
    let mut done: HashMap<PathBuf, Signature> = HashMap::new();
    let owned: Vec<PathBuf> = d
        .home
        .state()
        .map(|s| {
            s.files
                .into_values()
                .filter(|r| r.partial_in.is_none())
                .map(|r| r.path)
                .collect()
        })
        .unwrap_or_default();
    let mut first = true;
    info!(dir = %dir.display(), settle_ms = settle.as_millis() as u64, "watching a folder for files to share");
    loop {
        let entries = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || scan(&dir))
                .await
                .unwrap_or_default()
        };
        let now = Instant::now();
        let present: HashSet<&PathBuf> = entries.iter().map(|(p, _)| p).collect();
        pending.retain(|p, _| present.contains(p));
        done.retain(|p, _| present.contains(p));
        for (path, sig) in entries {
            if first && owned.contains(&path) {
                done.insert(path, sig);
                continue;
            }
            if done.get(&path) == Some(&sig) {
                continue;
            }
            match pending.get(&path) {
                Some((s, since)) if *s == sig && now.duration_since(*since) >= settle => {
                    pending.remove(&path);
                    // Refused for what it is: not again until it changes.
                    // Failed on the way (tracker, disk): again next look.
                    if share(&d, &path).await {
                        done.insert(path.clone(), sig);
                    }
                }
                Some((s, _)) if *s == sig => {}
                _ => {
                    pending.insert(path, (sig, now));
                }
            }
        }
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = d.home.stop.stopped() => return,
        }
    }
}

/// The entries of `dir` (canonical paths) with their signatures; hidden
/// names and entries that vanish while looked at are left out.
fn scan(dir: &Path) -> Vec<(PathBuf, Signature)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let path = std::fs::canonicalize(e.path()).ok()?;
            Some((path, signature(&e.path()).ok()?))
        })
        .collect()
}

/// Shares `path`; whether that is settled (shared, or refused for what
/// the entry is) rather than failed on the way (status 500 and over).
async fn share(d: &Arc<Daemon>, path: &Path) -> bool {
    let shown = path.display().to_string();
    let result = match d.inside_roots(path) {
        Ok(canonical) => d.share(&canonical).await,
        Err(r) => Err(r),
    };
    match result {
        Ok(entry) => {
            info!(
                path = %shown,
                file = %entry.id,
                name = %entry.name,
                size = entry.size,
                "watch folder: shared"
            );
            true
        }
        Err(r) => {
            warn!(path = %shown, code = r.code, "watch folder: not shared: {}", r.message);
            r.status < 500
        }
    }
}
