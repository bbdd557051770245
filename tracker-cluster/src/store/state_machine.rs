//! The state machine openraft drives: it applies committed entries to the
//! in-memory [`Registry`], builds and installs snapshots, and keeps the
//! latest snapshot durable in `snapshot.bin` (format: `snapshot_file`).
//!
//! The registry is shared (behind [`SharedState`]) with the tracker API,
//! which reads it directly after a read-index confirms it is current.
//!
//! Snapshots never stop `apply` for longer than a clone of the registry's
//! copy-on-write containers ([`Registry::freeze`], microseconds): the build
//! takes that frozen view under the read lock and writes it to its own
//! temporary file on the blocking pool while writes go on. A received
//! snapshot is streamed by openraft into its own temporary file, read back
//! and checked (checksum, counts) into a new registry that replaces the
//! old one in one swap. Builds and installs may interleave: a file is
//! renamed over `snapshot.bin` only if its last log id is newer than the
//! one there (decided under one lock), so an older snapshot never
//! replaces a newer one behind a purged log.

use std::{
    collections::HashMap,
    io::Seek,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Instant,
};

use openraft::{storage::RaftStateMachine, EntryPayload, OptionalSend, RaftLogId, RaftSnapshotBuilder, StorageIOError};
use protocol::tracker_api::Answer;

