//! The `quorrent` command line and the tracker client against a small
//! in-process stand-in for the proxy (an in-memory tracker speaking the
//! real tracker API over real QUIC with certificates of a test CA). The
//! real cluster is tested by its own crates and by scripts/demo.sh; here
//! the node's side of the contract is checked: commands, outputs, errors,
//! exactly-once retries.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use node::tracker::TrackerClient;
use protocol::{
    codec,
    config::{NodeConfig, SharingConfig},
    ids::{FileId, PeerId},
    tls::ClientAuth,
    tracker_api::{
        Answer, ApiError, ClusterStatus, Envelope, FileMeta, PeerInfo, Reply, Request, SearchHit, WriteId, ALPN,
    },
};
use tokio::sync::watch;

const LIMIT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct State {
    users: HashMap<String, String>,
    sessions: HashMap<String, String>,
    peers: HashMap<PeerId, Vec<SocketAddr>>,
    files: HashMap<FileId, FileMeta>,
    owners: HashMap<FileId, BTreeSet<PeerId>>,
    /// Last write per client: its sequence number and answer.
    applied: HashMap<u128, (u64, Answer)>,
    /// Every write id received, retries included.
    write_ids: Vec<WriteId>,
    /// Apply the next write, then drop the connection instead of answering.
    lose_next_answer: bool,
    owns: u32,
}

/// The stand-in proxy + tracker.
struct Fake {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Counts Own requests applied, to await them.
    owns: watch::Receiver<u32>,
    _endpoint: quinn::Endpoint,
}

impl Fake {
    fn start(certs: &Path) -> Fake {
        protocol::tls::generate(certs, &["proxy-1".into()]).unwrap();
        let id = protocol::tls::load_identity(certs, "proxy-1").unwrap();
        let crypto = protocol::tls::server_crypto(&id, &[ALPN], ClientAuth::None).unwrap();
        let server =
            protocol::tls::quic_server(crypto, protocol::quic::control_transport(Duration::from_secs(10))).unwrap();
        let endpoint = protocol::quic::endpoint("127.0.0.1:0".parse().unwrap(), Some(server)).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, owns) = watch::channel(0u32);
        let tx = Arc::new(tx);
        let (ep, st) = (endpoint.clone(), state.clone());
        tokio::spawn(async move {
            while let Some(inc) = ep.accept().await {
                let (st, tx) = (st.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(conn) = inc.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let env: Envelope = match codec::read_frame(&mut recv, 1 << 20).await {
                            Ok(e) => e,
                            Err(_) => continue,
                        };
                        let (answer, lose) = {
                            let mut s = st.lock().unwrap();
                            let answer = handle(&mut s, env);
                            let _ = tx.send(s.owns);
                            (answer, std::mem::take(&mut s.lose_next_answer))
                        };
                        if lose {
                            conn.close(0u32.into(), b"lost");
                            return;
                        }
                        let _ = codec::write_frame(&mut send, &answer).await;
                        let _ = send.finish();
                    }
                });
            }
        });
        Fake {
            addr,
            state,
            owns,
            _endpoint: endpoint,
        }
    }
}

