//! The peer protocol (`quorrent-peer/1`), spoken between nodes.
//!
//! Participants: a downloader dials a peer it learnt from the tracker and
//! checks that the peer's TLS key hashes to the peer id (see
//! [`crate::tls::PeerVerifier`]). Sequence, one bi-directional stream per
//! request: the downloader sends one [`PeerRequest`] frame; the peer
//! answers one [`PeerResponse`] frame, and for `Chunk` the raw chunk bytes
//! follow the frame on the same stream (no second copy through the codec).
//!
//! Goals: many chunk requests in flight as concurrent streams; a peer may
//! hold only part of a file and says which part (`Have`). Non-goals:
//! discovery (the tracker does it), choking and incentives.

use serde::{Deserialize, Serialize};

use crate::ids::FileId;

/// ALPN of the peer protocol.
pub const ALPN: &[u8] = b"quorrent-peer/1";

/// Largest response frame (a manifest is the largest); only a client
/// reading answers uses it.
pub const MAX_FRAME: usize = crate::content::MAX_MANIFEST_BYTES + 1024;

/// Largest request frame a peer server reads: every [`PeerRequest`] is a
/// file id and at most an index (about 40 bytes encoded).
pub const MAX_REQUEST: usize = 256;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerRequest {
    /// The encoded manifest of a file.
    Manifest { file: FileId },
    /// Which chunks the peer holds, as a bit set.
    Have { file: FileId },
    /// One chunk; the bytes follow the response frame.
    Chunk { file: FileId, index: u32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerResponse {
    Manifest {
        bytes: Vec<u8>,
    },
    /// Bit `i` of byte `i / 8` (least significant first) is chunk `i`.
    Have {
        bits: Vec<u8>,
        complete: bool,
    },
    /// `len` bytes of chunk data follow.
    Chunk {
        len: u32,
    },
    Error(PeerError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum PeerError {
    #[error("file unknown to this peer")]
    UnknownFile,
    #[error("chunk not held by this peer")]
    MissingChunk,
    #[error("busy, try later")]
    Busy,
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("internal error")]
    Internal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_fits_the_request_limit() {
        let file = FileId([0xff; 32]);
        for req in [
            PeerRequest::Manifest { file },
            PeerRequest::Have { file },
            PeerRequest::Chunk { file, index: u32::MAX },
        ] {
            let len = crate::codec::encode(&req).unwrap().len();
            assert!(len <= MAX_REQUEST, "{req:?}: {len} bytes");
        }
    }
}
