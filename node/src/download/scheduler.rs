//! The download scheduler: a plain, clock-free state machine. Events go in
//! (a peer joined with its chunk set, a chunk arrived verified or bad, a
//! request failed, a peer vanished); decisions come out (which chunk to
//! ask of which peer, which duplicate requests to cancel). Time is only
//! what the caller passes in, so a small deterministic driver tests it.
//!
//! Policy:
//! - Rarest first: unrequested chunks are kept ordered by how many live
//!   peers hold them (complete and partial peers alike), and a peer takes
//!   the rarest one it holds. Ties are broken in an order drawn from
//!   `seed`, so that downloaders starting together from one seeder ask it
//!   for different chunks and then have something to give each other.
//! - Partial peers: what a peer holds can grow (`add_have`, e.g. from the
//!   tracker's copy of its bit set) or be replaced (`update_have`, its own
//!   answer); a chunk a peer once sent bad is never counted for it again.
//! - Depth per peer: between `min_depth` and `max_depth` requests in
//!   flight, in proportion to the peer's measured throughput relative to
//!   the fastest peer, so faster peers get more of the work.
//! - Endgame: when no unrequested chunk is left, an idle peer duplicates an
//!   outstanding request (at most `max_dup` copies of a chunk); the first
//!   copy to arrive wins and the others are cancelled.
//! - A bad chunk goes back to the pool and the peer gets a strike, and is
//!   never asked for that chunk again. Strikes rather than instant
//!   dropping, because QUIC's TLS rules out corruption in transit: a bad
//!   chunk is the peer's own copy, and a peer with one bad region is still
//!   useful for the rest; after `max_strikes` it is dropped, which bounds
//!   what a lying peer can waste.
//! - A peer that vanishes hands its outstanding chunks back to the pool.
//! - Sequential (`SchedConfig::sequential`, for streaming): rarity and the
//!   seed are ignored and every free slot takes the lowest missing chunk
//!   the peer holds, so the verified part grows from the start; the slots
//!   and depths are the same as above, so the peers still share the work
//!   and the throughput stays.

use std::collections::BTreeSet;

/// Index of a peer in the scheduler (in order of [`Scheduler::add_peer`]).
pub type PeerIdx = usize;

/// Tuning of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedConfig {
    pub min_depth: usize,
    pub max_depth: usize,
    /// Requests in flight over all peers (bounds the downloader's memory).
    pub max_total: usize,
    pub max_strikes: u32,
    /// Consecutive failed requests after which a peer is dropped.
    pub max_failures: u32,
    /// Copies of one request in flight at most during the endgame.
    pub max_dup: u8,
    /// Order among equally rare chunks: 0 for index order, else a
    /// permutation drawn from this seed.
    pub seed: u64,
    /// Lowest missing chunk first, whatever its rarity (see the module
    /// documentation).
    pub sequential: bool,
}

impl SchedConfig {
    /// The defaults for a per-peer depth cap and a total cap.
    pub fn new(max_depth: usize, max_total: usize) -> Self {
        let max_depth = max_depth.max(2);
        SchedConfig {
            min_depth: 2,
            max_depth,
            max_total: max_total.max(2),
            max_strikes: 3,
            max_failures: 5,
            max_dup: 2,
            seed: 0,
            sequential: false,
        }
    }
}

/// Where the download stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Every chunk is verified.
    Done,
    /// Requests are in flight or can be made.
    Running,
    /// Nothing is in flight and `missing` chunks are held by no live peer.
    Stuck { missing: u32 },
}

/// What one peer contributed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub chunks: u32,
    pub bytes: u64,
    pub strikes: u32,
    pub dropped: bool,
}

#[derive(Debug)]
struct Peer {
    have: Vec<u64>,
    /// Chunks this peer sent bad: never counted for it again.
    bad: Vec<u32>,
    alive: bool,
    /// Outstanding requests: chunk and the time it was sent.
    in_flight: Vec<(u32, u64)>,
    failures: u32,
    stats: PeerStats,
    /// Decayed bytes delivered and decayed busy time: their ratio is the
    /// throughput, robust to chunks that complete in bursts.
    bytes_w: f64,
    busy_w: f64,
    last_done_at: Option<u64>,
}

