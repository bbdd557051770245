//! Configuration files (JSON) of the tracker, the proxy and the node.
//!
//! Every field has a default, so `{}` is a valid file; unknown fields are
//! refused; an error names the file, the field path and the position.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Reads and parses a JSON configuration file.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    parse(path, &text)
}

/// Parses JSON text as the configuration of `path` (used by tests too).
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::Field {
            path: path.into(),
            field: if field == "." { "(top level)".into() } else { field },
            message: inner.to_string(),
        }
    })
}

/// One tracker member as listed in every member's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberAddr {
    pub id: u64,
    /// UDP address of the tracker API (`quorrent-tracker/1`).
    pub api: String,
    /// UDP address of Raft (`quorrent-raft/1`, mutual TLS).
    pub raft: String,
}

/// The default three local members (API 7401-7403, Raft 7411-7413).
pub fn default_members() -> Vec<MemberAddr> {
    (1..=3)
        .map(|i| MemberAddr {
            id: i,
            api: format!("127.0.0.1:{}", 7400 + i),
            raft: format!("127.0.0.1:{}", 7410 + i),
        })
        .collect()
}

/// Raft timing and snapshot policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTiming {
    /// Leader heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Election timeout range, ms.
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Take a snapshot (and compact the log) after this many entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot for slow followers.
    pub keep_after_snapshot: u64,
    /// Snapshot pieces are at most this many bytes on the wire.
    pub snapshot_chunk_bytes: u64,
    /// How long the leader waits for a member to take one snapshot piece,
    /// ms. The last piece is answered only once the member has read,
    /// checked and installed the whole snapshot (tens of seconds for ten
    /// million files), so this bounds that too.
    pub install_snapshot_timeout_ms: u64,
    /// Raft RPC connections are declared dead after this many ms of silence.
    pub idle_timeout_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            // A follower elects after lease (= election_max_ms) plus its
            // own timeout, so failover takes about 350-500 ms with these.
            // openraft also uses the heartbeat interval as the timeout of
            // every AppendEntries, so it must leave room for a follower's
            // fsync of a full payload on a busy machine.
            heartbeat_ms: 50,
            election_min_ms: 120,
            election_max_ms: 240,
            snapshot_every: 20_000,
            keep_after_snapshot: 1_000,
            snapshot_chunk_bytes: 4 << 20,
            install_snapshot_timeout_ms: 120_000,
            idle_timeout_ms: 2_000,
        }
    }
}

/// Bounds on untrusted input and on queues.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest tracker-API frame accepted, bytes.
    pub max_frame_bytes: usize,
    /// Largest Raft frame accepted, bytes (must exceed snapshot pieces).
    pub max_raft_frame_bytes: usize,
    /// Most search hits in one page.
    pub max_search_page: u32,
    /// Most addresses one peer may announce.
    pub max_peer_addrs: usize,
    /// Most requests in progress at once, counted from before a request
    /// body is read (past it: "overloaded", the body is not read).
    pub max_pending: usize,
    /// Connections a listener holds at once, handshakes included; past it
    /// new connections are refused.
    pub max_connections: usize,
    /// Connections a listener holds at once from one source IP address.
    pub max_connections_per_ip: usize,
    /// Concurrent request streams one connection may open (a tracker also
    /// lets a client with a proxy certificate of the cluster CA
    /// open `max_pending`). Keep `max_connections_per_ip` x this below
    /// `max_pending`, so one address cannot take every permit.
    pub max_streams_per_connection: u32,
    /// A QUIC handshake not done within this is abandoned, ms.
    pub handshake_timeout_ms: u64,
    /// A whole request frame must arrive within this after its stream is
    /// opened, ms; a slower one loses its stream and permit.
    pub read_timeout_ms: u64,
    /// Resident memory, MiB, that a proxy or tracker with these limits is
    /// sized to stay under while its listeners are flooded up to their
    /// caps. Not enforced at run time: the abuse test
    /// (proxy/tests/abuse.rs) fails if the proxy goes past it, and the
    /// flood benchmark reports the peaks beside it.
    pub max_rss_mb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1 << 20,
            max_raft_frame_bytes: 64 << 20,
            max_search_page: 1000,
            max_peer_addrs: 8,
            max_pending: 8192,
            max_connections: 4096,
            max_connections_per_ip: 64,
            max_streams_per_connection: 64,
            handshake_timeout_ms: 5_000,
            read_timeout_ms: 5_000,
            max_rss_mb: 512,
        }
    }
}

