//! Everything the tracker says on the network: inbound Raft RPCs
//! (`raft`), outbound Raft RPCs (`raft_network_impl`), the tracker API
//! (`api`), and cluster management (`management`). Raft and management
//! share the mutual-TLS endpoint, where each request is checked against
//! the role in the caller's certificate; the tracker API has its own.

pub mod api;
pub mod management;
pub mod raft;
pub mod raft_network_impl;

use serde::{Deserialize, Serialize};

use crate::typ::{InstallSnapshotError, NodeId, RaftError, TypeConfig};

/// ALPN of Raft traffic between trackers (mutual TLS).
pub const RAFT_ALPN: &[u8] = b"quorrent-raft/1";

/// A request on the Raft endpoint.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    Append(openraft::raft::AppendEntriesRequest<TypeConfig>),
    Vote(openraft::raft::VoteRequest<NodeId>),
    Snapshot(openraft::raft::InstallSnapshotRequest<TypeConfig>),
    Admin(management::AdminRequest),
}

/// The answer to a [`RaftRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    Append(Result<openraft::raft::AppendEntriesResponse<NodeId>, RaftError>),
    Vote(Result<openraft::raft::VoteResponse<NodeId>, RaftError>),
    Snapshot(Result<openraft::raft::InstallSnapshotResponse<NodeId>, RaftError<InstallSnapshotError>>),
    Admin(Result<management::AdminReply, String>),
    /// The request did not decode.
    Malformed(String),
    /// The caller's certificate does not carry a role allowed to make
    /// this request, or this member no longer serves (it was removed).
    Refused(String),
    /// A vote request from a member that the answering member's applied
    /// membership (at this log index) does not list: the caller was
    /// removed.
    NotMember {
        membership_index: u64,
    },
}
