//! `list`, `verify` and `unshare` with the real binary against a real
//! cluster: a shared file is listed complete with all its chunks; a byte
//! changed on disk makes `verify` name exactly that chunk; `unshare`
//! disowns it on the tracker (search shows no owner) and forgets it here,
//! keeping the data; a name that is not one of the node's files is
//! refused with `not_found`.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_verify_and_unshare() {
    let Network { c, p, root } = network().await;
    let alice = home(root.path(), "alice", &[p.addr], &c);
    sign_up(&alice, "alice").await;

    // 12 chunks of 256 KiB.
    let path = random_file(&root.path().join("data"), "album.flac", 3 << 20, 11);
    let shared = ok_json(&alice, &["share", path.to_str().unwrap()]).await;
    let one = if shared.is_array() { &shared[0] } else { &shared };
    let id = one["file_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{shared}"))
        .to_string();

    let list = ok_json(&alice, &["list"]).await;
    let row = &list.as_array().unwrap()[0];
    assert_eq!(
        (row["file_id"].as_str(), row["state"].as_str()),
        (Some(id.as_str()), Some("complete")),
        "{list}"
    );
    assert_eq!(
        (row["chunks"].as_u64(), row["have"].as_u64()),
        (Some(12), Some(12)),
        "{list}"
    );

    let v = ok_json(&alice, &["verify", &id]).await;
    assert_eq!(v["bad"], serde_json::json!([]), "{v}");
    assert_eq!(v["checked"], 12);

    // One byte changed in chunk 5.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[5 * (256 << 10) + 17] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let v = ok_json(&alice, &["verify", "album.flac"]).await;
    assert_eq!(v["bad"], serde_json::json!([5]), "{v}");

    // Not one of the node's files.
    let (ok, out, _) = output_within(quorrent(&alice, &["--json", "verify", "nope.bin"]), LIMIT).await;
    assert!(!ok);
    assert!(out.contains("\"not_found\""), "{out}");

    // Unshare: no owner on the tracker, nothing listed, the data kept.
    let gone = ok_json(&alice, &["unshare", &id]).await;
    assert_eq!(gone["file_id"], id.as_str());
    assert_eq!(ok_json(&alice, &["list"]).await, serde_json::json!([]));
    let hits = ok_json(&alice, &["search", "album"]).await;
    assert_eq!(hits[0]["owners"], 0, "{hits}");
    assert!(path.exists());
    p.shutdown().await;
}
