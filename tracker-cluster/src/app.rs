//! The state one tracker member shares between its tasks: the Raft
//! handle, the applied state, the leader-only soft state (liveness, login
//! throttling, register buckets, the live-file search index), the argon2
//! pool and the write batcher.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use openraft::ServerState;
use protocol::{
    config::TrackerConfig,
    tracker_api::{ApiError, ClusterStatus, MemberInfo},
};
use tokio::sync::Semaphore;

use crate::{
    argon_pool::ArgonPool,
    clock::Clock,
    liveness::Liveness,
    partial::{PartialLimits, Partials},
    proposer::Proposer,
    registry::LiveIndex,
    store::SharedState,
    throttle::{RegisterThrottle, Throttle},
    typ::{Metrics, NodeId, Raft},
};

pub struct App {
    pub id: NodeId,
    pub raft: Raft,
    pub state: Arc<SharedState>,
    pub config: TrackerConfig,
    pub proposer: Proposer,
    /// This member's wall clock (batch times; read-time expiry).
    pub clock: Clock,
    /// Owner heartbeats; meaningful only while this member leads.
    pub liveness: Mutex<Liveness>,
    /// Peers still downloading a file, with the chunks they hold; kept
    /// only while this member leads (emptied when it starts or stops).
    pub partials: Mutex<Partials>,
    pub throttle: Mutex<Throttle>,
    /// Register: per-source and global (argon2 work) token buckets.
    pub register: Mutex<RegisterThrottle>,
    /// Hashes and verifies passwords on a fixed set of threads with
    /// reused memory.
    pub argon: ArgonPool,
    /// Files with an owner seen within `owners.dead_file_secs`, for search
    /// on the leader; None when not leading or nothing to skip yet.
    pub live_index: Mutex<Option<LiveIndex>>,
    /// Bounds requests in progress, taken before a request body is read;
    /// past it, "overloaded".
    pub pending: Semaphore,
    /// Connection caps and timeouts of the API endpoint.
    pub api_guard: protocol::listen::Guard,
    /// Set once this member learns it was removed from the membership.
    pub removal: Arc<Removal>,
    /// Metrics (see `telemetry.rs`).
    pub telemetry: crate::telemetry::Telemetry,
}

/// How a member learns that it was removed from the membership.
///
/// openraft 0.9 does not tell a removed member: the leader stops
/// replicating to it as soon as it appends the configuration without it,
/// so the member usually never sees that configuration, turns candidate
/// and asks for votes for ever; a leader that removed itself keeps its
/// leader state. So a member counts itself removed when either
/// - its own applied membership no longer lists it (after it was once
///   listed), or
/// - a member answers its vote request with `NotMember`, naming an
///   applied membership newer than the newest one this member has, which
///   does not list it.
///
/// Then it shuts its Raft down, answers every API and Raft request with
/// an error saying so, reports `removed` in its status and never names a
/// leader again.
#[derive(Default)]
pub struct Removal {
    /// (member that told us, index of its membership) from `NotMember`.
    reported: Mutex<Option<(NodeId, u64)>>,
    notify: tokio::sync::Notify,
    removed: std::sync::OnceLock<String>,
    /// When a leader's AppendEntries (heartbeats included) last reached
    /// this member: a leader replicates only to members of its membership.
    last_append: Mutex<Option<tokio::time::Instant>>,
}

impl Removal {
    /// Records a `NotMember` answer; the leadership watcher decides.
    pub fn report(&self, from: NodeId, membership_index: u64) {
        *self.reported.lock().expect("removal lock") = Some((from, membership_index));
        self.notify.notify_one();
    }

    /// A leader's AppendEntries was accepted.
    pub fn heard_leader(&self) {
        *self.last_append.lock().expect("removal lock") = Some(tokio::time::Instant::now());
    }

    fn last_append(&self) -> Option<tokio::time::Instant> {
        *self.last_append.lock().expect("removal lock")
    }

    /// Whether a leader's AppendEntries arrived within `window`.
    pub fn heard_leader_within(&self, window: Duration) -> bool {
        self.last_append().is_some_and(|t| t.elapsed() <= window)
    }

    /// Why this member is out of the cluster, once it is.
    pub fn reason(&self) -> Option<&str> {
        self.removed.get().map(String::as_str)
    }
}

