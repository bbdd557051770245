//! The driver against a page of its own, served on 127.0.0.1:0 by a tiny
//! HTTP server in the test: reading, a real click whose effect comes later,
//! typing, the errors a failing browser test must explain, screenshots, the
//! kill on drop, and the use from a `#[tokio::test]` that serves the page
//! itself.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use webtest::{Browser, Error};

/// A button whose click (a trusted one only: a person's, not a script's
/// `el.click()`) bumps the counter after 300 ms, a text field echoed below
/// it, a hidden element and a covered button.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>webtest page</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font-family: sans-serif; margin: 2em; }
  #count { font-size: 2em; font-weight: bold; }
  .wrap { position: relative; display: inline-block; }
  .overlay { position: absolute; inset: 0; background: #ddd; }
</style></head>
<body>
<h1>Driver test page</h1>
<p>Clicked <span id="count">0</span> times</p>
<button id="more">Count one more</button>
<p><label>Name <input id="name" value="quo"></label></p>
<p id="echo">nobody typed yet</p>
<div id="hidden" style="display: none">hidden</div>
<div class="wrap"><button id="covered">Under</button><div class="overlay">overlay</div></div>
<script>
  document.getElementById('more').addEventListener('click', (e) => {
    if (!e.isTrusted) return;
    setTimeout(() => {
      const c = document.getElementById('count');
      c.textContent = String(Number(c.textContent) + 1);
    }, 300);
  });
  document.getElementById('name').addEventListener('input', (e) => {
    document.getElementById('echo').textContent = 'Hello, ' + e.target.value;
  });
</script>
</body></html>
"#;

/// Serves `PAGE` at every path but `/favicon.ico` from a thread that lives
/// as long as the test process.
fn serve() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test page server");
    let address = listener.local_addr().expect("its address");
    thread::spawn(move || {
        // A thread per connection: Chromium opens spare connections that
        // may stay idle and must not hold up the one it uses.
        for stream in listener.incoming().flatten() {
            thread::spawn(move || answer(stream));
        }
    });
    address
}

fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let (status, body) = if request.starts_with(b"GET /favicon.ico ") {
        ("404 Not Found", "")
    } else {
        ("200 OK", PAGE)
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn screenshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("webtest").join(name)
}

