//! How a command finds the running daemon of its home and hands it work
//! (`get`, `share`): `HOME/daemon.json` names its pid and HTTP address;
//! the daemon counts as running when that pid is alive and `/livez`
//! answers. The HTTP client is the smallest that serves: one HTTP/1.1
//! request per TCP connection (`Connection: close`), the answer read to
//! its end under a size bound and a deadline. No pooling, no TLS (the
//! daemon's address is loopback, or guarded by the home's token).

use std::{net::SocketAddr, path::Path, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{commands::CommandError, home::Home};

/// Largest answer read.
const MAX_ANSWER: u64 = 4 << 20;
/// Deadline of one request, connection included (a share hashes its file
/// before it answers: generous).
const DEADLINE: Duration = Duration::from_secs(600);
/// Deadline of the liveness probe.
const PROBE: Duration = Duration::from_secs(2);

/// A daemon that answered.
#[derive(Debug, Clone)]
pub struct Link {
    pub addr: SocketAddr,
    token: Option<String>,
}

/// The daemon of `home`, if one runs and answers.
pub async fn running(home: &Home) -> Option<Link> {
    let info: Value = serde_json::from_slice(&std::fs::read(home.dir.join("daemon.json")).ok()?).ok()?;
    let pid = info["pid"].as_u64()?;
    if pid == std::process::id() as u64 || !Path::new(&format!("/proc/{pid}")).exists() {
        return None;
    }
    let mut addr: SocketAddr = info["http"].as_str()?.parse().ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let token = std::fs::read_to_string(home.dir.join("http-token"))
        .ok()
        .map(|t| t.trim().to_owned());
    let link = Link { addr, token };
    match tokio::time::timeout(PROBE, link.request("GET", "/livez", None)).await {
        Ok(Ok((200, _))) => Some(link),
        _ => None,
    }
}

/// The daemon's error code as one of the CLI's stable codes (`download`
/// for one it does not know).
pub fn known_code(code: &str) -> &'static str {
    const CODES: &[&str] = &[
        "not_logged_in",
        "unavailable",
        "unreachable",
        "overloaded",
        "quota",
        "throttled",
        "not_found",
        "refused_certificate",
        "no_owner",
        "bad_input",
        "bad_id",
        "config",
        "io",
        "corrupt_state",
        "locked",
        "internal",
        "stopped",
        "interrupted",
        "outside_roots",
        "invalid",
        "ambiguous",
        "unauthorized",
        "too_large",
        "file_conflict",
    ];
    CODES.iter().find(|c| **c == code).copied().unwrap_or("download")
}

impl Link {
    /// `GET path`: the JSON answer, or the daemon's error.
    pub async fn get(&self, path: &str) -> Result<Value, CommandError> {
        self.json("GET", path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CommandError> {
        self.json("POST", path, Some(body)).await
    }

    async fn json(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CommandError> {
        let failed = |message: String| CommandError::Daemon { code: "io", message };
        let (status, body) = tokio::time::timeout(DEADLINE, self.request(method, path, body))
            .await
            .map_err(|_| failed(format!("no answer from {} within {} s", self.addr, DEADLINE.as_secs())))?
            .map_err(|e| failed(format!("{}: {e}", self.addr)))?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| failed(format!("{method} {path}: an answer that is not JSON: {e}")))?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        Err(CommandError::Daemon {
            code: known_code(value["error"].as_str().unwrap_or("")),
            message: value["message"]
                .as_str()
                .map_or_else(|| format!("{method} {path}: status {status}"), str::to_owned),
        })
    }

    /// One request: (status, body).
    pub async fn request(&self, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<(u16, Vec<u8>)> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        let mut stream = TcpStream::connect(self.addr).await?;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut answer).await?;
        parse_answer(&answer)
    }
}

/// Splits an HTTP/1.1 answer into status and body (de-chunked if need be).
fn parse_answer(answer: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad HTTP answer: {what}"));
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&answer[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status"))?;
    let body = &answer[end + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("chunk size"))?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| bad("chunk size"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if rest.len() < size {
            return Err(bad("short chunk"));
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_plain_and_chunked() {
        let plain = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_answer(plain).unwrap(), (404, b"{}".to_vec()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_answer(chunked).unwrap(), (200, b"abcde".to_vec()));
        assert!(parse_answer(b"HTTP/1.1 200").is_err());
        assert_eq!(known_code("no_owner"), "no_owner");
        assert_eq!(known_code("whatever"), "download");
    }
}
