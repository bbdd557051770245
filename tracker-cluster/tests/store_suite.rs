//! openraft's own storage test suite, run against the redb log store and
//! the state machine on a temporary folder.

use openraft::testing::{StoreBuilder, Suite};
use tracker_cluster::{
    store::{self, LogStore, StateMachine},
    typ::{StorageError, TypeConfig},
};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = store::open(dir.path())?;
        Ok((dir, log, sm))
    }
}

/// The store keeps every promise openraft relies on (vote, log, purge,
/// truncate, snapshots, applied state).
#[test]
fn openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)?;
    Ok(())
}
