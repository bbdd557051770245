//! Snapshots of a registry too large for one bincode buffer: a registry
//! whose snapshot is over 256 MiB (bincode's largest tier, which capped the
//! old one-piece snapshot) is built while writes go on, streamed to a
//! lagging member in chunks and installed there, and read back by every
//! member after a restart of the whole cluster. Real members, real QUIC,
//! real redb; the files go through the real Raft log, 1,000 per entry.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use protocol::{
    config::Quotas,
    ids::{FileId, PeerId},
    tracker_api::{FileMeta, Reply, Request},
};
use tracker_cluster::{
    registry::{token_hash, Batch, Op, Write},
    testing::{ApiClient, TestCluster},
};

const T: Duration = Duration::from_secs(30);
/// Files of 255-byte names: about 335 bytes each in the snapshot.
const FILES: u64 = 840_000;
const PER_ENTRY: u64 = 1_000;
/// No write may wait this long while the snapshot is built (generous: a
/// write takes milliseconds; the old build held the state machine's lock
/// for the whole encode, seconds at this size).
const STALL_BOUND: Duration = Duration::from_secs(3);

fn big_file(n: u64) -> FileMeta {
    let prefix = format!("big-{n:08}-");
    FileMeta {
        id: FileId(*blake3::hash(&n.to_le_bytes()).as_bytes()),
        name: format!("{prefix}{}", "x".repeat(255 - prefix.len())),
        size: 1 << 20,
        chunk_size: 1 << 20,
        chunk_count: 1,
        files: 0,
    }
}

