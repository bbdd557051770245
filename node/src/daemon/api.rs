//! The daemon's HTTP routes: the embedded page (`node/assets/`), health,
//! status, metrics and the JSON API (README, "Node daemon: HTTP API").
//! What every server must do (bounds, body limit, JSON errors, the token
//! comparison) is `protocol::http`'s; this module decides which route
//! needs the token, parses and checks what a request names (file ids,
//! paths: canonical and inside the daemon's folders, see
//! [`Daemon::inside_roots`]) and maps the daemon's answers to statuses.

use std::{path::PathBuf, sync::Arc, time::Duration};

use hyper::{Method, StatusCode};
use protocol::{
    http::{self, Handler, Request, Response},
    ids::FileId,
    tracker_api::Request as TrackerRequest,
};
use serde::Deserialize;
use serde_json::json;

use super::{Daemon, Refusal};
use crate::commands;

const INDEX_HTML: &[u8] = include_bytes!("../../assets/index.html");
const APP_JS: &[u8] = include_bytes!("../../assets/app.js");
const STYLE_CSS: &[u8] = include_bytes!("../../assets/style.css");

/// How long `/readyz` waits for the tracker.
const READY_WAIT: Duration = Duration::from_secs(3);

/// Hits `/api/search` answers at most.
const MAX_SEARCH_HITS: usize = 200;

/// The handler of the daemon's HTTP server.
pub fn handler(d: Arc<Daemon>) -> Handler {
    http::handler(move |req| {
        let d = d.clone();
        async move { route(d, req).await }
    })
}

fn refused(r: Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    http::error(status, r.code, r.message)
}

fn ok<T: serde::Serialize>(value: &T) -> Response {
    http::json(StatusCode::OK, value)
}

async fn route(d: Arc<Daemon>, req: Request) -> Response {
    let path = req.path.clone();
    if (path.starts_with("/api/") || path == "/metrics") && d.token_required() {
        if let Err(r) = req.authorize(&d.token) {
            return r;
        }
    }
    if path != "/livez" {
        if let Err(r) = browser_guard(&d, &req) {
            return r;
        }
    }
    let get = req.method == Method::GET;
    let post = req.method == Method::POST;
    match path.as_str() {
        "/" | "/index.html" | "/app.js" | "/style.css" if !get => http::method_not_allowed(&req, "GET"),
        "/" | "/index.html" => http::asset("index.html", INDEX_HTML),
        "/app.js" => http::asset("app.js", APP_JS),
        "/style.css" => http::asset("style.css", STYLE_CSS),
        "/livez" | "/readyz" | "/status" | "/metrics" | "/api/files" | "/api/search" if !get => {
            http::method_not_allowed(&req, "GET")
        }
        // The peer id lets a command check the daemon is its home's.
        "/livez" => ok(&json!({ "ok": true, "peer_id": d.home.identity.peer_id.to_hex() })),
        "/readyz" => readyz(&d).await,
        "/status" => status(&d),
        "/metrics" => http::metrics(&d.registry),
        "/api/files" => match d.files() {
            Ok(files) => ok(&files),
            Err(r) => refused(r),
        },
        "/api/search" => search(&d, &req).await,
        "/api/limits" => match req.method {
            Method::GET => ok(&d.limits.to_json()),
            Method::PUT => set_limits(&d, &req),
            _ => http::method_not_allowed(&req, "GET, PUT"),
        },
        "/api/downloads" | "/api/shares" if !post => http::method_not_allowed(&req, "POST"),
        "/api/downloads" => start_download(&d, &req).await,
        "/api/shares" => share(&d, &req).await,
        p => match p.strip_prefix("/api/files/") {
            Some(rest) => file_route(&d, &req, rest).await,
            None => http::not_found(&req),
        },
    }
}

