//! The Raft log, vote and committed index in redb.

use std::{fmt::Debug, ops::RangeBounds, path::Path, sync::Arc};

use openraft::{
    storage::{LogFlushed, RaftLogStorage},
    LogState, OptionalSend, RaftLogId, RaftLogReader, StorageIOError,
};
use redb::{ReadableTable, TableDefinition};

use super::Db;
use crate::typ::{Entry, LogId, StorageError, TypeConfig, Vote};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}
fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

/// The log store; cheap to clone (clones share the database).
#[derive(Clone)]
pub struct LogStore {
    db: Db,
    metrics: Arc<crate::telemetry::StoreMetrics>,
}

/// redb's page cache for the log.
const LOG_CACHE_BYTES: usize = 64 << 20;

impl LogStore {
    pub fn open(path: &Path, metrics: Arc<crate::telemetry::StoreMetrics>) -> Result<Self, StorageError> {
        // redb caches up to 1 GiB by default; the log is read back only
        // while entries are replicated or re-applied, soon after they are
        // written, and the registry needs the memory more.
        let db = redb::Builder::new()
            .set_cache_size(LOG_CACHE_BYTES)
            .create(path)
            .map_err(write_err)?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(LOGS).map_err(write_err)?;
        txn.open_table(META).map_err(write_err)?;
        txn.commit().map_err(write_err)?;
        Ok(LogStore {
            db: Arc::new(db),
            metrics,
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        match table.get(key).map_err(read_err)? {
            None => Ok(None),
            Some(v) => Ok(Some(protocol::codec::decode(v.value(), usize::MAX).map_err(read_err)?)),
        }
    }

    /// Writes one meta value durably, on the blocking pool.
    async fn put_meta<T: serde::Serialize>(&self, key: &'static str, value: &T) -> Result<(), StorageError> {
        let bytes = protocol::codec::encode_body(value).map_err(write_err)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)
    }

    fn last_entry(&self) -> Result<Option<LogId>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOGS).map_err(read_err)?;
        let last = table.last().map_err(read_err)?;
        match last {
            None => Ok(None),
            Some((_, v)) => {
                let e = decode_entry(v.value()).map_err(read_err)?;
                Ok(Some(*e.get_log_id()))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let purged: Option<LogId> = self.get_meta(PURGED)?;
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOGS).map_err(read_err)?;
        let mut out = Vec::new();
        for item in table.range(range).map_err(read_err)? {
            let (k, v) = item.map_err(read_err)?;
            // Purged, not yet deleted (see `purge`).
            if purged.is_some_and(|p| k.value() <= p.index) {
                continue;
            }
            out.push(decode_entry(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId> = self.get_meta(PURGED)?;
        // Entries at or below the purge mark may linger while `purge`
        // deletes them in the background: the mark wins.
        let last = self.last_entry()?.max(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote)
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta(COMMITTED, &committed).await?;
        self.metrics.set_committed(committed.map(|c| c.index));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self.get_meta::<Option<LogId>>(COMMITTED)?.flatten();
        self.metrics.set_committed(committed.map(|c| c.index));
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|e| {
                Ok((
                    e.get_log_id().index,
                    protocol::codec::encode_body(&e).map_err(write_err)?,
                ))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let db = self.db.clone();
        let metrics = self.metrics.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(LOGS)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice())?;
                }
            }
            let started = std::time::Instant::now();
            txn.commit()?;
            metrics.observe(&metrics.fsync, started.elapsed());
            Ok(())
        })
        .await
        .map_err(write_err)?;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(LOGS)?.retain_in(log_id.index.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)
    }

    /// Records the purge mark durably and returns; the entries up to it
    /// are deleted afterwards on the blocking pool, a few per short
    /// transaction, and reads skip them meanwhile (`try_get_log_entries`,
    /// `get_log_state`). openraft awaits `purge` on its core task: deleting
    /// a log of gigabytes there (every snapshot at ten million files)
    /// stopped the leader's heartbeats for half a second and a follower
    /// stood for election. A crash part way leaves entries at or below the
    /// mark, which nothing reads and the next purge deletes.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.put_meta(PURGED, &log_id).await?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = delete_up_to(&db, log_id.index) {
                tracing::warn!(error = %e, upto = log_id.index, "deleting purged log entries failed; the next purge retries");
            }
        });
        Ok(())
    }
}

