//! The proxy's own figures: Prometheus metrics (requests forwarded by kind
//! and outcome, retries, leader changes, "unavailable" answers, the
//! latency the proxy adds, connections, pending requests) and the
//! per-second write series the dashboard plots. Recording is skipped
//! altogether when `http_addr` is "off" (nothing could read it), which is
//! also how the benchmark measures what recording costs.

use std::{collections::VecDeque, sync::Mutex, time::Duration};

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use protocol::metrics::{seconds, Requests};
use serde::Serialize;

/// Seconds the dashboard's series covers.
pub const SERIES_SECS: usize = 300;

/// One second of forwarded writes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Second {
    /// Unix time, seconds.
    pub t: u64,
    pub writes: u32,
    pub reads: u32,
    /// Sum and maximum of the writes' latency through the proxy, µs.
    pub write_us_sum: u64,
    pub write_us_max: u64,
    pub errors: u32,
}

pub struct ProxyMetrics {
    pub registry: Registry,
    requests: Requests,
    pub retries: Counter,
    pub leader_changes: Counter,
    pub unavailable: Counter,
    added: Histogram,
    pub connections: Gauge,
    pub pending: Gauge,
    series: Mutex<VecDeque<Second>>,
    total: std::sync::atomic::AtomicU64,
    on: bool,
}

impl ProxyMetrics {
    /// `on`: whether anything is recorded (the HTTP server exists).
    pub fn new(on: bool) -> ProxyMetrics {
        let mut registry = Registry::with_prefix("quorrent_proxy");
        let r = &mut registry;
        let requests = Requests::register(
            r,
            (
                "forwarded",
                "Requests answered, by kind and outcome (ok or the error code)",
            ),
            ("request_seconds", "Time from a node's request to its answer, by kind"),
        );
        let (retries, leader_changes, unavailable) = (Counter::default(), Counter::default(), Counter::default());
        let added = seconds();
        let (connections, pending) = (Gauge::default(), Gauge::default());
        r.register(
            "retries",
            "Attempts after the first (another member, a new leader)",
            retries.clone(),
        );
        r.register(
            "leader_changes",
            "Changes of the leader the proxy follows",
            leader_changes.clone(),
        );
        r.register(
            "unavailable",
            "Requests answered \"unavailable\": no leader before the deadline",
            unavailable.clone(),
        );
        r.register(
            "added_seconds",
            "Time the proxy adds: the request's whole time less the leader's answer time on the attempt that succeeded",
            added.clone(),
        );
        r.register("connections", "Node connections open", connections.clone());
        r.register("requests_pending", "Node requests in progress", pending.clone());
        ProxyMetrics {
            registry,
            requests,
            retries,
            leader_changes,
            unavailable,
            added,
            connections,
            pending,
            series: Mutex::new(VecDeque::with_capacity(SERIES_SECS + 1)),
            total: Default::default(),
            on,
        }
    }

    pub fn on(&self) -> bool {
        self.on
    }

    /// One answered request: its kind, outcome, whole time and the
    /// leader's share of it.
    pub fn answered(
        &self,
        kind: &'static str,
        write: bool,
        outcome: &'static str,
        total: Duration,
        upstream: Duration,
    ) {
        if !self.on {
            return;
        }
        self.total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.requests.record(kind, outcome, total);
        if outcome == "ok" {
            self.added.observe(total.saturating_sub(upstream).as_secs_f64());
        }
        let t = protocol::unix_ms() / 1000;
        let us = total.as_micros() as u64;
        let mut s = self.series.lock().expect("series lock");
        if s.back().is_none_or(|b| b.t != t) {
            if s.len() == SERIES_SECS {
                s.pop_front();
            }
            s.push_back(Second { t, ..Second::default() });
        }
        let b = s.back_mut().expect("just pushed");
        if outcome != "ok" && outcome != "not_found" {
            b.errors += 1;
        }
        if write {
            b.writes += 1;
            b.write_us_sum += us;
            b.write_us_max = b.write_us_max.max(us);
        } else {
            b.reads += 1;
        }
    }

    /// The last `SERIES_SECS` seconds, oldest first.
    pub fn series(&self) -> Vec<Second> {
        self.series.lock().expect("series lock").iter().copied().collect()
    }

    /// The counters, for /status.
    pub fn totals(&self) -> serde_json::Value {
        serde_json::json!({
            "forwarded": self.total.load(std::sync::atomic::Ordering::Relaxed),
            "retries": self.retries.get(),
            "leader_changes": self.leader_changes.get(),
            "unavailable": self.unavailable.get(),
            "connections": self.connections.get(),
            "pending": self.pending.get(),
        })
    }
}
