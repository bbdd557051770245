//! What a member shows about itself: its Prometheus metrics, its
//! [`MemberReport`] (`/status`, `Request::MemberStatus`, the proxy's
//! dashboard, `cluster.sh status`), and its HTTP server (`/metrics`,
//! `/livez`, `/readyz`, `/status`).
//!
//! Counters on hot paths are atomics updated where the work happens (the
//! API handler, the batcher, the log's fsync, snapshot builds and
//! installs); figures that already exist elsewhere (Raft's metrics, the
//! registry's sizes) are read when scraped, so keeping them costs nothing
//! between scrapes.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
    time::{Duration, Instant},
};

use hyper::{Method, StatusCode};
use openraft::ServerState;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use protocol::{
    http::{self, Request, Response},
    tracker_api::{ApiError, FollowerLag, MemberReport},
};

use crate::app::App;

/// What the store records: fsyncs, snapshots, the committed index. Made
/// by `store::open`, shared by the log and the state machine.
pub struct StoreMetrics {
    /// One log append's durable commit (redb's fsync), seconds.
    pub fsync: Histogram,
    pub snapshot_build: Histogram,
    pub snapshot_install: Histogram,
    /// The last committed index openraft saved, plus one (0: none).
    committed: AtomicU64,
    /// Whether anything is recorded (`http_addr` is not "off").
    recording: std::sync::atomic::AtomicBool,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            fsync: protocol::metrics::seconds(),
            snapshot_build: Histogram::new(exponential_buckets(1e-3, 2.0, 18)),
            snapshot_install: Histogram::new(exponential_buckets(1e-3, 2.0, 18)),
            committed: AtomicU64::new(0),
            recording: std::sync::atomic::AtomicBool::new(true),
        }
    }
}

impl StoreMetrics {
    pub fn set_committed(&self, index: Option<u64>) {
        self.committed.store(index.map_or(0, |i| i + 1), Ordering::Relaxed);
    }

