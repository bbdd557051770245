//! Failed-login throttling, per user and per source address, on the leader
//! (soft state: a new leader starts fresh, which costs an attacker at most
//! one election's worth of attempts), and the token buckets that bound
//! Register (see [`RegisterThrottle`]).
//!
//! After [`FREE_FAILURES`] failures in a row, each further attempt must
//! wait twice as long as the last, from 250 ms up to 30 s. A success clears
//! the user's and the address's record. Memory is bounded by [`MAX_KEYS`]
//! per table; past it, stale records are dropped first, then the oldest.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    time::{Duration, Instant},
};

pub const FREE_FAILURES: u32 = 3;
const BASE: Duration = Duration::from_millis(250);
const MAX_WAIT: Duration = Duration::from_secs(30);
pub const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    until: Instant,
}

#[derive(Debug)]
struct Table<K>(HashMap<K, Record>);

impl<K> Default for Table<K> {
    fn default() -> Self {
        Table(HashMap::new())
    }
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn wait(&self, k: &K, now: Instant) -> Option<Duration> {
        self.0
            .get(k)
            .and_then(|r| r.until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    fn fail(&mut self, k: K, now: Instant) {
        if self.0.len() >= MAX_KEYS && !self.0.contains_key(&k) {
            self.0.retain(|_, r| r.until + MAX_WAIT > now);
            if self.0.len() >= MAX_KEYS {
                if let Some(oldest) = self.0.iter().min_by_key(|(_, r)| r.until).map(|(k, _)| k.clone()) {
                    self.0.remove(&oldest);
                }
            }
        }
        let r = self.0.entry(k).or_insert(Record {
            failures: 0,
            until: now,
        });
        r.failures += 1;
        if r.failures > FREE_FAILURES {
            let exp = (r.failures - FREE_FAILURES - 1).min(16);
            r.until = now + (BASE * 2u32.pow(exp)).min(MAX_WAIT);
        }
    }
}

#[derive(Debug, Default)]
pub struct Throttle {
    users: Table<String>,
    addrs: Table<IpAddr>,
}

impl Throttle {
    /// How long this attempt must wait, if at all.
    pub fn check(&self, user: &str, addr: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let u = self.users.wait(&user.to_owned(), now);
        let a = addr.and_then(|a| self.addrs.wait(&a, now));
        u.max(a)
    }

    pub fn failed(&mut self, user: &str, addr: Option<IpAddr>, now: Instant) {
        self.users.fail(user.to_owned(), now);
        if let Some(a) = addr {
            self.addrs.fail(a, now);
        }
    }

    pub fn succeeded(&mut self, user: &str, addr: Option<IpAddr>) {
        self.users.0.remove(user);
        if let Some(a) = addr {
            self.addrs.0.remove(&a);
        }
    }
}

/// A token bucket: holds up to `burst` tokens, refilled at `per_sec`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(burst: u32, now: Instant) -> Self {
        Bucket {
            tokens: burst as f64,
            at: now,
        }
    }

    fn refill(&mut self, burst: u32, per_sec: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * per_sec).min(burst as f64);
        self.at = self.at.max(now);
    }

    /// How long until one token is there (zero if it is now).
    fn wait(&self, per_sec: f64) -> Duration {
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        if per_sec <= 0.0 {
            return MAX_WAIT;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / per_sec).max(Duration::from_millis(1))
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, burst: u32, per_sec: f64, now: Instant) -> Result<(), Duration> {
        self.refill(burst, per_sec, now);
        match self.wait(per_sec) {
            d if d.is_zero() => {
                self.tokens -= 1.0;
                Ok(())
            }
            d => Err(d),
        }
    }

    /// Gives a token back (the work it paid for did not happen).
    pub fn give_back(&mut self, burst: u32) {
        self.tokens = (self.tokens + 1.0).min(burst as f64);
    }

    /// Whether the bucket is full by now (it can be forgotten).
    fn is_full(&self, burst: u32, per_sec: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + dt * per_sec >= burst as f64
    }
}

/// Which limit refused a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This source address has used its share.
    Source(Duration),
    /// The leader's argon2 budget (all sources) is spent.
    Global(Duration),
}

/// Register throttling on the leader: a token bucket per source address
/// (`per_source_burst`, then `per_source_per_minute`) and one global bucket
/// of argon2 hashes (`hash_burst`, then `hashes_per_sec`), so one address
/// cannot register in bulk and all addresses together cannot make the
/// leader hash more than the budget. A registration takes a token from
/// both, its source's first; refused by the global bucket, it gets its
/// source's token back. Memory: at most [`MAX_KEYS`] sources; full
/// buckets are forgotten first, then the fullest.
#[derive(Debug)]
pub struct RegisterThrottle {
    limits: protocol::config::RegisterLimits,
    sources: HashMap<IpAddr, Bucket>,
    global: Bucket,
}

