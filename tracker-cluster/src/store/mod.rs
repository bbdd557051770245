//! Durable storage for Raft, on redb: the log, the vote and the committed
//! index in one database (`raft.redb`), and the latest snapshot in a file
//! (`snapshot.bin`, streamed to a unique temporary name with a checksum,
//! fsync'd, renamed only over an older one; see `snapshot_file`).
//!
//! Invariant: nothing is reported to openraft as persisted before redb has
//! committed it with `Durability::Immediate` (an fsync). Log appends run on
//! the blocking pool and signal openraft through the `LogFlushed` callback
//! only after the commit returns, so many entries share one fsync.
//!
//! The state machine lives in memory (see `state_machine`); after a restart
//! it is rebuilt from the snapshot file and openraft re-applies the
//! committed log entries after it.

pub mod log_store;
pub mod snapshot_file;
pub mod state_machine;

pub use log_store::LogStore;
pub use state_machine::{SharedState, StateMachine};

use std::{path::Path, sync::Arc};

use crate::typ::StorageError;

/// Opens (or creates) the storage of one member in `dir`.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine), StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| openraft::StorageIOError::write(&e))?;
    restrict(dir);
    let sm = StateMachine::open(dir.to_owned())?;
    let log = LogStore::open(&dir.join("raft.redb"), sm.shared.metrics.clone())?;
    Ok((log, sm))
}

/// The data folder holds password hashes and session hashes: owner only.
fn restrict(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

/// Shared handle to the database.
pub type Db = Arc<redb::Database>;
