//! The tracker API (`quorrent-tracker/1`): what nodes ask of the tracker
//! cluster, spoken node -> proxy and proxy -> leader tracker.
//!
//! Sequence: the client opens one bi-directional stream per request, sends
//! one [`Envelope`] frame and finishes its side; the server answers one
//! [`Answer`] frame. A connection carries any number of such streams at
//! once. A frame that does not decode gets `Err(BadFrame)` on that stream
//! and the connection stays usable.
//!
//! Goals: every write is exactly-once (the envelope's [`WriteId`]), so the
//! proxy may retry a request on a new leader; every read is linearizable
//! unless the envelope asks for [`Consistency::Stale`].
//!
//! Non-goals: streaming results (search is paginated instead), pushing
//! events to nodes (nodes poll with heartbeats).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::ids::{ClientId, ContentId, FileId, NameError, PeerId};

/// ALPN of the tracker API.
pub const ALPN: &[u8] = b"quorrent-tracker/1";

/// Most files one [`Request::OwnMany`] may register. With names at their
/// longest a request stays under the tracker's 1 MiB frame limit only for
/// a few thousand files; 1,024 of typical size (about 100 bytes each) make
/// a frame of about 100 KiB, and one Raft entry holds at most `max_batch`
/// files of such requests.
pub const MAX_OWN_MANY: usize = 1024;

/// Most contents one [`Request::Pool`] or [`Request::GetPooled`] may name
/// (32 KiB of ids); an item with more non-empty files pools its largest.
pub const MAX_POOL_CONTENTS: usize = 1024;
/// Most files the tracker keeps per content (the pool of a content is at
/// most this many items; see `ARCHITECTURE.md`, "One swarm per content").
pub const MAX_POOL_FILES: usize = 16;
/// Most other items one [`Reply::Pooled`] names.
pub const MAX_POOLED_FILES: usize = 64;
/// Most live owners [`Reply::Pooled`] gives per item.
pub const MAX_POOLED_OWNERS: u32 = 32;

/// Identifies one write for exactly-once application: the client's id and
/// its sequence number. A client has one write outstanding at a time and
/// numbers them 1, 2, 3, ...; a retry reuses the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WriteId {
    pub client: ClientId,
    pub seq: u64,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Linearizable: the leader confirms its leadership with a quorum and
    /// waits until its state machine has applied the read index.
    #[default]
    Linearizable,
    /// Whatever the answering member has applied; any member answers.
    Stale,
}

/// One request as it travels on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// The session token from Login; needed by all but Register, Login,
    /// ClusterStatus and WatchLeader.
    pub token: Option<String>,
    /// Present on writes; the proxy rejects a write without it.
    pub write_id: Option<WriteId>,
    /// The address of the node as the proxy saw it (for per-source login
    /// throttling). Trusted only from a connection holding a certificate
    /// of the cluster CA.
    pub origin: Option<SocketAddr>,
    pub consistency: Consistency,
    pub request: Request,
}

impl Envelope {
    /// A request without a session or write id that any member may answer
    /// from what it has applied (status, leader watch): what the proxy and
    /// the admin tool ask members directly.
    pub fn stale(request: Request) -> Envelope {
        Envelope {
            token: None,
            write_id: None,
            origin: None,
            consistency: Consistency::Stale,
            request,
        }
    }
}

/// Metadata of a registered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub id: FileId,
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    pub chunk_count: u32,
    /// 0 for a single file; for a folder, how many files it holds (each
    /// file's chunks start a new chunk, so a folder has between
    /// `size / chunk_size` and that plus `files` chunks).
    pub files: u32,
}

/// Where a peer can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub addrs: Vec<SocketAddr>,
}

/// A peer that is still downloading a file and serves the chunks it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialOwner {
    pub peer: PeerInfo,
    /// The chunks it held at its last announcement: bit `i` of byte `i / 8`
    /// (least significant first) is chunk `i`; `chunk_count.div_ceil(8)`
    /// bytes.
    pub have: Vec<u8>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHit {
    pub file: FileMeta,
    /// Complete owners heard from within the liveness TTL.
    pub live_owners: u32,
    /// Peers downloading the file that announced themselves recently
    /// (the leader's soft state; 0 when answered by a follower).
    pub partial_owners: u32,
}

/// One member of the tracker cluster as seen by the answering member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    pub api_addr: String,
    pub raft_addr: String,
    pub voter: bool,
    /// Last log index known applied (own) or matched (leader's view of a
    /// follower); None when unknown.
    pub last_applied: Option<u64>,
}

/// The cluster as one member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub responder: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberInfo>,
    /// The responder was removed from the membership: it serves nothing
    /// and names no leader.
    pub removed: bool,
}

