//! `quorrent-loadgen`: drives replicated writes through a proxy and checks
//! afterwards that every acknowledged one is there (`run`, `verify`: used
//! by scripts/demo-failover.sh), and loads and measures a large registry
//! (`bulk`, `search`, `steady`: used by scripts/bench-registry.sh).
//!
//! `bulk` registers synthetic files `synthetic-<n>-<word>-<word>.bin`
//! (ids, names and sizes are a function of n, so a run can be resumed or
//! extended with `--start`) with OwnMany requests from K clients, logged
//! in as one user it registers, spread over a few peers it announces.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use protocol::{
    ids::{FileId, PeerId},
    tracker_api::{ApiError, FileMeta, Reply, Request, MAX_OWN_MANY},
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tracker_cluster::testing::{write_load, ApiClient, Target};

#[derive(Parser)]
#[command(
    name = "quorrent-loadgen",
    version,
    about = "Write load through a quorrent proxy, its check, and the registry benchmark's loader"
)]
struct Cli {
    /// The proxy's address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    proxy: std::net::SocketAddr,
    /// The name in the proxy's certificate.
    #[arg(long, default_value = "proxy-1")]
    proxy_name: String,
    /// Talk to the members' tracker API instead of a proxy (following
    /// NotLeader): ID=IP:PORT, repeatable (bulk, search, steady).
    #[arg(long = "member", value_name = "ID=ADDR")]
    members: Vec<String>,
    /// Folder holding ca.pem.
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Account {
    /// The user the files belong to (registered if missing; the password
    /// comes from QUORRENT_PASSWORD, else a fixed one: this is a bench
    /// account).
    #[arg(long, default_value = "bulkload")]
    user: String,
}

#[derive(Subcommand)]
enum Command {
    /// Runs CLIENTS writers for SECONDS; prints a JSON summary and writes
    /// the acknowledged file ids to ACKED.
    Run {
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 6.0)]
        seconds: f64,
        /// Keeps ids of different runs apart.
        #[arg(long, default_value_t = 1)]
        run: u64,
        #[arg(long)]
        acked: PathBuf,
    },
    /// Checks that every id in ACKED is registered (linearizable reads).
    Verify {
        #[arg(long)]
        acked: PathBuf,
    },
    /// Registers synthetic files START..START+FILES with OwnMany batches
    /// from CLIENTS concurrent clients; prints files/s (JSON). The user's
    /// quota (`quotas.max_files_per_user`) must allow them.
    Bulk {
        #[arg(long, default_value_t = 1_000_000)]
        files: u64,
        /// The first file number (resume or extend an earlier load).
        #[arg(long, default_value_t = 0)]
        start: u64,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Files per OwnMany request.
        #[arg(long, default_value_t = MAX_OWN_MANY)]
        batch: usize,
        /// Peers to announce; batches go to them in turn.
        #[arg(long, default_value_t = 4)]
        peers: u32,
        #[command(flatten)]
        account: Account,
    },
    /// Runs COUNT searches of varied substrings of the synthetic names
    /// (words, word pairs, file numbers, absent text), one at a time;
    /// prints latency quantiles (JSON).
    Search {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// File numbers below this are looked for (the loaded count).
        #[arg(long, default_value_t = 1_000_000)]
        files: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        account: Account,
    },
    /// A small steady write load (single Owns at RATE per second from
    /// CLIENTS clients, files numbered from START) for SECONDS, or until
    /// STOP_FILE exists; prints the latency quantiles and the longest
    /// write (JSON).
    Steady {
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long)]
        stop_file: Option<PathBuf>,
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 1_000_000_000)]
        start: u64,
        #[command(flatten)]
        account: Account,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if let Err(e) = rt.block_on(real_main(cli)) {
        eprintln!("quorrent-loadgen: {e:#}");
        std::process::exit(1);
    }
}

