//! Abuse of writes, end to end (issue 7, part 3): Register throttled per
//! source address, per-user quotas, GetOwners paged over thousands of
//! owners. Real members in-process, real QUIC on loopback, real redb.

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc, time::Duration};

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

fn peer(user: u32, i: u32) -> PeerId {
    let mut p = [0u8; 32];
    p[..4].copy_from_slice(&user.to_be_bytes());
    p[4..8].copy_from_slice(&i.to_be_bytes());
    PeerId(p)
}

/// A Register flood from one source address is throttled, while other
/// addresses keep registering. The origins are set by a client holding
/// the proxy's certificate, as the proxy does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_flood_from_one_address_is_throttled() {
    let mut c = TestCluster::new(3);
    for cfg in c.configs.values_mut() {
        cfg.register.per_source_burst = 3;
        // One more a minute: nothing refills within the test.
        cfg.register.per_source_per_minute = 1;
    }
    c.start_all();
    c.wait_agreed_leader(T).await;
    let members = c.api_addrs();
    let proxy = ApiClient::with_identity(&c.certs(), Some("proxy-1"));
    let register = |user: String, origin: &str| {
        let mut env = proxy.envelope(Request::Register {
            user,
            password: "pw".into(),
        });
        env.origin = Some(origin.parse::<SocketAddr>().unwrap());
        env
    };
    let flood = "10.0.0.1:5000";
    for i in 0..3 {
        let env = register(format!("flood{i}"), flood);
        assert_eq!(
            proxy.leader_send(&members, &env, T).await,
            Ok(Reply::Registered {
                user: format!("flood{i}")
            })
        );
    }
    for i in 3..10 {
        let env = register(format!("flood{i}"), flood);
        match proxy.leader_send(&members, &env, T).await {
            Err(ApiError::Throttled { what, retry_after_ms }) => {
                assert_eq!(what, "register");
                assert!(retry_after_ms > 0 && retry_after_ms <= 60_000, "{retry_after_ms}");
            }
            other => panic!("flood registration {i}: {other:?}"),
        }
    }
    // Other addresses (another port of the flooding address included:
    // the bucket is per IP) are not affected.
    for (i, origin) in ["10.0.0.2:1", "10.0.0.3:1", "[2001:db8::1]:7"].iter().enumerate() {
        for j in 0..3 {
            let user = format!("other{i}x{j}");
            let env = register(user.clone(), origin);
            assert_eq!(
                proxy.leader_send(&members, &env, T).await,
                Ok(Reply::Registered { user })
            );
        }
    }
    let env = register("flood-again".into(), "10.0.0.1:6000");
    assert!(matches!(
        proxy.leader_send(&members, &env, T).await,
        Err(ApiError::Throttled { .. })
    ));
    // A client without the proxy's certificate cannot pick its origin:
    // its registrations count against its own address (loopback).
    let direct = ApiClient::new(&c.certs());
    let mut env = direct.envelope(Request::Register {
        user: "direct".into(),
        password: "pw".into(),
    });
    env.origin = Some("10.0.0.99:1".parse().unwrap());
    assert_eq!(
        direct.leader_send(&members, &env, T).await,
        Ok(Reply::Registered { user: "direct".into() })
    );
}

/// Signs up `user` and returns its token.
async fn sign_up(c: &TestCluster, user: &str) -> String {
    let client = ApiClient::new(&c.certs());
    client.sign_up(&c.api_addrs(), user, "correct horse").await;
    let token = client.token.lock().unwrap().clone().unwrap();
    token
}

/// A client of its own (its own write ids) acting with `token`.
fn client_with(c: &TestCluster, token: &str) -> ApiClient {
    let client = ApiClient::new(&c.certs());
    *client.token.lock().unwrap() = Some(token.to_owned());
    client
}

async fn send(client: &ApiClient, c: &TestCluster, request: Request) -> Result<Reply, ApiError> {
    let env = client.envelope(request);
    client.leader_send(&c.api_addrs(), &env, T).await
}

