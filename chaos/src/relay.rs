//! A userspace UDP relay that delays, reorders, duplicates and drops
//! packets in front of one QUIC server port, because the test machine's
//! kernel has no netem.
//!
//! The server binds REAL; the relay binds LISTEN and every client is told
//! LISTEN. For each client source address the relay opens its own
//! upstream socket (the unspecified address of REAL's family, port 0) and
//! forwards client -> REAL through it; what REAL answers on that socket
//! goes back to that client from LISTEN, so the client sees replies from
//! the address it sent to.
//!
//! Impairments change at run time by control lines (the chaos runner
//! writes them to the relay's stdin), see [`Impairment::apply_line`]:
//!
//! ```text
//! set [delay_ms=D] [jitter_ms=J] [dup_pct=P] [loss_pct=L]   (at least one key)
//! clear
//! ```
//!
//! On stdout the relay prints `relay ready LISTEN -> UPSTREAM` once bound
//! and `ok <line>` for each control line it applied; a refused line is
//! named on stderr and changes nothing. EOF on the control input, SIGTERM
//! or SIGINT stop it.
//!
//! Owns: the sessions, the delay queue and their bounds (traffic is
//! untrusted). Not owned: partitions and whole-host loss, which the
//! nemesis does with namespaces, and the fault schedule and its seed,
//! which the runner keeps; the relay's own dice are unseeded.

use std::{
    cmp::Reverse,
    collections::{hash_map::Entry, BinaryHeap, HashMap},
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use bytes::Bytes;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt},
    net::UdpSocket,
    sync::mpsc,
    task::JoinHandle,
    time::Instant,
};

/// At most this many client sessions (each holds a socket and a task); a
/// packet from a further client address is dropped and counted.
pub const MAX_SESSIONS: usize = 1024;

/// A session with no packet either way for this long is closed.
pub const SESSION_IDLE: Duration = Duration::from_secs(60);

/// At most this many packets held in the delay queue at once; beyond it a
/// packet (or copy) is dropped and counted.
pub const MAX_HELD: usize = 65_536;

/// At most this many payload bytes held at once (128 MiB), so that
/// [`MAX_HELD`] datagrams of the largest size cannot take 4 GiB.
pub const MAX_HELD_BYTES: usize = 128 << 20;

/// The largest datagram relayed; larger ones cannot be carried by UDP.
pub const MAX_DATAGRAM: usize = 65_535;

/// The largest `delay_ms` or `jitter_ms` accepted (10 s). A longer hold
/// is a partition, which the nemesis makes otherwise; this also keeps a
/// held packet's session from expiring under it.
pub const MAX_HOLD_MS: u64 = 10_000;

/// Kernel buffer size asked for on every socket: bursts of a QUIC flow
/// should not be lost in the relay's own buffers, which would add loss
/// nobody scheduled.
const SOCKET_BUFFER: usize = 4 << 20;

/// Packets from all upstream sockets queued for the main loop; a full
/// queue pushes back onto the sockets' kernel buffers.
const UPSTREAM_QUEUE: usize = 1024;

/// What is done to every packet, in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairment {
    /// Fixed hold of each packet, in milliseconds.
    pub delay_ms: u64,
    /// Up to this many milliseconds more, uniformly at random per packet
    /// (so packets reorder).
    pub jitter_ms: u64,
    /// Chance in percent (0..=100) that a packet is also sent a second
    /// time, after its own random delay.
    pub dup_pct: f64,
    /// Chance in percent (0..=100) that a packet is dropped (with its
    /// duplicate, if any).
    pub loss_pct: f64,
}

