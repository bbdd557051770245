//! What this node can serve right now: the files it owns completely and
//! the verified part of files it is still downloading. The peer server
//! reads from here; the downloader adds chunks here as they are verified,
//! so a partial download is served while it is still running.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use protocol::{content::Manifest, ids::FileId};

use crate::{
    daemon::metrics::{FileTraffic, NodeMetrics},
    data::Data,
};

/// A bit set of verified chunks, shared without locks between the
/// downloader (which sets bits) and the peer server (which reads them).
#[derive(Debug)]
pub struct HaveBits {
    words: Vec<AtomicU64>,
    len: u32,
    count: AtomicU32,
}

impl HaveBits {
    /// An empty set for `len` chunks.
    pub fn new(len: u32) -> Self {
        HaveBits {
            words: (0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            len,
            count: AtomicU32::new(0),
        }
    }

    /// A set with every chunk present.
    pub fn full(len: u32) -> Self {
        let bits = Self::new(len);
        for i in 0..len {
            bits.set(i);
        }
        bits
    }

    /// Reads the wire form (bit `i` of byte `i / 8`, least significant
    /// first); bits past `len` are ignored.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Self {
        let bits = Self::new(len);
        for i in 0..len {
            if bytes.get(i as usize / 8).is_some_and(|b| b & (1 << (i % 8)) != 0) {
                bits.set(i);
            }
        }
        bits
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len.div_ceil(8) as usize];
        for i in 0..self.len {
            if self.get(i) {
                out[i as usize / 8] |= 1 << (i % 8);
            }
        }
        out
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.words[i as usize / 64].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }

    /// Marks chunk `i` present; returns whether it was new.
    pub fn set(&self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let bit = 1u64 << (i % 64);
        let new = self.words[i as usize / 64].fetch_or(bit, Ordering::AcqRel) & bit == 0;
        if new {
            self.count.fetch_add(1, Ordering::AcqRel);
        }
        new
    }

    /// Number of chunks present.
    pub fn count(&self) -> u32 {
        self.count.load(Ordering::Acquire)
    }

    pub fn is_complete(&self) -> bool {
        self.count() == self.len
    }
}

/// One file this node serves.
#[derive(Debug)]
pub struct SharedFile {
    pub manifest: Manifest,
    /// The encoded manifest, served as is.
    pub manifest_bytes: Vec<u8>,
    /// Its bytes; stay readable across the final rename of a download
    /// (shared with the download, which tells a moved folder).
    pub data: Arc<Data>,
    pub have: Arc<HaveBits>,
}

/// The files served, by id, each with its byte counters.
#[derive(Debug, Default)]
pub struct Store {
    files: RwLock<HashMap<FileId, (Arc<SharedFile>, FileTraffic)>>,
    /// Where a file's counters come from; without it they count unseen.
    metrics: Option<Arc<NodeMetrics>>,
}

impl Store {
    pub fn new() -> Arc<Self> {
        Arc::new(Store::default())
    }

    /// A store whose files count their bytes in `metrics`.
    pub fn with_metrics(metrics: Arc<NodeMetrics>) -> Arc<Self> {
        Arc::new(Store {
            files: RwLock::default(),
            metrics: Some(metrics),
        })
    }

    pub fn metrics(&self) -> Option<&Arc<NodeMetrics>> {
        self.metrics.as_ref()
    }

    /// Adds or replaces a file; a replaced file keeps its counters.
    pub fn insert(&self, shared: SharedFile) -> Arc<SharedFile> {
        let id = shared.manifest.id();
        let shared = Arc::new(shared);
        let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
        let traffic = match files.get(&id) {
            Some((_, t)) => t.clone(),
            None => self.metrics.as_ref().map(|m| m.file(&id.to_hex())).unwrap_or_default(),
        };
        files.insert(id, (shared.clone(), traffic));
        shared
    }

    pub fn get(&self, id: &FileId) -> Option<Arc<SharedFile>> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|(f, _)| f.clone())
    }

    /// The file and its byte counters (one lookup, for the hot paths).
    pub fn get_counted(&self, id: &FileId) -> Option<(Arc<SharedFile>, FileTraffic)> {
        self.files.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// Every file's id and byte counters.
    pub fn each_traffic(&self) -> Vec<(FileId, FileTraffic)> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, (_, t))| (*id, t.clone()))
            .collect()
    }

    /// The byte counters of a file served.
    pub fn traffic(&self, id: &FileId) -> Option<FileTraffic> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|(_, t)| t.clone())
    }

    pub fn remove(&self, id: &FileId) {
        self.files.write().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    pub fn len(&self) -> usize {
        self.files.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn have_bits_round_trip() {
        let b = HaveBits::new(70);
        assert!(b.set(0) && b.set(69) && !b.set(69) && !b.set(70));
        assert_eq!(b.count(), 2);
        let c = HaveBits::from_bytes(70, &b.to_bytes());
        assert!(c.get(0) && c.get(69) && !c.get(1) && c.count() == 2);
        assert!(HaveBits::full(70).is_complete());
    }
}
