//! The node's home folder (`--home`, `QUORRENT_HOME`, else `~/.quorrent`,
//! else `./.quorrent`): its key pair (`node.key`, `node.pem`), its session
//! (`session.json`, mode 0600), its configuration (`--config FILE`, else
//! `config.json` in the home, else the defaults, with `ca_cert` HOME/ca.pem
//! when that file exists), the manifests of the
//! files it owns (`manifests/ID`) and the state file (`state.json`, with
//! its lock `state.lock`; see `state.rs`) that lists the files it owns or
//! partly has, so that `seed` can serve them.
//!
//! Relative paths in the configuration (such as `certs/ca.pem`) are taken
//! from the current folder, as the scripts run from the repository root.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use protocol::{
    config::{ConfigError, NodeConfig},
    content::Manifest,
    ids::FileId,
    stop::Stop,
    tls::{NodeIdentity, TlsError},
    tracker_api::FileMeta,
};
use serde::{Deserialize, Serialize};

use crate::state::{FileRecord, State, StateFile};

/// Why the home could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("node key: {0}")]
    Tls(#[from] TlsError),
    #[error("{path}: unreadable: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "{path} is damaged ({message}); run `quorrent repair` to rebuild it from the files in the home \
         (it keeps the damaged file as state.json.corrupt-UNIXMS)"
    )]
    StateCorrupt { path: PathBuf, message: String },
    #[error(
        "{path}: another quorrent command of this home held the lock for {} s; try again once it ends",
        waited.as_secs()
    )]
    Locked { path: PathBuf, waited: Duration },
    #[error("stopped before {0}")]
    Stopped(&'static str),
}

impl HomeError {
    /// The stable code of this error (`--json`, scripts).
    pub fn code(&self) -> &'static str {
        match self {
            HomeError::Config(_) => "config",
            HomeError::Io { .. } | HomeError::Tls(_) | HomeError::Corrupt { .. } => "io",
            HomeError::StateCorrupt { .. } => "corrupt_state",
            HomeError::Locked { .. } => "locked",
            HomeError::Stopped(_) => "stopped",
        }
    }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A login session as stored in the home.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub user: String,
    pub token: String,
    pub expires_ms: u64,
}

/// The opened home.
pub struct Home {
    pub dir: PathBuf,
    pub config: NodeConfig,
    pub identity: NodeIdentity,
    /// The process's stop signal (set on SIGINT/SIGTERM by `main`): every
    /// wait of a command ends when it is set.
    pub stop: Stop,
}