    pub fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
    }

    /// Whether figures are kept at all.
    pub fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    /// Records a duration in `h` if recording.
    pub fn observe(&self, h: &Histogram, d: Duration) {
        if self.recording() {
            h.observe(d.as_secs_f64());
        }
    }

    pub fn committed(&self) -> Option<u64> {
        self.committed.load(Ordering::Relaxed).checked_sub(1)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerLabels {
    follower: String,
}

/// Scrape-time gauges: set from their sources when `/metrics` is read.
#[derive(Default)]
struct Gauges {
    term: Gauge,
    leader: Gauge,
    is_leader: Gauge,
    last_log: Gauge,
    commit: Gauge,
    applied: Gauge,
    snapshot: Gauge,
    lag: Family<FollowerLabels, Gauge>,
    pending: Gauge,
    users: Gauge,
    sessions: Gauge,
    files: Gauge,
    owners: Gauge,
    peers: Gauge,
    live_peers: Gauge,
}

/// One member's metrics.
pub struct Telemetry {
    registry: Registry,
    requests: protocol::metrics::Requests,
    /// Writes per Raft entry from the batcher.
    pub batch_writes: Histogram,
    elections: Counter,
    leader_changes: Counter,
    gauges: Gauges,
    pub store: Arc<StoreMetrics>,
    started: Instant,
}

impl Telemetry {
    pub fn new(store: Arc<StoreMetrics>) -> Telemetry {
        let mut registry = Registry::with_prefix("quorrent_tracker");
        let batch_writes = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let elections = Counter::default();
        let leader_changes = Counter::default();
        let g = Gauges::default();
        let r = &mut registry;
        let requests = protocol::metrics::Requests::register(
            r,
            (
                "requests",
                "API requests answered, by kind and outcome (ok or the error code)",
            ),
            ("request_seconds", "Time to answer an API request, by kind"),
        );
        r.register(
            "batch_writes",
            "Writes per Raft entry (group commit)",
            batch_writes.clone(),
        );
        r.register(
            "elections_seen",
            "Terms seen beginning since this member started",
            elections.clone(),
        );
        r.register(
            "leader_changes",
            "Changes of the known leader since this member started",
            leader_changes.clone(),
        );
        r.register(
            "log_fsync_seconds",
            "Durable commit of one log append",
            store.fsync.clone(),
        );
        r.register(
            "snapshot_build_seconds",
            "Snapshot builds and their durations",
            store.snapshot_build.clone(),
        );
        r.register(
            "snapshot_install_seconds",
            "Snapshot installs and their durations",
            store.snapshot_install.clone(),
        );
        r.register("raft_term", "Current Raft term", g.term.clone());
        r.register("raft_leader_id", "The known leader's id (0: none)", g.leader.clone());
        r.register("raft_is_leader", "1 when this member leads", g.is_leader.clone());
        r.register("raft_last_log_index", "Last log index", g.last_log.clone());
        r.register("raft_commit_index", "Last index known committed", g.commit.clone());
        r.register(
            "raft_applied_index",
            "Last index applied to the registry",
            g.applied.clone(),
        );
        r.register(
            "raft_snapshot_index",
            "Last index in the latest snapshot",
            g.snapshot.clone(),
        );
        r.register(
            "raft_replication_lag",
            "Entries a follower is behind the leader's log (leader only)",
            g.lag.clone(),
        );
        r.register("requests_pending", "API requests in progress", g.pending.clone());
        r.register("registry_users", "Accounts", g.users.clone());
        r.register("registry_sessions", "Sessions", g.sessions.clone());
        r.register("registry_files", "Files registered", g.files.clone());
        r.register("registry_owners", "Ownership records (file, peer)", g.owners.clone());
        r.register("registry_peers", "Peers announced", g.peers.clone());
        r.register(
            "registry_live_peers",
            "Peers heard from within the owner TTL (leader only)",
            g.live_peers.clone(),
        );
        Telemetry {
            registry,
            requests,
            batch_writes,
            elections,
            leader_changes,
            gauges: g,
            store,
            started: Instant::now(),
        }
    }

    /// One answered API request.
    pub fn request(&self, kind: &'static str, answer: &Result<impl Sized, ApiError>, took: Duration) {
        if !self.store.recording() {
            return;
        }
        let outcome = match answer {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        self.requests.record(kind, outcome, took);
    }

    fn elections_seen(&self) -> u64 {
        self.elections.get()
    }
}

/// Counts terms and leaders as openraft reports them, until the member
/// stops.
pub async fn watch_elections(app: Weak<App>) {
    let Some(mut rx) = app.upgrade().map(|a| a.raft.metrics()) else {
        return;
    };
    let (mut term, mut leader) = {
        let m = rx.borrow();
        (m.current_term, m.current_leader)
    };
    while rx.changed().await.is_ok() {
        let Some(app) = app.upgrade() else { return };
        let m = rx.borrow_and_update();
        if m.current_term > term {
            app.telemetry.elections.inc_by(m.current_term - term);
            term = m.current_term;
        }
        if m.current_leader != leader {
            if m.current_leader.is_some() {
                app.telemetry.leader_changes.inc();
            }
            leader = m.current_leader;
        }
    }
}

/// This member's figures now.
pub fn report(app: &App) -> MemberReport {
    let m = app.metrics();
    let removed = app.removal.reason().is_some();
    let role = if removed {
        "removed"
    } else {
        match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        }
    };
    let last = m.last_log_index;
    let followers = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .filter(|(id, _)| **id != app.id)
                .map(|(id, matched)| {
                    let matched = matched.map(|l| l.index);
                    // Nothing matched yet: the whole log is missing there.
                    let lag = match (last, matched) {
                        (Some(l), Some(m)) => l.saturating_sub(m),
                        (Some(l), None) => l + 1,
                        (None, _) => 0,
                    };
                    FollowerLag { id: *id, matched, lag }
                })
                .collect()
        })
        .unwrap_or_default();
    let mut registry = app.state.read().registry.counts();
    if m.state == ServerState::Leader {
        let now = Instant::now();
        registry.live_peers = Some(app.liveness.lock().expect("liveness lock").live_count(now) as u64);
    }
    let api_addr = m
        .membership_config
        .membership()
        .get_node(&app.id)
        .map(|n| n.api.clone())
        .unwrap_or_default();
    MemberReport {
        id: app.id,
        api_addr,
        role: role.into(),
        term: m.current_term,
        leader: if removed { None } else { m.current_leader },
        last_log_index: last,
        commit_index: app.telemetry.store.committed(),
        applied_index: m.last_applied.map(|l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
        followers,
        elections_seen: app.telemetry.elections_seen(),
        quorum_ack_ms: m.millis_since_quorum_ack,
        registry,
        uptime_ms: app.telemetry.started.elapsed().as_millis() as u64,
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

fn scrape(app: &App) -> Response {
    let r = report(app);
    let t = &app.telemetry;
    let g = &t.gauges;
    let set = |g: &Gauge, v: Option<u64>| {
        g.set(v.map_or(-1, |v| v as i64));
    };
    g.term.set(r.term as i64);
    g.leader.set(r.leader.unwrap_or(0) as i64);
    g.is_leader.set(i64::from(r.role == "leader"));
    set(&g.last_log, r.last_log_index);
    set(&g.commit, r.commit_index);
    set(&g.applied, r.applied_index);
    set(&g.snapshot, r.snapshot_index);
    g.lag.clear();
    for f in &r.followers {
        g.lag
            .get_or_create(&FollowerLabels {
                follower: f.id.to_string(),
            })
            .set(f.lag as i64);
    }
    let max = app.config.limits.max_pending;
    g.pending
        .set(max.saturating_sub(app.pending.available_permits()) as i64);
    let c = r.registry;
    g.users.set(c.users as i64);
    g.sessions.set(c.sessions as i64);
    g.files.set(c.files as i64);
    g.owners.set(c.owners as i64);
    g.peers.set(c.peers as i64);
    set(&g.live_peers, c.live_peers);
    http::metrics(&t.registry)
}

/// `/readyz`: a leader is known and, on the leader, a linearizable read
/// succeeds (a quorum confirms the leadership); on a follower, the
/// leader's AppendEntries arrive.
async fn ready(app: &App) -> Result<String, String> {
    app.check_member().map_err(|e| e.to_string())?;
    let m = app.metrics();
    let leader = m.current_leader.ok_or("no leader known")?;
    if m.state == ServerState::Leader {
        let wait = Duration::from_millis(app.config.raft.election_max_ms * 2);
        match tokio::time::timeout(wait, app.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(format!("leader {leader}: a linearizable read succeeded")),
            Ok(Err(e)) => Err(format!("a linearizable read failed: {e}")),
            Err(_) => Err(format!(
                "a linearizable read did not complete within {} ms",
                wait.as_millis()
            )),
        }
    } else {
        let window = Duration::from_millis(app.config.raft.election_max_ms * 2);
        match app.removal.heard_leader_within(window) {
            true => Ok(format!("leader {leader} is known and heard from")),
            false => Err(format!(
                "leader {leader} not heard from within {} ms",
                window.as_millis()
            )),
        }
    }
}

/// The member's HTTP routes.
pub fn handler(app: Weak<App>) -> http::Handler {
    http::handler(move |req: Request| {
        let app = app.upgrade();
        async move {
            let Some(app) = app else {
                return http::error(StatusCode::SERVICE_UNAVAILABLE, "stopping", "the member is stopping");
            };
            if req.method != Method::GET && req.method != Method::HEAD {
                return match req.path.as_str() {
                    "/livez" | "/readyz" | "/status" | "/metrics" => http::method_not_allowed(&req, "GET"),
                    _ => http::not_found(&req),
                };
            }
            match req.path.as_str() {
                "/livez" => http::json(StatusCode::OK, &serde_json::json!({ "ok": true, "id": app.id })),
                "/readyz" => match ready(&app).await {
                    Ok(why) => http::json(StatusCode::OK, &serde_json::json!({ "ok": true, "reason": why })),
                    Err(why) => http::error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why),
                },
                "/status" => http::json(StatusCode::OK, &report(&app)),
                "/metrics" => scrape(&app),
                _ => http::not_found(&req),
            }
        }
    })
}
