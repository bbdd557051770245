//! The one small HTTP/1.1 server every process runs for people and
//! monitoring: `/metrics` (Prometheus), `/livez`, `/readyz`, `/status`,
//! the embedded pages and the node's JSON API. Each process gives it one
//! handler; this module owns what every handler must not have to think
//! about: a bound on connections, header and body read deadlines, a body
//! size limit checked before it is buffered, the token check, JSON errors
//! (`{"error": CODE, "message": TEXT}` with a 4xx), and a clean stop.
//!
//! Plain HTTP on purpose: the default address is loopback, and an address
//! elsewhere is guarded by a bearer token (the node) or exposes only
//! figures (trackers, proxy). See README, "HTTP endpoints".

use std::{convert::Infallible, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, header, HeaderMap, Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{de::DeserializeOwned, Serialize};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};

use crate::stop::Stop;

/// What a handler answers.
pub type Response = hyper::Response<Full<Bytes>>;

/// A request, its body already read (within [`Options::max_body`]).
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// The path, percent-decoding not applied (routes are ASCII).
    pub path: String,
    /// The raw query string (empty when none).
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub remote: SocketAddr,
}

impl Request {
    /// The first value of query parameter `name`, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k).as_deref() == Some(name)).then(|| percent_decode(v).unwrap_or_default())
        })
    }

    /// The body as JSON of type `T`; a 400 naming the field otherwise.
    #[allow(clippy::result_large_err)]
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Response> {
        let bad = |m: String| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("the body is not the JSON expected{m}"),
            )
        };
        let mut de = serde_json::Deserializer::from_slice(&self.body);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." {
                String::new()
            } else {
                format!(" at `{path}`")
            };
            bad(format!("{at}: {}", e.inner()))
        })?;
        de.end().map_err(|e| bad(format!(": {e}")))?;
        Ok(value)
    }

    /// Checks the bearer token (`Authorization: Bearer TOKEN`), comparing
    /// in constant time; a 401 otherwise.
    #[allow(clippy::result_large_err)]
    pub fn authorize(&self, token: &str) -> Result<(), Response> {
        let given = self
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Equal-length digests compared by blake3's constant-time `==`.
        if blake3::hash(given.as_bytes()) == blake3::hash(token.as_bytes()) && !token.is_empty() {
            Ok(())
        } else {
            Err(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this address needs the API token: send `Authorization: Bearer TOKEN` (the token is in the node's home, file http-token)",
            ))
        }
    }
}

/// `%XX` and `+` decoded; None when the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let (h, l) = (b[i + 1], b[i + 2]);
                if !h.is_ascii_hexdigit() || !l.is_ascii_hexdigit() {
                    return None;
                }
                let hex = [h, l];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A JSON answer.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    respond(status, "application/json", Bytes::from(body))
}

/// The error answer: `{"error": code, "message": message}`.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    json(status, &serde_json::json!({ "error": code, "message": message.into() }))
}

/// 404 naming the path.
pub fn not_found(req: &Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {} {}", req.method, req.path),
    )
}

/// 405 naming what the path takes.
pub fn method_not_allowed(req: &Request, allowed: &str) -> Response {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} takes {allowed}, not {}", req.path, req.method),
    );
    if let Ok(v) = header::HeaderValue::from_str(allowed) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

/// A body of the given content type.
pub fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut r = hyper::Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", header::HeaderValue::from_static("nosniff"));
    // No page of another site may frame ours (and trick clicks on it).
    h.insert("x-frame-options", header::HeaderValue::from_static("DENY"));
    r
}

/// An embedded page or script: text types by extension.
pub fn asset(name: &str, body: &'static [u8]) -> Response {
    let ct = match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    };
    let mut r = respond(StatusCode::OK, ct, Bytes::from_static(body));
    r.headers_mut().insert(
        "content-security-policy",
        header::HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    r
}

/// The Prometheus exposition of `registry` (OpenMetrics text).
pub fn metrics(registry: &prometheus_client::registry::Registry) -> Response {
    let mut text = String::with_capacity(16 << 10);
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encode",
            "the metrics could not be encoded",
        );
    }
    respond(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        text,
    )
}

/// A handler's future.
pub type Reply = Pin<Box<dyn Future<Output = Response> + Send>>;
/// A process's handler: every request, body read, goes through it.
pub type Handler = Arc<dyn Fn(Request) -> Reply + Send + Sync>;

/// Bounds of one server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest request body read; larger ones get 413 unread.
    pub max_body: usize,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Deadline for the headers, and separately for the body.
    pub read_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_body: 64 << 10,
            max_connections: 128,
            read_timeout: Duration::from_secs(10),
        }
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    stop: Stop,
    task: JoinHandle<()>,
}

impl Server {
    /// Stops accepting, asks open connections to finish their request,
    /// and waits (bounded) for the accept loop.
    pub async fn shutdown(self) {
        self.stop.stop();
        let _ = tokio::time::timeout(crate::stop::STOP_BUDGET / 4, self.task).await;
    }
}

/// Where a process's HTTP server binds, as its configuration says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// `"off"`.
    Off,
    /// No `http_addr` given: this address, or an ephemeral port on the
    /// same IP when it is taken (another process of the kind on the host).
    Default(SocketAddr),
    /// An explicit `IP:port`; failing to bind it is an error.
    At(SocketAddr),
}

impl Bind {
    /// Reads a configuration's `http_addr` (`None` for the default).
    pub fn from_config(field: &Option<String>, default: SocketAddr) -> Result<Bind, String> {
        match field.as_deref() {
            None => Ok(Bind::Default(default)),
            Some("off") => Ok(Bind::Off),
            Some(a) => a
                .parse()
                .map(Bind::At)
                .map_err(|_| format!("field `http_addr`: {a:?} is neither an IP:port address nor \"off\"")),
        }
    }

