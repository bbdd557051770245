//! The whole system across several hosts: `scripts/testnet.sh` makes one
//! network namespace per host on a private bridge (three trackers, a
//! proxy, two clients), and the real binaries run inside them, configured
//! with the hosts' IPs only. Certificates come from `gen-certs
//! --from-config`, so the proxy is verified by its IP.
//!
//! Checked: a leader is elected over the bridge; a node on c1 that
//! listens on 0.0.0.0 (no `advertise`) registers, shares a file and seeds
//! it, announcing its c1 address; a node on c2 finds the file and
//! downloads it, verified, from c1; after the leader's process is
//! SIGKILLed a write through the proxy succeeds again under a new leader.
//!
//! Needs root and `ip netns`; without them it passes with a printed
//! reason. The testnet's name and prefix come from the process id, so
//! runs side by side do not collide; a drop guard tears the namespaces
//! down and kills every child even when the test panics.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use protocol::config::{MemberAddr, NodeConfig, ProxyConfig, SharingConfig, TrackerConfig};
use tracker_cluster::testing::procs::ChildGuard;

const LIMIT: Duration = Duration::from_secs(60);
const PASSWORD: &str = "pw-secret";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/testnet.sh")
}

/// The binaries of this build: `quorrent` from Cargo, the tracker and the
/// proxy beside it (built here, since they belong to other packages: a
/// binary left from an older build would speak an older protocol; a
/// build with nothing to do takes a moment).
fn binaries() -> (PathBuf, PathBuf, PathBuf) {
    let node = PathBuf::from(env!("CARGO_BIN_EXE_quorrent"));
    let dir = node.parent().expect("target dir").to_owned();
    let (tracker, proxy) = (dir.join("quorrent-tracker"), dir.join("quorrent-proxy"));
    {
        let release = dir.ends_with("release");
        let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        build.args(["build", "-p", "tracker-cluster", "-p", "proxy", "--bins"]);
        if release {
            build.arg("--release");
        }
        assert!(
            build.status().expect("cargo build").success(),
            "building the tracker and proxy"
        );
    }
    (node, tracker, proxy)
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root (network namespaces need it)".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`ip netns` is not available".into()),
    }
}

/// The testnet, taken down when dropped (after the children, which are
/// declared later and so dropped first).
struct Testnet {
    name: String,
    prefix: String,
}

impl Testnet {
    fn up() -> Testnet {
        let pid = std::process::id();
        let name = format!("q{}", pid % 100_000);
        let prefix = format!("10.{}.{}", 80 + (pid >> 8) % 100, pid % 256);
        let net = Testnet { name, prefix };
        let out = Command::new(script())
            .args(["up", "--name", &net.name, "--prefix", &net.prefix])
            .args(["--trackers", "3", "--proxies", "1", "--clients", "2"])
            .output()
            .expect("testnet.sh");
        assert!(
            out.status.success(),
            "testnet up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        net
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.name)
    }

    fn ip(&self, last: u8) -> String {
        format!("{}.{last}", self.prefix)
    }

    /// `ip netns exec NS-host bin args...`, without the test's RUST_LOG.
    fn cmd(&self, host: &str, bin: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host)])
            .arg(bin)
            .env_remove("RUST_LOG")
            .env_remove("QUORRENT_HOME")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    /// Starts a long-running process in `host`'s namespace; its stderr
    /// goes to `stderr`. `ip netns exec` execs the program, so the pid is
    /// the program's own (checked: SIGKILL must reach it).
    fn spawn(&self, host: &str, bin: &Path, args: &[&str], stderr: &Path) -> ChildGuard {
        let child = self
            .cmd(host, bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr).expect("stderr file"))
            .spawn()
            .expect("ip netns exec");
        let guard = ChildGuard(child);
        // The kernel keeps the first 15 bytes of a program's name.
        let want: String = bin.file_name().unwrap().to_string_lossy().chars().take(15).collect();
        let t = Instant::now();
        loop {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", guard.0.id())).unwrap_or_default();
            if comm.trim() == want {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{want} did not start in place of ip ({comm:?})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        guard
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["down", "--name", &self.name]).status();
    }
}

