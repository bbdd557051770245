//! Content addressing: a file is cut into fixed-size chunks, each chunk
//! has a BLAKE3 hash, the [`Manifest`] lists them, and the file id is the
//! BLAKE3 hash of the encoded manifest. The tracker stores only ids and
//! metadata; a manifest fetched from a peer is checked against the id
//! before anything in it is believed.

use std::{io::Read, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    codec,
    ids::{check_file_name, FileId, NameError},
    tracker_api::FileMeta,
};

/// Smallest and largest chunk sizes accepted from anyone.
pub const MIN_CHUNK: u32 = 16 << 10;
pub const MAX_CHUNK: u32 = 16 << 20;
/// Largest manifest accepted (bounds chunk count: 4 MiB / 32 = 131,072 chunks).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// What a file is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    pub chunks: Vec<[u8; 32]>,
}

/// Why a manifest or its metadata is refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest does not hash to the file id")]
    WrongId,
    #[error("manifest name: {0}")]
    Name(#[from] NameError),
    #[error("chunk size {0} out of range {MIN_CHUNK}..={MAX_CHUNK}")]
    ChunkSize(u32),
    #[error("manifest lists {got} chunks, a {size}-byte file has {want}")]
    ChunkCount { got: usize, want: u64, size: u64 },
    #[error("manifest: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Number of chunks a file of `size` bytes has.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(chunk_size as u64)
}

impl Manifest {
    /// The encoded form, whose hash is the file id.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self).expect("a manifest always encodes")[codec::PREFIX..].to_vec()
    }

    pub fn id(&self) -> FileId {
        FileId(*blake3::hash(&self.encode()).as_bytes())
    }

    /// Decodes bytes from the network and checks them against `id`.
    pub fn decode_checked(bytes: &[u8], id: FileId) -> Result<Self, ManifestError> {
        if FileId(*blake3::hash(bytes).as_bytes()) != id {
            return Err(ManifestError::WrongId);
        }
        let m: Manifest = codec::decode(bytes, MAX_MANIFEST_BYTES)?;
        // bincode also accepts wider-than-needed integers; such bytes hash
        // to this id but the manifest's own id (of its canonical encoding,
        // under which the node stores and announces it) would differ.
        if m.encode() != bytes {
            return Err(codec::CodecError::Malformed("manifest not in canonical encoding".into()).into());
        }
        m.validate()?;
        Ok(m)
    }

    /// Checks the fields are consistent and the name is a safe file name.
    pub fn validate(&self) -> Result<(), ManifestError> {
        check_file_name(&self.name)?;
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&self.chunk_size) {
            return Err(ManifestError::ChunkSize(self.chunk_size));
        }
        let want = chunk_count(self.size, self.chunk_size);
        if self.chunks.len() as u64 != want {
            return Err(ManifestError::ChunkCount {
                got: self.chunks.len(),
                want,
                size: self.size,
            });
        }
        Ok(())
    }

    /// Length of chunk `i`.
    pub fn chunk_len(&self, i: u32) -> u32 {
        let start = i as u64 * self.chunk_size as u64;
        (self.size - start).min(self.chunk_size as u64) as u32
    }

    pub fn meta(&self) -> FileMeta {
        FileMeta {
            id: self.id(),
            name: self.name.clone(),
            size: self.size,
            chunk_size: self.chunk_size,
            chunk_count: self.chunks.len() as u32,
        }
    }
}

/// Hashes a file in one streaming pass with one reused buffer of
/// `chunk_size` bytes; `progress` is called with the bytes done so far.
pub fn hash_file(
    path: &Path,
    name: String,
    chunk_size: u32,
    mut progress: impl FnMut(u64),
) -> Result<Manifest, ManifestError> {
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
        return Err(ManifestError::ChunkSize(chunk_size));
    }
    check_file_name(&name)?;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; chunk_size as usize];
    let mut chunks = Vec::new();
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match f.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        chunks.push(*blake3::hash(&buf[..filled]).as_bytes());
        size += filled as u64;
        progress(size);
        if filled < buf.len() {
            break;
        }
    }
    Ok(Manifest {
        name,
        size,
        chunk_size,
        chunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trip_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![5u8; 100_000]).unwrap();
        let m = hash_file(&p, "f".into(), MIN_CHUNK, |_| {}).unwrap();
        assert_eq!(m.chunks.len(), 7);
        assert_eq!(m.chunk_len(6), 100_000 - 6 * MIN_CHUNK);
        let bytes = m.encode();
        assert_eq!(Manifest::decode_checked(&bytes, m.id()).unwrap(), m);
        let mut bad = bytes.clone();
        bad[3] ^= 1;
        assert!(matches!(
            Manifest::decode_checked(&bad, m.id()),
            Err(ManifestError::WrongId)
        ));
        let evil = Manifest {
            name: "../../etc/passwd".into(),
            ..m
        };
        assert!(Manifest::decode_checked(&evil.encode(), evil.id()).is_err());
    }
}
