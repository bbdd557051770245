//! A connection and stream flood against one tracker-API listener (a proxy
//! or a member), for the abuse test and the flood benchmark: idle
//! connections, streams that trickle their request a byte a second,
//! connection attempts past the per-address cap, and garbage frames.
//!
//! Each kind of attacker dials from its own loopback address
//! (127.B.K.N: Linux routes all of 127/8 to lo), so the per-address caps
//! meet them as they would meet separate hosts, and a well-behaved client
//! on 127.0.0.1 is a different source. Every loop is bounded: by a count,
//! by the flood's own end, or by a per-stream deadline.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use protocol::{
    codec, quic, tls,
    tracker_api::{self, Answer, ApiError},
};

/// The shape of one flood.
#[derive(Debug, Clone)]
pub struct Flood {
    /// Idle connections held for the whole flood (50 per source address).
    pub idle: usize,
    /// Connections the trickling attacker tries from its one address
    /// (those past the per-address cap are refused).
    pub slow_conns: usize,
    /// Streams trickling a request one byte a second, spread over the
    /// slow connections that were accepted.
    pub slow_streams: usize,
    /// Connections sending garbage frames back to back.
    pub garbage_conns: usize,
    /// A trickling stream gives up after this (bounds every stream).
    pub stream_deadline: Duration,
}

impl Default for Flood {
    fn default() -> Self {
        Flood {
            idle: 1_000,
            slow_conns: 80,
            slow_streams: 10_000,
            garbage_conns: 4,
            stream_deadline: Duration::from_secs(30),
        }
    }
}

/// What the attackers saw.
#[derive(Debug, Clone, Default)]
pub struct FloodReport {
    pub idle_held: usize,
    pub idle_refused: usize,
    pub slow_conns_held: usize,
    pub slow_conns_refused: usize,
    /// Trickling streams the server cut (an error answer or a stop).
    pub slow_cut: u64,
    /// Trickling streams answered "overloaded" before anything was read.
    pub slow_overloaded: u64,
    /// Trickling streams the server let finish a whole request (should be
    /// none with a read timeout shorter than the trickle).
    pub slow_completed: u64,
    /// Trickling streams that hit `stream_deadline` (never answered).
    pub slow_unanswered: u64,
    pub garbage_sent: u64,
    /// Garbage answered BadFrame or Overloaded.
    pub garbage_refused: u64,
    /// Garbage that got any other answer (should be none).
    pub garbage_other: u64,
}

/// A client endpoint on a given loopback address, trusting the CA and
/// presenting no certificate (anonymous, like a node).
fn endpoint(certs: &Path, ip: Ipv4Addr) -> (quinn::Endpoint, quinn::ClientConfig) {
    let roots = tls::load_ca(certs).expect("ca");
    let crypto = tls::client_crypto(roots, None, tracker_api::ALPN).expect("client crypto");
    // Keep-alives every 5 s keep idle connections open past the server's
    // idle timeout: the worst case for the server, which must count them.
    let client = tls::quic_client(crypto, quic::control_transport(Duration::from_secs(20))).expect("quic client");
    let ep = quic::endpoint(SocketAddr::new(IpAddr::V4(ip), 0), None).expect("attacker endpoint");
    (ep, client)
}

async fn connect(
    ep: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    target: SocketAddr,
    name: &str,
) -> Option<quinn::Connection> {
    let connecting = ep.connect_with(client.clone(), target, name).ok()?;
    tokio::time::timeout(Duration::from_secs(20), connecting)
        .await
        .ok()?
        .ok()
}

/// Opens `n` connections from `ep` at once; returns those accepted and
/// the number refused.
async fn connect_many(
    ep: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    target: SocketAddr,
    name: &str,
    n: usize,
) -> (Vec<quinn::Connection>, usize) {
    let all = futures::future::join_all((0..n).map(|_| connect(ep, client, target, name))).await;
    let held: Vec<_> = all.into_iter().flatten().collect();
    let refused = n - held.len();
    (held, refused)
}