impl Impairment {
    /// Applies one control line: `clear`, or `set` with one or more of
    /// `delay_ms=D jitter_ms=J dup_pct=P loss_pct=L` (missing keys keep
    /// their value; a repeated key's last value wins). On error `self` is
    /// unchanged and the message names what was wrong.
    pub fn apply_line(&mut self, line: &str) -> Result<(), String> {
        let mut words = line.split_whitespace();
        match words.next() {
            None => Err("empty control line".into()),
            Some("clear") => match words.next() {
                Some(extra) => Err(format!("`clear` takes no arguments, got {extra:?}")),
                None => {
                    *self = Impairment::default();
                    Ok(())
                }
            },
            Some("set") => {
                let mut next = *self;
                let mut any = false;
                for word in words {
                    let (key, value) = word
                        .split_once('=')
                        .ok_or_else(|| format!("{word:?} is not key=value"))?;
                    match key {
                        "delay_ms" => next.delay_ms = parse_ms(key, value)?,
                        "jitter_ms" => next.jitter_ms = parse_ms(key, value)?,
                        "dup_pct" => next.dup_pct = parse_pct(key, value)?,
                        "loss_pct" => next.loss_pct = parse_pct(key, value)?,
                        _ => {
                            return Err(format!(
                                "unknown key {key:?} (known: delay_ms, jitter_ms, dup_pct, loss_pct)"
                            ))
                        }
                    }
                    any = true;
                }
                if !any {
                    return Err("`set` needs at least one key=value".into());
                }
                *self = next;
                Ok(())
            }
            Some(other) => Err(format!("unknown command {other:?} (known: set, clear)")),
        }
    }

    /// Whether packets are sent on at once and unchanged.
    pub fn is_clear(&self) -> bool {
        *self == Impairment::default()
    }

    /// What happens to one packet: no delay (dropped), one delay, or two
    /// (duplicated), each the time to hold that copy.
    fn fate(&self, rng: &mut impl Rng) -> Vec<Duration> {
        if self.loss_pct > 0.0 && rng.gen_bool(self.loss_pct / 100.0) {
            return Vec::new();
        }
        let copies = if self.dup_pct > 0.0 && rng.gen_bool(self.dup_pct / 100.0) {
            2
        } else {
            1
        };
        (0..copies).map(|_| self.hold(rng)).collect()
    }

    fn hold(&self, rng: &mut impl Rng) -> Duration {
        let jitter_us = if self.jitter_ms > 0 {
            rng.gen_range(0..=self.jitter_ms * 1000)
        } else {
            0
        };
        Duration::from_millis(self.delay_ms) + Duration::from_micros(jitter_us)
    }
}

fn parse_ms(key: &str, value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(ms) if ms <= MAX_HOLD_MS => Ok(ms),
        Ok(ms) => Err(format!("{key}={ms} is above the limit of {MAX_HOLD_MS} ms")),
        Err(_) => Err(format!("{key}={value:?} is not a whole number of milliseconds")),
    }
}

fn parse_pct(key: &str, value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{key}={value:?} is not a percentage from 0 to 100")),
    }
}

/// What the relay did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Client sessions opened (each with its own upstream socket).
    pub sessions: u64,
    /// Sessions closed after [`SESSION_IDLE`] without traffic.
    pub expired: u64,
    /// Packets received from clients.
    pub from_clients: u64,
    /// Packets received from the upstream server.
    pub from_upstream: u64,
    /// Copies sent (to either side), duplicates included.
    pub sent: u64,
    /// Extra copies made by `dup_pct`.
    pub duplicated: u64,
    /// Packets dropped by `loss_pct`.
    pub lost: u64,
    /// Copies dropped because the delay queue was full.
    pub overflow: u64,
    /// Packets dropped because [`MAX_SESSIONS`] sessions were open.
    pub refused_sessions: u64,
    /// Sends or receives the operating system failed.
    pub io_errors: u64,
}

/// The relay's bounds; [`Limits::default`] is the documented constants.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_sessions: usize,
    idle: Duration,
    max_held: usize,
    max_held_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: MAX_SESSIONS,
            idle: SESSION_IDLE,
            max_held: MAX_HELD,
            max_held_bytes: MAX_HELD_BYTES,
        }
    }
}

/// Runs the relay from LISTEN to UPSTREAM until `control` ends or the
/// process gets SIGTERM or SIGINT; refused control lines go to stderr.
/// This is the `quorrent-chaos relay` subcommand.
pub async fn run(
    listen: SocketAddr,
    upstream: SocketAddr,
    control: impl AsyncBufRead + Unpin,
    out: impl AsyncWrite + Unpin,
) -> anyhow::Result<RelayStats> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers are installed before `ready` is printed, so a signal sent
    // as soon as the runner sees that line stops the relay cleanly.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let relay = Relay::bind(listen, upstream, Limits::default()).with_context(|| format!("binding {listen}"))?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let stats = relay
        .serve(control, out, tokio::io::stderr(), shutdown)
        .await
        .context("writing the relay's output")?;
    Ok(stats)
}

/// A relay bound to its LISTEN socket, not yet serving.
struct Relay {
    listen: Arc<UdpSocket>,
    upstream: SocketAddr,
    limits: Limits,
}

