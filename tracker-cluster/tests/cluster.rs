//! The tracker cluster end to end: real openraft, real QUIC on loopback,
//! real redb stores; members run in-process on their own runtimes so a
//! "kill" drops one abruptly.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use protocol::{
    ids::{FileId, PeerId},
    tracker_api::{ApiError, FileMeta, Reply, Request},
};
use tracker_cluster::testing::{ApiClient, TestCluster};

const T: Duration = Duration::from_secs(20);

fn meta(name: &str, n: u64) -> FileMeta {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_le_bytes());
    id[8..16].copy_from_slice(&blake3::hash(name.as_bytes()).as_bytes()[..8]);
    FileMeta {
        id: FileId(id),
        name: name.into(),
        size: 1000,
        chunk_size: 1 << 20,
        chunk_count: 1,
        files: 0,
    }
}

/// Signs a client up and announces a peer for it.
async fn peer_client(
    c: &TestCluster,
    members: &BTreeMap<u64, SocketAddr>,
    user: &str,
    peer: u8,
) -> (ApiClient, PeerId) {
    let client = ApiClient::new(&c.certs());
    client.sign_up(members, user, "correct horse").await;
    let peer_id = PeerId([peer; 32]);
    let env = client.envelope(Request::AnnouncePeer {
        peer_id,
        addrs: vec!["127.0.0.1:9".parse().unwrap()],
    });
    assert_eq!(client.leader_send(members, &env, T).await, Ok(Reply::Done));
    (client, peer_id)
}

async fn own(
    client: &ApiClient,
    members: &BTreeMap<u64, SocketAddr>,
    peer_id: PeerId,
    file: FileMeta,
) -> Result<Reply, ApiError> {
    let env = client.envelope(Request::Own { peer_id, file });
    client.leader_send(members, &env, T).await
}

fn file_count(c: &TestCluster, id: u64) -> usize {
    c.tracker(id).app.state.read().registry.file_count()
}

/// Three members elect a leader; writes through it reach every member,
/// and every member ends in the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_and_replicate() {
    let mut c = TestCluster::new(3);
    c.start_all();
    let leader = c.wait_agreed_leader(T).await;
    let members = c.api_addrs();
    let (client, peer) = peer_client(&c, &members, "alice", 1).await;
    for i in 0..20 {
        assert_eq!(
            own(&client, &members, peer, meta(&format!("file-{i}.iso"), i)).await,
            Ok(Reply::Done)
        );
    }
    // A follower refuses and names the leader.
    let follower = *members.keys().find(|id| **id != leader).unwrap();
    let env = client.envelope(Request::Search {
        text: "file".into(),
        cursor: 0,
        limit: 10,
    });
    match client
        .send(members[&follower], &format!("tracker-{follower}"), &env)
        .await
        .unwrap()
    {
        Err(ApiError::NotLeader {
            leader: Some(l),
            addr: Some(a),
        }) => {
            assert_eq!(l, leader);
            assert_eq!(a, members[&leader].to_string());
        }
        other => panic!("follower answered {other:?}"),
    }
    let applied = c.tracker(leader).app.metrics().last_applied.unwrap().index;
    for id in 1..=3 {
        c.wait_applied(id, applied, T).await;
        assert_eq!(file_count(&c, id), 20, "member {id}");
    }
    let d = |id| c.tracker(id).app.state.read().registry.digest();
    assert_eq!(d(1), d(2));
    assert_eq!(d(2), d(3));
}

/// The leader dies abruptly: a new leader takes writes within 3 s and
/// every write acknowledged before the kill is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_nothing_acknowledged_is_lost() {
    let mut c = TestCluster::new(3);
    c.start_all();
    let old = c.wait_agreed_leader(T).await;
    let members = c.api_addrs();
    let (client, peer) = peer_client(&c, &members, "bob", 2).await;
    for i in 0..50 {
        assert_eq!(
            own(&client, &members, peer, meta(&format!("before-{i}"), i)).await,
            Ok(Reply::Done)
        );
    }
    c.kill(old);
    let killed = std::time::Instant::now();
    let survivors: BTreeMap<u64, SocketAddr> = members
        .iter()
        .filter(|(id, _)| **id != old)
        .map(|(k, v)| (*k, *v))
        .collect();
    assert_eq!(
        own(&client, &survivors, peer, meta("after", 1000)).await,
        Ok(Reply::Done)
    );
    let pause = killed.elapsed();
    assert!(
        pause < Duration::from_secs(3),
        "first write after the kill took {pause:?}"
    );
    let env = client.envelope(Request::Search {
        text: "before-".into(),
        cursor: 0,
        limit: 1000,
    });
    match client.leader_send(&survivors, &env, T).await {
        Ok(Reply::Files { hits, .. }) => assert_eq!(hits.len(), 50),
        other => panic!("search: {other:?}"),
    }
}

