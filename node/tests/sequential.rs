//! `get --sequential`, end to end: a real tracker cluster of three members
//! and a real proxy in this process, the real `quorrent` binary as child
//! processes (killed on drop).
//!
//! One seeder whose upload is capped, so the downloads take seconds, and
//! three downloaders at once: a daemon asked over its API for a sequential
//! download, `get --sequential` and `get` in the default order. The files
//! are watched while they grow (polled, bounded): in the sequential ones
//! the bytes that match the source form a prefix that only grows and
//! trails what is held by at most the requests in flight, and the
//! daemon's `prefix_bytes` never claims more than is really there; in the
//! default order the prefix lags far behind, so the sequential download
//! reaches 10 % of the file contiguous from the start first.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use common::*;
use serde_json::json;

const CHUNK: usize = 256 << 10;
/// 96 chunks.
const SIZE: usize = 24 << 20;
/// Chunk requests in flight to one peer at most (`max_in_flight_per_peer`
/// of the default configuration), plus a margin for a retried request.
const WINDOW: usize = 8 + 4;

/// What is on disk of a download: chunks equal to the source, and the
/// number of them from the start with no gap.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Seen {
    held: usize,
    prefix: usize,
}

fn scan(path: &Path, src: &[u8]) -> Option<Seen> {
    let data = std::fs::read(path).ok()?;
    let mut seen = Seen::default();
    let mut gap = false;
    for (i, want) in src.chunks(CHUNK).enumerate() {
        let got = data.get(i * CHUNK..i * CHUNK + want.len());
        if got == Some(want) {
            seen.held += 1;
            if !gap {
                seen.prefix += 1;
            }
        } else {
            gap = true;
        }
    }
    Some(seen)
}

/// One downloader being watched.
struct Watch {
    name: &'static str,
    seen: Vec<(Duration, Seen)>,
}

impl Watch {
    fn new(name: &'static str) -> Self {
        Watch { name, seen: Vec::new() }
    }

    fn observe(&mut self, at: Duration, seen: Option<Seen>) {
        if let Some(s) = seen {
            self.seen.push((at, s));
        }
    }

    /// When the prefix first reached `chunks`.
    fn prefix_reached(&self, chunks: usize) -> Option<Duration> {
        self.seen.iter().find(|(_, s)| s.prefix >= chunks).map(|(t, _)| *t)
    }

    fn assert_sequential(&self) {
        let mut last = 0;
        for (t, s) in &self.seen {
            assert!(
                s.prefix >= last,
                "{}: the prefix shrank at {t:?}: {:?}",
                self.name,
                self.seen
            );
            assert!(
                s.held - s.prefix <= WINDOW,
                "{}: {} chunks held past a prefix of {} at {t:?}",
                self.name,
                s.held - s.prefix,
                s.prefix
            );
            last = s.prefix;
        }
        let n = SIZE / CHUNK;
        let growing = self.seen.iter().filter(|(_, s)| s.prefix > 0 && s.prefix < n).count();
        assert!(
            growing >= 5,
            "{}: seen growing only {growing} times: {:?}",
            self.name,
            self.seen
        );
    }
}