impl Peer {
    fn has(&self, c: u32) -> bool {
        self.have.get(c as usize / 64).is_some_and(|w| w & (1 << (c % 64)) != 0)
    }

    fn clear(&mut self, c: u32) -> bool {
        let had = self.has(c);
        if had {
            self.have[c as usize / 64] &= !(1 << (c % 64));
        }
        had
    }

    fn rate(&self) -> f64 {
        if self.busy_w > 0.0 {
            self.bytes_w / self.busy_w
        } else {
            0.0
        }
    }

    fn requested(&self, c: u32) -> bool {
        self.in_flight.iter().any(|&(x, _)| x == c)
    }
}

/// The scheduler of one file's download.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedConfig,
    done: Vec<bool>,
    remaining: u32,
    /// Live peers that hold each chunk.
    avail: Vec<u16>,
    /// Requests in flight for each chunk.
    outstanding: Vec<u8>,
    /// Missing chunks with no request in flight, rarest first, as
    /// (holders, rank); `order[rank]` is the chunk. Sequential: (0, chunk).
    pool: BTreeSet<(u16, u32)>,
    /// Rank of each chunk among equally rare ones, and its inverse.
    rank: Vec<u32>,
    order: Vec<u32>,
    /// Missing chunks with at least one request in flight.
    requested: BTreeSet<u32>,
    peers: Vec<Peer>,
    total_in_flight: usize,
}

impl Scheduler {
    /// A scheduler for `chunks` chunks of which those with `have(i)` are
    /// already verified locally.
    pub fn new(chunks: u32, cfg: SchedConfig, have: impl Fn(u32) -> bool) -> Self {
        let done: Vec<bool> = (0..chunks).map(have).collect();
        let remaining = done.iter().filter(|d| !**d).count() as u32;
        let order = permutation(chunks, if cfg.sequential { 0 } else { cfg.seed });
        let mut rank = vec![0; chunks as usize];
        for (r, &c) in order.iter().enumerate() {
            rank[c as usize] = r as u32;
        }
        let pool = (0..chunks)
            .filter(|&c| !done[c as usize])
            .map(|c| (0, rank[c as usize]))
            .collect();
        Scheduler {
            rank,
            order,
            cfg,
            done,
            remaining,
            avail: vec![0; chunks as usize],
            outstanding: vec![0; chunks as usize],
            pool,
            requested: BTreeSet::new(),
            peers: Vec::new(),
            total_in_flight: 0,
        }
    }

    /// Adds a peer holding the chunks of `have` (the wire bit set).
    pub fn add_peer(&mut self, have: &[u8]) -> PeerIdx {
        let n = self.done.len();
        let mut words = vec![0u64; n.div_ceil(64)];
        for c in 0..n {
            if have.get(c / 8).is_some_and(|b| b & (1 << (c % 8)) != 0) {
                words[c / 64] |= 1 << (c % 64);
            }
        }
        let idx = self.peers.len();
        self.peers.push(Peer {
            have: words,
            bad: Vec::new(),
            alive: true,
            in_flight: Vec::new(),
            failures: 0,
            stats: PeerStats::default(),
            bytes_w: 0.0,
            busy_w: 0.0,
            last_done_at: None,
        });
        for c in 0..n as u32 {
            if self.peers[idx].has(c) {
                self.shift_avail(c, 1);
            }
        }
        idx
    }

    /// Replaces what a live peer holds (a partial peer that got further,
    /// in its own answer).
    pub fn update_have(&mut self, p: PeerIdx, have: &[u8]) {
        self.merge_have(p, have, true);
    }

    /// Adds to what a live peer holds (e.g. the tracker's copy of a
    /// partial peer's bit set, which may be older than the peer's own
    /// answer, so it never takes a chunk away).
    pub fn add_have(&mut self, p: PeerIdx, have: &[u8]) {
        self.merge_have(p, have, false);
    }

    fn merge_have(&mut self, p: PeerIdx, have: &[u8], replace: bool) {
        if !self.peers[p].alive {
            return;
        }
        for c in 0..self.done.len() as u32 {
            let peer = &mut self.peers[p];
            let now = have.get(c as usize / 8).is_some_and(|b| b & (1 << (c % 8)) != 0) && !peer.bad.contains(&c);
            if !now && !replace {
                continue;
            }
            match (peer.has(c), now) {
                (false, true) => {
                    peer.have[c as usize / 64] |= 1 << (c % 64);
                    self.shift_avail(c, 1);
                }
                (true, false) => {
                    peer.clear(c);
                    self.shift_avail(c, -1);
                }
                _ => {}
            }
        }
    }

