//! Test support: a cluster of real members in one process, each on its
//! own tokio runtime so that it can be killed abruptly (its runtime shut
//! down in the background, nothing flushed, sockets gone), on ephemeral
//! loopback ports, with certificates made in a temporary folder. Used by
//! this crate's and the proxy's integration tests and by the benchmarks.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use protocol::{
    codec,
    config::{MemberAddr, TrackerConfig},
    quic, tls,
    tracker_api::{self, Answer, ApiError, Consistency, Envelope, Reply, Request, WriteId},
};

use crate::Tracker;

pub mod flood;
pub mod procs;

/// Picks a free UDP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Running {
    rt: tokio::runtime::Runtime,
    tracker: Option<Tracker>,
}

/// A cluster of in-process members.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<MemberAddr>,
    /// Per-member configuration; tests may change it before `start`.
    pub configs: BTreeMap<u64, TrackerConfig>,
    running: BTreeMap<u64, Running>,
}

impl TestCluster {
    /// Prepares `n` members (not started) with fast Raft timings.
    pub fn new(n: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let members: Vec<MemberAddr> = (1..=n)
            .map(|id| MemberAddr {
                id,
                api: format!("127.0.0.1:{}", free_port()),
                raft: format!("127.0.0.1:{}", free_port()),
            })
            .collect();
        let mut names: Vec<String> = (1..=n + 2).map(|i| format!("tracker-{i}")).collect();
        names.extend(["proxy-1", "proxy-2", "admin"].map(String::from));
        tls::generate(&dir.path().join("certs"), &dir.path().join("ca"), &names, &[]).expect("certificates");
        let mut c = TestCluster {
            dir,
            members: members.clone(),
            configs: BTreeMap::new(),
            running: BTreeMap::new(),
        };
        for m in &members {
            let cfg = c.config_for(m.id, false, None);
            c.configs.insert(m.id, cfg);
        }
        c
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn config_for(&self, id: u64, join: bool, addrs: Option<(String, String)>) -> TrackerConfig {
        let mut cfg = TrackerConfig {
            id,
            members: self.members.clone(),
            join,
            data_dir: Some(self.dir.path().join(format!("data-{id}"))),
            log_dir: self.dir.path().join("logs"),
            certs_dir: self.certs(),
            // Tests register many users from one loopback address; the
            // throttle tests set their own limits.
            register: protocol::config::RegisterLimits {
                per_source_per_minute: 1_000_000,
                per_source_burst: 1_000_000,
                hashes_per_sec: 1_000_000,
                hash_burst: 1_000_000,
                ..Default::default()
            },
            // Side by side with other tests: an ephemeral port.
            http_addr: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        if let Some((api, raft)) = addrs {
            cfg.api_addr = Some(api);
            cfg.raft_addr = Some(raft);
        }
        cfg
    }

    /// Prepares a member that is not in the initial membership (it waits
    /// to be added).
    pub fn prepare_joiner(&mut self, id: u64) -> MemberAddr {
        let m = MemberAddr {
            id,
            api: format!("127.0.0.1:{}", free_port()),
            raft: format!("127.0.0.1:{}", free_port()),
        };
        let cfg = self.config_for(id, true, Some((m.api.clone(), m.raft.clone())));
        self.configs.insert(id, cfg);
        m
    }

    /// Starts member `id` on its own runtime (retrying while a killed
    /// predecessor still holds the store open).
    pub fn start(&mut self, id: u64) {
        let cfg = self.configs[&id].clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .thread_name(format!("tracker-{id}"))
                .build()
                .expect("runtime");
            let mut last = None;
            // Up to 20 s: a killed member's blocking-pool tasks (a log
            // append, a purge deleting entries) outlive its runtime and
            // hold redb's lock until they end; a loaded machine slows them.
            for _ in 0..400 {
                match rt.block_on(Tracker::start(cfg.clone())) {
                    Ok(t) => return Running { rt, tracker: Some(t) },
                    Err(e) => last = Some(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("member {id} did not start: {last:?}");
        });
        let running = handle.join().expect("start thread");
        self.running.insert(id, running);
    }

    pub fn start_all(&mut self) {
        let ids: Vec<u64> = self.members.iter().map(|m| m.id).collect();
        for id in ids {
            self.start(id);
        }
    }

    /// Kills member `id` abruptly: its runtime is shut down without any
    /// graceful step, as a crash would.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut r) = self.running.remove(&id) {
            let tracker = r.tracker.take();
            r.rt.shutdown_background();
            // With the runtime gone, dropping the handles releases the
            // sockets and the store, as the death of a process would.
            drop(tracker);
        }
    }

    /// Stops member `id` gracefully.
    pub fn stop(&mut self, id: u64) {
        if let Some(mut r) = self.running.remove(&id) {
            if let Some(t) = r.tracker.take() {
                let _ = std::thread::spawn(move || {
                    r.rt.block_on(t.shutdown());
                    r.rt.shutdown_background();
                })
                .join();
            }
        }
    }

    pub fn tracker(&self, id: u64) -> &Tracker {
        self.running[&id].tracker.as_ref().expect("member running")
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.running.contains_key(&id)
    }

    pub fn running_ids(&self) -> Vec<u64> {
        self.running.keys().copied().collect()
    }

    /// Waits until some running member sees a leader that is running, and
    /// returns it.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            for (id, r) in &self.running {
                let Some(t) = &r.tracker else { continue };
                let m = t.app.metrics();
                if m.current_leader == Some(*id) && m.state == openraft::ServerState::Leader {
                    return *id;
                }
            }
            assert!(tokio::time::Instant::now() < until, "no leader within {timeout:?}");
            // Wake on the first metrics change of any member, or soon.
            self.any_metrics_change(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the first metrics change of any running member, at most
    /// `bound` (a change may come from a member started meanwhile).
    async fn any_metrics_change(&self, bound: Duration) {
        let mut rxs: Vec<_> = self
            .running
            .values()
            .filter_map(|r| r.tracker.as_ref())
            .map(|t| t.app.raft.metrics())
            .collect();
        let changes = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
        let _ = tokio::time::timeout(bound, futures::future::select_all(changes)).await;
    }

    /// Waits until every running member names the same running leader, and
    /// returns it.
    pub async fn wait_agreed_leader(&self, timeout: Duration) -> u64 {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let leader = self.wait_leader(timeout).await;
            let agreed = self
                .running
                .values()
                .filter_map(|r| r.tracker.as_ref())
                .all(|t| t.app.metrics().current_leader == Some(leader));
            if agreed {
                return leader;
            }
            assert!(tokio::time::Instant::now() < until, "members never agreed on a leader");
            self.any_metrics_change(Duration::from_millis(100)).await;
        }
    }

