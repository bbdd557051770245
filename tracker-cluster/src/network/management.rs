//! Cluster management: add a member (as a learner until it has caught up,
//! then as a voter), remove one, show the status, build a snapshot now. Requests travel on the
//! mutual-TLS Raft endpoint; `raft.rs` lets only the admin certificate
//! change the membership, and the admin or a member ask for the status.

use std::{collections::BTreeSet, time::Duration};

use openraft::ChangeMembers;
use protocol::tracker_api::ClusterStatus;
use serde::{Deserialize, Serialize};

use super::{raft_network_impl::Network, RaftReply, RaftRequest};
use crate::{
    app::App,
    typ::{Member, NodeId},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Adds a member: it must be running (with `join: true`).
    Add {
        id: NodeId,
        api: String,
        raft: String,
    },
    Remove {
        id: NodeId,
    },
    Status,
    /// This member's applied index and a digest of its registry (any
    /// member answers; equal digests at equal indexes mean equal state).
    Digest,
    /// Builds a snapshot on the member asked (leader or not) now, and
    /// answers once it is built (or after `wait_ms`).
    Snapshot {
        wait_ms: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminReply {
    Status(ClusterStatus),
    /// Not the leader: ask this member instead.
    NotLeader {
        leader: Option<NodeId>,
        raft: Option<String>,
    },
    Digest {
        applied: Option<u64>,
        /// BLAKE3 of the registry, hex.
        digest: String,
    },
    /// A snapshot newer than the one before the request was built.
    Snapshot {
        /// The last log index it covers.
        index: u64,
        /// From the trigger until openraft reported it built (queueing
        /// in openraft, serialising, writing and fsync).
        millis: u64,
    },
}

pub async fn handle(app: &App, req: AdminRequest) -> Result<AdminReply, String> {
    if let AdminRequest::Digest = req {
        let st = app.state.read();
        return Ok(AdminReply::Digest {
            applied: st.last_applied.map(|l| l.index),
            digest: hex::encode(st.registry.digest()),
        });
    }
    if let AdminRequest::Snapshot { wait_ms } = req {
        return snapshot_now(app, Duration::from_millis(wait_ms)).await;
    }
    if !matches!(req, AdminRequest::Status) {
        if let Err(_e) = app.leader_check() {
            let m = app.metrics();
            let raft = m
                .current_leader
                .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.raft.clone()));
            return Ok(AdminReply::NotLeader {
                leader: m.current_leader,
                raft,
            });
        }
    }
    match req {
        AdminRequest::Status | AdminRequest::Digest | AdminRequest::Snapshot { .. } => {}
        AdminRequest::Add { id, api, raft } => {
            for (what, a) in [("api", &api), ("raft", &raft)] {
                a.parse::<std::net::SocketAddr>()
                    .map_err(|_| format!("{what} address {a:?} is not IP:port"))?;
            }
            tracing::info!(id, %api, %raft, "adding member as learner");
            app.raft
                .add_learner(id, Member { api, raft }, true)
                .await
                .map_err(|e| e.to_string())?;
            let mut voters: BTreeSet<NodeId> = app.metrics().membership_config.membership().voter_ids().collect();
            voters.insert(id);
            tracing::info!(id, "learner caught up; promoting to voter");
            app.raft
                .change_membership(voters, false)
                .await
                .map_err(|e| e.to_string())?;
        }
        AdminRequest::Remove { id } => {
            let voters: BTreeSet<NodeId> = app.metrics().membership_config.membership().voter_ids().collect();
            if !voters.contains(&id) && app.metrics().membership_config.membership().get_node(&id).is_none() {
                return Err(format!("member {id} is not in the cluster"));
            }
            if voters.len() == 1 && voters.contains(&id) {
                return Err("cannot remove the last voter".into());
            }
            tracing::info!(id, "removing member");
            let remaining: BTreeSet<NodeId> = voters.into_iter().filter(|v| *v != id).collect();
            app.raft
                .change_membership(remaining, false)
                .await
                .map_err(|e| e.to_string())?;
            // A learner (not a voter) is dropped from the node list too.
            let _ = app
                .raft
                .change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                .await;
        }
    }
    Ok(AdminReply::Status(app.status()))
}

/// Triggers a snapshot on this member and waits until openraft reports
/// one newer than the one it had (if a snapshot was being built already,
/// that one may be what is reported).
async fn snapshot_now(app: &App, wait: Duration) -> Result<AdminReply, String> {
    let mut rx = app.raft.metrics();
    let before = rx.borrow_and_update().snapshot.map(|l| l.index);
    let started = std::time::Instant::now();
    tracing::info!(?before, "snapshot asked for by the admin");
    app.raft.trigger().snapshot().await.map_err(|e| e.to_string())?;
    let built = tokio::time::timeout(wait, async {
        loop {
            if let Some(index) = rx.borrow_and_update().snapshot.map(|l| l.index) {
                if Some(index) > before {
                    return Ok::<u64, String>(index);
                }
            }
            rx.changed().await.map_err(|_| "raft stopped".to_string())?;
        }
    })
    .await
    .map_err(|_| format!("no new snapshot within {} ms", wait.as_millis()))??;
    let millis = started.elapsed().as_millis() as u64;
    tracing::info!(index = built, millis, "snapshot asked for by the admin is built");
    Ok(AdminReply::Snapshot { index: built, millis })
}

