//! Partial owners: soft state on the leader, never a Raft entry.
//!
//! A node that is still downloading a file serves the chunks it has
//! verified. It says so with `AnnouncePartial` (its have-bit set) about
//! every second while it downloads; the leader keeps the latest set per
//! (file, peer) in memory and hands it out with GetOwners, so other
//! downloaders can fetch from it before it owns the whole file. Partial
//! ownership is transient and refreshed often, so like liveness it must
//! not cost a log entry or an fsync; losing it with the leader costs at
//! most one refresh interval (a new leader has none until the nodes
//! announce again).
//!
//! An entry ends when it is not refreshed within `ttl`, when the peer
//! becomes a complete owner (Own) or disowns the file, or when it is the
//! least recently refreshed of a file that has more than
//! `max_per_file` partial owners. Bounds: `max_files_per_peer` entries per
//! peer (further files are refused with `Quota`), `max_per_file` per
//! file, and `max_bytes` in total (past it new entries are refused with
//! `Overloaded` until old ones lapse; refreshes of existing entries of
//! the same size always pass). A bit set must have exactly
//! `chunk_count.div_ceil(8)` bytes with no bit set past the last chunk,
//! and files of more than [`MAX_PARTIAL_CHUNKS`] chunks are refused, so
//! a GetOwners answer with every partial owner stays inside one frame.
//!
//! The struct is pure: every call takes `now`, so tests drive it with
//! hand-made instants.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use protocol::{
    config::OwnerLimits,
    ids::{FileId, PeerId},
    tracker_api::{ApiError, FileMeta},
};

/// Largest file, in chunks, that can have partial owners: a bit set of
/// 8 KiB. Nodes never make more chunks than this (they grow the chunk
/// size instead).
pub const MAX_PARTIAL_CHUNKS: u32 = 65_536;

/// Bookkeeping bytes counted per entry on top of its bit set.
const ENTRY_OVERHEAD: usize = 96;

#[derive(Debug, Clone, Copy)]
pub struct PartialLimits {
    pub ttl: Duration,
    pub max_files_per_peer: usize,
    pub max_per_file: usize,
    pub max_bytes: usize,
}

