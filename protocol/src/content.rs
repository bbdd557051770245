//! Content addressing: a file is cut into fixed-size chunks, each chunk
//! has a BLAKE3 hash, the [`Manifest`] lists them, and the file id is the
//! BLAKE3 hash of the encoded manifest. The tracker stores only ids and
//! metadata; a manifest fetched from a peer is checked against the id
//! before anything in it is believed.
//!
//! A folder is one item too: its manifest carries a [`Tree`] (every folder
//! and file by relative path, in byte order, files with their sizes), and
//! its chunk list is each file's chunks in tree order (a chunk never spans
//! two files, so a file's chunks are the same whatever folder holds it).
//! A tree from the network is checked whole ([`Tree::validate`]: path
//! components, depth, length, duplicates also by case, parents listed,
//! entry count) before anything is written.

use std::{
    collections::HashSet,
    io::Read,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use serde::{Deserialize, Serialize};

use crate::{
    codec,
    ids::{check_file_name, ContentId, FileId, NameError},
    tracker_api::FileMeta,
};

/// Smallest and largest chunk sizes accepted from anyone.
pub const MIN_CHUNK: u32 = 16 << 10;
pub const MAX_CHUNK: u32 = 16 << 20;
/// Largest manifest accepted (bounds chunk count: 4 MiB / 32 = 131,072 chunks).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Most entries (files and folders) in a shared folder.
pub const MAX_TREE_ENTRIES: usize = 100_000;
/// Most components in a path inside a shared folder.
pub const MAX_TREE_DEPTH: usize = 32;
/// Longest path inside a shared folder, in bytes.
pub const MAX_TREE_PATH: usize = 1024;

/// What a file or a folder is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The file's name, or the folder's.
    pub name: String,
    /// All bytes (a folder: of all its files).
    pub size: u64,
    pub chunk_size: u32,
    /// A folder: each file's chunks in tree order.
    pub chunks: Vec<[u8; 32]>,
    /// None for a single file.
    pub tree: Option<Tree>,
}

/// One entry of a shared folder, by its path relative to the folder
/// (components joined by `/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    Dir { path: String },
    File { path: String, size: u64 },
}

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path } | Entry::File { path, .. } => path,
        }
    }
}

/// Where one file of a folder is in the folder's chunk list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Index of the entry in the tree.
    pub entry: usize,
    pub first_chunk: u32,
    pub chunks: u32,
    pub size: u64,
}

/// A folder's entries, in strictly increasing byte order of their paths.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tree {
    pub entries: Vec<Entry>,
    /// The files' spans, computed once from `entries` and the chunk size.
    #[serde(skip)]
    spans: OnceLock<(u32, Vec<Span>)>,
}

impl PartialEq for Tree {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for Tree {}

/// Why a folder's tree is refused.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("the folder has more than {MAX_TREE_ENTRIES} entries")]
    TooMany,
    #[error("path {path:?}: {why}")]
    Path { path: String, why: String },
    #[error("path {path:?} is listed twice")]
    Duplicate { path: String },
    #[error("paths {a:?} and {b:?} differ only by case")]
    CaseDuplicate { a: String, b: String },
    #[error("paths are not in byte order at {path:?}")]
    Order { path: String },
    #[error("path {path:?} has no folder {parent:?} listed before it")]
    NoParent { path: String, parent: String },
    #[error("the files' sizes add up to more than {0} bytes")]
    Size(u64),
}

impl Tree {
    pub fn new(mut entries: Vec<Entry>) -> Tree {
        entries.sort_by(|a, b| a.path().cmp(b.path()));
        Tree {
            entries,
            spans: OnceLock::new(),
        }
    }

