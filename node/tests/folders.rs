//! Folders end to end with the real binary and a real cluster: a folder of
//! 1,000 small files (zero-byte ones among them), an empty folder and 3
//! large files is shared as one item by a seeding daemon, found by search,
//! and rebuilt identical by another node (`diff -r`: tree, sizes, bytes);
//! `--only` fetches part of it; a link in the folder is refused unless
//! followed.

mod common;

use std::path::Path;

use common::*;
use rand::{Rng, RngCore, SeedableRng};

/// Writes the test folder under `root` and returns its path.
fn release(root: &Path) -> std::path::PathBuf {
    let top = root.join("release 1.0");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1000);
    for d in 0..10 {
        let dir = top.join(format!("part-{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let mut data = vec![0u8; if f % 25 == 0 { 0 } else { rng.gen_range(1..6000) }];
            rng.fill_bytes(&mut data);
            std::fs::write(dir.join(format!("file {f:03}.txt")), data).unwrap();
        }
    }
    std::fs::create_dir_all(top.join("empty/inside")).unwrap();
    random_file(&top.join("big"), "a.bin", 5 << 20, 1);
    random_file(&top.join("big"), "b.bin", (3 << 20) + 3, 2);
    random_file(&top, "disc.iso", 7 << 20, 3);
    top
}

fn diff(a: &Path, b: &Path) {
    let out = std::process::Command::new("diff")
        .arg("-r")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} and {} differ:\n{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_of_a_thousand_files_round_trips() {
    let Network { c, p, root } = network().await;
    let alice = home(root.path(), "alice", &[p.addr], &c);
    let bob = home(root.path(), "bob", &[p.addr], &c);
    let carol = home(root.path(), "carol", &[p.addr], &c);
    sign_up(&alice, "alice").await;
    sign_up(&bob, "bob").await;
    sign_up(&carol, "carol").await;

    let top = release(&root.path().join("data"));
    // A link inside is refused, naming it, unless followed.
    std::os::unix::fs::symlink("/etc/hostname", top.join("part-3/link")).unwrap();
    let (ok, out, _) = output_within(quorrent(&alice, &["--json", "share", top.to_str().unwrap()]), LIMIT).await;
    assert!(!ok, "{out}");
    assert!(out.contains("symbolic link") && out.contains("part-3/link"), "{out}");
    std::fs::remove_file(top.join("part-3/link")).unwrap();

    let shared = ok_json(&alice, &["share", top.to_str().unwrap()]).await;
    let one = if shared.is_array() { &shared[0] } else { &shared };
    let id = one["file_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{shared}"))
        .to_string();
    assert_eq!(one["files"], 1003, "{shared}");
    let _seeder = start_daemon(&alice).await;
    let hits = ok_json(&bob, &["search", "release"]).await;
    assert_eq!(hits[0]["file_id"], id.as_str(), "{hits}");
    assert_eq!(hits[0]["files"], 1003, "{hits}");

    let out = root.path().join("bob-out");
    let got = ok_json(&bob, &["get", "release 1.0", "-o", out.to_str().unwrap(), "--no-seed"]).await;
    let path = got["path"].as_str().unwrap_or_else(|| panic!("{got}"));
    assert_eq!(
        Path::new(path),
        std::fs::canonicalize(&out).unwrap().join("release 1.0")
    );
    diff(&top, Path::new(path));
    assert!(Path::new(path).join("empty/inside").is_dir());
    // Bob owns it now: it is listed complete and verifies.
    let v = ok_json(&bob, &["verify", &id]).await;
    assert_eq!(v["bad"], serde_json::json!([]), "{v}");

    // Part of it, by another node.
    let out2 = root.path().join("carol-part");
    let got = ok_json(
        &carol,
        &[
            "get",
            &id,
            "-o",
            out2.to_str().unwrap(),
            "--no-seed",
            "--only",
            "big",
            "--only",
            "part-7/file 00?.txt",
        ],
    )
    .await;
    let part = Path::new(got["path"].as_str().unwrap_or_else(|| panic!("{got}"))).to_owned();
    let mut names: Vec<String> = walkdir(&part);
    names.sort();
    let mut want: Vec<String> = ["big", "big/a.bin", "big/b.bin", "part-7"]
        .iter()
        .map(|s| s.to_string())
        .chain((0..10).map(|f| format!("part-7/file {f:03}.txt")))
        .collect();
    want.sort();
    assert_eq!(names, want);
    diff(&top.join("big"), &part.join("big"));
    // A single file has no parts to pick.
    let single = random_file(&root.path().join("data"), "single.bin", 1000, 9);
    ok_json(&alice, &["share", single.to_str().unwrap()]).await;
    let (ok, out, _) = output_within(
        quorrent(&bob, &["--json", "get", "single.bin", "--no-seed", "--only", "x"]),
        LIMIT,
    )
    .await;
    assert!(!ok && out.contains("bad_input") && out.contains("single file"), "{out}");
    p.shutdown().await;
}

fn walkdir(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            out.push(e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}
