//! Serving nodes: each request stream is read (length checked before
//! allocation), validated, stamped with the node's address and a write id
//! if it lacks one, and sent to the leader; the answer comes back on the
//! same stream. On a broken connection, a timeout or `NotLeader`, the
//! request is retried on the new leader until the deadline. Retrying a
//! write is safe: it carries the same write id, and the tracker's client
//! table applies it once.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use protocol::{
    codec::{self, CodecError},
    config::ProxyConfig,
    listen::{self, Bounds, Guard},
    tracker_api::{Answer, ApiError, Envelope, WriteId},
};
use tokio::sync::Semaphore;

use crate::upstream::Upstreams;

/// One attempt on a leader may take this long before we try again.
const ATTEMPT: Duration = Duration::from_millis(1_500);

pub struct Forwarder {
    up: Arc<Upstreams>,
    deadline: Duration,
    limit: usize,
    /// Requests in progress, taken before a request body is read; past
    /// the limit nodes get "overloaded".
    pending: Semaphore,
    /// Connection caps and timeouts of the node-facing endpoint.
    pub guard: Guard,
    /// Client id for writes that come without a write id.
    client: u128,
    seq: std::sync::atomic::AtomicU64,
    max_pending: usize,
    pub metrics: Arc<crate::telemetry::ProxyMetrics>,
}

impl Forwarder {
    pub fn new(up: Arc<Upstreams>, config: &ProxyConfig, metrics: Arc<crate::telemetry::ProxyMetrics>) -> Self {
        Forwarder {
            up,
            deadline: Duration::from_millis(config.deadline_ms),
            limit: config.limits.max_frame_bytes,
            pending: Semaphore::new(config.limits.max_pending),
            guard: Guard::new("proxy", Bounds::from_limits(&config.limits)),
            client: rand::random(),
            seq: Default::default(),
            max_pending: config.limits.max_pending,
            metrics,
        }
    }

    /// Requests in progress now.
    pub fn pending_in_use(&self) -> usize {
        self.max_pending.saturating_sub(self.pending.available_permits())
    }

    /// Pending-request permits free now.
    pub fn pending_available(&self) -> usize {
        self.pending.available_permits()
    }
}

/// Serves node connections until the endpoint is closed, within the caps
/// of `fwd.guard`.
pub async fn serve(fwd: Arc<Forwarder>, endpoint: quinn::Endpoint) {
    let guard = fwd.guard.clone();
    listen::serve(endpoint, guard, move |conn| serve_conn(fwd.clone(), conn)).await;
}

async fn serve_conn(fwd: Arc<Forwarder>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(serve_stream(fwd.clone(), send, recv, remote));
    }
}

async fn serve_stream(
    fwd: Arc<Forwarder>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    remote: std::net::SocketAddr,
) {
    // The permit comes before the body: past it, nothing is read and the
    // node is told at once.
    let answer = match fwd.pending.try_acquire() {
        Err(_) => {
            let _ = recv.stop(0u32.into());
            encode_answer(&Err(ApiError::Overloaded))
        }
        Ok(_permit) => match fwd.guard.read_body(&mut recv, fwd.limit).await {
            Ok(body) => fwd.handle(&body, remote).await,
            Err(
                e @ (CodecError::TooLarge { .. }
                | CodecError::Truncated
                | CodecError::Malformed(_)
                | CodecError::Timeout),
            ) => {
                let _ = recv.stop(0u32.into());
                encode_answer(&Err(ApiError::BadFrame(e.to_string())))
            }
            Err(_) => return,
        },
    };
    if send.write_all(&answer).await.is_ok() {
        let _ = send.finish();
    }
}

fn encode_answer(a: &Answer) -> Vec<u8> {
    codec::encode(a).expect("answers encode")
}

impl Forwarder {
    /// Forwards one request body; returns the encoded answer frame. The
    /// caller holds a pending permit for it.
    pub async fn handle(&self, body: &[u8], remote: std::net::SocketAddr) -> Vec<u8> {
        let started = Instant::now();
        let mut env: Envelope = match codec::decode(body, self.limit) {
            Ok(e) => e,
            Err(e) => return encode_answer(&Err(ApiError::BadFrame(e.to_string()))),
        };
        env.origin = Some(remote);
        if env.request.is_write() && env.write_id.is_none() {
            let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            env.write_id = Some(WriteId {
                client: self.client ^ ((seq as u128) << 64),
                seq: 1,
            });
        }
        let frame = match codec::encode(&env) {
            Ok(f) => f,
            Err(e) => return encode_answer(&Err(ApiError::BadFrame(e.to_string()))),
        };
        let kind = env.request.kind();
        let write = env.request.is_write();
        match self.forward(&frame, kind).await {
            Ok((answer_body, outcome, upstream)) => {
                self.metrics.answered(kind, write, outcome, started.elapsed(), upstream);
                let mut out = Vec::with_capacity(answer_body.len() + 4);
                out.extend_from_slice(&(answer_body.len() as u32).to_le_bytes());
                out.extend_from_slice(&answer_body);
                out
            }
            Err(e) => {
                if self.metrics.on() {
                    self.metrics.unavailable.inc();
                }
                self.metrics
                    .answered(kind, write, e.code(), started.elapsed(), Duration::ZERO);
                encode_answer(&Err(e))
            }
        }
    }

