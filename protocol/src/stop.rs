//! Stopping when told: one cancellation signal per process. [`Stop`] is a
//! cheap, cloneable flag that every long wait selects on (retries,
//! handshakes, long polls, the main loop), so SIGINT/SIGTERM is acted on
//! at once whatever the process is waiting for. [`on_signals`] wires it to
//! the signals; a second signal exits the process at once.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

/// How long a process may take, from the signal to its exit, in total.
/// Shutdown steps bound themselves with fractions of it.
pub const STOP_BUDGET: Duration = Duration::from_secs(1);

/// A process-wide "stop now" flag. Clones share it.
#[derive(Debug, Clone)]
pub struct Stop {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Stop {
    fn default() -> Self {
        Stop::new()
    }
}

impl Stop {
    /// A flag that is not set (and is set only by [`Stop::stop`]).
    pub fn new() -> Stop {
        Stop {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Sets the flag; every [`Stop::stopped`] resolves.
    pub fn stop(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once the flag is set (at once if it is already).
    pub async fn stopped(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// A [`Stop`] set by the first SIGINT or SIGTERM; the second one ends the
/// process at once (status 128 + signal number), for when a clean stop
/// itself hangs. Must be called inside a tokio runtime.
pub fn on_signals() -> std::io::Result<Stop> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = Stop::new();
    let flag = stop.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name} received, stopping");
        flag.stop();
        let code = tokio::select! {
            _ = term.recv() => 128 + 15,
            _ = int.recv() => 128 + 2,
        };
        eprintln!("second signal: exiting at once");
        std::process::exit(code);
    });
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stopped_resolves_for_every_clone_before_and_after() {
        let stop = Stop::new();
        let waiter = {
            let s = stop.clone();
            tokio::spawn(async move { s.stopped().await })
        };
        assert!(!stop.is_stopped());
        stop.stop();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        // Already set: resolves at once.
        tokio::time::timeout(Duration::from_secs(5), stop.clone().stopped())
            .await
            .unwrap();
        assert!(stop.is_stopped());
    }
}