/// One member's own figures: what its `/status` shows, what the proxy's
/// dashboard and `scripts/cluster.sh status` read (through
/// [`Request::MemberStatus`]), and what its `/metrics` exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    pub id: u64,
    pub api_addr: String,
    /// "leader", "follower", "candidate", "learner", "shutdown" or
    /// "removed".
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    /// The highest index this member knows committed (durable on a
    /// majority).
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// The leader's view of each other member: the last index known
    /// replicated there, and how many entries it is behind the leader's
    /// log. Empty on a follower.
    pub followers: Vec<FollowerLag>,
    /// Terms this member has seen begin since it started.
    pub elections_seen: u64,
    /// Milliseconds since the leader last heard from a quorum (leader
    /// only).
    pub quorum_ack_ms: Option<u64>,
    pub registry: RegistryCounts,
    pub uptime_ms: u64,
    pub version: String,
}

/// A follower as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerLag {
    pub id: u64,
    pub matched: Option<u64>,
    pub lag: u64,
}

/// The replicated registry's sizes on one member (`live_peers`: peers
/// heard from within the owner TTL, known only on the leader).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCounts {
    pub users: u64,
    pub sessions: u64,
    pub files: u64,
    pub owners: u64,
    pub peers: u64,
    pub live_peers: Option<u64>,
}

/// The requests. Discriminants are part of the protocol: new requests go
/// at the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    Register {
        user: String,
        password: String,
    },
    Login {
        user: String,
        password: String,
    },
    Logout,
    AnnouncePeer {
        peer_id: PeerId,
        addrs: Vec<SocketAddr>,
    },
    Own {
        peer_id: PeerId,
        file: FileMeta,
    },
    Disown {
        peer_id: PeerId,
        file_id: FileId,
    },
    /// Case-insensitive substring of the name; `cursor` is the `next` of
    /// the previous page (0 to start).
    Search {
        text: String,
        cursor: u64,
        limit: u32,
    },
    /// One page of a file's live owners in peer-id order: those after
    /// `cursor` (None to start), at most `limit` (the tracker caps it).
    /// Follow `next` of [`Reply::Owners`] until it is None.
    GetOwners {
        file_id: FileId,
        cursor: Option<PeerId>,
        limit: u32,
    },
    Heartbeat {
        peer_id: PeerId,
    },
    ClusterStatus,
    /// Long poll: answers with this member's status as soon as its view of
    /// (leader, term) differs from the one given, or after `wait_ms`.
    WatchLeader {
        leader: Option<u64>,
        term: u64,
        wait_ms: u32,
    },
    /// Registers up to [`MAX_OWN_MANY`] files owned by `peer_id` as one
    /// write (one write id, applied once). All or nothing: every file is
    /// checked first (metadata, conflicts, the owner's quota for the whole
    /// request), and then all are owned, or none is and the answer is the
    /// first error, naming the file. Answered with [`Reply::Owned`].
    OwnMany {
        peer_id: PeerId,
        files: Vec<FileMeta>,
    },
    /// "I am downloading this file and hold these chunks" (`have`: the
    /// wire bit set of [`PartialOwner::have`]). Answered by the leader
    /// from its memory, never a Raft entry; it lapses unless repeated
    /// within a few seconds, and ends with Own or Disown.
    AnnouncePartial {
        peer_id: PeerId,
        file_id: FileId,
        have: Vec<u8>,
    },
    /// The answering member's own figures ([`MemberReport`]); any member
    /// answers, and the proxy sends it to a member of its choice.
    MemberStatus,
    /// "`file_id`, which `peer_id` owns, holds these contents" (1 to
    /// [`MAX_POOL_CONTENTS`], see `content::Manifest::contents`): a write
    /// an owner sends after Own, so that downloaders of other items holding
    /// the same content find it. Idempotent; answered with `Done`.
    Pool {
        peer_id: PeerId,
        file_id: FileId,
        contents: Vec<ContentId>,
    },
    /// The other items holding any of these contents (1 to
    /// [`MAX_POOL_CONTENTS`]), each with its live complete owners (at most
    /// `limit`, capped at [`MAX_POOLED_OWNERS`]); at most
    /// [`MAX_POOLED_FILES`] items. Answered with [`Reply::Pooled`].
    GetPooled {
        contents: Vec<ContentId>,
        limit: u32,
    },
}

