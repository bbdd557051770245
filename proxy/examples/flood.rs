//! The flood benchmark of issue 7 (not a timed test); prints a Markdown
//! table.
//!
//!   cargo build --release -p tracker-cluster -p proxy --bins
//!   cargo run --release -p proxy --example flood [-- RUNS]
//!
//! Three `quorrent-tracker` processes and one `quorrent-proxy` process
//! (release binaries next to this example), default configuration, on
//! loopback. One well-behaved client sends Own/Search/Heartbeat through
//! the proxy back to back: 15 s quiet, then while the proxy and the leader
//! are flooded at once (`tracker_cluster::testing::flood`, the same flood
//! as proxy/tests/abuse.rs). Fresh processes for each run; the table gives
//! the median of the runs. Peak RSS is each process's VmHWM at the end of
//! the run. `QUORRENT_FLOOD_GARBAGE=N` sets the garbage connections (4).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use protocol::{
    config::{Limits, MemberAddr, ProxyConfig, TrackerConfig},
    ids::{FileId, PeerId},
    tls,
    tracker_api::{ApiError, FileMeta, Reply, Request},
};
use tracker_cluster::testing::{
    flood::{self, Flood},
    free_port,
    procs::{rss_of, spawn_with_config, ChildGuard},
    ApiClient,
};

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: cargo build --release -p tracker-cluster -p proxy --bins",
        p.display()
    );
    p
}

struct Cluster {
    dir: tempfile::TempDir,
    trackers: BTreeMap<u64, ChildGuard>,
    members: Vec<MemberAddr>,
    proxy: ChildGuard,
    proxy_addr: SocketAddr,
}

fn start() -> Cluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    let names: Vec<String> = ["tracker-1", "tracker-2", "tracker-3", "proxy-1", "admin"]
        .map(String::from)
        .to_vec();
    tls::generate(&certs, &dir.path().join("ca"), &names, &[]).expect("certificates");
    let members: Vec<MemberAddr> = (1..=3)
        .map(|id| MemberAddr {
            id,
            api: format!("127.0.0.1:{}", free_port()),
            raft: format!("127.0.0.1:{}", free_port()),
        })
        .collect();
    let mut trackers = BTreeMap::new();
    for m in &members {
        let cfg = TrackerConfig {
            id: m.id,
            members: members.clone(),
            data_dir: Some(dir.path().join(format!("data-{}", m.id))),
            log_dir: dir.path().join("logs"),
            certs_dir: certs.clone(),
            ..Default::default()
        };
        let path = dir.path().join(format!("tracker-{}.json", m.id));
        std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
        trackers.insert(m.id, spawn_with_config(bin("quorrent-tracker"), &path, None));
    }
    let proxy_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = ProxyConfig {
        listen: proxy_addr.to_string(),
        trackers: members.clone(),
        log_dir: dir.path().join("logs"),
        certs_dir: certs,
        ..Default::default()
    };
    let path = dir.path().join("proxy-1.json");
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let proxy = spawn_with_config(bin("quorrent-proxy"), &path, None);
    Cluster {
        dir,
        trackers,
        members,
        proxy,
        proxy_addr,
    }
}

async fn via(client: &ApiClient, proxy: SocketAddr, request: Request) -> Result<Reply, ApiError> {
    let env = client.envelope(request);
    match tokio::time::timeout(Duration::from_secs(20), client.send(proxy, "proxy-1", &env)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => Err(ApiError::Unavailable(e)),
        Err(_) => Err(ApiError::Unavailable("client timeout".into())),
    }
}

/// Waits until the proxy reaches a leader; returns the leader's id.
async fn ready(c: &Cluster, client: &ApiClient) -> u64 {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Reply::Status(s)) = via(client, c.proxy_addr, Request::ClusterStatus).await {
            if let Some(l) = s.leader {
                return l;
            }
        }
        assert!(Instant::now() < until, "cluster not ready");
        client.forget_connections().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One well-behaved client until `until` resolves; latencies and errors.
