//! One member of the quorrent tracker cluster: a Raft group (openraft 0.9)
//! that replicates user accounts, sessions, peers and the file registry,
//! and serves the tracker API from its leader.
//!
//! Entry point: [`Tracker::start`] binds the endpoints, opens the store,
//! starts Raft and bootstraps the initial membership; [`Tracker::shutdown`]
//! stops it. `main.rs` only parses the command line, sets up logging and
//! waits for a signal.

pub mod app;
pub mod argon_pool;
pub mod clock;
pub mod cow;
pub mod liveness;
pub mod network;
pub mod partial;
pub mod proposer;
pub mod registry;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod throttle;
pub mod typ;

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use openraft::SnapshotPolicy;
use protocol::{
    config::TrackerConfig,
    quic,
    tls::{self, ClientAuth},
    tracker_api,
};

use crate::{
    app::App,
    network::{raft_network_impl::Network, RAFT_ALPN},
    typ::{Member, Raft},
};

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("certificates: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("address {addr:?}: {message} (set `listen_api`/`listen_raft` to an IP:port to bind)")]
    Addr { addr: String, message: String },
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("storage in {dir}: {source}")]
    Store { dir: String, source: typ::StorageError },
    #[error("raft configuration: {0}")]
    RaftConfig(#[from] openraft::ConfigError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("this member's addresses are not in the configuration")]
    NoAddress,
    #[error("starting the argon2 threads: {0}")]
    Threads(std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
}

/// A running member.
pub struct Tracker {
    pub app: Arc<App>,
    pub api_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    /// Where `/metrics`, `/livez`, `/readyz` and `/status` are served
    /// (None when `http_addr` is "off").
    pub http_addr: Option<SocketAddr>,
    api_ep: quinn::Endpoint,
    raft_ep: quinn::Endpoint,
    http: Option<protocol::http::Server>,
}

/// The socket address to bind for `a`: an IP:port as it is, a DNS name
/// (an advertised address used as the bind address) resolved now.
async fn bind_addr(a: &str) -> Result<SocketAddr, StartError> {
    protocol::net::resolve(a).await.map_err(|e| StartError::Addr {
        addr: a.to_owned(),
        message: e.to_string(),
    })
}

fn bind(addr: SocketAddr, server: quinn::ServerConfig) -> Result<quinn::Endpoint, StartError> {
    quic::endpoint(addr, Some(server)).map_err(|source| StartError::Bind { addr, source })
}

/// openraft's configuration from ours.
pub fn raft_config(c: &TrackerConfig) -> Result<openraft::Config, StartError> {
    let r = &c.raft;
    let cfg = openraft::Config {
        cluster_name: "quorrent".into(),
        heartbeat_interval: r.heartbeat_ms,
        election_timeout_min: r.election_min_ms,
        election_timeout_max: r.election_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_every),
        max_in_snapshot_log_to_keep: r.keep_after_snapshot,
        snapshot_max_chunk_size: r.snapshot_chunk_bytes,
        // Entries are batches of up to `max_batch` writes. openraft times
        // an AppendEntries out after one heartbeat interval, so a payload
        // must be small enough to send and fsync within it.
        max_payload_entries: 16,
        install_snapshot_timeout: r.install_snapshot_timeout_ms,
        ..Default::default()
    };
    Ok(cfg.validate()?)
}

/// The QUIC client configuration for Raft and admin traffic: trusts the
/// cluster CA and presents `identity` (mutual TLS).
pub fn raft_client(
    roots: Arc<rustls::RootCertStore>,
    identity: &tls::Identity,
    idle: Duration,
) -> Result<quinn::ClientConfig, tls::TlsError> {
    tls::quic_client(
        tls::client_crypto(roots, Some(identity), RAFT_ALPN)?,
        quic::control_transport(idle),
    )
}

