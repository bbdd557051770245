//! Bounds every listener puts in place before it does work for a peer: a
//! cap on connections and on connections per source IP (RAII permits,
//! counted from the moment a connection attempt is admitted until its task
//! ends), a handshake timeout, and a timeout on reading one request frame.
//!
//! One [`Guard`] per endpoint. [`serve`] is the whole accept loop: it
//! refuses attempts past the caps (`Incoming::refuse`, logged at most once
//! per [`LOG_EVERY`] with the count of refusals since), runs the handshake
//! under the timeout and hands each connection to the listener's own code.
//! [`read_body`] reads one request frame under the guard's read timeout, so
//! a client that trickles a byte a second loses its stream (and whatever
//! permit the caller took for it) after `read_timeout_ms`.
//!
//! The caps come from [`Limits`]; what each listener allows per connection
//! (streams) is set in its transport configuration and must stay below its
//! pending-request permits (see ARCHITECTURE.md, "Bounds per listener").

use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::io::AsyncRead;

use crate::{
    codec::{self, CodecError},
    config::Limits,
};

/// Refusals (and other noisy events) are logged at most once per this
/// interval; the next line says how many were not logged.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// The caps and timeouts of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Connections (including handshakes in progress) at once.
    pub max_connections: usize,
    /// Connections at once from one source IP.
    pub max_connections_per_ip: usize,
    /// A handshake not done within this is abandoned.
    pub handshake_timeout: Duration,
    /// One request frame (prefix and body) must arrive within this.
    pub read_timeout: Duration,
}

impl Bounds {
    /// The bounds a configuration's `limits` ask for.
    pub fn from_limits(l: &Limits) -> Self {
        Bounds {
            max_connections: l.max_connections,
            max_connections_per_ip: l.max_connections_per_ip,
            handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
            read_timeout: Duration::from_millis(l.read_timeout_ms),
        }
    }
}

/// Why a connection attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("connection cap reached")]
    Total,
    #[error("per-address connection cap reached")]
    PerIp,
}

/// Admission control of one listener; cheap to clone (shared counters).
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

struct Inner {
    name: &'static str,
    bounds: Bounds,
    state: Mutex<State>,
    refused: AtomicU64,
    handshake_timeouts: AtomicU64,
    read_timeouts: AtomicU64,
    refusal_log: LogLimiter,
}

#[derive(Default)]
struct State {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Holds one connection slot (global and per IP) until dropped.
pub struct ConnPermit {
    inner: Arc<Inner>,
    ip: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        st.total -= 1;
        if let Some(n) = st.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                st.per_ip.remove(&self.ip);
            }
        }
    }
}

/// What a guard has seen, for logs, tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Connections holding a slot now.
    pub connections: usize,
    /// Distinct source IPs holding a slot now.
    pub sources: usize,
    /// Attempts refused past a cap, since start.
    pub refused: u64,
    /// Handshakes abandoned at the timeout, since start.
    pub handshake_timeouts: u64,
    /// Requests cut at the read timeout, since start.
    pub read_timeouts: u64,
}

impl Guard {
    /// `name` names the listener in log lines ("proxy", "tracker api"...).
    pub fn new(name: &'static str, bounds: Bounds) -> Self {
        Guard {
            inner: Arc::new(Inner {
                name,
                bounds,
                state: Mutex::new(State::default()),
                refused: AtomicU64::new(0),
                handshake_timeouts: AtomicU64::new(0),
                read_timeouts: AtomicU64::new(0),
                refusal_log: LogLimiter::new(LOG_EVERY),
            }),
        }
    }

    pub fn bounds(&self) -> Bounds {
        self.inner.bounds
    }

    /// Takes a connection slot for a peer at `ip`, or says which cap is full.
    pub fn try_admit(&self, ip: IpAddr) -> Result<ConnPermit, Refused> {
        let b = &self.inner.bounds;
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.total >= b.max_connections {
            return Err(Refused::Total);
        }
        let n = st.per_ip.get(&ip).copied().unwrap_or(0);
        if n >= b.max_connections_per_ip {
            return Err(Refused::PerIp);
        }
        st.total += 1;
        st.per_ip.insert(ip, n + 1);
        Ok(ConnPermit {
            inner: self.inner.clone(),
            ip,
        })
    }

    /// Admits `incoming` or refuses it (the peer sees CONNECTION_REFUSED
    /// at once; nothing is allocated for it), logging with a rate limit.
    pub fn admit(&self, incoming: quinn::Incoming) -> Option<(quinn::Incoming, ConnPermit)> {
        let remote = incoming.remote_address();
        match self.try_admit(remote.ip()) {
            Ok(p) => Some((incoming, p)),
            Err(why) => {
                incoming.refuse();
                self.inner.refused.fetch_add(1, Ordering::Relaxed);
                if let Some(unlogged) = self.inner.refusal_log.hit() {
                    tracing::warn!(
                        listener = self.inner.name,
                        %remote,
                        %why,
                        unlogged,
                        "connection refused"
                    );
                }
                None
            }
        }
    }

