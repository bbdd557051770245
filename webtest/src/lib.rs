//! A small headless-Chromium driver for quorrent's browser tests.
//!
//! The tests of the dashboard and the node UI (issue 10) load the real pages
//! against a real cluster in Debian's Chromium and check what a person would
//! see. This crate is the driver they share: it starts Chromium (installing
//! it with `scripts/install-chromium.sh` if it is missing), speaks the Chrome
//! DevTools Protocol to one page, and kills Chromium when dropped.
//!
//! The API is **blocking** on purpose: a [`Browser`] owns a plain socket and
//! a process, and every call is bounded by a deadline. From a
//! `#[tokio::test]`, run the browser part inside
//! `tokio::task::spawn_blocking`, so the test's runtime (whatever its flavour)
//! stays free to serve the pages the browser asks for:
//!
//! ```no_run
//! # async fn example(url: String) -> anyhow::Result<()> {
//! use std::time::Duration;
//! tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
//!     let mut browser = webtest::Browser::launch()?;
//!     browser.goto(&url)?;
//!     browser.click("#download")?;
//!     browser.wait_for("document.querySelector('#progress').innerText === '100%'", Duration::from_secs(20))?;
//!     browser.screenshot("target/screenshots/node.png")?;
//!     Ok(())
//! })
//! .await??;
//! # Ok(())
//! # }
//! ```
//!
//! Calling it directly on a current-thread runtime would block the only
//! worker thread, and a page served by that runtime would never load.
//!
//! Not here: several tabs, frames, file uploads, network interception,
//! events. Selectors are CSS selectors for `document.querySelector`.
//!
//! The kill happens in `Drop`, so it covers a returned error and a panic
//! (unwinding), not a test process killed outright (SIGKILL, a harness
//! timeout): then Chromium outlives it, with its profile in the temporary
//! folder.

mod cdp;
mod launch;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{json, Value};

/// The viewport Chromium starts with (a laptop screen).
pub const DEFAULT_SIZE: (u32, u32) = (1280, 800);

/// The default bound of one call (a DevTools command, a page load, a click).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How often `wait_for` evaluates its predicate.
const POLL: Duration = Duration::from_millis(50);

/// How much of the page's text a timeout error quotes.
const PAGE_SNIPPET: usize = 600;

/// What can go wrong driving the browser.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Chromium could not be found, installed or started.
    #[error("launching chromium: {0}")]
    Launch(String),
    /// The DevTools connection failed or carried something unexpected.
    #[error("devtools: {0}")]
    Cdp(String),
    /// A DevTools command was answered with an error.
    #[error("{method} failed: {message} {data}")]
    Command {
        /// The DevTools method, e.g. `Page.navigate`.
        method: String,
        /// DevTools' error message.
        message: String,
        /// DevTools' error details, often empty.
        data: String,
    },
    /// The navigation itself failed (refused connection, unknown host).
    #[error("loading {url}: {error}")]
    Navigation {
        /// The address asked for.
        url: String,
        /// Chromium's error text, e.g. `net::ERR_CONNECTION_REFUSED`.
        error: String,
    },
    /// The page's JavaScript threw (or a promise it returned rejected).
    #[error("javascript exception: {0}")]
    Js(String),
    /// No element matches the selector.
    #[error("no element matches the selector {0:?}")]
    NotFound(String),
    /// The element exists but a person could not click or type into it.
    #[error("cannot use the element {selector:?}: {reason}")]
    Unusable {
        /// The selector given.
        selector: String,
        /// Why not: no size, covered by another element, cannot take focus.
        reason: String,
    },
    /// A bounded wait ran out.
    #[error("timed out after {after:?} waiting for {what}{}", page_suffix(.page))]
    Timeout {
        /// What was awaited (a predicate and its last outcome, an answer).
        what: String,
        /// The bound.
        after: Duration,
        /// The start of `document.body.innerText` then, if it was read.
        page: String,
    },
    /// Reading or writing a local file, or starting a process.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The result of every driver call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn io(context: &str, source: std::io::Error) -> Error {
        Error::Io {
            context: context.to_string(),
            source,
        }
    }
}

fn page_suffix(page: &str) -> String {
    if page.is_empty() {
        String::new()
    } else {
        format!("; the page shows: {page:?}")
    }
}

/// A headless Chromium with one page, driven over the DevTools protocol.
///
/// Dropping it (also while a test panics) kills Chromium's whole process
/// group, waits for it, and removes its temporary profile.
pub struct Browser {
    // Field order is drop order: the connection closes before the kill.
    connection: cdp::Connection,
    process: launch::Process,
    timeout: Duration,
}

