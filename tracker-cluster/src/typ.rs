//! openraft's type configuration and concrete aliases of its generic types.

use protocol::tracker_api::Answer;
use serde::{Deserialize, Serialize};

use crate::registry::Batch;

pub type NodeId = u64;

/// A member as Raft knows it: where its tracker API and its Raft endpoint
/// listen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub api: String,
    pub raft: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "api={} raft={}", self.api, self.raft)
    }
}

openraft::declare_raft_types!(
    /// The tracker's Raft types: a log entry carries a [`Batch`] of client
    /// writes and yields one answer per write.
    pub TypeConfig:
        D = Batch,
        R = Vec<Answer>,
        NodeId = NodeId,
        Node = Member,
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
pub type RPCError<E = openraft::error::Infallible> = openraft::error::RPCError<NodeId, Member, RaftError<E>>;
pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, Member>;
pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, Member>;
pub type InstallSnapshotError = openraft::error::InstallSnapshotError;
pub type Metrics = openraft::RaftMetrics<NodeId, Member>;
