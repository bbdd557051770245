//! Rate limits end to end: a real tracker cluster of three members and a
//! real proxy in this process, and real `quorrent seed` daemons (killed on
//! drop) downloading from each other over loopback QUIC.
//!
//! Checked here, each rate as verified bytes over a window of seconds
//! after the transfer's start (the chunks a daemon's API reports), within
//! 10 % of the cap:
//! - an upload cap (`--max-upload-rate`) holds, and `PUT /api/limits`
//!   on the seeder changes it for the transfer under way;
//! - a download cap (`--max-download-rate`) holds over two downloads at
//!   once, each getting a fair share, and `quorrent limits --down`
//!   (through the daemon's API) changes it for the transfers under way;
//! - bad input to `PUT /api/limits` is a 400 naming the field, and
//!   changes nothing; `quorrent limits` without a daemon says so.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::*;
use serde_json::{json, Value};
use tracker_cluster::testing::TestCluster;

/// The homes' chunk size (`common::home_with`).
const CHUNK: u64 = 256 << 10;
/// The measuring window: long enough that a chunk either side of it is
/// about 1 % of what it counts.
const WINDOW: Duration = Duration::from_secs(4);

async fn cluster() -> TestCluster {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.wait_leader(LIMIT).await;
    c
}

fn assert_error(what: &str, (status, body): (u16, Value), want: u16, code: &str, needle: &str) {
    assert_eq!(status, want, "{what}: {body}");
    assert_eq!(body["error"], code, "{what}: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{what}: {needle:?} not in {message:?}");
}

/// Verified bytes of `id` in daemon `d`, and whether it is still
/// downloading.
async fn verified(d: &Daemon, id: &str) -> (u64, bool) {
    let (status, e) = d.get(&format!("/api/files/{id}")).await;
    assert_eq!(status, 200, "{e}");
    (e["have"].as_u64().unwrap() * CHUNK, e["state"] == "downloading")
}

