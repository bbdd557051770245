//! The node daemon end to end: a real tracker cluster of three members and
//! a real proxy in this process, and real `quorrent seed` processes (killed
//! on drop) whose HTTP API is driven over TCP, as the page and scripts do.
//!
//! Checked here: health and readiness; sharing over the API and finding the
//! file with the API's search; a second daemon downloading it (progress to
//! 1.0), paused (partial data kept) and resumed; the detail of a file
//! (peers, chunk map); the metrics after a download; `get` and `share`
//! handed to a running daemon with the usual output; removal with its data;
//! bad input refused with a 4xx and a JSON error (unknown path, bad JSON,
//! a path outside the daemon's folders and `../` tricks, an oversized
//! body, a bad id, a wrong method); and a daemon bound to 0.0.0.0 that
//! wants the home's token. Every wait is on observable state, bounded.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use common::*;
use rand::{RngCore, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracker_cluster::testing::TestCluster;

const LIMIT: Duration = Duration::from_secs(60);

async fn ok_json(h: &Home, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = output_within(quorrent(h, &all), LIMIT).await;
    assert!(ok, "{args:?} failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"))
}

async fn sign_up(h: &Home, user: &str) {
    assert_eq!(ok_json(h, &["register", user]).await["user"], user);
    assert_eq!(ok_json(h, &["login", user]).await["user"], user);
}

fn random_file(dir: &Path, name: &str, size: usize, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut data = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    path
}

/// A running daemon: its process (killed on drop) and HTTP address.
struct Daemon {
    child: tokio::process::Child,
    http: SocketAddr,
    home: PathBuf,
}