impl Browser {
    /// Starts headless Chromium on `about:blank` with a [`DEFAULT_SIZE`]
    /// viewport and connects to its page. Installs Chromium
    /// with `scripts/install-chromium.sh` first if it is not on PATH (once,
    /// under a lock that parallel test processes share).
    pub fn launch() -> Result<Browser> {
        let (width, height) = DEFAULT_SIZE;
        let process = launch::Process::start(width, height)?;
        let connect = || -> Result<cdp::Connection> {
            let target = launch::page_target(process.port, launch::START_WAIT)?;
            cdp::Connection::open(&target, launch::START_WAIT)
        };
        let connection = connect().map_err(|e| match e {
            Error::Launch(problem) => process.launch_error(&problem),
            e => process.launch_error(&e.to_string()),
        })?;
        let mut browser = Browser {
            connection,
            process,
            timeout: DEFAULT_TIMEOUT,
        };
        // The window's size includes room for browser chrome even headless;
        // the page gets exactly DEFAULT_SIZE, so screenshots have it too.
        browser.set_viewport(width, height, false)?;
        Ok(browser)
    }

    /// The process id of the Chromium browser process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The temporary profile folder Chromium runs with; removed on drop.
    pub fn profile(&self) -> &Path {
        self.process.profile()
    }

    /// Changes the bound of each later call (default [`DEFAULT_TIMEOUT`]);
    /// `wait_for` takes its own.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Opens `url` and waits until the new document's `readyState` is
    /// `"complete"`. A failed navigation (refused connection) is an error; an
    /// HTTP error page is not, it is what a person would see.
    pub fn goto(&mut self, url: &str) -> Result<()> {
        // Marks the current document, so the wait below cannot mistake it,
        // still "complete", for the new one.
        let _ = self.eval("window.__webtestOld = true");
        let navigated = self.command("Page.navigate", json!({ "url": url }))?;
        if let Some(error) = navigated["errorText"].as_str().filter(|e| !e.is_empty()) {
            return Err(Error::Navigation {
                url: url.to_string(),
                error: error.to_string(),
            });
        }
        if navigated.get("loaderId").is_none() {
            // A same-document navigation (only the fragment changed).
            return Ok(());
        }
        self.wait_for(
            "!window.__webtestOld && document.readyState === 'complete'",
            self.timeout,
        )
        .map(drop)
    }

    /// Evaluates a JavaScript expression in the page and returns its value
    /// as JSON (a promise is awaited; `undefined` is `null`; values JSON
    /// cannot hold, like `NaN` or `1n`, come back as their text). An
    /// exception is [`Error::Js`] with its message.
    pub fn eval(&mut self, js: &str) -> Result<Value> {
        let remote = self.evaluate(js)?;
        Ok(value_of(&remote))
    }

    /// Evaluates `predicate` every 50 ms until it is truthy (in JavaScript's
    /// sense) and returns its value. An exception counts as not yet (the
    /// element may not be there yet) and is quoted if time runs out. On
    /// timeout the error names the predicate, its last outcome and the start
    /// of the page's text.
    pub fn wait_for(&mut self, predicate: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let last = loop {
            let outcome = match self.evaluate(predicate) {
                Ok(remote) if truthy(&remote) => return Ok(value_of(&remote)),
                Ok(remote) => format!("was {}", value_of(&remote)),
                // The page may be between documents, or the predicate may
                // read an element not rendered yet.
                Err(e @ (Error::Js(_) | Error::Command { .. })) => format!("failed: {e}"),
                Err(e) => return Err(e),
            };
            if Instant::now() >= deadline {
                break outcome;
            }
            std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
        };
        Err(Error::Timeout {
            what: format!("`{predicate}` to be truthy (last it {last})"),
            after: timeout,
            page: self.page_text(),
        })
    }

