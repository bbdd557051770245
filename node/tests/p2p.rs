//! Peer-to-peer downloads over real QUIC on 127.0.0.1, with real peer
//! servers in this process and no tracker: the downloader is handed the
//! owners directly. Synchronisation is by events (progress callbacks),
//! never by sleeping; every test is bounded by a timeout.

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use node::{
    data::Data,
    download::{self, DownloadError, DownloadPlan, DownloadReport, ProgressFn},
    peer_server::PeerServer,
    store::{HaveBits, SharedFile, Store},
};
use protocol::{
    config::SharingConfig,
    content::{hash_file, hash_folder, Entry, Manifest, Tree},
    tls::NodeIdentity,
    tracker_api::PeerInfo,
};
use rand::{RngCore, SeedableRng};

const CHUNK: u32 = 256 << 10;
const LIMIT: Duration = Duration::from_secs(120);

/// A node with its own key, store and running peer server.
struct Node {
    identity: NodeIdentity,
    store: Arc<Store>,
    server: Arc<PeerServer>,
    _home: tempfile::TempDir,
}

impl Node {
    fn start() -> Node {
        let home = tempfile::tempdir().unwrap();
        let identity = NodeIdentity::load_or_create(home.path()).unwrap();
        let store = Store::new();
        let server = PeerServer::start(&identity, "127.0.0.1:0".parse().unwrap(), store.clone()).unwrap();
        Node {
            identity,
            store,
            server: Arc::new(server),
            _home: home,
        }
    }

    /// A node serving `data_path` as the whole file of `manifest`.
    fn seeding(manifest: &Manifest, data_path: &Path) -> Node {
        let node = Node::start();
        node.store.insert(SharedFile {
            manifest: manifest.clone(),
            manifest_bytes: manifest.encode(),
            data: Arc::new(Data::open(manifest, data_path, false).unwrap()),
            have: Arc::new(HaveBits::full(manifest.chunks.len() as u32)),
        });
        node
    }

    fn info(&self) -> PeerInfo {
        PeerInfo {
            peer_id: self.identity.peer_id,
            addrs: vec![self.server.local_addr()],
        }
    }

    fn plan(&self, manifest: &Manifest, peers: &[&Node], dir: &Path) -> DownloadPlan {
        DownloadPlan {
            file_id: manifest.id(),
            peers: peers.iter().map(|n| n.info()).collect(),
            partial: Vec::new(),
            sources: None,
            dir: dir.to_owned(),
            identity: self.identity.identity.clone(),
            sharing: SharingConfig {
                chunk_size: CHUNK,
                ..SharingConfig::default()
            },
            store: Some(self.store.clone()),
            progress: None,
            live: None,
            download_limit: None,
            only: Vec::new(),
            sequential: false,
        }
    }
}