/// Over the quota, announcing a peer or owning a file is refused with the
/// quota error; after a Disown there is room again; another user has a
/// quota of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_over_quota_is_refused() {
    let mut c = TestCluster::new(3);
    for cfg in c.configs.values_mut() {
        cfg.quotas.max_peers_per_user = 2;
        cfg.quotas.max_files_per_user = 3;
    }
    c.start_all();
    c.wait_agreed_leader(T).await;
    let alice = client_with(&c, &sign_up(&c, "alice").await);
    let announce = |peer_id| Request::AnnouncePeer {
        peer_id,
        addrs: vec!["127.0.0.1:9".parse().unwrap()],
    };
    for i in 0..2 {
        assert_eq!(send(&alice, &c, announce(peer(1, i))).await, Ok(Reply::Done));
    }
    // Announcing a known peer again (new addresses) is not a new peer.
    assert_eq!(send(&alice, &c, announce(peer(1, 0))).await, Ok(Reply::Done));
    assert_eq!(
        send(&alice, &c, announce(peer(1, 2))).await,
        Err(ApiError::Quota {
            what: "peers".into(),
            limit: 2
        })
    );
    let own = |p, n| Request::Own {
        peer_id: p,
        file: meta(&format!("f{n}"), n),
    };
    // Ownership records count over all the user's peers.
    assert_eq!(send(&alice, &c, own(peer(1, 0), 1)).await, Ok(Reply::Done));
    assert_eq!(send(&alice, &c, own(peer(1, 1), 1)).await, Ok(Reply::Done));
    assert_eq!(send(&alice, &c, own(peer(1, 0), 2)).await, Ok(Reply::Done));
    // Owning again what is owned already costs nothing.
    assert_eq!(send(&alice, &c, own(peer(1, 0), 2)).await, Ok(Reply::Done));
    let over = Err(ApiError::Quota {
        what: "files".into(),
        limit: 3,
    });
    assert_eq!(send(&alice, &c, own(peer(1, 0), 3)).await, over);
    assert_eq!(send(&alice, &c, own(peer(1, 1), 2)).await, over);
    assert_eq!(
        send(
            &alice,
            &c,
            Request::Disown {
                peer_id: peer(1, 1),
                file_id: meta("f1", 1).id
            }
        )
        .await,
        Ok(Reply::Done)
    );
    assert_eq!(send(&alice, &c, own(peer(1, 0), 3)).await, Ok(Reply::Done));
    let bob = client_with(&c, &sign_up(&c, "bob").await);
    assert_eq!(send(&bob, &c, announce(peer(2, 0))).await, Ok(Reply::Done));
    assert_eq!(send(&bob, &c, own(peer(2, 0), 1)).await, Ok(Reply::Done));
    // Every member applied the same answers: same state.
    let leader = c.wait_agreed_leader(T).await;
    let index = c
        .tracker(leader)
        .app
        .raft
        .metrics()
        .borrow()
        .last_applied
        .unwrap()
        .index;
    for id in c.running_ids() {
        c.wait_applied(id, index, T).await;
    }
    let digests: BTreeSet<_> = c
        .running_ids()
        .iter()
        .map(|id| c.tracker(*id).app.state.read().registry.digest())
        .collect();
    assert_eq!(digests.len(), 1);
}

