//! The tracker client: the node's one QUIC connection to a proxy, speaking
//! the tracker API (`quorrent-tracker/1`). One bi-directional stream per
//! request: an [`Envelope`] frame out, an [`Answer`] frame back.
//!
//! Writes carry a [`WriteId`] (a random client id per client, sequence
//! numbers from 1) and go one at a time; a retry after a transport error
//! or an unavailable cluster reuses the same id, so the tracker applies the
//! write exactly once however often it is sent. Proxies are tried in the
//! configured order; when one fails the client moves to the next.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use protocol::{
    codec,
    config::NodeConfig,
    tracker_api::{Answer, ApiError, Consistency, Envelope, Reply, Request, WriteId, ALPN},
};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use tokio::{sync::Mutex, time::Instant};
use tracing::{debug, warn};

/// Largest answer accepted.
const LIMIT: usize = 1 << 20;
/// A QUIC handshake with a live proxy takes milliseconds; a dead one never
/// answers, so this is how long a down proxy delays the move to the next.
/// A slow handshake that misses it is retried by the request loop.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request is retried across failovers before giving up.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// Why a request to the tracker failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("no proxy configured")]
    NoProxy,
    #[error("CA certificate {path}: {message}")]
    Ca { path: String, message: String },
    #[error("cannot reach the tracker through any proxy ({0})")]
    Unreachable(String),
    #[error("{}", api_message(.0))]
    Api(ApiError),
    #[error("unexpected answer from the tracker to {0}")]
    Unexpected(&'static str),
}

impl TrackerError {
    pub fn is_not_logged_in(&self) -> bool {
        matches!(self, TrackerError::Api(ApiError::NotLoggedIn))
    }
}

/// The one-line message for an error of the tracker.
fn api_message(e: &ApiError) -> String {
    match e {
        ApiError::NotLoggedIn => "not logged in: run `quorrent login USER`".into(),
        ApiError::BadCredentials => "login refused: wrong user name or password".into(),
        ApiError::UserExists(u) => format!("user {u:?} already exists: pick another name or log in"),
        ApiError::UnknownFile(id) => format!("unknown file {id}"),
        ApiError::Unavailable(why) => format!("tracker cluster unavailable ({why}); try again shortly"),
        other => other.to_string(),
    }
}

struct Current {
    /// Index of the proxy in use (or to try first).
    index: usize,
    conn: Option<quinn::Connection>,
}

/// A client of the tracker API through the configured proxies.
pub struct TrackerClient {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    proxies: Vec<String>,
    current: Mutex<Current>,
    ever_connected: AtomicBool,
    client_id: u128,
    /// The last write sequence number; held for the whole of a write.
    writes: Mutex<u64>,
    token: std::sync::Mutex<Option<String>>,
}

