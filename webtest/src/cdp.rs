//! A minimal, blocking Chrome DevTools Protocol client for one page target.
//!
//! One WebSocket (tungstenite over a `TcpStream` to 127.0.0.1), one command
//! at a time: send `{id, method, params}`, read messages until the answer
//! with that id, drop everything else (events, which nothing here enables on
//! purpose, and late answers to commands that timed out). Every read is
//! bounded by the socket's read timeout, reset to what is left of the
//! command's deadline, so no call can hang.
//!
//! Not here: sessions (`Target.attachToTarget` with flatten), event
//! subscriptions, several pages. The tests drive one page.

use std::{
    io,
    net::TcpStream,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tungstenite::{protocol::WebSocketConfig, Message, WebSocket};

use crate::Error;

/// The largest DevTools message accepted: a full-size PNG screenshot,
/// base64-encoded, is a few MiB; this leaves room for a tall page.
const MAX_MESSAGE: usize = 256 << 20;

/// A DevTools connection to one page.
pub(crate) struct Connection {
    socket: WebSocket<TcpStream>,
    /// The id of the last command sent; answers carry it back.
    last_id: u64,
}

impl Connection {
    /// Connects to a target's `webSocketDebuggerUrl`
    /// (`ws://127.0.0.1:PORT/devtools/page/ID`) within `wait`.
    pub(crate) fn open(url: &str, wait: Duration) -> Result<Connection, Error> {
        let authority = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| Error::Cdp(format!("not a ws:// address: {url:?}")))?;
        let address = std::net::ToSocketAddrs::to_socket_addrs(authority)
            .ok()
            .and_then(|mut addresses| addresses.next())
            .ok_or_else(|| Error::Cdp(format!("no address for {authority:?}")))?;
        let stream =
            TcpStream::connect_timeout(&address, wait).map_err(|e| Error::Cdp(format!("connecting to {url}: {e}")))?;
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(wait))
            .and_then(|()| stream.set_write_timeout(Some(wait)))
            .map_err(|e| Error::Cdp(format!("setting timeouts on {url}: {e}")))?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let (socket, _response) = tungstenite::client::client_with_config(url, stream, Some(config))
            .map_err(|e| Error::Cdp(format!("WebSocket handshake with {url}: {e}")))?;
        Ok(Connection { socket, last_id: 0 })
    }

    /// Sends one command and returns its `result`, waiting at most `wait`.
    /// A DevTools error answer becomes `Error::Command`.
    pub(crate) fn call(&mut self, method: &str, params: Value, wait: Duration) -> Result<Value, Error> {
        let deadline = Instant::now() + wait;
        self.last_id += 1;
        let id = self.last_id;
        let request = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket
            .send(Message::text(request))
            .map_err(|e| Error::Cdp(format!("sending {method}: {e}")))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    what: format!("the answer to {method}"),
                    after: wait,
                    page: String::new(),
                });
            }
            // Zero would mean "no timeout" to set_read_timeout; `left` is not.
            self.socket
                .get_mut()
                .set_read_timeout(Some(left))
                .map_err(|e| Error::Cdp(format!("setting the read timeout: {e}")))?;
            let message = match self.socket.read() {
                Ok(message) => message,
                // The timeout: loop to check the deadline. tungstenite keeps
                // a partly read frame in its buffer, so the next read resumes.
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    continue
                }
                Err(e) => return Err(Error::Cdp(format!("reading the answer to {method}: {e}"))),
            };
            let text = match message {
                Message::Text(text) => text,
                Message::Close(frame) => {
                    return Err(Error::Cdp(format!(
                        "chromium closed the DevTools connection during {method}: {frame:?}"
                    )))
                }
                // Pings are answered by tungstenite; nothing else is expected.
                _ => continue,
            };
            let answer: Value = serde_json::from_str(text.as_str())
                .map_err(|e| Error::Cdp(format!("undecodable DevTools message ({e}): {}", snippet(&text))))?;
            if answer["id"].as_u64() != Some(id) {
                // An event, or the late answer to a command that timed out.
                continue;
            }
            if let Some(error) = answer.get("error") {
                return Err(Error::Command {
                    method: method.to_string(),
                    message: error["message"].as_str().unwrap_or_default().to_string(),
                    data: error["data"].as_str().unwrap_or_default().to_string(),
                });
            }
            return Ok(answer.get("result").cloned().unwrap_or(Value::Null));
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Best effort and non-blocking in effect: Chromium is killed next.
        let _ = self
            .socket
            .get_mut()
            .set_write_timeout(Some(Duration::from_millis(100)));
        let _ = self.socket.close(None);
    }
}

/// The first 200 characters of a message, for error texts.
fn snippet(text: &str) -> String {
    text.chars().take(200).collect()
}
