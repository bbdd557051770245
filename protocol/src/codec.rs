//! The one codec: length-prefixed bincode frames on QUIC streams.
//!
//! A frame is a 4-byte little-endian length followed by that many bytes of
//! bincode (standard configuration, serde types). The length is checked
//! against the caller's limit *before* any buffer is allocated, and bincode
//! itself is told the same limit, so a hostile length or a nested length
//! inside the payload cannot make us allocate more than the limit.
//!
//! Every protocol (tracker API, Raft, peer) uses the request/response shape
//! built here: one bi-directional stream per request, one frame each way.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of the length prefix.
pub const PREFIX: usize = 4;

/// Errors of reading or writing one frame.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer announced a frame larger than we accept.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    /// The bytes did not decode as the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The message could not be encoded (a bug, or a value over the limit).
    #[error("cannot encode frame: {0}")]
    Encode(String),
    /// The stream ended before a whole frame arrived.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The whole frame did not arrive within the read timeout.
    #[error("frame not received within the read timeout")]
    Timeout,
    /// The transport failed.
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `msg` as one frame (prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = vec![0u8; PREFIX];
    bincode::serde::encode_into_std_write(msg, &mut buf, config()).map_err(|e| CodecError::Encode(e.to_string()))?;
    let len = u32::try_from(buf.len() - PREFIX).map_err(|_| CodecError::Encode("frame over 4 GiB".into()))?;
    buf[..PREFIX].copy_from_slice(&len.to_le_bytes());
    Ok(buf)
}

/// Encodes `msg` without the length prefix (for values stored on disk,
/// such as Raft log entries and snapshots).
pub fn encode_body<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(msg, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a frame body (without prefix), refusing trailing bytes.
pub fn decode<T: DeserializeOwned>(body: &[u8], limit: usize) -> Result<T, CodecError> {
    if body.len() > limit {
        return Err(CodecError::TooLarge { len: body.len(), limit });
    }
    // bincode's own limit caps what a length *inside* the body may make it
    // allocate: a string is allocated at its announced length before its
    // bytes are read. The limit counts every value bincode decodes, at most
    // 16 bytes (a u128) per byte of body, so a body needs at most 16 times
    // its length, and the caller allows at most `limit`. bincode wants a
    // constant, so take the smallest tier that covers the smaller of the
    // two. The tiers sit at the limits the protocols use (64 KiB, 1 MiB,
    // 4 MiB + 64 KiB, 64 MiB): a frame under 4 KiB claims at most 64 KiB
    // whatever its limit, and no frame of those protocols claims more than
    // its limit (plus 63 KiB for the peer frame).
    let need = limit.min(body.len().saturating_mul(16));
    macro_rules! decode_in_tiers {
        ($($tier:expr),+) => {
            $(if need <= $tier {
                bincode::serde::decode_from_slice(body, config().with_limit::<{ $tier }>())
            } else)+ {
                bincode::serde::decode_from_slice(body, config().with_limit::<{ 256 << 20 }>())
            }
        };
    }
    let res = decode_in_tiers!(64 << 10, 1 << 20, (4 << 20) + (64 << 10), 16 << 20, 64 << 20);
    let (msg, used) = res.map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Malformed(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(msg)
}

/// The variant index an encoded enum starts with (`Ok` = 0, `Err` = 1 for a
/// `Result`), read without decoding the rest of the body.
pub fn leading_variant(body: &[u8]) -> Option<u32> {
    bincode::decode_from_slice::<u32, _>(body, config())
        .ok()
        .map(|(v, _)| v)
}

/// Writes frames to a blocking writer (a file), one reused buffer for all:
/// the stored counterpart of [`write_frame`], for values streamed to disk
/// a record at a time, such as snapshots.
pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
    limit: usize,
}

impl<W: std::io::Write> FrameWriter<W> {
    /// Frames of more than `limit` bytes are refused (the reader would
    /// refuse them: better to fail writing than to write what cannot be
    /// read back).
    pub fn new(inner: W, limit: usize) -> Self {
        FrameWriter {
            inner,
            buf: Vec::new(),
            limit,
        }
    }

    /// Writes one frame (prefix and body).
    pub fn write<T: Serialize>(&mut self, msg: &T) -> Result<(), CodecError> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; PREFIX]);
        bincode::serde::encode_into_std_write(msg, &mut self.buf, config())
            .map_err(|e| CodecError::Encode(e.to_string()))?;
        let len = self.buf.len() - PREFIX;
        if len > self.limit {
            return Err(CodecError::TooLarge { len, limit: self.limit });
        }
        self.buf[..PREFIX].copy_from_slice(&(len as u32).to_le_bytes());
        self.inner.write_all(&self.buf)?;
        Ok(())
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Reads frames from a blocking reader, each checked against a limit
/// before its buffer grows (the buffer is reused, so reading a stream of
/// frames holds at most one frame).
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: std::io::Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader { inner, buf: Vec::new() }
    }

    /// Reads and decodes one frame of at most `limit` bytes.
    pub fn read<T: DeserializeOwned>(&mut self, limit: usize) -> Result<T, CodecError> {
        let mut prefix = [0u8; PREFIX];
        self.fill(&mut prefix)?;
        let len = u32::from_le_bytes(prefix) as usize;
        if len > limit {
            return Err(CodecError::TooLarge { len, limit });
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.resize(len, 0);
        let res = self.fill(&mut buf).and_then(|_| decode(&buf, limit));
        self.buf = buf;
        res
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), CodecError> {
        match self.inner.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(CodecError::Truncated),
            Err(e) => Err(CodecError::Io(e)),
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), CodecError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let buf = encode(msg)?;
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame body, checking the announced length against `limit`
/// before allocating.
pub async fn read_body<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> Result<Vec<u8>, CodecError> {
    let mut prefix = [0u8; PREFIX];
    read_exact(r, &mut prefix).await?;
    let len = u32::from_le_bytes(prefix) as usize;
    if len > limit {
        return Err(CodecError::TooLarge { len, limit });
    }
    let mut body = vec![0u8; len];
    read_exact(r, &mut body).await?;
    Ok(body)
}

/// Reads and decodes one frame.
pub async fn read_frame<R, T>(r: &mut R, limit: usize) -> Result<T, CodecError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let body = read_body(r, limit).await?;
    decode(&body, limit)
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), CodecError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(CodecError::Truncated),
        Err(e) => Err(CodecError::Io(e)),
    }
}