async fn behave(
    client: &ApiClient,
    proxy: SocketAddr,
    offset: usize,
    until: impl std::future::Future<Output = ()>,
) -> (Vec<Duration>, Vec<String>) {
    let mut lat = Vec::new();
    let mut errors = Vec::new();
    tokio::pin!(until);
    let peer = PeerId([1; 32]);
    for i in offset.. {
        let req = match i % 3 {
            0 => {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&(i as u64).to_le_bytes());
                Request::Own {
                    peer_id: peer,
                    file: FileMeta {
                        id: FileId(id),
                        name: format!("calm-{i}.bin"),
                        size: 10,
                        chunk_size: 1 << 20,
                        chunk_count: 1,
                        files: 0,
                    },
                }
            }
            1 => Request::Search {
                text: "calm".into(),
                cursor: 0,
                limit: 10,
            },
            _ => Request::Heartbeat { peer_id: peer },
        };
        let started = Instant::now();
        tokio::select! {
            answer = via(client, proxy, req) => match answer {
                Ok(_) => lat.push(started.elapsed()),
                Err(e) => errors.push(e.to_string()),
            },
            _ = &mut until => break,
        }
    }
    (lat, errors)
}

fn quantile(v: &mut [Duration], q: f64) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[derive(Default)]
struct Run {
    quiet_p50: f64,
    quiet_p99: f64,
    flood_p50: f64,
    flood_p99: f64,
    quiet_n: usize,
    flood_n: usize,
    errors: usize,
    proxy_peak_mib: f64,
    leader_peak_mib: f64,
    flood_secs: f64,
}

/// Latencies of the answered requests and the errors of one phase.
type Phase = (Vec<Duration>, Vec<String>);

/// The well-behaved client's whole life (sign up, a quiet phase, then a
/// phase until `flood_done`), on its own thread and runtime: its requests
/// must not queue behind the attackers' 20,000 tasks in this process, as
/// they would not if the attackers were other machines. It says when the
/// quiet phase is over on `quiet_done`.
fn calm_client(
    certs: std::path::PathBuf,
    proxy: SocketAddr,
    quiet_done: tokio::sync::oneshot::Sender<()>,
    flood_done: tokio::sync::oneshot::Receiver<()>,
) -> std::thread::JoinHandle<(Phase, Phase)> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = ApiClient::new(&certs);
            for req in [
                Request::Register {
                    user: "calm".into(),
                    password: "pw".into(),
                },
                Request::Login {
                    user: "calm".into(),
                    password: "pw".into(),
                },
            ] {
                match via(&client, proxy, req).await {
                    Ok(Reply::LoggedIn { token, .. }) => *client.token.lock().unwrap() = Some(token),
                    Ok(_) => {}
                    Err(e) => panic!("sign up: {e}"),
                }
            }
            via(
                &client,
                proxy,
                Request::AnnouncePeer {
                    peer_id: PeerId([1; 32]),
                    addrs: vec![],
                },
            )
            .await
            .expect("announce");
            let (quiet, quiet_err) = behave(&client, proxy, 0, tokio::time::sleep(Duration::from_secs(15))).await;
            let _ = quiet_done.send(());
            let (flooded, flood_err) = behave(&client, proxy, 1_000_000, async {
                let _ = flood_done.await;
            })
            .await;
            ((quiet, quiet_err), (flooded, flood_err))
        })
    })
}

