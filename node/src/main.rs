//! `quorrent`, the node: parses the command line, opens the home, sets up
//! logging (logs/node-<short peer id>.log) and runs the command.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::Parser;
use node::{cli::Cli, commands, home::Home};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Every error names its cause in its own message: one line.
            eprintln!("quorrent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::open(cli.home, cli.config)?;
    let file = format!("node-{}.log", home.identity.peer_id.short());
    let _log = protocol::logging::init(
        &home.config.log_dir,
        &file,
        &home.config.log_level,
        cli.command.logs_to_stderr(),
    )
    .map_err(|e| anyhow!("cannot open the log folder {}: {e}", home.config.log_dir.display()))?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(commands::run(&home, cli.command, cli.json))?;
    Ok(())
}
