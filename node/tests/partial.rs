//! Partial owners and the upload cap, end to end: a real tracker cluster
//! of three members and a real proxy in this process (ephemeral loopback
//! ports, a test CA), and the real `quorrent` binary as child processes
//! (killed on drop).
//!
//! - A node still downloading a file is listed as a partial owner (search
//!   counts it apart from complete owners, GetOwners gives its bit set),
//!   and a second downloader fetches chunks from it before it has
//!   finished. Deterministic: the seeder's upload is capped so that the
//!   first download takes seconds, and "before it finished" is checked on
//!   timestamps both downloads report (the second one's first chunk from
//!   the first node, the first node's last verified chunk).
//! - The upload cap of `sharing.max_upload_rate` holds within 15 %.
//!
//! Synchronisation is on observable state (the tracker's answers), never
//! on fixed sleeps, and every wait is bounded.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use common::*;
use protocol::{
    ids::FileId,
    tracker_api::{PartialOwner, Reply, Request, SearchHit},
};
use rand::{RngCore, SeedableRng};
use tracker_cluster::testing::{ApiClient, TestCluster};

const LIMIT: Duration = Duration::from_secs(90);

async fn cluster() -> TestCluster {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.wait_leader(LIMIT).await;
    c
}

fn home(root: &Path, name: &str, proxy: SocketAddr, c: &TestCluster, upload: Option<&str>) -> Home {
    home_with(root, name, &[proxy], c, |json| {
        if let Some(rate) = upload {
            // As a person writes it: a string with a unit.
            json["sharing"]["max_upload_rate"] = rate.into();
        }
    })
}

async fn output(cmd: tokio::process::Command) -> (bool, String, String) {
    output_within(cmd, LIMIT).await
}

fn parse_json(what: &str, (ok, out, err): (bool, String, String)) -> serde_json::Value {
    assert!(ok, "{what} failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{what}: {e}: {out:?}"))
}

async fn ok_json(h: &Home, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    parse_json(&format!("{args:?}"), output(quorrent(h, &all)).await)
}

async fn sign_up(h: &Home, user: &str) {
    assert_eq!(ok_json(h, &["register", user]).await["user"], user);
    assert_eq!(ok_json(h, &["login", user]).await["user"], user);
}

async fn peer_id(h: &Home) -> String {
    ok_json(h, &["status"]).await["peer_id"].as_str().unwrap().to_owned()
}

fn random_file(dir: &Path, name: &str, size: usize, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut data = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    path
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// `quorrent seed` in the background, stderr kept beside the home.
fn spawn_seed(h: &Home, extra: &[&str]) -> tokio::process::Child {
    let log = std::fs::File::create(h.dir.with_extension("seed.err")).unwrap();
    let mut args = vec!["seed"];
    args.extend_from_slice(extra);
    quorrent(h, &args).stdout(Stdio::null()).stderr(log).spawn().unwrap()
}

/// `quorrent --json get ... --no-seed` in the background, stdout piped.
fn spawn_get(h: &Home, id: &str, extra: &[&str]) -> tokio::process::Child {
    let log = std::fs::File::create(h.dir.with_extension("get.err")).unwrap();
    let mut args = vec!["--json", "get", id, "--no-seed"];
    args.extend_from_slice(extra);
    quorrent(h, &args).stdout(Stdio::piped()).stderr(log).spawn().unwrap()
}

async fn get_report(what: &str, child: tokio::process::Child, h: &Home) -> serde_json::Value {
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("get timed out")
        .unwrap();
    let err = std::fs::read_to_string(h.dir.with_extension("get.err")).unwrap_or_default();
    parse_json(
        what,
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            err,
        ),
    )
}

/// Asks the tracker through the proxy, as its own account.
struct Observer {
    client: ApiClient,
    proxy: SocketAddr,
}

impl Observer {
    async fn new(c: &TestCluster, proxy: SocketAddr) -> Observer {
        let client = ApiClient::new(&c.certs());
        client.sign_up(&c.api_addrs(), "observer", "observer-pw").await;
        Observer { client, proxy }
    }

    async fn ask(&self, request: Request) -> Reply {
        let env = self.client.envelope(request);
        tokio::time::timeout(LIMIT, self.client.send(self.proxy, "proxy-1", &env))
            .await
            .expect("tracker answers in time")
            .expect("transport")
            .expect("tracker reply")
    }

    async fn search(&self, text: &str) -> Vec<SearchHit> {
        let request = Request::Search {
            text: text.into(),
            cursor: 0,
            limit: 100,
        };
        match self.ask(request).await {
            Reply::Files { hits, .. } => hits,
            other => panic!("search: {other:?}"),
        }
    }

    /// (complete owner ids, partial owners) of the first page.
    async fn owners(&self, file: FileId) -> (Vec<String>, Vec<PartialOwner>) {
        let request = Request::GetOwners {
            file_id: file,
            cursor: None,
            limit: 100,
        };
        match self.ask(request).await {
            Reply::Owners { owners, partial, .. } => {
                (owners.into_iter().map(|o| o.peer_id.to_hex()).collect(), partial)
            }
            other => panic!("get-owners: {other:?}"),
        }
    }

