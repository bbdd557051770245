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
    path::PathBuf,
    time::{Duration, Instant},
};

use common::*;
use serde_json::{json, Value};
use tracker_cluster::testing::TestCluster;

const LIMIT: Duration = Duration::from_secs(60);

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
    let (status, live) = a.get("/livez").await;
    assert_eq!((status, &live["ok"]), (200, &json!(true)));
    // The home's own peer id: what `get` and `share` check before handing
    // work over.
    let me = ok_json(&alice, &["status"]).await["peer_id"].clone();
    assert_eq!(live["peer_id"], me, "{live}");
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
    assert!(
        out["link"]
            .as_str()
            .unwrap_or("")
            .starts_with(&format!("quorrent:?v=1&id={id2}&name=second.bin&")),
        "{out}"
    );
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

    // The page itself, in a real browser: tests/browser.rs.

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