fn target(cli: &Cli) -> anyhow::Result<Target> {
    if cli.members.is_empty() {
        return Ok(Target::Proxy(cli.proxy, cli.proxy_name.clone()));
    }
    let mut members = std::collections::BTreeMap::new();
    for m in &cli.members {
        let (id, addr) = m.split_once('=').context("--member takes ID=IP:PORT")?;
        members.insert(
            id.parse::<u64>().context("--member ID")?,
            addr.parse().context("--member address")?,
        );
    }
    Ok(Target::Members(members))
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    let target = target(&cli)?;
    match cli.command {
        Command::Run {
            clients,
            seconds,
            run,
            acked,
        } => {
            let mut r = write_load(&cli.certs, target, clients, Duration::from_secs_f64(seconds), run).await;
            let ids: String = r.acked.iter().map(|id| format!("{id}\n")).collect();
            std::fs::write(&acked, ids)?;
            let summary = serde_json::json!({
                "acknowledged": r.ok,
                "errors": r.errors,
                "first_error": r.first_error,
                "writes_per_s": r.rate().round(),
                "p50_ms": ms(r.quantile(0.5)),
                "p99_ms": ms(r.quantile(0.99)),
                "longest_pause_ms": ms(r.quantile(1.0)),
            });
            println!("{summary}");
        }
        Command::Verify { acked } => {
            let text = std::fs::read_to_string(&acked)?;
            let ids: Vec<FileId> = text.lines().map(|l| l.parse()).collect::<Result<_, _>>()?;
            let client = ApiClient::new(&cli.certs);
            let user = format!("checker{}", rand::random::<u32>());
            for req in [
                Request::Register {
                    user: user.clone(),
                    password: "check".into(),
                },
                Request::Login {
                    user: user.clone(),
                    password: "check".into(),
                },
            ] {
                if let Reply::LoggedIn { token, .. } = client.send_to(&target, &client.envelope(req)).await? {
                    *client.token.lock().expect("token") = Some(token);
                }
            }
            let mut missing = 0u64;
            for id in &ids {
                match client
                    .send_to(
                        &target,
                        &client.envelope(Request::GetOwners {
                            file_id: *id,
                            cursor: None,
                            limit: 1,
                        }),
                    )
                    .await
                {
                    Ok(Reply::Owners { .. }) => {}
                    Err(ApiError::UnknownFile(_)) => missing += 1,
                    other => anyhow::bail!("checking {id}: {other:?}"),
                }
            }
            println!("{}", serde_json::json!({ "checked": ids.len(), "missing": missing }));
            if missing > 0 {
                std::process::exit(1);
            }
        }
        Command::Bulk {
            files,
            start,
            clients,
            batch,
            peers,
            account,
        } => bulk(&cli.certs, target, files, start, clients, batch, peers, &account.user).await?,
        Command::Search {
            count,
            limit,
            files,
            seed,
            account,
        } => search(&cli.certs, target, count, limit, files, seed, &account.user).await?,
        Command::Steady {
            seconds,
            stop_file,
            rate,
            clients,
            start,
            account,
        } => {
            let until = Until {
                duration: Duration::from_secs_f64(seconds),
                stop_file,
            };
            steady(&cli.certs, target, until, rate, clients, start, &account.user).await?
        }
    }
    Ok(())
}

/// Milliseconds with one decimal.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// The `q` quantile of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    match sorted.len() {
        0 => Duration::ZERO,
        n => sorted[((n - 1) as f64 * q).round() as usize],
    }
}

/// Words of the synthetic names: 64, so a word is in about 1 name in 32
/// and a pair of words in 1 in 4,096.
const WORDS: [&str; 64] = [
    "alpha", "amber", "atlas", "aurora", "basalt", "beacon", "birch", "blue", "canyon", "cedar", "cobalt", "comet",
    "coral", "crimson", "delta", "dune", "echo", "ember", "falcon", "fjord", "forest", "garnet", "glacier", "granite",
    "harbor", "hazel", "indigo", "iris", "jade", "jasper", "juniper", "kelp", "lagoon", "lantern", "lunar", "maple",
    "meadow", "mesa", "nebula", "nectar", "oasis", "onyx", "orchid", "pebble", "pine", "prairie", "quartz", "quill",
    "raven", "reef", "river", "saffron", "sierra", "solar", "spruce", "summit", "tundra", "umber", "valley", "velvet",
    "willow", "winter", "yarrow", "zephyr",
];