impl Home {
    /// Opens (creating if needed, mode 0700) the home and loads the
    /// configuration and the key pair.
    pub fn open(home: Option<PathBuf>, config: Option<PathBuf>) -> Result<Home, HomeError> {
        let dir = home.unwrap_or_else(default_home);
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io(&dir))?;
        }
        let config_path = match config {
            Some(path) => Some(path),
            None if dir.join("config.json").exists() => Some(dir.join("config.json")),
            None => None,
        };
        let config = match &config_path {
            Some(path) => {
                let c: NodeConfig = protocol::config::load(path)?;
                c.validate(path)?;
                c
            }
            // With no configuration file, a CA certificate kept in the
            // home (by a link, see `link.rs`) is the one the node trusts.
            None if dir.join("ca.pem").is_file() => NodeConfig {
                ca_cert: dir.join("ca.pem"),
                ..NodeConfig::default()
            },
            None => NodeConfig::default(),
        };
        let identity = NodeIdentity::load_or_create(&dir)?;
        Ok(Home {
            dir,
            config,
            identity,
            stop: Stop::new(),
        })
    }

    /// Where downloads land unless `-o DIR` says otherwise.
    pub fn storage_dir(&self) -> PathBuf {
        self.config
            .storage_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("files"))
    }

    fn session_path(&self) -> PathBuf {
        self.dir.join("session.json")
    }

    /// The stored session, if any (expired or not).
    pub fn session(&self) -> Result<Option<Session>, HomeError> {
        read_json(&self.session_path())
    }

    /// Stores the session, readable by the owner only.
    pub fn save_session(&self, s: &Session) -> Result<(), HomeError> {
        let bytes = serde_json::to_vec(s).map_err(|e| HomeError::Corrupt {
            path: self.session_path(),
            message: e.to_string(),
        })?;
        protocol::tls::write_private(&self.session_path(), &bytes)?;
        Ok(())
    }

    pub fn clear_session(&self) -> Result<(), HomeError> {
        match std::fs::remove_file(self.session_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&self.session_path())(e)),
            _ => Ok(()),
        }
    }

    /// The state file and its lock.
    pub fn state_file(&self) -> StateFile {
        StateFile::in_home(&self.dir)
    }

    /// The files this node owns or partly has (no lock: the file is only
    /// ever replaced whole).
    pub fn state(&self) -> Result<State, HomeError> {
        self.state_file().read()
    }

    /// Reads the state under the home's lock, lets `f` change it and
    /// writes it back durably.
    pub fn update_state(&self, f: impl FnOnce(&mut State)) -> Result<(), HomeError> {
        self.state_file().update(&self.stop, f)
    }

    /// Where the manifest of an owned file is kept.
    pub fn manifest_path(&self, id: &FileId) -> PathBuf {
        manifests_dir(&self.dir).join(id.to_hex())
    }

    /// Records a complete file this node owns, at `path`.
    pub fn record_owned(&self, m: &Manifest, path: &Path) -> Result<(), HomeError> {
        let mpath = self.manifest_path(&m.id());
        let parent = manifests_dir(&self.dir);
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        protocol::durable::write(&mpath, &m.encode(), 0o644).map_err(io(&mpath))?;
        let path = std::fs::canonicalize(path).map_err(io(path))?;
        self.update_state(|s| {
            s.files.insert(
                m.id().to_hex(),
                FileRecord {
                    name: m.name.clone(),
                    size: m.size,
                    path,
                    partial_in: None,
                },
            );
        })
    }

    /// Records a download in progress in `dir` (so `seed` serves its
    /// verified part); a complete record of the same file is kept.
    pub fn record_partial(&self, file: &FileMeta, dir: &Path) -> Result<(), HomeError> {
        let dir = std::fs::canonicalize(dir).map_err(io(dir))?;
        let id = &file.id;
        let data = if file.files > 0 { "tree" } else { "part" };
        self.update_state(|s| {
            s.files.entry(id.to_hex()).or_insert_with(|| FileRecord {
                name: file.name.clone(),
                size: file.size,
                path: crate::download::sidecar(&dir, id, data),
                partial_in: Some(dir),
            });
        })
    }
}

/// The folder of the manifests of owned files in the home `dir`.
pub fn manifests_dir(dir: &Path) -> PathBuf {
    dir.join("manifests")
}

fn default_home() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h).join(".quorrent"),
        _ => PathBuf::from(".quorrent"),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, HomeError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| HomeError::Corrupt {
                path: path.to_owned(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_is_private_and_state_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(Some(dir.path().join("h")), None).unwrap();
        assert!(home.session().unwrap().is_none());
        home.save_session(&Session {
            user: "alice".into(),
            token: "secret".into(),
            expires_ms: 1,
        })
        .unwrap();
        let mode = std::fs::metadata(home.dir.join("session.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
        assert_eq!(home.session().unwrap().unwrap().user, "alice");
        home.clear_session().unwrap();
        assert!(home.session().unwrap().is_none());

        let data = dir.path().join("a.txt");
        std::fs::write(&data, b"hello").unwrap();
        let m = protocol::content::hash_file(&data, "a.txt".into(), protocol::content::MIN_CHUNK, |_| {}).unwrap();
        home.record_owned(&m, &data).unwrap();
        let again = Home::open(Some(dir.path().join("h")), None).unwrap();
        let rec = &again.state().unwrap().files[&m.id().to_hex()];
        assert_eq!(rec.size, 5);
        assert!(rec.partial_in.is_none());
        assert_eq!(again.identity.peer_id, home.identity.peer_id);
    }
}
