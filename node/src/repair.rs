//! `quorrent repair`: rebuilds the state file from the files the node has,
//! for when `state.json` is damaged (or lists data that has gone).
//!
//! What it looks at: the manifests of owned files (`HOME/manifests/ID`)
//! and, in every data folder, the files themselves and the downloads in
//! progress (`DIR/.quorrent/ID.manifest` beside `ID.part`). The data
//! folders are the storage folder, the folders given on the command line
//! (where shared files live, `get -o` folders), and, when the old state
//! still reads, the folders it names. Nothing is believed unhashed: a
//! file counts as an owned, complete copy only if it hashes to its
//! manifest in full (`download::same_content`, over
//! `protocol::content::hash_file`), and a part file keeps only the chunks
//! that still match (`download::reverify`; its `.have` set is rewritten).
//! A manifest whose data is found nowhere is reported and left in place.
//!
//! The whole rebuild holds the state lock, so other commands of the home
//! wait for it (up to `state::LOCK_WAIT`). A damaged state file is kept
//! as `state.json.corrupt-UNIXMS`, never deleted.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use protocol::{content::Manifest, ids::FileId, stop::Stop};

use crate::{
    download,
    home::{io, manifests_dir, HomeError},
    state::{FileRecord, State, StateFile, LOCK_WAIT},
    store::HaveBits,
};

/// One file of the rebuilt state.
#[derive(Debug, Clone)]
pub struct Found {
    pub id: FileId,
    pub record: FileRecord,
    /// Chunks verified, and in all.
    pub have: u32,
    pub chunks: u32,
}

/// What `repair` did.
#[derive(Debug, Default)]
pub struct Repaired {
    /// The files now in the state, complete ones first.
    pub files: Vec<Found>,
    /// Manifests of owned files whose data was found in no folder.
    pub missing: Vec<(FileId, String)>,
    /// Manifests that could not be used, with the reason.
    pub skipped: Vec<String>,
    /// Where the damaged state file was kept, if it was damaged.
    pub kept_aside: Option<PathBuf>,
}

/// Rebuilds the state of the home `home` (`Home::dir`), looking for data
/// in the storage folder `storage`, in `folders` and in the folders the
/// old state names. (Owned values rather than a `Home`, so that it can run
/// on the blocking pool.)
pub fn repair(home: &Path, storage: &Path, folders: &[PathBuf], stop: &Stop) -> Result<Repaired, HomeError> {
    let file = StateFile::in_home(home);
    let held = file.lock(LOCK_WAIT, stop)?;
    let (old, damaged) = match file.read() {
        Ok(state) => (state, false),
        Err(HomeError::StateCorrupt { .. }) => (State::default(), true),
        Err(e) => return Err(e),
    };
    let mut out = Repaired::default();
    let owned = owned_manifests(&manifests_dir(home), &mut out.skipped)?;

    let mut dirs = vec![storage.to_owned()];
    dirs.extend(folders.iter().cloned());
    for rec in old.files.values() {
        dirs.extend(rec.partial_in.clone().or_else(|| rec.path.parent().map(Path::to_owned)));
    }
    let dirs: BTreeSet<PathBuf> = dirs.iter().filter_map(|d| std::fs::canonicalize(d).ok()).collect();
    let candidates = files_in(&dirs);

    let mut state = State::default();
    for (id, m) in owned {
        let hex = id.to_hex();
        let old_path = old.files.get(&hex).filter(|r| r.partial_in.is_none()).map(|r| &r.path);
        let found = old_path
            .into_iter()
            .chain(by_likeness(&candidates, &m))
            .find(|p| download::same_content(p, &m))
            .and_then(|p| std::fs::canonicalize(p).ok());
        let Some(path) = found else {
            out.missing.push((id, m.name));
            continue;
        };
        let record = FileRecord {
            name: m.name.clone(),
            size: m.size,
            path,
            partial_in: None,
        };
        let n = m.chunks.len() as u32;
        state.files.insert(hex, record.clone());
        out.files.push(Found {
            id,
            record,
            have: n,
            chunks: n,
        });
    }
    for dir in &dirs {
        partials_in(dir, &mut state, &mut out)?;
    }

    if damaged {
        out.kept_aside = Some(file.keep_aside(&held)?);
    }
    file.write(&held, &state)?;
    Ok(out)
}

/// The decodable manifests in `dir` (`HOME/manifests/`), by id.
fn owned_manifests(dir: &Path, skipped: &mut Vec<String>) -> Result<BTreeMap<FileId, Manifest>, HomeError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut out = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<FileId>().ok())
        else {
            continue;
        };
        match read_manifest(&path, id) {
            Ok(m) => {
                out.insert(id, m);
            }
            Err(e) => skipped.push(e),
        }
    }
    Ok(out)
}

fn read_manifest(path: &Path, id: FileId) -> Result<Manifest, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Manifest::decode_checked(&bytes, id).map_err(|e| format!("{}: {e}", path.display()))
}

/// The regular files directly in `dirs`, with their sizes.
fn files_in(dirs: &BTreeSet<PathBuf>) -> Vec<(PathBuf, u64)> {
    let entries = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten();
    entries
        .filter_map(|e| {
            let md = e.metadata().ok()?;
            md.is_file().then(|| (e.path(), md.len()))
        })
        .collect()
}

/// The candidates of the manifest's size, those of its very name first
/// (a download that found the name taken finished as `NAME (k)`).
fn by_likeness<'a>(candidates: &'a [(PathBuf, u64)], m: &Manifest) -> impl Iterator<Item = &'a PathBuf> {
    let sized: Vec<&PathBuf> = candidates
        .iter()
        .filter(|(_, len)| *len == m.size)
        .map(|(p, _)| p)
        .collect();
    let named = |p: &&PathBuf| p.file_name().is_some_and(|n| n == m.name.as_str());
    let (first, rest): (Vec<_>, Vec<_>) = sized.into_iter().partition(named);
    first.into_iter().chain(rest)
}

/// The downloads in progress in `dir/.quorrent/` whose file is not
/// already complete in `state`: the chunks of each part file that still
/// match are counted (and saved as its `.have` set).
fn partials_in(dir: &Path, state: &mut State, out: &mut Repaired) -> Result<(), HomeError> {
    let Ok(entries) = std::fs::read_dir(dir.join(".quorrent")) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".manifest"))
            .and_then(|hex| hex.parse::<FileId>().ok());
        let Some(id) = id else { continue };
        if state.files.contains_key(&id.to_hex()) {
            continue;
        }
        let m = match read_manifest(&path, id) {
            Ok(m) => m,
            Err(e) => {
                out.skipped.push(e);
                continue;
            }
        };
        let part = download::data_path(dir, &id, &m);
        let Ok(data) = crate::data::Data::open(&m, &part, false) else {
            out.skipped.push(format!("{}: no part file beside it", path.display()));
            continue;
        };
        let n = m.chunks.len() as u32;
        let have = download::reverify(&m, &data, &HaveBits::full(n));
        let have_path = download::sidecar(dir, &id, "have");
        protocol::durable::write(&have_path, &have.to_bytes(), 0o644).map_err(io(&have_path))?;
        let record = FileRecord {
            name: m.name,
            size: m.size,
            path: part,
            partial_in: Some(dir.to_owned()),
        };
        state.files.insert(id.to_hex(), record.clone());
        out.files.push(Found {
            id,
            record,
            have: have.count(),
            chunks: n,
        });
    }
    Ok(())
}
