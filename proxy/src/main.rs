//! `quorrent-proxy --config FILE`: runs one proxy until SIGINT/SIGTERM.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use protocol::config::ProxyConfig;

#[derive(Parser)]
#[command(
    name = "quorrent-proxy",
    version,
    about = "Front door of the quorrent tracker cluster: follows the Raft leader"
)]
struct Cli {
    /// Configuration file (JSON); every field has a default.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() {
    if let Err(e) = real_main(Cli::parse()) {
        eprintln!("quorrent-proxy: {}", protocol::one_line(&format!("{e:#}")));
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let config: ProxyConfig = match &cli.config {
        Some(p) => {
            let c: ProxyConfig = protocol::config::load(p)?;
            c.validate(p)?;
            c
        }
        None => ProxyConfig::default(),
    };
    let _log = protocol::logging::init(
        &config.log_dir,
        &format!("{}.log", config.name),
        &config.log_level,
        true,
    )
    .with_context(|| format!("log folder {}", config.log_dir.display()))?;
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async move {
        let stop = protocol::stop::on_signals().context("signal handlers")?;
        let proxy = proxy::Proxy::start(config).await?;
        stop.stopped().await;
        proxy.shutdown_within(Duration::from_millis(250)).await;
        anyhow::Ok(())
    });
    // Forwarded requests still retrying and long polls still waiting are
    // dropped with their tasks.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}
