//! The quorrent proxy: the one front door for nodes. It speaks the tracker
//! API (`quorrent-tracker/1`) to nodes and forwards each request stream to
//! the current Raft leader, retrying on the new leader when the old one
//! fails, so a node sees a pause rather than an error.
//!
//! Pieces: [`leader`] follows the leader by long-polling every member
//! (WatchLeader), so a new leader is known as soon as any member knows it;
//! [`upstream`] keeps one QUIC connection per member and multiplexes
//! requests on it; [`forward`] serves node connections. The proxy holds no
//! state that must agree with another proxy's, so several can run side by
//! side.

pub mod dashboard;
pub mod forward;
pub mod leader;
pub mod telemetry;
pub mod upstream;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use protocol::{
    config::ProxyConfig,
    quic,
    tls::{self, ClientAuth},
    tracker_api,
};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("certificates: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("address {0:?} is not IP:port")]
    Addr(String),
    #[error("binding {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("configuration: {0}")]
    Config(String),
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
}

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    endpoint: quinn::Endpoint,
    upstream: Arc<upstream::Upstreams>,
    fwd: Arc<forward::Forwarder>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Where the dashboard, `/metrics` and health are served (None when
    /// `http_addr` is "off").
    pub http_addr: Option<SocketAddr>,
    http: Option<protocol::http::Server>,
    /// Kept alive for the HTTP handler.
    _dashboard: Arc<dashboard::Dashboard>,
}

impl Proxy {
    pub async fn start(config: ProxyConfig) -> Result<Proxy, StartError> {
        // Bound first: a bad address stops the proxy before it serves.
        let http_bind = config.http_bind().map_err(StartError::Config)?;
        let http_listener = protocol::http::listen(http_bind).await.map_err(StartError::Http)?;
        let roots = tls::load_ca(&config.certs_dir)?;
        let identity = tls::load_identity(&config.certs_dir, &config.name)?;
        // Per node connection: `max_streams_per_connection` requests at
        // once, and windows sized for frames of at most `max_frame_bytes`
        // rather than bulk data, so what one connection may make us buffer
        // stays small.
        let mut node_transport = quic::control_transport(Duration::from_secs(30));
        let frame = u32::try_from(config.limits.max_frame_bytes + protocol::codec::PREFIX).unwrap_or(u32::MAX);
        node_transport
            .max_concurrent_bidi_streams(config.limits.max_streams_per_connection.into())
            .stream_receive_window(frame.into())
            .receive_window((frame.saturating_mul(4)).into());
        let server = tls::quic_server(
            tls::server_crypto(&identity, &[tracker_api::ALPN], ClientAuth::None)?,
            node_transport,
        )?;
        let listen: SocketAddr = config
            .listen
            .parse()
            .map_err(|_| StartError::Addr(config.listen.clone()))?;
        // The same endpoint dials the trackers: a proxy that listens on
        // loopback reaches only trackers on this machine, so a proxy in
        // front of members elsewhere listens on its own IP or a wildcard.
        let endpoint = quic::endpoint(listen, Some(server)).map_err(|source| StartError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
        let addr = endpoint.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
        // Upstream connections present the proxy's certificate, so the
        // trackers trust the node address it reports for throttling.
        let client = tls::quic_client(
            tls::client_crypto(roots, Some(&identity), tracker_api::ALPN)?,
            quic::control_transport(Duration::from_millis(1500)),
        )?;
        let upstream = Arc::new(upstream::Upstreams::new(
            endpoint.clone(),
            client,
            &config.trackers,
            config.limits.max_frame_bytes,
        ));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        leader::spawn_watchers(upstream.clone(), stop_rx.clone());
        let metrics = Arc::new(telemetry::ProxyMetrics::new(http_bind != protocol::http::Bind::Off));
        let fwd = Arc::new(forward::Forwarder::new(upstream.clone(), &config, metrics));
        tokio::spawn(forward::serve(fwd.clone(), endpoint.clone()));
        let dash = dashboard::Dashboard::start(upstream.clone(), fwd.clone(), config.name.clone(), stop_rx.clone());
        let http = http_listener.map(|l| {
            protocol::http::serve_on(
                l,
                protocol::http::Options::default(),
                dashboard::handler(Arc::downgrade(&dash)),
                &protocol::stop::Stop::new(),
            )
        });
        let http_addr = http.as_ref().map(|h| h.addr);
        tracing::info!(%addr, ?http_addr, name = %config.name, "proxy started");
        Ok(Proxy {
            addr,
            endpoint,
            upstream,
            fwd,
            stop,
            http_addr,
            http,
            _dashboard: dash,
        })
    }

    /// The leader as this proxy knows it now.
    pub fn leader(&self) -> Option<u64> {
        self.upstream.leader()
    }

    /// Connections held and refused by the node-facing endpoint.
    pub fn listener_stats(&self) -> protocol::listen::Stats {
        self.fwd.guard.stats()
    }

    /// Pending-request permits free now.
    pub fn pending_available(&self) -> usize {
        self.fwd.pending_available()
    }

    /// Stops the leader watchers and closes every connection, waiting up to
    /// 2 s for them to drain, so that in-process users (tests) can bind
    /// the port again at once.
    pub async fn shutdown(self) {
        self.shutdown_within(Duration::from_secs(2)).await
    }

    /// [`Proxy::shutdown`] with the drain bounded by `drain` (a frozen node
    /// or tracker never acknowledges the close); the binary uses a short
    /// one to exit within a second of a signal.
    pub async fn shutdown_within(self, drain: Duration) {
        let _ = self.stop.send(true);
        if let Some(h) = self.http {
            h.shutdown().await;
        }
        self.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(drain, self.endpoint.wait_idle()).await;
        tracing::info!("proxy stopped");
    }
}