/// Builds a snapshot on member `id` and returns (index, milliseconds).
pub async fn snapshot_member(net: &Network, id: NodeId, addr: &str, wait: Duration) -> Result<(u64, u64), String> {
    let req = AdminRequest::Snapshot {
        wait_ms: wait.as_millis() as u64,
    };
    match ask_member(net, id, addr, req, wait + Duration::from_secs(5)).await? {
        AdminReply::Snapshot { index, millis } => Ok((index, millis)),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// Sends one admin request to one member, without following.
async fn ask_member(
    net: &Network,
    id: NodeId,
    addr: &str,
    req: AdminRequest,
    timeout: Duration,
) -> Result<AdminReply, String> {
    let conn = tokio::time::timeout(timeout, net.connect(id, addr))
        .await
        .map_err(|_| "timed out".to_string())??;
    let reply = tokio::time::timeout(
        timeout,
        protocol::codec::call::<_, RaftReply>(&conn, &RaftRequest::Admin(req), 64 << 20),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| e.to_string())?;
    conn.close(0u32.into(), b"done");
    match reply {
        RaftReply::Admin(Ok(r)) => Ok(r),
        RaftReply::Admin(Err(e)) | RaftReply::Refused(e) => Err(e),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// Asks one member for its own view of the cluster, without following.
pub async fn status_of_member(
    net: &Network,
    id: NodeId,
    addr: &str,
    timeout: Duration,
) -> Result<ClusterStatus, String> {
    match ask_member(net, id, addr, AdminRequest::Status, timeout).await? {
        AdminReply::Status(s) => Ok(s),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// Asks one member for its applied index and registry digest.
pub async fn digest_of_member(
    net: &Network,
    id: NodeId,
    addr: &str,
    timeout: Duration,
) -> Result<(Option<u64>, String), String> {
    match ask_member(net, id, addr, AdminRequest::Digest, timeout).await? {
        AdminReply::Digest { applied, digest } => Ok((applied, digest)),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// Sends an admin request to the cluster, starting from `members` (raft
/// addresses by id) and following `NotLeader` answers, for at most
/// `deadline`.
pub async fn call(
    net: &Network,
    members: &[(NodeId, String)],
    req: AdminRequest,
    deadline: Duration,
) -> Result<ClusterStatus, String> {
    let until = tokio::time::Instant::now() + deadline;
    let mut targets: Vec<(NodeId, String)> = members.to_vec();
    let mut i = 0;
    let mut last_err = String::from("no member listed");
    while tokio::time::Instant::now() < until {
        let Some((id, addr)) = targets.get(i % targets.len().max(1)).cloned() else {
            break;
        };
        i += 1;
        // A dead member would hold a handshake for the whole QUIC idle
        // timeout: give each member a second, then try the next.
        let connected = tokio::time::timeout(Duration::from_secs(1), net.connect(id, &addr))
            .await
            .unwrap_or_else(|_| Err("connect timed out".into()));
        let conn = match connected {
            Ok(c) => c,
            Err(e) => {
                last_err = format!("member {id} at {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let reply = tokio::time::timeout(
            left,
            protocol::codec::call::<_, RaftReply>(&conn, &RaftRequest::Admin(req.clone()), 64 << 20),
        )
        .await;
        match reply {
            Err(_) => last_err = "timed out".into(),
            Ok(Err(e)) => last_err = format!("member {id} at {addr}: {e}"),
            Ok(Ok(RaftReply::Admin(Ok(AdminReply::Status(s))))) => return Ok(s),
            Ok(Ok(RaftReply::Admin(Ok(AdminReply::NotLeader {
                leader: Some(l),
                raft: Some(r),
            })))) => {
                targets.insert(i % (targets.len() + 1), (l, r));
                continue;
            }
            Ok(Ok(RaftReply::Admin(Ok(AdminReply::NotLeader { .. })))) => {
                last_err = "no leader yet".into();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Ok(RaftReply::Admin(Err(e)))) => return Err(e),
            Ok(Ok(RaftReply::Refused(why))) => return Err(format!("member {id} at {addr}: {why}")),
            Ok(Ok(other)) => last_err = format!("unexpected reply {other:?}"),
        }
    }
    Err(last_err)
}
