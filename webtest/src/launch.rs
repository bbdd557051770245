//! Finding, installing and starting Chromium, and stopping it for good.
//!
//! Owns the Chromium process: its command line, its throw-away profile, the
//! thread that drains its stderr (and remembers the last lines for error
//! messages), and the kill of its whole process group. It does not speak the
//! DevTools protocol; `cdp.rs` does, over the address found here.

use std::{
    collections::VecDeque,
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex, OnceLock},
    thread,
    time::{Duration, Instant},
};

use crate::Error;

/// How long Chromium may take to print its DevTools address. A cold start
/// on the shared 2-core machine, next to two builds, takes a few seconds.
pub(crate) const START_WAIT: Duration = Duration::from_secs(30);

/// How long the install script may run (apt-get update and install, or
/// waiting for another test process that is running them).
const INSTALL_WAIT: Duration = Duration::from_secs(600);

/// The lock that keeps parallel test processes from running apt at once.
const INSTALL_LOCK: &str = "/tmp/quorrent-chromium-install.lock";

/// How many of Chromium's last stderr lines an error message quotes.
const STDERR_KEPT: usize = 20;

/// The names Debian (`chromium`) and Ubuntu (`chromium-browser`) give it.
const NAMES: [&str; 2] = ["chromium", "chromium-browser"];

/// A running Chromium; dropping it kills the process group and removes
/// the profile.
pub(crate) struct Process {
    child: Child,
    /// The throw-away `--user-data-dir`; removed on drop, after the kill.
    profile: tempfile::TempDir,
    /// The last lines Chromium wrote to stderr, for error messages.
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// The DevTools port Chromium chose (`--remote-debugging-port=0`).
    pub(crate) port: u16,
}

