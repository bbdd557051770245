//! `quorrent-loadgen`: drives replicated writes through a proxy and checks
//! afterwards that every acknowledged one is there. Used by
//! scripts/demo-failover.sh and for measurements against real processes.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use protocol::{
    ids::FileId,
    tracker_api::{ApiError, Reply, Request},
};
use tracker_cluster::testing::{write_load, ApiClient, Target};

#[derive(Parser)]
#[command(
    name = "quorrent-loadgen",
    version,
    about = "Write load through a quorrent proxy, and its check"
)]
struct Cli {
    /// The proxy's address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    proxy: std::net::SocketAddr,
    /// The name in the proxy's certificate.
    #[arg(long, default_value = "proxy-1")]
    proxy_name: String,
    /// Folder holding ca.pem.
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    #[command(subcommand)]
    command: Command,
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
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if let Err(e) = rt.block_on(real_main(cli)) {
        eprintln!("quorrent-loadgen: {e:#}");
        std::process::exit(1);
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    let target = Target::Proxy(cli.proxy, cli.proxy_name.clone());
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
            let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
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
    }
    Ok(())
}