fn handle(s: &mut State, env: Envelope) -> Answer {
    if let Some(w) = env.write_id {
        s.write_ids.push(w);
        if let Some((seq, answer)) = s.applied.get(&w.client) {
            if *seq == w.seq {
                return answer.clone();
            }
        }
    }
    let user = env.token.as_ref().and_then(|t| s.sessions.get(t)).cloned();
    let need_user = || user.clone().ok_or(ApiError::NotLoggedIn);
    let answer = (|| match env.request {
        Request::Register { user, password } => {
            if s.users.contains_key(&user) {
                return Err(ApiError::UserExists(user));
            }
            s.users.insert(user.clone(), password);
            Ok(Reply::Registered { user })
        }
        Request::Login { user, password } => {
            if s.users.get(&user) != Some(&password) {
                return Err(ApiError::BadCredentials);
            }
            let token = format!("t{}", s.sessions.len());
            s.sessions.insert(token.clone(), user.clone());
            Ok(Reply::LoggedIn {
                user,
                token,
                expires_ms: protocol::unix_ms() + 3_600_000,
            })
        }
        Request::Logout => {
            need_user()?;
            s.sessions.remove(env.token.as_deref().unwrap_or_default());
            Ok(Reply::Done)
        }
        Request::AnnouncePeer { peer_id, addrs } => {
            need_user()?;
            s.peers.insert(peer_id, addrs);
            Ok(Reply::Done)
        }
        Request::Own { peer_id, file } => {
            need_user()?;
            if !s.peers.contains_key(&peer_id) {
                return Err(ApiError::UnknownPeer(peer_id));
            }
            s.owners.entry(file.id).or_default().insert(peer_id);
            s.files.insert(file.id, file);
            s.owns += 1;
            Ok(Reply::Done)
        }
        Request::Search { text, .. } => {
            need_user()?;
            let hits = s
                .files
                .values()
                .filter(|f| f.name.to_lowercase().contains(&text.to_lowercase()))
                .map(|f| SearchHit {
                    file: f.clone(),
                    live_owners: s.owners.get(&f.id).map_or(0, |o| o.len() as u32),
                })
                .collect();
            Ok(Reply::Files { hits, next: None })
        }
        Request::GetOwners { file_id } => {
            need_user()?;
            let file = s.files.get(&file_id).cloned().ok_or(ApiError::UnknownFile(file_id))?;
            let owners = s.owners[&file_id]
                .iter()
                .map(|p| PeerInfo {
                    peer_id: *p,
                    addrs: s.peers[p].clone(),
                })
                .filter(|p| !p.addrs.is_empty())
                .collect();
            Ok(Reply::Owners { file, owners })
        }
        Request::Heartbeat { .. } => {
            need_user()?;
            Ok(Reply::Done)
        }
        Request::ClusterStatus | Request::WatchLeader { .. } => Ok(Reply::Status(ClusterStatus {
            responder: 1,
            leader: Some(1),
            term: 3,
            last_applied: Some(10),
            members: vec![],
        })),
        Request::Disown { .. } => Ok(Reply::Done),
    })();
    if let Some(w) = env.write_id {
        s.applied.insert(w.client, (w.seq, answer.clone()));
    }
    answer
}

/// A node home with a configuration pointing at the fake.
struct Home {
    dir: PathBuf,
    config: PathBuf,
}

fn home(root: &Path, name: &str, fake: &Fake, certs: &Path) -> Home {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = NodeConfig {
        proxies: vec![fake.addr.to_string()],
        ca_cert: certs.join("ca.pem"),
        log_dir: root.join("logs"),
        sharing: SharingConfig {
            chunk_size: 256 << 10,
            heartbeat_secs: 1,
            ..SharingConfig::default()
        },
        ..NodeConfig::default()
    };
    let config = dir.join("node.json");
    std::fs::write(&config, serde_json::to_string(&cfg).unwrap()).unwrap();
    Home { dir, config }
}

fn quorrent(h: &Home, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_quorrent"));
    c.arg("--home")
        .arg(&h.dir)
        .arg("--config")
        .arg(&h.config)
        .args(args)
        .env("QUORRENT_PASSWORD", "pw-secret")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    c
}

/// Runs a command to its end: (success, stdout, stderr).
async fn run(h: &Home, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(LIMIT, quorrent(h, args).output())
        .await
        .expect("command timed out")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn ok_json(h: &Home, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = run(h, &all).await;
    assert!(ok, "{args:?} failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"))
}