    /// Waits until `cond` holds for the owners of `file`.
    async fn await_owners(&self, file: FileId, what: &str, cond: impl Fn(&[String], &[PartialOwner]) -> bool) {
        tokio::time::timeout(LIMIT, async {
            loop {
                let (owners, partial) = self.owners(file).await;
                if cond(&owners, &partial) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: not within the limit"));
    }
}

fn entry_of<'a>(report: &'a serde_json::Value, peer: &str) -> Option<&'a serde_json::Value> {
    report["per_peer"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_owner_serves_a_second_downloader_before_it_has_finished() {
    let c = cluster().await;
    let p = start_proxy(&c, "proxy-1", 0).await;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let [alice, dave, bob] = ["alice", "dave", "bob"].map(|n| home(r, n, p.addr, &c, None));

    // alice seeds 32 MiB at most at 4 MB/s: dave needs 8 s or more.
    sign_up(&alice, "alice").await;
    let size = 32 << 20;
    let src = random_file(&r.join("alice-data"), "data.bin", size, 11);
    let shared = ok_json(&alice, &["share", src.to_str().unwrap()]).await;
    let id_hex = shared["file_id"].as_str().unwrap().to_owned();
    let id: FileId = id_hex.parse().unwrap();
    let alice_id = peer_id(&alice).await;
    let obs = Observer::new(&c, p.addr).await;
    let _seeder = spawn_seed(&alice, &["--max-upload-rate", "4MB/s"]);
    obs.await_owners(id, "alice seeds", |o, _| o.contains(&alice_id)).await;

    // dave starts downloading and is soon listed as a partial owner.
    sign_up(&dave, "dave").await;
    let dave_id = peer_id(&dave).await;
    let dave_get = spawn_get(&dave, &id_hex, &[]);
    obs.await_owners(id, "dave is a partial owner", |_, partial| {
        partial
            .iter()
            .any(|p| p.peer.peer_id.to_hex() == dave_id && p.have.iter().any(|b| *b != 0))
    })
    .await;
    let (owners, partial) = obs.owners(id).await;
    assert_eq!(
        owners,
        vec![alice_id.clone()],
        "complete owners apart from partial ones"
    );
    assert_eq!(partial.len(), 1);
    assert_eq!(partial[0].have.len(), (size / (256 << 10)).div_ceil(8));
    assert!(!partial[0].peer.addrs.is_empty());

    // Search shows the two counts apart, in the tracker's answer and in
    // the node's text and JSON output.
    sign_up(&bob, "bob").await;
    let hit = &obs.search("data.bin").await[0];
    assert_eq!((hit.live_owners, hit.partial_owners), (1, 1), "{hit:?}");
    let hits = ok_json(&bob, &["search", "data"]).await;
    assert_eq!(hits[0]["owners"], 1, "{hits}");
    assert_eq!(hits[0]["partial_owners"], 1, "{hits}");
    let (ok, text, err) = output(quorrent(&bob, &["search", "data"])).await;
    assert!(ok && text.contains("partial"), "{text}{err}");

    // bob downloads now, while dave still does.
    let bob_get = spawn_get(&bob, &id_hex, &[]);
    let bob_report = get_report("bob's get", bob_get, &bob).await;
    let dave_report = get_report("dave's get", dave_get, &dave).await;
    for report in [&bob_report, &dave_report] {
        assert!(
            same_bytes(&src, Path::new(report["path"].as_str().unwrap())),
            "{report}"
        );
    }
    eprintln!("bob: {bob_report}\ndave: {dave_report}");
    let from_dave = entry_of(&bob_report, &dave_id).unwrap_or_else(|| panic!("bob never used dave: {bob_report}"));
    assert_eq!(from_dave["partial"], true, "{bob_report}");
    assert!(from_dave["bytes"].as_u64().unwrap() > 0, "{bob_report}");
    let first = from_dave["first_chunk_ms"].as_u64().unwrap();
    let dave_done = dave_report["finished_ms"].as_u64().unwrap();
    assert!(
        first < dave_done,
        "bob's first chunk from dave ({first}) came before dave had the whole file ({dave_done})"
    );
    // dave owns it now: a complete owner, no longer a partial one.
    obs.await_owners(id, "dave owns it", |o, partial| {
        o.contains(&dave_id) && partial.iter().all(|p| p.peer.peer_id.to_hex() != dave_id)
    })
    .await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_cap_holds() {
    let c = cluster().await;
    let p = start_proxy(&c, "proxy-1", 0).await;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // The cap from the configuration this time.
    let alice = home(r, "alice", p.addr, &c, Some("4MB/s"));
    let bob = home(r, "bob", p.addr, &c, None);
    sign_up(&alice, "alice").await;
    let size = 16 << 20;
    let src = random_file(&r.join("alice-data"), "capped.bin", size, 12);
    let id_hex = ok_json(&alice, &["share", src.to_str().unwrap()]).await["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let alice_id = peer_id(&alice).await;
    let obs = Observer::new(&c, p.addr).await;
    let _seeder = spawn_seed(&alice, &[]);
    obs.await_owners(id_hex.parse().unwrap(), "alice seeds", |o, _| o.contains(&alice_id))
        .await;

    sign_up(&bob, "bob").await;
    let report = get_report("bob's get", spawn_get(&bob, &id_hex, &["--no-partial"]), &bob).await;
    assert!(same_bytes(&src, Path::new(report["path"].as_str().unwrap())));
    let seconds = report["seconds"].as_f64().unwrap();
    let rate = size as f64 / seconds;
    eprintln!("capped at 4 MB/s: {rate:.0} B/s over {seconds:.2} s");
    // Never more than 15 % over the cap; and the cap is a cap, not a
    // stall (generous: a loaded machine may be slow).
    assert!(rate <= 4e6 * 1.15, "{rate:.0} B/s over a 4 MB/s cap ({seconds:.2} s)");
    assert!(
        rate >= 4e6 * 0.4,
        "{rate:.0} B/s far under a 4 MB/s cap ({seconds:.2} s)"
    );
    p.shutdown().await;
}
