//! Real child processes for the end-to-end tests: start a quorrent binary
//! with its configuration (stderr to a file), kill it when the test ends
//! however it ends, signal it, and time a SIGTERM to its exit.

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

/// Starts `bin --config CONFIG`, stderr into `stderr`, without RUST_LOG
/// and NO_COLOR from the test's environment.
pub fn spawn_with_config(bin: &str, config: &Path, stderr: &Path) -> ChildGuard {
    let child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).expect("stderr file"))
        .spawn()
        .expect("spawn");
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