async fn one_run() -> Run {
    let c = start();
    let certs = c.dir.path().join("certs");
    let leader = ready(&c, &ApiClient::new(&certs)).await;
    let (quiet_tx, quiet_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let calm = calm_client(certs.clone(), c.proxy_addr, quiet_tx, done_rx);
    let _ = quiet_rx.await;

    // QUORRENT_FLOOD_GARBAGE=N changes the garbage connections (default 4),
    // e.g. 0 to see what the trickle and idle parts cost alone.
    let mut f = Flood::default();
    if let Some(n) = std::env::var("QUORRENT_FLOOD_GARBAGE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        f.garbage_conns = n;
    }
    let leader_api: SocketAddr = c.members.iter().find(|m| m.id == leader).unwrap().api.parse().unwrap();
    let started = Instant::now();
    let on_proxy = tokio::spawn({
        let (certs, f, addr) = (certs.clone(), f.clone(), c.proxy_addr);
        async move { flood::run(&certs, addr, "proxy-1", 10, &f).await }
    });
    let on_leader = tokio::spawn({
        let (certs, f) = (certs.clone(), f.clone());
        async move { flood::run(&certs, leader_api, &format!("tracker-{leader}"), 20, &f).await }
    });
    let p = on_proxy.await.unwrap();
    let l = on_leader.await.unwrap();
    let _ = done_tx.send(());
    let ((mut quiet, quiet_err), (mut flooded, flood_err)) =
        tokio::task::spawn_blocking(move || calm.join().unwrap()).await.unwrap();
    let flood_secs = started.elapsed().as_secs_f64();
    eprintln!("proxy flood: {p:?}\nleader flood: {l:?}");
    if !quiet_err.is_empty() || !flood_err.is_empty() {
        eprintln!("errors: quiet {quiet_err:?} flood {flood_err:?}");
    }
    let peak = |pid: u32| {
        rss_of(pid)
            .map(|(hwm, _)| hwm as f64 / (1 << 20) as f64)
            .unwrap_or(f64::NAN)
    };
    Run {
        quiet_p50: quantile(&mut quiet, 0.5),
        quiet_p99: quantile(&mut quiet, 0.99),
        flood_p50: quantile(&mut flooded, 0.5),
        flood_p99: quantile(&mut flooded, 0.99),
        quiet_n: quiet.len(),
        flood_n: flooded.len(),
        errors: quiet_err.len() + flood_err.len(),
        proxy_peak_mib: peak(c.proxy.0.id()),
        leader_peak_mib: peak(c.trackers[&leader].0.id()),
        flood_secs,
    }
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut all = Vec::new();
    for r in 0..runs {
        let run = rt.block_on(one_run());
        eprintln!(
            "run {r}: quiet p50 {:.2} p99 {:.2} ms ({} req), flood p50 {:.2} p99 {:.2} ms ({} req, {:.0} s), errors {}, proxy peak {:.0} MiB, leader peak {:.0} MiB",
            run.quiet_p50,
            run.quiet_p99,
            run.quiet_n,
            run.flood_p50,
            run.flood_p99,
            run.flood_n,
            run.flood_secs,
            run.errors,
            run.proxy_peak_mib,
            run.leader_peak_mib
        );
        all.push(run);
    }
    let m = |f: fn(&Run) -> f64| median(all.iter().map(f).collect());
    let bound = Limits::default().max_rss_mb;
    println!("\n| well-behaved client through the proxy (median of {runs} runs) | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|");
    println!(
        "| quiet | {:.2} | {:.2} | {} |",
        m(|r| r.quiet_p50),
        m(|r| r.quiet_p99),
        all.iter().map(|r| r.errors).sum::<usize>()
    );
    println!(
        "| proxy and leader flooded | {:.2} | {:.2} | (total above) |",
        m(|r| r.flood_p50),
        m(|r| r.flood_p99)
    );
    println!("| p99 flooded / quiet | | {:.2}x | |", m(|r| r.flood_p99 / r.quiet_p99));
    println!("\n| peak RSS under the flood (VmHWM) | MiB | bound (limits.max_rss_mb) |\n|---|---|---|");
    println!("| proxy | {:.0} | {bound} |", m(|r| r.proxy_peak_mib));
    println!("| leader tracker | {:.0} | {bound} |", m(|r| r.leader_peak_mib));
    println!("(flood: 1,000 idle connections, 80 connection attempts from one address, 10,000 trickling streams, 4 garbage connections, each against the proxy and the leader at once)");
}
