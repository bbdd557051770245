//! The real `quorrent-proxy` binary stops when told: it learns the leader
//! of a real in-process cluster, then every member is killed while a
//! node's request is being retried by the proxy and its WatchLeader long
//! polls wait on members that no longer answer. SIGTERM then ends it with
//! status 0 within a second, and its stderr (a file) and log hold no
//! colour codes.
//!
//! The bound asserted is generous (a loaded machine); the measured time is
//! printed (`cargo test -p proxy --test stop -- --nocapture`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use protocol::{config::ProxyConfig, tracker_api::Request};
use tracker_cluster::testing::{
    free_port,
    procs::{no_escape_codes, spawn_with_config, term_and_time},
    ApiClient, TestCluster,
};

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_stops_within_a_second_while_every_tracker_is_down() {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.wait_leader(Duration::from_secs(60)).await;
    let port = free_port();
    let cfg = ProxyConfig {
        name: "proxy-1".into(),
        listen: format!("127.0.0.1:{port}"),
        trackers: c.members.clone(),
        log_dir: c.dir.path().join("logs"),
        certs_dir: c.certs(),
        // A node's request keeps being retried for as long as the test runs.
        deadline_ms: 60_000,
        ..Default::default()
    };
    let config = c.dir.path().join("proxy-1.json");
    std::fs::write(&config, serde_json::to_string(&cfg).unwrap()).unwrap();
    let stderr = c.dir.path().join("proxy-1.stderr");
    let mut child = spawn_with_config(env!("CARGO_BIN_EXE_quorrent-proxy"), &config, Some(&stderr));
    let log = cfg.log_dir.join("proxy-1.log");
    wait_until("the proxy to learn the leader", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("leader changed"))
    })
    .await;

    // Every member down: the proxy's connections to them go silent.
    for m in c.members.clone() {
        c.kill(m.id);
    }
    // A node's request, which the proxy retries (no leader to be found).
    let client = Arc::new(ApiClient::new(&c.certs()));
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let pending = {
        let client = client.clone();
        tokio::spawn(async move {
            let env = client.envelope(Request::ClusterStatus);
            client.send(addr, "proxy-1", &env).await
        })
    };
    // Long enough for the long polls to find the members gone and retry.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!pending.is_finished(), "the request is still being retried");
    assert!(child.0.try_wait().unwrap().is_none(), "the proxy runs");

    let (took, status) = tokio::task::block_in_place(|| term_and_time(&mut child.0));
    println!("quorrent-proxy, every tracker down, a request in flight: SIGTERM to exit in {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    no_escape_codes(&stderr);
    no_escape_codes(&log);
    pending.abort();
}