impl RegisterThrottle {
    pub fn new(limits: protocol::config::RegisterLimits, now: Instant) -> Self {
        let global = Bucket::full(limits.hash_burst, now);
        RegisterThrottle {
            limits,
            sources: HashMap::new(),
            global,
        }
    }

    fn source_rate(&self) -> f64 {
        self.limits.per_source_per_minute as f64 / 60.0
    }

    /// Takes a registration from `source` (None: no trusted address, only
    /// the global budget applies), or says which limit refused it and for
    /// how long.
    pub fn take(&mut self, source: Option<IpAddr>, now: Instant) -> Result<(), Refused> {
        let (burst, rate) = (self.limits.per_source_burst, self.source_rate());
        if let Some(ip) = source {
            if self.sources.len() >= MAX_KEYS && !self.sources.contains_key(&ip) {
                self.sources.retain(|_, b| !b.is_full(burst, rate, now));
                if self.sources.len() >= MAX_KEYS {
                    let fullest = self
                        .sources
                        .iter()
                        .max_by(|a, b| a.1.tokens.total_cmp(&b.1.tokens))
                        .map(|(k, _)| *k);
                    if let Some(k) = fullest {
                        self.sources.remove(&k);
                    }
                }
            }
            let b = self.sources.entry(ip).or_insert_with(|| Bucket::full(burst, now));
            b.take(burst, rate, now).map_err(Refused::Source)?;
        }
        let (gburst, grate) = (self.limits.hash_burst, self.limits.hashes_per_sec as f64);
        if let Err(d) = self.global.take(gburst, grate, now) {
            if let Some(b) = source.and_then(|ip| self.sources.get_mut(&ip)) {
                b.give_back(burst);
            }
            return Err(Refused::Global(d));
        }
        Ok(())
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_min: u32, burst: u32, hps: u32, hburst: u32) -> protocol::config::RegisterLimits {
        protocol::config::RegisterLimits {
            per_source_per_minute: per_min,
            per_source_burst: burst,
            hashes_per_sec: hps,
            hash_burst: hburst,
            ..Default::default()
        }
    }

    #[test]
    fn bucket_bursts_then_refills() {
        let t = Instant::now();
        let mut b = Bucket::full(3, t);
        for _ in 0..3 {
            b.take(3, 2.0, t).unwrap();
        }
        assert_eq!(b.take(3, 2.0, t), Err(Duration::from_millis(500)));
        // Half a second later one token is back, not more.
        let t1 = t + Duration::from_millis(500);
        b.take(3, 2.0, t1).unwrap();
        assert!(b.take(3, 2.0, t1).is_err());
        // Never more than the burst, however long it waited.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            b.take(3, 2.0, t2).unwrap();
        }
        assert!(b.take(3, 2.0, t2).is_err());
    }

    #[test]
    fn one_source_is_throttled_the_others_are_not() {
        let t = Instant::now();
        let mut th = RegisterThrottle::new(limits(60, 5, 1000, 1000), t);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..5 {
            th.take(Some(a), t).unwrap();
        }
        // 60 a minute: one a second.
        assert_eq!(th.take(Some(a), t), Err(Refused::Source(Duration::from_secs(1))));
        for _ in 0..5 {
            th.take(Some(b), t).unwrap();
        }
        th.take(Some(a), t + Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn global_budget_bounds_all_sources_and_refunds_the_source() {
        let t = Instant::now();
        let mut th = RegisterThrottle::new(limits(60, 2, 10, 3), t);
        let ips: Vec<IpAddr> = (1..=4).map(|i| format!("10.0.0.{i}").parse().unwrap()).collect();
        for ip in &ips[..3] {
            th.take(Some(*ip), t).unwrap();
        }
        assert_eq!(
            th.take(Some(ips[3]), t),
            Err(Refused::Global(Duration::from_millis(100)))
        );
        // The refused source kept its tokens: two go through once the
        // global bucket has refilled.
        let t1 = t + Duration::from_secs(1);
        th.take(Some(ips[3]), t1).unwrap();
        th.take(Some(ips[3]), t1).unwrap();
        assert!(matches!(th.take(Some(ips[3]), t1), Err(Refused::Source(_))));
        // No trusted source: only the global bucket.
        th.take(None, t1).unwrap();
    }

    #[test]
    fn backs_off_after_free_failures() {
        let t = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut th = Throttle::default();
        for _ in 0..FREE_FAILURES {
            assert!(th.check("bob", Some(ip), t).is_none());
            th.failed("bob", Some(ip), t);
        }
        assert!(th.check("bob", None, t).is_none());
        th.failed("bob", Some(ip), t);
        assert_eq!(th.check("bob", None, t), Some(BASE));
        // The address is throttled for another user too.
        assert_eq!(th.check("carol", Some(ip), t), Some(BASE));
        th.failed("bob", None, t + BASE);
        assert_eq!(th.check("bob", None, t + BASE), Some(BASE * 2));
        th.succeeded("bob", Some(ip));
        assert!(th.check("bob", Some(ip), t).is_none());
    }
}