    /// Runs the handshake of an admitted connection under the handshake
    /// timeout; `None` if it failed or took too long (the attempt is
    /// dropped, which closes it).
    pub async fn handshake(&self, incoming: quinn::Incoming) -> Option<quinn::Connection> {
        let remote = incoming.remote_address();
        match tokio::time::timeout(self.inner.bounds.handshake_timeout, incoming).await {
            Ok(Ok(conn)) => Some(conn),
            Ok(Err(e)) => {
                tracing::debug!(listener = self.inner.name, %remote, error = %e, "handshake failed");
                None
            }
            Err(_) => {
                self.inner.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listener = self.inner.name, %remote, "handshake timed out");
                None
            }
        }
    }

    /// Reads one request frame body (length checked against `limit`
    /// before allocation) within the read timeout.
    pub async fn read_body<R: AsyncRead + Unpin>(&self, r: &mut R, limit: usize) -> Result<Vec<u8>, CodecError> {
        let res = read_body(r, limit, self.inner.bounds.read_timeout).await;
        if matches!(res, Err(CodecError::Timeout)) {
            self.inner.read_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    pub fn stats(&self) -> Stats {
        let st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        Stats {
            connections: st.total,
            sources: st.per_ip.len(),
            refused: self.inner.refused.load(Ordering::Relaxed),
            handshake_timeouts: self.inner.handshake_timeouts.load(Ordering::Relaxed),
            read_timeouts: self.inner.read_timeouts.load(Ordering::Relaxed),
        }
    }
}

/// The accept loop of a listener: admits or refuses each attempt, runs the
/// handshake under the timeout and calls `on_conn` with the connection on
/// its own task; the connection's slot is held until `on_conn` returns.
/// Returns when the endpoint is closed.
///
/// Wiring a listener to it (e.g. the Raft endpoint) is:
/// `tokio::spawn(listen::serve(endpoint, guard, move |conn| serve_conn(app.clone(), conn)))`.
pub async fn serve<F, Fut>(endpoint: quinn::Endpoint, guard: Guard, on_conn: F)
where
    F: Fn(quinn::Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let on_conn = Arc::new(on_conn);
    while let Some(incoming) = endpoint.accept().await {
        let Some((incoming, permit)) = guard.admit(incoming) else {
            continue;
        };
        let (guard, on_conn) = (guard.clone(), on_conn.clone());
        tokio::spawn(async move {
            if let Some(conn) = guard.handshake(incoming).await {
                on_conn(conn).await;
            }
            drop(permit);
        });
    }
}

/// Reads one frame body within `timeout` (the whole frame, not each read).
pub async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, CodecError> {
    tokio::time::timeout(timeout, codec::read_body(r, limit))
        .await
        .unwrap_or(Err(CodecError::Timeout))
}

/// Lets a noisy event through to the log at most once per interval, and
/// counts what it held back.
pub struct LogLimiter {
    every: Duration,
    last: Mutex<Option<Instant>>,
    held: AtomicU64,
}

impl LogLimiter {
    pub fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            last: Mutex::new(None),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log now, `n` events were held back since the last line.
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    fn hit_at(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|l| now.duration_since(l) < self.every) {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(total: usize, per_ip: usize) -> Bounds {
        Bounds {
            max_connections: total,
            max_connections_per_ip: per_ip,
            handshake_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_millis(200),
        }
    }

    #[test]
    fn per_ip_cap_then_total_cap_and_release_on_drop() {
        let g = Guard::new("test", bounds(5, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = g.try_admit(a).unwrap();
        let _a2 = g.try_admit(a).unwrap();
        assert_eq!(g.try_admit(a).err(), Some(Refused::PerIp));
        // Another source is not affected by a's cap.
        let _b1 = g.try_admit(b).unwrap();
        assert_eq!(g.stats().connections, 3);
        assert_eq!(g.stats().sources, 2);
        // Dropping a permit gives the slot back to that source.
        drop(a1);
        let _a3 = g.try_admit(a).unwrap();
        // The global cap holds whatever the source.
        let _b2 = g.try_admit(b).unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let _c1 = g.try_admit(c).unwrap();
        assert_eq!(g.try_admit("10.0.0.4".parse().unwrap()).err(), Some(Refused::Total));
        assert_eq!(g.stats().connections, 5);
    }

    #[test]
    fn empty_sources_are_forgotten() {
        let g = Guard::new("test", bounds(10, 1));
        for i in 0..100u8 {
            let p = g.try_admit(IpAddr::from([10, 0, 1, i])).unwrap();
            drop(p);
        }
        assert_eq!(g.stats(), Stats::default());
    }

    /// A frame that trickles in slower than the read timeout is cut, with
    /// the time counted over the whole frame, not per byte: each byte comes
    /// well within the timeout, the frame would take 2.8 s, the cut comes
    /// at 300 ms.
    #[tokio::test]
    async fn slow_frame_is_cut_at_the_read_timeout() {
        let mut b = bounds(10, 10);
        b.read_timeout = Duration::from_millis(300);
        let g = Guard::new("test", b);
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut frame = 10u32.to_le_bytes().to_vec();
            frame.extend([0u8; 10]);
            for byte in frame {
                if client.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let started = std::time::Instant::now();
        let err = g.read_body(&mut server, 1024).await.unwrap_err();
        assert!(matches!(err, CodecError::Timeout), "{err}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(2_500),
            "{took:?}"
        );
        assert_eq!(g.stats().read_timeouts, 1);
        drop(server);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn frame_within_the_timeout_is_read() {
        let g = Guard::new("test", bounds(10, 10));
        let mut frame = 3u32.to_le_bytes().to_vec();
        frame.extend([1u8, 2, 3]);
        assert_eq!(g.read_body(&mut &frame[..], 1024).await.unwrap(), vec![1, 2, 3]);
        assert_eq!(g.stats().read_timeouts, 0);
    }

    #[test]
    fn log_limiter_counts_what_it_holds_back() {
        let l = LogLimiter::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(l.hit_at(t0), Some(0));
        for i in 1..=10 {
            assert_eq!(l.hit_at(t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(l.hit_at(t0 + Duration::from_secs(6)), Some(10));
    }
}
