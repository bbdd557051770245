//! The watch folder with the real binary and a real cluster: a daemon
//! configured with `watch_dir` shares a file and a folder dropped into it
//! once they stop changing (a file still growing is not shared half
//! written), logs what it shared, and another node finds and downloads
//! them; hidden names are left alone.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Searches until `text` is found with an owner and `pred` holds of the
/// hit (bounded by LIMIT).
async fn await_hit(h: &Home, text: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let hits = ok_json(h, &["search", text]).await;
        let found = hits
            .as_array()
            .and_then(|a| a.iter().find(|x| x["owners"].as_u64() >= Some(1) && pred(x)));
        if let Some(hit) = found {
            return hit.clone();
        }
        assert!(Instant::now() < deadline, "{text} never became searchable: {hits}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_dropped_in_the_watch_folder_become_searchable() {
    let Network { c, p, root } = network().await;
    let inbox = root.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let alice = home_with(root.path(), "alice", &[p.addr], &c, |j| {
        j["watch_dir"] = serde_json::json!(inbox);
        j["watch_settle_ms"] = serde_json::json!(2000);
    });
    let bob = home(root.path(), "bob", &[p.addr], &c);
    sign_up(&alice, "alice").await;
    sign_up(&bob, "bob").await;
    let daemon = start_daemon(&alice).await;

    // A file written in pieces: shared once whole.
    let src = random_file(&root.path().join("src"), "lecture.mp4", 3 << 20, 5);
    let bytes = std::fs::read(&src).unwrap();
    let target = inbox.join("lecture.mp4");
    std::fs::write(&target, &bytes[..1 << 20]).unwrap();
    std::fs::write(inbox.join(".lecture.tmp"), b"hidden").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&target, &bytes).unwrap();
    let lecture = await_hit(&bob, "lecture", |x| x["size"] == bytes.len()).await;
    // Written in two steps 100 ms apart, well within the settle time: the
    // first, partial version was not shared.
    let all = ok_json(&bob, &["search", "lecture"]).await;
    assert_eq!(all.as_array().map(|a| a.len()), Some(1), "{all}");

    // A folder.
    let album = inbox.join("album");
    random_file(&album.join("cd1"), "01.flac", 300_000, 6);
    random_file(&album, "cover.jpg", 20_000, 7);
    let hit = await_hit(&bob, "album", |x| x["files"] == 2).await;
    assert_eq!(hit["size"], 320_000, "{hit}");

    let out = root.path().join("bob-out");
    let id = lecture["file_id"].as_str().unwrap().to_owned();
    let got = ok_json(&bob, &["get", &id, "-o", out.to_str().unwrap(), "--no-seed"]).await;
    assert_eq!(std::fs::read(got["path"].as_str().unwrap()).unwrap(), bytes);
    let hidden = ok_json(&bob, &["search", "lecture.tmp"]).await;
    assert_eq!(hidden, serde_json::json!([]), "hidden names are not shared");
    daemon.stop().await;
    let log = std::fs::read_to_string(alice.dir.with_extension("seed.err")).unwrap();
    assert!(
        log.contains("watch folder: shared") && log.contains("lecture.mp4") && log.contains("album"),
        "{log}"
    );
    p.shutdown().await;
}