    /// Waits until member `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) {
        let mut rx = self.tracker(id).app.raft.metrics();
        tokio::time::timeout(timeout, async {
            loop {
                if rx.borrow_and_update().last_applied.is_some_and(|l| l.index >= index) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("member {id} did not apply {index} within {timeout:?}"));
    }

    /// The API addresses by member id.
    pub fn api_addrs(&self) -> BTreeMap<u64, SocketAddr> {
        self.configs
            .iter()
            .filter_map(|(id, c)| c.own_addrs().map(|(a, _)| (*id, a.parse().expect("addr"))))
            .collect()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.running.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

/// A tracker-API client for tests and benchmarks: dials members (or a
/// proxy) directly, one stream per request, and numbers its writes.
pub struct ApiClient {
    pub endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    conns: tokio::sync::Mutex<BTreeMap<SocketAddr, quinn::Connection>>,
    pub id: u128,
    seq: std::sync::atomic::AtomicU64,
    pub token: std::sync::Mutex<Option<String>>,
    /// The member that answered last (tried first next time).
    leader_hint: std::sync::atomic::AtomicU64,
}

impl ApiClient {
    pub fn new(certs: &Path) -> Self {
        Self::with_identity(certs, None)
    }

    /// A client presenting the certificate `certs/NAME.pem` (e.g. a
    /// proxy's, so that members trust the `origin` it sets).
    pub fn with_identity(certs: &Path, name: Option<&str>) -> Self {
        let roots = tls::load_ca(certs).expect("ca");
        let id = name.map(|n| tls::load_identity(certs, n).expect("identity"));
        let crypto = tls::client_crypto(roots, id.as_ref(), tracker_api::ALPN).expect("client crypto");
        let client = tls::quic_client(crypto, quic::control_transport(Duration::from_secs(5))).expect("quic client");
        // A wildcard, not loopback: the cluster may be on other hosts
        // (network namespaces in the multi-host test).
        let endpoint = quic::endpoint("0.0.0.0:0".parse().expect("addr"), None).expect("endpoint");
        ApiClient {
            endpoint,
            client,
            conns: Default::default(),
            id: rand::random(),
            seq: Default::default(),
            token: Default::default(),
            leader_hint: Default::default(),
        }
    }

    /// Drops cached connections (e.g. to members that were restarted and
    /// would otherwise be found dead only at the idle timeout).
    pub async fn forget_connections(&self) {
        self.conns.lock().await.clear();
    }

    /// Builds the envelope for a request, numbering writes.
    pub fn envelope(&self, request: Request) -> Envelope {
        let write_id = request.is_write().then(|| WriteId {
            client: self.id,
            seq: self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
        });
        Envelope {
            token: self.token.lock().expect("token").clone(),
            write_id,
            origin: None,
            consistency: Consistency::Linearizable,
            request,
        }
    }

    pub async fn conn(&self, addr: SocketAddr, name: &str) -> Result<quinn::Connection, String> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&addr) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let c = self
            .endpoint
            .connect_with(self.client.clone(), addr, name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        conns.insert(addr, c.clone());
        Ok(c)
    }

    /// Sends one envelope to `addr`.
    pub async fn send(&self, addr: SocketAddr, name: &str, env: &Envelope) -> Result<Answer, String> {
        let conn = self.conn(addr, name).await?;
        codec::call::<_, Answer>(&conn, env, 1 << 20)
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends to the cluster's leader, following NotLeader answers and
    /// retrying transport errors, within `timeout`.
    pub async fn leader_send(&self, members: &BTreeMap<u64, SocketAddr>, env: &Envelope, timeout: Duration) -> Answer {
        use std::sync::atomic::Ordering::Relaxed;
        let until = tokio::time::Instant::now() + timeout;
        let hint = self.leader_hint.load(Relaxed);
        let mut target = if members.contains_key(&hint) {
            hint
        } else {
            *members.keys().next().expect("members")
        };
        let mut i = 0;
        loop {
            let addr = members[&target];
            let res = tokio::time::timeout(
                Duration::from_secs(5),
                self.send(addr, &format!("tracker-{target}"), env),
            )
            .await;
            match res {
                Ok(Ok(Err(ApiError::NotLeader { leader: Some(l), .. }))) if members.contains_key(&l) && l != target => {
                    target = l;
                    continue;
                }
                Ok(Ok(Err(ApiError::NotLeader { .. }))) | Ok(Err(_)) | Err(_) => {
                    if tokio::time::Instant::now() >= until {
                        return Err(ApiError::Unavailable("test client: no leader".into()));
                    }
                    i += 1;
                    target = *members.keys().nth(i % members.len()).expect("member");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Ok(answer)) => {
                    self.leader_hint.store(target, Relaxed);
                    return answer;
                }
            }
        }
    }

    /// Announces `peer` (without addresses) for the signed-up user.
    pub async fn announce(&self, members: &BTreeMap<u64, SocketAddr>, peer: protocol::ids::PeerId) {
        let env = self.envelope(Request::AnnouncePeer {
            peer_id: peer,
            addrs: vec![],
        });
        let answer = self.leader_send(members, &env, Duration::from_secs(10)).await;
        assert_eq!(answer, Ok(Reply::Done), "announce {peer}");
    }

    /// Registers and logs in `user` through `members`, keeping the token.
    pub async fn sign_up(&self, members: &BTreeMap<u64, SocketAddr>, user: &str, password: &str) {
        let t = Duration::from_secs(10);
        let env = self.envelope(Request::Register {
            user: user.into(),
            password: password.into(),
        });
        match self.leader_send(members, &env, t).await {
            Ok(Reply::Registered { .. }) | Err(ApiError::UserExists(_)) => {}
            other => panic!("register {user}: {other:?}"),
        }
        let env = self.envelope(Request::Login {
            user: user.into(),
            password: password.into(),
        });
        match self.leader_send(members, &env, t).await {
            Ok(Reply::LoggedIn { token, .. }) => *self.token.lock().expect("token") = Some(token),
            other => panic!("login {user}: {other:?}"),
        }
    }
}

/// Where a load generator sends its requests.
#[derive(Clone)]
pub enum Target {
    /// Straight to the members (following NotLeader), by id.
    Members(BTreeMap<u64, SocketAddr>),
    /// Through a proxy (address, certificate name).
    Proxy(SocketAddr, String),
}

impl ApiClient {
    /// Sends to a target; transport errors become `Unavailable`.
    pub async fn send_to(&self, target: &Target, env: &Envelope) -> Answer {
        match target {
            Target::Members(m) => self.leader_send(m, env, Duration::from_secs(30)).await,
            Target::Proxy(addr, name) => self
                .send(*addr, name, env)
                .await
                .unwrap_or_else(|e| Err(ApiError::Unavailable(e))),
        }
    }
}

/// What a write load produced.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Latency of every successful write.
    pub latencies: Vec<Duration>,
    /// Ids of the files whose Own was acknowledged.
    pub acked: Vec<protocol::ids::FileId>,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    /// The `q` quantile of latencies (0.5 = median).
    pub fn quantile(&mut self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i]
    }
}

/// The metadata of the `i`-th file of load client `c` (unique ids).
pub fn load_file(run: u64, c: usize, i: u64) -> protocol::tracker_api::FileMeta {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&run.to_le_bytes());
    id[8..16].copy_from_slice(&(c as u64).to_le_bytes());
    id[16..24].copy_from_slice(&i.to_le_bytes());
    protocol::tracker_api::FileMeta {
        id: protocol::ids::FileId(id),
        name: format!("load-{run}-{c}-{i}.bin"),
        size: 1 << 20,
        chunk_size: 1 << 20,
        chunk_count: 1,
        files: 0,
    }
}