/// `quorrent-tracker --config FILE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// This member's id; must appear in `members` unless `join` is set.
    pub id: u64,
    /// The initial cluster, identical in every member's file.
    pub members: Vec<MemberAddr>,
    /// Addresses of this member when it joins later (not in `members`).
    pub api_addr: Option<String>,
    pub raft_addr: Option<String>,
    /// Where the tracker API and Raft endpoints bind (`IP:port`, e.g.
    /// `0.0.0.0:7401`) when the advertised address of this member (in
    /// `members`, or `api_addr`/`raft_addr`) is not on a local interface,
    /// as behind NAT or a relay. Default: the advertised address.
    pub listen_api: Option<String>,
    pub listen_raft: Option<String>,
    /// Start without bootstrapping: wait to be added by `admin add`.
    pub join: bool,
    /// Where the Raft log, vote and snapshots live (default data/tracker-ID).
    pub data_dir: Option<PathBuf>,
    pub log_dir: PathBuf,
    /// Log level when RUST_LOG is not set.
    pub log_level: String,
    pub certs_dir: PathBuf,
    pub raft: RaftTiming,
    pub limits: Limits,
    /// How long a login session lasts, seconds.
    pub session_ttl_secs: u64,
    /// Owners silent for longer drop out of answers, seconds.
    pub owner_ttl_secs: u64,
    /// Writes per Raft entry at most (group commit); an OwnMany counts
    /// one per file.
    pub max_batch: usize,
    /// Raft entries being replicated at once from the write batcher.
    pub max_batches_in_flight: usize,
    /// Register throttling and the argon2 pool.
    pub register: RegisterLimits,
    /// Per-user quotas, enforced in the replicated state machine.
    pub quotas: Quotas,
    /// GetOwners pages and skipping long-dead files in search.
    pub owners: OwnerLimits,
    /// The HTTP server (metrics, health, status): `IP:port`, or
    /// `"off"`. Default: 127.0.0.1:(7480 + id), or an ephemeral port
    /// on 127.0.0.1 when that is taken.
    pub http_addr: Option<String>,
}

/// How much Register may cost the leader. Everything here is leader-only
/// soft state: a new leader starts with full buckets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegisterLimits {
    /// Registrations per minute from one source address (the node's
    /// address as the proxy reports it), sustained.
    pub per_source_per_minute: u32,
    /// Registrations one source address may make at once before the
    /// per-minute rate applies.
    pub per_source_burst: u32,
    /// argon2 hashes per second for Register across all sources.
    pub hashes_per_sec: u32,
    /// Hashes that may run back to back before the per-second rate applies.
    pub hash_burst: u32,
    /// OS threads hashing and verifying passwords; each owns one argon2
    /// memory block set (~19 MiB with the default parameters) for its
    /// whole life, so this sets the memory argon2 can take.
    pub argon_threads: usize,
    /// Jobs waiting for an argon2 thread at most; past it, callers wait.
    pub argon_queue: usize,
}

impl Default for RegisterLimits {
    fn default() -> Self {
        RegisterLimits {
            per_source_per_minute: 30,
            per_source_burst: 60,
            hashes_per_sec: 20,
            hash_burst: 40,
            argon_threads: 2,
            argon_queue: 64,
        }
    }
}

/// Per-user quotas. They are checked when a write is applied, with the
/// values the leader stamps into each batch, so every member decides the
/// same way whatever its own file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// Ownership records (file, peer) over all of a user's peers.
    pub max_files_per_user: u64,
    /// Peers one user may announce.
    pub max_peers_per_user: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_files_per_user: 100_000,
            max_peers_per_user: 64,
        }
    }
}

/// GetOwners paging and dead-file skipping.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OwnerLimits {
    /// Most owners in one GetOwners page (an owner with 8 IPv6 addresses
    /// encodes to about 300 bytes, so 2,000 stay well inside 1 MiB).
    pub max_owners_page: u32,
    /// A file none of whose owners was heard from for this long is left
    /// out of the leader's search index, seconds.
    pub dead_file_secs: u64,
    /// How often the leader rebuilds its index of files with a recently
    /// live owner, seconds.
    pub live_index_every_secs: u64,
    /// A partial owner (AnnouncePartial) not heard from again within this
    /// drops out, ms. Nodes refresh about every second while downloading.
    pub partial_ttl_ms: u64,
    /// Files one peer may be a partial owner of at once; past it its
    /// announcements of further files are refused (`quota`).
    pub max_partial_files_per_peer: usize,
    /// Partial owners kept per file: past it the one announced least
    /// recently is forgotten.
    pub max_partial_owners_per_file: usize,
    /// Memory the leader gives partial owners over all files, bytes
    /// (bit sets plus bookkeeping); past it new ones are refused
    /// (`overloaded`) until old ones lapse.
    pub max_partial_bytes: usize,
}