impl App {
    pub fn new(
        id: NodeId,
        raft: Raft,
        state: Arc<SharedState>,
        config: TrackerConfig,
        removal: Arc<Removal>,
    ) -> std::io::Result<Arc<Self>> {
        let clock = Clock::default();
        // With `http_addr` "off" nothing can read the figures: none are kept.
        let recording = !matches!(config.http_bind(), Ok(protocol::http::Bind::Off));
        state.metrics.set_recording(recording);
        let telemetry = crate::telemetry::Telemetry::new(state.metrics.clone());
        let proposer = Proposer::start(
            raft.clone(),
            config.limits.max_pending,
            config.max_batch,
            config.max_batches_in_flight,
            config.quotas,
            clock.clone(),
            recording.then(|| telemetry.batch_writes.clone()),
        );
        let ttl = Duration::from_secs(config.owner_ttl_secs);
        let dead_after = Duration::from_secs(config.owners.dead_file_secs);
        let pending = Semaphore::new(config.limits.max_pending);
        let argon = ArgonPool::start(config.register.argon_threads, config.register.argon_queue)?;
        let api_guard =
            protocol::listen::Guard::new("tracker api", protocol::listen::Bounds::from_limits(&config.limits));
        let app = Arc::new(App {
            id,
            raft,
            state,
            proposer,
            clock,
            liveness: Mutex::new(Liveness::keeping(ttl, dead_after)),
            partials: Mutex::new(Partials::new(PartialLimits::from_config(&config.owners))),
            throttle: Mutex::default(),
            register: Mutex::new(RegisterThrottle::new(config.register.clone(), Instant::now())),
            argon,
            live_index: Mutex::new(None),
            pending,
            api_guard,
            removal,
            config,
            telemetry,
        });
        tokio::spawn(crate::telemetry::watch_elections(Arc::downgrade(&app)));
        tokio::spawn(watch_leadership(app.clone()));
        tokio::spawn(watch_removal(app.clone()));
        tokio::spawn(maintain_live_index(Arc::downgrade(&app)));
        Ok(app)
    }

    fn leading(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    pub fn metrics(&self) -> Metrics {
        self.raft.metrics().borrow().clone()
    }

    /// `Ok` if this member leads now, else where the leader is.
    pub fn leader_check(&self) -> Result<(), ApiError> {
        self.check_member()?;
        // Borrow, do not clone: this runs on every request.
        let rx = self.raft.metrics();
        let m = rx.borrow();
        if m.state == ServerState::Leader {
            return Ok(());
        }
        Err(not_leader(&m))
    }

    /// Whether `peer` is a live owner as far as this member knows; a
    /// member that does not lead has no heartbeats and counts every owner.
    pub fn live_fn(&self) -> impl Fn(&protocol::ids::PeerId) -> bool + '_ {
        let leading = self.raft.metrics().borrow().state == ServerState::Leader;
        let now = Instant::now();
        let live = self.liveness.lock().expect("liveness lock");
        move |p| !leading || live.is_live(p, now)
    }

    pub fn status(&self) -> ClusterStatus {
        self.status_from(&self.metrics())
    }

    /// The status from given metrics, marked if this member was removed.
    pub fn status_from(&self, m: &Metrics) -> ClusterStatus {
        let mut s = status_of(self.id, m);
        if self.removal.reason().is_some() {
            s.removed = true;
            s.leader = None;
        }
        s
    }

    /// `Err` once this member was removed from the membership.
    pub fn check_member(&self) -> Result<(), ApiError> {
        match self.removal.reason() {
            Some(why) => Err(ApiError::Unavailable(format!("tracker {} {why}", self.id))),
            None => Ok(()),
        }
    }
}

pub fn not_leader(m: &Metrics) -> ApiError {
    let leader = m.current_leader;
    let addr = leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.api.clone()));
    ApiError::NotLeader { leader, addr }
}

pub fn status_of(id: NodeId, m: &Metrics) -> ClusterStatus {
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<_> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(nid, node)| {
            let last_applied = if *nid == id {
                m.last_applied.map(|l| l.index)
            } else {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(nid).cloned().flatten())
                    .map(|l| l.index)
            };
            MemberInfo {
                id: *nid,
                api_addr: node.api.clone(),
                raft_addr: node.raft.clone(),
                voter: voters.contains(nid),
                last_applied,
            }
        })
        .collect();
    ClusterStatus {
        responder: id,
        leader: m.current_leader,
        term: m.current_term,
        last_applied: m.last_applied.map(|l| l.index),
        members,
        removed: false,
    }
}

/// Whether `m` shows an applied membership that does not list `id`;
/// gives the membership's log index. A member answers a vote request from
/// such an `id` with `NotMember`, and counts itself removed when it is `id`.
pub fn applied_without(id: NodeId, m: &Metrics) -> Option<u64> {
    let stored = &m.membership_config;
    let at = stored.log_id().as_ref()?.index;
    let applied = m.last_applied.map(|l| l.index)?;
    (at <= applied && stored.membership().get_node(&id).is_none()).then_some(at)
}

/// The membership index this member knows, if it lists this member.
fn own_membership_index(id: NodeId, m: &Metrics) -> Option<u64> {
    let stored = &m.membership_config;
    stored
        .membership()
        .get_node(&id)
        .map(|_| stored.log_id().as_ref().map_or(0, |l| l.index))
}