    /// Clicks the element as a person would: scrolls it into view, then a
    /// real left click (mouse moved, pressed, released) at its centre. An
    /// error if no element matches, it has no size, or another element
    /// covers its centre (the click would land there).
    pub fn click(&mut self, selector: &str) -> Result<()> {
        let script = format!(
            r#"(() => {{
                const el = document.querySelector({selector});
                if (!el) return null;
                el.scrollIntoView({{ block: 'center', inline: 'center', behavior: 'instant' }});
                const r = el.getBoundingClientRect();
                const x = r.left + r.width / 2, y = r.top + r.height / 2;
                const hit = document.elementFromPoint(x, y);
                const name = (e) => !e ? 'nothing' : e.tagName.toLowerCase()
                    + (e.id ? '#' + e.id : '')
                    + (typeof e.className === 'string' && e.className.trim()
                        ? '.' + e.className.trim().split(/\s+/).join('.') : '');
                return {{ x, y, width: r.width, height: r.height,
                          reached: hit === el || el.contains(hit), top: name(hit) }};
            }})()"#,
            selector = js_string(selector)
        );
        let target = self.eval(&script)?;
        if target.is_null() {
            return Err(Error::NotFound(selector.to_string()));
        }
        let unusable = |reason: String| Error::Unusable {
            selector: selector.to_string(),
            reason,
        };
        let (x, y) = (target["x"].as_f64().unwrap_or(0.0), target["y"].as_f64().unwrap_or(0.0));
        if target["width"].as_f64() == Some(0.0) || target["height"].as_f64() == Some(0.0) {
            return Err(unusable("it has no size (hidden?)".into()));
        }
        if target["reached"] != true {
            return Err(unusable(format!(
                "{} covers its centre ({x}, {y})",
                target["top"].as_str().unwrap_or("something")
            )));
        }
        self.command(
            "Input.dispatchMouseEvent",
            json!({ "type": "mouseMoved", "x": x, "y": y }),
        )?;
        for (kind, buttons) in [("mousePressed", 1), ("mouseReleased", 0)] {
            self.command(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "buttons": buttons, "clickCount": 1 }),
            )?;
        }
        Ok(())
    }

    /// Focuses the element and types `text` into it at the end of what it
    /// holds (DevTools' `Input.insertText`: the page sees input events).
    pub fn type_text(&mut self, selector: &str, text: &str) -> Result<()> {
        let script = format!(
            r#"(() => {{
                const el = document.querySelector({selector});
                if (!el) return null;
                el.scrollIntoView({{ block: 'center', inline: 'center', behavior: 'instant' }});
                el.focus();
                if (typeof el.value === 'string' && typeof el.setSelectionRange === 'function') {{
                    try {{ el.setSelectionRange(el.value.length, el.value.length); }} catch (_) {{}}
                }}
                return document.activeElement === el;
            }})()"#,
            selector = js_string(selector)
        );
        match self.eval(&script)? {
            Value::Null => Err(Error::NotFound(selector.to_string())),
            Value::Bool(true) => {
                self.command("Input.insertText", json!({ "text": text }))?;
                Ok(())
            }
            _ => Err(Error::Unusable {
                selector: selector.to_string(),
                reason: "it cannot take the focus (disabled, or not a field?)".into(),
            }),
        }
    }

    /// The element's `innerText`: its text as rendered.
    pub fn text(&mut self, selector: &str) -> Result<String> {
        let script = format!(
            "(() => {{ const el = document.querySelector({}); return el ? el.innerText : null; }})()",
            js_string(selector)
        );
        match self.eval(&script)? {
            Value::String(text) => Ok(text),
            _ => Err(Error::NotFound(selector.to_string())),
        }
    }

    /// Sets the viewport to `width` x `height` CSS pixels; `mobile` emulates
    /// a phone (the page's `<meta name="viewport">` applies, scrollbars
    /// overlay).
    pub fn set_viewport(&mut self, width: u32, height: u32, mobile: bool) -> Result<()> {
        self.command(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )?;
        Ok(())
    }

    /// Saves a PNG of the viewport to `path`, creating its folders; waits
    /// for the page's fonts first.
    pub fn screenshot(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let _ = self.eval("document.fonts ? document.fonts.ready.then(() => true) : true");
        let shot = self.command("Page.captureScreenshot", json!({ "format": "png" }))?;
        let data = shot["data"]
            .as_str()
            .ok_or_else(|| Error::Cdp(format!("Page.captureScreenshot answered no data: {shot}")))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| Error::Cdp(format!("Page.captureScreenshot answered bad base64: {e}")))?;
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).map_err(|e| Error::io(&format!("creating {}", folder.display()), e))?;
        }
        std::fs::write(path, png).map_err(|e| Error::io(&format!("writing {}", path.display()), e))
    }

    /// One DevTools command within the call bound; a timeout quotes
    /// Chromium's last stderr lines, the likely explanation.
    fn command(&mut self, method: &str, params: Value) -> Result<Value> {
        self.connection.call(method, params, self.timeout).map_err(|e| match e {
            Error::Timeout { what, after, page } => Error::Timeout {
                what: format!("{what} (chromium's last stderr lines:\n{})", self.process.stderr_tail()),
                after,
                page,
            },
            e => e,
        })
    }

    /// `Runtime.evaluate` by value, promises awaited; the result's
    /// RemoteObject, or `Error::Js` for an exception.
    fn evaluate(&mut self, js: &str) -> Result<Value> {
        let answer = self.command(
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true, "awaitPromise": true, "userGesture": true }),
        )?;
        if let Some(details) = answer.get("exceptionDetails") {
            return Err(Error::Js(exception_text(details)));
        }
        Ok(answer.get("result").cloned().unwrap_or(Value::Null))
    }

    /// The start of `document.body.innerText`, for error messages; empty if
    /// it cannot be read.
    fn page_text(&mut self) -> String {
        let text = self
            .eval("document.body ? document.body.innerText : ''")
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let mut snippet: String = text.chars().take(PAGE_SNIPPET).collect();
        if snippet.len() < text.len() {
            snippet.push('…');
        }
        snippet
    }
}

