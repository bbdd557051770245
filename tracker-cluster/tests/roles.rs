//! Certificate roles on the Raft port and members that were removed: a
//! proxy's or a node's certificate can neither change the membership nor
//! speak Raft; a member cannot speak for another; the admin can change
//! the membership; a removed member (leader or follower) knows it, stops
//! serving and never names itself leader again.

use std::{net::SocketAddr, time::Duration};

use openraft::{LogId, Vote};
use protocol::{
    quic,
    tls::{self, Identity},
    tracker_api::{ApiError, Reply, Request},
};
use tracker_cluster::{
    network::{
        management::{self, AdminRequest},
        raft_network_impl::Network,
        RaftReply, RaftRequest, RAFT_ALPN,
    },
    testing::{ApiClient, TestCluster},
};

const T: Duration = Duration::from_secs(20);

/// One Raft-port request presenting `id` (or no certificate).
async fn raft_call(
    ep: &quinn::Endpoint,
    c: &TestCluster,
    id: &Identity,
    member: usize,
    req: &RaftRequest,
) -> Result<RaftReply, String> {
    let roots = tls::load_ca(&c.certs()).unwrap();
    let cfg = tls::quic_client(
        tls::client_crypto(roots, Some(id), RAFT_ALPN).unwrap(),
        quic::control_transport(Duration::from_secs(2)),
    )
    .unwrap();
    let addr: SocketAddr = c.members[member].raft.parse().unwrap();
    let attempt = async {
        let conn = ep
            .connect_with(cfg, addr, &format!("tracker-{}", c.members[member].id))
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        protocol::codec::call::<_, RaftReply>(&conn, req, 1 << 20)
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .map_err(|_| "timed out".to_string())?
}

fn vote_from(member: u64, term: u64) -> RaftRequest {
    RaftRequest::Vote(openraft::raft::VoteRequest::new(
        Vote::new(term, member),
        Some(LogId::new(openraft::CommittedLeaderId::new(term, member), 1_000_000)),
    ))
}

fn append_from(member: u64, term: u64) -> RaftRequest {
    RaftRequest::Append(openraft::raft::AppendEntriesRequest {
        vote: Vote::new_committed(term, member),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    })
}

fn assert_refused(res: Result<RaftReply, String>, who: &str, what: &str) {
    match res {
        Ok(RaftReply::Refused(why)) => assert!(why.contains("refused"), "{who} {what}: {why}"),
        other => panic!("{who} could send {what}: {other:?}"),
    }
}

fn voters(c: &TestCluster, id: u64) -> usize {
    c.tracker(id)
        .app
        .metrics()
        .membership_config
        .membership()
        .voter_ids()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_port_checks_certificate_roles() {
    let mut c = TestCluster::new(3);
    c.start_all();
    let leader = c.wait_agreed_leader(T).await;
    let li = c.members.iter().position(|m| m.id == leader).unwrap();
    let follower = c.members.iter().map(|m| m.id).find(|id| *id != leader).unwrap();
    let ep = quic::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let proxy = tls::load_identity(&c.certs(), "proxy-1").unwrap();
    let member2 = tls::load_identity(&c.certs(), "tracker-2").unwrap();
    let remove = RaftRequest::Admin(AdminRequest::Remove { id: follower });

    // The proxy's certificate: no membership change, no Raft message.
    assert_refused(raft_call(&ep, &c, &proxy, li, &remove).await, "proxy", "remove");
    let add = RaftRequest::Admin(AdminRequest::Add {
        id: 9,
        api: "127.0.0.1:9".into(),
        raft: "127.0.0.1:9".into(),
    });
    assert_refused(raft_call(&ep, &c, &proxy, li, &add).await, "proxy", "add");
    assert_refused(
        raft_call(&ep, &c, &proxy, li, &vote_from(follower, 1)).await,
        "proxy",
        "vote",
    );
    assert_refused(
        raft_call(&ep, &c, &proxy, li, &append_from(follower, 1)).await,
        "proxy",
        "append",
    );
    assert_refused(
        raft_call(&ep, &c, &proxy, li, &RaftRequest::Admin(AdminRequest::Status)).await,
        "proxy",
        "status",
    );
    // A member's certificate cannot change the membership or speak for
    // another member.
    assert_refused(raft_call(&ep, &c, &member2, li, &remove).await, "member 2", "remove");
    let snapshot = RaftRequest::Admin(AdminRequest::Snapshot { wait_ms: 1000 });
    assert_refused(
        raft_call(&ep, &c, &member2, li, &snapshot).await,
        "member 2",
        "snapshot",
    );
    assert_refused(raft_call(&ep, &c, &proxy, li, &snapshot).await, "proxy", "snapshot");
    assert_refused(
        raft_call(&ep, &c, &member2, li, &vote_from(1, 1)).await,
        "member 2",
        "vote as member 1",
    );
    assert_refused(
        raft_call(&ep, &c, &member2, li, &vote_from(3, 1)).await,
        "member 2",
        "vote as member 3",
    );
    // A node's self-signed certificate does not even get a stream answered.
    let node_dir = tempfile::tempdir().unwrap();
    let node = tls::NodeIdentity::load_or_create(node_dir.path()).unwrap();
    let res = raft_call(&ep, &c, &node.identity, li, &remove).await;
    assert!(res.is_err(), "a node certificate reached the raft port: {res:?}");
    assert_eq!(voters(&c, leader), 3, "a refused caller changed the membership");
    assert_eq!(c.tracker(leader).app.metrics().current_leader, Some(leader));

    // The admin certificate can.
    let admin = tls::load_identity(&c.certs(), "admin").unwrap();
    let roots = tls::load_ca(&c.certs()).unwrap();
    let net = Network::new(
        ep.clone(),
        tracker_cluster::raft_client(roots, &admin, Duration::from_secs(2)).unwrap(),
        1 << 20,
    );
    let members: Vec<_> = c.members.iter().map(|m| (m.id, m.raft.clone())).collect();
    // Any member builds a snapshot when the admin asks, leader or not.
    let fi = c.members.iter().position(|m| m.id == follower).unwrap();
    let applied = c.tracker(follower).app.metrics().last_applied.unwrap().index;
    let (index, _ms) = management::snapshot_member(&net, follower, &c.members[fi].raft, T)
        .await
        .unwrap();
    assert!(index >= applied, "snapshot at {index}, applied {applied}");
    assert_eq!(c.tracker(follower).app.metrics().snapshot.map(|l| l.index), Some(index));
    let status = management::call(&net, &members, AdminRequest::Remove { id: follower }, T)
        .await
        .unwrap();
    assert!(status.members.iter().all(|m| m.id != follower), "{status:?}");
    assert_eq!(voters(&c, leader), 2);
}

/// The admin's Raft client and the members' Raft addresses.
fn admin_net(c: &TestCluster) -> (Network, Vec<(u64, String)>) {
    let ep = quic::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let admin = tls::load_identity(&c.certs(), "admin").unwrap();
    let net = Network::new(
        ep,
        tracker_cluster::raft_client(tls::load_ca(&c.certs()).unwrap(), &admin, Duration::from_secs(2)).unwrap(),
        1 << 20,
    );
    (net, c.members.iter().map(|m| (m.id, m.raft.clone())).collect())
}

/// Waits until member `id` says it was removed.
async fn wait_removed(c: &TestCluster, id: u64) {
    let app = c.tracker(id).app.clone();
    let mut rx = app.raft.metrics();
    let until = tokio::time::Instant::now() + T;
    while app.removal.reason().is_none() {
        assert!(
            tokio::time::Instant::now() < until,
            "member {id} never learned it was removed"
        );
        // Metrics change as it campaigns or applies; the bound covers the
        // last report arriving between changes.
        let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
    }
}

/// A removed follower learns it from the members' answers to its vote
/// requests; a leader that removed itself learns it from its own applied
/// membership. Neither names a leader again; the rest go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_members_know_it() {
    let mut c = TestCluster::new(3);
    c.start_all();
    let leader = c.wait_agreed_leader(T).await;
    let follower = c.members.iter().map(|m| m.id).find(|id| *id != leader).unwrap();
    let (net, members) = admin_net(&c);

    management::call(&net, &members, AdminRequest::Remove { id: follower }, T)
        .await
        .unwrap();
    wait_removed(&c, follower).await;
    let api = ApiClient::new(&c.certs());
    let f_addr = c.api_addrs()[&follower];
    let env = api.envelope(Request::ClusterStatus);
    let ans = api.send(f_addr, &format!("tracker-{follower}"), &env).await.unwrap();
    assert!(
        matches!(&ans, Err(ApiError::Unavailable(m)) if m.contains("removed"))
            || matches!(&ans, Ok(Reply::Status(s)) if s.removed && s.leader.is_none()),
        "{ans:?}"
    );

    // Now the leader removes itself.
    management::call(&net, &members, AdminRequest::Remove { id: leader }, T)
        .await
        .unwrap();
    wait_removed(&c, leader).await;
    let rest = c
        .members
        .iter()
        .map(|m| m.id)
        .find(|id| *id != leader && *id != follower)
        .unwrap();
    let status = management::status_of_member(
        &net,
        leader,
        &c.members.iter().find(|m| m.id == leader).unwrap().raft,
        T,
    )
    .await
    .unwrap();
    assert!(status.removed && status.leader.is_none(), "{status:?}");
    // The one member left leads alone; writes go on there.
    let until = tokio::time::Instant::now() + T;
    while c.tracker(rest).app.metrics().current_leader != Some(rest) {
        assert!(tokio::time::Instant::now() < until, "the remaining member never led");
        let mut rx = c.tracker(rest).app.raft.metrics();
        let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
    }
    let members_api = c.api_addrs();
    api.sign_up(&[(rest, members_api[&rest])].into(), "after-removal", "correct horse")
        .await;
    // The removed ones refuse the API and never name a leader.
    for id in [leader, follower] {
        let env = api.envelope(Request::Search {
            text: "x".into(),
            cursor: 0,
            limit: 1,
        });
        let ans = api.send(members_api[&id], &format!("tracker-{id}"), &env).await;
        assert!(
            matches!(&ans, Ok(Err(ApiError::Unavailable(m))) if m.contains("removed")),
            "removed member {id} answered {ans:?}"
        );
        assert_eq!(c.tracker(id).app.status().leader, None);
        assert!(c.tracker(id).app.status().removed);
    }
}

/// A member wiped and added back under its own id (what the chaos test's
/// "replace" fault does) installs a snapshot that lists its predecessor,
/// then receives the log in pieces, one of which ends at the membership
/// that removed that predecessor: it must not take that for its own
/// removal (the chaos run found it shutting itself down there, so the
/// cluster never became equal again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_member_added_back_under_its_id_catches_up() {
    let mut c = TestCluster::new(3);
    for cfg in c.configs.values_mut() {
        // A snapshot (listing every founding member) after 1,000 entries,
        // and nothing of the log kept behind it.
        cfg.raft.snapshot_every = 1000;
        cfg.raft.keep_after_snapshot = 0;
    }
    c.start_all();
    let leader = c.wait_agreed_leader(T).await;
    let back = c.members.iter().map(|m| m.id).find(|id| *id != leader).unwrap();
    let (net, members) = admin_net(&c);
    let api = ApiClient::new(&c.certs());
    let addrs = c.api_addrs();
    api.sign_up(&addrs, "before-wipe", "correct horse").await;
    let peer = protocol::ids::PeerId([7; 32]);
    // One Raft entry per write, one write at a time.
    let writes = |n: usize| {
        let (api, addrs) = (&api, &addrs);
        async move {
            for _ in 0..n {
                let env = api.envelope(Request::AnnouncePeer {
                    peer_id: peer,
                    addrs: vec![],
                });
                assert_eq!(api.leader_send(addrs, &env, T).await, Ok(Reply::Done));
            }
        }
    };
    writes(1100).await;

    // The member dies with its disk and is removed; more than one
    // AppendEntries' worth of entries (openraft sends 300 at most) go by
    // before it is added back empty.
    c.kill(back);
    management::call(&net, &members, AdminRequest::Remove { id: back }, T)
        .await
        .unwrap();
    writes(400).await;
    let cfg = c.configs.get_mut(&back).unwrap();
    std::fs::remove_dir_all(cfg.data_dir()).unwrap();
    let me = c.members.iter().find(|m| m.id == back).unwrap().clone();
    cfg.join = true;
    cfg.api_addr = Some(me.api.clone());
    cfg.raft_addr = Some(me.raft.clone());
    c.start(back);
    management::call(
        &net,
        &members,
        AdminRequest::Add {
            id: back,
            api: me.api,
            raft: me.raft,
        },
        T,
    )
    .await
    .unwrap();

    // It follows and applies what the leader applies, a write made after
    // it came back included, and never calls itself removed.
    api.sign_up(&addrs, "after-wipe", "correct horse").await;
    let leader = c.wait_agreed_leader(T).await;
    let target = c.tracker(leader).app.metrics().last_applied.unwrap().index;
    c.wait_applied(back, target, T).await;
    let app = &c.tracker(back).app;
    assert_eq!(app.removal.reason(), None, "the member took itself for removed");
    assert!(!app.status().removed);
    assert_eq!(
        c.tracker(back).app.state.read().registry.digest(),
        c.tracker(leader).app.state.read().registry.digest()
    );
}
