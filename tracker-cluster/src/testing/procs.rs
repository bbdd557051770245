//! Real child processes for the end-to-end tests and benchmarks: start a
//! quorrent binary with its configuration, kill it when the test ends
//! however it ends, signal it, time a SIGTERM to its exit, read its memory.

use std::{
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// Kills and reaps the child when dropped, so a failing test leaves no
/// process behind.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bin --config CONFIG`, stderr into the file `stderr` (or
/// nowhere), without RUST_LOG and NO_COLOR from the test's environment.
pub fn spawn_with_config(bin: impl AsRef<Path>, config: &Path, stderr: Option<&Path>) -> ChildGuard {
    let bin = bin.as_ref();
    let stderr = match stderr {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("stderr file")),
        None => Stdio::null(),
    };
    let child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    ChildGuard(child)
}

/// Sends a signal (`-TERM`, `-STOP`, ...) with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill {sig} {pid}");
}

/// SIGTERM, then the time until the child is reaped, and its status (at
/// most 20 s).
pub fn term_and_time(child: &mut Child) -> (Duration, ExitStatus) {
    let t = Instant::now();
    signal(child.id(), "-TERM");
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return (t.elapsed(), status);
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no exit 20 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Asserts that a log or stderr file is not empty and holds no ESC byte.
pub fn no_escape_codes(path: &Path) {
    let bytes = std::fs::read(path).expect("log file");
    assert!(!bytes.is_empty(), "{} is empty", path.display());
    assert!(!bytes.contains(&0x1b), "{} holds escape codes", path.display());
}

/// A process's (peak, current) resident memory in bytes (VmHWM, VmRSS).
pub fn rss_of(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}
