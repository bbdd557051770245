//! The `quorrent` command line against the real thing: a tracker cluster of
//! three real members (`tracker_cluster::testing::TestCluster`, each on its
//! own runtime, real Raft over QUIC with mutual TLS, real redb stores) and
//! real proxies (`proxy::Proxy`) in this process, on ephemeral loopback
//! ports, with the certificates of a test CA. The nodes are the real
//! `quorrent` binary, run as child processes (killed on drop).
//!
//! Checked here: the commands and their `--json` outputs, the clear
//! one-line errors, a damaged state file refused and rebuilt by
//! `repair`, and that a node goes on through failures of the
//! cluster — the leader killed, the proxy in use shut down — with its
//! writes applied exactly once. Synchronisation is on observable state
//! (the tracker's answers, files appearing), never on fixed sleeps, and
//! everything is bounded by a timeout.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use common::*;
use node::tracker::TrackerClient;
use protocol::{
    config::NodeConfig,
    ids::FileId,
    tracker_api::{ApiError, PeerInfo, Reply, Request, SearchHit},
};
use tracker_cluster::testing::{free_port, ApiClient, TestCluster};

/// Bound on one command, and on waiting for the cluster.
const LIMIT: Duration = Duration::from_secs(60);

/// A started cluster of three members, `owner_ttl` seconds of owner
/// liveness when given (the default is 30 s).
async fn cluster(owner_ttl: Option<u64>) -> TestCluster {
    let mut c = TestCluster::new(3);
    for cfg in c.configs.values_mut() {
        if let Some(ttl) = owner_ttl {
            cfg.owner_ttl_secs = ttl;
        }
        // Two owners a page, so that `get` of a file with three owners
        // has to follow the pages.
        cfg.owners.max_owners_page = 2;
    }
    c.start_all();
    c.wait_leader(LIMIT).await;
    c
}

async fn output(cmd: tokio::process::Command) -> (bool, String, String) {
    output_within(cmd, LIMIT).await
}

async fn run(h: &Home, args: &[&str]) -> (bool, String, String) {
    output(quorrent(h, args)).await
}

fn json_of(args: &[&str], ok: bool, out: &str, err: &str) -> serde_json::Value {
    assert!(ok, "{args:?} failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"))
}

async fn ok_json(h: &Home, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = run(h, &all).await;
    json_of(args, ok, &out, &err)
}

/// The command fails with one line on stderr that contains `needle`.
fn assert_one_line_error(args: &[&str], (ok, _, err): (bool, String, String), needle: &str) {
    assert!(!ok, "{args:?} succeeded");
    assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
}

async fn fails_with(h: &Home, args: &[&str], needle: &str) {
    assert_one_line_error(args, run(h, args).await, needle);
}

/// The node's peer id (hex), from `status`.
async fn peer_id(h: &Home) -> String {
    ok_json(h, &["status"]).await["peer_id"].as_str().unwrap().to_owned()
}