use super::snapshot_file::{self, FileError};
use crate::{
    registry::{Frozen, Registry},
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
    /// Fsync, snapshot and commit figures (the log store records into
    /// the same).
    pub metrics: Arc<crate::telemetry::StoreMetrics>,
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

/// The snapshot files of one member.
struct Files {
    dir: PathBuf,
    /// `dir/snapshot.bin`.
    path: PathBuf,
    /// The metadata of the snapshot in `path`; held while a file is
    /// renamed into place or `path` is opened, so the two always agree.
    published: Mutex<Option<SnapshotMeta>>,
    /// Temporary files being received, by inode (openraft hands back the
    /// open file, not its name).
    receiving: Mutex<HashMap<u64, PathBuf>>,
}

#[derive(Clone)]
pub struct StateMachine {
    pub shared: Arc<SharedState>,
    files: Arc<Files>,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}
fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}
fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_snapshot(None, &e).into()
}
fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| {
        snap_err(FileError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// The inode of an open file.
fn inode(f: &std::fs::File) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(f.metadata()?.ino())
}

impl StateMachine {
    /// Opens the state machine of the member whose data folder is `dir`,
    /// loading and checking `snapshot.bin` if there is one: a corrupt
    /// file is an error (the member must not start on a wrong state).
    pub fn open(dir: PathBuf) -> Result<Self, StorageError> {
        snapshot_file::remove_stale_temps(&dir);
        let path = dir.join("snapshot.bin");
        let sm = StateMachine {
            shared: Arc::default(),
            files: Arc::new(Files {
                dir,
                path,
                published: Mutex::new(None),
                receiving: Mutex::default(),
            }),
        };
        if sm.files.path.exists() {
            let started = Instant::now();
            let (meta, registry) = snapshot_file::load(&sm.files.path).map_err(read_err)?;
            tracing::info!(
                snapshot = %meta.snapshot_id,
                files = registry.file_count(),
                ms = started.elapsed().as_millis() as u64,
                "snapshot loaded"
            );
            sm.swap(&meta, registry);
            *sm.files.published.lock().expect("lock") = Some(meta);
        }
        Ok(sm)
    }

    /// Replaces the applied state by `registry` at `meta`; the old state
    /// is dropped after the lock is released (freeing millions of records
    /// takes a while).
    fn swap(&self, meta: &SnapshotMeta, registry: Registry) {
        let old = std::mem::replace(
            &mut *self.shared.write(),
            Applied {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
                registry,
            },
        );
        drop(old);
    }

    /// Renames the snapshot file `tmp` (at `meta`) over `snapshot.bin` if it
    /// is newer than the one there, else removes it. Returns the file open
    /// for reading either way (the caller may still hand it to openraft).
    fn publish(&self, tmp: PathBuf, meta: &SnapshotMeta) -> Result<std::fs::File, StorageError> {
        let file = std::fs::File::open(&tmp).map_err(io_err(&tmp))?;
        let mut published = self.files.published.lock().expect("lock");
        let current = published.as_ref().and_then(|m| m.last_log_id);
        if published.is_none() || meta.last_log_id > current {
            std::fs::rename(&tmp, &self.files.path).map_err(io_err(&tmp))?;
            std::fs::File::open(&self.files.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.files.dir))?;
            *published = Some(meta.clone());
        } else {
            tracing::info!(
                snapshot = %meta.snapshot_id,
                kept = ?current,
                "a newer snapshot is already in place; this one is not kept"
            );
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(file)
    }

    /// The metadata and a frozen view of the applied state, for a
    /// snapshot (under the read lock for a few microseconds).
    fn freeze(&self) -> (SnapshotMeta, Frozen) {
        let st = self.shared.read();
        // Unique, also across restarts (openraft tells streams apart by id).
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let at = protocol::unix_ms();
        let id = match st.last_applied {
            Some(l) => format!("{}-{}-{at}-{n}", l.leader_id, l.index),
            None => format!("none-{at}-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: st.last_applied,
            last_membership: st.membership.clone(),
            snapshot_id: id,
        };
        (meta, st.registry.freeze())
    }

    #[cfg(test)]
    fn snapshot_path(&self) -> PathBuf {
        self.files.path.clone()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let started = Instant::now();
        let (meta, frozen) = self.freeze();
        let frozen_in = started.elapsed();
        let this = self.clone();
        let m = meta.clone();
        let (file, size) = tokio::task::spawn_blocking(move || {
            let (tmp, size) = snapshot_file::write(&this.files.dir, &m, &frozen).map_err(snap_err)?;
            drop(frozen);
            this.publish(tmp, &m).map(|f| (f, size))
        })
        .await
        .map_err(snap_err)??;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = size,
            freeze_us = frozen_in.as_micros() as u64,
            ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        let m = &self.shared.metrics;
        m.observe(&m.snapshot_build, started.elapsed());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
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

    /// A new temporary file for openraft to stream a snapshot into; files
    /// of an abandoned earlier stream are removed.
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let files = self.files.clone();
        let file = tokio::task::spawn_blocking(move || -> Result<std::fs::File, StorageError> {
            let mut receiving = files.receiving.lock().expect("lock");
            for (_, old) in receiving.drain() {
                let _ = std::fs::remove_file(old);
            }
            let (path, file) = snapshot_file::create_temp(&files.dir).map_err(snap_err)?;
            receiving.insert(inode(&file).map_err(io_err(&path))?, path);
            Ok(file)
        })
        .await
        .map_err(snap_err)??;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let started = Instant::now();
        let file = snapshot.into_std().await;
        let this = self.clone();
        let meta = meta.clone();
        let files = tokio::task::spawn_blocking(move || -> Result<usize, StorageError> {
            let ino = inode(&file).map_err(io_err(&this.files.dir))?;
            let received = this.files.receiving.lock().expect("lock").remove(&ino);
            let tmp = match received {
                Some(tmp) => {
                    file.sync_all().map_err(io_err(&tmp))?;
                    tmp
                }
                // Not streamed in by `begin_receiving_snapshot` (another
                // store's file, as openraft's test suite does): copy it.
                None => {
                    let (tmp, mut copy) = snapshot_file::create_temp(&this.files.dir).map_err(snap_err)?;
                    let mut from = file;
                    from.seek(std::io::SeekFrom::Start(0))
                        .and_then(|_| std::io::copy(&mut from, &mut copy))
                        .and_then(|_| copy.sync_all())
                        .map_err(|e| {
                            let _ = std::fs::remove_file(&tmp);
                            io_err(&tmp)(e)
                        })?;
                    tmp
                }
            };
            let (in_file, registry) = snapshot_file::load(&tmp).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                sm_err(e)
            })?;
            if in_file.last_log_id != meta.last_log_id || in_file.last_membership != meta.last_membership {
                let _ = std::fs::remove_file(&tmp);
                return Err(sm_err(std::io::Error::other(format!(
                    "received snapshot {} holds {:?}, not the announced {:?}",
                    meta.snapshot_id, in_file.last_log_id, meta.last_log_id
                ))));
            }
            let n = registry.file_count();
            // Durable before it is visible: once openraft hears back it
            // purges the log up to this snapshot.
            this.publish(tmp, &meta)?;
            this.swap(&meta, registry);
            Ok(n)
        })
        .await
        .map_err(sm_err)??;
        tracing::info!(files, ms = started.elapsed().as_millis() as u64, "snapshot installed");
        let m = &self.shared.metrics;
        m.observe(&m.snapshot_install, started.elapsed());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let files = self.files.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<Option<Snapshot>, StorageError> {
            let published = files.published.lock().expect("lock");
            let Some(meta) = published.clone() else { return Ok(None) };
            let file = std::fs::File::open(&files.path).map_err(io_err(&files.path))?;
            Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(tokio::fs::File::from_std(file)),
            }))
        })
        .await
        .map_err(read_err)??;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    async fn at_index(dir: &std::path::Path, last: u64) -> StateMachine {
        let mut sm = StateMachine::open(dir.to_owned()).unwrap();
        let entries = (1..=last).map(|i| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Blank,
        });
        sm.apply(entries.collect::<Vec<_>>()).await.unwrap();
        sm
    }

    fn index(meta: &SnapshotMeta) -> Option<u64> {
        meta.last_log_id.map(|l| l.index)
    }

    /// A build that started before a newer snapshot was installed, and
    /// finishes after it, leaves the newer one in place (openraft purges
    /// the log up to the installed snapshot, so the older one would leave
    /// a gap), and both ran through their own temporary files.
    #[tokio::test]
    async fn an_older_build_never_replaces_a_newer_install() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = at_index(dir.path(), 3).await;
        // The build freezes its view at 3 and writes its file...
        let (old_meta, frozen) = sm.freeze();
        let (old_tmp, _) = snapshot_file::write(dir.path(), &old_meta, &frozen).unwrap();
        // ...meanwhile a snapshot at 10 is received and installed...
        let other_dir = tempfile::tempdir().unwrap();
        let mut newer = at_index(other_dir.path(), 10).await.build_snapshot().await.unwrap();
        let mut into = sm.begin_receiving_snapshot().await.unwrap();
        tokio::io::copy(&mut newer.snapshot, &mut *into).await.unwrap();
        tokio::io::AsyncWriteExt::shutdown(&mut *into).await.unwrap();
        assert_ne!(
            old_tmp,
            sm.files.receiving.lock().unwrap().values().next().unwrap().clone()
        );
        sm.install_snapshot(&newer.meta, into).await.unwrap();
        // ...and then the build publishes.
        sm.publish(old_tmp.clone(), &old_meta).unwrap();

        assert!(!old_tmp.exists());
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(index(&current.meta), Some(10));
        assert_eq!(index(&snapshot_file::read_meta(&sm.snapshot_path()).unwrap()), Some(10));
        let temps = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
            .count();
        assert_eq!(temps, 0, "temporary files left behind");
        drop(sm);
        let mut reopened = StateMachine::open(dir.path().to_owned()).unwrap();
        assert_eq!(reopened.applied_state().await.unwrap().0.map(|l| l.index), Some(10));

        // Two builds at one index: the first stays; a later index replaces it.
        let third_dir = tempfile::tempdir().unwrap();
        let mut sm = at_index(third_dir.path(), 2).await;
        let first = sm.build_snapshot().await.unwrap();
        let second = sm.build_snapshot().await.unwrap();
        assert_eq!(first.meta.last_log_id, second.meta.last_log_id);
        let kept = snapshot_file::read_meta(&sm.snapshot_path()).unwrap();
        assert_eq!(kept.snapshot_id, first.meta.snapshot_id, "an equal one is not newer");
        let more = (3..=4).map(|i| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Blank,
        });
        sm.apply(more.collect::<Vec<_>>()).await.unwrap();
        sm.build_snapshot().await.unwrap();
        assert_eq!(index(&snapshot_file::read_meta(&sm.snapshot_path()).unwrap()), Some(4));
    }

    /// A corrupt snapshot file stops the member at start, naming the file.
    #[tokio::test]
    async fn a_corrupt_snapshot_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = at_index(dir.path(), 5).await;
        sm.build_snapshot().await.unwrap();
        let path = sm.snapshot_path();
        drop(sm);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = StateMachine::open(dir.path().to_owned())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("corrupt snapshot"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
