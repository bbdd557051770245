//! Inbound Raft RPCs: the mutual-TLS endpoint (`quorrent-raft/1`). The
//! server configuration requires a client certificate of the cluster CA,
//! so a process without one never gets past the handshake; then every
//! request is checked against the role the certificate carries
//! (`protocol::tls::Role`):
//! - Append, Vote, InstallSnapshot: only a member certificate, and only
//!   for the member id it names (member 2 cannot speak for member 1);
//! - Admin Add, Remove and Snapshot: only the admin certificate;
//! - Admin Status and Digest: the admin or a member.
//!
//! A refused caller gets `RaftReply::Refused` naming why, and a log line.

use std::{net::SocketAddr, sync::Arc};

use protocol::{
    codec::{self, CodecError},
    tls::{self, Role},
};
use rustls::pki_types::CertificateDer;

use super::{
    management::{AdminReply, AdminRequest},
    RaftReply, RaftRequest,
};
use crate::{app::App, typ::NodeId};

/// Accepts Raft connections until the endpoint is closed, within the
/// listener bounds of the configuration (connection caps, handshake
/// timeout). A Raft frame may be a 4 MiB snapshot piece on a slow link, so
/// its read timeout is the snapshot timeout rather than the API's.
pub async fn serve(app: Arc<App>, endpoint: quinn::Endpoint) {
    let mut bounds = protocol::listen::Bounds::from_limits(&app.config.limits);
    bounds.read_timeout = bounds.read_timeout.max(std::time::Duration::from_secs(10));
    let guard = protocol::listen::Guard::new("raft", bounds);
    let g = guard.clone();
    protocol::listen::serve(endpoint, guard, move |conn| serve_conn(app.clone(), g.clone(), conn)).await;
}

async fn serve_conn(app: Arc<App>, guard: protocol::listen::Guard, conn: quinn::Connection) {
    let remote = conn.remote_address();
    // The handshake required a CA certificate, so there is one.
    let Some(cert) = tls::peer_cert(&conn) else {
        conn.close(1u32.into(), b"no certificate");
        return;
    };
    let cert = Arc::new(cert);
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let (app, cert, guard) = (app.clone(), cert.clone(), guard.clone());
        tokio::spawn(async move {
            let limit = app.config.limits.max_raft_frame_bytes;
            let reply = match guard.read_body(&mut recv, limit).await {
                Ok(body) => match codec::decode::<RaftRequest>(&body, limit) {
                    Ok(req) => match authorize(&app, &cert, &req, remote) {
                        Ok(()) => dispatch(&app, req).await,
                        Err(reply) => reply,
                    },
                    Err(e) => RaftReply::Malformed(e.to_string()),
                },
                Err(e @ (CodecError::TooLarge { .. } | CodecError::Timeout)) => {
                    let _ = recv.stop(0u32.into());
                    RaftReply::Malformed(e.to_string())
                }
                Err(_) => return,
            };
            if codec::write_frame(&mut send, &reply).await.is_ok() {
                let _ = send.finish();
            }
        });
    }
}

/// The member id a Raft message claims to come from.
fn sender(req: &RaftRequest) -> Option<NodeId> {
    match req {
        RaftRequest::Append(r) => r.vote.leader_id().voted_for(),
        RaftRequest::Vote(r) => r.vote.leader_id().voted_for(),
        RaftRequest::Snapshot(r) => r.vote.leader_id().voted_for(),
        RaftRequest::Admin(_) => None,
    }
}

fn kind(req: &RaftRequest) -> &'static str {
    match req {
        RaftRequest::Append(_) => "append-entries",
        RaftRequest::Vote(_) => "vote",
        RaftRequest::Snapshot(_) => "install-snapshot",
        RaftRequest::Admin(AdminRequest::Add { .. }) => "admin-add",
        RaftRequest::Admin(AdminRequest::Remove { .. }) => "admin-remove",
        RaftRequest::Admin(AdminRequest::Status) => "admin-status",
        RaftRequest::Admin(AdminRequest::Digest) => "admin-digest",
        RaftRequest::Admin(AdminRequest::Snapshot { .. }) => "admin-snapshot",
    }
}