    fn shift_avail(&mut self, c: u32, by: i32) {
        let i = c as usize;
        let old = self.avail[i];
        let new = (old as i32 + by).clamp(0, u16::MAX as i32) as u16;
        self.avail[i] = new;
        if self.cfg.sequential {
            return;
        }
        let r = self.rank[i];
        if self.pool.remove(&(old, r)) {
            self.pool.insert((new, r));
        }
    }

    /// The number of requests peer `p` may have in flight now.
    pub fn depth(&self, p: PeerIdx) -> usize {
        let best = self
            .peers
            .iter()
            .filter(|q| q.alive)
            .map(Peer::rate)
            .fold(0.0, f64::max);
        let rate = self.peers[p].rate();
        if rate <= 0.0 || best <= 0.0 {
            // Not measured yet: start in the middle.
            return ((self.cfg.min_depth + self.cfg.max_depth) / 2).max(self.cfg.min_depth);
        }
        let d = (self.cfg.max_depth as f64 * rate / best).ceil() as usize;
        d.clamp(self.cfg.min_depth, self.cfg.max_depth)
    }

    /// The requests to send now, at time `now` (any monotonic unit, the
    /// same in every call). Each free slot goes to the peer using the
    /// smallest share of its depth, so when the total cap binds the slots
    /// are spread in proportion to the depths, and the rarest chunks spread
    /// over peers.
    pub fn assign(&mut self, now: u64) -> Vec<(PeerIdx, u32)> {
        let mut out = Vec::new();
        let depths: Vec<usize> = (0..self.peers.len()).map(|p| self.depth(p)).collect();
        let mut exhausted = vec![false; self.peers.len()];
        while self.total_in_flight < self.cfg.max_total {
            let next = (0..self.peers.len())
                .filter(|&p| !exhausted[p] && self.peers[p].alive && self.peers[p].in_flight.len() < depths[p])
                .min_by(|&a, &b| {
                    let share = |p: PeerIdx| self.peers[p].in_flight.len() as f64 / depths[p] as f64;
                    share(a).total_cmp(&share(b))
                });
            let Some(p) = next else { break };
            match self.pick(p) {
                Some(c) => {
                    self.peers[p].in_flight.push((c, now));
                    self.outstanding[c as usize] += 1;
                    self.requested.insert(c);
                    self.total_in_flight += 1;
                    out.push((p, c));
                }
                None => exhausted[p] = true,
            }
        }
        out
    }

    fn pick(&mut self, p: PeerIdx) -> Option<u32> {
        let peer = &self.peers[p];
        if let Some(&key) = self.pool.iter().find(|&&(_, r)| peer.has(self.order[r as usize])) {
            self.pool.remove(&key);
            return Some(self.order[key.1 as usize]);
        }
        // Endgame: duplicate the least duplicated outstanding request.
        self.requested
            .iter()
            .copied()
            .filter(|&c| self.outstanding[c as usize] < self.cfg.max_dup && peer.has(c) && !peer.requested(c))
            .min_by_key(|&c| self.outstanding[c as usize])
    }

    /// Removes `c` from `p`'s requests; returns the time it was sent.
    fn settle(&mut self, p: PeerIdx, c: u32) -> Option<u64> {
        let peer = &mut self.peers[p];
        let pos = peer.in_flight.iter().position(|&(x, _)| x == c)?;
        let (_, sent) = peer.in_flight.swap_remove(pos);
        self.total_in_flight -= 1;
        let i = c as usize;
        self.outstanding[i] -= 1;
        if self.outstanding[i] == 0 {
            self.requested.remove(&c);
            if !self.done[i] {
                self.pool.insert(self.pool_key(i));
            }
        }
        Some(sent)
    }

    /// The key of chunk `i` in the pool.
    fn pool_key(&self, i: usize) -> (u16, u32) {
        let holders = if self.cfg.sequential { 0 } else { self.avail[i] };
        (holders, self.rank[i])
    }

