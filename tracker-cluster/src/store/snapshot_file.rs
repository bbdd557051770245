//! The snapshot file, streamed: written and read one record at a time, so
//! memory is one record plus an I/O buffer whatever the registry's size,
//! and checked end to end by a BLAKE3 checksum.
//!
//! Layout: the magic `QRSNAP1\n`; a header frame (the openraft
//! [`SnapshotMeta`]: last log id and membership); the registry's records
//! ([`Frozen::write_to`], each a length-prefixed bincode frame of at most
//! [`RECORD_LIMIT`] bytes, ending with an end record); then the 32-byte
//! BLAKE3 of everything before it. The same bytes are the openraft
//! snapshot data sent to a lagging member in chunks, so a received
//! snapshot is checked the same way before it is installed.
//!
//! Every file is written under a new name (`snapshot-PID-N.tmp`, created
//! exclusively), fsynced, and only then renamed into place by the state
//! machine, which decides whether it is newer than the one in place.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use protocol::codec::{FrameReader, FrameWriter};
use serde::{Deserialize, Serialize};

use crate::{
    registry::{Frozen, Registry, SnapshotError, RECORD_LIMIT},
    typ::SnapshotMeta,
};

const MAGIC: &[u8; 8] = b"QRSNAP1\n";
/// The buffer between the records and the file, each way.
const IO_BUFFER: usize = 1 << 20;
/// Temporary files start with this and end with `.tmp`.
const TMP_PREFIX: &str = "snapshot-";

/// Why a snapshot file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path}: corrupt snapshot ({reason}); this member refuses to start rather than serve a wrong state. \
         To rebuild it from the others: `quorrent-tracker admin remove ID`, delete this member's data folder, \
         start it, then `quorrent-tracker admin add ID ...`"
    )]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Serialize, Deserialize)]
struct Header {
    meta: SnapshotMeta,
}

/// A reader or writer that hashes what passes through it.
struct Hashing<T> {
    inner: T,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A new, exclusively created temporary file in `dir`.
pub fn create_temp(dir: &Path) -> Result<(PathBuf, File), FileError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    use std::os::unix::fs::OpenOptionsExt;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{TMP_PREFIX}{}-{n}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            // Left by an earlier process with the same pid: take the next.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(FileError::Io { path, source }),
        }
    }
}

/// Removes temporary files a crashed process left in `dir` (at start,
/// before anything else writes there).
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TMP_PREFIX) && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes a snapshot of `frozen` at `meta` to a new temporary file in
/// `dir`, fsynced; returns its path and size.
pub fn write(dir: &Path, meta: &SnapshotMeta, frozen: &Frozen) -> Result<(PathBuf, u64), FileError> {
    let (path, file) = create_temp(dir)?;
    let res = write_to(file, meta, frozen);
    match res {
        Ok(size) => Ok((path, size)),
        Err(source) => {
            let _ = std::fs::remove_file(&path);
            Err(FileError::Io { path, source })
        }
    }
}

/// A file written with its data synced every [`SYNC_EVERY`] bytes, so the
/// kernel writes a large snapshot back as it goes rather than all at the
/// final fsync (gigabytes flushed at once delay every other fsync on the
/// disk, the Raft log's among them).
struct Paced {
    file: File,
    unsynced: usize,
}

const SYNC_EVERY: usize = 64 << 20;

impl Write for Paced {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n;
        if self.unsynced >= SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn write_to(file: File, meta: &SnapshotMeta, frozen: &Frozen) -> std::io::Result<u64> {
    let codec = |e: protocol::codec::CodecError| std::io::Error::other(e.to_string());
    let mut out = BufWriter::with_capacity(IO_BUFFER, Paced { file, unsynced: 0 });
    out.write_all(MAGIC)?;
    let mut hashing = Hashing {
        inner: out,
        hasher: blake3::Hasher::new(),
    };
    hashing.hasher.update(MAGIC);
    let mut frames = FrameWriter::new(hashing, RECORD_LIMIT);
    frames.write(&Header { meta: meta.clone() }).map_err(codec)?;
    frozen.write_to(&mut frames).map_err(codec)?;
    let Hashing { inner: mut out, hasher } = frames.into_inner();
    out.write_all(hasher.finalize().as_bytes())?;
    let Paced { file, .. } = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

fn reader(path: &Path) -> Result<FrameReader<Hashing<BufReader<File>>>, FileError> {
    let io = |source| FileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut input = BufReader::with_capacity(IO_BUFFER, File::open(path).map_err(io)?);
    let mut magic = [0u8; 8];
    match input.read_exact(&mut magic) {
        Ok(()) if &magic == MAGIC => {}
        Ok(()) | Err(_) => return Err(corrupt(path, "not a quorrent snapshot file (bad magic)")),
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(MAGIC);
    Ok(FrameReader::new(Hashing { inner: input, hasher }))
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> FileError {
    FileError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The metadata of the snapshot at `path` (its header alone).
pub fn read_meta(path: &Path) -> Result<SnapshotMeta, FileError> {
    let mut r = reader(path)?;
    let h: Header = r
        .read(RECORD_LIMIT)
        .map_err(|e| corrupt(path, format!("header: {e}")))?;
    Ok(h.meta)
}

/// Reads and checks the whole snapshot at `path`: every record, the
/// counts, and the checksum over the file.
pub fn load(path: &Path) -> Result<(SnapshotMeta, Registry), FileError> {
    let mut r = reader(path)?;
    let h: Header = r
        .read(RECORD_LIMIT)
        .map_err(|e| corrupt(path, format!("header: {e}")))?;
    let reg = Registry::read_from(&mut r).map_err(|e| match e {
        SnapshotError::Codec(protocol::codec::CodecError::Io(source)) => FileError::Io {
            path: path.to_owned(),
            source,
        },
        e => corrupt(path, e),
    })?;
    let Hashing { mut inner, hasher } = r.into_inner();
    let mut sum = [0u8; 32];
    inner
        .read_exact(&mut sum)
        .map_err(|_| corrupt(path, "truncated before its checksum"))?;
    if sum != *hasher.finalize().as_bytes() {
        return Err(corrupt(path, "checksum mismatch"));
    }
    if inner.read(&mut [0u8; 1]).map_err(|source| FileError::Io {
        path: path.to_owned(),
        source,
    })? != 0
    {
        return Err(corrupt(path, "bytes after the checksum"));
    }
    Ok((h.meta, reg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "t".into(),
        }
    }

    /// Any flipped byte, a truncation or an appended byte is refused.
    #[test]
    fn corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::default();
        let (path, size) = write(dir.path(), &meta(), &reg.freeze()).unwrap();
        let (m, back) = load(&path).unwrap();
        assert_eq!((m.snapshot_id.as_str(), back.digest()), ("t", reg.digest()));
        let good = std::fs::read(&path).unwrap();
        assert_eq!(good.len() as u64, size);
        for at in [0, 9, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            let err = load(&path).unwrap_err().to_string();
            assert!(err.contains("corrupt snapshot"), "byte {at}: {err}");
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(load(&path).is_err());
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("after the checksum"));
    }
}