/// A stopped member restarted from its data folder catches up; with the
/// log compacted meanwhile, it catches up by snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_catches_up_by_snapshot() {
    let mut c = TestCluster::new(3);
    for cfg in c.configs.values_mut() {
        cfg.raft.snapshot_every = 20;
        cfg.raft.keep_after_snapshot = 0;
    }
    c.start_all();
    let leader = c.wait_agreed_leader(T).await;
    let members = c.api_addrs();
    let (client, peer) = peer_client(&c, &members, "carol", 3).await;
    let lagging = *members.keys().find(|id| **id != leader).unwrap();
    c.kill(lagging);
    let live: BTreeMap<u64, SocketAddr> = members
        .iter()
        .filter(|(id, _)| **id != lagging)
        .map(|(k, v)| (*k, *v))
        .collect();
    for i in 0..120 {
        assert_eq!(
            own(&client, &live, peer, meta(&format!("while-away-{i}"), i)).await,
            Ok(Reply::Done)
        );
    }
    let m = c.tracker(leader).app.metrics();
    let purged = m.purged.expect("the leader compacted its log").index;
    assert!(purged > 10, "purged only up to {purged}");
    c.start(lagging);
    c.wait_applied(lagging, m.last_applied.unwrap().index, T).await;
    assert_eq!(file_count(&c, lagging), 120);
    assert!(
        c.tracker(lagging).app.metrics().snapshot.is_some(),
        "caught up without a snapshot"
    );
    assert_eq!(
        c.tracker(lagging).app.state.read().registry.digest(),
        c.tracker(leader).app.state.read().registry.digest()
    );
}

/// A member is added (learner, then voter) and another removed, while
/// writes go on; the new member ends with everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_under_writes() {
    let mut c = TestCluster::new(3);
    c.start_all();
    let leader = c.wait_agreed_leader(T).await;
    let mut members = c.api_addrs();
    let (client, peer) = peer_client(&c, &members, "dave", 4).await;
    let new = c.prepare_joiner(4);
    c.start(4);
    members = c.api_addrs();

    let writer_members = members.clone();
    let certs = c.certs();
    let writes = tokio::spawn(async move {
        let w = ApiClient::new(&certs);
        w.sign_up(&writer_members, "erin", "pw").await;
        let env = w.envelope(Request::AnnouncePeer {
            peer_id: PeerId([5; 32]),
            addrs: vec![],
        });
        assert_eq!(w.leader_send(&writer_members, &env, T).await, Ok(Reply::Done));
        for i in 0..60 {
            let env = w.envelope(Request::Own {
                peer_id: PeerId([5; 32]),
                file: meta(&format!("during-{i}"), 10_000 + i),
            });
            assert_eq!(
                w.leader_send(&writer_members, &env, T).await,
                Ok(Reply::Done),
                "write {i}"
            );
        }
    });

    let app = c.tracker(leader).app.clone();
    let req = tracker_cluster::network::management::AdminRequest::Add {
        id: 4,
        api: new.api.clone(),
        raft: new.raft.clone(),
    };
    let status = tracker_cluster::network::management::handle(&app, req)
        .await
        .expect("add");
    let tracker_cluster::network::management::AdminReply::Status(s) = status else {
        panic!("not leader")
    };
    assert!(s.members.iter().any(|m| m.id == 4 && m.voter), "{s:?}");
    let victim = *[1, 2, 3].iter().find(|id| **id != leader).unwrap();
    let req = tracker_cluster::network::management::AdminRequest::Remove { id: victim };
    tracker_cluster::network::management::handle(&app, req)
        .await
        .expect("remove");
    writes.await.unwrap();
    assert_eq!(
        own(&client, &members, peer, meta("last", 99_999)).await,
        Ok(Reply::Done)
    );

    let voters: Vec<u64> = app.metrics().membership_config.membership().voter_ids().collect();
    assert!(voters.contains(&4) && !voters.contains(&victim), "{voters:?}");
    let applied = app.metrics().last_applied.unwrap().index;
    c.wait_applied(4, applied, T).await;
    assert_eq!(file_count(&c, 4), 61);
}