/// `quorrent seed` in the background (killed on drop), its log on stderr
/// kept in a file next to the home for post-mortems.
fn spawn_seed(h: &Home) -> tokio::process::Child {
    let log = std::fs::File::create(h.dir.with_extension("seed.err")).unwrap();
    quorrent(h, &["seed"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("child running").to_string();
    let status = std::process::Command::new("kill").args([sig, &pid]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// SIGTERM, and the process ends cleanly (exit status 0).
async fn stop(mut child: tokio::process::Child) {
    signal(&child, "-TERM");
    let status = tokio::time::timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// An observer of the tracker (its own account), asking through a proxy
/// what the nodes did.
struct Observer {
    client: ApiClient,
    proxy: SocketAddr,
    name: &'static str,
}

impl Observer {
    async fn new(c: &TestCluster, proxy: SocketAddr, name: &'static str) -> Observer {
        let client = ApiClient::new(&c.certs());
        client.sign_up(&c.api_addrs(), "observer", "observer-pw").await;
        Observer { client, proxy, name }
    }

    async fn ask(&self, request: Request) -> Reply {
        let env = self.client.envelope(request);
        tokio::time::timeout(LIMIT, self.client.send(self.proxy, self.name, &env))
            .await
            .expect("tracker answers in time")
            .expect("transport")
            .expect("tracker reply")
    }

    /// The owners of `file` that the tracker counts as live, with the
    /// addresses they announced.
    async fn owners(&self, file: FileId) -> Vec<PeerInfo> {
        let mut all = Vec::new();
        let mut cursor = None;
        for _ in 0..100 {
            let request = Request::GetOwners {
                file_id: file,
                cursor,
                limit: u32::MAX,
            };
            match self.ask(request).await {
                Reply::Owners { owners, next, .. } => {
                    all.extend(owners);
                    match next {
                        Some(n) => cursor = Some(n),
                        None => return all,
                    }
                }
                other => panic!("get-owners: {other:?}"),
            }
        }
        panic!("get-owners: more than 100 pages")
    }

    async fn search(&self, text: &str) -> Vec<SearchHit> {
        match self
            .ask(Request::Search {
                text: text.into(),
                cursor: 0,
                limit: 100,
            })
            .await
        {
            Reply::Files { hits, .. } => hits,
            other => panic!("search: {other:?}"),
        }
    }

    /// The addresses `peer` (hex) is listed with as an owner of `file`.
    async fn addrs_of(&self, file: FileId, peer: &str) -> Option<Vec<SocketAddr>> {
        self.owners(file)
            .await
            .into_iter()
            .find(|o| o.peer_id.to_hex() == peer)
            .map(|o| o.addrs)
    }

    /// Waits until `peer` is listed as an owner of `file` with addresses
    /// other than `before`: a `seed` started after `before` was read has
    /// announced itself and registered its files.
    async fn await_new_addrs(&self, file: FileId, peer: &str, before: Option<Vec<SocketAddr>>) {
        tokio::time::timeout(LIMIT, async {
            loop {
                match self.addrs_of(file, peer).await {
                    Some(a) if !a.is_empty() && Some(&a) != before.as_ref() => return,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await
        .expect("the seeder registered within the limit");
    }
}

/// Starts `seed` for a node that owns `file` and waits until the tracker
/// lists it with its new address.
async fn seed_and_await(obs: &Observer, h: &Home, file: FileId) -> tokio::process::Child {
    let peer = peer_id(h).await;
    let before = obs.addrs_of(file, &peer).await;
    let child = spawn_seed(h);
    obs.await_new_addrs(file, &peer, before).await;
    child
}

/// The whole CLI story on one real cluster: accounts, share on three
/// nodes, search, a download from all three, seeding, and the errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_search_get_seed_through_the_cli() {
    // A short owner TTL, so that "no live owner" comes within seconds.
    let c = cluster(Some(3)).await;
    let p = start_proxy(&c, "proxy-1", 0).await;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let [alice, carol, dave, bob, erin] = ["alice", "carol", "dave", "bob", "erin"].map(|n| home(r, n, &[p.addr], &c));

    fails_with(&alice, &["search", "x"], "not logged in").await;
    assert_eq!(ok_json(&alice, &["register", "alice"]).await["user"], "alice");
    fails_with(&alice, &["register", "alice"], "already exists").await;
    let wrong = ["login", "alice"];
    assert_one_line_error(
        &wrong,
        output(quorrent_with(&alice, &wrong, "wrong")).await,
        "login refused",
    );
    let login = ok_json(&alice, &["login", "alice"]).await;
    assert_eq!(login["user"], "alice");
    assert!(login["expires"].as_u64().unwrap() > protocol::unix_ms());
    let session = std::fs::read_to_string(alice.dir.join("session.json")).unwrap();
    assert!(!session.contains(PASSWORD));

    // alice and carol share the same bytes: one file id, two owners.
    let src = random_file(&r.join("alice-data"), "data.bin", 32 << 20, 7);
    let shared = ok_json(&alice, &["share", src.to_str().unwrap()]).await;
    assert_eq!(shared["name"], "data.bin");
    assert_eq!(shared["size"], 32 << 20);
    let id_hex = shared["file_id"].as_str().unwrap().to_owned();
    let id: FileId = id_hex.parse().unwrap();
    sign_up(&carol, "carol").await;
    let carol_copy = r.join("carol-data").join("data.bin");
    std::fs::create_dir_all(carol_copy.parent().unwrap()).unwrap();
    std::fs::copy(&src, &carol_copy).unwrap();
    let shared = ok_json(&carol, &["share", carol_copy.to_str().unwrap()]).await;
    assert_eq!(shared["file_id"], id_hex.as_str());

    let obs = Observer::new(&c, p.addr, "proxy-1").await;
    let mut seeders = vec![
        seed_and_await(&obs, &alice, id).await,
        seed_and_await(&obs, &carol, id).await,
    ];

    // dave downloads it from those two, then seeds: the third owner.
    sign_up(&dave, "dave").await;
    let got = ok_json(&dave, &["get", "data.bin", "--no-seed"]).await;
    assert_eq!(got["file_id"], id_hex.as_str());
    assert_eq!(got["peers"], 2, "{got}");
    assert!(same_bytes(&src, Path::new(got["path"].as_str().unwrap())));
    seeders.push(seed_and_await(&obs, &dave, id).await);

    // bob finds it with three live owners and downloads from all three.
    sign_up(&bob, "bob").await;
    let hits = ok_json(&bob, &["search", "DATA"]).await;
    assert_eq!(hits.as_array().unwrap().len(), 1, "{hits}");
    assert_eq!(hits[0]["file_id"], id_hex.as_str());
    assert_eq!(hits[0]["name"], "data.bin");
    assert_eq!(hits[0]["owners"], 3, "{hits}");
    let (ok, text, err) = run(&bob, &["search", "data"]).await;
    assert!(ok && text.contains(&id_hex) && text.contains("data.bin"), "{text}{err}");

    fails_with(&bob, &["get", "nothing.txt"], "no file named").await;
    let out = r.join("bob-files");
    let got = ok_json(&bob, &["get", "data.bin", "-o", out.to_str().unwrap(), "--no-seed"]).await;
    assert_eq!(got["file_id"], id_hex.as_str());
    assert_eq!(got["size"], 32 << 20);
    assert_eq!(got["peers"], 3, "chunks came from every owner: {got}");
    assert_eq!(got["per_peer"].as_array().unwrap().len(), 3, "{got}");
    let bob_path = PathBuf::from(got["path"].as_str().unwrap());
    assert_eq!(bob_path, out.canonicalize().unwrap().join("data.bin"));
    assert!(same_bytes(&src, &bob_path));
    // bob is an owner now; asking again finds the file at home.
    assert_eq!(ok_json(&bob, &["search", "data"]).await[0]["owners"], 4);
    let again = ok_json(&bob, &["get", &id_hex, "--no-seed"]).await;
    assert_eq!(again["path"], got["path"]);
    assert_eq!(again["peers"], 0);

    let status = ok_json(&bob, &["status"]).await;
    assert_eq!(status["user"], "bob");
    // (Compared with the member ids only: a re-election may come between.)
    let leader = status["leader"].as_u64().unwrap();
    assert!(c.members.iter().any(|m| m.id == leader), "{status}");
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "{status}");
    assert_eq!(status["peer_id"].as_str().unwrap().len(), 64, "{status}");

    // SIGTERM ends each seeder cleanly. Once every owner has been silent
    // for the TTL, nobody is a live owner: a clear error for erin.
    for s in seeders {
        stop(s).await;
    }
    tokio::time::timeout(LIMIT, async {
        while obs.search("data.bin").await.iter().any(|h| h.live_owners > 0) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("owners drop out after the TTL");
    sign_up(&erin, "erin").await;
    fails_with(&erin, &["get", &id_hex, "--no-seed"], "no live owner").await;
    assert!(!erin.dir.join("files").join("data.bin").exists());

    // Two files of the same name: a name is no longer enough.
    let other = random_file(&r.join("other"), "data.bin", 1000, 8);
    ok_json(&alice, &["share", other.to_str().unwrap()]).await;
    fails_with(&bob, &["get", "data.bin"], "several files").await;

    ok_json(&bob, &["logout"]).await;
    fails_with(&bob, &["get", &id_hex], "not logged in").await;
    let logs = std::fs::read_dir(r.join("logs")).unwrap().count();
    assert!(logs >= 5, "one log per node: {logs}");
    p.shutdown().await;
}

/// A node configured with two proxies: while bob downloads, the leader is
/// killed and the proxy bob talks to is shut down. bob's get still
/// succeeds, exact, and its registration as an owner (writes after the
/// failures) is there; a new node goes on through the second proxy; the
/// killed member comes back, and a share during the next leader's death
/// succeeds too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_share_go_on_through_leader_kill_and_proxy_loss() {
    let mut c = cluster(None).await;
    let port1 = free_port();
    let p1 = start_proxy(&c, "proxy-1", port1).await;
    let p2 = start_proxy(&c, "proxy-2", 0).await;
    let proxies = [p1.addr, p2.addr];
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let [alice, bob] = ["alice", "bob"].map(|n| home(r, n, &proxies, &c));
    let obs = Observer::new(&c, p2.addr, "proxy-2").await;

    sign_up(&alice, "alice").await;
    let src = random_file(&r.join("alice-data"), "movie.mkv", 16 << 20, 9);
    let shared = ok_json(&alice, &["share", src.to_str().unwrap()]).await;
    let id_hex = shared["file_id"].as_str().unwrap().to_owned();
    let id: FileId = id_hex.parse().unwrap();
    let alice_seed = seed_and_await(&obs, &alice, id).await;
    sign_up(&bob, "bob").await;

    // alice is frozen, so bob's get, once it has asked the tracker, waits
    // on her: the failures land between its first and last tracker calls.
    signal(&alice_seed, "-STOP");
    let get = quorrent(&bob, &["--json", "get", &id_hex, "--no-seed"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = bob.dir.join("files").join(".quorrent");
    tokio::time::timeout(LIMIT, async {
        while !started.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("bob's download starts");
    let leader = c.wait_leader(LIMIT).await;
    c.kill(leader);
    // The proxy closes its connections on the first poll of shutdown.
    let mut closing = Box::pin(p1.shutdown());
    let _ = tokio::time::timeout(Duration::ZERO, &mut closing).await;
    signal(&alice_seed, "-CONT");
    closing.await;

    let out = tokio::time::timeout(LIMIT, get.wait_with_output())
        .await
        .expect("get ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let got = json_of(&["get"], out.status.success(), &stdout, &stderr);
    assert!(stderr.trim().is_empty(), "no error shown: {stderr}");
    assert_eq!(got["peers"], 1);
    assert!(same_bytes(&src, Path::new(got["path"].as_str().unwrap())));
    let new_leader = c.wait_leader(LIMIT).await;
    assert_ne!(new_leader, leader);
    // bob's announce and Own went to the new leader: two owners now.
    let hits = obs.search("movie").await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].live_owners, 2, "{hits:?}");

    // A new bob process: the first proxy is down, the second answers.
    let hits = ok_json(&bob, &["search", "movie"]).await;
    assert_eq!(hits[0]["owners"], 2, "{hits}");

    // proxy-1 back on its port; the killed member back from its data,
    // caught up with the others.
    let p1 = start_proxy(&c, "proxy-1", port1).await;
    c.start(leader);
    let applied = c.tracker(new_leader).app.metrics().last_applied.unwrap().index;
    c.wait_applied(leader, applied, LIMIT).await;

    // The next leader dies and alice shares at once: the proxy waits for
    // the election and the share succeeds, registered exactly once.
    let second = random_file(&r.join("alice-data"), "notes.txt", 100_000, 10);
    c.kill(new_leader);
    let shared = ok_json(&alice, &["share", second.to_str().unwrap()]).await;
    assert_eq!(shared["name"], "notes.txt");
    let third = c.wait_leader(LIMIT).await;
    assert!(third != new_leader);
    let hits = obs.search("notes").await;
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].file.id.to_hex(), shared["file_id"].as_str().unwrap());
    assert_eq!(hits[0].live_owners, 1);

    stop(alice_seed).await;
    p1.shutdown().await;
    p2.shutdown().await;
}

/// The node's tracker client, writing without pause (Register: applied
/// twice it would answer "user exists"), while the leader is killed just
/// as a write has entered its log and the proxy in use is shut down: the
/// client retries through the second proxy with the same write id, and
/// every write gets its first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_retried_exactly_once_across_failures() {
    let mut c = cluster(None).await;
    let p1 = start_proxy(&c, "proxy-1", 0).await;
    let p2 = start_proxy(&c, "proxy-2", 0).await;
    let cfg = NodeConfig {
        proxies: vec![p1.addr.to_string(), p2.addr.to_string()],
        ca_cert: c.certs().join("ca.pem"),
        ..NodeConfig::default()
    };
    let client = TrackerClient::new(&cfg, None).unwrap();
    const WRITES: usize = 16;
    let (done_tx, mut done) = tokio::sync::watch::channel(0usize);
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..WRITES {
                let user = format!("user{i}");
                let reply = client
                    .call(Request::Register {
                        user: user.clone(),
                        password: "pw".into(),
                    })
                    .await;
                answers.push((user, reply));
                let _ = done_tx.send(i + 1);
            }
            answers
        })
    };
    tokio::time::timeout(LIMIT, done.wait_for(|n| *n >= WRITES / 4))
        .await
        .unwrap()
        .unwrap();
    // The next write enters the leader's log: kill the leader and the
    // proxy right then, before the answer can come back.
    let leader = c.wait_leader(LIMIT).await;
    let mut metrics = c.tracker(leader).app.raft.metrics();
    let last = metrics.borrow().last_log_index;
    tokio::time::timeout(LIMIT, async {
        tokio::select! {
            r = metrics.wait_for(|m| m.last_log_index > last) => { r.unwrap(); }
            // (Should the writer be done already, the failures come after.)
            r = done.wait_for(|n| *n == WRITES) => { r.unwrap(); }
        }
    })
    .await
    .unwrap();
    drop(metrics);
    c.kill(leader);
    let mut closing = Box::pin(p1.shutdown());
    let _ = tokio::time::timeout(Duration::ZERO, &mut closing).await;

    let answers = tokio::time::timeout(LIMIT, writer).await.unwrap().unwrap();
    for (user, reply) in answers {
        assert_eq!(reply.unwrap(), Reply::Registered { user });
    }
    closing.await;
    // The tracker did apply them: a second registration is refused.
    let err = client
        .call(Request::Register {
            user: "user0".into(),
            password: "pw".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, node::tracker::TrackerError::Api(ApiError::UserExists(_))),
        "{err}"
    );
    assert!(err.to_string().contains("already exists"), "{err}");
    p2.shutdown().await;
}

/// The `--json` error of a failing command: its code, after checking the
/// shape `{"error": {"code", "message"}}`, a one-line message, a non-zero
/// status and nothing on stderr.
async fn json_error_with(h: &Home, args: &[&str], password: &str) -> String {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = output(quorrent_with(h, &all, password)).await;
    assert!(!ok, "{args:?} succeeded: {out}");
    assert!(err.trim().is_empty(), "{args:?}: stderr {err:?}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"));
    let message = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{args:?}: {v}"));
    assert!(!message.is_empty() && !message.contains('\n'), "{args:?}: {v}");
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{args:?}: {v}"))
        .to_owned()
}

async fn json_error(h: &Home, args: &[&str]) -> String {
    json_error_with(h, args, PASSWORD).await
}

/// Each kind of failure has its stable `--json` code and one line of
/// text: usage and home errors (before any command runs), not logged in,
/// unknown names and ids, no proxy reachable, a proxy certificate of
/// another CA, a wrong password, and a login flood (throttled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_stable_codes_and_one_line_each() {
    let c = cluster(None).await;
    let p = start_proxy(&c, "proxy-1", 0).await;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let alice = home(r, "alice", &[p.addr], &c);

    // Before any command runs: the command line, the home.
    assert_eq!(json_error(&alice, &["frobnicate"]).await, "usage");
    fails_with(&alice, &["frobnicate"], "frobnicate").await;
    assert_eq!(json_error(&alice, &["get"]).await, "usage");
    let not_a_folder = r.join("not-a-folder");
    std::fs::write(&not_a_folder, "x").unwrap();
    let bad_home = Home {
        dir: not_a_folder,
        config: alice.config.clone(),
    };
    assert_eq!(json_error(&bad_home, &["status"]).await, "io");
    fails_with(&bad_home, &["status"], "not-a-folder").await;

    assert_eq!(json_error(&alice, &["search", "x"]).await, "not_logged_in");
    fails_with(&alice, &["search", "x"], "not logged in").await;
    sign_up(&alice, "alice").await;
    assert_eq!(json_error(&alice, &["register", "alice"]).await, "user_exists");
    assert_eq!(json_error_with(&alice, &["register", "bob"], "").await, "bad_input");
    assert_eq!(json_error(&alice, &["get", "nothing.txt"]).await, "not_found");
    let unknown = "ab".repeat(32);
    assert_eq!(json_error(&alice, &["get", &unknown]).await, "not_found");
    fails_with(&alice, &["get", &unknown], "unknown file").await;

    // No proxy answers.
    let nobody = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let lost = home(r, "lost", &[nobody], &c);
    assert_eq!(json_error(&lost, &["status"]).await, "unreachable");
    fails_with(&lost, &["status"], "cannot reach").await;
    // The proxy's certificate is not of the configured CA.
    let other_ca = r.join("other-ca");
    protocol::tls::generate(&other_ca, &other_ca.join("ca"), &["proxy-1".to_owned()], &[]).unwrap();
    let wary = home(r, "wary", &[p.addr], &c);
    let mut cfg: NodeConfig = serde_json::from_str(&std::fs::read_to_string(&wary.config).unwrap()).unwrap();
    cfg.ca_cert = other_ca.join("ca.pem");
    std::fs::write(&wary.config, serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(json_error(&wary, &["status"]).await, "refused_certificate");
    fails_with(&wary, &["status"], "certificate was refused").await;

    // Wrong passwords, then a flood of them: throttled.
    assert_eq!(
        json_error_with(&alice, &["login", "alice"], "wrong").await,
        "bad_credentials"
    );
    let wrong = ["login", "alice"];
    assert_one_line_error(
        &wrong,
        output(quorrent_with(&alice, &wrong, "wrong")).await,
        "login refused",
    );
    let mut throttled = false;
    for _ in 0..20 {
        match json_error_with(&alice, &wrong, "wrong").await.as_str() {
            "throttled" => {
                throttled = true;
                break;
            }
            code => assert_eq!(code, "bad_credentials"),
        }
    }
    assert!(throttled, "a login flood is throttled");
    assert_one_line_error(&wrong, output(quorrent_with(&alice, &wrong, "wrong")).await, "too many");
    p.shutdown().await;
}

/// With the proxy up but every tracker down, a request ends, once the
/// node has retried for its time, with the code `unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_when_every_tracker_is_down() {
    let mut c = cluster(None).await;
    // Any member may answer ClusterStatus: wait until all name the leader.
    c.wait_agreed_leader(LIMIT).await;
    let p = start_proxy(&c, "proxy-1", 0).await;
    let root = tempfile::tempdir().unwrap();
    let alice = home(root.path(), "alice", &[p.addr], &c);
    assert!(ok_json(&alice, &["status"]).await["leader"].is_u64());
    for m in c.members.clone() {
        c.kill(m.id);
    }
    assert_eq!(json_error(&alice, &["status"]).await, "unavailable");
    p.shutdown().await;
}

/// SIGTERM, then the time until the child is reaped, and its status.
async fn term_and_time(child: &mut tokio::process::Child) -> (Duration, std::process::ExitStatus) {
    let t = std::time::Instant::now();
    signal(child, "-TERM");
    let status = tokio::time::timeout(LIMIT, child.wait()).await.unwrap().unwrap();
    (t.elapsed(), status)
}

fn no_escape_codes(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    assert!(!bytes.contains(&0x1b), "{} holds escape codes", path.display());
}

/// The node logs (`logs/node-*.log`) under `root` hold no escape codes.
fn logs_have_no_escape_codes(root: &Path) {
    for entry in std::fs::read_dir(root.join("logs")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("node-") {
            no_escape_codes(&path);
        }
    }
}

/// `quorrent seed` whose proxy has gone away is retrying its heartbeats
/// when SIGTERM comes: it stops at once, status 0, and neither its stderr
/// (a file) nor its log holds colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_stops_at_once_while_its_proxy_is_unreachable() {
    let c = cluster(None).await;
    let p = start_proxy(&c, "proxy-1", 0).await;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let alice = home(r, "alice", &[p.addr], &c);
    sign_up(&alice, "alice").await;
    let src = random_file(&r.join("data"), "a.bin", 100_000, 11);
    let id: FileId = ok_json(&alice, &["share", src.to_str().unwrap()]).await["file_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let obs = Observer::new(&c, p.addr, "proxy-1").await;
    let mut seed = seed_and_await(&obs, &alice, id).await;
    p.shutdown().await;
    let err = alice.dir.with_extension("seed.err");
    tokio::time::timeout(LIMIT, async {
        while !std::fs::read_to_string(&err).unwrap().contains("retrying") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the seed retries its heartbeat");
    let (took, status) = term_and_time(&mut seed).await;
    println!("quorrent seed, proxy unreachable, heartbeat retrying: SIGTERM to exit in {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    no_escape_codes(&err);
    logs_have_no_escape_codes(r);
}

/// A stand-in proxy: it completes handshakes and reads requests, then
/// answers each with `answer`, or never (`None`: a frozen proxy as a node
/// sees it); counts the requests sent to it.
async fn fake_proxy(
    certs: &Path,
    answer: Option<ApiError>,
) -> (
    SocketAddr,
    tokio::sync::watch::Receiver<usize>,
    tokio::task::JoinHandle<()>,
) {
    use protocol::tls;
    let identity = tls::load_identity(certs, "proxy-1").unwrap();
    let crypto = tls::server_crypto(&identity, &[protocol::tracker_api::ALPN], tls::ClientAuth::None).unwrap();
    let server = tls::quic_server(crypto, protocol::quic::control_transport(Duration::from_secs(60))).unwrap();
    let endpoint = protocol::quic::endpoint("127.0.0.1:0".parse().unwrap(), Some(server)).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(0usize);
    let task = tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let (tx, answer) = (tx.clone(), answer.clone());
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tx.send_modify(|n| *n += 1);
                    match &answer {
                        None => held.push((send, recv)),
                        Some(e) => {
                            let _ = protocol::codec::read_body(&mut recv, 1 << 20).await;
                            let reply: protocol::tracker_api::Answer = Err(e.clone());
                            let _ = protocol::codec::write_frame(&mut send, &reply).await;
                            let _ = send.finish();
                        }
                    }
                }
            });
        }
    });
    (addr, rx, task)
}