fn digests(c: &TestCluster) -> BTreeMap<u64, [u8; 32]> {
    c.running_ids()
        .into_iter()
        .map(|id| (id, c.tracker(id).app.state.read().registry.digest()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_over_256_mib_streams_installs_and_reloads() {
    let mut c = TestCluster::new(3);
    for cfg in c.configs.values_mut() {
        cfg.raft.keep_after_snapshot = 0;
        cfg.raft.snapshot_every = u64::MAX / 2;
        cfg.quotas = Quotas {
            max_files_per_user: u64::MAX,
            max_peers_per_user: u64::MAX,
        };
    }
    c.start_all();
    let leader = c.wait_agreed_leader(T).await;
    let members = c.api_addrs();
    let client = ApiClient::new(&c.certs());
    client.sign_up(&members, "bulk", "correct horse").await;
    let peer = PeerId([3; 32]);
    client.announce(&members, peer).await;
    let token = token_hash(client.token.lock().unwrap().as_deref().unwrap());

    // One follower is away while the registry grows.
    let lagging = *members.keys().find(|id| **id != leader).unwrap();
    c.kill(lagging);
    let live: BTreeMap<_, _> = members.clone().into_iter().filter(|(id, _)| *id != lagging).collect();
    let raft = c.tracker(leader).app.raft.clone();
    let t0 = Instant::now();
    futures::stream::iter(0..FILES / PER_ENTRY)
        .map(|b| {
            let raft = raft.clone();
            async move {
                let writes = (b * PER_ENTRY..(b + 1) * PER_ENTRY)
                    .map(|n| Write {
                        id: None,
                        op: Op::Own {
                            token,
                            peer,
                            file: big_file(n),
                        },
                    })
                    .collect();
                let batch = Batch {
                    now_ms: protocol::unix_ms(),
                    writes,
                    quotas: Quotas {
                        max_files_per_user: u64::MAX,
                        max_peers_per_user: u64::MAX,
                    },
                };
                let resp = raft.client_write(batch).await.expect("bulk write");
                assert!(resp.data.iter().all(|a| a.is_ok()), "a bulk Own was refused");
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;

    println!("{:?}: {FILES} files registered", t0.elapsed());
    // Writes through the API go on while the leader builds the snapshot.
    let building = Arc::new(AtomicBool::new(true));
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let writer = {
        let building = building.clone();
        let live = live.clone();
        let certs = c.certs();
        tokio::spawn(async move {
            let w = ApiClient::new(&certs);
            w.sign_up(&live, "writer", "correct horse").await;
            let p = PeerId([4; 32]);
            w.announce(&live, p).await;
            let (mut done, mut worst, mut n) = (0u32, Duration::ZERO, FILES);
            let mut first_tx = Some(first_tx);
            while building.load(Ordering::Relaxed) {
                n += 1;
                let env = w.envelope(Request::Own {
                    peer_id: p,
                    file: big_file(n),
                });
                let t = Instant::now();
                assert_eq!(w.leader_send(&live, &env, T).await, Ok(Reply::Done));
                worst = worst.max(t.elapsed());
                done += 1;
                // Count from the trigger on (it waits for this first write).
                if let Some(tx) = first_tx.take() {
                    let _ = tx.send(());
                    (done, worst) = (0, Duration::ZERO);
                }
            }
            (done, worst)
        })
    };
    first_rx.await.expect("the writer started");
    let started = Instant::now();
    raft.trigger().snapshot().await.unwrap();
    let mut rx = raft.metrics();
    rx.wait_for(|m| m.snapshot.is_some()).await.unwrap();
    let built_in = started.elapsed();
    building.store(false, Ordering::Relaxed);
    let (writes_during, worst) = writer.await.unwrap();
    println!("snapshot built in {built_in:?}; {writes_during} writes meanwhile, the slowest {worst:?}");
    assert!(writes_during > 0, "no write completed while the snapshot was built");
    assert!(
        worst < STALL_BOUND,
        "a write waited {worst:?} during the snapshot build"
    );
    let size = std::fs::metadata(c.dir.path().join(format!("data-{leader}/snapshot.bin")))
        .unwrap()
        .len();
    assert!(size > 256 << 20, "snapshot of only {size} bytes");

    // The leader compacts its log, so the lagging member can only catch up
    // by the snapshot, streamed in chunks.
    let snap = raft.metrics().borrow().snapshot.unwrap();
    raft.trigger().purge_log(snap.index).await.unwrap();
    rx.wait_for(|m| m.purged.is_some_and(|p| p.index >= snap.index))
        .await
        .unwrap();
    let target = raft.metrics().borrow().last_applied.unwrap().index;
    c.start(lagging);
    c.wait_applied(lagging, target, Duration::from_secs(600)).await;
    println!("{:?}: the lagging member installed the snapshot", t0.elapsed());
    assert!(
        c.tracker(lagging).app.metrics().snapshot.is_some(),
        "caught up without a snapshot"
    );
    let d = digests(&c);
    assert!(d.values().all(|v| *v == d[&leader]), "members differ after the install");

    // Every member restarts and reads its snapshot (and log) back.
    for id in members.keys() {
        c.stop(*id);
    }
    c.start_all();
    let leader = c.wait_agreed_leader(Duration::from_secs(600)).await;
    let index = c.tracker(leader).app.metrics().last_applied.unwrap().index;
    for id in members.keys() {
        c.wait_applied(*id, index, Duration::from_secs(600)).await;
        assert!(c.tracker(*id).app.state.read().registry.file_count() as u64 >= FILES);
    }
    println!("{:?}: every member restarted and caught up", t0.elapsed());
    let d = digests(&c);
    assert!(d.values().all(|v| *v == d[&leader]), "members differ after the restart");
    // And serves: a search for one of the bulk files, and a new write.
    client.forget_connections().await;
    let env = client.envelope(Request::Search {
        text: "big-00765432-".into(),
        cursor: 0,
        limit: 10,
    });
    match client.leader_send(&members, &env, T).await {
        Ok(Reply::Files { hits, .. }) => assert_eq!(hits.len(), 1, "{hits:?}"),
        other => panic!("search after restart: {other:?}"),
    }
    let env = client.envelope(Request::Own {
        peer_id: peer,
        file: big_file(FILES + 1_000_000),
    });
    assert_eq!(client.leader_send(&members, &env, T).await, Ok(Reply::Done));
}
