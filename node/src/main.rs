//! `quorrent`, the node: parses the command line, opens the home, sets up
//! logging (logs/node-<short peer id>.log) and runs the command.
//!
//! Every failure ends here, as one line on stderr (`quorrent: ...`), or
//! with `--json` as `{"error": {"code", "message"}}` on stdout, and a
//! non-zero status; that includes usage errors and a home that cannot be
//! opened. SIGINT/SIGTERM stop the command (see `protocol::stop`): a clean
//! end, status 0.

use std::{process::ExitCode, time::Duration};

use clap::{error::ErrorKind, Parser};
use node::{cli::Cli, commands, home::Home};
use serde_json::json;

/// Why the process ends other than by success.
struct Failure {
    code: &'static str,
    message: String,
    /// Stopped by a signal: reported, but status 0.
    stopped: bool,
}

impl From<commands::CommandError> for Failure {
    fn from(e: commands::CommandError) -> Self {
        Failure {
            code: e.code(),
            message: e.to_string(),
            stopped: e.is_stop(),
        }
    }
}

impl From<node::home::HomeError> for Failure {
    fn from(e: node::home::HomeError) -> Self {
        commands::CommandError::from(e).into()
    }
}

fn main() -> ExitCode {
    // Looked for before parsing, so that a usage error answers in JSON too.
    let json_hint = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    let (json, result) = match Cli::try_parse() {
        Ok(cli) => (cli.json, run(cli)),
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => e.exit(),
            _ => (json_hint, Err(usage(&e))),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // Every message is meant to be one line; make sure of it.
            let message = protocol::one_line(&f.message);
            if json {
                let key = if f.stopped { "stopped" } else { "error" };
                let mut out = serde_json::Map::new();
                out.insert(key.into(), json!({ "code": f.code, "message": message }));
                println!("{}", serde_json::Value::Object(out));
            } else {
                eprintln!("quorrent: {message}");
            }
            if f.stopped {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A command-line error of clap as one line (code `usage`).
fn usage(e: &clap::Error) -> Failure {
    let message = match e.kind() {
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            "a command is required".to_owned()
        }
        _ => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid command line");
            first.trim_start_matches("error:").trim().to_owned()
        }
    };
    Failure {
        code: "usage",
        message: format!("{message} (see `quorrent --help`)"),
        stopped: false,
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let explicit_config = cli.config.is_some();
    let mut home = Home::open(cli.home, cli.config)?;
    let file = format!("node-{}.log", home.identity.peer_id.short());
    let _log = protocol::logging::init(
        &home.config.log_dir,
        &file,
        &home.config.log_level,
        cli.command.logs_to_stderr(),
    )
    .map_err(|e| Failure {
        code: "io",
        message: format!("cannot open the log folder {}: {e}", home.config.log_dir.display()),
        stopped: false,
    })?;
    // A link's CA is checked, and its network set up, before anything
    // connects.
    node::link::prepare(&mut home, &cli.command, explicit_config, cli.json).map_err(commands::CommandError::from)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure {
        code: "internal",
        message: format!("cannot start the async runtime: {e}"),
        stopped: false,
    })?;
    let result = runtime.block_on(async {
        home.stop = protocol::stop::on_signals().map_err(|e| Failure {
            code: "internal",
            message: format!("cannot catch signals: {e}"),
            stopped: false,
        })?;
        commands::run(&home, cli.command, cli.json).await.map_err(Failure::from)
    });
    // Whatever still waits (a hash of a big file, a frozen peer) is left.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}