/// Exactly-once over the wire: the same write sent twice (same client id
/// and sequence number) is applied once and answered the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_write_applied_once() {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.wait_agreed_leader(T).await;
    let members = c.api_addrs();
    let client = ApiClient::new(&c.certs());
    let env = client.envelope(Request::Register {
        user: "frank".into(),
        password: "pw".into(),
    });
    let first = client.leader_send(&members, &env, T).await;
    let again = client.leader_send(&members, &env, T).await;
    assert_eq!(first, Ok(Reply::Registered { user: "frank".into() }));
    assert_eq!(again, first);
    // A new write id for the same user is a second registration: refused.
    let env = client.envelope(Request::Register {
        user: "frank".into(),
        password: "pw".into(),
    });
    assert_eq!(
        client.leader_send(&members, &env, T).await,
        Err(ApiError::UserExists("frank".into()))
    );
}

/// OwnMany over the wire: one write for many files, answered with the
/// count of new ones, replicated to every member, applied once when sent
/// twice, refused whole (and checked on the leader before it costs a Raft
/// entry) when one file is bad; requests past the bound are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_many_is_one_exactly_once_write() {
    let mut c = TestCluster::new(3);
    for cfg in c.configs.values_mut() {
        // Two full requests may not share an entry (an OwnMany weighs one
        // per file in the batcher).
        cfg.max_batch = 1024;
    }
    c.start_all();
    c.wait_agreed_leader(T).await;
    let members = c.api_addrs();
    let (client, peer_id) = peer_client(&c, &members, "grace", 3).await;
    let batch =
        |from: u64, to: u64| -> Vec<FileMeta> { (from..to).map(|n| meta(&format!("bulk-{n}.bin"), n)).collect() };
    let env = client.envelope(Request::OwnMany {
        peer_id,
        files: batch(0, 1024),
    });
    let first = client.leader_send(&members, &env, T).await;
    assert_eq!(first, Ok(Reply::Owned { newly_owned: 1024 }));
    // Its retry is answered the same and changes nothing.
    assert_eq!(client.leader_send(&members, &env, T).await, first);
    // Two full requests at once go into two entries. They come from two
    // writers of the same session: one writer's sequence numbers are an
    // order, so its second write may not overtake its first.
    let other = ApiClient::new(&c.certs());
    *other.token.lock().unwrap() = client.token.lock().unwrap().clone();
    let (a, b) = (
        client.envelope(Request::OwnMany {
            peer_id,
            files: batch(1000, 2024),
        }),
        other.envelope(Request::OwnMany {
            peer_id,
            files: batch(2024, 3048),
        }),
    );
    let (ra, rb) = tokio::join!(client.leader_send(&members, &a, T), other.leader_send(&members, &b, T));
    assert_eq!(ra, Ok(Reply::Owned { newly_owned: 1000 }));
    assert_eq!(rb, Ok(Reply::Owned { newly_owned: 1024 }));
    // One bad file refuses the request, naming it, before it is proposed.
    let mut files = batch(4000, 4010);
    files[7].chunk_count = 99;
    let env = client.envelope(Request::OwnMany { peer_id, files });
    match client.leader_send(&members, &env, T).await {
        Err(ApiError::Invalid(m)) => assert!(m.starts_with("file 7 "), "{m}"),
        other => panic!("{other:?}"),
    }
    let env = client.envelope(Request::OwnMany {
        peer_id,
        files: batch(5000, 5000 + protocol::tracker_api::MAX_OWN_MANY as u64 + 1),
    });
    assert!(matches!(
        client.leader_send(&members, &env, T).await,
        Err(ApiError::Invalid(_))
    ));
    let leader = c.wait_agreed_leader(T).await;
    let index = c.tracker(leader).app.state.read().last_applied.unwrap().index;
    for id in 1..=3 {
        c.wait_applied(id, index, T).await;
        assert_eq!(file_count(&c, id), 3048, "member {id}");
    }
    let env = client.envelope(Request::Search {
        text: "BULK-204".into(),
        cursor: 0,
        limit: 100,
    });
    match client.leader_send(&members, &env, T).await {
        Ok(Reply::Files { hits, .. }) => assert_eq!(hits.len(), 11),
        other => panic!("search: {other:?}"),
    }
}