    /// Whether the server is reachable from other hosts.
    pub fn is_loopback(&self) -> bool {
        match self {
            Bind::Off => true,
            Bind::Default(a) | Bind::At(a) => a.ip().is_loopback(),
        }
    }
}

/// Binds as `bind` says and serves `handler` until `stop` (or
/// [`Server::shutdown`]). None when the configuration turned it off.
pub async fn serve(bind: Bind, opts: Options, handler: Handler, stop: &Stop) -> std::io::Result<Option<Server>> {
    Ok(listen(bind).await?.map(|l| serve_on(l, opts, handler, stop)))
}

/// Binds as `bind` says, serving nothing yet: a process binds first and
/// serves once the state its handler needs exists, so a bad address fails
/// it before anything else has started.
pub async fn listen(bind: Bind) -> std::io::Result<Option<TcpListener>> {
    Ok(Some(match bind {
        Bind::Off => return Ok(None),
        Bind::At(a) => TcpListener::bind(a)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("http_addr {a}: {e}")))?,
        Bind::Default(a) => match TcpListener::bind(a).await {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let l = TcpListener::bind(SocketAddr::new(a.ip(), 0)).await?;
                tracing::info!(default = %a, "the default HTTP address is taken; using an ephemeral port");
                l
            }
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("http_addr {a}: {e}"))),
        },
    }))
}

/// Serves `handler` on a listener from [`listen`] until `stop` (or
/// [`Server::shutdown`]).
pub fn serve_on(listener: TcpListener, opts: Options, handler: Handler, stop: &Stop) -> Server {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    // The server's own flag, also set by the process's.
    let own = Stop::new();
    let outer = stop.clone();
    let flag = own.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = outer.stopped() => flag.stop(),
            _ = flag.stopped() => {}
        }
    });
    let task = tokio::spawn(accept_loop(listener, Arc::new(opts), handler, own.clone()));
    tracing::info!(%addr, "HTTP server listening");
    Server { addr, stop: own, task }
}

async fn accept_loop(listener: TcpListener, opts: Arc<Options>, handler: Handler, stop: Stop) {
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    loop {
        let (stream, remote) = tokio::select! {
            _ = stop.stopped() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let opts = opts.clone();
        let handler = handler.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let read_timeout = opts.read_timeout;
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let opts = opts.clone();
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(one_request(req, remote, &opts, handler).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .max_buf_size(64 << 10)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.stopped() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(crate::stop::STOP_BUDGET / 4, conn).await;
                }
            }
        });
    }
}

async fn one_request(req: hyper::Request<Incoming>, remote: SocketAddr, opts: &Options, handler: Handler) -> Response {
    let (parts, body) = req.into_parts();
    let too_big = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {} bytes", opts.max_body),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > opts.max_body as u64) {
        return too_big();
    }
    let body = match tokio::time::timeout(opts.read_timeout, Limited::new(body, opts.max_body).collect()).await {
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the body did not arrive in time",
            )
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_big(),
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, "bad_body", format!("reading the body: {e}")),
        Ok(Ok(b)) => b.to_bytes(),
    };
    let request = Request {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers,
        body,
        remote,
    };
    handler(request).await
}

/// A handler from an async function of the request.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    Arc::new(move |r| Box::pin(f(r)))
}

/// A client for the processes' own endpoints (tools, tests, the CLI
/// talking to its daemon): one request per connection, `Connection:
/// close`, the answer read whole up to `max` bytes, everything within
/// `timeout`. Returns the status and the body.
pub async fn fetch(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
    max: usize,
) -> std::io::Result<(u16, Bytes)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let run = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {addr}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await?;
        // A server may answer (413) and close before taking the whole
        // body: its answer is still there to read.
        if let Err(e) = s.write_all(body).await {
            if !matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) {
                return Err(e);
            }
        }
        let mut buf = Vec::new();
        (&mut s).take(max as u64 + 1).read_to_end(&mut buf).await?;
        if buf.len() > max {
            return Err(bad(format!("the answer is larger than {max} bytes")));
        }
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| bad("no end of headers".into()))?;
        let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("headers are not UTF-8".into()))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| bad(format!("bad status line: {}", head.lines().next().unwrap_or(""))))?;
        let chunked = head
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
        let mut body = buf.split_off(end + 4);
        if chunked {
            body = dechunk(&body).ok_or_else(|| bad("bad chunked body".into()))?;
        }
        Ok((status, Bytes::from(body)))
    };
    tokio::time::timeout(timeout, run).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{method} http://{addr}{path}: no answer within {timeout:?}"),
        )
    })?
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line]).ok()?.split(';').next()?.trim(), 16).ok()?;
        b = &b[line + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(percent_decode("%e2%82%ac").as_deref(), Some("€"));
        assert_eq!(percent_decode("50%").as_deref(), Some("50%"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%+5x"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn bind_from_config() {
        let d: SocketAddr = "127.0.0.1:7490".parse().unwrap();
        assert_eq!(Bind::from_config(&None, d), Ok(Bind::Default(d)));
        assert_eq!(Bind::from_config(&Some("off".into()), d), Ok(Bind::Off));
        assert!(Bind::from_config(&Some("0.0.0.0:1".into()), d).is_ok_and(|b| !b.is_loopback()));
        assert!(Bind::from_config(&Some("localhost:1".into()), d)
            .unwrap_err()
            .contains("http_addr"));
    }
}
