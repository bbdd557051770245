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
    liveness::Liveness,
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
    /// Owner heartbeats; meaningful only while this member leads.
    pub liveness: Mutex<Liveness>,
    pub throttle: Mutex<Throttle>,
    /// Register: per-source and global (argon2 work) token buckets.
    pub register: Mutex<RegisterThrottle>,
    /// Hashes and verifies passwords on a fixed set of threads with
    /// reused memory.
    pub argon: ArgonPool,
    /// Files with an owner seen within `owners.dead_file_secs`, for search
    /// on the leader; None when not leading or nothing to skip yet.
    pub live_index: Mutex<Option<LiveIndex>>,
    /// Bounds requests in progress; past it, "overloaded".
    pub pending: Semaphore,
}

impl App {
    pub fn new(id: NodeId, raft: Raft, state: Arc<SharedState>, config: TrackerConfig) -> std::io::Result<Arc<Self>> {
        let proposer = Proposer::start(
            raft.clone(),
            config.limits.max_pending,
            config.max_batch,
            config.max_batches_in_flight,
            config.quotas,
        );
        let ttl = Duration::from_secs(config.owner_ttl_secs);
        let dead_after = Duration::from_secs(config.owners.dead_file_secs);
        let pending = Semaphore::new(config.limits.max_pending);
        let argon = ArgonPool::start(config.register.argon_threads, config.register.argon_queue)?;
        let app = Arc::new(App {
            id,
            raft,
            state,
            proposer,
            liveness: Mutex::new(Liveness::keeping(ttl, dead_after)),
            throttle: Mutex::default(),
            register: Mutex::new(RegisterThrottle::new(config.register.clone(), Instant::now())),
            argon,
            live_index: Mutex::new(None),
            pending,
            config,
        });
        tokio::spawn(watch_leadership(app.clone()));
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

/// Rebuilds the leader's live-file search index every
/// `owners.live_index_every_secs`; drops it when not leading, or while a
/// new leader still counts every owner as seen (nothing to skip yet).
///
/// The build holds the registry's read lock for one pass over files and
/// owners (writes wait for it); searches between builds cost only the
/// live files plus the files registered since.
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
        let index = {
            let live = app.liveness.lock().expect("liveness lock");
            if live.all_seen_within(window, now) {
                None
            } else {
                let st = app.state.read();
                Some(st.registry.build_live_index(|p| live.seen_within(p, window, now)))
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
            tracing::info!(term, "became leader; owners get one TTL of grace");
        } else if state != ServerState::Leader {
            leading_term = None;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