    /// Every path is safe to create under any folder (no `..`, no absolute
    /// or empty components, no separators or control characters in a name,
    /// within the depth and length limits), listed once (also ignoring
    /// case), after its parent folder, in byte order; at most
    /// [`MAX_TREE_ENTRIES`] entries. Returns the files' total size.
    pub fn validate(&self) -> Result<u64, TreeError> {
        if self.entries.len() > MAX_TREE_ENTRIES {
            return Err(TreeError::TooMany);
        }
        let mut dirs: HashSet<&str> = HashSet::new();
        let mut folded: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
        let mut total = 0u64;
        let mut prev: Option<&str> = None;
        for e in &self.entries {
            let path = e.path();
            let bad = |why: String| TreeError::Path {
                path: path.chars().take(200).collect(),
                why,
            };
            if path.len() > MAX_TREE_PATH {
                return Err(bad(format!("{} bytes, over the limit of {MAX_TREE_PATH}", path.len())));
            }
            let parts: Vec<&str> = path.split('/').collect();
            if parts.len() > MAX_TREE_DEPTH {
                return Err(bad(format!(
                    "{} levels deep, over the limit of {MAX_TREE_DEPTH}",
                    parts.len()
                )));
            }
            for part in &parts {
                if part.is_empty() {
                    return Err(bad("an empty component (absolute path or '//')".into()));
                }
                check_file_name(part).map_err(|e| bad(format!("component {part:?}: {e}")))?;
            }
            match prev {
                Some(p) if p == path => return Err(TreeError::Duplicate { path: path.into() }),
                Some(p) if p > path => return Err(TreeError::Order { path: path.into() }),
                _ => {}
            }
            prev = Some(path);
            if let Some((parent, _)) = path.rsplit_once('/') {
                if !dirs.contains(parent) {
                    return Err(TreeError::NoParent {
                        path: path.into(),
                        parent: parent.into(),
                    });
                }
            }
            if let Some(other) = folded.insert(path.to_lowercase(), path) {
                return Err(TreeError::CaseDuplicate {
                    a: other.into(),
                    b: path.into(),
                });
            }
            match e {
                Entry::Dir { .. } => {
                    dirs.insert(path);
                }
                Entry::File { size, .. } => {
                    total = total.checked_add(*size).ok_or(TreeError::Size(u64::MAX))?;
                }
            }
        }
        Ok(total)
    }

    /// The number of files.
    pub fn files(&self) -> usize {
        self.entries.iter().filter(|e| matches!(e, Entry::File { .. })).count()
    }

