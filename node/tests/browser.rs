//! The node daemon's page in headless Chromium (the `webtest` driver,
//! installing Debian's chromium if missing), against a real cluster and
//! two real `quorrent seed` daemons, doing what a person would: on
//! Alice's page, share a file by typing its path and clicking Share; find
//! it with the search box on both pages; on Bob's page, click Download and
//! watch the progress advance to 100% (Alice's upload is capped so there is
//! something to watch); open the file for its peers and chunk map. Then
//! the page on a phone-sized screen. Screenshots go to `target/screenshots/`
//! (README shows copies).

mod common;

use std::time::Duration;

use common::*;
use tracker_cluster::testing::TestCluster;

const T: Duration = Duration::from_secs(60);

/// A JS string literal of `s`.
fn js(s: &str) -> String {
    serde_json::Value::String(s.into()).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_search_and_download_by_clicking() {
    let mut c = TestCluster::new(3);
    c.start_all();
    c.wait_leader(T).await;
    let p = start_proxy(&c, "proxy-1", 0).await;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let alice = home(r, "alice", &[p.addr], &c);
    let bob = home(r, "bob", &[p.addr], &c);
    sign_up(&alice, "alice").await;
    sign_up(&bob, "bob").await;

    // A 24 MiB file in Alice's storage folder (a folder her daemon may
    // share from), served at 6 MB/s: four seconds of progress to watch.
    let storage = alice.dir.join("files");
    let name = "holiday-film.mkv";
    let path = random_file(&storage, name, 24 << 20, 7);
    let a = start_daemon_with(&alice, &["--max-upload-rate", "6MB/s"]).await;
    let b = start_daemon(&bob).await;

    let browser = webtest::launch().await;

    // Alice shares it from her page; it appears in her list, seeding, and
    // her search finds it.
    let a_url = format!("http://{}/", a.http);
    let shared = path.display().to_string();
    let (browser, id) = webtest::steps(browser, move |b| {
        b.goto(&a_url)?;
        b.type_text("#share-path", &shared)?;
        b.click("#share-button")?;
        let id = b.wait_for(
            "(() => { const r = document.querySelector('tr.file[data-state=\"seeding\"]'); return r ? r.dataset.id : false; })()",
            T,
        )?;
        let id = id.as_str().expect("an id").to_string();
        b.type_text("#search-input", "holiday")?;
        b.click("#search-button")?;
        b.wait_for(&format!("document.querySelector('tr.hit[data-id={}]') !== null", js(&id)), T)?;
        Ok(id)
    })
    .await;
    assert_eq!(id.len(), 64, "{id}");

    // Bob finds it, clicks Download, and watches it go to 100%.
    let b_url = format!("http://{}/", b.http);
    let id2 = id.clone();
    let (browser, seen) = webtest::steps(browser, move |b| {
        b.goto(&b_url)?;
        b.type_text("#search-input", "film")?;
        b.click("#search-button")?;
        let button = format!("button.download[data-id={}]", js(&id2));
        b.wait_for(&format!("document.querySelector({}) !== null", js(&button)), T)?;
        b.click(&button)?;
        // Progress values as the page shows them, until 100%.
        let row = format!("tr.file[data-id={}]", js(&id2));
        let mut seen: Vec<String> = Vec::new();
        let deadline = std::time::Instant::now() + T;
        loop {
            let v = b.eval(&format!(
                "(() => {{ const r = document.querySelector({}); return r ? r.querySelector('.progress').textContent : ''; }})()",
                js(&row)
            ))?;
            let text = v.as_str().unwrap_or_default().to_string();
            if !text.is_empty() && seen.last() != Some(&text) {
                seen.push(text.clone());
            }
            if text == "100%" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "progress never reached 100%: {seen:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        b.wait_for(
            &format!("document.querySelector({}).dataset.state === 'seeding'", js(&row)),
            T,
        )?;
        // The detail: the peer it came from and a full chunk map.
        b.click(&format!("{row} td"))?;
        b.wait_for("document.querySelectorAll('#chunk-map rect').length > 0", T)?;
        b.screenshot(webtest::screenshots_dir().join("node.png"))?;
        b.set_viewport(390, 844, true)?;
        b.wait_for("document.documentElement.scrollWidth <= 391", T)?;
        b.screenshot(webtest::screenshots_dir().join("node-phone.png"))?;
        Ok(seen)
    })
    .await;
    drop(browser);
    assert!(
        seen.iter().any(|s| s != "0%" && s != "100%"),
        "the page showed the progress advance, not only its ends: {seen:?}"
    );

    // What the page reported is what is on disk.
    let got = bob.dir.join("files").join(name);
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&path).unwrap());

    b.stop().await;
    a.stop().await;
    p.shutdown().await;
}
