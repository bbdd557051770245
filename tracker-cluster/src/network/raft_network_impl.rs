//! Outbound Raft RPCs over QUIC with mutual TLS: one lazily opened
//! connection per target member, one stream per RPC. A broken connection
//! is dropped and re-dialled on the next RPC; openraft backs off on
//! `Unreachable`.

use std::{sync::Arc, time::Duration};

use openraft::{
    error::{NetworkError, RPCError as OpenRpcError, RemoteError, Unreachable},
    network::{RPCOption, RaftNetwork, RaftNetworkFactory},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
        VoteResponse,
    },
};
use protocol::codec::{self, CallError};

use super::{RaftReply, RaftRequest};
use crate::{
    app::Removal,
    typ::{InstallSnapshotError, Member, NodeId, RPCError, RaftError, TypeConfig},
};

/// Makes clients for openraft; shares one client endpoint.
#[derive(Clone)]
pub struct Network {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    limit: usize,
    /// Where a `NotMember` answer is reported (a member's own network).
    removal: Option<Arc<Removal>>,
}

impl Network {
    pub fn new(endpoint: quinn::Endpoint, client: quinn::ClientConfig, limit: usize) -> Self {
        Network {
            endpoint,
            client,
            limit,
            removal: None,
        }
    }

    /// Reports `NotMember` answers to `removal` (see [`Removal`]).
    pub fn with_removal(mut self, removal: Arc<Removal>) -> Self {
        self.removal = Some(removal);
        self
    }

    /// Dials a member's Raft endpoint; the server must present the
    /// certificate of `tracker-ID` from the cluster CA.
    pub async fn connect(&self, target: NodeId, addr: &str) -> Result<quinn::Connection, String> {
        let addr = protocol::net::resolve(addr)
            .await
            .map_err(|e| format!("resolve {addr}: {e}"))?;
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, &format!("tracker-{target}"))
            .map_err(|e| e.to_string())?;
        connecting.await.map_err(|e| e.to_string())
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Client;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Client {
        Client {
            net: self.clone(),
            target,
            addr: node.raft.clone(),
            conn: None,
            refused_log: protocol::listen::LogLimiter::new(protocol::listen::LOG_EVERY),
            far_log: protocol::listen::LogLimiter::new(protocol::listen::LOG_EVERY),
        }
    }
}

/// The RPC client for one target member.
pub struct Client {
    net: Network,
    target: NodeId,
    addr: String,
    conn: Option<quinn::Connection>,
    /// Refusals repeat with every heartbeat: logged once per interval.
    refused_log: protocol::listen::LogLimiter,
    /// So does "too far away for the heartbeat interval".
    far_log: protocol::listen::LogLimiter,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl Client {
    async fn send<E: std::error::Error>(
        &mut self,
        req: &RaftRequest,
        timeout: Duration,
    ) -> Result<RaftReply, RPCError<E>>
    where
        RaftError<E>: std::error::Error,
    {
        let conn = match &self.conn {
            Some(c) if c.close_reason().is_none() => c.clone(),
            _ => {
                let c = tokio::time::timeout(timeout, self.net.connect(self.target, &self.addr))
                    .await
                    .map_err(|_| OpenRpcError::Unreachable(Unreachable::new(&Msg("connect timed out".into()))))?
                    .map_err(|e| OpenRpcError::Unreachable(Unreachable::new(&Msg(e))))?;
                self.conn = Some(c.clone());
                c
            }
        };
        match tokio::time::timeout(timeout, codec::call::<_, RaftReply>(&conn, req, self.net.limit)).await {
            Err(_) => {
                // openraft gives every AppendEntries the heartbeat interval
                // to complete: a member further away than that can never
                // be replicated to, and the operator must be told why.
                let rtt = conn.rtt();
                if rtt * 2 > timeout {
                    if let Some(unlogged) = self.far_log.hit() {
                        tracing::warn!(
                            target = self.target,
                            rtt_ms = rtt.as_millis() as u64,
                            timeout_ms = timeout.as_millis() as u64,
                            unlogged,
                            "member is too far away for the Raft timing: every request must complete within \
                             raft.heartbeat_ms; set it above twice the round trip (and the election timeouts \
                             above three heartbeats)"
                        );
                    }
                }
                Err(OpenRpcError::Network(NetworkError::new(&Msg(format!(
                    "rpc to {} timed out",
                    self.target
                )))))
            }
            Ok(Ok(RaftReply::Malformed(m))) => Err(OpenRpcError::Network(NetworkError::new(&Msg(m)))),
            Ok(Ok(RaftReply::Refused(m))) => {
                if let Some(unlogged) = self.refused_log.hit() {
                    tracing::warn!(target = self.target, unlogged, "raft request refused: {m}");
                }
                Err(OpenRpcError::Network(NetworkError::new(&Msg(m))))
            }
            Ok(Ok(RaftReply::NotMember { membership_index })) => {
                if let Some(r) = &self.net.removal {
                    r.report(self.target, membership_index);
                }
                Err(OpenRpcError::Network(NetworkError::new(&Msg(format!(
                    "member {} says this member is not in its membership (log index {membership_index})",
                    self.target
                )))))
            }
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                self.conn = None;
                Err(match e {
                    CallError::Connection(_) => OpenRpcError::Unreachable(Unreachable::new(&e)),
                    _ => OpenRpcError::Network(NetworkError::new(&e)),
                })
            }
        }
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<E>
    where
        RaftError<E>: std::error::Error,
    {
        OpenRpcError::Network(NetworkError::new(&Msg("unexpected reply kind".into())))
    }
}

fn remote<E: std::error::Error>(target: NodeId, e: RaftError<E>) -> RPCError<E>
where
    RaftError<E>: std::error::Error,
{
    OpenRpcError::RemoteError(RemoteError::new(target, e))
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError> {
        match self.send(&RaftRequest::Append(rpc), option.hard_ttl()).await? {
            RaftReply::Append(r) => r.map_err(|e| remote(self.target, e)),
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<InstallSnapshotError>> {
        match self.send(&RaftRequest::Snapshot(rpc), option.hard_ttl()).await? {
            RaftReply::Snapshot(r) => r.map_err(|e| remote(self.target, e)),
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RPCError> {
        match self.send(&RaftRequest::Vote(rpc), option.hard_ttl()).await? {
            RaftReply::Vote(r) => r.map_err(|e| remote(self.target, e)),
            _ => Err(self.unexpected()),
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Retry an unreachable member quickly: a restarted member should be
        // caught up within a fraction of a second.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

/// Keeps `Arc` in scope for callers that share the network.
pub type SharedNetwork = Arc<Network>;
