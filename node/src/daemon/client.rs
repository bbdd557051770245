//! How a command finds the running daemon of its home and hands it work
//! (`get`, `share`, `limits`): `HOME/daemon.json` names its pid and HTTP address;
//! the daemon counts as running when that pid is alive and `/livez`
//! answers. Requests go through `protocol::http::fetch`: one HTTP/1.1
//! request per connection, the answer bounded in size and time. No TLS
//! (the daemon's address is loopback, or guarded by the home's token).

use std::{net::SocketAddr, path::Path, time::Duration};

use serde_json::Value;

use crate::{commands::CommandError, home::Home};

/// Largest answer read.
const MAX_ANSWER: usize = 16 << 20;
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
        // The daemon of this home, not another that took the port of a
        // stale daemon.json (its pid reused).
        Ok(Ok((200, body))) => {
            let v: Value = serde_json::from_slice(&body).ok()?;
            (v["peer_id"].as_str() == Some(home.identity.peer_id.to_hex().as_str())).then_some(link)
        }
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

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Value, CommandError> {
        self.json("DELETE", path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CommandError> {
        self.json("POST", path, Some(body)).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, CommandError> {
        self.json("PUT", path, Some(body)).await
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

    /// One request: (status, body), through the one HTTP client
    /// (`protocol::http::fetch`).
    pub async fn request(&self, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<(u16, Vec<u8>)> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        if let Some(b) = &bearer {
            headers.push(("Authorization", b.as_str()));
        }
        let (status, answer) =
            protocol::http::fetch(self.addr, method, path, &headers, body.as_bytes(), DEADLINE, MAX_ANSWER).await?;
        Ok((status, answer.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_codes_become_download() {
        assert_eq!(known_code("no_owner"), "no_owner");
        assert_eq!(known_code("whatever"), "download");
    }
}