/// The `n`-th synthetic file: id, name and size are a function of `n`.
/// Sizes are spread log-uniformly from 4 KiB to 16 GiB, in 256 KiB chunks
/// (the node's default).
fn synthetic(n: u64) -> FileMeta {
    let h = blake3::hash(&[b"quorrent-synthetic-".as_slice(), &n.to_le_bytes()].concat());
    let b = h.as_bytes();
    let w1 = WORDS[b[0] as usize % WORDS.len()];
    let w2 = WORDS[b[1] as usize % WORDS.len()];
    let bits = 12 + u64::from(b[2]) % 23;
    let low = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
    let size = (1u64 << bits) + low % (1u64 << bits);
    let chunk_size = 256 << 10;
    FileMeta {
        id: FileId(*b),
        name: format!("synthetic-{n}-{w1}-{w2}.bin"),
        size,
        chunk_size,
        chunk_count: size.div_ceil(u64::from(chunk_size)) as u32,
        files: 0,
    }
}

/// Whether an error is worth sending the same request again for (the
/// write id makes that safe).
fn retryable(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Unavailable(_) | ApiError::Overloaded | ApiError::NotLeader { .. } | ApiError::Throttled { .. }
    )
}

/// Sends `req` (one envelope: the same write id on every try) until it
/// gets an answer that is not worth retrying, for at most two minutes.
async fn send_retrying(client: &ApiClient, target: &Target, req: Request) -> Result<Reply, ApiError> {
    let env = client.envelope(req);
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        match client.send_to(target, &env).await {
            Err(e) if retryable(&e) && Instant::now() < until => {
                let wait = match &e {
                    ApiError::Throttled { retry_after_ms, .. } => *retry_after_ms,
                    _ => 50,
                };
                tokio::time::sleep(Duration::from_millis(wait.clamp(10, 5000))).await;
            }
            other => return other,
        }
    }
}

fn password() -> String {
    std::env::var("QUORRENT_PASSWORD").unwrap_or_else(|_| "bulkload-password".into())
}

/// Registers `user` (if it is not there yet) and logs in; returns a
/// client holding the session.
async fn session(certs: &std::path::Path, target: &Target, user: &str) -> anyhow::Result<ApiClient> {
    let client = ApiClient::new(certs);
    let pw = password();
    match send_retrying(
        &client,
        target,
        Request::Register {
            user: user.into(),
            password: pw.clone(),
        },
    )
    .await
    {
        Ok(_) | Err(ApiError::UserExists(_)) => {}
        Err(e) => anyhow::bail!("registering {user}: {e}"),
    }
    match send_retrying(
        &client,
        target,
        Request::Login {
            user: user.into(),
            password: pw,
        },
    )
    .await
    {
        Ok(Reply::LoggedIn { token, .. }) => *client.token.lock().expect("token") = Some(token),
        other => anyhow::bail!("logging in as {user}: {other:?}"),
    }
    Ok(client)
}

/// A client sharing `with`'s session (its own connection and write ids).
fn same_session(certs: &std::path::Path, with: &ApiClient) -> ApiClient {
    let c = ApiClient::new(certs);
    *c.token.lock().expect("token") = with.token.lock().expect("token").clone();
    c
}

fn peer_of(user: &str, i: u32) -> PeerId {
    PeerId(*blake3::hash(format!("quorrent-bulkload-peer {user} {i}").as_bytes()).as_bytes())
}

async fn announce(client: &ApiClient, target: &Target, peer: PeerId) -> anyhow::Result<()> {
    send_retrying(
        client,
        target,
        Request::AnnouncePeer {
            peer_id: peer,
            addrs: vec![],
        },
    )
    .await
    .map(|_| ())
    .with_context(|| format!("announcing peer {peer}"))
}