    /// Each file's place in the chunk list, in tree order.
    pub fn spans(&self, chunk_size: u32) -> &[Span] {
        let (cs, spans) = self.spans.get_or_init(|| {
            let mut next = 0u32;
            let spans = self
                .entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| match e {
                    Entry::File { size, .. } => {
                        let chunks = chunk_count(*size, chunk_size).min(u32::MAX as u64) as u32;
                        let s = Span {
                            entry: i,
                            first_chunk: next,
                            chunks,
                            size: *size,
                        };
                        next = next.saturating_add(chunks);
                        Some(s)
                    }
                    Entry::Dir { .. } => None,
                })
                .collect();
            (chunk_size, spans)
        });
        debug_assert_eq!(*cs, chunk_size);
        spans
    }

    /// The span holding chunk `i`.
    pub fn span_of(&self, chunk_size: u32, i: u32) -> &Span {
        let spans = self.spans(chunk_size);
        let k = spans.partition_point(|s| s.first_chunk + s.chunks <= i);
        &spans[k]
    }

    /// Chunks the whole folder has.
    pub fn chunk_total(&self, chunk_size: u32) -> u64 {
        self.spans(chunk_size).iter().map(|s| s.chunks as u64).sum()
    }

    /// The relative path of an entry as a path under `root`.
    pub fn path_under(root: &Path, rel: &str) -> PathBuf {
        let mut p = root.to_path_buf();
        p.extend(rel.split('/'));
        p
    }
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
    #[error("folder: {0}")]
    Tree(#[from] TreeError),
    #[error("folder: the files' sizes add up to {files}, the manifest says {size}")]
    TreeSize { files: u64, size: u64 },
    #[error("{path}: {why}")]
    Walk { path: PathBuf, why: String },
    #[error("the manifest would be {0} bytes, over the limit of {MAX_MANIFEST_BYTES} (too many files or chunks: share it in parts)")]
    TooLarge(usize),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Domain tag of [`ContentId`]s, so a content id is never equal to any
/// other hash the protocol makes.
const CONTENT_TAG: &[u8] = b"quorrent content v1\0";

/// The id of one file's content: its size, the chunk size and its chunk
/// hashes, nothing else (no name, no path), so the same bytes cut with the
/// same chunk size have the same content id under any name, alone or
/// inside any folder.
pub fn content_id(size: u64, chunk_size: u32, chunks: &[[u8; 32]]) -> ContentId {
    let mut h = blake3::Hasher::new();
    h.update(CONTENT_TAG);
    h.update(&size.to_le_bytes());
    h.update(&chunk_size.to_le_bytes());
    h.update(&(chunks.len() as u64).to_le_bytes());
    for c in chunks {
        h.update(c);
    }
    ContentId(*h.finalize().as_bytes())
}

/// One file's content inside an item ([`Manifest::contents`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Content {
    pub id: ContentId,
    /// Where its chunks are in the item's chunk list.
    pub first_chunk: u32,
    pub chunks: u32,
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
        let want = match &self.tree {
            None => chunk_count(self.size, self.chunk_size),
            Some(tree) => {
                let files = tree.validate()?;
                if files != self.size {
                    return Err(ManifestError::TreeSize { files, size: self.size });
                }
                tree.chunk_total(self.chunk_size)
            }
        };
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
        let (size, start) = match &self.tree {
            None => (self.size, i as u64 * self.chunk_size as u64),
            Some(t) => {
                let s = t.span_of(self.chunk_size, i);
                (s.size, (i - s.first_chunk) as u64 * self.chunk_size as u64)
            }
        };
        (size - start).min(self.chunk_size as u64) as u32
    }

    /// Bytes held in the chunks `have` says are held.
    pub fn bytes_in(&self, have: impl Fn(u32) -> bool) -> u64 {
        (0..self.chunks.len() as u32)
            .filter(|&c| have(c))
            .map(|c| self.chunk_len(c) as u64)
            .sum()
    }

    /// The content of each file of the item that has at least one chunk
    /// (a single file: the item itself; a folder: each of its non-empty
    /// files, in tree order). Call on a validated manifest.
    pub fn contents(&self) -> Vec<Content> {
        match &self.tree {
            None if self.chunks.is_empty() => Vec::new(),
            None => vec![Content {
                id: content_id(self.size, self.chunk_size, &self.chunks),
                first_chunk: 0,
                chunks: self.chunks.len() as u32,
            }],
            Some(t) => t
                .spans(self.chunk_size)
                .iter()
                .filter(|s| s.chunks > 0)
                .filter_map(|s| {
                    let range = s.first_chunk as usize..(s.first_chunk + s.chunks) as usize;
                    let chunks = self.chunks.get(range)?;
                    Some(Content {
                        id: content_id(s.size, self.chunk_size, chunks),
                        first_chunk: s.first_chunk,
                        chunks: s.chunks,
                    })
                })
                .collect(),
        }
    }

    /// Whether this is a folder.
    pub fn is_folder(&self) -> bool {
        self.tree.is_some()
    }

    pub fn meta(&self) -> FileMeta {
        FileMeta {
            id: self.id(),
            name: self.name.clone(),
            size: self.size,
            chunk_size: self.chunk_size,
            chunk_count: self.chunks.len() as u32,
            files: self.tree.as_ref().map_or(0, |t| t.files() as u32),
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
        tree: None,
    })
}

