//! Inbound Raft RPCs: the mutual-TLS endpoint (`quorrent-raft/1`). The
//! server configuration requires a client certificate of the cluster CA,
//! so a process without one never gets past the handshake.

use std::sync::Arc;

use protocol::codec::{self, CodecError};

use super::{management, RaftReply, RaftRequest};
use crate::app::App;

/// Accepts Raft connections until the endpoint is closed.
pub async fn serve(app: Arc<App>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let app = app.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "raft handshake refused");
                    return;
                }
            };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let app = app.clone();
                tokio::spawn(async move {
                    let limit = app.config.limits.max_raft_frame_bytes;
                    let reply = match codec::read_frame::<_, RaftRequest>(&mut recv, limit).await {
                        Ok(req) => dispatch(&app, req).await,
                        Err(e @ (CodecError::Malformed(_) | CodecError::TooLarge { .. })) => {
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
        });
    }
}

async fn dispatch(app: &App, req: RaftRequest) -> RaftReply {
    match req {
        RaftRequest::Append(r) => RaftReply::Append(app.raft.append_entries(r).await),
        RaftRequest::Vote(r) => RaftReply::Vote(app.raft.vote(r).await),
        RaftRequest::Snapshot(r) => RaftReply::Snapshot(app.raft.install_snapshot(r).await),
        RaftRequest::Admin(r) => RaftReply::Admin(management::handle(app, r).await),
    }
}