impl TrackerClient {
    /// A client for the proxies of `config`, with no connection yet.
    pub fn new(config: &NodeConfig, token: Option<String>) -> Result<Arc<Self>, TrackerError> {
        if config.proxies.is_empty() {
            return Err(TrackerError::NoProxy);
        }
        let ca_err = |message: String| TrackerError::Ca {
            path: config.ca_cert.display().to_string(),
            message,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&config.ca_cert).map_err(|e| ca_err(e.to_string()))? {
            roots
                .add(cert.map_err(|e| ca_err(e.to_string()))?)
                .map_err(|e| ca_err(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ca_err("no certificate in the file".into()));
        }
        let crypto = protocol::tls::client_crypto(Arc::new(roots), None, ALPN).map_err(|e| ca_err(e.to_string()))?;
        let transport = protocol::quic::control_transport(Duration::from_secs(10));
        let config_q = protocol::tls::quic_client(crypto, transport).map_err(|e| ca_err(e.to_string()))?;
        let endpoint = protocol::quic::endpoint((std::net::Ipv4Addr::UNSPECIFIED, 0).into(), None)
            .map_err(|e| TrackerError::Unreachable(format!("cannot open a UDP socket: {e}")))?;
        Ok(Arc::new(TrackerClient {
            endpoint,
            config: config_q,
            proxies: config.proxies.clone(),
            current: Mutex::new(Current { index: 0, conn: None }),
            ever_connected: AtomicBool::new(false),
            client_id: rand::random(),
            writes: Mutex::new(0),
            token: std::sync::Mutex::new(token),
        }))
    }

    /// Sets the session token sent with every request.
    pub fn set_token(&self, token: Option<String>) {
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = token;
    }

    /// Sends one request and returns the tracker's reply, retrying across
    /// proxy and leader failures (writes keep their [`WriteId`]).
    pub async fn call(&self, request: Request) -> Result<Reply, TrackerError> {
        let kind = request.kind();
        let mut writes = if request.is_write() {
            Some(self.writes.lock().await)
        } else {
            None
        };
        let write_id = writes.as_mut().map(|seq| {
            **seq += 1;
            WriteId {
                client: self.client_id,
                seq: **seq,
            }
        });
        let envelope = Envelope {
            token: self.token.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            write_id,
            origin: None,
            consistency: Consistency::Linearizable,
            request,
        };
        let frame = codec::encode(&envelope).map_err(|e| TrackerError::Unreachable(e.to_string()))?;
        let deadline = Instant::now() + RETRY_FOR;
        let mut backoff = Duration::from_millis(50);
        loop {
            let conn = match self.connection().await {
                Ok(c) => c,
                // A proxy that was there a moment ago may be restarting:
                // keep trying until the deadline. One never reached is an
                // error at once.
                Err(e) if !self.ever_connected.load(Ordering::Relaxed) || Instant::now() + backoff > deadline => {
                    return Err(e)
                }
                Err(e) => {
                    warn!(request = kind, "{e}; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let answer = tokio::time::timeout(CALL_TIMEOUT, codec::call_raw::<Answer>(&conn, &frame, LIMIT)).await;
            let retry_reason = match answer {
                Ok(Ok(Ok(reply))) => return Ok(reply),
                Ok(Ok(Err(e @ (ApiError::Unavailable(_) | ApiError::Overloaded | ApiError::NotLeader { .. })))) => {
                    e.to_string()
                }
                Ok(Ok(Err(e))) => return Err(TrackerError::Api(e)),
                Ok(Err(e)) => {
                    self.drop_connection(&conn).await;
                    e.to_string()
                }
                Err(_) => {
                    self.drop_connection(&conn).await;
                    "timed out".into()
                }
            };
            if Instant::now() + backoff > deadline {
                return Err(TrackerError::Unreachable(format!("{kind}: {retry_reason}")));
            }
            warn!(request = kind, "tracker request failed, retrying: {retry_reason}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// The live connection, or a new one to the first proxy that answers,
    /// starting from the one in use.
    async fn connection(&self) -> Result<quinn::Connection, TrackerError> {
        let mut cur = self.current.lock().await;
        if let Some(c) = &cur.conn {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let mut errors = Vec::new();
        for k in 0..self.proxies.len() {
            let i = (cur.index + k) % self.proxies.len();
            match self.dial(&self.proxies[i]).await {
                Ok(conn) => {
                    self.ever_connected.store(true, Ordering::Relaxed);
                    debug!(proxy = %self.proxies[i], "connected to proxy");
                    *cur = Current {
                        index: i,
                        conn: Some(conn.clone()),
                    };
                    return Ok(conn);
                }
                Err(e) => errors.push(format!("{}: {e}", self.proxies[i])),
            }
        }
        Err(TrackerError::Unreachable(errors.join("; ")))
    }

    async fn dial(&self, proxy: &str) -> Result<quinn::Connection, String> {
        let (host, _) = proxy.rsplit_once(':').ok_or("not HOST:PORT")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addr: SocketAddr = tokio::net::lookup_host(proxy)
            .await
            .map_err(|e| e.to_string())?
            .find(|a| a.is_ipv4())
            .ok_or("no IPv4 address")?;
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), addr, host)
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("no answer".into()),
        }
    }

    /// Forgets a failed connection and moves on to the next proxy.
    async fn drop_connection(&self, conn: &quinn::Connection) {
        let mut cur = self.current.lock().await;
        if cur.conn.as_ref().is_some_and(|c| c.stable_id() == conn.stable_id()) {
            cur.conn = None;
            cur.index = (cur.index + 1) % self.proxies.len();
        }
    }

    /// Closes the connection politely.
    pub async fn close(&self) {
        if let Some(c) = self.current.lock().await.conn.take() {
            c.close(0u32.into(), b"bye");
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), self.endpoint.wait_idle()).await;
    }
}
