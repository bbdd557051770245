//! Rate limits, upload and download: one token bucket per direction for
//! the whole process ([`Limits`]), the upload one shared by every
//! connection of the peer server (`sharing.max_upload_rate`,
//! `--max-upload-rate`), the download one by every chunk request of every
//! download (`sharing.max_download_rate`, `--max-download-rate`); and the
//! `quorrent limits` command, which changes a running daemon's.
//!
//! Fairness: a chunk waits for its bytes in a FIFO queue (tokio's mutex
//! is fair), so grants are chunk-sized and in order of arrival and no peer
//! or file starves however many requests another keeps in flight. The
//! bucket may go into debt for a chunk larger than what it holds; the next
//! grant waits until the debt is paid, so the average rate holds exactly
//! while a burst stays at most `burst` bytes plus one chunk.
//!
//! Live changes ([`RateLimit::set_rate`], the daemon's `PUT /api/limits`):
//! what accrued until the change accrued at the old rate, and a debt is
//! paid at the new one; the grant waiting at the head of the queue is
//! woken and waits again for the rest of its debt at the new rate, so a
//! transfer under way follows the change at once. With no limit a grant
//! costs one atomic load.
//!
//! [`Bucket`] is the pure, clock-driven core; [`RateLimit`] is the async
//! shell around it.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{commands::CommandError, home::Home};

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
        self.debt_wait(now)
    }

    /// How long from `now` until the debt is paid at the current rate
    /// (zero if there is none).
    pub fn debt_wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// From `now` on, `rate` bytes per second holding at most `burst`:
    /// what accrued before `now` accrued at the old rate, a debt is paid
    /// at the new one.
    pub fn set_rate(&mut self, rate: u64, burst: u64, now: Instant) {
        self.refill(now);
        self.rate = rate.max(1) as f64;
        self.burst = burst as f64;
        self.tokens = self.tokens.min(self.burst);
    }
}

/// The bucket's capacity for `rate`: a tenth of a second's worth, so the
/// rate holds over any window longer than that.
fn burst_of(rate: u64) -> u64 {
    rate / 10
}

/// One direction's limit for the whole process; the rate can change while
/// transfers run.
#[derive(Debug)]
pub struct RateLimit {
    /// Bytes per second; 0 for no limit. Written under `bucket`'s lock,
    /// read without it on the fast path.
    rate: AtomicU64,
    bucket: Mutex<Bucket>,
    /// The FIFO queue of grants: held by a grant until its bytes are in.
    queue: tokio::sync::Mutex<()>,
    /// Bumped on every change of the rate, to wake the waiting grant.
    changed: tokio::sync::watch::Sender<()>,
}

impl RateLimit {
    /// `rate` bytes per second, or none.
    pub fn new(rate: Option<u64>) -> Self {
        let r = rate.unwrap_or(0);
        RateLimit {
            rate: AtomicU64::new(r),
            bucket: Mutex::new(Bucket::new(r, burst_of(r), Instant::now())),
            queue: tokio::sync::Mutex::new(()),
            changed: tokio::sync::watch::channel(()).0,
        }
    }

    /// The rate in bytes per second, or None for no limit.
    pub fn rate(&self) -> Option<u64> {
        Some(self.rate.load(Ordering::Relaxed)).filter(|&r| r > 0)
    }

    fn lock_bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the rate (None: no limit) for every transfer, those under
    /// way included. A limit set where there was none starts empty.
    pub fn set_rate(&self, rate: Option<u64>) {
        let now = Instant::now();
        let mut b = self.lock_bucket();
        match rate {
            Some(r) if self.rate.load(Ordering::Relaxed) > 0 => b.set_rate(r, burst_of(r), now),
            Some(r) => *b = Bucket::new(r, burst_of(r), now),
            None => {}
        }
        self.rate.store(rate.unwrap_or(0), Ordering::Relaxed);
        drop(b);
        self.changed.send_replace(());
    }