fn assert_png(path: &PathBuf) {
    let png = std::fs::read(path).expect("the screenshot exists");
    assert!(png.len() > 1000, "{} is only {} bytes", path.display(), png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
}

/// Whether a process with this pid exists (a zombie counts: not reaped).
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The running processes (zombies aside: where PID 1 does not reap, killed
/// orphans stay zombies) in the process group `group` or whose command line
/// names `profile`.
fn running(group: u32, profile: &Path) -> Vec<String> {
    let marker = profile.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter_map(|pid| {
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and
            // parentheses, so split after the last ')'.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
            let state = fields.next()?;
            let pgrp = fields.nth(1)?.parse::<u32>().ok()?;
            let cmdline =
                String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?).replace('\0', " ");
            (state != "Z" && (pgrp == group || cmdline.contains(&marker))).then(|| format!("{pid} {state} {cmdline}"))
        })
        .collect()
}

/// What a person would do on the page: read it, click and see the effect
/// arrive later, type; then screenshots at laptop and phone size.
#[test]
fn reads_clicks_types_and_takes_screenshots() -> anyhow::Result<()> {
    let address = serve();
    let mut browser = Browser::launch()?;
    browser.goto(&format!("http://{address}/"))?;
    assert_eq!(browser.text("h1")?, "Driver test page");
    assert_eq!(browser.eval("document.title")?, "webtest page");

    browser.click("#more")?;
    // The page counts only trusted clicks, and only 300 ms later.
    assert_eq!(browser.text("#count")?, "0");
    let count = browser.wait_for(
        "document.getElementById('count').innerText === '1' && 'one'",
        Duration::from_secs(10),
    )?;
    assert_eq!(count, "one");
    browser.click("#more")?;
    browser.wait_for(
        "document.getElementById('count').innerText === '2'",
        Duration::from_secs(10),
    )?;

    browser.type_text("#name", "rrent")?;
    assert_eq!(browser.eval("document.getElementById('name').value")?, "quorrent");
    assert_eq!(browser.text("#echo")?, "Hello, quorrent");

    let wide = screenshot_path("driver-wide.png");
    browser.screenshot(&wide)?;
    assert_png(&wide);
    browser.set_viewport(390, 844, true)?;
    assert_eq!(browser.eval("window.innerWidth")?, 390);
    let phone = screenshot_path("driver-phone.png");
    browser.screenshot(&phone)?;
    assert_png(&phone);

    // A second page load replaces the document (the counter starts over).
    browser.goto(&format!("http://{address}/again"))?;
    assert_eq!(browser.text("#count")?, "0");
    Ok(())
}

/// A failing browser test must say what went wrong: the exception's text,
/// the predicate that never held and what the page showed, the selector
/// that matched nothing or could not be clicked, the address that failed.
#[test]
fn errors_name_the_problem() -> anyhow::Result<()> {
    let address = serve();
    let mut browser = Browser::launch()?;
    browser.goto(&format!("http://{address}/"))?;

    match browser.eval("(() => { throw new Error('boom in the page'); })()") {
        Err(Error::Js(text)) => assert!(text.contains("boom in the page"), "{text}"),
        other => panic!("expected a JS exception, got {other:?}"),
    }
    match browser.eval("Promise.reject(new TypeError('rejected promise'))") {
        Err(Error::Js(text)) => assert!(text.contains("rejected promise"), "{text}"),
        other => panic!("expected a JS exception, got {other:?}"),
    }
    assert_eq!(browser.eval("new Promise(r => setTimeout(() => r(42), 50))")?, 42);
    assert_eq!(browser.eval("undefined")?, serde_json::Value::Null);

    let predicate = "document.getElementById('count').innerText === '7'";
    let error = browser
        .wait_for(predicate, Duration::from_millis(400))
        .expect_err("the counter never reaches 7");
    let message = error.to_string();
    assert!(matches!(error, Error::Timeout { .. }), "{message}");
    assert!(message.contains(predicate), "{message}");
    assert!(
        message.contains("Clicked 0 times"),
        "the page text is quoted: {message}"
    );
    let error = browser
        .wait_for("document.querySelector('#later').innerText", Duration::from_millis(200))
        .expect_err("no #later");
    assert!(
        error.to_string().contains("TypeError"),
        "the last exception is quoted: {error}"
    );

    assert!(matches!(browser.click("#nothing-here"), Err(Error::NotFound(s)) if s == "#nothing-here"));
    assert!(matches!(browser.text(".nothing"), Err(Error::NotFound(_))));
    assert!(matches!(browser.type_text("#nothing", "x"), Err(Error::NotFound(_))));
    let hidden = browser
        .click("#hidden")
        .expect_err("a hidden element cannot be clicked");
    assert!(hidden.to_string().contains("no size"), "{hidden}");
    let covered = browser
        .click("#covered")
        .expect_err("a covered button cannot be clicked");
    assert!(covered.to_string().contains("div.overlay covers"), "{covered}");
    let not_a_field = browser.type_text("h1", "x").expect_err("a heading takes no focus");
    assert!(matches!(not_a_field, Error::Unusable { .. }), "{not_a_field}");

    // A port nobody listens on: bound and dropped.
    let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    match browser.goto(&format!("http://{closed}/")) {
        Err(Error::Navigation { error, .. }) => assert!(error.contains("ERR_CONNECTION_REFUSED"), "{error}"),
        other => panic!("expected a navigation error, got {other:?}"),
    }
    Ok(())
}

/// Dropping the browser, also while a test panics, leaves no Chromium
/// process behind: the browser process is reaped and its group is empty.
#[test]
fn drop_kills_chromium_and_its_helpers() -> anyhow::Result<()> {
    let browser = Browser::launch()?;
    let pid = browser.pid();
    let profile = browser.profile().to_path_buf();
    assert!(alive(pid));
    assert!(profile.is_dir());
    assert!(running(pid, &profile).len() > 1, "chromium starts helper processes");
    drop(browser);
    assert!(!alive(pid), "chromium {pid} still exists after the drop");
    assert_eq!(
        running(pid, &profile),
        Vec::<String>::new(),
        "left running after the drop"
    );
    assert!(!profile.exists(), "{} is left", profile.display());

    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::panic::catch_unwind(move || {
        let browser = Browser::launch().expect("launch");
        tx.send((browser.pid(), browser.profile().to_path_buf()))
            .expect("send the pid");
        panic!("a failing browser test");
    });
    assert!(panicked.is_err());
    let (pid, profile) = rx.recv()?;
    assert!(!alive(pid), "chromium {pid} survived the panic");
    assert_eq!(
        running(pid, &profile),
        Vec::<String>::new(),
        "left running after the panic"
    );
    assert!(!profile.exists(), "{} survived the panic", profile.display());
    Ok(())
}

/// The way the UI tests use it: a current-thread `#[tokio::test]` serves the
/// page on its own runtime and drives the browser inside `spawn_blocking`,
/// so the blocking calls never stall the server.
#[tokio::test]
async fn drives_a_page_served_by_the_tests_own_runtime() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                break;
            };
            tokio::spawn(async move {
                let mut buf = vec![0; 16 * 1024];
                let _ = stream.read(&mut buf).await;
                let body = "<!doctype html><title>tokio</title><p id=served>served by tokio</p>";
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
            });
        }
    });
    let text = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let mut browser = Browser::launch()?;
        browser.goto(&format!("http://{address}/"))?;
        Ok(browser.text("#served")?)
    })
    .await??;
    assert_eq!(text, "served by tokio");
    server.abort();
    Ok(())
}