/// A `get --json --no-seed --no-partial -o DIR` in the background.
fn spawn_get(h: &Home, id: &str, dir: &Path, extra: &[&str]) -> tokio::process::Child {
    let log = std::fs::File::create(h.dir.with_extension("get.err")).unwrap();
    let mut args = vec![
        "--json",
        "get",
        id,
        "--no-seed",
        "--no-partial",
        "-o",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    quorrent(h, &args).stdout(Stdio::piped()).stderr(log).spawn().unwrap()
}

/// Where a `get -o DIR` download is: the part file, or the file once done.
fn get_file(dir: &Path, id: &str) -> PathBuf {
    let part = dir.join(".quorrent").join(format!("{id}.part"));
    if part.exists() {
        part
    } else {
        dir.join("stream.bin")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_downloads_grow_a_verified_prefix() {
    let Network { c, p, root } = network().await;
    let r = root.path();
    let [alice, bob, dave, carol] = ["alice", "bob", "dave", "carol"].map(|n| home(r, n, &[p.addr], &c));

    // alice seeds at most 9 MB/s, shared by three downloaders: each one
    // takes about 8 s.
    sign_up(&alice, "alice").await;
    let src_path = random_file(&r.join("alice-data"), "stream.bin", SIZE, 21);
    let src = std::fs::read(&src_path).unwrap();
    let id = ok_json(&alice, &["share", src_path.to_str().unwrap()]).await["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let seed_log = std::fs::File::create(alice.dir.with_extension("seed.err")).unwrap();
    let _seeder = quorrent(&alice, &["seed", "--max-upload-rate", "9MB/s"])
        .stdout(Stdio::null())
        .stderr(seed_log)
        .spawn()
        .unwrap();
    for h in [&bob, &dave, &carol] {
        sign_up(h, h.dir.file_name().unwrap().to_str().unwrap()).await;
    }
    // alice is a live owner once a search finds one.
    let deadline = Instant::now() + LIMIT;
    while ok_json(&bob, &["search", "stream.bin"]).await[0]["owners"] != 1 {
        assert!(Instant::now() < deadline, "alice never seeds");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let daemon = start_daemon(&bob).await;
    let (dave_dir, carol_dir) = (r.join("dave-out"), r.join("carol-out"));
    let start = Instant::now();
    let (status, entry) = daemon
        .post("/api/downloads", &json!({ "id": id, "sequential": true }))
        .await;
    assert_eq!(status, 202, "{entry}");
    let mut dave_get = spawn_get(&dave, &id, &dave_dir, &["--sequential"]);
    let mut carol_get = spawn_get(&carol, &id, &carol_dir, &[]);

    let (mut bob_w, mut dave_w, mut carol_w) = (Watch::new("daemon"), Watch::new("dave"), Watch::new("carol"));
    let mut claimed_before = 0u64;
    let (mut bob_done, mut dave_done, mut carol_done) = (false, None, None);
    while !(bob_done && dave_done.is_some() && carol_done.is_some()) {
        assert!(start.elapsed() < LIMIT, "the downloads did not end in time");
        let at = start.elapsed();
        if !bob_done {
            let (status, f) = daemon.get(&format!("/api/files/{id}")).await;
            assert_eq!(status, 200, "{f}");
            assert_eq!(f["sequential"], true, "{f}");
            let claimed = f["prefix_bytes"].as_u64().unwrap();
            assert!(claimed >= claimed_before, "prefix_bytes went back: {f}");
            claimed_before = claimed;
            bob_done = f["state"] == "seeding";
            if let Some(seen) = f["path"].as_str().and_then(|path| scan(Path::new(path), &src)) {
                // Read after the claim: the file holds at least as much.
                let verified = (seen.prefix * CHUNK).min(SIZE) as u64;
                assert!(claimed <= verified, "prefix_bytes {claimed} > {verified} verified: {f}");
                bob_w.observe(at, Some(seen));
            }
        }
        if dave_done.is_none() {
            dave_w.observe(at, scan(&get_file(&dave_dir, &id), &src));
            dave_done = dave_get.try_wait().unwrap();
        }
        if carol_done.is_none() {
            carol_w.observe(at, scan(&get_file(&carol_dir, &id), &src));
            carol_done = carol_get.try_wait().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for (who, status) in [("dave", dave_done), ("carol", carol_done)] {
        assert!(status.unwrap().success(), "{who}'s get failed");
    }
    assert_eq!(std::fs::read(dave_dir.join("stream.bin")).unwrap(), src);
    assert_eq!(std::fs::read(carol_dir.join("stream.bin")).unwrap(), src);
    assert_eq!(claimed_before, SIZE as u64, "the daemon's prefix ends at the size");

    bob_w.assert_sequential();
    dave_w.assert_sequential();
    // The default order: rarest first with random ties, so with half the
    // chunks held the prefix is still short.
    let n = SIZE / CHUNK;
    let half = carol_w.seen.iter().find(|(_, s)| s.held >= n / 2 && s.held < n);
    if let Some((t, s)) = half {
        assert!(
            s.prefix < n / 4,
            "carol's default order looks sequential at {t:?}: {s:?}"
        );
    }
    let tenth = n.div_ceil(10);
    let (dave_10, carol_10) = (dave_w.prefix_reached(tenth), carol_w.prefix_reached(tenth));
    eprintln!("10% contiguous from the start: sequential {dave_10:?}, default {carol_10:?}");
    assert!(
        dave_10.unwrap() < carol_10.unwrap_or(Duration::MAX),
        "the sequential download reaches 10% from the start first"
    );
    daemon.stop().await;
    p.shutdown().await;
}
