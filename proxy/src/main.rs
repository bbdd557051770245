//! `quorrent-proxy --config FILE`: runs one proxy until SIGINT/SIGTERM.

use std::path::PathBuf;

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
        eprintln!("quorrent-proxy: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let config: ProxyConfig = match &cli.config {
        Some(p) => protocol::config::load(p)?,
        None => ProxyConfig::default(),
    };
    let _log = protocol::logging::init(
        &config.log_dir,
        &format!("{}.log", config.name),
        &config.log_level,
        true,
    )
    .with_context(|| format!("log folder {}", config.log_dir.display()))?;
    tokio::runtime::Runtime::new()?.block_on(async move {
        let proxy = proxy::Proxy::start(config).await?;
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal received, stopping");
        proxy.shutdown().await;
        anyhow::Ok(())
    })
}
