//! Logging set-up shared by every binary: readable lines on stderr and one
//! file per process under the log folder (`logs/tracker-1.log`, ...). The
//! level comes from `RUST_LOG` when set, else from the configuration.
//! Colour codes go only to a terminal: the file never gets them, and
//! stderr gets them only when it is a terminal and `NO_COLOR` is unset.

use std::{io::IsTerminal, path::Path};

use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

/// Keeps the background log writer alive; drop it last.
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

/// Installs the global subscriber. `file_name` is the log file in
/// `log_dir` (created if missing). `stderr` turns the console copy on.
pub fn init(log_dir: &Path, file_name: &str, level: &str, stderr: bool) -> std::io::Result<LogGuard> {
    std::fs::create_dir_all(log_dir)?;
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let appender = tracing_appender::rolling::never(log_dir, file_name);
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let file_layer = fmt::layer().with_writer(writer).with_ansi(false).with_filter(filter());
    let stderr_layer = stderr.then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(stderr_wants_colour())
            .with_filter(filter())
    });
    let _ = tracing_subscriber::registry()
        .with(file_layer)
        .with(stderr_layer)
        .try_init();
    Ok(LogGuard(Some(guard)))
}

/// Whether stderr should get colour codes: a terminal, and no `NO_COLOR`.
pub fn stderr_wants_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
