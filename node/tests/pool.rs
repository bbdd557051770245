//! One swarm per content, with the real binary and a real cluster: the
//! same bytes shared under two names are two items in search, and a
//! download of one takes chunks from the owners of both; the same file
//! inside a shared folder serves a downloader of the single file, and the
//! other way round. Each seeder's upload is capped so that one alone is
//! not enough to finish before the other joins.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// 16 MiB at 256 KiB chunks: 64 chunks.
const SIZE: usize = 16 << 20;
const CAP: &str = "2MB/s";

/// Chunks delivered by pooled peers through item `via`, and by peers of
/// the item itself.
fn contributions(got: &Value, via: &str) -> (u64, u64) {
    let peers = got["per_peer"].as_array().unwrap_or_else(|| panic!("{got}"));
    let chunks = |p: &Value| p["chunks"].as_u64().unwrap();
    let pooled = peers.iter().filter(|p| p["pooled_from"] == via).map(chunks).sum();
    let direct = peers.iter().filter(|p| p["pooled_from"].is_null()).map(chunks).sum();
    (pooled, direct)
}

fn same_bytes(a: &Path, b: &Path) {
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "{} and {} differ",
        a.display(),
        b.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_names_of_one_content_pool_owners() {
    let Network { c, p, root } = network().await;
    let names = ["alice", "carol", "bob", "dave", "erin", "frank"];
    let homes: Vec<Home> = names.iter().map(|n| home(root.path(), n, &[p.addr], &c)).collect();
    for (h, n) in homes.iter().zip(names) {
        sign_up(h, n).await;
    }
    let [alice, carol, bob, dave, erin, frank] = &homes[..] else {
        unreachable!()
    };

    // The same bytes as song.flac (Alice) and renamed.flac (Carol).
    let song = random_file(&root.path().join("alice-data"), "song.flac", SIZE, 7);
    let renamed = root.path().join("carol-data/renamed.flac");
    std::fs::create_dir_all(renamed.parent().unwrap()).unwrap();
    std::fs::copy(&song, &renamed).unwrap();
    let a = ok_json(alice, &["share", song.to_str().unwrap()]).await;
    let b = ok_json(carol, &["share", renamed.to_str().unwrap()]).await;
    let (song_id, renamed_id) = (a["file_id"].as_str().unwrap(), b["file_id"].as_str().unwrap());
    assert_ne!(song_id, renamed_id, "a name makes its own item");
    let _alice_seed = start_daemon_with(alice, &["--max-upload-rate", CAP]).await;
    let _carol_seed = start_daemon_with(carol, &["--max-upload-rate", CAP]).await;

    // Search still shows each name.
    let hits = ok_json(bob, &["search", ".flac"]).await;
    let mut found: Vec<&str> = hits
        .as_array()
        .unwrap_or_else(|| panic!("{hits}"))
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    found.sort();
    assert_eq!(found, ["renamed.flac", "song.flac"], "{hits}");

    // Bob asks for song.flac; Carol's renamed.flac serves it too.
    let out = root.path().join("bob-out");
    let got = ok_json(bob, &["get", "song.flac", "-o", out.to_str().unwrap(), "--no-seed"]).await;
    same_bytes(
        &song,
        Path::new(got["path"].as_str().unwrap_or_else(|| panic!("{got}"))),
    );
    let (pooled, direct) = contributions(&got, renamed_id);
    assert!(
        pooled > 0 && direct > 0,
        "chunks from Carol (pooled) {pooled}, from Alice {direct}: {got}"
    );
    assert_eq!(pooled + direct, 64, "{got}");

    // Dave shares a folder holding the same file among others.
    let album = root.path().join("dave-data/album");
    std::fs::create_dir_all(album.join("cd1")).unwrap();
    std::fs::copy(&song, album.join("cd1/track 1.flac")).unwrap();
    random_file(&album, "cover.jpg", 300_000, 8);
    let d = ok_json(dave, &["share", album.to_str().unwrap()]).await;
    let album_id = d["file_id"].as_str().unwrap().to_string();
    let _dave_seed = start_daemon_with(dave, &["--max-upload-rate", CAP]).await;

    // A downloader of the single file takes chunks from the folder's owner.
    let out = root.path().join("erin-out");
    let got = ok_json(erin, &["get", "song.flac", "-o", out.to_str().unwrap(), "--no-seed"]).await;
    same_bytes(
        &song,
        Path::new(got["path"].as_str().unwrap_or_else(|| panic!("{got}"))),
    );
    let (from_album, _) = contributions(&got, &album_id);
    assert!(from_album > 0, "no chunk from the folder's owner: {got}");

    // And a downloader of the folder takes the track's chunks from the
    // owners of the single files.
    let out = root.path().join("frank-out");
    let got = ok_json(frank, &["get", "album", "-o", out.to_str().unwrap(), "--no-seed"]).await;
    let path = Path::new(got["path"].as_str().unwrap_or_else(|| panic!("{got}"))).to_owned();
    same_bytes(&song, &path.join("cd1/track 1.flac"));
    same_bytes(&album.join("cover.jpg"), &path.join("cover.jpg"));
    let (from_song, _) = contributions(&got, song_id);
    let (from_renamed, _) = contributions(&got, renamed_id);
    assert!(
        from_song + from_renamed > 0,
        "no chunk from the single files' owners: {got}"
    );
    p.shutdown().await;
}
