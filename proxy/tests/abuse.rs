//! Abuse of the listeners: a proxy (a real `quorrent-proxy` process, so
//! that its memory can be read from /proc) and the leader of an in-process
//! tracker cluster are flooded at once with 1,000 idle connections,
//! 10,000 streams trickling a byte a second, connections past the
//! per-address cap and garbage frames (`tracker_cluster::testing::flood`),
//! while a well-behaved client keeps registering, logging in, writing and
//! searching through the proxy.
//!
//! `QUORRENT_FLOOD_SCALE` (default 1) scales the flood's counts, e.g. 0.1
//! for a quick run.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use protocol::{
    config::{Limits, ProxyConfig},
    ids::{FileId, PeerId},
    tracker_api::{ApiError, FileMeta, Reply, Request},
};
use tracker_cluster::testing::{
    flood::{self, Flood, FloodReport},
    free_port,
    procs::{rss_of, spawn_with_config, ChildGuard},
    ApiClient, TestCluster,
};

const T: Duration = Duration::from_secs(30);

fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("QUORRENT_FLOOD_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale).round() as usize).max(1)
}

/// Starts `quorrent-proxy` on a free port in front of `c`; returns the
/// process and its address once it answers.
async fn start_proxy(c: &TestCluster, probe: &ApiClient) -> (ChildGuard, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = ProxyConfig {
        name: "proxy-1".into(),
        listen: addr.to_string(),
        trackers: c.members.clone(),
        log_dir: c.dir.path().join("logs"),
        certs_dir: c.certs(),
        ..Default::default()
    };
    let path = c.dir.path().join("proxy-1.json");
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let child = spawn_with_config(env!("CARGO_BIN_EXE_quorrent-proxy"), &path, None);
    // Ready when it answers ClusterStatus (bounded: 30 s of attempts).
    let until = Instant::now() + T;
    loop {
        let env = probe.envelope(Request::ClusterStatus);
        match tokio::time::timeout(Duration::from_secs(2), probe.send(addr, "proxy-1", &env)).await {
            Ok(Ok(Ok(Reply::Status(_)))) => return (child, addr),
            other => {
                assert!(Instant::now() < until, "proxy never answered: {other:?}");
                probe.forget_connections().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn via(client: &ApiClient, proxy: SocketAddr, request: Request) -> Result<Reply, ApiError> {
    let env = client.envelope(request);
    match tokio::time::timeout(Duration::from_secs(20), client.send(proxy, "proxy-1", &env)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => Err(ApiError::Unavailable(e)),
        Err(_) => Err(ApiError::Unavailable("client timeout".into())),
    }
}

async fn sign_up(client: &ApiClient, proxy: SocketAddr, user: &str, peer: PeerId) -> Result<(), String> {
    let reg = via(
        client,
        proxy,
        Request::Register {
            user: user.into(),
            password: "pw".into(),
        },
    )
    .await;
    if !matches!(reg, Ok(Reply::Registered { .. })) {
        return Err(format!("register {user}: {reg:?}"));
    }
    match via(
        client,
        proxy,
        Request::Login {
            user: user.into(),
            password: "pw".into(),
        },
    )
    .await
    {
        Ok(Reply::LoggedIn { token, .. }) => *client.token.lock().unwrap() = Some(token),
        other => return Err(format!("login {user}: {other:?}")),
    }
    let ann = via(
        client,
        proxy,
        Request::AnnouncePeer {
            peer_id: peer,
            addrs: vec![],
        },
    )
    .await;
    if ann != Ok(Reply::Done) {
        return Err(format!("announce {user}: {ann:?}"));
    }
    Ok(())
}

fn meta(i: usize) -> FileMeta {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(i as u64).to_le_bytes());
    FileMeta {
        id: FileId(id),
        name: format!("calm-{i}.bin"),
        size: 10,
        chunk_size: 1 << 20,
        chunk_count: 1,
        files: 0,
    }
}

fn check_flood(who: &str, r: &FloodReport, f: &Flood, limits: &Limits) {
    eprintln!("{who}: {r:?}");
    assert_eq!((r.idle_held, r.idle_refused), (f.idle, 0), "{who}: idle connections");
    let per_ip = limits.max_connections_per_ip.min(f.slow_conns);
    assert_eq!(
        (r.slow_conns_held, r.slow_conns_refused),
        (per_ip, f.slow_conns - per_ip),
        "{who}: the per-address cap"
    );
    assert_eq!(r.slow_completed, 0, "{who}: a trickled request got through");
    assert_eq!(r.slow_unanswered, 0, "{who}: a trickling stream was never cut");
    assert_eq!(
        r.slow_cut + r.slow_overloaded,
        f.slow_streams as u64,
        "{who}: trickling streams"
    );
    assert!(r.garbage_sent > 0, "{who}: no garbage sent");
    assert_eq!(r.garbage_other, 0, "{who}: garbage got a real answer");
}

/// The flood of issue 7 against the proxy and the leader at once: the
/// well-behaved client sees no error, the caps refuse what is past them,
/// trickling streams are cut at the read timeout, and the proxy's peak
/// memory stays under `limits.max_rss_mb`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_proxy_and_leader_spares_a_well_behaved_client() {
    let mut c = TestCluster::new(3);
    c.start_all();
    let leader = c.wait_agreed_leader(T).await;
    let limits = Limits::default();
    let good = ApiClient::new(&c.certs());
    let (proxy, proxy_addr) = start_proxy(&c, &good).await;
    sign_up(&good, proxy_addr, "calm", PeerId([1; 32])).await.unwrap();

    let f = Flood {
        idle: scaled(1_000),
        slow_streams: scaled(10_000),
        ..Default::default()
    };
    let started = Instant::now();
    let certs = c.certs();
    let leader_api = c.tracker(leader).api_addr;
    let on_proxy = tokio::spawn({
        let (certs, f) = (certs.clone(), f.clone());
        async move { flood::run(&certs, proxy_addr, "proxy-1", 10, &f).await }
    });
    let on_leader = tokio::spawn({
        let (certs, f) = (certs.clone(), f.clone());
        async move { flood::run(&certs, leader_api, &format!("tracker-{leader}"), 20, &f).await }
    });

    // The well-behaved client, until both floods are over (bounded).
    let mut served = 0usize;
    let mut errors = Vec::new();
    let mut newcomers = 0usize;
    let mut most_tracker_conns = 0;
    let mut i = 0usize;
    while !(on_proxy.is_finished() && on_leader.is_finished()) {
        assert!(started.elapsed() < Duration::from_secs(180), "the flood never ended");
        i += 1;
        let answer = match i % 3 {
            0 => via(
                &good,
                proxy_addr,
                Request::Own {
                    peer_id: PeerId([1; 32]),
                    file: meta(i),
                },
            )
            .await
            .map(|_| ()),
            1 => via(
                &good,
                proxy_addr,
                Request::Search {
                    text: "calm".into(),
                    cursor: 0,
                    limit: 10,
                },
            )
            .await
            .map(|_| ()),
            _ => via(
                &good,
                proxy_addr,
                Request::Heartbeat {
                    peer_id: PeerId([1; 32]),
                },
            )
            .await
            .map(|_| ()),
        };
        match answer {
            Ok(()) => served += 1,
            Err(e) => errors.push(format!("request {i}: {e}")),
        }
        // Now and then a newcomer registers and logs in on a new connection.
        if i % 50 == 25 {
            newcomers += 1;
            let n = ApiClient::new(&c.certs());
            if let Err(e) = sign_up(
                &n,
                proxy_addr,
                &format!("newcomer{newcomers}"),
                PeerId([1 + newcomers as u8; 32]),
            )
            .await
            {
                errors.push(e);
            }
            n.endpoint.close(0u32.into(), b"done");
        }
        let st = c.tracker(leader).app.api_guard.stats();
        most_tracker_conns = most_tracker_conns.max(st.connections);
    }
    let on_proxy = on_proxy.await.unwrap();
    let on_leader = on_leader.await.unwrap();
    eprintln!(
        "flood over in {:?}: {served} requests served, {newcomers} newcomers, errors {errors:?}",
        started.elapsed()
    );
    assert!(errors.is_empty(), "the well-behaved client saw errors: {errors:?}");
    assert!(served > 0 && newcomers > 0, "the well-behaved client did too little");
    check_flood("proxy", &on_proxy, &f, &limits);
    check_flood("leader", &on_leader, &f, &limits);

    // The leader held at most its cap, refused past the per-address cap
    // and cut trickling streams at the read timeout.
    let st = c.tracker(leader).app.api_guard.stats();
    assert!(most_tracker_conns <= limits.max_connections, "{most_tracker_conns}");
    assert!(st.refused >= on_leader.slow_conns_refused as u64, "{st:?}");
    assert!(st.read_timeouts > 0, "{st:?}");

    // The proxy's peak resident memory over its whole life.
    let (peak, now) = rss_of(proxy.0.id()).expect("proxy /proc status");
    eprintln!("proxy RSS: peak {} MiB, now {} MiB", peak >> 20, now >> 20);
    assert!(
        peak <= limits.max_rss_mb << 20,
        "proxy peak RSS {} MiB over the configured {} MiB",
        peak >> 20,
        limits.max_rss_mb
    );
    // The proxy still serves after the flood.
    assert!(via(&good, proxy_addr, Request::ClusterStatus).await.is_ok());
    drop(proxy);
}

/// The pending permit is taken before the body is read: with every permit
/// held by streams that trickle, a new request is answered "overloaded"
/// without its (1 MiB) body being read, and once the read timeout has cut
/// the trickling streams, requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permit_before_body_and_read_timeout() {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.wait_agreed_leader(T).await;
    let mut cfg = ProxyConfig {
        name: "proxy-1".into(),
        listen: "127.0.0.1:0".into(),
        trackers: c.members.clone(),
        log_dir: c.dir.path().join("logs"),
        certs_dir: c.certs(),
        ..Default::default()
    };
    cfg.limits.max_pending = 2;
    cfg.limits.read_timeout_ms = 1_000;
    let proxy = proxy::Proxy::start(cfg).await.unwrap();
    let good = ApiClient::new(&c.certs());
    sign_up(&good, proxy.addr, "patient", PeerId([9; 32])).await.unwrap();

    // Two streams take both permits and trickle.
    let slow = ApiClient::new(&c.certs());
    let conn = slow.conn(proxy.addr, "proxy-1").await.unwrap();
    let mut trickling = Vec::new();
    for _ in 0..2 {
        let (mut s, r) = conn.open_bi().await.unwrap();
        s.write_all(&[100]).await.unwrap();
        trickling.push((s, r));
    }
    let until = Instant::now() + T;
    while proxy.pending_available() > 0 {
        assert!(Instant::now() < until, "the trickling streams never took the permits");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A request with a 1 MiB body: "overloaded", body unread.
    let mut frame = ((1u32 << 20) - 16).to_le_bytes().to_vec();
    frame.resize(frame.len() + (1 << 20) - 16, 0x55);
    let answer: protocol::tracker_api::Answer = protocol::codec::call_raw(&conn, &frame, 1 << 20).await.unwrap();
    assert_eq!(answer, Err(ApiError::Overloaded));
    // A well-formed request from someone else: "overloaded" too, at once.
    assert_eq!(
        via(&good, proxy.addr, Request::ClusterStatus).await,
        Err(ApiError::Overloaded)
    );

    // The read timeout cuts the trickling streams and frees the permits.
    for (_s, mut r) in trickling {
        let body = protocol::codec::read_body(&mut r, 1 << 20).await.unwrap();
        let answer: protocol::tracker_api::Answer = protocol::codec::decode(&body, 1 << 20).unwrap();
        assert!(
            matches!(&answer, Err(ApiError::BadFrame(m)) if m.contains("read timeout")),
            "{answer:?}"
        );
    }
    assert!(proxy.listener_stats().read_timeouts >= 2);
    assert!(matches!(
        via(&good, proxy.addr, Request::ClusterStatus).await,
        Ok(Reply::Status(_))
    ));
    proxy.shutdown().await;
}
