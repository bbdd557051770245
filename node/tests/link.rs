//! `quorrent:` links end to end, with the real binary against a real
//! cluster and proxy: Alice shares a file and takes its link from
//! `share --json` (and the same from `link`); Bob, on a fresh home that
//! holds only the cluster's CA certificate (no configuration), logs in
//! with the link and `get LINK` downloads identical bytes, his home then
//! keeping the link's network. A link whose `ca` was altered is refused
//! before anything is sent (its proxy, a bare UDP socket, receives
//! nothing); malformed links, and one whose name is not the file's, are
//! refused naming the field.

mod common;

use std::{path::Path, process::Stdio, time::Duration};

use common::*;
use protocol::link::Link;
use tokio::io::AsyncWriteExt;

/// `quorrent --home DIR ARGS...` with no `--config`, run in `cwd` (its
/// default log folder lands there), killed on drop.
fn bare(cwd: &Path, home: &Path, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_quorrent"));
    c.current_dir(cwd)
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("QUORRENT_HOME")
        .env_remove("QUORRENT_PASSWORD")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Runs a bare command that must fail with `--json`: its error object.
async fn bare_error(cwd: &Path, home: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = output_within(bare(cwd, home, &all), LIMIT).await;
    assert!(!ok, "{args:?} succeeded: {out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?} {err}"));
    v["error"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_works_on_a_fresh_home() {
    let Network { c, p, root } = network().await;
    let alice = home(root.path(), "alice", &[p.addr], &c);
    sign_up(&alice, "alice").await;

    // Alice shares; the link is a field of `share --json`.
    let path = random_file(&root.path().join("data"), "holiday video.mkv", (2 << 20) + 12_345, 7);
    let shared = ok_json(&alice, &["share", path.to_str().unwrap()]).await;
    let text = shared["link"].as_str().unwrap_or_else(|| panic!("{shared}")).to_owned();
    let link = Link::parse(&text).unwrap();
    assert_eq!(link.id.to_hex(), shared["file_id"].as_str().unwrap());
    assert_eq!(
        (link.name.as_str(), link.size),
        ("holiday video.mkv", (2 << 20) + 12_345)
    );
    assert_eq!(link.proxies, vec![p.addr.to_string()]);
    let ca_path = c.certs().join("ca.pem");
    assert_eq!(link.ca, node::link::ca_fingerprint(&ca_path).unwrap());
    // `link` prints the same, by id or name; text mode prints the link alone.
    assert_eq!(
        ok_json(&alice, &["link", "holiday video.mkv"]).await["link"],
        text.as_str()
    );
    let (ok, out, err) = output_within(quorrent(&alice, &["link", &link.id.to_hex()]), LIMIT).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), text);
    let seeder = start_daemon(&alice).await;

    // Bob: a fresh home holding only the CA certificate.
    let bob = root.path().join("bob");
    std::fs::create_dir_all(&bob).unwrap();
    std::fs::copy(&ca_path, bob.join("ca.pem")).unwrap();
    let cwd = root.path();

    // A link whose `ca` is altered: refused before anything is sent to
    // its proxy (a bare UDP socket that would see the QUIC handshake).
    let trap = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut forged = link.clone();
    forged.proxies = vec![trap.local_addr().unwrap().to_string()];
    forged.ca.0[0] ^= 1;
    let e = bare_error(cwd, &bob, &["get", &forged.to_string(), "--no-seed"]).await;
    assert_eq!(e["code"], "ca_mismatch", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("field `ca`"), "{message}");
    assert!(message.contains(&forged.ca.to_string()), "{message}");
    assert!(message.contains(&link.ca.to_string()), "{message}");
    let mut buf = [0u8; 2048];
    let heard = tokio::time::timeout(Duration::from_millis(300), trap.recv_from(&mut buf)).await;
    assert!(heard.is_err(), "a datagram reached the forged link's proxy");
    assert!(!bob.join("config.json").exists(), "a refused link changed the home");

    // Malformed links: refused, naming the field, before any connection.
    let id = format!("id={}", link.id);
    let size = format!("size={}", link.size);
    for (bad, field) in [
        (text.replace(&id, "id=12345"), "id"),
        (text.replace(&format!("&{id}"), ""), "id"),
        (text.replace(&size, "size=2MB"), "size"),
        (text.replace("name=holiday%20", "name=holiday%2"), "name"),
        (text.replace(&format!("proxy={}", p.addr), "proxy=nowhere"), "proxy"),
        (text.replace("quorrent:", "quorent:"), "scheme"),
        (format!("{text}&pad={}", "x".repeat(9000)), "link"),
    ] {
        let e = bare_error(cwd, &bob, &["get", &bad, "--no-seed"]).await;
        assert_eq!(e["code"], "bad_link", "{bad}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains(&format!("field `{field}`")),
            "{e}"
        );
    }
    let e = bare_error(cwd, &bob, &["login", "bob", "--link", "magnet:?xt=urn:btih:00"]).await;
    assert!(e["message"].as_str().unwrap().contains("field `scheme`"), "{e}");
    // `--ca` goes with a link.
    let e = bare_error(cwd, &bob, &["get", &link.id.to_hex(), "--ca", "ca.pem"]).await;
    assert_eq!(e["code"], "usage", "{e}");
    assert!(!bob.join("config.json").exists());

    // Bob's account exists (made from anywhere on the network); he logs
    // in on his fresh home with the link, the password on stdin.
    let (ok, _, err) = output_within(quorrent(&alice, &["register", "bob"]), LIMIT).await;
    assert!(ok, "{err}");
    let mut login = bare(
        cwd,
        &bob,
        &["--json", "login", "bob", "--link", &text, "--password-stdin"],
    );
    let mut child = login.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{PASSWORD}\n").as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // The home keeps the link's network.
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(bob.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["proxies"], serde_json::json!([p.addr.to_string()]), "{config}");

    // A link whose name is not the file's: refused once the network
    // answers, naming the field.
    let mut renamed = link.clone();
    renamed.name = "other.mkv".into();
    let e = bare_error(cwd, &bob, &["get", &renamed.to_string(), "--no-seed"]).await;
    assert_eq!(e["code"], "bad_link", "{e}");
    assert!(e["message"].as_str().unwrap().contains("field `name`"), "{e}");

    // `get LINK` downloads identical bytes.
    let dl = root.path().join("bob-downloads");
    let (ok, out, err) = output_within(
        bare(
            cwd,
            &bob,
            &["--json", "get", &text, "--no-seed", "-o", dl.to_str().unwrap()],
        ),
        LIMIT,
    )
    .await;
    assert!(ok, "get LINK failed: {err} {out}");
    let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got["file_id"], link.id.to_hex().as_str(), "{got}");
    let copy = dl.join("holiday video.mkv");
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&path).unwrap());
    // And Bob's later commands reach the same network with no link.
    let hits = serde_json::from_str::<serde_json::Value>(
        &output_within(bare(cwd, &bob, &["--json", "search", "holiday"]), LIMIT)
            .await
            .1,
    )
    .unwrap();
    assert_eq!(hits[0]["owners"], 2, "{hits}");

    seeder.stop().await;
    p.shutdown().await;
}
