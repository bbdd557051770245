//! The proxy's HTTP side against a real three-member cluster: `/status`
//! (members, leader, timeline, series), `/readyz`, `/metrics`, JSON errors,
//! and the dashboard in headless Chromium: what a person sees (the members
//! and the leader), then a leader change after the leader is killed,
//! shown without a reload. Screenshots (desktop and phone) go to
//! `target/screenshots/` (README shows copies of them).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use protocol::{
    config::ProxyConfig,
    http::fetch,
    ids::{FileId, PeerId},
    tracker_api::{ApiError, FileMeta, Reply, Request},
};
use proxy::Proxy;
use tracker_cluster::testing::{free_port, ApiClient, TestCluster};

const T: Duration = Duration::from_secs(30);

async fn start() -> (TestCluster, Proxy, u64) {
    let mut c = TestCluster::new(3);
    c.start_all();
    let leader = c.wait_agreed_leader(T).await;
    let proxy = Proxy::start(ProxyConfig {
        name: "proxy-1".into(),
        listen: format!("127.0.0.1:{}", free_port()),
        trackers: c.members.clone(),
        log_dir: c.dir.path().join("logs"),
        certs_dir: c.certs(),
        http_addr: Some("127.0.0.1:0".into()),
        ..Default::default()
    })
    .await
    .expect("proxy starts");
    (c, proxy, leader)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (s, b) = fetch(addr, "GET", path, &[], b"", T, 8 << 20)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let v = serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null);
    (s, v)
}

