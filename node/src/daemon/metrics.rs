//! The node's Prometheus metrics (prometheus-client): one [`NodeMetrics`]
//! per daemon, registered in the daemon's own `Registry` (no global
//! state), served at `/metrics`.
//!
//! Hot paths never look a series up: a file's counters are attached to it
//! once, when it enters the [`Store`](crate::store::Store), a peer's when
//! its connection starts; a chunk then costs one atomic add. Label sets
//! are bounded: past [`MAX_FILE_SERIES`] files or [`MAX_PEER_SERIES`]
//! peers per family, the oldest series is dropped from the exposition
//! (its handle still counts, unseen), so a node meeting thousands of peers
//! keeps a small `/metrics`.

use std::{collections::VecDeque, hash::Hash, sync::Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Files with their own byte series, at most.
pub const MAX_FILE_SERIES: usize = 256;
/// Peers with their own byte series per family, at most.
pub const MAX_PEER_SERIES: usize = 64;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabel {
    /// The file id (hex).
    pub file: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// A downloader's source: the peer id (short hex); the peer server's
    /// client: its address (the server does not learn client peer ids).
    pub peer: String,
}

/// Direction of a byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

/// A family whose label sets are capped: the oldest is evicted.
#[derive(Debug)]
struct Bounded<L: EncodeLabelSet + Clone + Hash + Eq + std::fmt::Debug + Send + Sync + 'static> {
    family: Family<L, Counter>,
    order: Mutex<VecDeque<L>>,
    cap: usize,
}

impl<L: EncodeLabelSet + Clone + Hash + Eq + std::fmt::Debug + Send + Sync + 'static> Bounded<L> {
    fn new(cap: usize) -> Self {
        Bounded {
            family: Family::default(),
            order: Mutex::new(VecDeque::new()),
            cap,
        }
    }

    /// The counter of `label`, made (and the oldest evicted) if new.
    fn handle(&self, label: L) -> Counter {
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        if !order.contains(&label) {
            order.push_back(label.clone());
            while order.len() > self.cap {
                if let Some(old) = order.pop_front() {
                    self.family.remove(&old);
                }
            }
        }
        self.family.get_or_create_owned(&label)
    }
}

/// The byte counters of one file, both directions.
#[derive(Debug, Clone, Default)]
pub struct FileTraffic {
    pub up: Counter,
    pub down: Counter,
}

/// Every metric of a node.
#[derive(Debug)]
pub struct NodeMetrics {
    file_up: Bounded<FileLabel>,
    file_down: Bounded<FileLabel>,
    peer_up: Bounded<PeerLabel>,
    peer_down: Bounded<PeerLabel>,
    /// Chunks that passed their BLAKE3 check.
    pub chunks_verified: Counter,
    /// Chunks that failed it.
    pub chunks_rejected: Counter,
    /// Peers a download dropped for bad data or too many failures.
    pub peers_banned: Counter,
    /// Downloads running now (paused ones not counted).
    pub downloads_active: Gauge,
}

impl NodeMetrics {
    /// The metrics, registered in `registry` under `quorrent_node_`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = NodeMetrics {
            file_up: Bounded::new(MAX_FILE_SERIES),
            file_down: Bounded::new(MAX_FILE_SERIES),
            peer_up: Bounded::new(MAX_PEER_SERIES),
            peer_down: Bounded::new(MAX_PEER_SERIES),
            chunks_verified: Counter::default(),
            chunks_rejected: Counter::default(),
            peers_banned: Counter::default(),
            downloads_active: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("quorrent_node");
        r.register(
            "file_bytes_up",
            "Chunk bytes sent to other nodes, per file",
            m.file_up.family.clone(),
        );
        r.register(
            "file_bytes_down",
            "Verified chunk bytes received, per file",
            m.file_down.family.clone(),
        );
        r.register(
            "peer_bytes_up",
            "Chunk bytes sent, per client address (the most recent 64)",
            m.peer_up.family.clone(),
        );
        r.register(
            "peer_bytes_down",
            "Verified chunk bytes received, per source peer (the most recent 64)",
            m.peer_down.family.clone(),
        );
        r.register(
            "chunks_verified",
            "Chunks received that passed their hash check",
            m.chunks_verified.clone(),
        );
        r.register(
            "chunks_rejected",
            "Chunks received that failed their hash check",
            m.chunks_rejected.clone(),
        );
        r.register(
            "peers_banned",
            "Peers dropped by a download for bad data or repeated failures",
            m.peers_banned.clone(),
        );
        r.register(
            "downloads_active",
            "Downloads running in this process",
            m.downloads_active.clone(),
        );
        m
    }

    /// The counters of file `id` (hex).
    pub fn file(&self, id: &str) -> FileTraffic {
        let label = FileLabel { file: id.to_owned() };
        FileTraffic {
            up: self.file_up.handle(label.clone()),
            down: self.file_down.handle(label),
        }
    }

    /// The counter of bytes sent to or received from `peer`.
    pub fn peer(&self, dir: Direction, peer: String) -> Counter {
        let label = PeerLabel { peer };
        match dir {
            Direction::Up => self.peer_up.handle(label),
            Direction::Down => self.peer_down.handle(label),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_series_are_capped_and_handles_keep_counting() {
        let mut registry = Registry::default();
        let m = NodeMetrics::new(&mut registry);
        let first = m.peer(Direction::Down, "p0".into());
        for i in 1..=MAX_PEER_SERIES {
            m.peer(Direction::Down, format!("p{i}")).inc_by(7);
        }
        first.inc_by(5);
        assert_eq!(first.get(), 5);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("peer=\"p0\""), "{text}");
        assert!(text.contains(&format!("peer=\"p{MAX_PEER_SERIES}\"")), "{text}");
        assert_eq!(
            text.matches("quorrent_node_peer_bytes_down_total{").count(),
            MAX_PEER_SERIES
        );
        m.chunks_verified.inc();
        m.file("ab").down.inc_by(3);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("quorrent_node_chunks_verified_total 1"), "{text}");
        assert!(
            text.contains("quorrent_node_file_bytes_down_total{file=\"ab\"} 3"),
            "{text}"
        );
    }
}