/// Passwords are stored as argon2id hashes: no file of any member holds
/// the plaintext, not the log, not a snapshot. Wrong password and unknown
/// user get the same answer; repeated failures are throttled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_password_on_disk() {
    let mut c = TestCluster::new(3);
    c.start_all();
    let leader = c.wait_agreed_leader(T).await;
    let members = c.api_addrs();
    let secret = "Plaintext-Secret-8c1e";
    let client = ApiClient::new(&c.certs());
    client.sign_up(&members, "grace", secret).await;
    c.tracker(leader).app.raft.trigger().snapshot().await.unwrap();
    let mut rx = c.tracker(leader).app.raft.metrics();
    rx.wait_for(|m| m.snapshot.is_some()).await.unwrap();
    let mut seen_argon = false;
    for id in 1..=3 {
        for f in std::fs::read_dir(c.dir.path().join(format!("data-{id}"))).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "plaintext password on disk"
            );
            seen_argon |= bytes.windows(9).any(|w| w == b"$argon2id");
        }
    }
    assert!(seen_argon, "no argon2id hash found on disk");

    let wrong = client.envelope(Request::Login {
        user: "grace".into(),
        password: "nope".into(),
    });
    let unknown = client.envelope(Request::Login {
        user: "nobody".into(),
        password: "nope".into(),
    });
    assert_eq!(
        client.leader_send(&members, &wrong, T).await,
        Err(ApiError::BadCredentials)
    );
    assert_eq!(
        client.leader_send(&members, &unknown, T).await,
        Err(ApiError::BadCredentials)
    );
    let mut throttled = false;
    for _ in 0..6 {
        let env = client.envelope(Request::Login {
            user: "grace".into(),
            password: "nope".into(),
        });
        if let Err(ApiError::TooManyAttempts { .. }) = client.leader_send(&members, &env, T).await {
            throttled = true;
        }
    }
    assert!(throttled, "repeated failures were never slowed down");
}