/// Checks the caller's role for `req`; `Err` holds the answer to send.
fn authorize(app: &App, cert: &CertificateDer<'_>, req: &RaftRequest, remote: SocketAddr) -> Result<(), RaftReply> {
    let allowed = match req {
        RaftRequest::Admin(AdminRequest::Status | AdminRequest::Digest) => {
            tls::has_role(cert, Role::Admin) || tls::role_kind(cert) == "member"
        }
        RaftRequest::Admin(_) => tls::has_role(cert, Role::Admin),
        _ => sender(req).is_some_and(|id| tls::has_role(cert, Role::Member(id))),
    };
    if !allowed {
        let role = tls::role_kind(cert);
        let what = kind(req);
        // A caller may repeat a refused request as fast as it likes: the
        // log gets one line per interval, with the count held back.
        static REFUSALS: std::sync::LazyLock<protocol::listen::LogLimiter> =
            std::sync::LazyLock::new(|| protocol::listen::LogLimiter::new(protocol::listen::LOG_EVERY));
        if let Some(unlogged) = REFUSALS.hit() {
            tracing::warn!(%remote, role, request = what, unlogged, "raft request refused: the certificate's role does not allow it");
        }
        let rule = match req {
            RaftRequest::Admin(AdminRequest::Status | AdminRequest::Digest) => "only the admin or a member",
            RaftRequest::Admin(_) => "only the admin certificate",
            _ => "only the certificate of the member the message comes from",
        };
        return Err(RaftReply::Refused(format!(
            "{what} refused: {rule} may send it, and this certificate is {}",
            match role {
                "member" => "another member's",
                "no role" => "one without a role",
                r => r,
            }
        )));
    }
    if let Some(why) = app.removal.reason() {
        return match req {
            RaftRequest::Admin(AdminRequest::Status | AdminRequest::Digest) => Ok(()),
            // The admin tool moves on to another member.
            RaftRequest::Admin(_) => Err(RaftReply::Admin(Ok(AdminReply::NotLeader {
                leader: None,
                raft: None,
            }))),
            _ => Err(RaftReply::Refused(format!("tracker {} {why}", app.id))),
        };
    }
    if let (RaftRequest::Vote(_), Some(from)) = (req, sender(req)) {
        let not_member = crate::app::applied_without(from, &app.raft.metrics().borrow());
        if let Some(membership_index) = not_member {
            tracing::info!(
                from,
                membership_index,
                "vote request from a member that is no longer in the cluster"
            );
            return Err(RaftReply::NotMember { membership_index });
        }
    }
    Ok(())
}

/// Runs `work` (one snapshot piece, or the last one and the install behind
/// it) while telling openraft every heartbeat interval that the leader of
/// `vote` is alive, and once first.
///
/// openraft 0.9 resets a follower's election timer on AppendEntries and on
/// a finished install, not on each snapshot piece, and the leader sends no
/// heartbeats to a member while it streams it a snapshot. A snapshot that
/// takes longer than the election timeout to stream and install (hundreds
/// of MiB) would make the member stand for election mid-stream: its vote
/// requests depose the leader, which restarts the stream from the start,
/// for ever. So each piece counts as a heartbeat, fed to openraft as the
/// empty AppendEntries the leader would have sent: same vote, no entries,
/// no previous log id, no commit index, so it moves nothing but the
/// timer (the vote is checked as for any AppendEntries; the piece came
/// over a member-certificate connection). While the last piece waits for
/// the install (seconds for millions of files), it beats on, bounded by
/// `raft.install_snapshot_timeout_ms`.
async fn keeping_lease<T>(app: &App, vote: crate::typ::Vote, work: impl std::future::Future<Output = T>) -> T {
    // Not awaited: openraft takes the vote at once but answers only after
    // the commands queued before it, which include the install itself.
    let beat = || {
        let raft = app.raft.clone();
        tokio::spawn(async move {
            let _ = raft
                .append_entries(openraft::raft::AppendEntriesRequest {
                    vote,
                    prev_log_id: None,
                    entries: vec![],
                    leader_commit: None,
                })
                .await;
        })
    };
    beat();
    let every = std::time::Duration::from_millis(app.config.raft.heartbeat_ms.max(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticks.tick() => drop(beat()),
        }
    }
}

async fn dispatch(app: &App, req: RaftRequest) -> RaftReply {
    match req {
        RaftRequest::Append(r) => {
            let answer = app.raft.append_entries(r).await;
            if answer.is_ok() {
                app.removal.heard_leader();
            }
            RaftReply::Append(answer)
        }
        RaftRequest::Vote(r) => RaftReply::Vote(app.raft.vote(r).await),
        RaftRequest::Snapshot(r) => {
            let vote = r.vote;
            let install = app.raft.install_snapshot(r);
            RaftReply::Snapshot(keeping_lease(app, vote, install).await)
        }
        RaftRequest::Admin(r) => RaftReply::Admin(super::management::handle(app, r).await),
    }
}