impl PartialLimits {
    pub fn from_config(o: &OwnerLimits) -> Self {
        PartialLimits {
            ttl: Duration::from_millis(o.partial_ttl_ms),
            max_files_per_peer: o.max_partial_files_per_peer.max(1),
            max_per_file: o.max_partial_owners_per_file.max(1),
            max_bytes: o.max_partial_bytes,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    peer: PeerId,
    have: Vec<u8>,
    at: Instant,
}

impl Entry {
    fn cost(&self) -> usize {
        self.have.len() + ENTRY_OVERHEAD
    }
}

/// The leader's partial owners of every file.
#[derive(Debug)]
pub struct Partials {
    limits: PartialLimits,
    /// Per file, most recently refreshed first.
    files: HashMap<FileId, Vec<Entry>>,
    /// Entries per peer.
    per_peer: HashMap<PeerId, usize>,
    bytes: usize,
    last_sweep: Option<Instant>,
}

impl Partials {
    pub fn new(limits: PartialLimits) -> Self {
        Partials {
            limits,
            files: HashMap::new(),
            per_peer: HashMap::new(),
            bytes: 0,
            last_sweep: None,
        }
    }

    /// Forgets everything (this member starts or stops leading).
    pub fn clear(&mut self) {
        self.files.clear();
        self.per_peer.clear();
        self.bytes = 0;
    }

    /// Bytes held now (bit sets plus bookkeeping).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries held now, expired or not.
    pub fn len(&self) -> usize {
        self.files.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Records that `peer` holds the chunks of `have` of `file` (whose
    /// metadata the registry gave) at `now`. The caller has checked that
    /// the peer is the session's.
    pub fn announce(&mut self, peer: PeerId, file: &FileMeta, have: Vec<u8>, now: Instant) -> Result<(), ApiError> {
        check_have(file, &have)?;
        self.sweep_if_due(now);
        let entries = self.files.entry(file.id).or_default();
        expire(entries, &mut self.per_peer, &mut self.bytes, self.limits.ttl, now);
        if let Some(i) = entries.iter().position(|e| e.peer == peer) {
            // A refresh: same size, so it always fits.
            let mut e = entries.remove(i);
            e.have = have;
            e.at = now;
            entries.insert(0, e);
            return Ok(());
        }
        let held = self.per_peer.get(&peer).copied().unwrap_or(0);
        if held >= self.limits.max_files_per_peer {
            // Its other entries may have lapsed: look once before refusing.
            self.sweep(now);
            if self.per_peer.get(&peer).copied().unwrap_or(0) >= self.limits.max_files_per_peer {
                self.drop_if_empty(&file.id);
                return Err(ApiError::Quota {
                    what: "files downloaded at once (partial owner)".into(),
                    limit: self.limits.max_files_per_peer as u64,
                });
            }
        }
        let entry = Entry { peer, have, at: now };
        if self.bytes + entry.cost() > self.limits.max_bytes {
            self.sweep(now);
            if self.bytes + entry.cost() > self.limits.max_bytes {
                self.drop_if_empty(&file.id);
                return Err(ApiError::Overloaded);
            }
        }
        let entries = self.files.entry(file.id).or_default();
        self.bytes += entry.cost();
        *self.per_peer.entry(peer).or_default() += 1;
        entries.insert(0, entry);
        // Keep the most recent.
        while entries.len() > self.limits.max_per_file {
            let old = entries.pop().expect("over the bound, so not empty");
            forget(&mut self.per_peer, &mut self.bytes, &old);
        }
        Ok(())
    }

    /// `peer` no longer downloads `file` (it owns it now, or disowned it).
    pub fn remove(&mut self, file: &FileId, peer: &PeerId) {
        if let Some(entries) = self.files.get_mut(file) {
            if let Some(i) = entries.iter().position(|e| e.peer == *peer) {
                let old = entries.remove(i);
                forget(&mut self.per_peer, &mut self.bytes, &old);
            }
        }
        self.drop_if_empty(file);
    }

    /// The live partial owners of `file`, most recently refreshed first.
    pub fn owners(&self, file: &FileId, now: Instant) -> Vec<(PeerId, &[u8])> {
        self.files
            .get(file)
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| live(e, self.limits.ttl, now))
                    .map(|e| (e.peer, e.have.as_slice()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many live partial owners `file` has.
    pub fn count(&self, file: &FileId, now: Instant) -> u32 {
        self.files.get(file).map_or(0, |entries| {
            entries.iter().filter(|e| live(e, self.limits.ttl, now)).count() as u32
        })
    }

    fn drop_if_empty(&mut self, file: &FileId) {
        if self.files.get(file).is_some_and(Vec::is_empty) {
            self.files.remove(file);
        }
    }

    /// Sweeps lapsed entries at most once per `ttl`, so memory follows
    /// the downloads under way, not history.
    fn sweep_if_due(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= self.limits.ttl)
        {
            self.sweep(now);
        }
    }

    fn sweep(&mut self, now: Instant) {
        self.last_sweep = Some(now);
        let ttl = self.limits.ttl;
        let (per_peer, bytes) = (&mut self.per_peer, &mut self.bytes);
        self.files.retain(|_, entries| {
            expire(entries, per_peer, bytes, ttl, now);
            !entries.is_empty()
        });
    }
}

fn live(e: &Entry, ttl: Duration, now: Instant) -> bool {
    now.saturating_duration_since(e.at) <= ttl
}

fn expire(
    entries: &mut Vec<Entry>,
    per_peer: &mut HashMap<PeerId, usize>,
    bytes: &mut usize,
    ttl: Duration,
    now: Instant,
) {
    // Most recent first: the lapsed ones are at the end.
    while entries.last().is_some_and(|e| !live(e, ttl, now)) {
        let old = entries.pop().expect("just looked");
        forget(per_peer, bytes, &old);
    }
}

fn forget(per_peer: &mut HashMap<PeerId, usize>, bytes: &mut usize, old: &Entry) {
    *bytes -= old.cost();
    if let Some(n) = per_peer.get_mut(&old.peer) {
        *n -= 1;
        if *n == 0 {
            per_peer.remove(&old.peer);
        }
    }
}

/// A have-bit set must match the file: `chunk_count.div_ceil(8)` bytes,
/// nothing set past the last chunk.
pub fn check_have(file: &FileMeta, have: &[u8]) -> Result<(), ApiError> {
    if file.chunk_count > MAX_PARTIAL_CHUNKS {
        return Err(ApiError::Invalid(format!(
            "file {} has {} chunks; partial owners are kept for files of at most {MAX_PARTIAL_CHUNKS}",
            file.id, file.chunk_count
        )));
    }
    let want = file.chunk_count.div_ceil(8) as usize;
    if have.len() != want {
        return Err(ApiError::Invalid(format!(
            "have-bit set of {} bytes; file {} has {} chunks, so {want} bytes",
            have.len(),
            file.id,
            file.chunk_count
        )));
    }
    let tail = file.chunk_count % 8;
    if tail != 0 && have.last().is_some_and(|b| b >> tail != 0) {
        return Err(ApiError::Invalid(format!(
            "have-bit set marks chunks past the last one ({})",
            file.chunk_count - 1
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::tracker_api::{Answer, PartialOwner, PeerInfo, Reply};

    fn meta(n: u8, chunks: u32) -> FileMeta {
        FileMeta {
            id: FileId([n; 32]),
            name: format!("f{n}"),
            size: chunks as u64 * 16384,
            chunk_size: 16384,
            chunk_count: chunks,
            files: 0,
        }
    }

    fn limits() -> PartialLimits {
        PartialLimits {
            ttl: Duration::from_secs(5),
            max_files_per_peer: 3,
            max_per_file: 4,
            max_bytes: 1 << 20,
        }
    }

    fn peer(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    #[test]
    fn entries_lapse_without_refresh() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut p = Partials::new(limits());
        let f = meta(1, 20);
        p.announce(peer(1), &f, vec![1, 0, 0], t0).unwrap();
        p.announce(peer(2), &f, vec![3, 0, 0], t0 + 2 * s).unwrap();
        assert_eq!(p.count(&f.id, t0 + 5 * s), 2);
        // Peer 1 lapses at 5 s, peer 2 at 7 s, unless refreshed.
        assert_eq!(p.owners(&f.id, t0 + 6 * s), vec![(peer(2), &[3u8, 0, 0][..])]);
        p.announce(peer(2), &f, vec![7, 0, 0], t0 + 6 * s).unwrap();
        assert_eq!(p.owners(&f.id, t0 + 10 * s), vec![(peer(2), &[7u8, 0, 0][..])]);
        assert_eq!(p.count(&f.id, t0 + 12 * s), 0);
        // A later announcement sweeps what lapsed: memory follows the live set.
        let g = meta(2, 8);
        p.announce(peer(3), &g, vec![0xff], t0 + 20 * s).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p.bytes(), 1 + ENTRY_OVERHEAD);
        assert_eq!(p.per_peer.len(), 1);
    }

    #[test]
    fn own_and_disown_end_an_entry() {
        let t0 = Instant::now();
        let mut p = Partials::new(limits());
        let f = meta(1, 9);
        p.announce(peer(1), &f, vec![0, 1], t0).unwrap();
        p.announce(peer(2), &f, vec![0, 0], t0).unwrap();
        p.remove(&f.id, &peer(1));
        assert_eq!(p.owners(&f.id, t0), vec![(peer(2), &[0u8, 0][..])]);
        p.remove(&f.id, &peer(2));
        p.remove(&f.id, &peer(3)); // never there: nothing happens
        assert!(p.is_empty());
        assert_eq!(p.bytes(), 0);
        assert!(p.per_peer.is_empty());
    }

    #[test]
    fn bad_bit_sets_are_refused() {
        let t0 = Instant::now();
        let mut p = Partials::new(limits());
        let f = meta(1, 10); // 2 bytes, bits 10..16 must be clear
        for (have, what) in [
            (vec![], "0 bytes"),
            (vec![0], "1 bytes"),
            (vec![0, 0, 0], "3 bytes"),
            (vec![0, 0b100], "past the last"),
        ] {
            let e = p.announce(peer(1), &f, have.clone(), t0).unwrap_err();
            assert!(matches!(&e, ApiError::Invalid(m) if m.contains(what)), "{have:?}: {e}");
        }
        p.announce(peer(1), &f, vec![0xff, 0b11], t0).unwrap();
        let huge = meta(2, MAX_PARTIAL_CHUNKS + 1);
        let e = p
            .announce(peer(1), &huge, vec![0; huge.chunk_count.div_ceil(8) as usize], t0)
            .unwrap_err();
        assert!(matches!(e, ApiError::Invalid(_)), "{e}");
        // Refusals leave nothing behind.
        assert_eq!(p.len(), 1);
        assert_eq!(p.files.len(), 1);
    }

    #[test]
    fn a_file_keeps_its_most_recent_partial_owners() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut p = Partials::new(limits());
        let f = meta(1, 8);
        for i in 1..=6u8 {
            p.announce(peer(i), &f, vec![i], t0 + i as u32 * ms).unwrap();
        }
        let kept: Vec<PeerId> = p.owners(&f.id, t0 + 10 * ms).into_iter().map(|(q, _)| q).collect();
        assert_eq!(kept, vec![peer(6), peer(5), peer(4), peer(3)]);
        // A refresh moves a peer to the front, so the next newcomer
        // pushes out someone else.
        p.announce(peer(3), &f, vec![3], t0 + 11 * ms).unwrap();
        p.announce(peer(7), &f, vec![7], t0 + 12 * ms).unwrap();
        let kept: Vec<PeerId> = p.owners(&f.id, t0 + 13 * ms).into_iter().map(|(q, _)| q).collect();
        assert_eq!(kept, vec![peer(7), peer(3), peer(6), peer(5)]);
        // The pushed-out peers no longer count against their own bound.
        assert_eq!(p.per_peer.get(&peer(1)), None);
        assert_eq!(p.bytes(), 4 * (1 + ENTRY_OVERHEAD));
    }

    #[test]
    fn a_peer_has_a_bounded_number_of_partial_files() {
        let t0 = Instant::now();
        let mut p = Partials::new(limits());
        for f in 1..=3 {
            p.announce(peer(1), &meta(f, 8), vec![0], t0).unwrap();
        }
        let e = p.announce(peer(1), &meta(4, 8), vec![0], t0).unwrap_err();
        assert!(matches!(e, ApiError::Quota { limit: 3, .. }), "{e}");
        assert_eq!(p.files.len(), 3, "a refused file leaves no empty list");
        // Refreshing one it has is fine; another peer is not affected.
        p.announce(peer(1), &meta(2, 8), vec![1], t0).unwrap();
        p.announce(peer(2), &meta(4, 8), vec![0], t0).unwrap();
        // Once one lapses, there is room again.
        let later = t0 + Duration::from_secs(4);
        p.announce(peer(1), &meta(2, 8), vec![1], later).unwrap();
        let after = t0 + Duration::from_secs(6);
        p.announce(peer(1), &meta(2, 8), vec![1], after).unwrap();
        p.announce(peer(1), &meta(5, 8), vec![1], after).unwrap();
    }

    #[test]
    fn total_memory_is_bounded() {
        let t0 = Instant::now();
        let f = meta(1, 8 * 1000); // 1000-byte bit sets
        let mut p = Partials::new(PartialLimits {
            max_bytes: 3 * (1000 + ENTRY_OVERHEAD),
            max_per_file: 100,
            ..limits()
        });
        for i in 0..3 {
            p.announce(peer(i), &f, vec![0; 1000], t0).unwrap();
        }
        assert_eq!(p.announce(peer(9), &f, vec![0; 1000], t0), Err(ApiError::Overloaded));
        // Refreshes still pass; once entries lapse, newcomers fit again.
        p.announce(peer(0), &f, vec![1; 1000], t0).unwrap();
        let later = t0 + Duration::from_secs(6);
        p.announce(peer(9), &f, vec![0; 1000], later).unwrap();
        assert_eq!(p.count(&f.id, later), 1);
        assert!(p.bytes() <= 3 * (1000 + ENTRY_OVERHEAD));
    }

    /// The largest owners page with the most partial owners, each with
    /// the largest bit set and the most addresses, fits in one frame.
    #[test]
    fn a_full_owners_answer_fits_in_a_frame() {
        let limits = protocol::config::Limits::default();
        let o = OwnerLimits::default();
        let addr: std::net::SocketAddr = "[2001:db8:1234:5678:9abc:def0:1234:5678]:65535".parse().unwrap();
        let info = |i: usize| PeerInfo {
            peer_id: PeerId([i as u8; 32]),
            addrs: vec![addr; limits.max_peer_addrs],
        };
        let reply: Answer = Ok(Reply::Owners {
            file: FileMeta {
                name: "n".repeat(255),
                ..meta(1, MAX_PARTIAL_CHUNKS)
            },
            owners: (0..o.max_owners_page as usize).map(info).collect(),
            next: Some(PeerId([255; 32])),
            partial: (0..o.max_partial_owners_per_file)
                .map(|i| PartialOwner {
                    peer: info(i),
                    have: vec![0xff; MAX_PARTIAL_CHUNKS as usize / 8],
                })
                .collect(),
        });
        let len = protocol::codec::encode_body(&reply).unwrap().len();
        assert!(len < limits.max_frame_bytes, "{len} bytes");
    }
}