impl Default for OwnerLimits {
    fn default() -> Self {
        OwnerLimits {
            max_owners_page: 2000,
            dead_file_secs: 3600,
            live_index_every_secs: 30,
            partial_ttl_ms: 5_000,
            max_partial_files_per_peer: 16,
            max_partial_owners_per_file: 32,
            max_partial_bytes: 64 << 20,
        }
    }
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            id: 1,
            members: default_members(),
            api_addr: None,
            raft_addr: None,
            listen_api: None,
            listen_raft: None,
            join: false,
            data_dir: None,
            log_dir: "logs".into(),
            log_level: "info".into(),
            certs_dir: "certs".into(),
            raft: RaftTiming::default(),
            limits: Limits::default(),
            session_ttl_secs: 24 * 3600,
            owner_ttl_secs: 30,
            max_batch: 1024,
            max_batches_in_flight: 4,
            register: RegisterLimits::default(),
            quotas: Quotas::default(),
            owners: OwnerLimits::default(),
            http_addr: None,
        }
    }
}

impl TrackerConfig {
    /// Checks cross-field rules; `path` names the file in the error.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |message: String| {
            Err(ConfigError::Invalid {
                path: path.into(),
                message,
            })
        };
        if !self.join && !self.members.iter().any(|m| m.id == self.id) {
            return bad(format!(
                "field `id`: member {} is not listed in `members` (set `join` to add it later)",
                self.id
            ));
        }
        if self.join && (self.api_addr.is_none() || self.raft_addr.is_none()) {
            return bad("a joining member needs `api_addr` and `raft_addr`".into());
        }
        for m in &self.members {
            for (f, a) in [("api", &m.api), ("raft", &m.raft)] {
                crate::net::check_host_port(&format!("members[id={}].{f}", m.id), a).or_else(bad)?;
            }
        }
        for (f, a) in [("api_addr", &self.api_addr), ("raft_addr", &self.raft_addr)] {
            if let Some(a) = a {
                crate::net::check_host_port(f, a).or_else(bad)?;
            }
        }
        for (f, a) in [("listen_api", &self.listen_api), ("listen_raft", &self.listen_raft)] {
            if let Some(a) = a {
                crate::net::check_bind(f, a).map(|_| ()).or_else(bad)?;
            }
        }
        if self.raft.election_min_ms <= self.raft.heartbeat_ms || self.raft.election_max_ms <= self.raft.election_min_ms
        {
            return bad("field `raft`: need heartbeat_ms < election_min_ms < election_max_ms".into());
        }
        if (self.limits.max_raft_frame_bytes as u64) < self.raft.snapshot_chunk_bytes.saturating_mul(2) {
            return bad(
                "field `limits.max_raft_frame_bytes` must be at least twice `raft.snapshot_chunk_bytes`".into(),
            );
        }
        self.http_bind().map(|_| ()).or_else(bad)?;
        if self.register.argon_threads == 0 || self.register.argon_queue == 0 {
            return bad("fields `register.argon_threads` and `register.argon_queue` must be at least 1".into());
        }
        if self.register.per_source_burst == 0 || self.register.hash_burst == 0 {
            return bad("fields `register.per_source_burst` and `register.hash_burst` must be at least 1".into());
        }
        if self.owners.max_owners_page == 0 || self.owners.live_index_every_secs == 0 {
            return bad("fields `owners.max_owners_page` and `owners.live_index_every_secs` must be at least 1".into());
        }
        let o = &self.owners;
        if o.partial_ttl_ms == 0
            || o.max_partial_files_per_peer == 0
            || o.max_partial_owners_per_file == 0
            || o.max_partial_bytes == 0
        {
            return bad("fields `owners.partial_ttl_ms`, `owners.max_partial_files_per_peer`, `owners.max_partial_owners_per_file` and `owners.max_partial_bytes` must be at least 1".into());
        }
        Ok(())
    }

    /// This member's (api, raft) addresses.
    pub fn own_addrs(&self) -> Option<(String, String)> {
        if let (Some(a), Some(r)) = (&self.api_addr, &self.raft_addr) {
            return Some((a.clone(), r.clone()));
        }
        self.members
            .iter()
            .find(|m| m.id == self.id)
            .map(|m| (m.api.clone(), m.raft.clone()))
    }

    /// Where this member binds its (api, raft) endpoints: `listen_api` and
    /// `listen_raft` when set, else the advertised addresses.
    pub fn bind_addrs(&self) -> Option<(String, String)> {
        let (api, raft) = self.own_addrs()?;
        Some((
            self.listen_api.clone().unwrap_or(api),
            self.listen_raft.clone().unwrap_or(raft),
        ))
    }

    /// Where the HTTP server binds.
    pub fn http_bind(&self) -> Result<crate::http::Bind, String> {
        let port = 7480u16.saturating_add(self.id.min(u64::from(u16::MAX)) as u16);
        crate::http::Bind::from_config(&self.http_addr, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| format!("data/tracker-{}", self.id).into())
    }
}

