//! A member's HTTP endpoints against a real three-member cluster:
//! `/livez`, `/readyz` (leader and follower, and a member whose leader
//! is gone), `/status` (the same figures as `Request::MemberStatus`),
//! `/metrics` in Prometheus text with the figures the issue names, and
//! JSON errors for what the server does not expect.

use std::{net::SocketAddr, time::Duration};

use protocol::{
    http::fetch,
    ids::{FileId, PeerId},
    tracker_api::{FileMeta, MemberReport, Reply, Request},
};
use tracker_cluster::testing::{ApiClient, TestCluster};

const T: Duration = Duration::from_secs(20);

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, body) = fetch(addr, "GET", path, &[], b"", Duration::from_secs(10), 8 << 20)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (status, String::from_utf8(body.to_vec()).expect("UTF-8 body"))
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The value of an unlabelled sample `name` in a Prometheus text page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_status_and_metrics() {
    let mut c = TestCluster::new(3);
    c.start_all();
    let leader = c.wait_agreed_leader(T).await;
    let members = c.api_addrs();
    let addrs: std::collections::BTreeMap<u64, SocketAddr> = c
        .running_ids()
        .into_iter()
        .map(|id| (id, c.tracker(id).http_addr.expect("HTTP is on in tests")))
        .collect();
    let http = |id: u64| addrs[&id];
    let follower = c.running_ids().into_iter().find(|i| *i != leader).unwrap();

    // Some registry content and API traffic to count.
    let alice = ApiClient::new(&c.certs());
    alice.sign_up(&members, "alice", "correct horse").await;
    let peer = PeerId([1; 32]);
    alice.announce(&members, peer).await;
    let file = FileMeta {
        id: FileId([7; 32]),
        name: "metrics.iso".into(),
        size: 10,
        chunk_size: 1 << 20,
        chunk_count: 1,
        files: 0,
    };
    let own = alice.envelope(Request::Own { peer_id: peer, file });
    assert!(matches!(alice.leader_send(&members, &own, T).await, Ok(Reply::Done)));

    for id in [leader, follower] {
        let (s, b) = get(http(id), "/livez").await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(json(&b)["ok"], true);
        // A follower may need a moment to hear the leader after the
        // election; bounded.
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let (s, b) = get(http(id), "/readyz").await;
            if s == 200 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "member {id} never ready: {b}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // /status: the leader's own report, with its followers' lag, and the
    // same figures as MemberStatus over the API.
    let (s, b) = get(http(leader), "/status").await;
    assert_eq!(s, 200);
    let st: MemberReport = serde_json::from_str(&b).expect("a MemberReport");
    assert_eq!((st.id, st.role.as_str(), st.leader), (leader, "leader", Some(leader)));
    assert_eq!(st.followers.len(), 2, "{st:?}");
    assert!(st.commit_index.is_some() && st.applied_index.is_some(), "{st:?}");
    assert_eq!((st.registry.users, st.registry.files, st.registry.owners), (1, 1, 1));
    let via_api = alice
        .send(members[&follower], "tracker", &alice.envelope(Request::MemberStatus))
        .await
        .expect("MemberStatus");
    let Ok(Reply::Member(f)) = via_api else {
        panic!("{via_api:?}")
    };
    assert_eq!((f.id, f.role.as_str(), f.leader), (follower, "follower", Some(leader)));
    assert!(f.followers.is_empty());

    // /metrics: Prometheus text with the figures the issue names.
    let (s, page) = get(http(leader), "/metrics").await;
    assert_eq!(s, 200);
    for name in [
        "quorrent_tracker_raft_term",
        "quorrent_tracker_raft_is_leader",
        "quorrent_tracker_raft_commit_index",
        "quorrent_tracker_raft_applied_index",
        "quorrent_tracker_raft_replication_lag",
        "quorrent_tracker_elections_seen_total",
        "quorrent_tracker_log_fsync_seconds_bucket",
        "quorrent_tracker_batch_writes_bucket",
        "quorrent_tracker_snapshot_build_seconds_count",
        "quorrent_tracker_request_seconds_bucket",
        "quorrent_tracker_requests_pending",
        "quorrent_tracker_registry_files",
        "quorrent_tracker_registry_live_peers",
    ] {
        assert!(page.contains(name), "/metrics lacks {name}:\n{page}");
    }
    assert_eq!(sample(&page, "quorrent_tracker_raft_is_leader"), Some(1.0));
    assert_eq!(sample(&page, "quorrent_tracker_registry_files"), Some(1.0));
    assert!(
        page.lines()
            .any(|l| l.starts_with("quorrent_tracker_requests_total{kind=\"own\",outcome=\"ok\"}")),
        "no counted Own:\n{page}"
    );
    // Exported (the first election may end before the member's watcher
    // starts, so its value may still be 0).
    assert!(
        sample(&page, "quorrent_tracker_elections_seen_total").is_some(),
        "{page}"
    );

    // What the server does not expect: a JSON error and a 4xx.
    let (s, b) = get(http(leader), "/nope").await;
    assert_eq!(s, 404);
    assert_eq!(json(&b)["error"], "not_found");
    let (s, b) = fetch(http(leader), "POST", "/status", &[], b"{}", T, 1 << 20)
        .await
        .unwrap();
    assert_eq!(s, 405, "{b:?}");
    let big = vec![b'x'; 1 << 20];
    let (s, _) = fetch(http(leader), "POST", "/status", &[], &big, T, 1 << 20)
        .await
        .unwrap();
    assert_eq!(s, 413);

    // Without a leader (two of three gone), the survivor is alive but not
    // ready, and says why.
    let others: Vec<u64> = c.running_ids().into_iter().filter(|i| *i != follower).collect();
    for id in others {
        c.kill(id);
    }
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (s, b) = get(http(follower), "/readyz").await;
        if s == 503 {
            assert_eq!(json(&b)["error"], "not_ready");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready without a leader: {b}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(http(follower), "/livez").await.0, 200);
}