#[allow(clippy::too_many_arguments)]
async fn bulk(
    certs: &std::path::Path,
    target: Target,
    files: u64,
    start: u64,
    clients: usize,
    batch: usize,
    peers: u32,
    user: &str,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=MAX_OWN_MANY).contains(&batch),
        "--batch must be 1 to {MAX_OWN_MANY}"
    );
    let first = session(certs, &target, user).await?;
    let peers: Vec<PeerId> = (0..peers.max(1)).map(|i| peer_of(user, i)).collect();
    for p in &peers {
        announce(&first, &target, *p).await?;
    }
    let peers = Arc::new(peers);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let end = start + files;
    let started = Instant::now();
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0);
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let d = done.load(Ordering::Relaxed);
                let rate = (d - last.1) as f64 / last.0.elapsed().as_secs_f64();
                eprintln!(
                    "bulk: {d} of {files} files in {:.0} s ({rate:.0} files/s now)",
                    started.elapsed().as_secs_f64()
                );
                last = (Instant::now(), d);
            }
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let client = same_session(certs, &first);
        let (target, peers, next, done) = (target.clone(), peers.clone(), next.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut new = 0u64;
            let mut latencies = Vec::new();
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                let from = start + b * batch as u64;
                if from >= end {
                    return Ok::<_, anyhow::Error>((new, latencies));
                }
                let to = (from + batch as u64).min(end);
                let req = Request::OwnMany {
                    peer_id: peers[(b % peers.len() as u64) as usize],
                    files: (from..to).map(synthetic).collect(),
                };
                let t = Instant::now();
                match send_retrying(&client, &target, req).await {
                    Ok(Reply::Owned { newly_owned }) => new += u64::from(newly_owned),
                    other => anyhow::bail!("files {from}..{to}: {other:?}"),
                }
                latencies.push(t.elapsed());
                done.fetch_add(to - from, Ordering::Relaxed);
            }
        }));
    }
    let mut new = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (n, l) = t.await.context("bulk client")??;
        new += n;
        latencies.extend(l);
    }
    let secs = started.elapsed().as_secs_f64();
    progress.abort();
    latencies.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "files": files,
            "start": start,
            "newly_owned": new,
            "clients": clients,
            "batch": batch,
            "seconds": (secs * 100.0).round() / 100.0,
            "files_per_s": (files as f64 / secs).round(),
            "request_p50_ms": ms(quantile(&latencies, 0.5)),
            "request_p99_ms": ms(quantile(&latencies, 0.99)),
        })
    );
    Ok(())
}

/// A search text: a word (about 1 name in 32), a word pair (1 in 4,096),
/// a file number (one name, so the whole index is scanned), or text that
/// is in no name; sometimes in upper case.
fn search_text(rng: &mut StdRng, files: u64) -> String {
    let word = |rng: &mut StdRng| WORDS[rng.gen_range(0..WORDS.len())];
    let text = match rng.gen_range(0..10) {
        0..=3 => word(rng).to_string(),
        4..=6 => format!("{}-{}", word(rng), word(rng)),
        7..=8 => format!("-{}-", rng.gen_range(0..files.max(1))),
        _ => format!("{}q{}", word(rng), rng.gen_range(0..1000)),
    };
    if rng.gen_bool(0.2) {
        text.to_uppercase()
    } else {
        text
    }
}