/// `quorrent-proxy --config FILE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Name of this proxy; its certificate is `certs/NAME.pem`, its log
    /// `logs/NAME.log`.
    pub name: String,
    pub listen: String,
    /// The tracker members' API addresses (id -> address).
    pub trackers: Vec<MemberAddr>,
    pub log_dir: PathBuf,
    pub log_level: String,
    pub certs_dir: PathBuf,
    /// How long a request may wait for a leader, ms.
    pub deadline_ms: u64,
    pub limits: Limits,
    /// The HTTP server (metrics, health, status, the cluster dashboard): `IP:port`, or
    /// `"off"`. Default: 127.0.0.1:7480, or an ephemeral port
    /// on 127.0.0.1 when that is taken.
    pub http_addr: Option<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            name: "proxy-1".into(),
            listen: "127.0.0.1:7400".into(),
            trackers: default_members(),
            log_dir: "logs".into(),
            log_level: "info".into(),
            certs_dir: "certs".into(),
            deadline_ms: 5_000,
            limits: Limits::default(),
            http_addr: None,
        }
    }
}

impl ProxyConfig {
    /// Where the HTTP server (and dashboard) binds.
    pub fn http_bind(&self) -> Result<crate::http::Bind, String> {
        crate::http::Bind::from_config(&self.http_addr, SocketAddr::from(([127, 0, 0, 1], 7480)))
    }

    /// Checks the addresses; `path` names the file in the error.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            path: path.into(),
            message,
        };
        crate::net::check_bind("listen", &self.listen).map_err(bad)?;
        self.http_bind().map_err(bad)?;
        for m in &self.trackers {
            for (f, a) in [("api", &m.api), ("raft", &m.raft)] {
                crate::net::check_host_port(&format!("trackers[id={}].{f}", m.id), a).map_err(bad)?;
            }
        }
        Ok(())
    }
}

/// Sharing parameters of a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharingConfig {
    /// Chunk size for files this node shares, bytes.
    pub chunk_size: u32,
    /// Peers downloaded from at once.
    pub max_peers: usize,
    /// Chunk requests in flight per peer, at most.
    pub max_in_flight_per_peer: usize,
    /// Heartbeat interval to the tracker, seconds.
    pub heartbeat_secs: u64,
    /// Chunk data this node sends to other nodes, bytes per second over all
    /// its connections; `null` (the default) for no limit. A number, or a
    /// string such as `"40MB/s"`, `"512KiB/s"` (see [`parse_byte_rate`]).
    #[serde(deserialize_with = "de_byte_rate")]
    pub max_upload_rate: Option<u64>,
    /// Chunk data this node receives from other nodes, bytes per second
    /// over all its downloads; `null` (the default) for no limit. Written
    /// as `max_upload_rate` is.
    #[serde(deserialize_with = "de_byte_rate")]
    pub max_download_rate: Option<u64>,
}

