//! The tracker client: the node's one QUIC connection to a proxy, speaking
//! the tracker API (`quorrent-tracker/1`). One bi-directional stream per
//! request: an [`Envelope`] frame out, an [`Answer`] frame back.
//!
//! Writes carry a [`WriteId`] (a random client id per client, sequence
//! numbers from 1) and go one at a time; a retry after a transport error
//! or an unavailable cluster reuses the same id, so the tracker applies the
//! write exactly once however often it is sent. Proxies are tried in the
//! configured order; when one fails the client moves to the next.
//!
//! Every wait (handshake, answer, back-off) also ends when the process is
//! told to stop ([`Stop`]): the call then returns [`TrackerError::Stopped`]
//! at once instead of finishing its retries.

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
    stop::Stop,
    tracker_api::{Answer, ApiError, Consistency, Envelope, Reply, Request, WriteId, ALPN},
};
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
    /// The proxy's certificate does not verify against the configured CA.
    #[error("the proxy's certificate was refused ({0}); check ca_cert in the configuration")]
    RefusedCertificate(String),
    #[error("{}", api_message(.0))]
    Api(ApiError),
    #[error("unexpected answer from the tracker to {0}")]
    Unexpected(&'static str),
    /// The process was told to stop while waiting for the tracker.
    #[error("stopped before the tracker answered")]
    Stopped,
}

impl TrackerError {
    pub fn is_not_logged_in(&self) -> bool {
        matches!(self, TrackerError::Api(ApiError::NotLoggedIn))
    }

    /// The stable code of this error (`--json`, scripts): the tracker's
    /// own code for its errors ([`ApiError::code`]), else a node-side one.
    pub fn code(&self) -> &'static str {
        match self {
            TrackerError::NoProxy | TrackerError::Ca { .. } => "config",
            TrackerError::Unreachable(_) => "unreachable",
            TrackerError::RefusedCertificate(_) => "refused_certificate",
            TrackerError::Api(e) => e.code(),
            TrackerError::Unexpected(_) => "internal",
            TrackerError::Stopped => "stopped",
        }
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
        ApiError::NotLeader { .. } => "tracker cluster unavailable (no leader answered); try again shortly".into(),
        ApiError::Overloaded => "the proxy or tracker is overloaded; try again later".into(),
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
    stop: Stop,
}

/// Whether a handshake failed because the server's certificate did not
/// verify (rustls reports "invalid peer certificate: ...").
fn is_certificate_refusal(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::TransportError(t) => t.reason.contains("invalid peer certificate"),
        _ => false,
    }
}

/// Why dialling one proxy failed.
enum DialError {
    Certificate(String),
    Other(String),
}

impl TrackerClient {
    /// A client for the proxies of `config`, with no connection yet.
    pub fn new(config: &NodeConfig, token: Option<String>) -> Result<Arc<Self>, TrackerError> {
        Self::with_stop(config, token, Stop::new())
    }

    /// As [`TrackerClient::new`]; every call gives up with
    /// [`TrackerError::Stopped`] as soon as `stop` is set.
    pub fn with_stop(config: &NodeConfig, token: Option<String>, stop: Stop) -> Result<Arc<Self>, TrackerError> {
        if config.proxies.is_empty() {
            return Err(TrackerError::NoProxy);
        }
        let ca_err = |message: String| TrackerError::Ca {
            path: config.ca_cert.display().to_string(),
            message,
        };
        let roots = protocol::tls::load_ca_file(&config.ca_cert).map_err(|e| match e {
            // The error names the file; the path is already in ours.
            protocol::tls::TlsError::Io { source, .. } => ca_err(source.to_string()),
            protocol::tls::TlsError::Pem { message, .. } => ca_err(format!("malformed PEM: {message}")),
            protocol::tls::TlsError::Empty { .. } => ca_err("no certificate in the file".into()),
            other => ca_err(other.to_string()),
        })?;
        let crypto = protocol::tls::client_crypto(roots, None, ALPN).map_err(|e| ca_err(e.to_string()))?;
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
            stop,
        }))
    }

    /// Sets the session token sent with every request.
    pub fn set_token(&self, token: Option<String>) {
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = token;
    }

    /// Sends one request and returns the tracker's reply, retrying across
    /// proxy and leader failures (writes keep their [`WriteId`]). Ends at
    /// once with [`TrackerError::Stopped`] when the process is stopped.
    pub async fn call(&self, request: Request) -> Result<Reply, TrackerError> {
        if self.stop.is_stopped() {
            return Err(TrackerError::Stopped);
        }
        tokio::select! {
            r = self.call_retrying(request) => r,
            _ = self.stop.stopped() => Err(TrackerError::Stopped),
        }
    }

    async fn call_retrying(&self, request: Request) -> Result<Reply, TrackerError> {
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
                // keep trying until the deadline. One never reached, or
                // one whose certificate is refused, is an error at once.
                Err(e)
                    if !self.ever_connected.load(Ordering::Relaxed)
                        || matches!(e, TrackerError::RefusedCertificate(_))
                        || Instant::now() + backoff > deadline =>
                {
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
                    // Past the deadline this is the answer: the cluster
                    // (or the proxy) said why, which says more than
                    // "unreachable".
                    if Instant::now() + backoff > deadline {
                        return Err(TrackerError::Api(e));
                    }
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
        let mut refused = 0;
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
                Err(DialError::Certificate(e)) => {
                    refused += 1;
                    errors.push(format!("{}: {e}", self.proxies[i]));
                }
                Err(DialError::Other(e)) => errors.push(format!("{}: {e}", self.proxies[i])),
            }
        }
        if refused == self.proxies.len() {
            return Err(TrackerError::RefusedCertificate(errors.join("; ")));
        }
        Err(TrackerError::Unreachable(errors.join("; ")))
    }

    async fn dial(&self, proxy: &str) -> Result<quinn::Connection, DialError> {
        let (host, addr) = self.dial_addr(proxy).await.map_err(DialError::Other)?;
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), addr, &host)
            .map_err(|e| DialError::Other(e.to_string()))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) if is_certificate_refusal(&e) => Err(DialError::Certificate(e.to_string())),
            Ok(Err(e)) => Err(DialError::Other(e.to_string())),
            Err(_) => Err(DialError::Other("no answer".into())),
        }
    }

    /// The host name (checked against the certificate) and the address of
    /// a `HOST:PORT` proxy.
    async fn dial_addr(&self, proxy: &str) -> Result<(String, SocketAddr), String> {
        let (host, _) = protocol::net::split_host_port(proxy)?;
        // The client endpoint is IPv4 (0.0.0.0:0).
        let addr: SocketAddr = protocol::net::resolve_all(proxy)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|a| a.is_ipv4())
            .ok_or("no IPv4 address")?;
        Ok((host.to_owned(), addr))
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
        // A stopping process does not wait long for a proxy that may be
        // frozen to acknowledge.
        let wait = Duration::from_millis(if self.stop.is_stopped() { 100 } else { 200 });
        let _ = tokio::time::timeout(wait, self.endpoint.wait_idle()).await;
    }
}