impl Relay {
    /// Binds LISTEN (inside a tokio runtime).
    fn bind(listen: SocketAddr, upstream: SocketAddr, limits: Limits) -> io::Result<Relay> {
        Ok(Relay {
            listen: Arc::new(bind_udp(listen)?),
            upstream,
            limits,
        })
    }

    /// Prints `ready`, then relays and reads control lines until
    /// `control` ends or `shutdown` completes. Fails only if `out` or
    /// `err` cannot be written.
    async fn serve(
        self,
        mut control: impl AsyncBufRead + Unpin,
        mut out: impl AsyncWrite + Unpin,
        mut err: impl AsyncWrite + Unpin,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<RelayStats> {
        let listen_addr = self.listen.local_addr()?;
        write_line(&mut out, &format!("relay ready {listen_addr} -> {}", self.upstream)).await?;
        let (from_upstream_tx, mut from_upstream) = mpsc::channel(UPSTREAM_QUEUE);
        let mut state = State {
            listen: self.listen.clone(),
            upstream: self.upstream,
            limits: self.limits,
            impairment: Impairment::default(),
            rng: StdRng::from_entropy(),
            sessions: HashMap::new(),
            from_upstream_tx,
            queue: BinaryHeap::new(),
            held_bytes: 0,
            seq: 0,
            stats: RelayStats::default(),
        };
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut line = Vec::new();
        let mut sweep = tokio::time::interval((self.limits.idle / 4).max(Duration::from_millis(10)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            // A disabled branch's future is still built, so it needs some
            // instant even when nothing is held.
            let next_due = state.queue.peek().map(|h| h.0.due);
            let wake = next_due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = &mut shutdown => break,
                read = control.read_until(b'\n', &mut line) => {
                    // `read_until` keeps partial input in `line` if another
                    // branch wins, so the line survives cancellation.
                    if read? == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&line).trim().to_owned();
                    line.clear();
                    match state.impairment.apply_line(&text) {
                        Ok(()) => write_line(&mut out, &format!("ok {text}")).await?,
                        Err(why) => write_line(&mut err, &format!("relay: refused control line {text:?}: {why}")).await?,
                    }
                }
                got = self.listen.recv_from(&mut buf) => match got {
                    Ok((n, from)) => state.on_client(from, &buf[..n]).await,
                    Err(_) => state.stats.io_errors += 1,
                },
                Some((client, payload)) = from_upstream.recv() => state.on_upstream(client, payload).await,
                _ = tokio::time::sleep_until(wake), if next_due.is_some() => state.send_due().await,
                _ = sweep.tick() => state.expire(),
            }
        }
        Ok(state.stats)
    }
}

/// Binds a non-blocking UDP socket with large kernel buffers.
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let sock = socket2::SockRef::from(&socket);
    // Best effort: the kernel caps these at its maximum without privilege.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

async fn write_line(w: &mut (impl AsyncWrite + Unpin), line: &str) -> io::Result<()> {
    w.write_all(format!("{line}\n").as_bytes()).await?;
    w.flush().await
}

/// One client address and its upstream socket.
struct Session {
    socket: Arc<UdpSocket>,
    /// Last packet either way, for idle expiry.
    last_seen: Instant,
    /// Reads the upstream socket into the main loop's queue.
    reader: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Where a copy goes.
enum Via {
    /// To the server, from this session's upstream socket.
    Upstream(Arc<UdpSocket>),
    /// To this client, from LISTEN.
    Client(SocketAddr),
}

/// A copy in the delay queue, ordered by due time, then arrival.
struct Held {
    due: Instant,
    seq: u64,
    via: Via,
    payload: Bytes,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// Everything the main loop owns; one task, so no locks.
struct State {
    listen: Arc<UdpSocket>,
    upstream: SocketAddr,
    limits: Limits,
    impairment: Impairment,
    rng: StdRng,
    sessions: HashMap<SocketAddr, Session>,
    /// Cloned into each session's reader.
    from_upstream_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    queue: BinaryHeap<Reverse<Held>>,
    /// Payload bytes in `queue`, bounded by `limits.max_held_bytes`.
    held_bytes: usize,
    /// Arrival counter: equal due times leave in arrival order.
    seq: u64,
    stats: RelayStats,
}

impl State {
    async fn on_client(&mut self, from: SocketAddr, packet: &[u8]) {
        self.stats.from_clients += 1;
        let now = Instant::now();
        let open = self.sessions.len();
        let socket = match self.sessions.entry(from) {
            Entry::Occupied(mut e) => {
                e.get_mut().last_seen = now;
                e.get().socket.clone()
            }
            Entry::Vacant(e) => {
                if open >= self.limits.max_sessions {
                    self.stats.refused_sessions += 1;
                    return;
                }
                let unspecified = match self.upstream.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                };
                let socket = match bind_udp(SocketAddr::new(unspecified, 0)) {
                    Ok(s) => Arc::new(s),
                    Err(_) => {
                        self.stats.io_errors += 1;
                        return;
                    }
                };
                let reader = tokio::spawn(read_upstream(
                    socket.clone(),
                    self.upstream,
                    from,
                    self.from_upstream_tx.clone(),
                ));
                self.stats.sessions += 1;
                e.insert(Session {
                    socket: socket.clone(),
                    last_seen: now,
                    reader,
                })
                .socket
                .clone()
            }
        };
        self.impair(Via::Upstream(socket), Bytes::copy_from_slice(packet), now)
            .await;
    }