    /// Waits until `n` bytes may go. Callers are served in arrival order:
    /// the queue is held through the wait, so the next in line waits for
    /// this grant and then for its own.
    pub async fn acquire(&self, n: u64) {
        if self.rate.load(Ordering::Relaxed) == 0 {
            return;
        }
        let _turn = self.queue.lock().await;
        // Subscribed before the bucket is read: no change is missed.
        let mut changed = self.changed.subscribe();
        let mut wait = {
            let mut b = self.lock_bucket();
            if self.rate.load(Ordering::Relaxed) == 0 {
                return;
            }
            b.take(n, Instant::now())
        };
        while !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => return,
                r = changed.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let mut b = self.lock_bucket();
                    if self.rate.load(Ordering::Relaxed) == 0 {
                        return;
                    }
                    wait = b.debt_wait(Instant::now());
                }
            }
        }
    }
}

/// The process's two limits: one bucket per direction, shared by
/// everything that sends or receives chunk data.
#[derive(Debug, Clone)]
pub struct Limits {
    pub up: Arc<RateLimit>,
    pub down: Arc<RateLimit>,
}

impl Limits {
    pub fn new(up: Option<u64>, down: Option<u64>) -> Self {
        Limits {
            up: Arc::new(RateLimit::new(up)),
            down: Arc::new(RateLimit::new(down)),
        }
    }

    /// What the daemon's `/api/limits` answers (bytes per second, null
    /// for no limit).
    pub fn to_json(&self) -> Value {
        json!({ "max_upload_rate": self.up.rate(), "max_download_rate": self.down.rate() })
    }
}

/// A limit on the command line: a rate (see
/// [`protocol::config::parse_byte_rate`]) or `none` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitArg(pub Option<u64>);

/// Parses a [`LimitArg`].
pub fn parse_limit(text: &str) -> Result<LimitArg, String> {
    match text.trim() {
        "none" | "unlimited" | "off" => Ok(LimitArg(None)),
        t => protocol::config::parse_byte_rate(t).map(|r| LimitArg(Some(r))),
    }
}