/// Parses a rate in bytes per second: a whole number (`"40000000"`), or a
/// number with a unit `B`, `kB`/`KB`, `MB`, `GB` (powers of 1000) or
/// `KiB`, `MiB`, `GiB` (powers of 1024), optionally followed by `/s`:
/// `"40MB/s"`, `"1.5 MiB/s"`. Must be at least 1 byte per second.
pub fn parse_byte_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim_end();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let factor: f64 = match unit {
        "" | "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use B, kB, MB, GB, KiB, MiB or GiB, e.g. \"40MB/s\")"
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a rate (e.g. 40000000 or \"40MB/s\")"))?;
    let rate = n * factor;
    if !(1.0..=1e15).contains(&rate) {
        return Err(format!(
            "{text:?}: a rate must be from 1 B/s to 1 PB/s (leave it out for no limit)"
        ));
    }
    Ok(rate.round() as u64)
}

fn de_byte_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Rate {
        Number(u64),
        Text(String),
    }
    match Option::<Rate>::deserialize(d)? {
        None => Ok(None),
        Some(Rate::Number(0)) => Err(serde::de::Error::custom(
            "a rate must be at least 1 byte per second (leave it out or use null for no limit)",
        )),
        Some(Rate::Number(n)) => Ok(Some(n)),
        Some(Rate::Text(t)) => parse_byte_rate(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

impl Default for SharingConfig {
    fn default() -> Self {
        SharingConfig {
            // Measured with node/examples/bench_p2p (1 GiB, 4 seeders, one
            // 2-core machine, medians of 3): 256 KiB 365 MB/s, 512 KiB 354,
            // 1 MiB 322, and the least CPU per byte.
            chunk_size: 256 << 10,
            max_peers: 8,
            max_in_flight_per_peer: 8,
            heartbeat_secs: 10,
            max_upload_rate: None,
            max_download_rate: None,
        }
    }
}

/// `quorrent --config FILE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Proxies tried in order.
    pub proxies: Vec<String>,
    /// Storage folder (default HOME/files).
    pub storage_dir: Option<PathBuf>,
    pub log_dir: PathBuf,
    pub log_level: String,
    /// The CA certificate that signs the proxies' certificates.
    pub ca_cert: PathBuf,
    /// Address the peer server listens on (`IP:port`).
    pub listen: String,
    /// Addresses announced to the tracker for other nodes to dial
    /// (`IP:port`, e.g. a public address forwarded to `listen`). Empty: the
    /// listen address; when that is a wildcard (0.0.0.0, ::), the local IP
    /// this host uses to reach its first proxy, with the server's port.
    pub advertise: Vec<String>,
    pub sharing: SharingConfig,
    pub limits: Limits,
    /// The HTTP server (metrics, health, status, the daemon's API and web page; the API needs the home's token
    /// unless it is on loopback): `IP:port`, or
    /// `"off"`. Default: 127.0.0.1:7490, or an ephemeral port
    /// on 127.0.0.1 when that is taken.
    pub http_addr: Option<String>,
    /// Folders the daemon may share from when asked over HTTP (besides
    /// the storage folder). Default: none.
    pub share_roots: Vec<PathBuf>,
    /// The watch folder: the daemon shares every file or folder that
    /// appears in it once it stops changing. Default: none.
    pub watch_dir: Option<PathBuf>,
    /// How long an entry of the watch folder must stay unchanged before it
    /// is shared, milliseconds (at least 100).
    pub watch_settle_ms: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            proxies: vec!["127.0.0.1:7400".into()],
            storage_dir: None,
            log_dir: "logs".into(),
            log_level: "info".into(),
            ca_cert: "certs/ca.pem".into(),
            listen: "127.0.0.1:0".into(),
            advertise: Vec::new(),
            sharing: SharingConfig::default(),
            limits: Limits::default(),
            http_addr: None,
            share_roots: Vec::new(),
            watch_dir: None,
            watch_settle_ms: 2000,
        }
    }
}

impl NodeConfig {
    /// Where the daemon's HTTP API and page bind.
    pub fn http_bind(&self) -> Result<crate::http::Bind, String> {
        crate::http::Bind::from_config(&self.http_addr, SocketAddr::from(([127, 0, 0, 1], 7490)))
    }