    async fn on_upstream(&mut self, client: SocketAddr, payload: Bytes) {
        self.stats.from_upstream += 1;
        let now = Instant::now();
        if let Some(s) = self.sessions.get_mut(&client) {
            s.last_seen = now;
        }
        self.impair(Via::Client(client), payload, now).await;
    }

    /// Sends the packet's copies now or queues them, as the impairment says.
    async fn impair(&mut self, via: Via, payload: Bytes, now: Instant) {
        if self.impairment.is_clear() {
            return self.send(&via, &payload).await;
        }
        let holds = self.impairment.fate(&mut self.rng);
        match holds.len() {
            0 => self.stats.lost += 1,
            2 => self.stats.duplicated += 1,
            _ => {}
        }
        let mut via = Some(via);
        for (i, hold) in holds.iter().enumerate() {
            // The last copy takes `via`; an earlier one gets a clone.
            let this = if i + 1 == holds.len() {
                via.take().expect("taken only by the last copy")
            } else {
                match via.as_ref().expect("taken only by the last copy") {
                    Via::Upstream(s) => Via::Upstream(s.clone()),
                    Via::Client(c) => Via::Client(*c),
                }
            };
            if hold.is_zero() {
                self.send(&this, &payload).await;
            } else if self.queue.len() >= self.limits.max_held
                || self.held_bytes + payload.len() > self.limits.max_held_bytes
            {
                self.stats.overflow += 1;
            } else {
                self.held_bytes += payload.len();
                self.seq += 1;
                self.queue.push(Reverse(Held {
                    due: now + *hold,
                    seq: self.seq,
                    via: this,
                    payload: payload.clone(),
                }));
            }
        }
    }

    async fn send_due(&mut self) {
        let now = Instant::now();
        while self.queue.peek().is_some_and(|h| h.0.due <= now) {
            let Some(Reverse(held)) = self.queue.pop() else { break };
            self.held_bytes -= held.payload.len();
            self.send(&held.via, &held.payload).await;
        }
    }

    async fn send(&mut self, via: &Via, payload: &[u8]) {
        let sent = match via {
            Via::Upstream(socket) => socket.send_to(payload, self.upstream).await,
            Via::Client(client) => self.listen.send_to(payload, *client).await,
        };
        match sent {
            Ok(_) => self.stats.sent += 1,
            Err(_) => self.stats.io_errors += 1,
        }
    }