/// `quorrent limits [--up RATE|none] [--down RATE|none]`: shows, and with
/// a flag changes, the limits of the running daemon of the home (until it
/// stops; the configuration keeps the lasting ones).
pub async fn limits_command(
    home: &Home,
    up: Option<LimitArg>,
    down: Option<LimitArg>,
    json: bool,
) -> Result<(), CommandError> {
    let Some(link) = crate::daemon::client::running(home).await else {
        return Err(CommandError::Daemon {
            code: "no_daemon",
            message: format!(
                "no daemon of {} runs: start it with `quorrent seed` (limits change only in a running daemon; \
                 `sharing.max_upload_rate` and `sharing.max_download_rate` of the configuration, or \
                 --max-upload-rate and --max-download-rate, set them at start)",
                home.dir.display()
            ),
        });
    };
    let mut body = serde_json::Map::new();
    if let Some(LimitArg(r)) = up {
        body.insert("max_upload_rate".into(), json!(r));
    }
    if let Some(LimitArg(r)) = down {
        body.insert("max_download_rate".into(), json!(r));
    }
    let now = if body.is_empty() {
        link.get("/api/limits").await?
    } else {
        link.put("/api/limits", &Value::Object(body)).await?
    };
    let show = |v: &Value| match v.as_u64() {
        Some(r) => format!("{r} B/s"),
        None => "no limit".to_owned(),
    };
    crate::commands::emit(json, now.clone(), || {
        format!(
            "upload:   {}\ndownload: {}",
            show(&now["max_upload_rate"]),
            show(&now["max_download_rate"])
        )
    });
    Ok(())
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

    /// Back-to-back grants of `chunk` bytes from `t` until `until`:
    /// (bytes granted, the instant the last grant's wait ended).
    fn drain(b: &mut Bucket, mut t: Instant, until: Instant, chunk: u64) -> (u64, Instant) {
        let mut sent = 0;
        while t < until {
            t += b.take(chunk, t);
            sent += chunk;
        }
        (sent, t)
    }

    #[test]
    fn a_rate_changed_mid_way_applies_from_the_change_on() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 100, t0);
        // 10 s at 1000 B/s, then 10 s at 4000 B/s, then 10 s at 500 B/s.
        let (a, t1) = drain(&mut b, t0, t0 + Duration::from_secs(10), 100);
        b.set_rate(4000, 400, t1);
        let (c, t2) = drain(&mut b, t1, t1 + Duration::from_secs(10), 100);
        b.set_rate(500, 50, t2);
        let (d, t3) = drain(&mut b, t2, t2 + Duration::from_secs(10), 100);
        let rate = |bytes: u64, from: Instant, to: Instant| bytes as f64 / to.duration_since(from).as_secs_f64();
        for (got, want) in [
            (rate(a, t0, t1), 1000.0),
            (rate(c, t1, t2), 4000.0),
            (rate(d, t2, t3), 500.0),
        ] {
            assert!((got / want - 1.0).abs() < 0.02, "{got} vs {want}");
        }
    }

    #[test]
    fn a_debt_is_paid_at_the_new_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 100, t0);
        // 1000 bytes of debt: 1 s at 1000 B/s ...
        assert_eq!(b.take(1000, t0), Duration::from_secs(1));
        // ... half of it paid after 0.5 s; the other half at 10 kB/s takes 50 ms.
        let t = t0 + Duration::from_millis(500);
        b.set_rate(10_000, 1000, t);
        assert_eq!(b.debt_wait(t), Duration::from_millis(50));
        // Slower instead: 500 bytes at 100 B/s, 5 s.
        b.set_rate(100, 10, t);
        assert_eq!(b.debt_wait(t), Duration::from_secs(5));
        // A lower burst caps what was saved up.
        let mut full = Bucket::new(1000, 1000, t0);
        full.set_rate(1000, 10, t0 + Duration::from_secs(5));
        assert_eq!(full.take(10, t0 + Duration::from_secs(5)), Duration::ZERO);
        assert!(full.take(1, t0 + Duration::from_secs(5)) > Duration::ZERO);
    }

    #[tokio::test]
    async fn grants_come_in_arrival_order() {
        let limit = Arc::new(RateLimit::new(Some(1_000_000)));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
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

    /// Grants of `chunk` bytes back to back from `tasks` tasks, counted.
    fn pump(limit: &Arc<RateLimit>, tasks: usize, chunk: u64) -> (Arc<AtomicU64>, tokio::task::JoinSet<()>) {
        let granted = Arc::new(AtomicU64::new(0));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            let (limit, granted) = (limit.clone(), granted.clone());
            set.spawn(async move {
                loop {
                    limit.acquire(chunk).await;
                    granted.fetch_add(chunk, Ordering::Relaxed);
                }
            });
        }
        (granted, set)
    }

    /// The shell, in real time: the rate of grants follows each change,
    /// faster and slower (windows of a second; the bucket keeps the
    /// average however late the timers fire, so only a chunk either side
    /// of a window counts, hence the band).
    #[tokio::test]
    async fn grants_follow_a_live_change_of_the_rate() {
        let limit = Arc::new(RateLimit::new(Some(1_000_000)));
        let (granted, mut set) = pump(&limit, 4, 10_000);
        let window = || async {
            let (before, t) = (granted.load(Ordering::Relaxed), Instant::now());
            tokio::time::sleep(Duration::from_secs(1)).await;
            (granted.load(Ordering::Relaxed) - before) as f64 / t.elapsed().as_secs_f64()
        };
        // Past the start (the bucket starts empty).
        window().await;
        let first = window().await;
        limit.set_rate(Some(4_000_000));
        let faster = window().await;
        limit.set_rate(Some(500_000));
        let slower = window().await;
        set.abort_all();
        for (got, want) in [(first, 1e6), (faster, 4e6), (slower, 5e5)] {
            assert!((got / want - 1.0).abs() < 0.1, "{got} B/s vs {want}");
        }
    }

    /// A grant waiting for a long debt follows a change at once.
    #[tokio::test]
    async fn a_waiting_grant_follows_the_change() {
        let limit = Arc::new(RateLimit::new(Some(1000)));
        let spawn = |n: u64| {
            let limit = limit.clone();
            tokio::spawn(async move { limit.acquire(n).await })
        };
        // 1 MB at 1 kB/s: 1000 s. On this one thread the grant runs until
        // it waits, and then the test goes on.
        let waiting = spawn(1_000_000);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The rest at 1 GB/s: a millisecond.
        limit.set_rate(Some(1_000_000_000));
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken by the change")
            .unwrap();
        // And no limit frees a waiting grant at once.
        limit.set_rate(Some(1));
        let waiting = spawn(1000);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        limit.set_rate(None);
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("freed by no limit")
            .unwrap();
        assert_eq!(limit.rate(), None);
    }
}
