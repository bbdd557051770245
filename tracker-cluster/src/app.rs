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
}

impl App {
    pub fn new(id: NodeId, raft: Raft, state: Arc<SharedState>, config: TrackerConfig) -> Arc<Self> {
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
        });
        tokio::spawn(watch_leadership(app.clone()));
        app
    }

    pub fn metrics(&self) -> Metrics {
        self.raft.metrics().borrow().clone()
    }

    /// `Ok` if this member leads now, else where the leader is.
    pub fn leader_check(&self) -> Result<(), ApiError> {
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
        status_of(self.id, &self.metrics())
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