    /// Chunk `c` of `bytes` bytes arrived from `p` and verified at `now`.
    /// Returns the duplicate requests for it to cancel.
    pub fn chunk_ok(&mut self, p: PeerIdx, c: u32, bytes: u64, now: u64) -> Vec<(PeerIdx, u32)> {
        let i = c as usize;
        if i >= self.done.len() {
            return Vec::new();
        }
        if let Some(sent) = self.settle(p, c) {
            let peer = &mut self.peers[p];
            let since = peer.last_done_at.map_or(sent, |last| last.max(sent));
            peer.bytes_w = peer.bytes_w * 0.9 + bytes as f64;
            peer.busy_w = peer.busy_w * 0.9 + now.saturating_sub(since).max(1) as f64;
            peer.last_done_at = Some(now);
            peer.failures = 0;
        }
        if self.done[i] {
            return Vec::new();
        }
        self.done[i] = true;
        self.remaining -= 1;
        self.pool.remove(&self.pool_key(i));
        self.peers[p].stats.chunks += 1;
        self.peers[p].stats.bytes += bytes;
        let mut cancel = Vec::new();
        for q in 0..self.peers.len() {
            if self.settle(q, c).is_some() {
                cancel.push((q, c));
            }
        }
        cancel
    }

    /// Chunk `c` from `p` failed verification. Returns whether the peer
    /// was dropped for it.
    pub fn chunk_bad(&mut self, p: PeerIdx, c: u32) -> bool {
        self.settle(p, c);
        if !self.peers[p].alive {
            return false;
        }
        if self.peers[p].clear(c) {
            self.shift_avail(c, -1);
        }
        self.peers[p].bad.push(c);
        self.peers[p].stats.strikes += 1;
        if self.peers[p].stats.strikes >= self.cfg.max_strikes {
            self.peer_gone(p);
            return true;
        }
        false
    }

    /// A request failed without data; `not_held` when the peer said it
    /// lacks the chunk. Returns whether the peer was dropped.
    pub fn request_failed(&mut self, p: PeerIdx, c: u32, not_held: bool) -> bool {
        if self.settle(p, c).is_none() || !self.peers[p].alive {
            return false;
        }
        if not_held && self.peers[p].clear(c) {
            self.shift_avail(c, -1);
        }
        self.peers[p].failures += 1;
        if self.peers[p].failures >= self.cfg.max_failures {
            self.peer_gone(p);
            return true;
        }
        false
    }

    /// Peer `p` is gone: its chunks no longer count and its outstanding
    /// requests go back to the pool.
    pub fn peer_gone(&mut self, p: PeerIdx) {
        if !self.peers[p].alive {
            return;
        }
        let pending: Vec<u32> = self.peers[p].in_flight.iter().map(|&(c, _)| c).collect();
        for c in pending {
            self.settle(p, c);
        }
        self.peers[p].alive = false;
        self.peers[p].stats.dropped = true;
        for c in 0..self.done.len() as u32 {
            if self.peers[p].has(c) {
                self.shift_avail(c, -1);
            }
        }
    }

    pub fn progress(&self) -> Progress {
        if self.remaining == 0 {
            return Progress::Done;
        }
        if self.total_in_flight > 0 {
            return Progress::Running;
        }
        let assignable = self.peers.iter().any(|peer| {
            peer.alive
                && (self.pool.iter().any(|&(_, r)| peer.has(self.order[r as usize]))
                    || self.requested.iter().any(|&c| peer.has(c) && !peer.requested(c)))
        });
        if assignable {
            return Progress::Running;
        }
        let missing = (0..self.done.len())
            .filter(|&i| !self.done[i] && self.avail[i] == 0)
            .count() as u32;
        Progress::Stuck { missing }
    }

    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    pub fn is_done(&self, c: u32) -> bool {
        self.done.get(c as usize).copied().unwrap_or(false)
    }

    pub fn alive_peers(&self) -> usize {
        self.peers.iter().filter(|p| p.alive).count()
    }

    pub fn is_alive(&self, p: PeerIdx) -> bool {
        self.peers[p].alive
    }

    pub fn stats(&self, p: PeerIdx) -> &PeerStats {
        &self.peers[p].stats
    }

