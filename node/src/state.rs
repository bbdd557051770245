//! The node's state file, `HOME/state.json`: the files it owns or partly
//! has, by id, and where their data is, so that `seed` can serve them.
//!
//! Several commands of one home may run at once (two `get`s, a `share`
//! beside a `seed`). So every read-modify-write holds an exclusive
//! advisory lock (`flock`) on `HOME/state.lock`, re-reads the file under
//! it, applies its change and writes the whole file back with
//! `protocol::durable::write` (unique temporary file, fsync, rename,
//! folder fsync; mode 0600): no update is lost and no reader sees a torn
//! file. A lock that cannot be had within [`LOCK_WAIT`] is an error naming
//! the lock file. Reads alone take no lock, since the file is only ever
//! replaced whole.
//!
//! A damaged file (bad JSON, truncated, empty) is never overwritten or
//! taken for an empty state: every use fails with
//! [`HomeError::StateCorrupt`], which names the file and the way out,
//! `quorrent repair` (`repair.rs`).

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions, TryLockError},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use protocol::stop::Stop;
use serde::{Deserialize, Serialize};

use crate::home::{io, HomeError};

/// How long a command waits for another one of the same home to release
/// the state lock before it gives up.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// A file this node owns or is downloading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub name: String,
    pub size: u64,
    /// Where the data is: the file itself, or the part file of a download.
    pub path: PathBuf,
    /// The download folder while the file is partial (its `.quorrent/`
    /// holds the manifest and the verified-chunk set); None when complete.
    pub partial_in: Option<PathBuf>,
}

/// The files this node owns or partly has, by file id (hex).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub files: BTreeMap<String, FileRecord>,
}

/// The state file of a home and its lock file.
#[derive(Debug, Clone)]
pub struct StateFile {
    pub path: PathBuf,
    pub lock_path: PathBuf,
}

/// The held state lock; released when dropped (the file is closed).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateFile {
    pub fn in_home(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join("state.json"),
            lock_path: dir.join("state.lock"),
        }
    }

    /// The state as last written; no file is an empty state.
    pub fn read(&self) -> Result<State, HomeError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| HomeError::StateCorrupt {
                path: self.path.clone(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(io(&self.path)(e)),
        }
    }

    /// Takes the exclusive lock, waiting at most `wait` (and not past
    /// `stop`).
    pub fn lock(&self, wait: Duration, stop: &Stop) -> Result<StateLock, HomeError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(io(&self.lock_path))?;
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(StateLock { _file: file }),
                Err(TryLockError::Error(e)) => return Err(io(&self.lock_path)(e)),
                Err(TryLockError::WouldBlock) if stop.is_stopped() => {
                    return Err(HomeError::Stopped("the state lock was free"))
                }
                Err(TryLockError::WouldBlock) if Instant::now() >= deadline => {
                    return Err(HomeError::Locked {
                        path: self.lock_path.clone(),
                        waited: wait,
                    })
                }
                // flock has no timeout: poll, backing off to 50 ms.
                Err(TryLockError::WouldBlock) => {
                    std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// Replaces the file with `state`; the lock must be held.
    pub fn write(&self, _held: &StateLock, state: &State) -> Result<(), HomeError> {
        let text = serde_json::to_vec_pretty(state).map_err(|e| io(&self.path)(e.into()))?;
        protocol::durable::write(&self.path, &text, 0o600).map_err(io(&self.path))
    }

    /// Reads the state under the lock, lets `f` change it and writes it
    /// back. A damaged file fails here and is left as it is.
    pub fn update(&self, stop: &Stop, f: impl FnOnce(&mut State)) -> Result<(), HomeError> {
        let held = self.lock(LOCK_WAIT, stop)?;
        let mut state = self.read()?;
        f(&mut state);
        self.write(&held, &state)
    }

    /// Keeps the current file as `state.json.corrupt-UNIXMS` (a second
    /// name for it: the file itself is replaced by the next write, so
    /// `state.json` is never missing); the lock must be held.
    pub fn keep_aside(&self, _held: &StateLock) -> Result<PathBuf, HomeError> {
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(format!(".corrupt-{}", protocol::unix_ms()));
        let aside = self.path.with_file_name(name);
        std::fs::hard_link(&self.path, &aside)
            .or_else(|_| std::fs::copy(&self.path, &aside).map(|_| ()))
            .map_err(io(&aside))?;
        Ok(aside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> FileRecord {
        FileRecord {
            name: name.into(),
            size: 1,
            path: PathBuf::from("/x").join(name),
            partial_in: None,
        }
    }

    #[test]
    fn a_held_lock_makes_others_wait_then_fail_naming_the_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::in_home(dir.path());
        let stop = Stop::new();
        let held = file.lock(LOCK_WAIT, &stop).unwrap();
        // flock locks belong to the open file: a second open conflicts
        // even within one process.
        let err = file.lock(Duration::from_millis(100), &stop).unwrap_err();
        assert!(matches!(err, HomeError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("state.lock"), "{err}");
        drop(held);
        file.lock(Duration::ZERO, &stop).unwrap();
    }

    #[test]
    fn a_damaged_file_is_an_error_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::in_home(dir.path());
        let stop = Stop::new();
        file.update(&stop, |s| {
            s.files.insert("a".into(), record("a"));
        })
        .unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file.path).unwrap().permissions());
        assert_eq!(mode & 0o077, 0);
        let whole = std::fs::read(&file.path).unwrap();
        for torn in [&whole[..whole.len() / 2], b"".as_slice()] {
            std::fs::write(&file.path, torn).unwrap();
            let err = file.read().unwrap_err();
            assert!(matches!(err, HomeError::StateCorrupt { .. }), "{err}");
            assert!(err.to_string().contains("state.json") && err.to_string().contains("quorrent repair"));
            assert!(file.update(&stop, |s| s.files.clear()).is_err());
            assert_eq!(std::fs::read(&file.path).unwrap(), torn);
        }
        let held = file.lock(LOCK_WAIT, &stop).unwrap();
        let aside = file.keep_aside(&held).unwrap();
        file.write(&held, &State::default()).unwrap();
        assert_eq!(std::fs::read(&aside).unwrap(), b"");
        assert_eq!(file.read().unwrap(), State::default());
    }
}