    /// Checks the addresses; `path` names the file in the error.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            path: path.into(),
            message,
        };
        crate::net::check_bind("listen", &self.listen).map_err(bad)?;
        self.http_bind().map_err(bad)?;
        for (i, a) in self.advertise.iter().enumerate() {
            // Peers are announced as socket addresses: no DNS names here.
            a.parse::<SocketAddr>()
                .map_err(|_| bad(format!("field `advertise[{i}]`: {a:?} is not an IP:port address")))?;
        }
        for (i, a) in self.proxies.iter().enumerate() {
            crate::net::check_host_port(&format!("proxies[{i}]"), a).map_err(bad)?;
        }
        if self.watch_settle_ms < 100 {
            return Err(bad(format!(
                "field `watch_settle_ms`: {} is under 100 (an entry still being written would be shared)",
                self.watch_settle_ms
            )));
        }
        Ok(())
    }
}

/// The certificates a cluster's configuration files call for, each with
/// the hosts (IP addresses and DNS names) of the machine it is used on:
/// `tracker-ID` for every member named in a tracker file (`members`, and
/// the file's own `api_addr`, `raft_addr`, `listen_api`, `listen_raft`) or
/// a proxy file (`trackers`), and the proxy's `name` with the host of its
/// `listen`. Wildcard and loopback addresses add nothing (every
/// certificate is valid for loopback anyway). A file is read as a tracker
/// configuration, else as a proxy configuration.
pub fn cert_specs(paths: &[PathBuf]) -> Result<Vec<crate::tls::CertSpec>, ConfigError> {
    use std::collections::BTreeMap;
    let mut hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |name: String, addr: &str| {
        let entry = hosts.entry(name).or_default();
        if let Ok((host, _)) = crate::net::split_host_port(addr) {
            let skip = host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified() || ip.is_loopback())
                || host == "localhost";
            if !skip && !entry.iter().any(|h| h == host) {
                entry.push(host.to_owned());
            }
        }
    };
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        match parse::<TrackerConfig>(path, &text) {
            Ok(t) => {
                t.validate(path)?;
                for m in &t.members {
                    add(format!("tracker-{}", m.id), &m.api);
                    add(format!("tracker-{}", m.id), &m.raft);
                }
                for a in [&t.api_addr, &t.raft_addr, &t.listen_api, &t.listen_raft]
                    .into_iter()
                    .flatten()
                {
                    add(format!("tracker-{}", t.id), a);
                }
            }
            Err(tracker_err) => {
                let p: ProxyConfig = parse(path, &text).map_err(|proxy_err| ConfigError::Invalid {
                    path: path.clone(),
                    message: format!(
                        "neither a tracker configuration ({tracker_err}) nor a proxy configuration ({proxy_err})"
                    ),
                })?;
                p.validate(path)?;
                add(p.name.clone(), &p.listen);
                for m in &p.trackers {
                    add(format!("tracker-{}", m.id), &m.api);
                    add(format!("tracker-{}", m.id), &m.raft);
                }
            }
        }
    }
    Ok(hosts
        .into_iter()
        .map(|(name, hosts)| crate::tls::CertSpec { name, hosts })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c: TrackerConfig = parse(Path::new("t.json"), "{}").unwrap();
        c.validate(Path::new("t.json")).unwrap();
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = parse::<TrackerConfig>(Path::new("t.json"), r#"{"raft": {"heartbeat_ms": "x"}}"#).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("t.json") && s.contains("raft.heartbeat_ms"), "{s}");
        let e = parse::<TrackerConfig>(Path::new("t.json"), r#"{"bogus": 1}"#).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = parse::<TrackerConfig>(Path::new("t.json"), "{").unwrap_err();
        assert!(e.to_string().contains("t.json"), "{e}");
    }

    #[test]
    fn cert_specs_take_each_machines_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let members = r#"[{"id": 1, "api": "10.1.0.11:7401", "raft": "10.1.0.11:7411"},
                          {"id": 2, "api": "t2.example.org:7401", "raft": "t2.example.org:7411"}]"#;
        let t1 = dir.path().join("t1.json");
        std::fs::write(
            &t1,
            format!(
                r#"{{"id": 1, "members": {members}, "listen_api": "0.0.0.0:7401", "listen_raft": "192.168.5.5:7411"}}"#
            ),
        )
        .unwrap();
        let p1 = dir.path().join("p1.json");
        std::fs::write(
            &p1,
            format!(r#"{{"name": "proxy-1", "listen": "10.1.0.21:7400", "trackers": {members}}}"#),
        )
        .unwrap();
        let specs = cert_specs(&[t1, p1]).unwrap();
        let of = |n: &str| specs.iter().find(|s| s.name == n).unwrap().hosts.clone();
        assert_eq!(of("tracker-1"), ["10.1.0.11", "192.168.5.5"]);
        assert_eq!(of("tracker-2"), ["t2.example.org"]);
        assert_eq!(of("proxy-1"), ["10.1.0.21"]);
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"nonsense": 1}"#).unwrap();
        assert!(cert_specs(&[bad]).unwrap_err().to_string().contains("neither"));
    }

    /// Members may be DNS names; bind addresses must be IP:port, and each
    /// error names its field.
    #[test]
    fn addresses_are_checked_by_field() {
        let p = Path::new("t.json");
        let ok = r#"{"members": [{"id": 1, "api": "t1.example.org:7401", "raft": "[::1]:7411"}],
                     "listen_api": "0.0.0.0:7401", "listen_raft": "[::]:7411"}"#;
        let c: TrackerConfig = parse(p, ok).unwrap();
        c.validate(p).unwrap();
        assert_eq!(
            c.bind_addrs().unwrap(),
            ("0.0.0.0:7401".to_string(), "[::]:7411".to_string())
        );
        let cases = [
            (r#"{"listen_api": "t1:7401"}"#, "listen_api"),
            (r#"{"listen_raft": "1.2.3.4"}"#, "listen_raft"),
            (
                r#"{"members": [{"id": 1, "api": "bad host:1", "raft": "1.2.3.4:1"}]}"#,
                "members[id=1].api",
            ),
            (
                r#"{"join": true, "id": 4, "api_addr": "x:1", "raft_addr": "1.2.3.4"}"#,
                "raft_addr",
            ),
        ];
        for (text, field) in cases {
            let e = parse::<TrackerConfig>(p, text)
                .unwrap()
                .validate(p)
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        let n: NodeConfig = parse(p, r#"{"listen": "0.0.0.0:0", "advertise": ["tracker:1"]}"#).unwrap();
        assert!(n.validate(p).unwrap_err().to_string().contains("advertise[0]"));
        NodeConfig::default().validate(p).unwrap();
        let x: ProxyConfig = parse(p, r#"{"listen": "p1.example:7400"}"#).unwrap();
        assert!(x.validate(p).unwrap_err().to_string().contains("`listen`"));
        ProxyConfig::default().validate(p).unwrap();
    }

    #[test]
    fn rates_parse_numbers_and_units() {
        assert_eq!(parse_byte_rate("40MB/s"), Ok(40_000_000));
        assert_eq!(parse_byte_rate(" 1.5 MiB/s "), Ok(1_572_864));
        assert_eq!(parse_byte_rate("512KiB"), Ok(524_288));
        assert_eq!(parse_byte_rate("1000"), Ok(1000));
        assert_eq!(parse_byte_rate("2kB/s"), Ok(2000));
        for bad in ["", "0", "fast", "40Mb/s", "40 MBps", "-1MB", "1..2MB"] {
            assert!(parse_byte_rate(bad).is_err(), "{bad}");
        }
        let p = Path::new("n.json");
        let n: NodeConfig = parse(p, r#"{"sharing": {"max_upload_rate": "40MB/s"}}"#).unwrap();
        assert_eq!(n.sharing.max_upload_rate, Some(40_000_000));
        let n: NodeConfig = parse(p, r#"{"sharing": {"max_upload_rate": 1234}}"#).unwrap();
        assert_eq!(n.sharing.max_upload_rate, Some(1234));
        let n: NodeConfig = parse(p, r#"{"sharing": {"max_upload_rate": null}}"#).unwrap();
        assert_eq!(n.sharing.max_upload_rate, None);
        let n: NodeConfig = parse(p, r#"{"sharing": {"max_download_rate": "10MB/s"}}"#).unwrap();
        assert_eq!(
            (n.sharing.max_download_rate, n.sharing.max_upload_rate),
            (Some(10_000_000), None)
        );
        for bad in [r#"0"#, r#""lots""#, r#"-5"#] {
            let text = format!(r#"{{"sharing": {{"max_upload_rate": {bad}}}}}"#);
            let e = parse::<NodeConfig>(p, &text).unwrap_err().to_string();
            assert!(e.contains("sharing.max_upload_rate"), "{bad}: {e}");
            let text = format!(r#"{{"sharing": {{"max_download_rate": {bad}}}}}"#);
            let e = parse::<NodeConfig>(p, &text).unwrap_err().to_string();
            assert!(e.contains("sharing.max_download_rate"), "{bad}: {e}");
        }
    }
}