/// What a web page elsewhere must not do through the user's browser: on
/// loopback no token guards the API, so a request whose `Host` is not a
/// loopback name (a DNS-rebinding page) is refused, and so is a change
/// (any method but GET) sent by a page of another origin (`Origin`, which
/// browsers add, differs from `Host`). Programs (the CLI, curl) send no
/// `Origin`.
#[allow(clippy::result_large_err)]
fn browser_guard(d: &Daemon, req: &Request) -> Result<(), Response> {
    let header = |name: hyper::header::HeaderName| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let host = header(hyper::header::HOST);
    if !d.token_required() && !is_loopback_host(&host) {
        return Err(http::error(
            StatusCode::FORBIDDEN,
            "bad_host",
            format!(
                "Host {:?} is not a loopback name; use http://127.0.0.1:PORT/ or http://localhost:PORT/",
                truncate(&host)
            ),
        ));
    }
    // A request another site's page makes (an image, a form, a script):
    // browsers say so, GETs included.
    if req.path.starts_with("/api/") && header(hyper::header::HeaderName::from_static("sec-fetch-site")) == "cross-site"
    {
        return Err(http::error(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "another site's page may not use this node's API",
        ));
    }
    let origin = header(hyper::header::ORIGIN);
    if req.method != Method::GET && !origin.is_empty() && origin != format!("http://{host}") {
        return Err(http::error(
            StatusCode::FORBIDDEN,
            "cross_origin",
            format!("a page of {:?} may not change this node", truncate(&origin)),
        ));
    }
    Ok(())
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn readyz(d: &Daemon) -> Response {
    match tokio::time::timeout(READY_WAIT, d.client.call(TrackerRequest::ClusterStatus)).await {
        Ok(Ok(_)) => ok(&json!({ "ok": true })),
        Ok(Err(e)) => http::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the tracker does not answer through the proxy: {e}"),
        ),
        Err(_) => http::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "the tracker did not answer through the proxy within {} s",
                READY_WAIT.as_secs()
            ),
        ),
    }
}

fn status(d: &Daemon) -> Response {
    let user = d.home.session().ok().flatten().map(|s| s.user);
    ok(&json!({
        "peer_id": d.home.identity.peer_id.to_hex(),
        "user": user,
        "version": env!("CARGO_PKG_VERSION"),
        "http": d.http_addr.get(),
        "peer_addr": d.peer_addr,
        "advertised": d.addrs,
        "token_required": d.token_required(),
        "counts": d.counts(),
    }))
}

async fn search(d: &Daemon, req: &Request) -> Response {
    let Some(q) = req.param("q") else {
        return http::error(
            StatusCode::BAD_REQUEST,
            "bad_input",
            "query parameter `q` is missing (GET /api/search?q=TEXT)",
        );
    };
    // A page's worth: a search box shows no more, and a request costs
    // the tracker one call.
    match commands::search_upto(&d.client, &q, MAX_SEARCH_HITS).await {
        Ok(mut hits) => {
            hits.truncate(MAX_SEARCH_HITS);
            ok(&commands::hits_json(&hits))
        }
        Err(e) => refused(e.into()),
    }
}