/// Starts `quorrent seed` in `h` and waits for its `daemon.json`.
async fn start_daemon(h: &Home) -> Daemon {
    let info = h.dir.join("daemon.json");
    let _ = std::fs::remove_file(&info);
    let log = std::fs::File::create(h.dir.with_extension("seed.err")).unwrap();
    let child = quorrent(h, &["seed"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
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
    async fn stop(mut self) {
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

    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        http(self.http, method, path, &[], body.unwrap_or("").as_bytes()).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call("POST", path, Some(&body.to_string())).await
    }

    /// The entry of `id` in `/api/files`, once `pred` holds for it.
    async fn await_file(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
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
async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let (status, _, body) = http_raw(addr, method, path, headers, body).await;
    let value = serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    (status, value)
}

async fn http_raw(
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

fn assert_error(what: &str, (status, body): (u16, Value), want: u16, code: &str, needle: &str) {
    assert_eq!(status, want, "{what}: {body}");
    assert_eq!(body["error"], code, "{what}: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{what}: {needle:?} not in {message:?}");
}

async fn cluster() -> TestCluster {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.wait_leader(LIMIT).await;
    c
}

/// The daemon's API from share to remove, the CLI's hand-off, the
/// refusals, the metrics, and the token off loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_api_share_download_pause_remove_and_refusals() {
    let c = cluster().await;
    let p = start_proxy(&c, "proxy-1", 0).await;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let shared = r.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let shared_root = shared.canonicalize().unwrap();
    let alice = home_with(r, "alice", &[p.addr], &c, |j| {
        j["share_roots"] = json!([shared]);
        // Slow enough that a download can be paused half way.
        j["sharing"]["max_upload_rate"] = "1MiB/s".into();
    });
    let bob = home(r, "bob", &[p.addr], &c);
    let carol = home_with(r, "carol", &[p.addr], &c, |j| j["http_addr"] = "0.0.0.0:0".into());
    sign_up(&alice, "alice").await;
    sign_up(&bob, "bob").await;
    sign_up(&carol, "carol").await;

    let a = start_daemon(&alice).await;
    assert_eq!(a.get("/livez").await, (200, json!({ "ok": true })));
    let deadline = Instant::now() + LIMIT;
    while a.get("/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "readyz never 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, st) = a.get("/status").await;
    assert_eq!(status, 200);
    assert_eq!(st["user"], "alice");
    assert_eq!(st["token_required"], false);
    let (status, page, html) = http_raw(a.http, "GET", "/", &[], b"").await;
    assert_eq!(status, 200);
    assert!(page.to_lowercase().contains("content-security-policy"), "{page}");
    assert!(String::from_utf8_lossy(&html).contains("search-input"));
    assert_eq!(http_raw(a.http, "GET", "/app.js", &[], b"").await.0, 200);

    // Share over the API, find it with the API's search.
    let data = random_file(&shared, "movie.bin", 3 << 20, 1);
    let (status, entry) = a.post("/api/shares", &json!({ "path": data })).await;
    assert_eq!(status, 201, "{entry}");
    assert_eq!(entry["state"], "seeding");
    assert_eq!(entry["progress"], 1.0);
    let id = entry["id"].as_str().unwrap().to_owned();
    let (status, hits) = a.get("/api/search?q=movie").await;
    assert_eq!(status, 200, "{hits}");
    assert!(
        hits.as_array().unwrap().iter().any(|h| h["file_id"] == id.as_str()),
        "{hits}"
    );

    // Refusals, each a 4xx with a JSON error.
    assert_error("unknown path", a.get("/nope").await, 404, "not_found", "/nope");
    assert_error(
        "bad JSON",
        a.call("POST", "/api/shares", Some("{\"path\": ")).await,
        400,
        "bad_json",
        "",
    );
    assert_error(
        "wrong type",
        a.post("/api/shares", &json!({ "path": 5 })).await,
        400,
        "bad_json",
        "path",
    );
    assert_error(
        "unknown field",
        a.post("/api/downloads", &json!({ "id": id, "evil": 1 })).await,
        400,
        "bad_json",
        "evil",
    );
    let outside = random_file(&r.join("private"), "secret.bin", 10, 2);
    let root_text = shared_root.display().to_string();
    assert_error(
        "outside",
        a.post("/api/shares", &json!({ "path": outside })).await,
        403,
        "outside_roots",
        &root_text,
    );
    let sneaky = format!("{}/../private/secret.bin", shared.display());
    assert_error(
        "dot-dot",
        a.post("/api/shares", &json!({ "path": sneaky })).await,
        403,
        "outside_roots",
        &root_text,
    );
    assert_error(
        "relative dot-dot",
        a.post("/api/shares", &json!({ "path": "../../private/secret.bin" }))
            .await,
        403,
        "outside_roots",
        "may read only",
    );
    std::os::unix::fs::symlink(&outside, shared.join("link.bin")).unwrap();
    assert_error(
        "symlink out",
        a.post("/api/shares", &json!({ "path": shared.join("link.bin") })).await,
        403,
        "outside_roots",
        &root_text,
    );
    let big = format!("{{\"path\": \"{}\"}}", "x".repeat(70 << 10));
    assert_error(
        "oversized",
        a.call("POST", "/api/shares", Some(&big)).await,
        413,
        "too_large",
        "larger",
    );
    assert_error(
        "bad id",
        a.post("/api/downloads", &json!({ "id": "zz" })).await,
        400,
        "bad_id",
        "`id`",
    );
    assert_error("bad id in path", a.get("/api/files/xyz").await, 400, "bad_id", "`id`");
    assert_error(
        "wrong method",
        a.call("PUT", "/api/files", None).await,
        405,
        "method_not_allowed",
        "GET",
    );
    assert_error(
        "unknown file",
        a.call("DELETE", &format!("/api/files/{}", "0".repeat(64)), None).await,
        404,
        "not_found",
        "",
    );
    assert_error("search without q", a.get("/api/search").await, 400, "bad_input", "`q`");
    assert_error(
        "unregistered file",
        a.post("/api/downloads", &json!({ "id": "ab".repeat(32) })).await,
        404,
        "not_found",
        "unknown file",
    );
    // Another web page, through the user's browser: a rebound name, a
    // change from another origin.
    let body = json!({ "path": data }).to_string();
    assert_error(
        "rebinding",
        http(a.http, "GET", "/api/files", &[("Host", "evil.example")], b"").await,
        403,
        "bad_host",
        "evil.example",
    );
    assert_error(
        "cross origin",
        http(
            a.http,
            "POST",
            "/api/shares",
            &[("Origin", "http://evil.example")],
            body.as_bytes(),
        )
        .await,
        403,
        "cross_origin",
        "evil.example",
    );

    // Bob's daemon downloads it; paused half way, resumed, done.
    let b = start_daemon(&bob).await;
    let (status, entry) = b.post("/api/downloads", &json!({ "id": id })).await;
    assert_eq!(status, 202, "{entry}");
    assert_eq!(entry["name"], "movie.bin");
    b.await_file(&id, "started", |e| e["have"].as_u64() > Some(0)).await;
    // Asked again while it runs: the same download.
    let (status, again) = b.post("/api/downloads", &json!({ "id": id })).await;
    assert_eq!(status, 202, "{again}");
    let (status, paused) = b.call("POST", &format!("/api/files/{id}/pause"), None).await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["state"], "paused");
    let part = bob.dir.join("files").join(".quorrent").join(format!("{id}.part"));
    assert!(part.exists(), "the partial data stays while paused");
    let entry = b.await_file(&id, "paused", |e| e["state"] == "paused").await;
    assert!(entry["progress"].as_f64().unwrap() < 1.0, "{entry}");
    let (status, resumed) = b.call("POST", &format!("/api/files/{id}/resume"), None).await;
    assert_eq!(status, 202, "{resumed}");
    let done = b
        .await_file(&id, "complete", |e| e["state"] == "seeding" && e["progress"] == 1.0)
        .await;
    assert_eq!(done["have"], done["chunks"]);
    let got = bob.dir.join("files").join("movie.bin");
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&data).unwrap());
    let (status, detail) = b.get(&format!("/api/files/{id}")).await;
    assert_eq!(status, 200, "{detail}");
    assert!(!detail["peers"].as_array().unwrap().is_empty(), "{detail}");
    let map = detail["chunk_map"]["map"].as_str().unwrap();
    assert!(!map.is_empty() && map.chars().all(|c| c == '9'), "{detail}");

    // Metrics after a download, on both sides; the metrics of a loopback
    // daemon need no token.
    let (status, _, text) = http_raw(b.http, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(text).unwrap();
    for name in [
        "quorrent_node_file_bytes_down_total{",
        "quorrent_node_peer_bytes_down_total{",
        "quorrent_node_chunks_verified_total",
        "quorrent_node_chunks_rejected_total",
        "quorrent_node_peers_banned_total",
        "quorrent_node_downloads_active",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(
        text.contains(&format!("file_bytes_down_total{{file=\"{id}\"}} {}", 3 << 20)),
        "{text}"
    );
    let (_, _, text) = http_raw(a.http, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("quorrent_node_file_bytes_up_total{"), "{text}");
    assert!(text.contains("quorrent_node_peer_bytes_up_total{"), "{text}");

    // `share` and `get` hand their work to the running daemon of the home,
    // printing what they always print.
    let second = random_file(&shared, "second.bin", 1 << 20, 3);
    let out = ok_json(&alice, &["share", second.to_str().unwrap()]).await;
    assert_eq!(
        (out["name"].as_str(), out["size"].as_u64()),
        (Some("second.bin"), Some(1 << 20))
    );
    let id2 = out["file_id"].as_str().unwrap().to_owned();
    a.await_file(&id2, "served", |e| e["state"] == "seeding" && e["chunks"] == 4)
        .await;
    // By name: the command resolves it, the daemon downloads.
    let got2 = ok_json(&bob, &["get", "second.bin"]).await;
    assert_eq!(got2["file_id"], id2.as_str());
    assert_eq!(got2["size"], 1 << 20);
    let path2 = PathBuf::from(got2["path"].as_str().unwrap());
    assert_eq!(std::fs::read(&path2).unwrap(), std::fs::read(&second).unwrap());
    assert!(got2["per_peer"].is_array(), "{got2}");
    // The daemon ran it: its entry carries the download's own result.
    let entry2 = b.await_file(&id2, "listed", |e| e["state"] == "seeding").await;
    assert_eq!(entry2["result"]["per_peer"], got2["per_peer"], "{entry2}");

    // The page, in a real browser when the machine has one: its script
    // polls the API and lists the files.
    page_in_browser(&b, &id).await;

    // Remove, with the data.
    let (status, removed) = b
        .call("DELETE", &format!("/api/files/{id2}?delete_data=true"), None)
        .await;
    assert_eq!(status, 200, "{removed}");
    assert!(!path2.exists(), "the data is deleted");
    let (_, files) = b.get("/api/files").await;
    assert!(
        !files.as_array().unwrap().iter().any(|f| f["id"] == id2.as_str()),
        "{files}"
    );
    assert!(got.exists(), "the other file stays");

    // Off loopback: the API and metrics want the home's token.
    let cd = start_daemon(&carol).await;
    assert_eq!(cd.get("/livez").await.0, 200);
    assert_error(
        "no token",
        cd.get("/api/files").await,
        401,
        "unauthorized",
        "http-token",
    );
    assert_eq!(cd.get("/metrics").await.0, 401);
    let token = std::fs::read_to_string(carol.dir.join("http-token")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(carol.dir.join("http-token")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the token file is private");
    let bearer = format!("Bearer {}", token.trim());
    let auth = [("Authorization", bearer.as_str())];
    assert_eq!(http(cd.http, "GET", "/api/files", &auth, b"").await.0, 200);
    assert_eq!(http(cd.http, "GET", "/metrics", &auth, b"").await.0, 200);
    let wrong = [("Authorization", "Bearer 00")];
    assert_eq!(http(cd.http, "GET", "/api/files", &wrong, b"").await.0, 401);

    cd.stop().await;
    b.stop().await;
    a.stop().await;
    p.shutdown().await;
}

/// A headless Chromium (if installed) loads the daemon's page, runs its
/// script, and the DOM lists `id` as seeding at 100 %. With
/// `QUORRENT_PAGE_SHOTS=DIR` it also saves phone- and desktop-sized
/// screenshots there.
async fn page_in_browser(d: &Daemon, id: &str) {
    let Some(browser) = ["chromium", "chromium-browser", "google-chrome"].into_iter().find(|b| {
        std::process::Command::new("which")
            .arg(b)
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        eprintln!("no headless browser here: page check skipped");
        return;
    };
    // The file's detail open (its chunk map drawn) as well.
    let url = format!("http://{}/#file={id}", d.http);
    let profile = tempfile::tempdir().unwrap();
    let chrome = |extra: &[String]| {
        let mut c = tokio::process::Command::new(browser);
        c.args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--virtual-time-budget=4000")
            .args(extra)
            .arg(&url)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    };
    let (ok, dom, err) = output_within(chrome(&["--dump-dom".into()]), LIMIT).await;
    assert!(ok, "{browser}: {err}");
    let row = format!("data-id=\"{id}\"");
    assert!(dom.contains(&row), "no row for {id} in the page:\n{dom}");
    assert!(dom.contains("data-state=\"seeding\""), "{dom}");
    assert!(dom.contains(">100%<"), "{dom}");
    assert!(dom.contains("data-cells=\"12\""), "the chunk map of 12 chunks:\n{dom}");
    assert!(dom.contains("<rect"), "{dom}");
    if let Ok(dir) = std::env::var("QUORRENT_PAGE_SHOTS") {
        for (name, size) in [("phone", "390,1400"), ("desktop", "1280,1000")] {
            let shot = format!("--screenshot={dir}/{name}.png");
            let (ok, _, err) = output_within(chrome(&[shot, format!("--window-size={size}")]), LIMIT).await;
            assert!(ok, "{err}");
        }
    }
}