/// Notices this member's removal (see [`Removal`]) and takes it out.
async fn watch_removal(app: Arc<App>) {
    let mut rx = app.raft.metrics();
    // A joining member starts with a membership that does not list it
    // and replays the log from the start: it is not "removed" until it
    // has once been listed. A founding member always was.
    let mut listed = !app.config.join;
    let mut newest_listing = 0u64;
    // A member that catches up replays the memberships of the past, among
    // them one that removed an earlier member with its id (a member wiped
    // and added back under the same id: the chaos test found it taking
    // itself out there). So a follower counts a membership without it only
    // once no leader has replicated to it for a while: a leader replicates
    // only to members of its membership, and heartbeats keep coming to one
    // that is catching up. (A catching-up member never leads, so a leader
    // needs no waiting.)
    let settle = Duration::from_millis(app.config.raft.election_max_ms * 4).max(Duration::from_secs(2));
    let mut without: Option<(u64, tokio::time::Instant)> = None;
    let quiet_since = |since: tokio::time::Instant| app.removal.last_append().map_or(since, |t| t.max(since));
    let why = loop {
        {
            let m = rx.borrow_and_update();
            if let Some(at) = own_membership_index(app.id, &m) {
                listed = true;
                newest_listing = newest_listing.max(at);
                without = None;
            } else if listed {
                if let Some(at) = applied_without(app.id, &m) {
                    // A leader that removed itself knows it at once (and
                    // must stop before openraft, still leading a
                    // membership without it, trips over itself).
                    if m.current_leader == Some(app.id) {
                        break format!("was removed from the cluster by the membership at log index {at}");
                    }
                    match without {
                        Some((a, since)) if a == at => {
                            if quiet_since(since).elapsed() >= settle {
                                break format!("was removed from the cluster by the membership at log index {at}");
                            }
                        }
                        _ => without = Some((at, tokio::time::Instant::now())),
                    }
                }
            }
            let reported = app.removal.reported.lock().expect("removal lock").take();
            if let Some((from, at)) = reported {
                if listed && at > newest_listing {
                    break format!(
                        "was removed from the cluster (member {from} has applied a membership at log index {at} without it)"
                    );
                }
            }
        }
        let recheck = async {
            match without {
                Some((_, since)) => tokio::time::sleep_until(quiet_since(since) + settle).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = app.removal.notify.notified() => {}
            _ = recheck => {}
        }
    };
    tracing::error!(
        id = app.id,
        "this member {why}; it no longer serves the tracker API or Raft. Stop it; to add it again, wipe its data folder and use `admin add`"
    );
    let _ = app.removal.removed.set(why);
    if let Err(e) = app.raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown after removal");
    }
}

/// Rebuilds the leader's live-file search index every
/// `owners.live_index_every_secs`; drops it when not leading, or while a
/// new leader still counts every owner as seen (nothing to skip yet).
///
/// The build runs on the blocking pool from a copy of the heartbeat times
/// and holds the registry's read lock for one pass over files and owners
/// (writes wait for it); searches between builds cost only the live files
/// plus the files registered since.
async fn maintain_live_index(app: std::sync::Weak<App>) {
    let every = match app.upgrade() {
        Some(a) => Duration::from_secs(a.config.owners.live_index_every_secs),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        if !app.leading() {
            *app.live_index.lock().expect("live index lock") = None;
            continue;
        }
        let window = Duration::from_secs(app.config.owners.dead_file_secs);
        let now = Instant::now();
        // A copy of the heartbeat times, so heartbeats do not wait for the
        // pass over the registry, which runs off the async runtime.
        let live = app.liveness.lock().expect("liveness lock").clone();
        let index = if live.all_seen_within(window, now) {
            None
        } else {
            let app = app.clone();
            let built = tokio::task::spawn_blocking(move || {
                let st = app.state.read();
                st.registry.build_live_index(|p| live.seen_within(p, window, now))
            })
            .await;
            match built {
                Ok(ix) => Some(ix),
                Err(_) => return, // the runtime is going away
            }
        };
        if let Some(ix) = &index {
            tracing::debug!(live_files = ix.len(), "rebuilt the live-file search index");
        }
        *app.live_index.lock().expect("live index lock") = index;
    }
}

/// Starts the liveness grace period each time this member becomes leader.
async fn watch_leadership(app: Arc<App>) {
    let mut rx = app.raft.metrics();
    let mut leading_term = None;
    loop {
        let (state, term) = {
            let m = rx.borrow_and_update();
            (m.state, m.current_term)
        };
        if state == ServerState::Leader && leading_term != Some(term) {
            leading_term = Some(term);
            app.liveness
                .lock()
                .expect("liveness lock")
                .on_leader_start(Instant::now());
            // Partial owners of an earlier term may be long gone: a new
            // leader starts with none and nodes announce again within a
            // second or so.
            app.partials.lock().expect("partials lock").clear();
            tracing::info!(term, "became leader; owners get one TTL of grace");
        } else if state != ServerState::Leader && leading_term.take().is_some() {
            app.partials.lock().expect("partials lock").clear();
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