    fn expire(&mut self) {
        let idle = self.limits.idle;
        let before = self.sessions.len();
        self.sessions.retain(|_, s| s.last_seen.elapsed() < idle);
        self.stats.expired += (before - self.sessions.len()) as u64;
    }
}

/// Reads what the server sends to one session's socket and queues it for
/// the main loop, tagged with the client it is for. Ends when the main
/// loop is gone (or is aborted when the session expires).
async fn read_upstream(
    socket: Arc<UdpSocket>,
    upstream: SocketAddr,
    client: SocketAddr,
    tx: mpsc::Sender<(SocketAddr, Bytes)>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        // Errors here are transient (an ICMP error reported late); the
        // session stays until it expires.
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        // Anyone may send to this port; only the server's packets count.
        if from != upstream {
            continue;
        }
        if tx.send((client, Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
            return;
        }
    }
}

/// An in-process relay on 127.0.0.1 port 0 with its control input and
/// output as in-memory pipes, for tests here and in the chaos runner's.
pub struct TestRelay {
    /// The relay's LISTEN address (what clients send to).
    pub addr: SocketAddr,
    control: tokio::io::DuplexStream,
    out: tokio::io::Lines<tokio::io::BufReader<tokio::io::DuplexStream>>,
    err: tokio::io::Lines<tokio::io::BufReader<tokio::io::DuplexStream>>,
    task: JoinHandle<io::Result<RelayStats>>,
}

/// Starts a relay in front of `upstream` and waits for its `ready` line.
pub async fn spawn_for_test(upstream: SocketAddr) -> io::Result<TestRelay> {
    spawn_with(upstream, Limits::default()).await
}

async fn spawn_with(upstream: SocketAddr, limits: Limits) -> io::Result<TestRelay> {
    use tokio::io::{duplex, BufReader};
    let relay = Relay::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), upstream, limits)?;
    let addr = relay.listen.local_addr()?;
    let (control, control_in) = duplex(64 << 10);
    let (out_w, out_r) = duplex(64 << 10);
    let (err_w, err_r) = duplex(64 << 10);
    let task = tokio::spawn(relay.serve(BufReader::new(control_in), out_w, err_w, std::future::pending()));
    let mut t = TestRelay {
        addr,
        control,
        out: BufReader::new(out_r).lines(),
        err: BufReader::new(err_r).lines(),
        task,
    };
    let ready = t.out.next_line().await?;
    let want = format!("relay ready {addr} -> {upstream}");
    if ready.as_deref() != Some(want.as_str()) {
        return Err(io::Error::other(format!("expected {want:?}, got {ready:?}")));
    }
    Ok(t)
}

impl TestRelay {
    /// Sends a control line and waits for its `ok`.
    pub async fn apply(&mut self, line: &str) -> io::Result<()> {
        self.send_line(line).await?;
        let got = self.out.next_line().await?;
        let want = format!("ok {line}");
        if got.as_deref() != Some(want.as_str()) {
            return Err(io::Error::other(format!("expected {want:?}, got {got:?}")));
        }
        Ok(())
    }

    /// Sends a control line without waiting for an answer.
    pub async fn send_line(&mut self, line: &str) -> io::Result<()> {
        write_line(&mut self.control, line).await
    }

    /// The next line the relay wrote to its error output.
    pub async fn next_error(&mut self) -> io::Result<Option<String>> {
        self.err.next_line().await
    }