/// Errors a proxy or the tracker answers keep their codes and read as one
/// line: a quota, a throttled register, a refused certificate (each at
/// once) and an overloaded proxy (after the node's retries, ~30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_errors_keep_their_codes() {
    let c = TestCluster::new(1);
    let root = tempfile::tempdir().unwrap();
    let cases = [
        (
            ApiError::Quota {
                what: "files owned".into(),
                limit: 10,
            },
            "quota",
            Some("quota exceeded"),
        ),
        (
            ApiError::Throttled {
                what: "register".into(),
                retry_after_ms: 1000,
            },
            "throttled",
            Some("too many register"),
        ),
        (ApiError::Overloaded, "overloaded", None),
    ];
    for (i, (error, code, needle)) in cases.into_iter().enumerate() {
        let (addr, _, proxy) = fake_proxy(&c.certs(), Some(error)).await;
        let h = home(root.path(), &format!("n{i}"), &[addr], &c);
        assert_eq!(json_error(&h, &["register", "carol"]).await, code);
        if let Some(needle) = needle {
            fails_with(&h, &["register", "carol"], needle).await;
        }
        proxy.abort();
    }
}

/// `quorrent get` waiting on a frozen proxy (its first request sent, no
/// answer coming) stops at once on SIGTERM: status 0, one line on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_stops_at_once_while_its_proxy_is_frozen() {
    let c = TestCluster::new(1);
    let (addr, mut requests, proxy) = fake_proxy(&c.certs(), None).await;
    let root = tempfile::tempdir().unwrap();
    let bob = home(root.path(), "bob", &[addr], &c);
    let session = serde_json::json!({ "user": "bob", "token": "t", "expires_ms": u64::MAX });
    std::fs::write(bob.dir.join("session.json"), session.to_string()).unwrap();
    let err = bob.dir.with_extension("get.err");
    let mut get = quorrent(&bob, &["get", "data.bin"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    tokio::time::timeout(LIMIT, requests.wait_for(|n| *n >= 1))
        .await
        .expect("get asks the proxy")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (took, status) = term_and_time(&mut get).await;
    println!("quorrent get, proxy frozen: SIGTERM to exit in {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let text = std::fs::read_to_string(&err).unwrap();
    assert_eq!(text.trim().lines().count(), 1, "{text}");
    assert!(text.contains("stopped"), "{text}");
    no_escape_codes(&err);
    proxy.abort();
}

/// `quorrent get` downloading from a frozen seeder (SIGSTOP) stops at once
/// on SIGTERM: status 0, one line on stderr saying what was kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_stops_at_once_while_downloading_from_a_frozen_seeder() {
    let c = cluster(None).await;
    let p = start_proxy(&c, "proxy-1", 0).await;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let [alice, bob] = ["alice", "bob"].map(|n| home(r, n, &[p.addr], &c));
    sign_up(&alice, "alice").await;
    let src = random_file(&r.join("data"), "b.bin", 4 << 20, 12);
    let id_hex = ok_json(&alice, &["share", src.to_str().unwrap()]).await["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let obs = Observer::new(&c, p.addr, "proxy-1").await;
    let alice_seed = seed_and_await(&obs, &alice, id_hex.parse().unwrap()).await;
    sign_up(&bob, "bob").await;
    signal(&alice_seed, "-STOP");
    let err = bob.dir.with_extension("get.err");
    let mut get = quorrent(&bob, &["get", &id_hex, "--no-seed"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let started = bob.dir.join("files").join(".quorrent");
    tokio::time::timeout(LIMIT, async {
        while !started.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("bob's download starts");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (took, status) = term_and_time(&mut get).await;
    println!("quorrent get, downloading from a frozen seeder: SIGTERM to exit in {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let text = std::fs::read_to_string(&err).unwrap();
    assert_eq!(text.trim().lines().count(), 1, "{text}");
    assert!(text.contains("interrupted"), "{text}");
    no_escape_codes(&err);
    signal(&alice_seed, "-CONT");
    stop(alice_seed).await;
    p.shutdown().await;
}

/// A damaged `state.json` (torn in the middle) stops the commands that
/// need it with one line naming the file and `quorrent repair`, and none
/// of them overwrites it. `repair` keeps it aside and rebuilds the state
/// from what it can hash: owned files found in the folders it is given
/// (one whose bytes changed is not taken), a download in progress with
/// only its matching chunks. Afterwards `seed` serves again and another
/// node downloads from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_is_refused_clearly_and_repair_rebuilds_it() {
    let c = cluster(None).await;
    let p = start_proxy(&c, "proxy-1", 0).await;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let [alice, bob] = ["alice", "bob"].map(|n| home(r, n, &[p.addr], &c));
    sign_up(&alice, "alice").await;
    let data = r.join("alice-data");
    let a = random_file(&data, "a.bin", 3 << 20, 1);
    let b = random_file(&data, "b.bin", 1 << 20, 2);
    let share = |path: PathBuf| {
        let alice = &alice;
        async move {
            ok_json(alice, &["share", path.to_str().unwrap()]).await["file_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (id_a, id_b) = (share(a.clone()).await, share(b.clone()).await);

    let state = alice.dir.join("state.json");
    let whole = std::fs::read(&state).unwrap();
    let torn = &whole[..whole.len() / 2];
    std::fs::write(&state, torn).unwrap();
    for args in [&["seed"][..], &["get", &id_a, "--no-seed"]] {
        let (ok, out, err) = run(&alice, args).await;
        assert_one_line_error(args, (ok, out, err.clone()), "state.json");
        assert!(err.contains("quorrent repair"), "{err}");
        assert_eq!(json_error(&alice, args).await, "corrupt_state");
        assert_eq!(std::fs::read(&state).unwrap(), torn, "{args:?} left the file alone");
    }

    // b's bytes change behind the node's back; a download of d is half done
    // in the storage folder (its second half never written).
    let mut changed = std::fs::read(&b).unwrap();
    changed[100] ^= 1;
    std::fs::write(&b, changed).unwrap();
    let storage = alice.dir.join("files");
    let d = random_file(&r.join("elsewhere"), "d.bin", 1 << 20, 3);
    let m = protocol::content::hash_file(&d, "d.bin".into(), 256 << 10, |_| {}).unwrap();
    std::fs::create_dir_all(storage.join(".quorrent")).unwrap();
    let side = |ext: &str| storage.join(".quorrent").join(format!("{}.{ext}", m.id().to_hex()));
    std::fs::write(side("manifest"), m.encode()).unwrap();
    let mut part = std::fs::read(&d).unwrap();
    part[512 << 10..].fill(0);
    std::fs::write(side("part"), part).unwrap();

    let fixed = ok_json(&alice, &["repair", data.to_str().unwrap()]).await;
    let aside = PathBuf::from(fixed["kept_aside"].as_str().expect("kept aside"));
    assert!(aside
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("state.json.corrupt-"));
    assert_eq!(std::fs::read(&aside).unwrap(), torn, "the damaged file is kept");
    let files = fixed["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{fixed}");
    let of = |id: &str| {
        files
            .iter()
            .find(|f| f["file_id"] == id)
            .unwrap_or_else(|| panic!("{id}: {fixed}"))
    };
    assert_eq!(of(&id_a)["state"], "complete");
    assert_eq!(of(&id_a)["path"], a.canonicalize().unwrap().to_str().unwrap());
    let d_entry = of(&m.id().to_hex());
    assert_eq!(
        (
            d_entry["state"].as_str(),
            d_entry["have"].as_u64(),
            d_entry["chunks"].as_u64()
        ),
        (Some("partial"), Some(2), Some(4))
    );
    assert_eq!(fixed["missing"].as_array().unwrap().len(), 1, "{fixed}");
    assert_eq!(fixed["missing"][0]["file_id"], id_b.as_str());
    let rebuilt: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(rebuilt["files"].as_object().unwrap().len(), 2, "{rebuilt}");

    // The node works again: it seeds a, and bob gets it from it.
    let obs = Observer::new(&c, p.addr, "proxy-1").await;
    let seeder = seed_and_await(&obs, &alice, id_a.parse().unwrap()).await;
    sign_up(&bob, "bob").await;
    let got = ok_json(&bob, &["get", &id_a, "--no-seed"]).await;
    assert!(same_bytes(&a, Path::new(got["path"].as_str().unwrap())));
    stop(seeder).await;
    p.shutdown().await;
}
