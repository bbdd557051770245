//! Benchmark: N seeders serve one random file to one downloader over QUIC
//! on loopback. The seeders run in a child process (this same program with
//! `--serve`), so the figures for the downloader are its own: transfer
//! rate, CPU seconds, peak RSS and time to the first verified chunk.
//!
//! `cargo run --release -p node --example bench_p2p -- [MiB] [seeders] [chunk KiB] [depth]`
//! (defaults: 1024 MiB, 4 seeders, the configured chunk size and depth).

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Instant,
};

use node::{
    download::{self, DownloadPlan},
    peer_server::PeerServer,
    store::{HaveBits, SharedFile, Store},
};
use protocol::{config::SharingConfig, content::hash_file, tls::NodeIdentity, tracker_api::PeerInfo};
use rand::RngCore;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        return serve(&args[1..]).await;
    }
    let num: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let mib = num.first().copied().unwrap_or(1024);
    let seeders = num.get(1).copied().unwrap_or(4);
    let defaults = SharingConfig::default();
    let chunk = num.get(2).map_or(defaults.chunk_size, |k| (*k as u32) << 10);
    let depth = num.get(3).map_or(defaults.max_in_flight_per_peer, |d| *d as usize);

    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("bench.bin");
    write_random(&src, mib);
    let t = Instant::now();
    let manifest = hash_file(&src, "bench.bin".into(), chunk, |_| {}).expect("hash");
    println!(
        "share hashing: {:.0} MB/s ({} MiB, {} KiB chunks)",
        manifest.size as f64 / t.elapsed().as_secs_f64() / 1e6,
        manifest.size >> 20,
        chunk >> 10
    );

    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .args([
            "--serve",
            &src.display().to_string(),
            &seeders.to_string(),
            &chunk.to_string(),
        ])
        .stdout(Stdio::piped())
        .stdin(Stdio::piped())
        .spawn()
        .expect("seeder process");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut peers = Vec::new();
    for _ in 0..seeders {
        let line = lines.next().expect("seeder line").expect("read");
        let (id, addr) = line.split_once(' ').expect("id addr");
        peers.push(PeerInfo {
            peer_id: id.parse().expect("peer id"),
            addrs: vec![addr.parse().expect("addr")],
        });
    }

    let me = NodeIdentity::load_or_create(&dir.path().join("downloader")).expect("identity");
    let first = Arc::new(Mutex::new(None));
    let first2 = first.clone();
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let report = download::run(DownloadPlan {
        file_id: manifest.id(),
        peers,
        partial: Vec::new(),
        sources: None,
        dir: dir.path().join("out"),
        identity: me.identity.clone(),
        sharing: SharingConfig {
            chunk_size: chunk,
            max_in_flight_per_peer: depth,
            ..defaults
        },
        store: None,
        progress: Some(Arc::new(move |_p: &download::Progress| {
            let mut f = first2.lock().unwrap_or_else(|e| e.into_inner());
            if f.is_none() {
                *f = Some(started.elapsed());
            }
        })),
        live: None,
        download_limit: None,
        only: Vec::new(),
        sequential: false,
    })
    .await
    .expect("download");
    let cpu = cpu_seconds() - cpu0;
    drop(child.stdin.take());
    let _ = child.wait();
    let gib = manifest.size as f64 / (1u64 << 30) as f64;
    println!(
        "download: {} MiB from {seeders} seeders, {} KiB chunks, depth {depth}: {:.2} s = {:.0} MB/s",
        manifest.size >> 20,
        chunk >> 10,
        report.seconds,
        manifest.size as f64 / report.seconds / 1e6
    );
    println!(
        "downloader: {:.2} CPU s/GiB, peak RSS {} MiB, first verified chunk after {:.1} ms, chunks per peer {:?}",
        cpu / gib,
        peak_rss_kib() >> 10,
        first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(0.0, |d| d.as_secs_f64() * 1e3),
        report.per_peer.iter().map(|p| p.chunks).collect::<Vec<_>>()
    );
}

/// The child: serves the file from N peer servers until stdin closes.
async fn serve(args: &[String]) {
    let path = Path::new(&args[0]);
    let n: usize = args[1].parse().expect("seeders");
    let chunk: u32 = args[2].parse().expect("chunk");
    let manifest = hash_file(path, "bench.bin".into(), chunk, |_| {}).expect("hash");
    let home = tempfile::tempdir().expect("temp dir");
    let mut servers = Vec::new();
    let mut out = std::io::stdout().lock();
    for i in 0..n {
        let id = NodeIdentity::load_or_create(&home.path().join(i.to_string())).expect("identity");
        let store = Store::new();
        store.insert(SharedFile {
            manifest: manifest.clone(),
            manifest_bytes: manifest.encode(),
            data: Arc::new(node::data::Data::File(File::open(path).expect("open"))),
            have: Arc::new(HaveBits::full(manifest.chunks.len() as u32)),
        });
        let server = PeerServer::start(&id, "127.0.0.1:0".parse().expect("addr"), store).expect("server");
        writeln!(out, "{} {}", id.peer_id, server.local_addr()).expect("stdout");
        servers.push(server);
    }
    out.flush().expect("stdout");
    drop(out);
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await;
    for s in servers {
        s.shutdown().await;
    }
}

fn write_random(path: &Path, mib: u64) {
    let mut f = File::create(path).expect("create");
    let mut buf = vec![0u8; 4 << 20];
    let mut rng = rand::thread_rng();
    for _ in 0..mib.div_ceil(4) {
        rng.fill_bytes(&mut buf);
        f.write_all(&buf).expect("write");
    }
}

/// User + system CPU seconds of this process so far (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map_or(0.0, |f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum());
    ticks / 100.0
}

/// Peak resident set size of this process, KiB (Linux).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