/// Runs the flood against `target` (certificate name `name`) from the
/// addresses 127.`net`.*.*; returns when every trickling stream is done.
/// `net` must differ between floods that run at once.
pub async fn run(certs: &Path, target: SocketAddr, name: &str, net: u8, f: &Flood) -> FloodReport {
    let mut report = FloodReport::default();
    let ip = |k: u8, n: u8| Ipv4Addr::new(127, net, k, n);

    // Idle connections, 50 per address, one address after the other (so
    // that a loaded machine does not push handshakes past their timeout).
    let mut idle_eps = Vec::new();
    let mut idle_conns = Vec::new();
    for s in 0..f.idle.div_ceil(50) {
        let (ep, client) = endpoint(certs, ip(1 + (s / 250) as u8, 1 + (s % 250) as u8));
        let (held, refused) = connect_many(&ep, &client, target, name, (f.idle - s * 50).min(50)).await;
        report.idle_held += held.len();
        report.idle_refused += refused;
        idle_conns.extend(held);
        idle_eps.push(ep);
    }

    // The trickling attacker, from one address.
    let (slow_ep, slow_client) = endpoint(certs, ip(10, 1));
    let (slow, refused) = connect_many(&slow_ep, &slow_client, target, name, f.slow_conns).await;
    report.slow_conns_held = slow.len();
    report.slow_conns_refused = refused;

    // Garbage, until the trickling ends.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let garbage_sent = Arc::new(AtomicU64::new(0));
    let garbage_refused = Arc::new(AtomicU64::new(0));
    let garbage_other = Arc::new(AtomicU64::new(0));
    let (g_ep, g_client) = endpoint(certs, ip(20, 1));
    let (g_conns, _) = connect_many(&g_ep, &g_client, target, name, f.garbage_conns).await;
    let mut garbage_tasks = Vec::new();
    for (i, conn) in g_conns.into_iter().enumerate() {
        let (sent, refused, other, stop) = (
            garbage_sent.clone(),
            garbage_refused.clone(),
            garbage_other.clone(),
            stop_rx.clone(),
        );
        garbage_tasks.push(tokio::spawn(async move {
            let mut k = i as u64;
            while !*stop.borrow() {
                k += 1;
                match garbage_exchange(&conn, k).await {
                    Some(Err(ApiError::BadFrame(_) | ApiError::Overloaded)) => refused.fetch_add(1, Relaxed),
                    Some(_) => other.fetch_add(1, Relaxed),
                    // The stream was reset (e.g. stopped before our frame was
                    // taken): the server refused it too.
                    None => refused.fetch_add(1, Relaxed),
                };
                sent.fetch_add(1, Relaxed);
                if conn.close_reason().is_some() {
                    break;
                }
            }
        }));
    }

    // Trickling streams, spread over the accepted slow connections; a
    // connection opens the next stream when the server frees a slot.
    let cut = Arc::new(AtomicU64::new(0));
    let overloaded = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let unanswered = Arc::new(AtomicU64::new(0));
    let mut slow_tasks = Vec::new();
    if !slow.is_empty() {
        for s in 0..f.slow_streams {
            let conn = slow[s % slow.len()].clone();
            let (cut, overloaded, completed, unanswered) =
                (cut.clone(), overloaded.clone(), completed.clone(), unanswered.clone());
            let deadline = f.stream_deadline;
            slow_tasks.push(tokio::spawn(async move {
                match tokio::time::timeout(deadline, trickle(&conn)).await {
                    Ok(Trickle::Cut) => cut.fetch_add(1, Relaxed),
                    Ok(Trickle::Overloaded) => overloaded.fetch_add(1, Relaxed),
                    Ok(Trickle::Completed) => completed.fetch_add(1, Relaxed),
                    Err(_) => unanswered.fetch_add(1, Relaxed),
                };
            }));
        }
    }
    for t in slow_tasks {
        let _ = t.await;
    }
    let _ = stop_tx.send(true);
    for t in garbage_tasks {
        let _ = t.await;
    }
    report.slow_cut = cut.load(Relaxed);
    report.slow_overloaded = overloaded.load(Relaxed);
    report.slow_completed = completed.load(Relaxed);
    report.slow_unanswered = unanswered.load(Relaxed);
    report.garbage_sent = garbage_sent.load(Relaxed);
    report.garbage_refused = garbage_refused.load(Relaxed);
    report.garbage_other = garbage_other.load(Relaxed);
    for c in idle_conns.iter().chain(&slow) {
        c.close(0u32.into(), b"flood over");
    }
    for ep in idle_eps.iter().chain([&slow_ep, &g_ep]) {
        ep.close(0u32.into(), b"flood over");
    }
    report
}

enum Trickle {
    Cut,
    Overloaded,
    Completed,
}

/// One stream announcing a 100-byte request and sending it a byte a
/// second; it ends when the server answers or stops the stream.
async fn trickle(conn: &quinn::Connection) -> Trickle {
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return Trickle::Cut;
    };
    let mut frame = 100u32.to_le_bytes().to_vec();
    frame.extend([0xAAu8; 100]);
    let answer = async {
        match codec::read_body(&mut recv, 1 << 20).await {
            Ok(body) => match codec::decode::<Answer>(&body, 1 << 20) {
                Ok(Err(ApiError::Overloaded)) => Trickle::Overloaded,
                Ok(Err(ApiError::BadFrame(_))) => Trickle::Cut,
                _ => Trickle::Completed,
            },
            Err(_) => Trickle::Cut,
        }
    };
    let writer = async {
        for byte in frame {
            if send.write_all(&[byte]).await.is_err() {
                // Stopped by the server: wait for its answer, if any.
                return std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let _ = send.finish();
        std::future::pending::<()>().await
    };
    tokio::select! {
        t = answer => t,
        _ = writer => unreachable!("the writer never ends by itself"),
    }
}

/// Sends one garbage frame (kind chosen by `k`) and reads the answer;
/// `None` if the stream was reset or the connection is gone.
async fn garbage_exchange(conn: &quinn::Connection, k: u64) -> Option<Answer> {
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    let payload: Vec<u8> = match k % 3 {
        // A length far past the limit.
        0 => (u32::MAX - k as u32).to_le_bytes().to_vec(),
        // A small frame of random bytes.
        1 => {
            let mut v = 64u32.to_le_bytes().to_vec();
            v.extend((0..64).map(|_| rand::random::<u8>()));
            v
        }
        // A frame that ends early.
        _ => {
            let mut v = 1000u32.to_le_bytes().to_vec();
            v.extend([7u8; 10]);
            v
        }
    };
    let _ = send.write_all(&payload).await;
    let _ = send.finish();
    let body = tokio::time::timeout(Duration::from_secs(10), codec::read_body(&mut recv, 1 << 20))
        .await
        .ok()?
        .ok()?;
    codec::decode::<Answer>(&body, 1 << 20).ok()
}