/// Reads a folder's tree: every folder and regular file under `root`, by
/// relative path. A symbolic link is refused (naming it) unless
/// `follow_links`; then its target is read in its place (a link back up
/// the tree is refused by the depth limit). Names that are not UTF-8 are
/// refused. The tree is checked as a downloader checks it.
pub fn walk_tree(root: &Path, follow_links: bool) -> Result<Tree, ManifestError> {
    let mut entries = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new(), 0usize)];
    while let Some((dir, rel, depth)) = stack.pop() {
        let walk = |why: String| ManifestError::Walk { path: dir.clone(), why };
        if depth >= MAX_TREE_DEPTH {
            return Err(walk(format!("more than {MAX_TREE_DEPTH} levels of folders")));
        }
        for item in std::fs::read_dir(&dir).map_err(|e| walk(e.to_string()))? {
            let item = item.map_err(|e| walk(e.to_string()))?;
            let path = item.path();
            let name = item.file_name().into_string().map_err(|_| ManifestError::Walk {
                path: path.clone(),
                why: "the name is not UTF-8".into(),
            })?;
            let rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let mut kind = item.file_type().map_err(|e| walk(e.to_string()))?;
            if kind.is_symlink() {
                if !follow_links {
                    return Err(ManifestError::Walk {
                        path,
                        why: "a symbolic link (share with --follow-links to read what it points to)".into(),
                    });
                }
                kind = std::fs::metadata(&path)
                    .map_err(|e| ManifestError::Walk {
                        path: path.clone(),
                        why: e.to_string(),
                    })?
                    .file_type();
            }
            if kind.is_dir() {
                entries.push(Entry::Dir { path: rel.clone() });
                stack.push((path, rel, depth + 1));
            } else if kind.is_file() {
                let size = std::fs::metadata(&path)
                    .map_err(|e| ManifestError::Walk {
                        path: path.clone(),
                        why: e.to_string(),
                    })?
                    .len();
                entries.push(Entry::File { path: rel, size });
            } else {
                return Err(ManifestError::Walk {
                    path,
                    why: "neither a regular file nor a folder".into(),
                });
            }
            if entries.len() > MAX_TREE_ENTRIES {
                return Err(TreeError::TooMany.into());
            }
        }
    }
    let tree = Tree::new(entries);
    tree.validate()?;
    Ok(tree)
}

/// Hashes a folder: its tree ([`walk_tree`]) and each file's chunks in
/// tree order, with one reused buffer; `progress` gets the bytes done.
pub fn hash_folder(
    root: &Path,
    name: String,
    chunk_size: u32,
    follow_links: bool,
    progress: impl FnMut(u64),
) -> Result<Manifest, ManifestError> {
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
        return Err(ManifestError::ChunkSize(chunk_size));
    }
    check_file_name(&name)?;
    hash_tree(root, name, chunk_size, walk_tree(root, follow_links)?, progress)
}