/// Waits until every file of `ids` has at least `bytes` verified: the
/// start of the transfers (dialling, the manifest, the empty bucket) is
/// behind.
async fn past_start(d: &Daemon, ids: &[&str], bytes: u64) {
    let deadline = Instant::now() + LIMIT;
    for id in ids {
        while verified(d, id).await.0 < bytes {
            assert!(Instant::now() < deadline, "{id}: no {bytes} bytes in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The rate of each of `ids` in bytes per second over [`WINDOW`] (all
/// still downloading at its end, so the window measured the cap).
async fn rates(d: &Daemon, ids: &[&str]) -> Vec<f64> {
    let mut before = Vec::new();
    for id in ids {
        before.push(verified(d, id).await.0);
    }
    let t0 = Instant::now();
    // The measurement itself: a span of time, not a wait for an event.
    tokio::time::sleep(WINDOW).await;
    let mut after = Vec::new();
    for id in ids {
        let (bytes, running) = verified(d, id).await;
        assert!(running, "{id} finished inside the window: make it larger");
        after.push(bytes);
    }
    let secs = t0.elapsed().as_secs_f64();
    before.iter().zip(&after).map(|(b, a)| (a - b) as f64 / secs).collect()
}

fn assert_near(what: &str, got: f64, cap: f64) {
    let error = got / cap - 1.0;
    eprintln!(
        "{what}: {got:.0} B/s against a cap of {cap:.0} B/s ({:+.1} %)",
        error * 100.0
    );
    assert!(
        error.abs() <= 0.10,
        "{what}: {got:.0} B/s is not within 10 % of {cap:.0} B/s"
    );
}

/// Shares `name` (`size` random bytes) through daemon `d`: its id.
async fn share(d: &Daemon, dir: &Path, name: &str, size: usize, seed: u64) -> String {
    let path = random_file(dir, name, size, seed);
    let (status, entry) = d.post("/api/shares", &json!({ "path": path })).await;
    assert_eq!(status, 201, "{entry}");
    entry["id"].as_str().unwrap().to_owned()
}

async fn download(d: &Daemon, id: &str) {
    let (status, entry) = d.post("/api/downloads", &json!({ "id": id })).await;
    assert_eq!(status, 202, "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_download_caps_hold_and_change_live() {
    let c = cluster().await;
    let p = start_proxy(&c, "proxy-1", 0).await;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let data = r.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let sam = home_with(r, "sam", &[p.addr], &c, |j| j["share_roots"] = json!([data]));
    let dan = home(r, "dan", &[p.addr], &c);
    // The download cap from the configuration, as a person writes it.
    let dora = home_with(r, "dora", &[p.addr], &c, |j| {
        j["sharing"]["max_download_rate"] = "4MB/s".into();
    });
    let eve = home(r, "eve", &[p.addr], &c);
    for (h, user) in [(&sam, "sam"), (&dan, "dan"), (&dora, "dora")] {
        sign_up(h, user).await;
    }

    // sam seeds three files, its upload capped by the flag.
    let s = start_daemon_with(&sam, &["--max-upload-rate", "4MB/s"]).await;
    let (status, limits) = s.get("/api/limits").await;
    assert_eq!(status, 200);
    assert_eq!(
        limits,
        json!({ "max_upload_rate": 4_000_000, "max_download_rate": null })
    );
    let up = share(&s, &data, "up.bin", 64 << 20, 1).await;
    let a = share(&s, &data, "a.bin", 40 << 20, 2).await;
    let b = share(&s, &data, "b.bin", 40 << 20, 3).await;

    // Bad input: a 400 naming the field, and nothing changes (a bad
    // field refuses the good one beside it too).
    let put = |body: &'static str| s.call("PUT", "/api/limits", Some(body));
    assert_error("bad JSON", put("{\"max_upload_rate\": ").await, 400, "bad_json", "");
    for (body, field) in [
        (r#"{"max_upload_rate": -5}"#, "max_upload_rate"),
        (r#"{"max_upload_rate": 0}"#, "max_upload_rate"),
        (r#"{"max_download_rate": "fast"}"#, "max_download_rate"),
        (r#"{"max_download_rate": true}"#, "max_download_rate"),
        (
            r#"{"max_upload_rate": 1000, "max_download_rate": 0.5}"#,
            "max_download_rate",
        ),
    ] {
        assert_error(body, put(body).await, 400, "bad_input", field);
    }
    assert_error(
        "unknown field",
        put(r#"{"max_upload_rate": 1000, "max_rate": 5}"#).await,
        400,
        "bad_json",
        "max_rate",
    );
    assert_error("a JSON array", put("[]").await, 400, "bad_json", "");
    assert_eq!(s.call("POST", "/api/limits", Some("{}")).await.0, 405);
    assert_eq!(s.get("/api/limits").await.1, limits, "refusals change nothing");
    assert_eq!(put("{}").await, (200, limits.clone()), "an empty change");

    // The upload cap, then raised on the transfer under way.
    let d = start_daemon(&dan).await;
    download(&d, &up).await;
    past_start(&d, &[&up], 2 << 20).await;
    assert_near("upload cap 4 MB/s", rates(&d, &[&up]).await[0], 4e6);
    let (status, now) = s
        .call("PUT", "/api/limits", Some(r#"{"max_upload_rate": 8000000}"#))
        .await;
    assert_eq!(
        (status, now),
        (200, json!({ "max_upload_rate": 8_000_000, "max_download_rate": null }))
    );
    // What was granted at the old rate is still arriving for a moment.
    past_start(&d, &[&up], verified(&d, &up).await.0 + (2 << 20)).await;
    assert_near("upload cap changed live to 8 MB/s", rates(&d, &[&up]).await[0], 8e6);
    d.stop().await;
    // No upload limit from here on.
    let (status, now) = s.call("PUT", "/api/limits", Some(r#"{"max_upload_rate": null}"#)).await;
    assert_eq!((status, now["max_upload_rate"].clone()), (200, Value::Null));

    // The download cap over two downloads at once, each a fair share.
    let o = start_daemon(&dora).await;
    assert_eq!(
        ok_json(&dora, &["limits"]).await,
        json!({ "max_upload_rate": null, "max_download_rate": 4_000_000 })
    );
    download(&o, &a).await;
    download(&o, &b).await;
    past_start(&o, &[&a, &b], 1 << 20).await;
    let each = rates(&o, &[&a, &b]).await;
    let total = each[0] + each[1];
    assert_near("download cap 4 MB/s over two downloads", total, 4e6);
    for (name, rate) in ["a.bin", "b.bin"].iter().zip(&each) {
        let share = rate / total;
        eprintln!("{name}: {:.0} % of the download cap", share * 100.0);
        assert!((0.3..=0.7).contains(&share), "{name} got {rate:.0} B/s of {total:.0}");
    }
    // Changed through the CLI, which goes through the daemon's API.
    assert_eq!(
        ok_json(&dora, &["limits", "--down", "8MB/s"]).await,
        json!({ "max_upload_rate": null, "max_download_rate": 8_000_000 })
    );
    past_start(&o, &[&a], verified(&o, &a).await.0 + (1 << 20)).await;
    let each = rates(&o, &[&a, &b]).await;
    assert_near("download cap changed live to 8 MB/s", each[0] + each[1], 8e6);

    // The CLI's refusals: a bad rate, and no daemon to change.
    let (ok, _, err) = output_within(quorrent(&dora, &["limits", "--up", "fast"]), LIMIT).await;
    assert!(!ok && err.contains("fast"), "{err}");
    let (ok, out, _) = output_within(quorrent(&eve, &["--json", "limits"]), LIMIT).await;
    assert!(!ok, "{out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["error"]["code"], "no_daemon", "{v}");
    p.shutdown().await;
}