impl Process {
    /// Starts Chromium headless on `about:blank` and waits (bounded) for its
    /// DevTools address.
    pub(crate) fn start(width: u32, height: u32) -> Result<Process, Error> {
        let binary = chromium()?;
        let profile = tempfile::Builder::new()
            .prefix("quorrent-chromium-")
            .tempdir()
            .map_err(|e| Error::io("creating the chromium profile folder", e))?;
        let mut command = Command::new(&binary);
        command
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                // Nothing but the page under test touches the network: the
                // machines reach no host but the package registries.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--no-pings",
                "--mute-audio",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            // Crashpad's handlers leave the process group (see the drop);
            // their database, like Chromium's config and cache, stays inside
            // the throw-away profile rather than in $HOME.
            .arg(format!(
                "--crash-dumps-dir={}",
                profile.path().join("crashes").display()
            ))
            .env("XDG_CONFIG_HOME", profile.path().join("config"))
            .env("XDG_CACHE_HOME", profile.path().join("cache"))
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so the drop kills the renderer and
            // helper processes with it.
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| Error::io(&format!("starting {}", binary.display()), e))?;
        let stderr = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_KEPT)));
        let (address_tx, address_rx) = mpsc::channel();
        if let Some(pipe) = child.stderr.take() {
            let kept = stderr.clone();
            // Drains stderr for the process's whole life so Chromium never
            // blocks on a full pipe; ends at EOF, when Chromium is gone.
            thread::Builder::new()
                .name("chromium-stderr".into())
                .spawn(move || drain(pipe, &kept, address_tx))
                .map_err(|e| Error::io("starting the stderr reader thread", e))?;
        }
        let mut process = Process {
            child,
            profile,
            stderr,
            port: 0,
        };
        let address = match address_rx.recv_timeout(START_WAIT) {
            Ok(address) => address,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(process.launch_error(&format!(
                    "{} printed no \"DevTools listening on\" line within {START_WAIT:?}",
                    binary.display()
                )))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The pipe closed: Chromium exited (or closed stderr) first.
                let status = process.child.wait().map(|s| s.to_string()).unwrap_or_default();
                return Err(process.launch_error(&format!(
                    "{} exited ({status}) before printing its DevTools address",
                    binary.display()
                )));
            }
        };
        process.port = port_of(&address)
            .ok_or_else(|| process.launch_error(&format!("no port in the DevTools address {address:?}")))?;
        Ok(process)
    }

    /// The process id of the Chromium browser process (also its process
    /// group id).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temporary profile folder (`--user-data-dir`).
    pub(crate) fn profile(&self) -> &Path {
        self.profile.path()
    }

    /// Chromium's last stderr lines, oldest first.
    pub(crate) fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// A launch error quoting Chromium's last stderr lines.
    pub(crate) fn launch_error(&self, problem: &str) -> Error {
        Error::Launch(format!(
            "{problem}; chromium's last stderr lines:\n{}",
            self.stderr_tail()
        ))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The wrapper script leads the group (process_group(0)) and the
        // browser, zygotes, renderers and utilities stay in it: SIGKILL to
        // the group ends them all, even mid-panic.
        let group = self.child.id();
        kill_group(group);
        let _ = self.child.kill();
        // Reaped, so its pid is really gone when the drop returns.
        let _ = self.child.wait();
        // Crashpad's handlers put themselves in groups of their own; they
        // name the profile on their command line. Wait (bounded) until
        // nothing of this Chromium runs any more: killed processes whose
        // parent died are reaped by PID 1, which in some containers never
        // happens, so a zombie counts as gone.
        let marker = self.profile.path().display().to_string();
        let deadline = Instant::now() + STOP_WAIT;
        loop {
            let left = leftovers(group, &marker);
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in left {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            kill_group(group);
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How long the drop waits for Chromium's processes to die after SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(5);

fn kill_group(group: u32) {
    if let Some(group) = rustix::process::Pid::from_raw(group as i32) {
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
}

/// The processes, zombies aside, in the process group `group` or whose
/// command line contains `marker` (the profile path).
fn leftovers(group: u32, marker: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and
            // parentheses, so the fields are read after the last ')'.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(close) = stat.rfind(')') else { return false };
            let mut fields = stat[close + 1..].split_whitespace();
            let state = fields.next().unwrap_or("Z");
            let pgrp = fields.nth(1).and_then(|g| g.parse::<u32>().ok());
            if state == "Z" || state == "X" {
                return false;
            }
            pgrp == Some(group)
                || std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
        })
        .collect()
}

/// Reads Chromium's stderr line by line: sends the DevTools address once,
/// keeps the last lines.
fn drain(pipe: impl Read, kept: &Mutex<VecDeque<String>>, address: mpsc::Sender<String>) {
    let mut address = Some(address);
    for line in BufReader::new(pipe).lines() {
        let Ok(line) = line else { break };
        if let Some(at) = line.find("ws://") {
            if line.contains("DevTools listening on") {
                if let Some(tx) = address.take() {
                    let _ = tx.send(line[at..].trim().to_string());
                }
            }
        }
        let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() == STDERR_KEPT {
            kept.pop_front();
        }
        kept.push_back(line);
    }
}

/// The port of `ws://127.0.0.1:PORT/devtools/browser/ID`.
fn port_of(address: &str) -> Option<u16> {
    let rest = address.strip_prefix("ws://")?;
    let host_port = rest.split('/').next()?;
    host_port.rsplit(':').next()?.parse().ok()
}

/// The Chromium binary: on PATH, or installed by the project's script (at
/// most once per process, under a lock shared by all processes).
fn chromium() -> Result<PathBuf, Error> {
    // The outcome of this process's one install attempt: a failed install
    // fails every later launch at once instead of running apt again.
    static INSTALL: OnceLock<Result<(), String>> = OnceLock::new();
    if let Some(found) = on_path() {
        return Ok(found);
    }
    INSTALL
        .get_or_init(|| {
            install().map_err(|e| match e {
                Error::Launch(problem) => problem,
                e => e.to_string(),
            })
        })
        .clone()
        .map_err(Error::Launch)?;
    on_path().ok_or_else(|| {
        Error::Launch(format!(
            "the install script ran but none of {NAMES:?} is on PATH ({})",
            std::env::var("PATH").unwrap_or_default()
        ))
    })
}

/// Runs the install script under the lock, unless another process
/// installed Chromium while this one waited for the lock.
fn install() -> Result<(), Error> {
    let _lock = install_lock()?;
    if on_path().is_some() {
        return Ok(());
    }
    run_install_script()
}

/// The first of `NAMES` found in a folder of PATH.
fn on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    NAMES.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Holds an exclusive `flock` on the install lock file until dropped;
/// waits at most `INSTALL_WAIT` for another process's install.
fn install_lock() -> Result<File, Error> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(INSTALL_LOCK)
        .map_err(|e| Error::io(&format!("opening {INSTALL_LOCK}"), e))?;
    let deadline = Instant::now() + INSTALL_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&format!("locking {INSTALL_LOCK}"), e)),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() >= deadline => {
                return Err(Error::Launch(format!(
                    "another process held {INSTALL_LOCK} (installing chromium) for more than {INSTALL_WAIT:?}"
                )))
            }
            // flock has no timeout: poll.
            Err(std::fs::TryLockError::WouldBlock) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Runs `scripts/install-chromium.sh`, bounded by `INSTALL_WAIT`; its output