/// Polls `/status` until `ok` holds for it (bounded).
async fn status_until(addr: SocketAddr, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + T;
    loop {
        let (s, v) = get(addr, "/status").await;
        if s == 200 && ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} never held; last /status: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Some writes through the proxy, so counters and the series move;
/// `n` None: until the task is aborted.
async fn writes(proxy: SocketAddr, certs: &std::path::Path, n: usize) {
    write_load(proxy, certs, "dash", Some(n)).await
}

async fn write_load(proxy: SocketAddr, certs: &std::path::Path, user: &str, n: Option<usize>) {
    let client = ApiClient::new(certs);
    let via = |r: Request| {
        let env = client.envelope(r);
        let client = &client;
        async move {
            client
                .send(proxy, "proxy-1", &env)
                .await
                .unwrap_or_else(|e| Err(ApiError::Unavailable(e)))
        }
    };
    let reg = via(Request::Register {
        user: user.into(),
        password: "pw".into(),
    })
    .await;
    assert!(reg.is_ok(), "{reg:?}");
    match via(Request::Login {
        user: user.into(),
        password: "pw".into(),
    })
    .await
    {
        Ok(Reply::LoggedIn { token, .. }) => *client.token.lock().unwrap() = Some(token),
        other => panic!("login: {other:?}"),
    }
    let peer = PeerId([user.len() as u8; 32]);
    let r = via(Request::AnnouncePeer {
        peer_id: peer,
        addrs: vec!["127.0.0.1:9".parse().unwrap()],
    })
    .await;
    assert!(r.is_ok(), "{r:?}");
    for i in 0..n.unwrap_or(usize::MAX) {
        let mut id = [user.len() as u8; 32];
        id[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let file = FileMeta {
            id: FileId(id),
            name: format!("dashboard-{i}.bin"),
            size: 10,
            chunk_size: 1 << 20,
            chunk_count: 1,
            files: 0,
        };
        let r = via(Request::Own { peer_id: peer, file }).await;
        // The endless load runs across a failover: the proxy's retries
        // hide it, and what counts is what the page shows.
        assert!(r.is_ok() || n.is_none(), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_health_metrics_and_errors() {
    let (c, proxy, leader) = start().await;
    let http = proxy.http_addr.expect("HTTP on");
    writes(proxy.addr, &c.certs(), 20).await;

    let st = status_until(http, "all members up with a leader", |v| {
        v["leader"] == leader
            && v["members"]
                .as_array()
                .is_some_and(|m| m.iter().all(|m| m["up"] == true))
    })
    .await;
    assert_eq!(st["members"].as_array().unwrap().len(), 3);
    assert!(st["timeline"].as_array().is_some_and(|t| !t.is_empty()), "{st}");
    let lead = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == leader)
        .unwrap();
    assert_eq!(lead["report"]["role"], "leader");
    let series = st["proxy"]["series"].as_array().unwrap();
    let written: u64 = series.iter().map(|s| s["writes"].as_u64().unwrap()).sum();
    assert!(written >= 20, "the series counts the writes: {series:?}");
    assert!(st["proxy"]["counters"]["forwarded"].as_u64().unwrap() >= 23);

    // A long poll for a version not yet reached waits (up to a second),
    // one already passed answers at once.
    let v = st["version"].as_u64().unwrap();
    let t0 = Instant::now();
    let (s, _) = get(http, &format!("/status?after={}", v.saturating_sub(1))).await;
    assert_eq!(s, 200);
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "an old version answers at once"
    );

    assert_eq!(get(http, "/livez").await.0, 200);
    let (s, r) = get(http, "/readyz").await;
    assert_eq!(s, 200, "{r}");

    let (s, b) = fetch(http, "GET", "/metrics", &[], b"", T, 8 << 20).await.unwrap();
    assert_eq!(s, 200);
    let page = String::from_utf8(b.to_vec()).unwrap();
    for name in [
        "quorrent_proxy_forwarded_total{kind=\"own\",outcome=\"ok\"}",
        "quorrent_proxy_request_seconds_bucket",
        "quorrent_proxy_added_seconds_bucket",
        "quorrent_proxy_retries_total",
        "quorrent_proxy_leader_changes_total",
        "quorrent_proxy_unavailable_total",
        "quorrent_proxy_connections",
    ] {
        assert!(page.contains(name), "/metrics lacks {name}:\n{page}");
    }

    // Bad input: JSON errors with a 4xx.
    let (s, v) = get(http, "/status?after=soon").await;
    assert_eq!((s, v["error"].as_str()), (400, Some("bad_param")), "{v}");
    let (s, v) = get(http, "/../etc/passwd").await;
    assert_eq!(s, 404, "{v}");
    let (s, _) = fetch(http, "DELETE", "/status", &[], b"", T, 1 << 20).await.unwrap();
    assert_eq!(s, 405);
    let (s, _) = fetch(http, "POST", "/status", &[], &vec![b'{'; 200 << 10], T, 1 << 20)
        .await
        .unwrap();
    assert_eq!(s, 413);

    // With two of three members gone, not ready, and says so.
    let mut c = c;
    for id in c.running_ids().into_iter().take(2) {
        c.kill(id);
    }
    let deadline = Instant::now() + T;
    loop {
        let (s, v) = get(http, "/readyz").await;
        if s == 503 {
            assert_eq!(v["error"], "not_ready");
            break;
        }
        assert!(Instant::now() < deadline, "still ready without a quorum: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser() {
    let (mut c, proxy, leader) = start().await;
    let http = proxy.http_addr.expect("HTTP on");
    writes(proxy.addr, &c.certs(), 30).await;
    // A steady load from here on, so the page's plots have something to show.
    let load = tokio::spawn({
        let (addr, certs) = (proxy.addr, c.certs());
        async move { write_load(addr, &certs, "steady", None).await }
    });
    let url = format!("http://{http}/");
    let browser = webtest::launch().await;

    // The members, all up, and the leader, marked in the table and the badge.
    let (browser, ()) = webtest::steps(browser, move |b| {
        b.goto(&url)?;
        b.wait_for(
            &format!(
                "document.querySelectorAll('tr.member[data-up=\"true\"]').length === 3 \
                 && document.querySelector('#leader').dataset.leader === '{leader}' \
                 && document.querySelector('tr.member[data-id=\"{leader}\"]').dataset.role === 'leader'"
            ),
            T,
        )?;
        let badge = b.text("#leader")?;
        assert!(badge.contains(&format!("tracker {leader}")), "badge: {badge}");
        let rows = b.text("#members tbody")?;
        assert_eq!(rows.matches("follower").count(), 2, "{rows}");
        // The write series reached the page.
        b.wait_for("Number(document.querySelector('#rate-peak').textContent) > 0", T)?;
        Ok(())
    })
    .await;

    // Kill the leader: the page shows another leader, and the old one
    // down, without a reload.
    let killed = Instant::now();
    c.kill(leader);
    let (browser, seen) = webtest::steps(browser, move |b| {
        let v = b.wait_for(
            &format!(
                "(() => {{ const l = document.querySelector('#leader').dataset.leader; \
                 return l !== '' && l !== '{leader}' ? l : false; }})()"
            ),
            T,
        )?;
        let seen = killed.elapsed();
        b.wait_for(
            &format!("document.querySelector('tr.member[data-id=\"{leader}\"]').dataset.up === 'false'"),
            T,
        )?;
        // Writes go on through the new leader, and the page shows them.
        b.wait_for(
            "Number(document.querySelector('#rate-now').textContent.replace(/,/g, '')) > 0",
            T,
        )?;
        let timeline = b.text("#timeline")?;
        assert!(
            timeline.lines().count() >= 2,
            "the timeline shows both leaders: {timeline}"
        );
        assert!(b.eval("document.body.dataset.version !== undefined")? == serde_json::Value::Bool(true));
        eprintln!("dashboard showed new leader {v} {} ms after the kill", seen.as_millis());
        b.screenshot(webtest::screenshots_dir().join("dashboard.png"))?;
        Ok(seen)
    })
    .await;
    assert!(seen < T);

    // A phone-sized screen: nothing wider than the screen but the
    // members table, which scrolls inside its box.
    load.abort();
    let (_browser, ()) = webtest::steps(browser, |b| {
        b.set_viewport(390, 844, true)?;
        b.wait_for("document.documentElement.scrollWidth <= 391", T)?;
        b.screenshot(webtest::screenshots_dir().join("dashboard-phone.png"))?;
        Ok(())
    })
    .await;
    proxy.shutdown().await;
}