/// A file with 5,000 owners (1,000 peers each of five users): every owner
/// is reachable page by page, each page within the requested size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_owners_listed_page_by_page() {
    const USERS: u32 = 5;
    const PEERS: u32 = 1000;
    const WRITERS_PER_USER: u32 = 10;
    let mut c = TestCluster::new(3);
    for cfg in c.configs.values_mut() {
        cfg.quotas.max_peers_per_user = PEERS as u64;
    }
    c.start_all();
    c.wait_agreed_leader(T).await;
    let file = meta("popular.iso", 7);
    let c = Arc::new(c);
    let mut tasks = Vec::new();
    for u in 0..USERS {
        let token = sign_up(&c, &format!("user{u}")).await;
        for w in 0..WRITERS_PER_USER {
            let (c, token, file) = (c.clone(), token.clone(), file.clone());
            tasks.push(tokio::spawn(async move {
                // Each writer has its own client id (one write at a time).
                let client = client_with(&c, &token);
                for i in (w..PEERS).step_by(WRITERS_PER_USER as usize) {
                    let peer_id = peer(u, i);
                    let addrs = vec![SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16))];
                    let announce = Request::AnnouncePeer { peer_id, addrs };
                    assert_eq!(send(&client, &c, announce).await, Ok(Reply::Done));
                    let own = Request::Own {
                        peer_id,
                        file: file.clone(),
                    };
                    assert_eq!(send(&client, &c, own).await, Ok(Reply::Done));
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let reader = client_with(&c, &sign_up(&c, "reader").await);
    for limit in [700u32, u32::MAX] {
        let mut seen = BTreeSet::new();
        let mut cursor = None;
        let mut pages = 0;
        for _ in 0..100 {
            let request = Request::GetOwners {
                file_id: file.id,
                cursor,
                limit,
            };
            let Ok(Reply::Owners {
                file: got,
                owners,
                next,
                ..
            }) = send(&reader, &c, request).await
            else {
                panic!("get-owners failed");
            };
            assert_eq!(got, file);
            pages += 1;
            assert!(owners.len() <= limit.min(2000) as usize, "page of {}", owners.len());
            for o in owners {
                assert_eq!(o.addrs.len(), 1);
                assert!(seen.insert(o.peer_id), "owner {} listed twice", o.peer_id);
            }
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!(seen.len(), (USERS * PEERS) as usize, "limit {limit}");
        let expected: BTreeSet<_> = (0..USERS).flat_map(|u| (0..PEERS).map(move |i| peer(u, i))).collect();
        assert_eq!(seen, expected);
        // 700 a page: 8 pages; the tracker's cap of 2,000: 3 pages.
        assert_eq!(pages, if limit == 700 { 8 } else { 3 });
    }
}

/// A file whose only owner has been silent longer than
/// `owners.dead_file_secs` drops out of the leader's search (its live
/// index), while a file with a heartbeating owner stays; owning the dead
/// file again brings it back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_dead_files_leave_search_until_owned_again() {
    let mut c = TestCluster::new(3);
    for cfg in c.configs.values_mut() {
        // Two seconds: the heartbeating owner stays well inside it even on
        // a loaded machine.
        cfg.owners.dead_file_secs = 2;
        cfg.owners.live_index_every_secs = 1;
    }
    c.start_all();
    c.wait_agreed_leader(T).await;
    let alice = client_with(&c, &sign_up(&c, "alice").await);
    let (alive, dead) = (peer(1, 1), peer(1, 2));
    for p in [alive, dead] {
        let announce = Request::AnnouncePeer {
            peer_id: p,
            addrs: vec![],
        };
        assert_eq!(send(&alice, &c, announce).await, Ok(Reply::Done));
    }
    let (kept, gone) = (meta("kept.iso", 1), meta("gone.iso", 2));
    for (p, f) in [(alive, kept.clone()), (dead, gone.clone())] {
        assert_eq!(
            send(&alice, &c, Request::Own { peer_id: p, file: f }).await,
            Ok(Reply::Done)
        );
    }
    let search = || Request::Search {
        text: "ISO".into(),
        cursor: 0,
        limit: 10,
    };
    let names = |r: Result<Reply, ApiError>| match r {
        Ok(Reply::Files { hits, .. }) => hits.into_iter().map(|h| h.file.name).collect::<Vec<_>>(),
        other => panic!("search: {other:?}"),
    };
    // Only `alive` heartbeats; wait (bounded) until the leader's index
    // has been rebuilt without the silent owner's file.
    let mut left_out = false;
    for _ in 0..200 {
        let hb = Request::Heartbeat { peer_id: alive };
        assert_eq!(send(&alice, &c, hb).await, Ok(Reply::Done));
        if names(send(&alice, &c, search()).await) == ["kept.iso"] {
            left_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left_out, "the dead file never left the search");
    // Still reachable by id.
    let get = Request::GetOwners {
        file_id: gone.id,
        cursor: None,
        limit: 10,
    };
    assert!(matches!(send(&alice, &c, get).await, Ok(Reply::Owners { .. })));
    // Owned again: back at once, in position order.
    let hb = Request::Heartbeat { peer_id: alive };
    assert_eq!(send(&alice, &c, hb).await, Ok(Reply::Done));
    assert_eq!(
        send(
            &alice,
            &c,
            Request::Own {
                peer_id: dead,
                file: gone
            }
        )
        .await,
        Ok(Reply::Done)
    );
    assert_eq!(names(send(&alice, &c, search()).await), ["kept.iso", "gone.iso"]);
}
