//! Failed-login throttling, per user and per source address, on the leader
//! (soft state: a new leader starts fresh, which costs an attacker at most
//! one election's worth of attempts).
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

#[cfg(test)]
mod tests {
    use super::*;

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
