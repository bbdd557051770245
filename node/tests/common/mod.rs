//! What the end-to-end node tests share: a proxy in front of a test
//! cluster, a node home with its configuration, and the real `quorrent`
//! binary run in it (killed on drop, output collected under a bound).

#![allow(dead_code)] // each test file uses its own part

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

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