/// Malformed and oversized frames get error answers; the connection
/// stays usable and other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_answered_and_harmless() {
    let mut c = TestCluster::new(3);
    c.start_all();
    let leader = c.wait_agreed_leader(T).await;
    let members = c.api_addrs();
    let other = ApiClient::new(&c.certs());
    other.sign_up(&members, "heidi", "pw").await;
    let raw = ApiClient::new(&c.certs());
    let conn = raw.conn(members[&leader], &format!("tracker-{leader}")).await.unwrap();
    // Garbage that does not decode.
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    s.write_all(&[5, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 0xff]).await.unwrap();
    s.finish().unwrap();
    let a: protocol::tracker_api::Answer = protocol::codec::read_frame(&mut r, 1 << 20).await.unwrap();
    assert!(matches!(a, Err(ApiError::BadFrame(_))), "{a:?}");
    // A length prefix of 2 GiB: refused before anything is allocated.
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    s.write_all(&(2u32 << 30).to_le_bytes()).await.unwrap();
    let a: protocol::tracker_api::Answer = protocol::codec::read_frame(&mut r, 1 << 20).await.unwrap();
    match a {
        Err(ApiError::BadFrame(m)) => assert!(m.contains("exceeds the limit"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Bad names are refused with the reason.
    let env = raw.envelope(Request::Register {
        user: "bad\u{7}name".into(),
        password: "pw".into(),
    });
    assert!(matches!(
        raw.leader_send(&members, &env, T).await,
        Err(ApiError::InvalidName(_))
    ));
    let env = raw.envelope(Request::Register {
        user: "".into(),
        password: "pw".into(),
    });
    assert!(matches!(
        raw.leader_send(&members, &env, T).await,
        Err(ApiError::InvalidName(_))
    ));
    // The same connection still works, and so does everyone else.
    let env = raw.envelope(Request::ClusterStatus);
    assert!(matches!(
        raw.send(members[&leader], &format!("tracker-{leader}"), &env)
            .await
            .unwrap(),
        Ok(Reply::Status(_))
    ));
    let env = other.envelope(Request::Search {
        text: "".into(),
        cursor: 0,
        limit: 5,
    });
    assert!(matches!(
        other.leader_send(&members, &env, T).await,
        Ok(Reply::Files { .. })
    ));
    // A client speaking another protocol is refused at the handshake.
    {
        use protocol::{quic, tls};
        let roots = tls::load_ca(&c.certs()).unwrap();
        let cfg = tls::quic_client(
            tls::client_crypto(roots, None, b"bogus/1").unwrap(),
            quic::control_transport(Duration::from_secs(2)),
        )
        .unwrap();
        let res = raw
            .endpoint
            .connect_with(cfg, members[&leader], &format!("tracker-{leader}"))
            .unwrap()
            .await;
        assert!(res.is_err(), "a connection with an unknown ALPN was accepted");
    }
    // Unauthenticated requests get "not logged in".
    let env = raw.envelope(Request::Search {
        text: "".into(),
        cursor: 0,
        limit: 5,
    });
    assert_eq!(raw.leader_send(&members, &env, T).await, Err(ApiError::NotLoggedIn));
}

/// Mutual TLS on Raft: a client holding a certificate from another CA,
/// or none, cannot talk Raft to a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_requires_cluster_certificate() {
    use protocol::{quic, tls};
    let mut c = TestCluster::new(1);
    c.start_all();
    c.wait_agreed_leader(T).await;
    let raft_addr: SocketAddr = c.members[0].raft.parse().unwrap();
    let roots = tls::load_ca(&c.certs()).unwrap();
    let rogue_dir = tempfile::tempdir().unwrap();
    tls::generate(
        rogue_dir.path(),
        &rogue_dir.path().join("ca"),
        &["tracker-9".into()],
        &[],
    )
    .unwrap();
    let rogue = tls::load_identity(rogue_dir.path(), "tracker-9").unwrap();
    let ep = quic::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    for id in [Some(&rogue), None] {
        let cfg = tls::quic_client(
            tls::client_crypto(roots.clone(), id, tracker_cluster::network::RAFT_ALPN).unwrap(),
            quic::control_transport(Duration::from_secs(2)),
        )
        .unwrap();
        let attempt = async {
            let conn = ep
                .connect_with(cfg, raft_addr, "tracker-1")
                .unwrap()
                .await
                .map_err(|e| e.to_string())?;
            // TLS 1.3: the server may reject the client certificate after
            // the client thinks the handshake is done; the first stream fails.
            let req = tracker_cluster::network::RaftRequest::Admin(
                tracker_cluster::network::management::AdminRequest::Status,
            );
            protocol::codec::call::<_, tracker_cluster::network::RaftReply>(&conn, &req, 1 << 20)
                .await
                .map_err(|e| e.to_string())
        };
        let res = tokio::time::timeout(Duration::from_secs(5), attempt).await;
        assert!(
            !matches!(res, Ok(Ok(_))),
            "raft accepted a client with {}",
            if id.is_some() {
                "a foreign certificate"
            } else {
                "no certificate"
            }
        );
    }
    // A member's own certificate works (the admin one is from the same CA).
    let admin = tls::load_identity(&c.certs(), "admin").unwrap();
    let net = tracker_cluster::network::raft_network_impl::Network::new(
        ep.clone(),
        tracker_cluster::raft_client(roots, &admin, Duration::from_secs(2)).unwrap(),
        1 << 20,
    );
    let s = tracker_cluster::network::management::status_of_member(&net, 1, &c.members[0].raft, Duration::from_secs(5))
        .await;
    assert_eq!(s.unwrap().leader, Some(1));
}
