//! Time in the replicated state is the log's, not a leader's: a leader
//! whose clock jumps forward and then back (an injected clock, not the
//! machine's) cannot move the state machine's clock backwards, sessions
//! count their lifetime and expire by that clock, and exactly-once
//! records survive the jump.

use std::time::Duration;

use protocol::{
    ids::{FileId, PeerId},
    tracker_api::{ApiError, FileMeta, Reply, Request},
};
use tracker_cluster::testing::{ApiClient, TestCluster};

const T: Duration = Duration::from_secs(20);
const TTL_SECS: u64 = 600;
const FORWARD_MS: i64 = 30 * 60 * 1000;

fn clocks(c: &TestCluster) -> Vec<u64> {
    c.running_ids()
        .into_iter()
        .map(|id| c.tracker(id).app.state.read().registry.clock_ms())
        .collect()
}

/// Waits until every member has applied what the leader has.
async fn settle(c: &TestCluster, leader: u64) {
    let index = c.tracker(leader).app.metrics().last_applied.map_or(0, |l| l.index);
    for id in c.running_ids() {
        c.wait_applied(id, index, T).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_clock_forward_then_back() {
    let mut c = TestCluster::new(3);
    for cfg in c.configs.values_mut() {
        cfg.session_ttl_secs = TTL_SECS;
    }
    c.start_all();
    let leader = c.wait_agreed_leader(T).await;
    let members = c.api_addrs();
    let clock = c.tracker(leader).app.clock.clone();

    // Alice owns a file and gives it up; the Own is retried at the end.
    let alice = ApiClient::new(&c.certs());
    alice.sign_up(&members, "alice", "correct horse").await;
    let peer = PeerId([1; 32]);
    alice.announce(&members, peer).await;
    let file = FileMeta {
        id: FileId([7; 32]),
        name: "clock.iso".into(),
        size: 10,
        chunk_size: 1 << 20,
        chunk_count: 1,
        files: 0,
    };
    let own = alice.envelope(Request::Own {
        peer_id: peer,
        file: file.clone(),
    });
    assert_eq!(alice.leader_send(&members, &own, T).await, Ok(Reply::Done));
    // The Disown comes from another client of hers, so that the Own stays
    // her first client's last write (the one its record answers).
    let other = ApiClient::new(&c.certs());
    *other.token.lock().unwrap() = alice.token.lock().unwrap().clone();
    let disown = other.envelope(Request::Disown {
        peer_id: peer,
        file_id: file.id,
    });
    assert_eq!(other.leader_send(&members, &disown, T).await, Ok(Reply::Done));
    let before = protocol::unix_ms();

    // The leader's clock runs half an hour ahead for one write.
    clock.set_skew_ms(FORWARD_MS);
    let carol = ApiClient::new(&c.certs());
    let env = carol.envelope(Request::Register {
        user: "carol".into(),
        password: "correct horse".into(),
    });
    assert!(matches!(
        carol.leader_send(&members, &env, T).await,
        Ok(Reply::Registered { .. })
    ));
    settle(&c, leader).await;
    let forward = clocks(&c);
    assert!(
        forward.iter().all(|&t| t >= before + FORWARD_MS as u64),
        "clocks {forward:?} did not follow the batch"
    );

    // Back to the right time: the replicated clock does not go back.
    clock.set_skew_ms(0);
    let bob = ApiClient::new(&c.certs());
    bob.sign_up(&members, "bob", "correct horse").await;
    // Bob's session counts its lifetime from the replicated clock: had it
    // counted from the leader's (now half an hour behind), it would have
    // expired before it could be used (TTL is ten minutes).
    bob.announce(&members, PeerId([2; 32])).await;
    settle(&c, leader).await;
    let after = clocks(&c);
    for (a, f) in after.iter().zip(&forward) {
        assert!(a >= f, "a member's clock went back: {f} -> {a}");
    }
    assert!(after.windows(2).all(|w| w[0] == w[1]), "members disagree: {after:?}");

    // Alice's session expired by replicated time (created more than TTL
    // before it) and stays expired although the leader's clock is back.
    let search = alice.envelope(Request::Search {
        text: "clock".into(),
        cursor: 0,
        limit: 10,
    });
    assert_eq!(
        alice.leader_send(&members, &search, T).await,
        Err(ApiError::NotLoggedIn)
    );

    // The retried Own is answered from the client table (applied once):
    // the file stays without owners.
    assert_eq!(alice.leader_send(&members, &own, T).await, Ok(Reply::Done));
    settle(&c, leader).await;
    for id in c.running_ids() {
        let st = c.tracker(id).app.state.read();
        let (_, owners) = st.registry.owners(&file.id, |_| true).unwrap();
        assert!(owners.is_empty(), "member {id}: the retry was applied again");
    }
}
