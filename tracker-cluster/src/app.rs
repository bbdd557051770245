//! The state one tracker member shares between its tasks: the Raft
//! handle, the applied state, the leader-only soft state (liveness, login
//! throttling) and the write batcher.

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
    liveness::Liveness,
    proposer::Proposer,
    store::SharedState,
    throttle::Throttle,
    typ::{Metrics, NodeId, Raft},
};

pub struct App {
    pub id: NodeId,
    pub raft: Raft,
    pub state: Arc<SharedState>,
    pub config: TrackerConfig,
    pub proposer: Proposer,
    /// Owner heartbeats; meaningful only while this member leads.
    pub liveness: Mutex<Liveness>,
    pub throttle: Mutex<Throttle>,
    /// Bounds concurrent argon2 computations (each takes ~19 MiB).
    pub argon: Semaphore,
    /// Bounds requests in progress, taken before a request body is read;
    /// past it, "overloaded".
    pub pending: Semaphore,
    /// Connection caps and timeouts of the API endpoint.
    pub api_guard: protocol::listen::Guard,
    /// Set once this member learns it was removed from the membership.
    pub removal: Arc<Removal>,
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
}

impl Removal {
    /// Records a `NotMember` answer; the leadership watcher decides.
    pub fn report(&self, from: NodeId, membership_index: u64) {
        *self.reported.lock().expect("removal lock") = Some((from, membership_index));
        self.notify.notify_one();
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
    ) -> Arc<Self> {
        let proposer = Proposer::start(
            raft.clone(),
            config.limits.max_pending,
            config.max_batch,
            config.max_batches_in_flight,
        );
        let ttl = Duration::from_secs(config.owner_ttl_secs);
        let pending = Semaphore::new(config.limits.max_pending);
        let api_guard =
            protocol::listen::Guard::new("tracker api", protocol::listen::Bounds::from_limits(&config.limits));
        let app = Arc::new(App {
            id,
            raft,
            state,
            config,
            proposer,
            liveness: Mutex::new(Liveness::new(ttl)),
            throttle: Mutex::default(),
            argon: Semaphore::new(2),
            pending,
            api_guard,
            removal,
        });
        tokio::spawn(watch_leadership(app.clone()));
        tokio::spawn(watch_removal(app.clone()));
        app
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
/// gives the membership's log index.
fn applied_without(id: NodeId, m: &Metrics) -> Option<u64> {
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

/// What a member answers to a vote request from `from`: `Some(index)` if
/// its applied membership (at `index`) does not list `from`.
pub fn not_member_index(m: &Metrics, from: NodeId) -> Option<u64> {
    applied_without(from, m)
}

/// Notices this member's removal (see [`Removal`]) and takes it out.
async fn watch_removal(app: Arc<App>) {
    let mut rx = app.raft.metrics();
    // A joining member starts with a membership that does not list it
    // and replays the log from the start: it is not "removed" until it
    // has once been listed. A founding member always was.
    let mut listed = !app.config.join;
    let mut newest_listing = 0u64;
    let why = loop {
        {
            let m = rx.borrow_and_update();
            if let Some(at) = own_membership_index(app.id, &m) {
                listed = true;
                newest_listing = newest_listing.max(at);
            } else if listed {
                if let Some(at) = applied_without(app.id, &m) {
                    break format!("was removed from the cluster by the membership at log index {at}");
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
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = app.removal.notify.notified() => {}
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
            tracing::info!(term, "became leader; owners get one TTL of grace");
        } else if state != ServerState::Leader {
            leading_term = None;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