async fn search(
    certs: &std::path::Path,
    target: Target,
    count: usize,
    limit: u32,
    files: u64,
    seed: u64,
    user: &str,
) -> anyhow::Result<()> {
    let client = session(certs, &target, user).await?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut latencies = Vec::with_capacity(count);
    let mut hits_total = 0usize;
    let mut full_pages = 0usize;
    // A few first, unmeasured: connections, caches.
    for i in 0..count + 20 {
        let text = search_text(&mut rng, files);
        let env = client.envelope(Request::Search {
            text: text.clone(),
            cursor: 0,
            limit,
        });
        let t = Instant::now();
        let answer = client.send_to(&target, &env).await;
        let took = t.elapsed();
        match answer {
            Ok(Reply::Files { hits, next }) => {
                if i >= 20 {
                    latencies.push(took);
                    hits_total += hits.len();
                    full_pages += usize::from(next.is_some());
                }
            }
            other => anyhow::bail!("search {text:?}: {other:?}"),
        }
    }
    latencies.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "searches": count,
            "limit": limit,
            "mean_hits": (hits_total as f64 / count.max(1) as f64 * 10.0).round() / 10.0,
            "full_pages": full_pages,
            "p50_ms": ms(quantile(&latencies, 0.5)),
            "p90_ms": ms(quantile(&latencies, 0.9)),
            "p99_ms": ms(quantile(&latencies, 0.99)),
            "max_ms": ms(quantile(&latencies, 1.0)),
        })
    );
    Ok(())
}

/// When a steady load ends.
#[derive(Clone)]
struct Until {
    duration: Duration,
    stop_file: Option<PathBuf>,
}

impl Until {
    fn reached(&self, began: Instant) -> bool {
        began.elapsed() >= self.duration || self.stop_file.as_ref().is_some_and(|f| f.exists())
    }
}

#[allow(clippy::too_many_arguments)]
async fn steady(
    certs: &std::path::Path,
    target: Target,
    until: Until,
    rate: f64,
    clients: usize,
    start: u64,
    user: &str,
) -> anyhow::Result<()> {
    let first = session(certs, &target, user).await?;
    let peer = peer_of(user, 0);
    announce(&first, &target, peer).await?;
    let clients = clients.max(1);
    let period = Duration::from_secs_f64(clients as f64 / rate.max(0.001));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = same_session(certs, &first);
        let (target, until) = (target.clone(), until.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // (latency, seconds from the start when it was sent)
            let mut seen = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            let mut i = 0u64;
            while !until.reached(began) {
                tick.tick().await;
                let file = synthetic(start + i * clients as u64 + c as u64);
                i += 1;
                let env = client.envelope(Request::Own { peer_id: peer, file });
                let at = began.elapsed();
                let t = Instant::now();
                match client.send_to(&target, &env).await {
                    Ok(_) => seen.push((t.elapsed(), at)),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (seen, errors, first_error)
        }));
    }
    let mut seen = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let (s, e, f) = t.await.context("steady client")?;
        seen.extend(s);
        errors += e;
        first_error = first_error.or(f);
    }
    let worst = seen.iter().max_by_key(|(l, _)| *l).copied().unwrap_or_default();
    let mut latencies: Vec<Duration> = seen.iter().map(|(l, _)| *l).collect();
    latencies.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "writes": latencies.len(),
            "errors": errors,
            "first_error": first_error,
            "writes_per_s": (latencies.len() as f64 / began.elapsed().as_secs_f64()).round(),
            "p50_ms": ms(quantile(&latencies, 0.5)),
            "p99_ms": ms(quantile(&latencies, 0.99)),
            "max_ms": ms(worst.0),
            "max_at_s": (worst.1.as_secs_f64() * 10.0).round() / 10.0,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Synthetic files pass the tracker's checks and are a function of n.
    #[test]
    fn synthetic_files_are_valid_and_stable() {
        for n in [0, 1, 999_999, 9_999_999, 1 << 40] {
            let f = synthetic(n);
            tracker_cluster::registry::check_meta(&f).unwrap();
            assert_eq!(f, synthetic(n));
            assert!(f.name.starts_with(&format!("synthetic-{n}-")));
            assert!((4096..1 << 35).contains(&f.size), "{}", f.size);
        }
        assert_ne!(synthetic(1).id, synthetic(2).id);
        // A full request stays far inside the tracker's 1 MiB frame.
        let files: Vec<_> = (9_999_000..9_999_000 + MAX_OWN_MANY as u64).map(synthetic).collect();
        let req = Request::OwnMany {
            peer_id: PeerId([1; 32]),
            files,
        };
        assert!(protocol::codec::encode_body(&req).unwrap().len() < 200 << 10);
    }
}
