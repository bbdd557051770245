//! The proxy in front of a real in-process tracker cluster: failover under
//! load, total outage and recovery, proxy restarts, two proxies, bad input.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use protocol::{
    config::ProxyConfig,
    ids::{FileId, PeerId},
    tracker_api::{Answer, ApiError, FileMeta, Reply, Request},
};
use proxy::Proxy;
use tracker_cluster::testing::{free_port, ApiClient, TestCluster};

const T: Duration = Duration::from_secs(30);

fn proxy_config(c: &TestCluster, name: &str, port: u16) -> ProxyConfig {
    ProxyConfig {
        name: name.into(),
        listen: format!("127.0.0.1:{port}"),
        trackers: c.members.clone(),
        log_dir: c.dir.path().join("logs"),
        certs_dir: c.certs(),
        ..Default::default()
    }
}

fn meta(client: usize, i: usize) -> FileMeta {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(client as u64).to_le_bytes());
    id[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    FileMeta {
        id: FileId(id),
        name: format!("c{client}-f{i}.bin"),
        size: 10,
        chunk_size: 1 << 20,
        chunk_count: 1,
        files: 0,
    }
}

async fn via(client: &ApiClient, proxy: SocketAddr, request: Request) -> Answer {
    let env = client.envelope(request);
    client
        .send(proxy, "proxy-1", &env)
        .await
        .unwrap_or_else(|e| Err(ApiError::Unavailable(e)))
}

async fn sign_up(client: &ApiClient, proxy: SocketAddr, user: &str, peer: PeerId) {
    assert_eq!(
        via(
            client,
            proxy,
            Request::Register {
                user: user.into(),
                password: "pw".into()
            }
        )
        .await,
        Ok(Reply::Registered { user: user.into() })
    );
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
        other => panic!("login: {other:?}"),
    }
    assert_eq!(
        via(
            client,
            proxy,
            Request::AnnouncePeer {
                peer_id: peer,
                addrs: vec![]
            }
        )
        .await,
        Ok(Reply::Done)
    );
}

/// 32 clients write through the proxy while the leader is killed: no
/// client sees an error, every acknowledged write is there exactly once,
/// and the longest pause stays under a generous bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load_is_invisible() {
    let mut c = TestCluster::new(3);
    c.start_all();
    let leader = c.wait_agreed_leader(T).await;
    let proxy = Proxy::start(proxy_config(&c, "proxy-1", 0)).await.unwrap();
    let addr = proxy.addr;
    let done = Arc::new(AtomicUsize::new(0));
    let reached = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    const CLIENTS: usize = 32;
    const WRITES: usize = 40;
    for n in 0..CLIENTS {
        let certs = c.certs();
        let (done, reached) = (done.clone(), reached.clone());
        tasks.push(tokio::spawn(async move {
            let client = ApiClient::new(&certs);
            let peer = PeerId([n as u8; 32]);
            sign_up(&client, addr, &format!("user{n}"), peer).await;
            let mut worst = Duration::ZERO;
            for i in 0..WRITES {
                let started = Instant::now();
                // Every tenth write is a Register: applied twice, it would
                // answer "user exists", so success proves exactly-once.
                let req = if i % 10 == 5 {
                    Request::Register {
                        user: format!("user{n}-{i}"),
                        password: "pw".into(),
                    }
                } else {
                    Request::Own {
                        peer_id: peer,
                        file: meta(n, i),
                    }
                };
                let answer = via(&client, addr, req).await;
                assert!(answer.is_ok(), "client {n} write {i}: {answer:?}");
                worst = worst.max(started.elapsed());
                if done.fetch_add(1, Ordering::SeqCst) + 1 == CLIENTS * WRITES / 4 {
                    reached.notify_one();
                }
            }
            worst
        }));
    }
    reached.notified().await;
    c.kill(leader);
    let mut worst = Duration::ZERO;
    for t in tasks {
        worst = worst.max(t.await.unwrap());
    }
    assert!(worst < Duration::from_secs(5), "longest pause {worst:?}");
    // Every acknowledged Own is there, once.
    let checker = ApiClient::new(&c.certs());
    sign_up(&checker, addr, "checker", PeerId([200; 32])).await;
    let mut found = 0;
    let mut cursor = 0;
    loop {
        match via(
            &checker,
            addr,
            Request::Search {
                text: ".bin".into(),
                cursor,
                limit: 1000,
            },
        )
        .await
        {
            Ok(Reply::Files { hits, next }) => {
                found += hits.len();
                assert!(hits.iter().all(|h| h.live_owners == 1));
                match next {
                    Some(n) => cursor = n,
                    None => break,
                }
            }
            other => panic!("search: {other:?}"),
        }
    }
    assert_eq!(found, CLIENTS * (WRITES - WRITES / 10));
    proxy.shutdown().await;
}