    /// Sends `frame` to the leader until it answers something other than
    /// "not leader", or the deadline passes. Returns the answer body, its
    /// outcome (ok or the error code) and how long the answering member
    /// took on that last attempt.
    async fn forward(&self, frame: &[u8], kind: &str) -> Result<(Vec<u8>, &'static str, Duration), ApiError> {
        let started = Instant::now();
        let until = tokio::time::Instant::now() + self.deadline;
        let mut views = self.up.subscribe();
        let mut rotate = 0usize;
        let mut last = String::from("no leader known");
        let mut attempts = 0u32;
        loop {
            let view = *views.borrow_and_update();
            let target = match view.leader {
                Some(l) => l,
                // No leader known: ask members in turn; a follower's
                // NotLeader answer names the leader.
                None => {
                    rotate += 1;
                    *self
                        .up
                        .members
                        .keys()
                        .nth(rotate % self.up.members.len().max(1))
                        .ok_or(ApiError::Internal)?
                }
            };
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            // A request to a leader that has just died would wait for the
            // connection to time out; as soon as the watchers learn of a
            // new leader, send it there instead (the write id makes the
            // duplicate harmless).
            attempts += 1;
            if attempts > 1 && self.metrics.on() {
                self.metrics.retries.inc();
            }
            let sent = Instant::now();
            let attempt = tokio::select! {
                res = tokio::time::timeout(left.min(ATTEMPT), self.up.call_raw(target, frame)) => res,
                _ = moved_away(&mut views, target) => {
                    last = format!("leader moved away from member {target}");
                    continue;
                }
            };
            match attempt {
                // A success goes back as it came; only an error answer is
                // decoded, to see whether it asks for a retry elsewhere.
                Ok(Ok(body)) => match (codec::leading_variant(&body) != Some(0))
                    .then(|| codec::decode::<Answer>(&body, self.limit))
                {
                    // An error answer the node should see as it is.
                    Some(Ok(Err(e))) if !matches!(e, ApiError::NotLeader { .. } | ApiError::Unavailable(_)) => {
                        return Ok((body, e.code(), sent.elapsed()));
                    }
                    Some(Ok(Err(ApiError::NotLeader { leader, .. }))) => {
                        last = format!("member {target} is not the leader");
                        if let Some(l) = leader {
                            if Some(l) != view.leader {
                                self.up.observe_hint(l, view.term);
                                continue;
                            }
                        }
                        self.up.suspect(target, view.term);
                    }
                    Some(Ok(Err(ApiError::Unavailable(m)))) => {
                        last = m;
                        self.up.suspect(target, view.term);
                    }
                    _ => {
                        let waited = started.elapsed();
                        if waited > Duration::from_millis(200) {
                            tracing::info!(kind, ms = waited.as_millis() as u64, "request served after a pause");
                        }
                        return Ok((body, "ok", sent.elapsed()));
                    }
                },
                Ok(Err(e)) => {
                    last = e.to_string();
                    self.up.suspect(target, view.term);
                }
                Err(_) => {
                    last = format!("member {target} timed out");
                    self.up.suspect(target, view.term);
                }
            }
            // Wait for news of a leader, but not past the deadline and
            // not so long that a quiet watcher stalls us.
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), views.changed()).await;
        }
        tracing::warn!(kind, %last, "no leader before the deadline");
        Err(ApiError::Unavailable(format!(
            "no leader answered within {} ms ({last})",
            self.deadline.as_millis()
        )))
    }
}

/// Resolves once the known leader is some member other than `target`.
async fn moved_away(views: &mut tokio::sync::watch::Receiver<crate::upstream::LeaderView>, target: u64) {
    loop {
        if views.changed().await.is_err() {
            return std::future::pending().await;
        }
        if views.borrow_and_update().leader.is_some_and(|l| l != target) {
            return;
        }
    }
}