impl Request {
    /// Whether the request changes replicated state (and so needs a
    /// [`WriteId`]).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Request::Register { .. }
                | Request::Login { .. }
                | Request::Logout
                | Request::AnnouncePeer { .. }
                | Request::Own { .. }
                | Request::Disown { .. }
                | Request::OwnMany { .. }
                | Request::Pool { .. }
        )
    }

    /// Every [`Request::kind`], for metrics that keep a handle per kind.
    pub const KINDS: [&'static str; 16] = [
        "register",
        "login",
        "logout",
        "announce",
        "own",
        "disown",
        "search",
        "get-owners",
        "heartbeat",
        "cluster-status",
        "watch-leader",
        "own-many",
        "announce-partial",
        "member-status",
        "pool",
        "get-pooled",
    ];

    /// A short name for logs (never the fields: they may hold a password).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Register { .. } => "register",
            Request::Login { .. } => "login",
            Request::Logout => "logout",
            Request::AnnouncePeer { .. } => "announce",
            Request::Own { .. } => "own",
            Request::Disown { .. } => "disown",
            Request::Search { .. } => "search",
            Request::GetOwners { .. } => "get-owners",
            Request::Heartbeat { .. } => "heartbeat",
            Request::ClusterStatus => "cluster-status",
            Request::WatchLeader { .. } => "watch-leader",
            Request::OwnMany { .. } => "own-many",
            Request::AnnouncePartial { .. } => "announce-partial",
            Request::MemberStatus => "member-status",
            Request::Pool { .. } => "pool",
            Request::GetPooled { .. } => "get-pooled",
        }
    }
}

/// Successful answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Registered {
        user: String,
    },
    LoggedIn {
        user: String,
        token: String,
        expires_ms: u64,
    },
    Done,
    Files {
        hits: Vec<SearchHit>,
        next: Option<u64>,
    },
    Owners {
        file: FileMeta,
        /// Complete owners.
        owners: Vec<PeerInfo>,
        /// The `cursor` of the next page; None when this was the last.
        next: Option<PeerId>,
        /// Peers still downloading the file, most recently announced
        /// first, with the chunks they hold; only on the first page
        /// (`cursor` None) and only from the leader.
        partial: Vec<PartialOwner>,
    },
    Status(ClusterStatus),
    /// The answer to [`Request::OwnMany`]: how many of its files the peer
    /// did not own before (files it owned already count as done).
    Owned {
        newly_owned: u32,
    },
    Member(Box<MemberReport>),
    /// The answer to [`Request::GetPooled`].
    Pooled {
        items: Vec<PooledItem>,
    },
}

/// An item holding a content asked about, with its live owners. Its
/// manifest (fetched from an owner, checked against `file.id`) says which
/// of its chunks hold the content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PooledItem {
    pub file: FileMeta,
    pub owners: Vec<PeerInfo>,
}

/// Errors that cross the wire. Bad input is answered precisely; internal
/// details stay in the server's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ApiError {
    #[error("not the leader; the leader is {leader:?} at {addr:?}")]
    NotLeader { leader: Option<u64>, addr: Option<String> },
    #[error("not logged in (unknown or expired session)")]
    NotLoggedIn,
    #[error("wrong user name or password")]
    BadCredentials,
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("too many failed logins; try again in {retry_after_ms} ms")]
    TooManyAttempts { retry_after_ms: u64 },
    #[error("invalid input: {0}")]
    InvalidName(#[from] NameError),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("unknown file {0}")]
    UnknownFile(FileId),
    #[error("unknown peer {0}; announce it first")]
    UnknownPeer(PeerId),
    #[error("peer {0} belongs to another user")]
    PeerOfOtherUser(PeerId),
    #[error("file id {0} is already registered with different metadata")]
    FileConflict(FileId),
    #[error("write {seq} of this client is older than its last ({last}); not applied")]
    StaleWrite { seq: u64, last: u64 },
    #[error("malformed request: {0}")]
    BadFrame(String),
    #[error("tracker cluster unavailable: {0}")]
    Unavailable(String),
    #[error("overloaded, try again later")]
    Overloaded,
    #[error("internal error (see the tracker log)")]
    Internal,
    /// A per-user quota (files owned, peers announced) would be exceeded.
    #[error("quota exceeded: {what} (limit {limit})")]
    Quota { what: String, limit: u64 },
    /// Too many requests of this kind from this source; not applied.
    #[error("too many {what} requests; try again in {retry_after_ms} ms")]
    Throttled { what: String, retry_after_ms: u64 },
}

impl ApiError {
    /// A stable, machine-readable code for this error (`--json` output,
    /// scripts). Codes never change once published; new errors get new
    /// codes.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotLeader { .. } | ApiError::Unavailable(_) => "unavailable",
            ApiError::NotLoggedIn => "not_logged_in",
            ApiError::BadCredentials => "bad_credentials",
            ApiError::UserExists(_) => "user_exists",
            ApiError::TooManyAttempts { .. } | ApiError::Throttled { .. } => "throttled",
            ApiError::InvalidName(_) | ApiError::Invalid(_) => "invalid",
            ApiError::UnknownFile(_) => "not_found",
            ApiError::UnknownPeer(_) => "unknown_peer",
            ApiError::PeerOfOtherUser(_) => "peer_of_other_user",
            ApiError::FileConflict(_) => "file_conflict",
            ApiError::StaleWrite { .. } => "stale_write",
            ApiError::BadFrame(_) => "bad_frame",
            ApiError::Overloaded => "overloaded",
            ApiError::Internal => "internal",
            ApiError::Quota { .. } => "quota",
        }
    }
}

/// What the server sends back on the stream.
pub type Answer = Result<Reply, ApiError>;
