//! `quorrent-chaos`: the fault-injection test of the tracker cluster.
//!
//! - `run`: the whole test (needs root: it makes network namespaces);
//!   `scripts/chaos.sh` builds the binaries and calls this.
//! - `worker`: clients on one test host (started by `run`).
//! - `relay`: the UDP relay in front of a member's Raft port (started by `run`).
//! - `check FILE`: checks a recorded history (JSON lines) again.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use chaos::{history::Op, runner, workload};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Parser)]
#[command(
    name = "quorrent-chaos",
    version,
    about = "Fault-injection test of the quorrent tracker cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the test and prints the report (exit 1 when a check fails).
    Run(runner::Options),
    /// Runs clients until stdin closes (started by `run`).
    Worker {
        #[arg(long)]
        ca: PathBuf,
        /// Proxy addresses, comma-separated; client i uses proxy i mod n.
        #[arg(long)]
        proxies: String,
        /// Client indexes, comma-separated.
        #[arg(long)]
        clients: String,
        #[arg(long)]
        files: u32,
        #[arg(long)]
        users: u32,
        #[arg(long)]
        seed: u64,
    },
    /// Relays UDP from LISTEN to UPSTREAM, impaired as stdin says.
    Relay {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
    },
    /// Checks a recorded history (history.jsonl) for linearizability.
    Check {
        file: PathBuf,
        #[arg(long, default_value_t = 50_000_000)]
        max_steps: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let result = runtime.block_on(real_main(cli));
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("quorrent-chaos: {}", protocol::one_line(&format!("{e:#}")));
            std::process::exit(2);
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Run(options) => {
            let options = options.checked()?;
            let stop = protocol::stop::on_signals().context("signal handlers")?;
            tokio::select! {
                r = runner::run(options) => {
                    let summary = r?;
                    print!("{}", summary.text);
                    Ok(summary.passed)
                }
                _ = stop.stopped() => anyhow::bail!("stopped; everything it made is removed"),
            }
        }
        Command::Worker {
            ca,
            proxies,
            clients,
            files,
            users,
            seed,
        } => worker(ca, proxies, clients, files, users, seed).await.map(|_| true),
        Command::Relay { listen, upstream } => {
            let stats = chaos::relay::run(
                listen,
                upstream,
                BufReader::new(tokio::io::stdin()),
                tokio::io::stdout(),
            )
            .await?;
            eprintln!("relay stopped: {stats:?}");
            Ok(true)
        }
        Command::Check { file, max_steps } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut history = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let op: Op = serde_json::from_str(line).with_context(|| format!("{}:{}", file.display(), n + 1))?;
                history.push(op);
            }
            let report = chaos::check::check(&history, max_steps);
            println!("{report:?}");
            Ok(matches!(report.result, chaos::check::Verdict::Linearizable))
        }
    }
}

async fn worker(
    ca: PathBuf,
    proxies: String,
    clients: String,
    files: u32,
    users: u32,
    seed: u64,
) -> anyhow::Result<()> {
    let proxies: Vec<SocketAddr> = proxies
        .split(',')
        .map(|p| p.parse().with_context(|| format!("proxy address {p:?}")))
        .collect::<anyhow::Result<_>>()?;
    let clients: Vec<u32> = clients
        .split(',')
        .map(|c| c.parse().with_context(|| format!("client index {c:?}")))
        .collect::<anyhow::Result<_>>()?;
    let config = workload::client_config(&ca)?;
    let (op_tx, mut op_rx) = tokio::sync::mpsc::unbounded_channel::<Op>();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let (start_tx, start_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // stdin: "start" starts the workload; end of file stops it.
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if l.trim() == "start" {
                let _ = start_tx.send(true);
            }
        }
        let _ = stop_tx.send(true);
        let _ = start_tx.send(true);
    });
    let shape = workload::Shape { files, users };
    let crew = workload::Crew {
        clients,
        proxies,
        config,
        shape,
        seed,
    };
    let runner = tokio::spawn(workload::run(crew, op_tx, ready_tx, start_rx, stop_rx));
    let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
    let mut ready_open = true;
    loop {
        tokio::select! {
            r = ready_rx.recv(), if ready_open => match r {
                Some(Ok(i)) => { out.write_all(format!("R {i}\n").as_bytes()).await?; out.flush().await?; }
                Some(Err(e)) => { out.write_all(format!("E {}\n", protocol::one_line(&e)).as_bytes()).await?; out.flush().await?; }
                None => ready_open = false,
            },
            // Flushed one by one: a worker killed at the end must not take
            // operations that took effect with it.
            op = op_rx.recv() => match op {
                Some(op) => {
                    out.write_all(format!("{}\n", serde_json::to_string(&op)?).as_bytes()).await?;
                    out.flush().await?;
                }
                None => break,
            },
        }
    }
    out.flush().await?;
    runner.await?;
    Ok(())
}
