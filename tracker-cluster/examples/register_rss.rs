//! Memory of a leader under a register flood, measured on real processes:
//! starts three `quorrent-tracker` members (the binary next to this
//! example; build it first), sends REGISTRATIONS Register requests from
//! CLIENTS concurrent clients straight to the members, and prints the
//! leader's resident memory before, at its peak (VmHWM) and after.
//!
//! ```text
//! cargo build -p tracker-cluster --bin quorrent-tracker --example register_rss
//! target/debug/examples/register_rss [REGISTRATIONS] [CLIENTS]
//! ```
//! (dependencies, argon2 included, are optimised in the dev profile; the
//! same works with `--release` and `target/release/`.)
//!
//! Measured (2 cores shared with other builds): release build, 1,000
//! registrations from 16 clients: leader 20 MiB before, peak 64 MiB, 64 MiB
//! after (19.5 s). Debug build of our crates: 25 MiB before, peak and
//! after 69 MiB; 2,000 from 32 clients: peak and after 76 MiB. Target:
//! at most 128 MiB. Before the argon2 pool, 200 registrations from 8
//! clients took a leader to 566 MiB.
//!
//! The Register throttle is lifted in the members' configuration: what is
//! measured is the memory of the work the throttle would admit, not the
//! throttle. Every other setting is the default.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use protocol::tracker_api::{ApiError, Reply, Request};
use tracker_cluster::testing::{
    free_port,
    procs::{rss_of, spawn_with_config, ChildGuard},
    ApiClient,
};

struct Member {
    id: u64,
    child: ChildGuard,
}

/// A `/proc/PID/status` memory figure in KiB ("VmRSS:" or "VmHWM:").
fn status_kib(pid: u32, field: &str) -> u64 {
    let (peak, now) = rss_of(pid).unwrap_or_default();
    (if field == "VmHWM:" { peak } else { now }) / 1024
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("quorrent-tracker")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().map(|a| a.parse().expect("REGISTRATIONS")).unwrap_or(1000);
    let clients: usize = args.next().map(|a| a.parse().expect("CLIENTS")).unwrap_or(16);
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    let names: Vec<String> = ["tracker-1", "tracker-2", "tracker-3", "proxy-1", "admin"]
        .map(String::from)
        .into();
    protocol::tls::generate(&certs, &dir.path().join("ca"), &names, &[]).expect("certificates");
    let members: Vec<serde_json::Value> = (1..=3)
        .map(|id| {
            serde_json::json!({
                "id": id,
                "api": format!("127.0.0.1:{}", free_port()),
                "raft": format!("127.0.0.1:{}", free_port()),
            })
        })
        .collect();
    let bin = binary();
    let mut running = Vec::new();
    for id in 1..=3u64 {
        let cfg = serde_json::json!({
            "id": id,
            "members": members,
            "data_dir": dir.path().join(format!("data-{id}")),
            "log_dir": dir.path().join("logs"),
            "log_level": "warn",
            "certs_dir": certs,
            "register": {
                "per_source_per_minute": 1_000_000,
                "per_source_burst": 1_000_000,
                "hashes_per_sec": 1_000_000,
                "hash_burst": 1_000_000,
            },
        });
        let path = dir.path().join(format!("tracker-{id}.json"));
        std::fs::write(&path, cfg.to_string()).expect("config");
        let child = spawn_with_config(&bin, &path, None);
        running.push(Member { id, child });
    }
    let addrs: BTreeMap<u64, SocketAddr> = members
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().expect("id"),
                m["api"].as_str().expect("api").parse().expect("addr"),
            )
        })
        .collect();
    let addrs = Arc::new(addrs);

    // Wait for a leader (bounded).
    let probe = ApiClient::new(&certs);
    let env = probe.envelope(Request::ClusterStatus);
    let mut leader = None;
    for _ in 0..200 {
        if let Ok(Reply::Status(s)) = probe.leader_send(&addrs, &env, Duration::from_secs(5)).await {
            if s.leader.is_some() {
                leader = s.leader;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = leader.expect("no leader elected");
    let pid = running
        .iter()
        .find(|m| m.id == leader)
        .expect("leader process")
        .child
        .0
        .id();
    let before = status_kib(pid, "VmRSS:");

    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (certs, addrs) = (certs.clone(), addrs.clone());
        tasks.push(tokio::spawn(async move {
            let client = ApiClient::new(&certs);
            let mut errors = 0;
            for i in (c..total).step_by(clients) {
                let env = client.envelope(Request::Register {
                    user: format!("flood{i}"),
                    password: format!("password-{i}"),
                });
                match client.leader_send(&addrs, &env, Duration::from_secs(30)).await {
                    Ok(Reply::Registered { .. }) => {}
                    Err(ApiError::UserExists(_)) => {}
                    other => {
                        errors += 1;
                        eprintln!("register {i}: {other:?}");
                    }
                }
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.expect("client");
    }
    let elapsed = started.elapsed();
    let peak = status_kib(pid, "VmHWM:");
    let after = status_kib(pid, "VmRSS:");
    // And once more after a pause, to see whether memory is given back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = status_kib(pid, "VmRSS:");
    println!(
        "{}",
        serde_json::json!({
            "registrations": total,
            "clients": clients,
            "errors": errors,
            "seconds": elapsed.as_secs_f64(),
            "leader": leader,
            "rss_before": mib(before),
            "rss_peak": mib(peak),
            "rss_after": mib(after),
            "rss_after_5s": mib(later),
        })
    );
}