impl Tracker {
    /// Starts a member from its configuration.
    pub async fn start(config: TrackerConfig) -> Result<Tracker, StartError> {
        let certs = &config.certs_dir;
        let roots = tls::load_ca(certs)?;
        let identity = tls::load_identity(certs, &format!("tracker-{}", config.id))?;
        // Bound here; advertised (in the membership) as `own_addrs`.
        let (api, raft) = config.bind_addrs().ok_or(StartError::NoAddress)?;
        let (api_bind, raft_bind) = (bind_addr(&api).await?, bind_addr(&raft).await?);
        let idle = Duration::from_millis(config.raft.idle_timeout_ms);

        let raft_server = tls::quic_server(
            tls::server_crypto(&identity, &[RAFT_ALPN], ClientAuth::Required(roots.clone()))?,
            quic::control_transport(idle),
        )?;
        let raft_ep = bind(raft_bind, raft_server)?;
        // Anyone may open `max_streams_per_connection` streams; a client
        // with a certificate of the CA (a proxy) is raised to `max_pending`
        // after the handshake (network/api.rs).
        let mut api_transport = quic::control_transport(Duration::from_secs(10));
        api_transport.max_concurrent_bidi_streams(config.limits.max_streams_per_connection.into());
        let api_server = tls::quic_server(
            tls::server_crypto(&identity, &[tracker_api::ALPN], ClientAuth::Optional(roots.clone()))?,
            api_transport,
        )?;
        // Bound first: a bad address stops the member before Raft starts.
        let http_listener = protocol::http::listen(config.http_bind().map_err(StartError::Config)?)
            .await
            .map_err(StartError::Http)?;
        let api_ep = bind(api_bind, api_server)?;
        let api_addr = api_ep
            .local_addr()
            .map_err(|source| StartError::Bind { addr: api_bind, source })?;
        let raft_addr = raft_ep.local_addr().map_err(|source| StartError::Bind {
            addr: raft_bind,
            source,
        })?;

        let dir = config.data_dir();
        let (log, sm) = store::open(&dir).map_err(|source| StartError::Store {
            dir: dir.display().to_string(),
            source,
        })?;
        let shared = sm.shared.clone();
        let removal = Arc::new(app::Removal::default());
        let net = Network::new(
            raft_ep.clone(),
            raft_client(roots, &identity, idle)?,
            config.limits.max_raft_frame_bytes,
        )
        .with_removal(removal.clone());
        let raft = Raft::new(config.id, Arc::new(raft_config(&config)?), net, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;

        if !config.join
            && !raft
                .is_initialized()
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?
        {
            // Every member proposes the same initial membership; openraft
            // makes that safe (the same log entry at index 0 everywhere).
            let members: BTreeMap<u64, Member> = config
                .members
                .iter()
                .map(|m| {
                    (
                        m.id,
                        Member {
                            api: m.api.clone(),
                            raft: m.raft.clone(),
                        },
                    )
                })
                .collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!("bootstrapped the initial membership"),
                Err(e) => tracing::info!(error = %e, "initial membership already in place"),
            }
        }

        let app = App::new(config.id, raft, shared, config, removal).map_err(StartError::Threads)?;
        tokio::spawn(network::api::serve(app.clone(), api_ep.clone()));
        tokio::spawn(network::raft::serve(app.clone(), raft_ep.clone()));
        let http = http_listener.map(|l| {
            protocol::http::serve_on(
                l,
                protocol::http::Options::default(),
                telemetry::handler(Arc::downgrade(&app)),
                &protocol::stop::Stop::new(),
            )
        });
        let http_addr = http.as_ref().map(|h| h.addr);
        tracing::info!(id = app.id, %api_addr, %raft_addr, ?http_addr, "tracker member started");
        Ok(Tracker {
            app,
            api_addr,
            raft_addr,
            http_addr,
            api_ep,
            raft_ep,
            http,
        })
    }

    /// Stops Raft and closes both endpoints, in well under a second
    /// whatever the network does: each step that may wait on peers has its
    /// own bound. Nothing durable depends on these waits (every log write
    /// is committed before openraft hears of it).
    pub async fn shutdown(self) {
        if let Some(h) = self.http {
            h.shutdown().await;
        }
        // openraft's shutdown waits for its core, which may be in the
        // middle of RPCs to unreachable members.
        match tokio::time::timeout(Duration::from_millis(400), self.app.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "raft shutdown"),
            Err(_) => tracing::warn!("raft did not stop within 400 ms; leaving it"),
        }
        self.api_ep.close(0u32.into(), b"shutdown");
        self.raft_ep.close(0u32.into(), b"shutdown");
        // Lets the close frames go out; a peer that is gone or frozen
        // never acknowledges them, so this is bounded too.
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            tokio::join!(self.api_ep.wait_idle(), self.raft_ep.wait_idle());
        })
        .await;
        tracing::info!(id = self.app.id, "tracker member stopped");
    }
}