/// Errors of one request/response exchange over a QUIC connection.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Opening the stream failed: the connection is gone.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Sending failed.
    #[error("send failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// Sending or receiving a frame failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// No answer before the deadline.
    #[error("timed out")]
    Timeout,
}

impl From<quinn::ClosedStream> for CallError {
    fn from(e: quinn::ClosedStream) -> Self {
        CallError::Codec(CodecError::Io(e.into()))
    }
}

/// One request/response on a fresh bi-directional stream of `conn`.
pub async fn call<Req, Resp>(conn: &quinn::Connection, req: &Req, limit: usize) -> Result<Resp, CallError>
where
    Req: Serialize,
    Resp: DeserializeOwned,
{
    let frame = encode(req)?;
    call_raw(conn, &frame, limit).await
}

/// Like [`call`] with a request already encoded by [`encode`] (the proxy
/// forwards frames it has checked without decoding them twice).
pub async fn call_raw<Resp: DeserializeOwned>(
    conn: &quinn::Connection,
    frame: &[u8],
    limit: usize,
) -> Result<Resp, CallError> {
    let body = call_raw_body(conn, frame, limit).await?;
    Ok(decode(&body, limit)?)
}

/// Sends an encoded frame and returns the raw body of the answer.
pub async fn call_raw_body(conn: &quinn::Connection, frame: &[u8], limit: usize) -> Result<Vec<u8>, CallError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    match send.write_all(frame).await {
        Ok(()) => send.finish()?,
        // The server stopped reading before taking the whole request
        // (overloaded, or the frame is refused): its answer says why.
        Err(quinn::WriteError::Stopped(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(read_body(&mut recv, limit).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Msg {
        a: u32,
        b: String,
        c: Vec<u8>,
    }

    #[tokio::test]
    async fn round_trip() {
        let m = Msg {
            a: 7,
            b: "x".into(),
            c: vec![1, 2, 3],
        };
        let buf = encode(&m).unwrap();
        let got: Msg = read_frame(&mut &buf[..], 1024).await.unwrap();
        assert_eq!(got, m);
    }

    /// A length over the limit is refused before the body is read or
    /// allocated: the stream here holds only the prefix.
    #[tokio::test]
    async fn oversized_prefix_refused_before_allocation() {
        let prefix = (u32::MAX).to_le_bytes();
        let err = read_frame::<_, Msg>(&mut &prefix[..], 1 << 20).await.unwrap_err();
        assert!(
            matches!(err, CodecError::TooLarge { len, .. } if len == u32::MAX as usize),
            "{err}"
        );
    }

    /// A nested length inside the body (a Vec claiming 2^60 elements) does
    /// not allocate past the frame.
    #[tokio::test]
    async fn hostile_inner_length_is_malformed() {
        let mut body = vec![7u8, 1, b'x'];
        body.push(253); // varint marker: a u64 follows
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        let err = read_frame::<_, Msg>(&mut &frame[..], 1024).await.unwrap_err();
        assert!(matches!(err, CodecError::Malformed(_)), "{err}");
    }

    #[test]
    fn leading_variant_of_results() {
        let ok: Result<Msg, u8> = Ok(Msg {
            a: 1,
            b: "z".into(),
            c: vec![9; 300],
        });
        let err: Result<Msg, u8> = Err(3);
        assert_eq!(leading_variant(&encode_body(&ok).unwrap()), Some(0));
        assert_eq!(leading_variant(&encode_body(&err).unwrap()), Some(1));
        assert_eq!(leading_variant(&[]), None);
    }

    #[tokio::test]
    async fn truncated_and_trailing() {
        let m = Msg {
            a: 1,
            b: "y".into(),
            c: vec![],
        };
        let buf = encode(&m).unwrap();
        let err = read_frame::<_, Msg>(&mut &buf[..buf.len() - 1], 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, CodecError::Truncated), "{err}");
        let mut body = buf[PREFIX..].to_vec();
        body.push(0);
        assert!(matches!(decode::<Msg>(&body, 1024), Err(CodecError::Malformed(_))));
    }
}
