//! The member's wall clock: what the leader stamps on each batch
//! (`Batch::now_ms`) and what reads judge session expiry by (never earlier
//! than the replicated clock, see `Registry::now_ms`). One value shared by
//! the proposer and the API, so that tests can give a leader a clock that
//! is wrong (moved forward, then back) without touching the machine's.

use std::sync::{
    atomic::{AtomicI64, Ordering},
    Arc,
};

#[derive(Clone, Default)]
pub struct Clock {
    skew_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Milliseconds since the Unix epoch, as this member believes.
    pub fn now_ms(&self) -> u64 {
        let skew = self.skew_ms.load(Ordering::Relaxed);
        (protocol::unix_ms() as i64).saturating_add(skew).max(0) as u64
    }

    /// Makes this clock run `ms` ahead of the machine's (behind if
    /// negative).
    pub fn set_skew_ms(&self, ms: i64) {
        self.skew_ms.store(ms, Ordering::Relaxed);
    }
}
