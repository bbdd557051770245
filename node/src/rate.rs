//! The upload rate limit: one token bucket for the whole process, shared
//! by every connection of the peer server (`sharing.max_upload_rate`,
//! `--max-upload-rate`).
//!
//! Fairness: a chunk waits for its bytes in a FIFO queue (tokio's mutex
//! is fair), so grants are chunk-sized and in order of arrival and no peer
//! starves however many requests another keeps in flight. The bucket may
//! go into debt for a chunk larger than what it holds; the next grant
//! waits until the debt is paid, so the average rate holds exactly while
//! a burst stays at most `burst` bytes plus one chunk.
//!
//! [`Bucket`] is the pure, clock-driven core; [`UploadLimit`] is the async
//! shell around it.

use std::time::{Duration, Instant};

/// A token bucket: `rate` bytes per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    /// Negative while in debt.
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Starts empty, so a start of many requests does not burst.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Bucket {
            rate: rate.max(1) as f64,
            burst: burst as f64,
            tokens: 0.0,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// Takes `n` bytes at `now`; returns how long the caller must wait
    /// before sending them (zero if the bucket held them).
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The process-wide upload limit.
#[derive(Debug)]
pub struct UploadLimit {
    rate: u64,
    bucket: tokio::sync::Mutex<Bucket>,
}

impl UploadLimit {
    /// `rate` bytes per second; the bucket holds a tenth of a second's
    /// worth, so the rate holds over any window longer than that.
    pub fn new(rate: u64) -> Self {
        UploadLimit {
            rate,
            bucket: tokio::sync::Mutex::new(Bucket::new(rate, rate / 10, Instant::now())),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Waits until `n` bytes may be sent. Callers are served in arrival
    /// order: the lock is held through the wait, so the next in line waits
    /// for this grant and then for its own.
    pub async fn acquire(&self, n: u64) {
        let mut bucket = self.bucket.lock().await;
        let wait = bucket.take(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_average_rate_holds_and_bursts_are_bounded() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 100, t0);
        // Starts empty: the first grant waits for its bytes.
        assert_eq!(b.take(100, t0), Duration::from_millis(100));
        // Back to back, each 500-byte grant waits for the debt before it.
        let mut t = t0 + Duration::from_millis(100);
        let mut sent = 100;
        for _ in 0..10 {
            let w = b.take(500, t);
            t += w;
            sent += 500;
        }
        // 5100 bytes at 1000 B/s: 5.1 s, to the millisecond.
        let took = t.duration_since(t0).as_secs_f64();
        assert!((took - sent as f64 / 1000.0).abs() < 1e-3, "{took}");
        // After a long pause at most `burst` bytes go without waiting.
        let later = t + Duration::from_secs(60);
        assert_eq!(b.take(100, later), Duration::ZERO);
        assert!(b.take(1, later) > Duration::ZERO);
    }

    #[tokio::test]
    async fn grants_come_in_arrival_order() {
        let limit = std::sync::Arc::new(UploadLimit::new(1_000_000));
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Peer 0 queues many chunks first; peer 1's one chunk is not
        // starved behind all of them, only behind those already waiting.
        for (peer, chunks) in [(0u8, 5), (1, 1), (0, 5)] {
            for _ in 0..chunks {
                let (limit, order) = (limit.clone(), order.clone());
                tasks.push(tokio::spawn(async move {
                    limit.acquire(20_000).await;
                    order.lock().unwrap().push(peer);
                }));
                tokio::task::yield_now().await;
            }
        }
        let started = tokio::time::Instant::now();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
        // 220 kB at 1 MB/s (real time: only the lower bound is firm).
        let took = started.elapsed().as_secs_f64();
        assert!(took >= 0.2, "{took}");
    }
}