/// Runs a command to its end (killed past [`LIMIT`]); its outputs are
/// small, so the pipes never fill while it runs.
fn run(mut c: Command) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut guard = ChildGuard(c.spawn().expect("spawn"));
    let t = Instant::now();
    while guard.0.try_wait().expect("try_wait").is_none() {
        assert!(t.elapsed() < LIMIT, "{c:?} did not finish within {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = Output {
        status: guard.0.wait().expect("wait"),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read;
    if let Some(mut o) = guard.0.stdout.take() {
        o.read_to_end(&mut out.stdout).expect("stdout");
    }
    if let Some(mut e) = guard.0.stderr.take() {
        e.read_to_end(&mut out.stderr).expect("stderr");
    }
    out
}

fn ok_json(out: Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: {e}: {:?}", out.stdout))
}

fn write_json(path: &Path, value: &impl serde::Serialize) {
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

#[test]
fn cluster_proxy_and_nodes_on_separate_hosts() {
    if let Some(why) = unsupported() {
        eprintln!("skipped: {why}");
        return;
    }
    let (node_bin, tracker_bin, proxy_bin) = binaries();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let net = Testnet::up();

    // Configurations with the hosts' IPs only.
    let members: Vec<MemberAddr> = (1..=3u8)
        .map(|i| MemberAddr {
            id: i.into(),
            api: format!("{}:7401", net.ip(10 + i)),
            raft: format!("{}:7411", net.ip(10 + i)),
        })
        .collect();
    let certs = root.join("certs");
    let mut config_files = Vec::new();
    for m in &members {
        let cfg = TrackerConfig {
            id: m.id,
            members: members.clone(),
            data_dir: Some(root.join(format!("data/tracker-{}", m.id))),
            log_dir: root.join("logs"),
            certs_dir: certs.clone(),
            // Member 3 binds wildcards, as behind NAT, and advertises its IP.
            listen_api: (m.id == 3).then(|| "0.0.0.0:7401".into()),
            listen_raft: (m.id == 3).then(|| "0.0.0.0:7411".into()),
            ..TrackerConfig::default()
        };
        let path = root.join(format!("tracker-{}.json", m.id));
        write_json(&path, &cfg);
        config_files.push(path);
    }
    let proxy_addr = format!("{}:7400", net.ip(21));
    let proxy_cfg = ProxyConfig {
        name: "proxy-1".into(),
        listen: proxy_addr.clone(),
        trackers: members.clone(),
        log_dir: root.join("logs"),
        certs_dir: certs.clone(),
        ..ProxyConfig::default()
    };
    let proxy_path = root.join("proxy-1.json");
    write_json(&proxy_path, &proxy_cfg);
    config_files.push(proxy_path.clone());

    let mut gen = Command::new(&tracker_bin);
    gen.args(["gen-certs", "--dir"])
        .arg(&certs)
        .arg("--ca-dir")
        .arg(root.join("ca"))
        .arg("--from-config")
        .args(&config_files);
    let out = run(gen);
    assert!(
        out.status.success(),
        "gen-certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The processes; dropped (killed) before `net` is taken down.
    let mut trackers: Vec<Option<ChildGuard>> = (1..=3)
        .map(|i| {
            let cfg = root.join(format!("tracker-{i}.json"));
            Some(net.spawn(
                &format!("t{i}"),
                &tracker_bin,
                &["--config", cfg.to_str().unwrap()],
                &root.join(format!("tracker-{i}.err")),
            ))
        })
        .collect();
    let _proxy = net.spawn(
        "p1",
        &proxy_bin,
        &["--config", proxy_path.to_str().unwrap()],
        &root.join("proxy.err"),
    );

    // The admin tool, from t1's host, asks the members on the others.
    let leader = |not: Option<u64>| -> u64 {
        let t = Instant::now();
        loop {
            let mut c = net.cmd("t1", &tracker_bin);
            c.arg("--config")
                .arg(root.join("tracker-1.json"))
                .args(["admin", "leader"]);
            let out = run(c);
            if out.status.success() {
                let id: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("leader id");
                if Some(id) != not {
                    return id;
                }
            }
            assert!(
                t.elapsed() < LIMIT,
                "no leader: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let first = leader(None);

    // Nodes on c1 and c2, listening on every interface, no `advertise`.
    let node_home = |name: &str| -> (PathBuf, PathBuf) {
        let home = root.join(name);
        std::fs::create_dir_all(&home).unwrap();
        let cfg = NodeConfig {
            proxies: vec![proxy_addr.clone()],
            ca_cert: certs.join("ca.pem"),
            log_dir: root.join("logs"),
            listen: "0.0.0.0:0".into(),
            sharing: SharingConfig {
                heartbeat_secs: 1,
                ..SharingConfig::default()
            },
            ..NodeConfig::default()
        };
        let path = home.join("node.json");
        write_json(&path, &cfg);
        (home, path)
    };
    let quorrent = |host: &str, (home, cfg): &(PathBuf, PathBuf), args: &[&str]| -> Command {
        let mut c = net.cmd(host, &node_bin);
        c.arg("--home")
            .arg(home)
            .arg("--config")
            .arg(cfg)
            .arg("--json")
            .args(args)
            .env("QUORRENT_PASSWORD", PASSWORD);
        c
    };
    let alice = node_home("alice");
    let bob = node_home("bob");
    ok_json(run(quorrent("c1", &alice, &["register", "alice"])), "register alice");
    ok_json(run(quorrent("c1", &alice, &["login", "alice"])), "login alice");
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = root.join("shared.bin");
    std::fs::write(&file, &data).unwrap();
    let shared = ok_json(run(quorrent("c1", &alice, &["share", file.to_str().unwrap()])), "share");
    let file_id = shared["file_id"].as_str().expect("file_id").to_owned();
    let mut seed = quorrent("c1", &alice, &["seed"]);
    seed.stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("seed.err")).unwrap());
    let _seed = ChildGuard(seed.spawn().expect("seed"));

    ok_json(run(quorrent("c2", &bob, &["register", "bob"])), "register bob");
    ok_json(run(quorrent("c2", &bob, &["login", "bob"])), "login bob");
    // The seeder is found once it has announced itself.
    let t = Instant::now();
    loop {
        let hits = ok_json(run(quorrent("c2", &bob, &["search", "shared"])), "search");
        if hits.as_array().is_some_and(|h| {
            h.iter()
                .any(|x| x["file_id"] == file_id.as_str() && x["owners"].as_u64() >= Some(1))
        }) {
            break;
        }
        assert!(t.elapsed() < LIMIT, "c1 never shows up as an owner: {hits}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out_dir = root.join("bob-out");
    let got = ok_json(
        run(quorrent(
            "c2",
            &bob,
            &["get", &file_id, "--no-seed", "-o", out_dir.to_str().unwrap()],
        )),
        "get",
    );
    assert_eq!(got["peers"].as_u64(), Some(1), "{got}");
    let path = PathBuf::from(got["path"].as_str().unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), data, "the downloaded file differs");
    // It came from c1's announced address, which is c1's IP, not 0.0.0.0.
    let seed_log = std::fs::read_to_string(root.join("seed.err")).unwrap_or_default();
    assert!(!seed_log.contains("no local address"), "{seed_log}");

    // SIGKILL the leader's process; a write through the proxy succeeds.
    let mut killed = trackers[(first - 1) as usize].take().expect("leader process");
    killed.0.kill().expect("SIGKILL");
    let _ = killed.0.wait();
    let carol = node_home("carol");
    ok_json(
        run(quorrent("c2", &carol, &["register", "carol"])),
        "register after the leader died",
    );
    let second = leader(Some(first));
    assert_ne!(second, first);
    drop(trackers);
}