/// `clients` concurrent clients, each signed up as its own user with its
/// own peer, register files (Own, a replicated write) one after another
/// for `duration`. `run` keeps ids apart between runs.
pub async fn write_load(certs: &Path, target: Target, clients: usize, duration: Duration, run: u64) -> LoadReport {
    write_load_notify(certs, target, clients, duration, run, None).await
}

/// [`write_load`] that notifies `started` once every client is signed up
/// and the timed writes begin.
pub async fn write_load_notify(
    certs: &Path,
    target: Target,
    clients: usize,
    duration: Duration,
    run: u64,
    started: Option<tokio::sync::oneshot::Sender<()>>,
) -> LoadReport {
    let mut tasks = Vec::new();
    let start_gate = std::sync::Arc::new(tokio::sync::Barrier::new(clients + 1));
    for c in 0..clients {
        let certs = certs.to_owned();
        let target = target.clone();
        let gate = start_gate.clone();
        tasks.push(tokio::spawn(async move {
            let client = ApiClient::new(&certs);
            let user = format!("load{run}x{c}");
            let peer = protocol::ids::PeerId(*blake3::hash(user.as_bytes()).as_bytes());
            let mut report = LoadReport::default();
            for req in [
                Request::Register {
                    user: user.clone(),
                    password: "load".into(),
                },
                Request::Login {
                    user: user.clone(),
                    password: "load".into(),
                },
            ] {
                let env = client.envelope(req);
                // Many load clients register from one address: a throttled
                // register is retried after the time the tracker names
                // (the same write id, so it is applied once).
                let mut throttled = 0;
                loop {
                    match client.send_to(&target, &env).await {
                        Ok(Reply::LoggedIn { token, .. }) => *client.token.lock().expect("token") = Some(token),
                        Ok(_) | Err(ApiError::UserExists(_)) => {}
                        Err(ApiError::Throttled { retry_after_ms, .. }) if throttled < 100 => {
                            throttled += 1;
                            tokio::time::sleep(Duration::from_millis(retry_after_ms.max(10))).await;
                            continue;
                        }
                        Err(e) => panic!("load client {c}: {e}"),
                    }
                    break;
                }
            }
            let env = client.envelope(Request::AnnouncePeer {
                peer_id: peer,
                addrs: vec![],
            });
            client.send_to(&target, &env).await.expect("announce");
            gate.wait().await;
            let started = tokio::time::Instant::now();
            let mut i = 0;
            while started.elapsed() < duration {
                let file = load_file(run, c, i);
                let id = file.id;
                let env = client.envelope(Request::Own { peer_id: peer, file });
                let t = tokio::time::Instant::now();
                match client.send_to(&target, &env).await {
                    Ok(_) => {
                        report.ok += 1;
                        report.latencies.push(t.elapsed());
                        report.acked.push(id);
                    }
                    Err(e) => {
                        report.errors += 1;
                        report.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
                i += 1;
            }
            report
        }));
    }
    start_gate.wait().await;
    if let Some(s) = started {
        let _ = s.send(());
    }
    let started = std::time::Instant::now();
    let mut total = LoadReport::default();
    for t in tasks {
        let r = t.await.expect("load task");
        total.ok += r.ok;
        total.errors += r.errors;
        total.first_error = total.first_error.or(r.first_error);
        total.latencies.extend(r.latencies);
        total.acked.extend(r.acked);
    }
    total.elapsed = started.elapsed();
    total
}