/// Deletes the log entries at or below `index`, [`PURGE_STEP`] per
/// transaction, so appends are never held up for long.
fn delete_up_to(db: &redb::Database, index: u64) -> Result<(), redb::Error> {
    loop {
        let mut txn = db.begin_write()?;
        // Durable with the next durable commit (an append); losing them in
        // a crash only leaves entries behind the mark.
        txn.set_durability(redb::Durability::None);
        let more = {
            let mut logs = txn.open_table(LOGS)?;
            let keys: Vec<u64> = logs
                .range(..=index)?
                .take(PURGE_STEP)
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for k in &keys {
                logs.remove(k)?;
            }
            keys.len() == PURGE_STEP
        };
        txn.commit()?;
        if !more {
            return Ok(());
        }
    }
}

/// Log entries deleted per transaction when purging.
const PURGE_STEP: usize = 64;

/// Decodes a stored log entry. An entry written before batches carried
/// quotas (the first release) decodes as such and is applied as it was
/// then, without quotas, so that every member replays it the same way.
fn decode_entry(bytes: &[u8]) -> Result<Entry, protocol::codec::CodecError> {
    match protocol::codec::decode::<Entry>(bytes, usize::MAX) {
        Ok(e) => Ok(e),
        Err(e) => legacy::decode(bytes).ok_or(e),
    }
}

/// Log entries of the first release: a batch without quotas.
mod legacy {
    use std::io::Cursor;

    use openraft::EntryPayload;
    use protocol::{config::Quotas, tracker_api::Answer};
    use serde::{Deserialize, Serialize};

    use crate::{
        registry::{Batch, Write},
        typ::{Entry, Member, NodeId},
    };

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct OldBatch {
        now_ms: u64,
        writes: Vec<Write>,
    }

    impl std::fmt::Display for OldBatch {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "batch of {} writes", self.writes.len())
        }
    }

    openraft::declare_raft_types!(
        pub OldConfig:
            D = OldBatch,
            R = Vec<Answer>,
            NodeId = NodeId,
            Node = Member,
            SnapshotData = Cursor<Vec<u8>>,
    );

    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let old: openraft::Entry<OldConfig> = protocol::codec::decode(bytes, usize::MAX).ok()?;
        let payload = match old.payload {
            EntryPayload::Blank => EntryPayload::Blank,
            EntryPayload::Membership(m) => EntryPayload::Membership(m),
            EntryPayload::Normal(b) => EntryPayload::Normal(Batch {
                now_ms: b.now_ms,
                writes: b.writes,
                quotas: Quotas {
                    max_files_per_user: u64::MAX,
                    max_peers_per_user: u64::MAX,
                },
            }),
        };
        Some(Entry {
            log_id: old.log_id,
            payload,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// An entry as the first release wrote it decodes, without quotas.
        #[test]
        fn first_release_entry_decodes() {
            let old = openraft::Entry::<OldConfig> {
                log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 42),
                payload: EntryPayload::Normal(OldBatch {
                    now_ms: 7,
                    writes: vec![],
                }),
            };
            let bytes = protocol::codec::encode_body(&old).unwrap();
            let e = super::super::decode_entry(&bytes).unwrap();
            assert_eq!(e.log_id.index, 42);
            match e.payload {
                EntryPayload::Normal(b) => {
                    assert_eq!(b.now_ms, 7);
                    assert_eq!(b.quotas.max_files_per_user, u64::MAX);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