/// Hashes the files of `tree` (read by [`walk_tree`]) under `root`.
pub fn hash_tree(
    root: &Path,
    name: String,
    chunk_size: u32,
    tree: Tree,
    mut progress: impl FnMut(u64),
) -> Result<Manifest, ManifestError> {
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
        return Err(ManifestError::ChunkSize(chunk_size));
    }
    check_file_name(&name)?;
    let mut buf = vec![0u8; chunk_size as usize];
    let mut chunks = Vec::new();
    let mut done = 0u64;
    for e in &tree.entries {
        let Entry::File { path: rel, size } = e else { continue };
        let path = Tree::path_under(root, rel);
        let err = |why: String| ManifestError::Walk {
            path: path.clone(),
            why,
        };
        let mut f = std::fs::File::open(&path).map_err(|e| err(e.to_string()))?;
        let mut left = *size;
        while left > 0 {
            let n = left.min(chunk_size as u64) as usize;
            f.read_exact(&mut buf[..n])
                .map_err(|e| err(format!("changed while being read ({e})")))?;
            chunks.push(*blake3::hash(&buf[..n]).as_bytes());
            left -= n as u64;
            done += n as u64;
            progress(done);
        }
    }
    let size = tree.validate()?;
    let m = Manifest {
        name,
        size,
        chunk_size,
        chunks,
        tree: Some(tree),
    };
    m.validate()?;
    let len = m.encode().len();
    if len > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge(len));
    }
    Ok(m)
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
            ..m.clone()
        };
        assert!(Manifest::decode_checked(&evil.encode(), evil.id()).is_err());
    }

    fn folder(entries: Vec<Entry>) -> Manifest {
        let tree = Tree::new(entries);
        let size = tree.validate().unwrap_or(0);
        let chunks = vec![[1u8; 32]; tree.chunk_total(MIN_CHUNK) as usize];
        Manifest {
            name: "album".into(),
            size,
            chunk_size: MIN_CHUNK,
            chunks,
            tree: Some(tree),
        }
    }

    fn file(path: &str, size: u64) -> Entry {
        Entry::File {
            path: path.into(),
            size,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry::Dir { path: path.into() }
    }

    #[test]
    fn folder_hashes_keep_empty_folders_and_files() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("album");
        std::fs::create_dir_all(root.join("cd1/empty")).unwrap();
        std::fs::write(root.join("cd1/a.bin"), vec![7u8; 40_000]).unwrap();
        std::fs::write(root.join("zero"), b"").unwrap();
        std::fs::write(root.join("b.txt"), b"hello").unwrap();
        let m = hash_folder(&root, "album".into(), MIN_CHUNK, false, |_| {}).unwrap();
        let paths: Vec<&str> = m.tree.as_ref().unwrap().entries.iter().map(|e| e.path()).collect();
        assert_eq!(paths, ["b.txt", "cd1", "cd1/a.bin", "cd1/empty", "zero"]);
        assert_eq!(m.size, 40_005);
        // b.txt: 1 chunk; a.bin: 3 chunks (16 KiB each); zero: none.
        assert_eq!(m.chunks.len(), 4);
        assert_eq!(m.chunk_len(0), 5);
        assert_eq!(m.chunk_len(1), MIN_CHUNK);
        assert_eq!(m.chunk_len(3), 40_000 - 2 * MIN_CHUNK);
        assert_eq!(m.chunks[1], *blake3::hash(&[7u8; MIN_CHUNK as usize]).as_bytes());
        let bytes = m.encode();
        assert_eq!(Manifest::decode_checked(&bytes, m.id()).unwrap(), m);
        assert_eq!(m.meta().files, 3);
        // A link is refused unless followed.
        std::os::unix::fs::symlink(root.join("b.txt"), root.join("link")).unwrap();
        let e = hash_folder(&root, "album".into(), MIN_CHUNK, false, |_| {}).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let m = hash_folder(&root, "album".into(), MIN_CHUNK, true, |_| {}).unwrap();
        assert_eq!(m.size, 40_010);
    }

    #[test]
    fn content_ids_ignore_names_and_folders() {
        let d = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(d.path().join("song.flac"), &bytes).unwrap();
        let root = d.path().join("album");
        std::fs::create_dir_all(root.join("cd1")).unwrap();
        std::fs::write(root.join("a.txt"), b"hello").unwrap();
        std::fs::write(root.join("cd1/track.flac"), &bytes).unwrap();
        std::fs::write(root.join("empty"), b"").unwrap();
        let one = hash_file(&d.path().join("song.flac"), "song.flac".into(), MIN_CHUNK, |_| {}).unwrap();
        let other = hash_file(&d.path().join("song.flac"), "renamed.flac".into(), MIN_CHUNK, |_| {}).unwrap();
        assert_ne!(one.id(), other.id(), "names make items");
        assert_eq!(one.contents(), other.contents(), "the same bytes make one content");
        assert_eq!(one.contents().len(), 1);
        assert_eq!((one.contents()[0].first_chunk, one.contents()[0].chunks), (0, 7));
        let album = hash_folder(&root, "album".into(), MIN_CHUNK, false, |_| {}).unwrap();
        let c = album.contents();
        // a.txt and cd1/track.flac; the empty file has no content.
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].id, one.contents()[0].id);
        assert_eq!((c[1].first_chunk, c[1].chunks), (1, 7));
        assert_eq!(album.chunks[1..8], one.chunks[..]);
        // Another chunk size, another content; so is another length.
        let big = hash_file(&d.path().join("song.flac"), "song.flac".into(), 2 * MIN_CHUNK, |_| {}).unwrap();
        assert_ne!(big.contents()[0].id, one.contents()[0].id);
        let mut short = one.clone();
        short.size -= 1;
        assert_ne!(short.contents()[0].id, one.contents()[0].id);
        // An empty single file has none.
        std::fs::write(d.path().join("zero"), b"").unwrap();
        let zero = hash_file(&d.path().join("zero"), "zero".into(), MIN_CHUNK, |_| {}).unwrap();
        assert!(zero.contents().is_empty());
    }

    #[test]
    fn hostile_trees_are_refused_naming_the_problem() {
        let deep: String = (0..MAX_TREE_DEPTH + 1).map(|_| "d").collect::<Vec<_>>().join("/");
        let mut deep_dirs: Vec<Entry> = (1..=MAX_TREE_DEPTH + 1)
            .map(|n| dir(&(0..n).map(|_| "d").collect::<Vec<_>>().join("/")))
            .collect();
        deep_dirs.push(file(&format!("{deep}/f"), 1));
        let many: Vec<Entry> = (0..MAX_TREE_ENTRIES + 1)
            .map(|i| file(&format!("f{i:06}"), 0))
            .collect();
        let cases: Vec<(Vec<Entry>, &str)> = vec![
            (vec![file("../etc/passwd", 1)], "relative path component"),
            (vec![file("a/../../x", 1), dir("a")], "relative path component"),
            (vec![file("/etc/passwd", 1)], "empty component"),
            (vec![dir("a"), file("a//b", 1)], "empty component"),
            (vec![file(&"n".repeat(300), 1)], "over the limit of 255"),
            (vec![file("a\\b", 1)], "path separator"),
            (vec![file("a\nb", 1)], "control character"),
            (deep_dirs, "levels deep"),
            (vec![file("x", 1), file("x", 2)], "listed twice"),
            (vec![dir("x"), file("x", 2)], "listed twice"),
            (vec![file("Readme", 1), file("README", 2)], "differ only by case"),
            (vec![file("a/b", 1)], "no folder \"a\""),
            (many, "more than 100000 entries"),
        ];
        for (entries, want) in cases {
            let m = folder(entries);
            let e = Manifest::decode_checked(&m.encode(), m.id()).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
        // Out of order (as a peer could send it, bypassing Tree::new).
        let mut m = folder(vec![file("a", 1), file("b", 1)]);
        m.tree.as_mut().unwrap().entries.reverse();
        let e = Manifest::decode_checked(&m.encode(), m.id()).unwrap_err().to_string();
        assert!(e.contains("byte order"), "{e}");
        // Sizes that do not add up.
        let mut m = folder(vec![file("a", 1)]);
        m.size = 2;
        let e = Manifest::decode_checked(&m.encode(), m.id()).unwrap_err().to_string();
        assert!(e.contains("add up to 1"), "{e}");
        // Too long a path.
        let long: Vec<Entry> = {
            let mut v = Vec::new();
            let mut p = String::new();
            for _ in 0..6 {
                if !p.is_empty() {
                    p.push('/');
                }
                p.push_str(&"x".repeat(200));
                v.push(dir(&p));
            }
            v
        };
        let m = folder(long);
        let e = Manifest::decode_checked(&m.encode(), m.id()).unwrap_err().to_string();
        assert!(e.contains("over the limit of 1024"), "{e}");
    }
}