    pub fn in_flight(&self) -> usize {
        self.total_in_flight
    }
}

/// 0..n in index order for seed 0, else shuffled (Fisher-Yates with a
/// splitmix64 stream from `seed`).
fn permutation(n: u32, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).collect();
    if seed == 0 {
        return v;
    }
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const CHUNK: u64 = 1000;

    /// A simulated peer: serves its queue in order, `speed` bytes per tick.
    struct SimPeer {
        speed: u64,
        corrupt: bool,
        vanish_at: Option<u64>,
        queue: VecDeque<u32>,
        busy_until: u64,
    }

    fn sim(n: u32, peers: Vec<(Vec<u8>, SimPeer)>, max_depth: usize) -> (Scheduler, Vec<(u64, u32)>) {
        sim_with(n, peers, SchedConfig::new(max_depth, 64))
    }

    fn sim_with(n: u32, peers: Vec<(Vec<u8>, SimPeer)>, cfg: SchedConfig) -> (Scheduler, Vec<(u64, u32)>) {
        let mut s = Scheduler::new(n, cfg, |_| false);
        let mut sims: Vec<SimPeer> = Vec::new();
        for (have, p) in peers {
            s.add_peer(&have);
            sims.push(p);
        }
        let mut now = 0u64;
        let mut log = Vec::new();
        for _ in 0..1_000_000 {
            for (p, c) in s.assign(now) {
                sims[p].queue.push_back(c);
            }
            match s.progress() {
                Progress::Running => {}
                _ => break,
            }
            now += 1;
            for p in 0..sims.len() {
                if sims[p].vanish_at.is_some_and(|t| now >= t) && s.is_alive(p) {
                    s.peer_gone(p);
                    sims[p].queue.clear();
                    continue;
                }
                if !s.is_alive(p) {
                    sims[p].queue.clear();
                    continue;
                }
                if sims[p].busy_until <= now {
                    if let Some(c) = sims[p].queue.pop_front() {
                        sims[p].busy_until = now + CHUNK / sims[p].speed;
                        if sims[p].corrupt {
                            s.chunk_bad(p, c);
                        } else {
                            for (q, d) in s.chunk_ok(p, c, CHUNK, sims[p].busy_until) {
                                sims[q].queue.retain(|&x| x != d);
                            }
                            log.push((now, c));
                        }
                    }
                }
            }
        }
        (s, log)
    }

    fn peer(speed: u64) -> SimPeer {
        SimPeer {
            speed,
            corrupt: false,
            vanish_at: None,
            queue: VecDeque::new(),
            busy_until: 0,
        }
    }

    fn all(n: u32) -> Vec<u8> {
        vec![0xff; n.div_ceil(8) as usize]
    }

    #[test]
    fn three_peers_share_the_work() {
        let (s, _) = sim(300, (0..3).map(|_| (all(300), peer(100))).collect(), 8);
        assert_eq!(s.progress(), Progress::Done);
        for p in 0..3 {
            assert!(s.stats(p).chunks > 50, "peer {p}: {:?}", s.stats(p));
        }
    }

    #[test]
    fn faster_peer_gets_more_work_and_depth() {
        let (s, _) = sim(400, vec![(all(400), peer(500)), (all(400), peer(50))], 8);
        assert_eq!(s.progress(), Progress::Done);
        assert!(
            s.stats(0).chunks > 3 * s.stats(1).chunks,
            "{:?} {:?}",
            s.stats(0),
            s.stats(1)
        );
        assert!(s.depth(0) > s.depth(1));
        assert_eq!(s.depth(1), 2);
    }

    #[test]
    fn total_cap_is_shared_between_equal_peers() {
        let mut s = Scheduler::new(100, SchedConfig::new(8, 8), |_| false);
        let peers: Vec<PeerIdx> = (0..3).map(|_| s.add_peer(&all(100))).collect();
        let sent = s.assign(0);
        assert_eq!(sent.len(), 8);
        let load: Vec<usize> = peers.iter().map(|&p| s.peers[p].in_flight.len()).collect();
        assert_eq!(load, vec![3, 3, 2], "the first peer must not take every slot");
        // A freed slot goes to the peer with the smallest share in use.
        let (p, c) = sent.iter().copied().find(|&(p, _)| p == 0).unwrap();
        s.chunk_ok(p, c, CHUNK, 10);
        assert_eq!(s.assign(10).len(), 1);
        assert_eq!(s.peers[2].in_flight.len() + s.peers[0].in_flight.len(), 5);
    }

    #[test]
    fn rarest_first() {
        let mut rare = all(64);
        rare[0] = 0; // the second peer lacks chunks 0..8
        let mut s = Scheduler::new(64, SchedConfig::new(4, 64), |_| false);
        let a = s.add_peer(&all(64));
        s.add_peer(&rare);
        let first: Vec<u32> = s
            .assign(0)
            .into_iter()
            .filter(|&(p, _)| p == a)
            .map(|(_, c)| c)
            .collect();
        assert!(first.iter().all(|&c| c < 8), "{first:?}");
    }

    #[test]
    fn corrupt_peer_is_dropped_and_download_exact() {
        let mut bad = peer(100);
        bad.corrupt = true;
        let (s, log) = sim(100, vec![(all(100), bad), (all(100), peer(100))], 4);
        assert_eq!(s.progress(), Progress::Done);
        assert!(s.stats(0).dropped && s.stats(0).chunks == 0 && s.stats(0).strikes == 3);
        let mut got: Vec<u32> = log.iter().map(|&(_, c)| c).collect();
        got.sort();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn vanished_peer_hands_back_its_chunks() {
        let mut gone = peer(100);
        gone.vanish_at = Some(50);
        let (s, _) = sim(200, vec![(all(200), gone), (all(200), peer(100))], 8);
        assert_eq!(s.progress(), Progress::Done);
        assert!(s.stats(0).dropped && s.stats(0).chunks > 0);
    }

    #[test]
    fn chunk_held_by_nobody_is_stuck() {
        let mut have = all(16);
        have[1] = 0b1111_1110; // nobody has chunk 8
        let (s, _) = sim(16, vec![(have.clone(), peer(100)), (have, peer(100))], 4);
        assert_eq!(s.progress(), Progress::Stuck { missing: 1 });
        assert_eq!(s.remaining(), 1);
    }

    #[test]
    fn endgame_duplicates_then_cancels() {
        let mut s = Scheduler::new(1, SchedConfig::new(2, 8), |_| false);
        let a = s.add_peer(&all(1));
        let b = s.add_peer(&all(1));
        let sent = s.assign(0);
        assert_eq!(sent, vec![(a, 0), (b, 0)], "the idle peer duplicates the last chunk");
        assert_eq!(s.chunk_ok(b, 0, 10, 5), vec![(a, 0)]);
        assert_eq!(s.progress(), Progress::Done);
        assert_eq!(s.in_flight(), 0);
        // A late answer of the cancelled copy changes nothing.
        assert!(s.chunk_ok(a, 0, 10, 6).is_empty());
        assert_eq!(s.stats(a).chunks, 0);
    }

    #[test]
    fn partial_peers_grow_and_count_for_rarity() {
        let mut s = Scheduler::new(16, SchedConfig::new(2, 64), |_| false);
        let seeder = s.add_peer(&all(16));
        let part = s.add_peer(&[0, 0]);
        // The partial peer has nothing yet: only the seeder is asked.
        let sent = s.assign(0);
        assert!(sent.iter().all(|&(p, _)| p == seeder), "{sent:?}");
        for &(p, c) in &sent {
            s.request_failed(p, c, false);
        }
        // The tracker says it now holds chunks 0..8; they become less rare,
        // so the seeder is asked for the others first.
        s.add_have(part, &[0xff, 0]);
        let sent = s.assign(1);
        let from_seeder: Vec<u32> = sent.iter().filter(|&&(p, _)| p == seeder).map(|&(_, c)| c).collect();
        let from_part: Vec<u32> = sent.iter().filter(|&&(p, _)| p == part).map(|&(_, c)| c).collect();
        assert!(from_seeder.iter().all(|&c| c >= 8), "{from_seeder:?}");
        assert!(
            !from_part.is_empty() && from_part.iter().all(|&c| c < 8),
            "{from_part:?}"
        );
        // An older copy from the tracker never takes a chunk away; the
        // peer's own answer does.
        s.add_have(part, &[0x0f, 0]);
        assert!(s.peers[part].has(7));
        s.update_have(part, &[0x0f, 0]);
        assert!(!s.peers[part].has(7) && s.peers[part].has(3));
    }

    #[test]
    fn a_bad_chunk_is_never_counted_again_for_that_peer() {
        let mut s = Scheduler::new(8, SchedConfig::new(2, 64), |_| false);
        let p = s.add_peer(&[0b11]);
        let sent = s.assign(0);
        let (_, c) = sent[0];
        assert!(!s.chunk_bad(p, c));
        s.add_have(p, &[0b11]);
        s.update_have(p, &[0b11]);
        assert!(!s.peers[p].has(c));
        assert_eq!(s.avail[c as usize], 0);
    }

    #[test]
    fn seeded_order_spreads_equally_rare_chunks() {
        let first = |seed| {
            let mut cfg = SchedConfig::new(4, 64);
            cfg.seed = seed;
            let mut s = Scheduler::new(1000, cfg, |_| false);
            s.add_peer(&all(1000));
            let mut got: Vec<u32> = s.assign(0).into_iter().map(|(_, c)| c).collect();
            got.sort();
            got
        };
        assert_eq!(first(0), vec![0, 1, 2], "seed 0 keeps index order");
        assert_ne!(first(1), first(2), "two downloaders ask for different chunks");
        assert_eq!(first(7), first(7));
        let mut p = permutation(1000, 5);
        p.sort();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }

    fn sequential(max_depth: usize, max_total: usize) -> SchedConfig {
        let mut cfg = SchedConfig::new(max_depth, max_total);
        cfg.seed = 99; // ignored when sequential
        cfg.sequential = true;
        cfg
    }

    #[test]
    fn sequential_takes_the_lowest_missing_chunks_over_every_peer() {
        let mut rare = all(64);
        rare[7] = 0; // chunks 56..64 held by one peer only: rarest
        let mut s = Scheduler::new(64, sequential(4, 8), |c| c == 1);
        let peers: Vec<PeerIdx> = (0..3).map(|_| s.add_peer(&all(64))).collect();
        s.add_peer(&rare);
        let sent = s.assign(0);
        let mut got: Vec<u32> = sent.iter().map(|&(_, c)| c).collect();
        got.sort();
        assert_eq!(
            got,
            vec![0, 2, 3, 4, 5, 6, 7, 8],
            "rarity ignored, the held chunk skipped"
        );
        for p in peers {
            assert!(sent.iter().any(|&(q, _)| q == p), "peer {p} idle: {sent:?}");
        }
        // A freed slot takes the lowest chunk still missing and unrequested.
        let (p, c) = sent[0];
        s.chunk_ok(p, c, CHUNK, 10);
        assert_eq!(s.assign(10).iter().map(|&(_, c)| c).collect::<Vec<_>>(), vec![9]);
        // A failed request goes back and is the next one asked.
        let (p, c) = sent[1];
        s.request_failed(p, c, false);
        assert_eq!(s.assign(11).iter().map(|&(_, c)| c).collect::<Vec<_>>(), vec![c]);
    }

    #[test]
    fn sequential_completes_in_about_index_order() {
        let (s, log) = sim_with(200, (0..3).map(|_| (all(200), peer(100))).collect(), sequential(4, 8));
        assert_eq!(s.progress(), Progress::Done);
        // The verified prefix trails the chunks held by at most the
        // requests in flight.
        let mut held = [false; 200];
        let mut prefix = 0;
        for (k, &(_, c)) in log.iter().enumerate() {
            held[c as usize] = true;
            while prefix < 200 && held[prefix] {
                prefix += 1;
            }
            assert!(k + 1 - prefix <= 8, "{} held, prefix {prefix}", k + 1);
        }
        for p in 0..3 {
            assert!(s.stats(p).chunks > 40, "peer {p}: {:?}", s.stats(p));
        }
    }

    #[test]
    fn resumed_chunks_are_not_requested() {
        let mut s = Scheduler::new(10, SchedConfig::new(8, 64), |c| c < 7);
        s.add_peer(&all(10));
        let mut got: Vec<u32> = s.assign(0).into_iter().map(|(_, c)| c).collect();
        got.sort();
        assert_eq!(got, vec![7, 8, 9]);
    }
}
