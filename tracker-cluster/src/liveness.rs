//! Owner liveness: soft state on the leader, never a Raft entry.
//!
//! A heartbeat only moves a timestamp in the leader's memory, so it costs
//! no log entry and no fsync; losing this state with the leader loses
//! nothing that matters. A new leader knows no timestamps, so it gives
//! every owner one TTL of grace from the moment it took over: an owner that
//! is alive heartbeats within that TTL and stays listed without a gap, and
//! one that is dead drops out one TTL later, as it would have anyway.
//!
//! The struct is pure: every call takes `now`, so tests drive it with
//! hand-made instants.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use protocol::ids::PeerId;

#[derive(Debug, Clone)]
pub struct Liveness {
    ttl: Duration,
    /// How long a timestamp is kept (at least `ttl`; longer to answer
    /// [`Liveness::seen_within`] for the dead-file window).
    keep: Duration,
    last_seen: HashMap<PeerId, Instant>,
    /// Every owner counts as live until then (leader take-over grace).
    grace_until: Option<Instant>,
    /// When this member last became leader.
    leader_since: Option<Instant>,
}

impl Liveness {
    pub fn new(ttl: Duration) -> Self {
        Self::keeping(ttl, ttl)
    }

    /// Live within `ttl`; timestamps kept for `keep` (at least `ttl`).
    pub fn keeping(ttl: Duration, keep: Duration) -> Self {
        Liveness {
            ttl,
            keep: keep.max(ttl),
            last_seen: HashMap::new(),
            grace_until: None,
            leader_since: None,
        }
    }

    /// This member has just become leader.
    pub fn on_leader_start(&mut self, now: Instant) {
        self.grace_until = Some(now + self.ttl);
        self.leader_since = Some(now);
    }

    /// Whether `peer` was heard from within `window` (at most `keep`). A
    /// new leader knows no history, so for one `window` after taking over
    /// every peer counts as seen.
    pub fn seen_within(&self, peer: &PeerId, window: Duration, now: Instant) -> bool {
        if self
            .leader_since
            .is_some_and(|s| now.saturating_duration_since(s) < window)
        {
            return true;
        }
        self.last_seen
            .get(peer)
            .is_some_and(|t| now.saturating_duration_since(*t) <= window)
    }

    /// Whether every peer counts as seen within `window` now (a new
    /// leader's first `window`): then there is nothing to skip.
    pub fn all_seen_within(&self, window: Duration, now: Instant) -> bool {
        self.leader_since
            .is_none_or(|s| now.saturating_duration_since(s) < window)
    }

    /// A heartbeat (or any request) from `peer`.
    pub fn touch(&mut self, peer: PeerId, now: Instant) {
        self.last_seen.insert(peer, now);
        // Sweep now and then so memory follows the live set, not history.
        if self.last_seen.len().is_multiple_of(1024) {
            let keep = self.keep;
            self.last_seen.retain(|_, t| now.saturating_duration_since(*t) <= keep);
        }
    }

    /// Peers heard from within the TTL (the grace after a take-over
    /// aside: only peers actually heard from count).
    pub fn live_count(&self, now: Instant) -> usize {
        self.last_seen
            .values()
            .filter(|t| now.saturating_duration_since(**t) <= self.ttl)
            .count()
    }

    pub fn is_live(&self, peer: &PeerId, now: Instant) -> bool {
        if self.grace_until.is_some_and(|g| now < g) {
            return true;
        }
        self.last_seen
            .get(peer)
            .is_some_and(|t| now.saturating_duration_since(*t) <= self.ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_and_grace() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let mut l = Liveness::new(ttl);
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        assert!(!l.is_live(&a, t0));
        l.touch(a, t0);
        assert!(l.is_live(&a, t0 + ttl));
        assert!(!l.is_live(&a, t0 + ttl + Duration::from_millis(1)));
        // A new leader: b, never heard of, is live for one TTL of grace.
        let t1 = t0 + Duration::from_secs(100);
        l.on_leader_start(t1);
        assert!(l.is_live(&b, t1 + ttl - Duration::from_millis(1)));
        assert!(!l.is_live(&b, t1 + ttl));
        l.touch(b, t1 + Duration::from_secs(20));
        assert!(l.is_live(&b, t1 + Duration::from_secs(49)));
    }

    #[test]
    fn seen_within_a_longer_window() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let hour = Duration::from_secs(3600);
        let mut l = Liveness::keeping(ttl, hour);
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        l.on_leader_start(t0);
        // A new leader counts everyone as seen for one window.
        assert!(l.all_seen_within(hour, t0 + hour / 2));
        assert!(l.seen_within(&b, hour, t0 + hour / 2));
        l.touch(a, t0 + Duration::from_secs(60));
        let t1 = t0 + hour + Duration::from_secs(1);
        assert!(!l.all_seen_within(hour, t1));
        assert!(l.seen_within(&a, hour, t1));
        assert!(!l.is_live(&a, t1));
        assert!(!l.seen_within(&b, hour, t1));
        assert!(!l.seen_within(&a, hour, t0 + Duration::from_secs(60) + hour + Duration::from_secs(1)));
    }
}
