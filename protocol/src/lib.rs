//! The shared ground of quorrent: wire types of every protocol, the one
//! codec that frames them, content addressing, identities, TLS and
//! certificate helpers, QUIC transport settings, configuration types and
//! logging set-up.
//!
//! Only this crate knows bincode and the frame format; the binaries speak
//! in the typed messages defined here (the tracker's Raft RPCs are the one
//! set of messages defined elsewhere, because their types come from
//! openraft, and they too go through [`codec`]).

pub mod codec;
pub mod config;
pub mod content;
pub mod durable;
pub mod http;
pub mod ids;
pub mod link;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod peer;
pub mod quic;
pub mod stop;
pub mod tls;
pub mod tracker_api;

/// An error message (with its causes, `{:#}`) as the one line a command
/// prints: line breaks become "; ".
pub fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Milliseconds since the Unix epoch, the one wall clock the system uses
/// for expiries that cross machines (sessions).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
