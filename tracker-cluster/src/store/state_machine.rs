//! The state machine openraft drives: it applies committed entries to the
//! in-memory [`Registry`], builds and installs snapshots, and keeps the
//! latest snapshot durable in one file.
//!
//! The registry is shared (behind [`SharedState`]) with the tracker API,
//! which reads it directly after a read-index confirms it is current.

use std::{
    io::Cursor,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use openraft::{storage::RaftStateMachine, EntryPayload, OptionalSend, RaftLogId, RaftSnapshotBuilder, StorageIOError};
use protocol::tracker_api::Answer;
use serde::{Deserialize, Serialize};

use crate::{
    registry::Registry,
    typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig},
};

/// What the API reads and the state machine writes.
#[derive(Default)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub registry: Registry,
}

/// The applied state shared between openraft and the tracker API.
#[derive(Default)]
pub struct SharedState {
    pub state: RwLock<Applied>,
}

impl SharedState {
    /// Read access; a poisoned lock (a panic while applying) is fatal, as
    /// the state could be half-applied.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Applied> {
        self.state.read().expect("state machine lock poisoned")
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.state.write().expect("state machine lock poisoned")
    }
}

/// The snapshot file's content.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The snapshot payload: applied position, membership and the registry.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    registry: Vec<u8>,
}

#[derive(Clone)]
pub struct StateMachine {
    pub shared: Arc<SharedState>,
    path: PathBuf,
    counter: Arc<AtomicU64>,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}
fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

impl StateMachine {
    /// Opens the state machine, loading the snapshot file if there is one.
    pub fn open(path: PathBuf) -> Result<Self, StorageError> {
        let sm = StateMachine {
            shared: Arc::default(),
            path,
            counter: Arc::default(),
        };
        if let Some(file) = sm.read_file()? {
            sm.load(&file.data)?;
        }
        Ok(sm)
    }

    fn read_file(&self) -> Result<Option<SnapshotFile>, StorageError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(Some(protocol::codec::decode(&bytes, usize::MAX).map_err(snap_err)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(snap_err(e)),
        }
    }

    fn load(&self, data: &[u8]) -> Result<(), StorageError> {
        let body: SnapshotBody = protocol::codec::decode(data, usize::MAX).map_err(snap_err)?;
        let registry = Registry::from_bytes(&body.registry).map_err(snap_err)?;
        *self.shared.write() = Applied {
            last_applied: body.last_applied,
            membership: body.membership,
            registry,
        };
        Ok(())
    }

    /// Writes the snapshot file atomically and durably.
    fn persist(&self, file: &SnapshotFile) -> Result<(), StorageError> {
        let bytes = protocol::codec::encode_body(file).map_err(snap_err)?;
        protocol::tls::write_private(&self.path, &bytes).map_err(snap_err)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(snap_err)?;
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, data) = {
            let st = self.shared.read();
            let body = SnapshotBody {
                last_applied: st.last_applied,
                membership: st.membership.clone(),
                registry: st.registry.to_bytes(),
            };
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let id = match st.last_applied {
                Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
                None => format!("none-{n}"),
            };
            let meta = SnapshotMeta {
                last_log_id: st.last_applied,
                last_membership: st.membership.clone(),
                snapshot_id: id,
            };
            (meta, protocol::codec::encode_body(&body).map_err(snap_err)?)
        };
        let file = SnapshotFile {
            meta: meta.clone(),
            data,
        };
        let this = self.clone();
        let file = tokio::task::spawn_blocking(move || this.persist(&file).map(|_| file))
            .await
            .map_err(snap_err)??;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = file.data.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(file.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = self.shared.read();
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Answer>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut st = self.shared.write();
        let mut out = Vec::new();
        for entry in entries {
            st.last_applied = Some(*entry.get_log_id());
            match entry.payload {
                EntryPayload::Blank => out.push(Vec::new()),
                EntryPayload::Normal(batch) => out.push(st.registry.apply(&batch)),
                EntryPayload::Membership(m) => {
                    st.membership = StoredMembership::new(Some(entry.log_id), m);
                    out.push(Vec::new());
                }
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let this = self.clone();
        let file = SnapshotFile {
            meta: meta.clone(),
            data,
        };
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            this.load(&file.data)?;
            this.persist(&file)
        })
        .await
        .map_err(sm_err)??;
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let this = self.clone();
        let file = tokio::task::spawn_blocking(move || this.read_file())
            .await
            .map_err(snap_err)??;
        Ok(file.map(|f| Snapshot {
            meta: f.meta,
            snapshot: Box::new(Cursor::new(f.data)),
        }))
    }
}
