//! The real `quorrent-tracker` binary stops when told: SIGTERM while the
//! other members are down (so it keeps electing, its vote requests waiting
//! on members that never answer), or to the leader while its followers are
//! frozen (SIGSTOP: replication in flight, connections that never answer
//! a close), ends it with status 0 within a second, and its stderr, a file
//! here, and its log hold no colour codes.
//!
//! The bound asserted is generous (a loaded machine); the measured time is
//! printed (`cargo test -p tracker-cluster --test stop -- --nocapture`).

use std::time::{Duration, Instant};

use protocol::tracker_api::{Reply, Request};
use tracker_cluster::testing::{
    procs::{no_escape_codes, signal, spawn_with_config, term_and_time, ChildGuard},
    ApiClient, TestCluster,
};

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tracker_stops_within_a_second_while_the_other_members_are_down() {
    let c = TestCluster::new(3);
    let cfg = c.configs[&1].clone();
    let dir = c.dir.path();
    let config = dir.join("tracker-1.json");
    std::fs::write(&config, serde_json::to_string(&cfg).unwrap()).unwrap();
    let stderr = dir.join("tracker-1.stderr");
    let mut child = spawn_with_config(env!("CARGO_BIN_EXE_quorrent-tracker"), &config, Some(&stderr));
    let log = cfg.log_dir.join("tracker-1.log");
    wait_until("the member to start", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("tracker member started"))
    });
    // A few election timeouts: elections are under way, their vote
    // requests waiting on members that are not there.
    std::thread::sleep(Duration::from_millis(3 * cfg.raft.election_max_ms).max(Duration::from_millis(1500)));
    assert!(child.0.try_wait().unwrap().is_none(), "the member runs");

    let (took, status) = term_and_time(&mut child.0);
    println!("quorrent-tracker, the other members down: SIGTERM to exit in {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    no_escape_codes(&stderr);
    no_escape_codes(&log);
}

/// Starts member `id` of `c` as the real binary, its stderr in a file.
fn spawn_member(c: &TestCluster, id: u64) -> ChildGuard {
    let dir = c.dir.path();
    let config = dir.join(format!("tracker-{id}.json"));
    std::fs::write(&config, serde_json::to_string(&c.configs[&id]).unwrap()).unwrap();
    spawn_with_config(
        env!("CARGO_BIN_EXE_quorrent-tracker"),
        &config,
        Some(&dir.join(format!("tracker-{id}.stderr"))),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_stops_within_a_second_while_its_followers_are_frozen() {
    let c = TestCluster::new(3);
    let mut members: std::collections::BTreeMap<u64, ChildGuard> =
        (1..=3).map(|id| (id, spawn_member(&c, id))).collect();
    let client = ApiClient::new(&c.certs());
    // Any member answers the status, also before a leader is known: long
    // poll (WatchLeader) until one names a leader.
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut term = 0;
    let leader = loop {
        assert!(tokio::time::Instant::now() < until, "no leader elected");
        let env = client.envelope(Request::WatchLeader {
            leader: None,
            term,
            wait_ms: 2_000,
        });
        match client.leader_send(&c.api_addrs(), &env, Duration::from_secs(60)).await {
            Ok(Reply::Status(s)) => match s.leader {
                Some(l) => break l,
                None => term = s.term,
            },
            other => panic!("cluster status: {other:?}"),
        }
    };
    // A write replicated, so that the leader's connections to both
    // followers are established before they freeze.
    let env = client.envelope(Request::Register {
        user: "someone".into(),
        password: "pw".into(),
    });
    client
        .leader_send(&c.api_addrs(), &env, Duration::from_secs(60))
        .await
        .expect("register");
    for (id, g) in &members {
        if *id != leader {
            signal(g.0.id(), "-STOP");
        }
    }
    // Heartbeats and the next elections' messages wait on frozen peers.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let g = members.get_mut(&leader).unwrap();
    let (took, status) = term_and_time(&mut g.0);
    println!("quorrent-tracker, leader, followers frozen: SIGTERM to exit in {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    no_escape_codes(&c.dir.path().join(format!("tracker-{leader}.stderr")));
    no_escape_codes(&c.configs[&leader].log_dir.join(format!("tracker-{leader}.log")));
    // (The guards SIGKILL the frozen followers.)
    members.clear();
}