/// A file id from a request; a 400 naming `field` otherwise.
#[allow(clippy::result_large_err)]
fn file_id(field: &str, s: &str) -> Result<FileId, Response> {
    match s.parse::<FileId>() {
        Ok(id) if s.len() == 64 => Ok(id),
        _ => Err(http::error(
            StatusCode::BAD_REQUEST,
            "bad_id",
            format!("`{field}`: {:?} is not a file id (64 hexadecimal digits)", truncate(s)),
        )),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DownloadBody {
    id: String,
    /// Shown by the page before the tracker's answer; unused here.
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    /// Chunks in order, lowest first (streaming).
    #[serde(default)]
    sequential: bool,
}

async fn start_download(d: &Arc<Daemon>, req: &Request) -> Response {
    let body: DownloadBody = match req.json() {
        Ok(b) => b,
        Err(r) => return r,
    };
    let id = match file_id("id", &body.id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match d.download(id, body.sequential).await {
        Ok(entry) => http::json(StatusCode::ACCEPTED, &entry),
        Err(r) => refused(r),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareBody {
    path: PathBuf,
}

async fn share(d: &Daemon, req: &Request) -> Response {
    let body: ShareBody = match req.json() {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.path.as_os_str().is_empty() {
        return http::error(StatusCode::BAD_REQUEST, "bad_input", "`path` is empty");
    }
    // A relative path is taken from the storage folder.
    let path = d.home.storage_dir().join(&body.path);
    let canonical = match d.inside_roots(&path) {
        Ok(p) => p,
        Err(r) => return refused(r),
    };
    match d.share(&canonical).await {
        Ok(entry) => http::json(StatusCode::CREATED, &entry),
        Err(r) => refused(r),
    }
}

/// `PUT /api/limits`: each field present is set (a number of bytes per
/// second, or null for no limit), at once for the transfers under way;
/// a field left out keeps its limit.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    #[serde(default, deserialize_with = "present")]
    max_upload_rate: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    max_download_rate: Option<serde_json::Value>,
}

/// A field that is present, null included (absent stays None).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// A limit from a request: null for none, else a number of bytes per
/// second from 1 to 10^15 (rounded); a 400 naming `field` otherwise.
#[allow(clippy::result_large_err)]
fn limit_of(field: &str, v: &serde_json::Value) -> Result<Option<u64>, Response> {
    if v.is_null() {
        return Ok(None);
    }
    match v.as_f64() {
        Some(n) if (1.0..=1e15).contains(&n) => Ok(Some(n.round() as u64)),
        _ => Err(http::error(
            StatusCode::BAD_REQUEST,
            "bad_input",
            format!(
                "`{field}`: {} is not a rate; give bytes per second as a number from 1 to 1e15, \
                 or null for no limit",
                truncate(&v.to_string())
            ),
        )),
    }
}

fn set_limits(d: &Daemon, req: &Request) -> Response {
    // An object (serde would take a struct from an array too), then its fields.
    if let Err(r) = req.json::<serde_json::Map<String, serde_json::Value>>() {
        return r;
    }
    let body: LimitsBody = match req.json() {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Every field is checked before anything changes.
    let mut changes = Vec::new();
    for (field, value, limit) in [
        ("max_upload_rate", &body.max_upload_rate, &d.limits.up),
        ("max_download_rate", &body.max_download_rate, &d.limits.down),
    ] {
        if let Some(v) = value {
            match limit_of(field, v) {
                Ok(rate) => changes.push((limit, rate)),
                Err(r) => return r,
            }
        }
    }
    for (limit, rate) in changes {
        limit.set_rate(rate);
    }
    let now = d.limits.to_json();
    tracing::info!(limits = %now, "rate limits set");
    ok(&now)
}

async fn file_route(d: &Arc<Daemon>, req: &Request, rest: &str) -> Response {
    let (id, action) = match rest.split_once('/') {
        Some((id, action)) => (id, Some(action)),
        None => (rest, None),
    };
    let id = match file_id("id", id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let m = &req.method;
    match action {
        None if *m == Method::GET => match d.file(&id) {
            Ok(Some(entry)) => {
                let mut v = serde_json::to_value(&entry).unwrap_or_default();
                if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), d.detail(&id)) {
                    obj.extend(more);
                }
                ok(&v)
            }
            Ok(None) => http::error(StatusCode::NOT_FOUND, "not_found", format!("no file {id} here")),
            Err(r) => refused(r),
        },
        None if *m == Method::DELETE => {
            let delete_data = match req.param("delete_data").as_deref() {
                None | Some("false") | Some("0") => false,
                Some("true") | Some("1") => true,
                Some(other) => {
                    return http::error(
                        StatusCode::BAD_REQUEST,
                        "bad_input",
                        format!("`delete_data`: {:?} is neither true nor false", truncate(other)),
                    )
                }
            };
            match d.remove(&id, delete_data).await {
                Ok(v) => ok(&v),
                Err(r) => refused(r),
            }
        }
        None => http::method_not_allowed(req, "GET, DELETE"),
        Some("pause" | "resume") if *m != Method::POST => http::method_not_allowed(req, "POST"),
        Some("pause") => match d.pause(&id).and_then(|()| d.file(&id)) {
            Ok(entry) => ok(&entry),
            Err(r) => refused(r),
        },
        Some("resume") => match d.resume(&id).await {
            Ok(entry) => http::json(StatusCode::ACCEPTED, &entry),
            Err(r) => refused(r),
        },
        Some(_) => http::not_found(req),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:7490",
            "localhost:7490",
            "localhost",
            "[::1]:7490",
            "127.0.0.2",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example:7490",
            "",
            "10.0.0.1:7490",
            "localhost.evil.example",
            "[::2]:1",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