/// A Rust string as a JavaScript string literal (JSON is valid JavaScript).
fn js_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// A RemoteObject's value as JSON.
fn value_of(remote: &Value) -> Value {
    if let Some(text) = remote["unserializableValue"].as_str() {
        return Value::String(text.to_string());
    }
    remote.get("value").cloned().unwrap_or(Value::Null)
}

/// JavaScript's truthiness of a RemoteObject.
fn truthy(remote: &Value) -> bool {
    let value = &remote["value"];
    match remote["type"].as_str().unwrap_or_default() {
        "undefined" => false,
        "boolean" => value == true,
        "number" => match remote["unserializableValue"].as_str() {
            Some(special) => special != "NaN" && special != "-0",
            None => value.as_f64().is_some_and(|n| n != 0.0),
        },
        "string" => value.as_str().is_some_and(|s| !s.is_empty()),
        "bigint" => remote["unserializableValue"].as_str().is_some_and(|n| n != "0n"),
        "object" => remote["subtype"] != "null" && !value.is_null(),
        // function, symbol
        _ => true,
    }
}

/// The text of a `Runtime.ExceptionDetails`: "Uncaught Error: boom" and the
/// first stack line.
fn exception_text(details: &Value) -> String {
    let text = details["text"].as_str().unwrap_or("exception");
    let exception = &details["exception"];
    let thrown = exception["description"]
        .as_str()
        .map(|d| d.lines().take(2).collect::<Vec<_>>().join(" | "))
        .or_else(|| exception.get("value").map(|v| v.to_string()));
    match thrown {
        Some(thrown) => format!("{text} {thrown}"),
        None => text.to_string(),
    }
}

/// Where tests save screenshots: `QUORRENT_SCREENSHOTS`, else the
/// workspace's `target/screenshots/` (README shows copies of them).
pub fn screenshots_dir() -> std::path::PathBuf {
    std::env::var_os("QUORRENT_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots"))
}

/// Runs browser steps `f` off an async test's runtime (the driver
/// blocks) and hands the browser back; an error fails the test with its
/// message.
pub async fn steps<R: Send + 'static>(
    browser: Browser,
    f: impl FnOnce(&mut Browser) -> Result<R> + Send + 'static,
) -> (Browser, R) {
    tokio::task::spawn_blocking(move || {
        let mut b = browser;
        let r = f(&mut b).unwrap_or_else(|e| panic!("in the browser: {e}"));
        (b, r)
    })
    .await
    .expect("the browser task")
}

/// [`Browser::launch`] from an async test; a failure fails the test.
pub async fn launch() -> Browser {
    tokio::task::spawn_blocking(Browser::launch)
        .await
        .expect("the launch task")
        .unwrap_or_else(|e| panic!("chromium: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthiness_follows_javascript() {
        let cases = [
            (json!({"type": "undefined"}), false),
            (json!({"type": "object", "subtype": "null", "value": null}), false),
            (json!({"type": "object", "value": {}}), true),
            (json!({"type": "boolean", "value": false}), false),
            (json!({"type": "number", "value": 0}), false),
            (json!({"type": "number", "value": 3}), true),
            (json!({"type": "number", "unserializableValue": "NaN"}), false),
            (json!({"type": "number", "unserializableValue": "Infinity"}), true),
            (json!({"type": "string", "value": ""}), false),
            (json!({"type": "string", "value": "0"}), true),
            (json!({"type": "bigint", "unserializableValue": "0n"}), false),
        ];
        for (remote, expected) in cases {
            assert_eq!(truthy(&remote), expected, "{remote}");
        }
    }

    #[test]
    fn selectors_are_quoted_as_javascript_strings() {
        assert_eq!(js_string(r#"a[title="x"]'"#), r#""a[title=\"x\"]'""#);
    }

    #[test]
    fn exception_text_names_the_error() {
        let details = json!({"text": "Uncaught", "exception": {"description": "Error: boom\n    at <anonymous>:1:7\n    at more"}});
        assert_eq!(
            exception_text(&details),
            "Uncaught Error: boom |     at <anonymous>:1:7"
        );
        let thrown = json!({"text": "Uncaught", "exception": {"type": "string", "value": "plain"}});
        assert_eq!(exception_text(&thrown), "Uncaught \"plain\"");
    }
}