/// With every tracker down, a node gets "tracker cluster unavailable"
/// within the deadline; when the trackers are back, requests succeed with
/// no proxy restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_reported_then_recovered() {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.wait_agreed_leader(T).await;
    let mut cfg = proxy_config(&c, "proxy-1", 0);
    cfg.deadline_ms = 1_500;
    let proxy = Proxy::start(cfg).await.unwrap();
    let client = ApiClient::new(&c.certs());
    sign_up(&client, proxy.addr, "ivan", PeerId([1; 32])).await;
    for id in 1..=3 {
        c.kill(id);
    }
    let started = Instant::now();
    let answer = via(
        &client,
        proxy.addr,
        Request::Search {
            text: "".into(),
            cursor: 0,
            limit: 1,
        },
    )
    .await;
    assert!(matches!(answer, Err(ApiError::Unavailable(_))), "{answer:?}");
    assert!(answer.unwrap_err().to_string().contains("tracker cluster unavailable"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    for id in 1..=3 {
        c.start(id);
    }
    // Same proxy, same session (it survived: sessions are replicated).
    let until = Instant::now() + T;
    loop {
        match via(
            &client,
            proxy.addr,
            Request::Search {
                text: "".into(),
                cursor: 0,
                limit: 1,
            },
        )
        .await
        {
            Ok(Reply::Files { .. }) => break,
            other => assert!(Instant::now() < until, "never recovered: {other:?}"),
        }
    }
    proxy.shutdown().await;
}

/// A restarted proxy is reached again by the same client on its own, and
/// with two proxies a client goes on through the second when the first dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_restart_and_second_proxy() {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.wait_agreed_leader(T).await;
    let port = free_port();
    let p1 = Proxy::start(proxy_config(&c, "proxy-1", port)).await.unwrap();
    let p2 = Proxy::start(proxy_config(&c, "proxy-2", 0)).await.unwrap();
    let client = ApiClient::new(&c.certs());
    sign_up(&client, p1.addr, "judy", PeerId([2; 32])).await;
    let status = || Request::ClusterStatus;
    p1.shutdown().await;
    // Through the second proxy, with the session opened through the first.
    let env = client.envelope(Request::Search {
        text: "".into(),
        cursor: 0,
        limit: 1,
    });
    assert!(matches!(
        client.send(p2.addr, "proxy-2", &env).await.unwrap(),
        Ok(Reply::Files { .. })
    ));
    // The first proxy comes back on its port; the client reconnects by itself.
    let p1 = Proxy::start(proxy_config(&c, "proxy-1", port)).await.unwrap();
    let until = Instant::now() + T;
    loop {
        match via(&client, p1.addr, status()).await {
            Ok(Reply::Status(_)) => break,
            other => assert!(Instant::now() < until, "no reconnect: {other:?}"),
        }
    }
    p1.shutdown().await;
    p2.shutdown().await;
}

/// Garbage and oversized frames to the proxy get errors and harm no other
/// node's requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_to_proxy_is_contained() {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.wait_agreed_leader(T).await;
    let proxy = Proxy::start(proxy_config(&c, "proxy-1", 0)).await.unwrap();
    let good = ApiClient::new(&c.certs());
    sign_up(&good, proxy.addr, "ken", PeerId([3; 32])).await;
    let bad = ApiClient::new(&c.certs());
    let conn = bad.conn(proxy.addr, "proxy-1").await.unwrap();
    let mut attacks = Vec::new();
    for k in 0..20u32 {
        let conn = conn.clone();
        attacks.push(tokio::spawn(async move {
            let (mut s, mut r) = conn.open_bi().await.unwrap();
            let payload: Vec<u8> = if k % 2 == 0 {
                (u32::MAX - k).to_le_bytes().to_vec()
            } else {
                let mut v = 9u32.to_le_bytes().to_vec();
                v.extend((0..9).map(|_| rand::random::<u8>() | 0xC0));
                v
            };
            s.write_all(&payload).await.unwrap();
            let _ = s.finish();
            protocol::codec::read_frame::<_, Answer>(&mut r, 1 << 20).await.unwrap()
        }));
    }
    for a in attacks {
        assert!(matches!(a.await.unwrap(), Err(ApiError::BadFrame(_))));
    }
    assert!(matches!(
        via(
            &good,
            proxy.addr,
            Request::Search {
                text: "".into(),
                cursor: 0,
                limit: 1
            }
        )
        .await,
        Ok(Reply::Files { .. })
    ));
    // The attacker's connection is still usable for a proper request.
    assert!(matches!(
        via(&bad, proxy.addr, Request::ClusterStatus).await,
        Ok(Reply::Status(_))
    ));
    proxy.shutdown().await;
}

/// OwnMany passes the proxy as it is: a full request of 1,024 files fits
/// the proxy's frame limit, the client's write id makes a resend apply
/// once, and a request without one gets one from the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_many_through_the_proxy() {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.wait_agreed_leader(T).await;
    let proxy = Proxy::start(proxy_config(&c, "proxy-1", 0)).await.unwrap();
    let client = ApiClient::new(&c.certs());
    let peer = PeerId([42; 32]);
    sign_up(&client, proxy.addr, "bulk", peer).await;
    let files: Vec<FileMeta> = (0..protocol::tracker_api::MAX_OWN_MANY).map(|i| meta(7, i)).collect();
    let env = client.envelope(Request::OwnMany {
        peer_id: peer,
        files: files.clone(),
    });
    let first = client.send(proxy.addr, "proxy-1", &env).await.unwrap();
    assert_eq!(first, Ok(Reply::Owned { newly_owned: 1024 }));
    assert_eq!(client.send(proxy.addr, "proxy-1", &env).await.unwrap(), first);
    let mut env = client.envelope(Request::OwnMany {
        peer_id: peer,
        files: (1000..1100).map(|i| meta(7, i)).collect(),
    });
    env.write_id = None;
    assert_eq!(
        client.send(proxy.addr, "proxy-1", &env).await.unwrap(),
        Ok(Reply::Owned { newly_owned: 76 })
    );
    match via(
        &client,
        proxy.addr,
        Request::Search {
            text: "c7-f".into(),
            cursor: 0,
            limit: 1000,
        },
    )
    .await
    {
        Ok(Reply::Files { hits, next }) => {
            assert_eq!(hits.len(), 1000);
            assert!(next.is_some());
        }
        other => panic!("search: {other:?}"),
    }
    proxy.shutdown().await;
}