async fn fails_with(h: &Home, args: &[&str], needle: &str) {
    let (ok, _, err) = run(h, args).await;
    assert!(!ok, "{args:?} succeeded");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_search_get_seed_through_the_cli() {
    let root = tempfile::tempdir().unwrap();
    let certs = root.path().join("certs");
    let fake = Fake::start(&certs);
    let alice = home(root.path(), "alice", &fake, &certs);
    let bob = home(root.path(), "bob", &fake, &certs);

    fails_with(&alice, &["search", "x"], "not logged in").await;
    assert_eq!(ok_json(&alice, &["register", "alice"]).await["user"], "alice");
    fails_with(&alice, &["register", "alice"], "already exists").await;
    let login = ok_json(&alice, &["login", "alice"]).await;
    assert!(login["expires"].as_u64().unwrap() > 0);
    let session = std::fs::read_to_string(alice.dir.join("session.json")).unwrap();
    assert!(!session.contains("pw-secret"));

    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let src = root.path().join("report.pdf");
    std::fs::write(&src, &data).unwrap();
    let shared = ok_json(&alice, &["share", src.to_str().unwrap()]).await;
    assert_eq!(shared["name"], "report.pdf");
    assert_eq!(shared["size"], 3_000_000);
    let file_id = shared["file_id"].as_str().unwrap().to_owned();

    let mut owns = fake.owns.clone();
    let mut seeder = quorrent(&alice, &["seed"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The seeder registers its files again once it listens: await that.
    tokio::time::timeout(LIMIT, owns.wait_for(|n| *n >= 2))
        .await
        .unwrap()
        .unwrap();

    ok_json(&bob, &["register", "bob"]).await;
    ok_json(&bob, &["login", "bob"]).await;
    let hits = ok_json(&bob, &["search", "REPORT"]).await;
    assert_eq!(hits[0]["file_id"], file_id.as_str());
    assert_eq!(hits[0]["owners"], 1);

    fails_with(&bob, &["get", "nothing.txt"], "no file named").await;
    let out = root.path().join("bob-files");
    let got = ok_json(&bob, &["get", "report.pdf", "-o", out.to_str().unwrap(), "--no-seed"]).await;
    assert_eq!(got["file_id"], file_id.as_str());
    assert_eq!(got["peers"], 1);
    assert_eq!(got["size"], 3_000_000);
    assert_eq!(std::fs::read(got["path"].as_str().unwrap()).unwrap(), data);
    // bob now owns it too; asking again finds it at home.
    let hits = ok_json(&bob, &["search", "report"]).await;
    assert_eq!(hits[0]["owners"], 2);
    let again = ok_json(&bob, &["get", &file_id, "--no-seed"]).await;
    assert_eq!(again["path"], got["path"]);
    assert_eq!(again["peers"], 0);

    let status = ok_json(&bob, &["status"]).await;
    assert_eq!(status["user"], "bob");
    assert_eq!(status["leader"], 1);

    // SIGTERM ends the seeder cleanly.
    let pid = seeder.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(LIMIT, seeder.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");

    // alice's node is gone, and bob never seeded: carol finds an owner
    // list (the stand-in has no liveness) but nobody answers.
    let carol = home(root.path(), "carol", &fake, &certs);
    ok_json(&carol, &["register", "carol"]).await;
    ok_json(&carol, &["login", "carol"]).await;
    fails_with(&carol, &["get", &file_id, "--no-seed"], "could not reach any owner").await;

    // Two files of the same name: a name is no longer enough.
    let other = root.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("report.pdf"), b"another report").unwrap();
    ok_json(&alice, &["share", other.join("report.pdf").to_str().unwrap()]).await;
    fails_with(&bob, &["get", "report.pdf"], "several files").await;

    ok_json(&bob, &["logout"]).await;
    fails_with(&bob, &["get", &file_id], "not logged in").await;
    let log = std::fs::read_dir(root.path().join("logs")).unwrap().count();
    assert!(log >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_retried_with_the_same_write_id() {
    let root = tempfile::tempdir().unwrap();
    let certs = root.path().join("certs");
    let fake = Fake::start(&certs);
    let cfg = NodeConfig {
        // The first proxy is down: the client moves on to the next.
        proxies: vec!["127.0.0.1:1".into(), fake.addr.to_string()],
        ca_cert: certs.join("ca.pem"),
        ..NodeConfig::default()
    };
    let client = TrackerClient::new(&cfg, None).unwrap();
    let reg = |user: &str| Request::Register {
        user: user.into(),
        password: "pw".into(),
    };
    client.call(reg("a")).await.unwrap();
    fake.state.lock().unwrap().lose_next_answer = true;
    // Applied once, answer lost, retried on a new connection: the stored
    // answer comes back instead of "user exists".
    let reply = tokio::time::timeout(LIMIT, client.call(reg("b")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, Reply::Registered { user: "b".into() });
    client.call(Request::ClusterStatus).await.unwrap();
    let ids = fake.state.lock().unwrap().write_ids.clone();
    let seqs: Vec<u64> = ids.iter().map(|w| w.seq).collect();
    assert_eq!(seqs, vec![1, 2, 2]);
    assert!(ids.iter().all(|w| w.client == ids[0].client));
    let err = client.call(reg("a")).await.unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}