/// A random file of `size` bytes and its manifest.
fn random_file(dir: &Path, name: &str, size: usize, seed: u64) -> (PathBuf, Manifest) {
    let mut data = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    let m = hash_file(&path, name.into(), CHUNK, |_| {}).unwrap();
    (path, m)
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

async fn get(plan: DownloadPlan) -> Result<DownloadReport, DownloadError> {
    tokio::time::timeout(LIMIT, download::run(plan))
        .await
        .expect("download timed out")
}

/// Calls `f` once, the first time `fetched` reaches `at`.
fn on_fetched(at: u32, f: impl FnOnce() + Send + 'static) -> ProgressFn {
    let f = Mutex::new(Some(f));
    Arc::new(move |p: &download::Progress| {
        if p.fetched >= at {
            if let Some(f) = f.lock().unwrap().take() {
                f();
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_seeders_one_downloader() {
    let src = tempfile::tempdir().unwrap();
    let (path, m) = random_file(src.path(), "big.bin", 64 << 20, 1);
    let seeders: Vec<Node> = (0..3).map(|_| Node::seeding(&m, &path)).collect();
    let me = Node::start();
    let out = tempfile::tempdir().unwrap();
    let report = get(me.plan(&m, &seeders.iter().collect::<Vec<_>>(), out.path()))
        .await
        .unwrap();
    assert_eq!(report.path, out.path().join("big.bin"));
    assert!(same_bytes(&path, &report.path));
    assert_eq!(report.fetched_chunks, 256);
    assert_eq!(report.peers_used(), 3, "{:?}", report.per_peer);
    for p in &report.per_peer {
        assert!(p.chunks > 0 && !p.dropped, "{p:?}");
    }
    assert!(!out.path().join(".quorrent").join(format!("{}.part", m.id())).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_seeder_is_dropped() {
    let src = tempfile::tempdir().unwrap();
    let (path, m) = random_file(src.path(), "f.bin", 16 << 20, 2);
    let mut bad = std::fs::read(&path).unwrap();
    for chunk in bad.chunks_mut(CHUNK as usize) {
        chunk[7] ^= 0x55;
    }
    let bad_path = src.path().join("bad.bin");
    std::fs::write(&bad_path, bad).unwrap();
    let good = Node::seeding(&m, &path);
    let liar = Node::seeding(&m, &bad_path);
    let me = Node::start();
    let out = tempfile::tempdir().unwrap();
    let report = get(me.plan(&m, &[&liar, &good], out.path())).await.unwrap();
    assert!(same_bytes(&path, &report.path));
    let liar_report = &report.per_peer[0];
    assert!(liar_report.dropped && liar_report.chunks == 0, "{liar_report:?}");
    assert_eq!(liar_report.bad_chunks, 3);
    assert_eq!(report.per_peer[1].chunks, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeder_stopped_mid_download() {
    let src = tempfile::tempdir().unwrap();
    let (path, m) = random_file(src.path(), "f.bin", 32 << 20, 3);
    let seeders: Vec<Node> = (0..3).map(|_| Node::seeding(&m, &path)).collect();
    let me = Node::start();
    let out = tempfile::tempdir().unwrap();
    let mut plan = me.plan(&m, &seeders.iter().collect::<Vec<_>>(), out.path());
    let victim = seeders[2].server.clone();
    plan.progress = Some(on_fetched(8, move || victim.close_now()));
    let report = get(plan).await.unwrap();
    assert!(same_bytes(&path, &report.path));
    assert_eq!(report.fetched_chunks, 128);
    let victim = &report.per_peer[2];
    assert!(victim.dropped && victim.chunks < 128, "{victim:?}");
    assert!(report.per_peer[0].chunks + report.per_peer[1].chunks > 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_every_peer_keeps_the_verified_part() {
    let src = tempfile::tempdir().unwrap();
    let (path, m) = random_file(src.path(), "f.bin", 16 << 20, 8);
    let only = Node::seeding(&m, &path);
    let me = Node::start();
    let out = tempfile::tempdir().unwrap();
    let mut plan = me.plan(&m, &[&only], out.path());
    let server = only.server.clone();
    plan.progress = Some(on_fetched(10, move || server.close_now()));
    let err = get(plan).await.unwrap_err();
    assert!(err.to_string().contains("run get again"), "{err}");
    let DownloadError::AllPeersFailed { verified, total } = err else {
        panic!("{err}")
    };
    assert!(verified >= 10 && verified < total, "{verified}/{total}");

    let fresh = Node::seeding(&m, &path);
    let report = get(me.plan(&m, &[&fresh], out.path())).await.unwrap();
    assert_eq!(report.resumed_chunks, verified);
    assert!(same_bytes(&path, &report.path));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_download_resumes_with_only_the_missing_chunks() {
    let src = tempfile::tempdir().unwrap();
    let (path, m) = random_file(src.path(), "f.bin", 16 << 20, 4);
    let seeder = Node::seeding(&m, &path);
    let me = Node::start();
    let out = tempfile::tempdir().unwrap();

    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut plan = me.plan(&m, &[&seeder], out.path());
    plan.progress = Some(on_fetched(20, move || {
        let _ = tx.send(());
    }));
    let task = tokio::spawn(download::run(plan));
    tokio::time::timeout(LIMIT, rx).await.unwrap().unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(!out.path().join("f.bin").exists());

    let report = get(me.plan(&m, &[&seeder], out.path())).await.unwrap();
    assert!(same_bytes(&path, &report.path));
    assert!(report.resumed_chunks >= 20, "{report:?}");
    assert_eq!(report.resumed_chunks + report.fetched_chunks, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloader_serves_a_further_node() {
    let src = tempfile::tempdir().unwrap();
    let (path, m) = random_file(src.path(), "f.bin", 8 << 20, 5);
    let first = Node::seeding(&m, &path);
    let second = Node::start();
    let dir2 = tempfile::tempdir().unwrap();
    get(second.plan(&m, &[&first], dir2.path())).await.unwrap();
    first.server.close_now();

    let third = Node::start();
    let dir3 = tempfile::tempdir().unwrap();
    // A different file already holds the name: it is kept, not replaced.
    std::fs::write(dir3.path().join("f.bin"), b"something else").unwrap();
    let report = get(third.plan(&m, &[&second], dir3.path())).await.unwrap();
    assert_eq!(report.path, dir3.path().join("f (1).bin"));
    assert!(same_bytes(&path, &report.path));
    assert_eq!(std::fs::read(dir3.path().join("f.bin")).unwrap(), b"something else");
    assert_eq!(report.per_peer[0].chunks, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_with_a_path_in_its_name_is_refused() {
    let src = tempfile::tempdir().unwrap();
    let (path, m) = random_file(src.path(), "f.bin", 1 << 20, 6);
    let evil = Manifest {
        name: "../../etc/passwd".into(),
        ..m
    };
    let seeder = Node::seeding(&evil, &path);
    let me = Node::start();
    let out = tempfile::tempdir().unwrap();
    let err = get(me.plan(&evil, &[&seeder], out.path())).await.unwrap_err();
    assert!(matches!(err, DownloadError::BadManifest(_)), "{err}");
    assert!(err.to_string().contains("file name"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(out.path().join(".quorrent")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A folder with nested and empty folders, a zero-byte file and files
/// from a few bytes to several chunks, served by two seeders: the tree
/// comes back identical (paths, sizes, bytes, the empty folder), and an
/// existing folder of that name is kept (the download takes `NAME (1)`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_round_trips_from_two_seeders() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("album");
    std::fs::create_dir_all(root.join("cd1/empty")).unwrap();
    std::fs::create_dir_all(root.join("cd2")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(40);
    for i in 0..40 {
        let mut data = vec![0u8; (i * 997) % 5000];
        rng.fill_bytes(&mut data);
        std::fs::write(
            root.join(if i % 2 == 0 { "cd1" } else { "cd2" })
                .join(format!("t{i}.bin")),
            data,
        )
        .unwrap();
    }
    std::fs::write(root.join("zero"), b"").unwrap();
    random_file(&root.join("cd2"), "big.bin", 3 * CHUNK as usize + 77, 41);
    let m = hash_folder(&root, "album".into(), CHUNK, false, |_| {}).unwrap();
    let seeders = [Node::seeding(&m, &root), Node::seeding(&m, &root)];
    let me = Node::start();
    let out = tempfile::tempdir().unwrap();
    std::fs::create_dir(out.path().join("album")).unwrap();
    let report = get(me.plan(&m, &[&seeders[0], &seeders[1]], out.path())).await.unwrap();
    assert_eq!(report.path, out.path().join("album (1)"));
    let diff = std::process::Command::new("diff")
        .arg("-r")
        .arg(&root)
        .arg(&report.path)
        .output()
        .unwrap();
    assert!(diff.status.success(), "{}", String::from_utf8_lossy(&diff.stdout));
    assert!(report.path.join("cd1/empty").is_dir());
    assert_eq!(report.fetched_chunks as usize, m.chunks.len());
    // What the downloader holds is served from its new place.
    let third = Node::start();
    let dir3 = tempfile::tempdir().unwrap();
    let again = get(third.plan(&m, &[&me], dir3.path())).await.unwrap();
    assert!(std::process::Command::new("diff")
        .arg("-r")
        .arg(&root)
        .arg(&again.path)
        .status()
        .unwrap()
        .success());
    // Part of it: the selected files only, byte for byte, and the
    // folders holding them.
    let dir4 = tempfile::tempdir().unwrap();
    let fourth = Node::start();
    let mut plan = fourth.plan(&m, &[&me], dir4.path());
    plan.only = vec!["cd2/big*".into(), "cd1/t1?.bin".into()];
    let part = get(plan).await.unwrap();
    let got: Vec<String> = walk(&part.path)
        .iter()
        .map(|p| p.strip_prefix(&part.path).unwrap().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let want = [
        "cd1",
        "cd1/t10.bin",
        "cd1/t12.bin",
        "cd1/t14.bin",
        "cd1/t16.bin",
        "cd1/t18.bin",
        "cd2",
        "cd2/big.bin",
    ];
    assert_eq!(got, want);
    for rel in &want[1..] {
        if !rel.ends_with(".bin") {
            continue;
        }
        assert_eq!(
            std::fs::read(part.path.join(rel)).unwrap(),
            std::fs::read(root.join(rel)).unwrap(),
            "{rel}"
        );
    }
    let mut plan = fourth.plan(&m, &[&me], dir4.path());
    plan.only = vec!["nothing-like-this".into()];
    let err = get(plan).await.unwrap_err();
    assert!(err.to_string().contains("no file of the folder matches"), "{err}");
}

/// Folder manifests that would write outside the output folder, or that
/// a file system could not hold, are refused before anything is written:
/// `..` and absolute components, deep nesting, long names, duplicates,
/// paths that differ only by case, too many entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_folder_manifests_are_refused_before_anything_is_written() {
    let src = tempfile::tempdir().unwrap();
    let (path, _) = random_file(src.path(), "f.bin", 1000, 8);
    let file = |p: &str| Entry::File {
        path: p.into(),
        size: 1000,
    };
    let dir = |p: &str| Entry::Dir { path: p.into() };
    let deep: Vec<Entry> = (1..=40)
        .map(|n| dir(&vec!["d"; n].join("/")))
        .chain([file(&format!("{}/f", vec!["d"; 40].join("/")))])
        .collect();
    let many: Vec<Entry> = (0..100_001)
        .map(|i| dir(&format!("d{i:06}")))
        .chain([file("f")])
        .collect();
    let cases: Vec<(Vec<Entry>, &str)> = vec![
        (vec![file("../escape")], "relative path component"),
        (vec![file("/etc/passwd")], "empty component"),
        (deep, "levels deep"),
        (vec![file(&"n".repeat(400))], "over the limit"),
        (vec![file("twice"), file("twice")], "listed twice"),
        (vec![file("Case"), file("case")], "differ only by case"),
        (many, "more than 100000 entries"),
    ];
    for (entries, want) in cases {
        let files = entries.iter().filter(|e| matches!(e, Entry::File { .. })).count() as u64;
        // Built by hand: Tree::new sorts, and a peer need not.
        let evil = Manifest {
            name: "evil".into(),
            size: 1000 * files,
            chunk_size: CHUNK,
            chunks: vec![*blake3::hash(&std::fs::read(&path).unwrap()).as_bytes(); files as usize],
            tree: Some(Tree::new(entries)),
        };
        let seeder = Node::start();
        seeder.store.insert(SharedFile {
            manifest: evil.clone(),
            manifest_bytes: evil.encode(),
            data: Arc::new(Data::File(File::open(&path).unwrap())),
            have: Arc::new(HaveBits::full(evil.chunks.len() as u32)),
        });
        let me = Node::start();
        let out = tempfile::tempdir().unwrap();
        let err = get(me.plan(&evil, &[&seeder], out.path())).await.unwrap_err();
        assert!(matches!(err, DownloadError::BadManifest(_)), "{want}: {err}");
        assert!(err.to_string().contains(want), "{want}: {err}");
        let written: Vec<_> = walk(out.path());
        assert!(written.iter().all(|p| p.ends_with(".quorrent")), "{want}: {written:?}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reachable_peer_is_a_clear_error() {
    let src = tempfile::tempdir().unwrap();
    let (_path, m) = random_file(src.path(), "f.bin", 1 << 20, 7);
    let gone = Node::start();
    gone.server.close_now();
    let me = Node::start();
    let out = tempfile::tempdir().unwrap();
    // A peer whose key does not match the id it is listed under is refused too.
    let impostor = PeerInfo {
        peer_id: protocol::ids::PeerId([9; 32]),
        addrs: me.info().addrs,
    };
    let mut plan = me.plan(&m, &[&gone], out.path());
    plan.peers.push(impostor);
    let err = get(plan).await.unwrap_err();
    assert!(matches!(err, DownloadError::Unreachable(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_peer_serves_what_it_has_and_bad_frames_leave_the_connection_usable() {
    use protocol::peer::{PeerError, PeerRequest, PeerResponse, ALPN, MAX_FRAME};
    let src = tempfile::tempdir().unwrap();
    let (path, m) = random_file(src.path(), "f.bin", 4 << 20, 9);
    let n = m.chunks.len() as u32;
    // The first half only, as a node still downloading has it.
    let half = HaveBits::new(n);
    (0..n / 2).for_each(|c| {
        half.set(c);
    });
    let partial = Node::start();
    partial.store.insert(SharedFile {
        manifest: m.clone(),
        manifest_bytes: m.encode(),
        data: Arc::new(Data::File(File::open(&path).unwrap())),
        have: Arc::new(half),
    });

    let me = Node::start();
    let crypto = protocol::tls::peer_client_crypto(partial.identity.peer_id, &me.identity.identity, ALPN).unwrap();
    let cfg = protocol::tls::quic_client(crypto, protocol::quic::bulk_transport()).unwrap();
    let endpoint = protocol::quic::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let conn = endpoint
        .connect_with(cfg, partial.server.local_addr(), "peer")
        .unwrap()
        .await
        .unwrap();

    // Garbage: an error answer, and the connection lives on.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).await.unwrap();
    send.finish().unwrap();
    let resp: PeerResponse = protocol::codec::read_frame(&mut recv, MAX_FRAME).await.unwrap();
    assert!(
        matches!(resp, PeerResponse::Error(PeerError::BadRequest(_))),
        "{resp:?}"
    );

    // A request frame announced past the small request limit (here the
    // size of a manifest) is refused before its body is read.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let big = (protocol::peer::MAX_REQUEST as u32 + 1).to_le_bytes();
    send.write_all(&big).await.unwrap();
    let resp: PeerResponse = protocol::codec::read_frame(&mut recv, MAX_FRAME).await.unwrap();
    assert!(
        matches!(&resp, PeerResponse::Error(PeerError::BadRequest(m)) if m.contains("exceeds the limit")),
        "{resp:?}"
    );
    drop(send);

    let call = |req: PeerRequest| {
        let conn = conn.clone();
        async move {
            protocol::codec::call::<_, PeerResponse>(&conn, &req, MAX_FRAME)
                .await
                .unwrap()
        }
    };
    let file = m.id();
    let PeerResponse::Have { bits, complete } = call(PeerRequest::Have { file }).await else {
        panic!("no have")
    };
    assert!(!complete);
    let have = HaveBits::from_bytes(n, &bits);
    assert!(have.get(0) && !have.get(n - 1) && have.count() == n / 2);
    let missing = call(PeerRequest::Chunk { file, index: n - 1 }).await;
    assert!(
        matches!(missing, PeerResponse::Error(PeerError::MissingChunk)),
        "{missing:?}"
    );
    let unknown = call(PeerRequest::Have {
        file: protocol::ids::FileId([1; 32]),
    })
    .await;
    assert!(
        matches!(unknown, PeerResponse::Error(PeerError::UnknownFile)),
        "{unknown:?}"
    );

    // A download from it and a complete seeder takes only held chunks from it.
    let full = Node::seeding(&m, &path);
    let out = tempfile::tempdir().unwrap();
    let report = get(me.plan(&m, &[&partial, &full], out.path())).await.unwrap();
    assert!(same_bytes(&path, &report.path));
    assert!(report.per_peer[0].chunks <= n / 2 && !report.per_peer[0].dropped);
}
