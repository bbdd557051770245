//! What the end-to-end node tests share: a proxy in front of a test
//! cluster, a node home with its configuration, and the real `quorrent`
//! binary run in it (killed on drop, output collected under a bound).

#![allow(dead_code)] // each test file uses its own part

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use rand::{RngCore, SeedableRng};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use protocol::config::{NodeConfig, ProxyConfig, SharingConfig};
use proxy::Proxy;
use tracker_cluster::testing::TestCluster;

pub const PASSWORD: &str = "pw-secret";

/// A proxy named `name` in front of `c`'s members on loopback port `port`
/// (0: ephemeral).
pub async fn start_proxy(c: &TestCluster, name: &str, port: u16) -> Proxy {
    let cfg = ProxyConfig {
        name: name.into(),
        listen: format!("127.0.0.1:{port}"),
        trackers: c.members.clone(),
        log_dir: c.dir.path().join("logs"),
        certs_dir: c.certs(),
        ..Default::default()
    };
    Proxy::start(cfg).await.expect("proxy starts")
}

/// A 3-member cluster with a leader, one proxy in front of it (ephemeral
/// port), and a temporary folder for the homes; all stopped or removed
/// when dropped.
pub struct Network {
    pub c: TestCluster,
    pub p: Proxy,
    pub root: tempfile::TempDir,
}

pub async fn network() -> Network {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.wait_leader(LIMIT).await;
    let p = start_proxy(&c, "proxy-1", 0).await;
    Network {
        c,
        p,
        root: tempfile::tempdir().unwrap(),
    }
}

/// A node home with a configuration listing `proxies` in order.
pub struct Home {
    pub dir: PathBuf,
    pub config: PathBuf,
}

/// A home whose configuration (as JSON) `patch` may change first.
pub fn home_with(
    root: &Path,
    name: &str,
    proxies: &[SocketAddr],
    c: &TestCluster,
    patch: impl FnOnce(&mut serde_json::Value),
) -> Home {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = NodeConfig {
        proxies: proxies.iter().map(|p| p.to_string()).collect(),
        ca_cert: c.certs().join("ca.pem"),
        log_dir: root.join("logs"),
        sharing: SharingConfig {
            chunk_size: 256 << 10,
            heartbeat_secs: 1,
            ..SharingConfig::default()
        },
        // Never the default port: tests run side by side.
        http_addr: Some("127.0.0.1:0".into()),
        ..NodeConfig::default()
    };
    let mut json = serde_json::to_value(&cfg).unwrap();
    patch(&mut json);
    let config = dir.join("node.json");
    std::fs::write(&config, json.to_string()).unwrap();
    Home { dir, config }
}

pub fn home(root: &Path, name: &str, proxies: &[SocketAddr], c: &TestCluster) -> Home {
    home_with(root, name, proxies, c, |_| {})
}

/// `quorrent --home H --config C ARGS...`, the password from the
/// environment, killed on drop.
pub fn quorrent_with(h: &Home, args: &[&str], password: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_quorrent"));
    c.arg("--home")
        .arg(&h.dir)
        .arg("--config")
        .arg(&h.config)
        .args(args)
        .env("QUORRENT_PASSWORD", password)
        .env_remove("QUORRENT_HOME")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

pub fn quorrent(h: &Home, args: &[&str]) -> tokio::process::Command {
    quorrent_with(h, args, PASSWORD)
}

/// Runs `cmd` to its end within `limit`: (success, stdout, stderr).
pub async fn output_within(mut cmd: tokio::process::Command, limit: Duration) -> (bool, String, String) {
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .expect("command timed out")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// The node daemon (`quorrent seed`) and its HTTP API, as the daemon and
// browser tests drive it.

pub const LIMIT: Duration = Duration::from_secs(60);

pub async fn ok_json(h: &Home, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = output_within(quorrent(h, &all), LIMIT).await;
    assert!(ok, "{args:?} failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"))
}

pub async fn sign_up(h: &Home, user: &str) {
    assert_eq!(ok_json(h, &["register", user]).await["user"], user);
    assert_eq!(ok_json(h, &["login", user]).await["user"], user);
}

pub fn random_file(dir: &Path, name: &str, size: usize, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut data = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    path
}

/// A running daemon: its process (killed on drop) and HTTP address.
pub struct Daemon {
    pub child: tokio::process::Child,
    pub http: SocketAddr,
    pub home: PathBuf,
}

/// Starts `quorrent seed` in `h` and waits for its `daemon.json`.
pub async fn start_daemon(h: &Home) -> Daemon {
    start_daemon_with(h, &[]).await
}

/// [`start_daemon`] with more arguments for `seed`.
pub async fn start_daemon_with(h: &Home, extra: &[&str]) -> Daemon {
    let info = h.dir.join("daemon.json");
    let _ = std::fs::remove_file(&info);
    let log = std::fs::File::create(h.dir.with_extension("seed.err")).unwrap();
    let mut args = vec!["seed"];
    args.extend_from_slice(extra);
    let child = quorrent(h, &args).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let pid = child.id().unwrap() as u64;
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Ok(bytes) = std::fs::read(&info) {
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["pid"], pid, "{v}");
            let mut http: SocketAddr = v["http"].as_str().unwrap().parse().unwrap();
            if http.ip().is_unspecified() {
                http.set_ip([127, 0, 0, 1].into());
            }
            return Daemon {
                child,
                http,
                home: h.dir.clone(),
            };
        }
        assert!(Instant::now() < deadline, "no daemon.json in {}", h.dir.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Daemon {
    /// SIGTERM, a clean exit, and `daemon.json` gone.
    pub async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(LIMIT, self.child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{status:?}");
        assert!(
            !self.home.join("daemon.json").exists(),
            "daemon.json removed on a clean stop"
        );
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        http(self.http, method, path, &[], body.unwrap_or("").as_bytes()).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call("POST", path, Some(&body.to_string())).await
    }

    /// The entry of `id` in `/api/files`, once `pred` holds for it.
    pub async fn await_file(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let (status, files) = self.get("/api/files").await;
            assert_eq!(status, 200, "{files}");
            let entry = files.as_array().unwrap().iter().find(|f| f["id"] == id).cloned();
            if let Some(e) = entry.filter(|e| pred(e)) {
                return e;
            }
            assert!(Instant::now() < deadline, "{id}: never {what}: {files}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One HTTP/1.1 request: status and the body as JSON (a string if not).
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let (status, _, body) = http_raw(addr, method, path, headers, body).await;
    let value = serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    (status, value)
}

pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        // The server may answer (413) before reading a large body.
        let _ = s.write_all(body).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    };
    let out = tokio::time::timeout(LIMIT, exchange)
        .await
        .expect("HTTP answer in time");
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("headers");
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, out[end + 4..].to_vec())
}