    /// Closes the control input (EOF) and returns the relay's counts.
    pub async fn stop(self) -> io::Result<RelayStats> {
        drop(self.control);
        self.task.await.map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use tokio::time::timeout;

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    async fn udp() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    /// A UDP server on port 0 that sends every datagram back to its sender.
    async fn echo_server() -> SocketAddr {
        let s = udp().await;
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    async fn recv(s: &UdpSocket, within: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let (n, from) = timeout(within, s.recv_from(&mut buf)).await.ok()?.unwrap();
        Some((buf[..n].to_vec(), from))
    }

    /// Sends `0..n` as 4-byte big-endian numbers from `from` to `to`.
    async fn send_numbered(from: &UdpSocket, to: SocketAddr, n: u32) {
        for i in 0..n {
            from.send_to(&i.to_be_bytes(), to).await.unwrap();
        }
    }

    fn number(p: &[u8]) -> u32 {
        u32::from_be_bytes(p.try_into().expect("4-byte datagram"))
    }

    #[test]
    fn control_lines_parse_and_refusals_change_nothing() {
        let mut imp = Impairment::default();
        imp.apply_line("set delay_ms=100 jitter_ms=20").unwrap();
        imp.apply_line("  set dup_pct=2.5  ").unwrap();
        assert_eq!(
            imp,
            Impairment {
                delay_ms: 100,
                jitter_ms: 20,
                dup_pct: 2.5,
                loss_pct: 0.0
            }
        );
        let before = imp;
        for (line, named) in [
            ("", "empty"),
            ("set", "at least one"),
            ("set delay_ms=abc", "delay_ms=\"abc\""),
            ("set delay_ms=50 loss_pct=101", "loss_pct=\"101\""),
            ("set loss_pct=nan", "loss_pct"),
            ("set delay_ms=99999999", "limit"),
            ("set rate=5", "\"rate\""),
            ("set delay_ms", "\"delay_ms\" is not key=value"),
            ("clear now", "\"now\""),
            ("pause", "\"pause\""),
        ] {
            let err = imp.apply_line(line).unwrap_err();
            assert!(err.contains(named), "{line:?}: {err}");
            assert_eq!(imp, before, "{line:?} changed the impairment");
        }
        imp.apply_line("clear").unwrap();
        assert!(imp.is_clear());
    }

    /// Replies come back from LISTEN, and each client gets only its own.
    #[tokio::test]
    async fn forwards_both_ways_and_keeps_clients_apart() {
        let relay = spawn_for_test(echo_server().await).await.unwrap();
        let (a, b) = (udp().await, udp().await);
        for i in 0..20u8 {
            a.send_to(&[b'a', i], relay.addr).await.unwrap();
            b.send_to(&[b'b', i], relay.addr).await.unwrap();
        }
        for (client, tag) in [(&a, b'a'), (&b, b'b')] {
            let mut seen = HashSet::new();
            for _ in 0..20 {
                let (p, from) = recv(client, WAIT).await.expect("echo");
                assert_eq!(from, relay.addr, "reply from LISTEN");
                assert_eq!(p[0], tag, "client {} got another's reply", tag as char);
                seen.insert(p[1]);
            }
            assert_eq!(seen.len(), 20);
            assert!(recv(client, Duration::from_millis(100)).await.is_none());
        }
        let stats = relay.stop().await.unwrap();
        assert_eq!((stats.sessions, stats.sent), (2, 80));
    }

    #[tokio::test]
    async fn delay_holds_each_direction() {
        let mut relay = spawn_for_test(echo_server().await).await.unwrap();
        relay.apply("set delay_ms=100").await.unwrap();
        let c = udp().await;
        let start = Instant::now();
        c.send_to(b"ping", relay.addr).await.unwrap();
        let (p, _) = recv(&c, WAIT).await.expect("echo");
        let rtt = start.elapsed();
        assert_eq!(p, b"ping");
        assert!(rtt >= Duration::from_millis(200), "round trip took {rtt:?}");
    }

    #[tokio::test]
    async fn jitter_reorders_a_burst() {
        let sink = udp().await;
        let mut relay = spawn_for_test(sink.local_addr().unwrap()).await.unwrap();
        relay.apply("set jitter_ms=50").await.unwrap();
        let c = udp().await;
        send_numbered(&c, relay.addr, 200).await;
        let mut got = Vec::new();
        for _ in 0..200 {
            got.push(number(&recv(&sink, WAIT).await.expect("every packet arrives").0));
        }
        let inversions = got.windows(2).filter(|w| w[0] > w[1]).count();
        assert!(inversions > 0, "arrived in order: {got:?}");
        got.sort_unstable();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn dup_100_delivers_twice_and_loss_100_delivers_none() {
        let sink = udp().await;
        let mut relay = spawn_for_test(sink.local_addr().unwrap()).await.unwrap();
        let c = udp().await;
        relay.apply("set dup_pct=100").await.unwrap();
        send_numbered(&c, relay.addr, 50).await;
        let mut count = vec![0; 50];
        for _ in 0..100 {
            count[number(&recv(&sink, WAIT).await.expect("copy").0) as usize] += 1;
        }
        assert!(count.iter().all(|&n| n == 2), "{count:?}");
        assert!(recv(&sink, Duration::from_millis(200)).await.is_none(), "a third copy");

        relay.apply("set dup_pct=0 loss_pct=100").await.unwrap();
        send_numbered(&c, relay.addr, 50).await;
        // Nothing arriving is the expected outcome here.
        assert!(recv(&sink, Duration::from_millis(300)).await.is_none());

        relay.apply("clear").await.unwrap();
        c.send_to(b"after", relay.addr).await.unwrap();
        assert_eq!(recv(&sink, WAIT).await.expect("clear restores").0, b"after");
        let stats = relay.stop().await.unwrap();
        assert_eq!((stats.duplicated, stats.lost), (50, 50));
    }

    #[tokio::test]
    async fn malformed_control_line_is_named_and_ignored() {
        let mut relay = spawn_for_test(echo_server().await).await.unwrap();
        relay.send_line("set delay_ms=soon").await.unwrap();
        let err = relay.next_error().await.unwrap().expect("an error line");
        assert!(
            err.contains("set delay_ms=soon") && err.contains("delay_ms=\"soon\""),
            "{err}"
        );
        relay.send_line("jam").await.unwrap();
        let err = relay.next_error().await.unwrap().expect("an error line");
        assert!(err.contains("unknown command \"jam\""), "{err}");
        // Still relaying, and the next good line is acknowledged.
        relay.apply("set jitter_ms=1").await.unwrap();
        let c = udp().await;
        c.send_to(b"x", relay.addr).await.unwrap();
        assert_eq!(recv(&c, WAIT).await.expect("echo").0, b"x");
    }

    /// The session and queue bounds hold against more traffic.
    #[tokio::test]
    async fn bounds_drop_and_count() {
        let sink = udp().await;
        let limits = Limits {
            max_sessions: 1,
            idle: Duration::from_millis(300),
            max_held: 10,
            max_held_bytes: MAX_HELD_BYTES,
        };
        let mut relay = spawn_with(sink.local_addr().unwrap(), limits).await.unwrap();
        let (a, b) = (udp().await, udp().await);
        a.send_to(b"a", relay.addr).await.unwrap();
        assert_eq!(recv(&sink, WAIT).await.unwrap().0, b"a");
        b.send_to(b"b", relay.addr).await.unwrap();
        assert!(
            recv(&sink, Duration::from_millis(100)).await.is_none(),
            "second session"
        );
        // Once a's session has expired, b gets one.
        tokio::time::sleep(Duration::from_millis(700)).await;
        b.send_to(b"b", relay.addr).await.unwrap();
        assert_eq!(recv(&sink, WAIT).await.unwrap().0, b"b");

        relay.apply("set delay_ms=100").await.unwrap();
        send_numbered(&b, relay.addr, 30).await;
        for _ in 0..10 {
            recv(&sink, WAIT).await.expect("a held packet");
        }
        assert!(recv(&sink, Duration::from_millis(300)).await.is_none());
        let stats = relay.stop().await.unwrap();
        assert_eq!((stats.refused_sessions, stats.overflow), (1, 20));
        assert!(stats.expired >= 1);
    }

    /// A QUIC connection survives delay, jitter (reordering) and
    /// duplication through the relay: 1 MiB echoes intact. It takes about
    /// 25 s here: QUIC takes packets reordered by more than its threshold
    /// for lost and keeps its congestion window small (with delay alone it
    /// takes under a second, and the relay counts no overflow or error).
    #[tokio::test]
    async fn quic_echoes_through_an_impaired_relay() {
        use protocol::{quic, tls};
        const ALPN: &[u8] = b"relay-test";
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        tls::generate(&certs, &dir.path().join("ca"), &["tracker-1".into()], &[]).unwrap();
        let id = tls::load_identity(&certs, "tracker-1").unwrap();
        let roots = tls::load_ca(&certs).unwrap();
        let idle = Duration::from_secs(10);
        let server_cfg = tls::quic_server(
            tls::server_crypto(&id, &[ALPN], tls::ClientAuth::None).unwrap(),
            quic::control_transport(idle),
        )
        .unwrap();
        let server = quic::endpoint("127.0.0.1:0".parse().unwrap(), Some(server_cfg)).unwrap();
        let server_addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let data = recv.read_to_end(2 << 20).await.unwrap();
            send.write_all(&data).await.unwrap();
            send.finish().unwrap();
            // Keep the connection until the client has read and closed.
            conn.closed().await;
        });

        let mut relay = spawn_for_test(server_addr).await.unwrap();
        relay.apply("set delay_ms=20 jitter_ms=20 dup_pct=10").await.unwrap();
        let mut client = quic::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
        client.set_default_client_config(
            tls::quic_client(
                tls::client_crypto(roots, None, ALPN).unwrap(),
                quic::control_transport(idle),
            )
            .unwrap(),
        );
        let body: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let echoed = timeout(Duration::from_secs(60), async {
            let conn = client.connect(relay.addr, "localhost").unwrap().await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&body).await.unwrap();
            send.finish().unwrap();
            let echoed = recv.read_to_end(2 << 20).await.unwrap();
            conn.close(0u32.into(), b"done");
            echoed
        })
        .await
        .expect("echo within 60 s");
        assert!(echoed == body, "1 MiB came back changed ({} bytes)", echoed.len());
        let stats = relay.stop().await.unwrap();
        assert!(stats.duplicated > 0, "{stats:?}");
    }
}
