//! Tracker-cluster benchmarks; prints Markdown tables.
//!
//!   cargo bench -p tracker-cluster --bench cluster [-- writes|failover|search]
//!
//! Three real members in this process (each on its own runtime), real
//! QUIC on loopback, real redb with fsync. Figures are medians of runs.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use futures::StreamExt;
use protocol::{
    ids::PeerId,
    tracker_api::{ApiError, Reply, Request},
};
use tracker_cluster::{
    registry::{token_hash, Batch, Op, Registry, Write},
    testing::{load_file, write_load, ApiClient, Target, TestCluster},
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let _log = protocol::logging::init(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../logs"),
        "bench-cluster.log",
        "info",
        false,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if want("search") {
        memory_per_file();
    }
    rt.block_on(async {
        if want("writes") {
            writes().await;
        }
        if want("failover") {
            failover().await;
        }
        if want("search") {
            search_and_snapshot().await;
        }
    });
}

async fn writes() {
    let mut c = TestCluster::new(3);
    // Knobs for tuning runs: batches in flight and the largest batch.
    for cfg in c.configs.values_mut() {
        if let Some(v) = std::env::var("BENCH_IN_FLIGHT").ok().and_then(|v| v.parse().ok()) {
            cfg.max_batches_in_flight = v;
        }
        if let Some(v) = std::env::var("BENCH_MAX_BATCH").ok().and_then(|v| v.parse().ok()) {
            cfg.max_batch = v;
        }
    }
    c.start_all();
    c.wait_leader(Duration::from_secs(20)).await;
    let target = Target::Members(c.api_addrs());
    println!("\n| writes (Own), 3 members | writes/s | p50 ms | p99 ms |\n|---|---|---|---|");
    let mut run = 0;
    for clients in [1usize, 64] {
        let (mut rates, mut p50s, mut p99s) = (vec![], vec![], vec![]);
        for _ in 0..3 {
            run += 1;
            let mut r = write_load(&c.certs(), target.clone(), clients, Duration::from_secs(4), run).await;
            assert_eq!(r.errors, 0, "{:?}", r.first_error);
            rates.push(r.rate());
            p50s.push(ms(r.quantile(0.5)));
            p99s.push(ms(r.quantile(0.99)));
        }
        println!(
            "| {clients} client(s) | {:.0} | {:.2} | {:.2} |",
            median(rates),
            median(p50s),
            median(p99s)
        );
    }
}

/// Time from an abrupt kill of the leader to the first acknowledged write
/// of a client that keeps trying the members, 10 kills.
async fn failover() {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.wait_leader(Duration::from_secs(20)).await;
    let members = c.api_addrs();
    let client = ApiClient::new(&c.certs());
    client.sign_up(&members, "failover", "pw").await;
    let peer = PeerId([7; 32]);
    client.announce(&members, peer).await;
    let mut pauses = Vec::new();
    for k in 0..10u64 {
        // Every member up to date and agreeing on the leader before the kill.
        let leader = c.wait_agreed_leader(Duration::from_secs(20)).await;
        let env = client.envelope(Request::Own {
            peer_id: peer,
            file: load_file(98, 0, k),
        });
        client
            .leader_send(&members, &env, Duration::from_secs(10))
            .await
            .unwrap();
        let idx = c.tracker(leader).app.metrics().last_applied.unwrap().index;
        for id in c.running_ids() {
            c.wait_applied(id, idx, Duration::from_secs(20)).await;
        }
        client.forget_connections().await;
        let live: BTreeMap<_, _> = members
            .iter()
            .filter(|(id, _)| **id != leader)
            .map(|(a, b)| (*a, *b))
            .collect();
        c.kill(leader);
        let killed = Instant::now();
        let env = client.envelope(Request::Own {
            peer_id: peer,
            file: load_file(99, 0, k),
        });
        client.leader_send(&live, &env, Duration::from_secs(10)).await.unwrap();
        pauses.push(ms(killed.elapsed()));
        c.start(leader);
    }
    let mut sorted = pauses.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("\n| leader SIGKILL -> first acknowledged write (10 kills) | ms |\n|---|---|");
    println!(
        "| median | {:.0} |\n| max | {:.0} |",
        median(pauses.clone()),
        sorted.last().unwrap()
    );
    println!(
        "(all: {})",
        sorted.iter().map(|p| format!("{p:.0}")).collect::<Vec<_>>().join(", ")
    );
}

const FILES: u64 = 1_000_000;

/// The benches own far more files from one user than the default quota.
const UNLIMITED: protocol::config::Quotas = protocol::config::Quotas {
    max_files_per_user: u64::MAX,
    max_peers_per_user: u64::MAX,
};

fn memory_per_file() {
    let before = rss_bytes();
    let mut reg = Registry::default();
    let t = token_hash("t");
    let peer = PeerId([1; 32]);
    reg.apply(&Batch {
        now_ms: 1,
        quotas: UNLIMITED,
        writes: vec![
            Write {
                id: None,
                op: Op::CreateUser {
                    user: "u".into(),
                    phc: "x".into(),
                },
            },
            Write {
                id: None,
                op: Op::CreateSession {
                    token: t,
                    user: "u".into(),
                    expires_ms: u64::MAX,
                },
            },
            Write {
                id: None,
                op: Op::AnnouncePeer {
                    token: t,
                    peer,
                    addrs: vec![],
                },
            },
        ],
    });
    for b in 0..FILES / 10_000 {
        let writes = (0..10_000)
            .map(|i| Write {
                id: None,
                op: Op::Own {
                    token: t,
                    peer,
                    file: load_file(1, b as usize, i),
                },
            })
            .collect();
        reg.apply(&Batch {
            now_ms: 2,
            writes,
            quotas: UNLIMITED,
        });
    }
    let after = rss_bytes();
    println!("\n| registry, {FILES} files | value |\n|---|---|");
    println!(
        "| memory per registered file (RSS delta / files) | {} bytes |",
        (after - before) / FILES
    );
    let started = Instant::now();
    let bytes = reg.to_bytes();
    let enc = started.elapsed();
    let started = Instant::now();
    let back = Registry::from_bytes(&bytes).unwrap();
    println!("| snapshot size | {:.1} MB |", bytes.len() as f64 / 1e6);
    println!(
        "| snapshot encode / decode+index | {:.0} ms / {:.0} ms |",
        ms(enc),
        ms(started.elapsed())
    );
    let mut lat = vec![];
    for q in ["zzz-no-match", "load-1-57-", "LOAD-1-99-9999.bin", "bin"] {
        for _ in 0..20 {
            let t = Instant::now();
            std::hint::black_box(back.search(q, 0, 100, |_| true));
            lat.push(ms(t.elapsed()));
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "| in-memory search p50 / p99 (no network) | {:.2} ms / {:.2} ms |",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );
}

async fn search_and_snapshot() {
    let mut c = TestCluster::new(3);
    for cfg in c.configs.values_mut() {
        cfg.raft.keep_after_snapshot = 0;
        cfg.raft.snapshot_every = u64::MAX / 2;
    }
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let members = c.api_addrs();
    let client = ApiClient::new(&c.certs());
    client.sign_up(&members, "bulk", "pw").await;
    let peer = PeerId([3; 32]);
    client.announce(&members, peer).await;
    let token = token_hash(client.token.lock().unwrap().as_deref().unwrap());
    let raft = c.tracker(leader).app.raft.clone();
    let started = Instant::now();
    // Bulk-load through the real log: 1,000 writes per entry.
    futures::stream::iter(0..FILES / 1_000)
        .map(|b| {
            let raft = raft.clone();
            async move {
                let writes = (0..1_000)
                    .map(|i| Write {
                        id: None,
                        op: Op::Own {
                            token,
                            peer,
                            file: load_file(2, b as usize, i),
                        },
                    })
                    .collect();
                let resp = raft
                    .client_write(Batch {
                        now_ms: protocol::unix_ms(),
                        writes,
                        quotas: UNLIMITED,
                    })
                    .await
                    .unwrap();
                assert!(resp.data.iter().all(|a| a.is_ok()));
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
    let load = started.elapsed();
    println!("\n| 3 members, {FILES} files | value |\n|---|---|");
    println!(
        "| bulk load through Raft (1,000 writes/entry) | {:.1} s ({:.0} writes/s) |",
        load.as_secs_f64(),
        FILES as f64 / load.as_secs_f64()
    );

    let mut lat = vec![];
    for q in ["zzz-no-match", "load-2-57-", "LOAD-2-99-1999.bin", "bin"] {
        for _ in 0..50 {
            let env = client.envelope(Request::Search {
                text: q.into(),
                cursor: 0,
                limit: 100,
            });
            let t = Instant::now();
            match client.leader_send(&members, &env, Duration::from_secs(10)).await {
                Ok(Reply::Files { .. }) => {}
                other => panic!("search: {other:?}"),
            }
            lat.push(ms(t.elapsed()));
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "| Search p50 / p99 over the API, linearizable | {:.2} ms / {:.2} ms |",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );

    // A member that lost everything catches up by snapshot.
    let victim = *members.keys().find(|id| **id != leader).unwrap();
    c.kill(victim);
    let t = Instant::now();
    raft.trigger().snapshot().await.unwrap();
    let mut rx = raft.metrics();
    rx.wait_for(|m| m.snapshot.is_some()).await.unwrap();
    let snap = raft.metrics().borrow().snapshot.unwrap();
    println!("| snapshot build (leader) | {:.0} ms |", ms(t.elapsed()));
    raft.trigger().purge_log(snap.index).await.unwrap();
    rx.wait_for(|m| m.purged.is_some_and(|p| p.index >= snap.index))
        .await
        .unwrap();
    std::fs::remove_dir_all(c.dir.path().join(format!("data-{victim}"))).unwrap();
    let target = raft.metrics().borrow().last_applied.unwrap().index;
    let t = Instant::now();
    c.start(victim);
    c.wait_applied(victim, target, Duration::from_secs(120)).await;
    println!(
        "| lagging member: start -> snapshot installed and applied | {:.2} s |",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(c.tracker(victim).app.state.read().registry.file_count() as u64, FILES);
    let _ = ApiError::Internal;
}