/// goes to the test's output.
fn run_install_script() -> Result<(), Error> {
    // webtest/ sits in the workspace root, beside scripts/.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
    let script = root.join("scripts/install-chromium.sh");
    // Its stderr joins its stdout, so the output keeps its order.
    let mut child = Command::new("bash")
        .args(["-c", "exec bash \"$0\" 2>&1"])
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(&format!("running {}", script.display()), e))?;
    // Drained on a thread (apt prints a lot) while the wait below is bounded;
    // the output is quoted if the script fails.
    let reader = child.stdout.take().map(|mut pipe| {
        thread::spawn(move || {
            let mut output = Vec::new();
            let _ = pipe.read_to_end(&mut output);
            output
        })
    });
    let deadline = Instant::now() + INSTALL_WAIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(200)),
            Ok(None) => {
                kill_group(child.id());
                let _ = child.wait();
                return Err(Error::Launch(format!(
                    "{} did not finish within {INSTALL_WAIT:?}",
                    script.display()
                )));
            }
            Err(e) => return Err(Error::io(&format!("waiting for {}", script.display()), e)),
        }
    };
    let output = reader.and_then(|r| r.join().ok()).unwrap_or_default();
    let output = String::from_utf8_lossy(&output);
    // In the test's output (eprint! is captured, shown if the test fails).
    eprint!("{output}");
    if status.success() {
        Ok(())
    } else {
        let tail: Vec<&str> = output.lines().rev().take(STDERR_KEPT).collect();
        Err(Error::Launch(format!(
            "{} failed ({status}):\n{}",
            script.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )))
    }
}

/// The WebSocket address of the first page target, from `/json/list`
/// (plain HTTP/1.0 on loopback; polled until a page is listed).
pub(crate) fn page_target(port: u16, wait: Duration) -> Result<String, Error> {
    let deadline = Instant::now() + wait;
    loop {
        let last = match json_list(port) {
            Ok(targets) => {
                let page = targets.as_array().and_then(|list| {
                    list.iter()
                        .find(|t| t["type"] == "page")
                        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                });
                if let Some(url) = page {
                    return Ok(url.to_string());
                }
                format!("no page target in {targets}")
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(Error::Launch(format!(
                "no page target at http://127.0.0.1:{port}/json/list within {wait:?}: {last}"
            )));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// One GET of `/json/list` (HTTP/1.1: Chromium refuses 1.0), parsed. The
/// body is read by its `Content-Length`, the connection not kept.
fn json_list(port: u16) -> Result<serde_json::Value, String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    // A target list is a few KiB; the cap only guards against a runaway.
    const CAP: usize = 1 << 20;
    let mut response = Vec::new();
    let mut buf = [0; 8192];
    let body_at = loop {
        if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 || response.len() > CAP {
            return Err(format!("no end of headers in {:?}", String::from_utf8_lossy(&response)));
        }
        response.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&response[..body_at]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("answered {:?}", head.lines().next().unwrap_or_default()));
    }
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
    if length > CAP {
        return Err(format!("a target list of {length} bytes"));
    }
    let mut body = response.split_off(body_at);
    while body.len() < length {
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("the connection closed after {} of {length} bytes", body.len()));
        }
        body.extend_from_slice(&buf[..n]);
    }
    body.truncate(length);
    serde_json::from_slice(&body).map_err(|e| format!("{e} in {:?}", String::from_utf8_lossy(&body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_of_devtools_address() {
        assert_eq!(
            port_of("ws://127.0.0.1:38117/devtools/browser/2b6f0b1e-9d3c"),
            Some(38117)
        );
        assert_eq!(port_of("ws://[::1]:9222/devtools/browser/x"), Some(9222));
        assert_eq!(port_of("http://127.0.0.1:1/"), None);
    }
}
