//! Where an item's bytes live on disk, read and written by chunk index:
//! one file (a shared file, a download's part file), or a folder whose
//! files hold the chunks of a folder manifest in tree order (a shared
//! folder, a folder download being built).
//!
//! A folder's files are opened when a chunk of theirs is read or written,
//! and the last few handles are kept, so a folder of ten thousand files
//! holds a handful of descriptors, not ten thousand. The folder's root can
//! move (a finished download's folder is renamed into place) without the
//! readers noticing.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use protocol::content::{Entry, Manifest, Tree};

use crate::store::HaveBits;

/// Handles a folder keeps open.
const OPEN_HANDLES: usize = 8;

/// The bytes of one item.
#[derive(Debug)]
pub enum Data {
    File(File),
    Folder(Folder),
}

/// A folder's files, by the chunks of the manifest they hold.
#[derive(Debug)]
pub struct Folder {
    root: Mutex<PathBuf>,
    writable: bool,
    /// The most recently used handles, by tree entry, newest last.
    open: Mutex<Vec<(usize, Arc<File>)>>,
}

impl Data {
    /// The data of `m` at `path`: the file itself, or the folder. Opened
    /// for reading, or for reading and writing (a download).
    pub fn open(m: &Manifest, path: &Path, writable: bool) -> io::Result<Data> {
        Ok(match &m.tree {
            None => Data::File(OpenOptions::new().read(true).write(writable).open(path)?),
            Some(_) => {
                if !std::fs::metadata(path)?.is_dir() {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a folder"));
                }
                Data::Folder(Folder {
                    root: Mutex::new(path.to_path_buf()),
                    writable,
                    open: Mutex::new(Vec::new()),
                })
            }
        })
    }

    /// Reads chunk `i` of `m` into `buf` (of the chunk's length).
    pub fn read_chunk(&self, m: &Manifest, i: u32, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Data::File(f) => f.read_exact_at(buf, i as u64 * m.chunk_size as u64),
            Data::Folder(d) => {
                let (f, offset) = d.locate(m, i)?;
                f.read_exact_at(buf, offset)
            }
        }
    }

    /// Writes chunk `i` of `m`.
    pub fn write_chunk(&self, m: &Manifest, i: u32, buf: &[u8]) -> io::Result<()> {
        match self {
            Data::File(f) => f.write_all_at(buf, i as u64 * m.chunk_size as u64),
            Data::Folder(d) => {
                let (f, offset) = d.locate(m, i)?;
                f.write_all_at(buf, offset)
            }
        }
    }

    /// Makes what was written durable: the file's data, or (a folder) the
    /// whole file system it is on, in one call rather than one per file.
    pub fn sync(&self) -> io::Result<()> {
        match self {
            Data::File(f) => f.sync_data(),
            Data::Folder(d) => {
                let root = File::open(d.root())?;
                rustix::fs::syncfs(&root).map_err(io::Error::from)
            }
        }
    }

    /// Another handle on the same data (a folder: its own handle cache).
    pub fn try_clone(&self) -> io::Result<Data> {
        Ok(match self {
            Data::File(f) => Data::File(f.try_clone()?),
            Data::Folder(d) => Data::Folder(Folder {
                root: Mutex::new(d.root()),
                writable: d.writable,
                open: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The folder moved (a finished download renamed into place).
    pub fn moved_to(&self, root: &Path) {
        if let Data::Folder(d) = self {
            *d.root.lock().unwrap_or_else(|e| e.into_inner()) = root.to_path_buf();
            d.open.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
}

impl Folder {
    fn root(&self) -> PathBuf {
        self.root.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The file holding chunk `i` and the chunk's offset in it.
    fn locate(&self, m: &Manifest, i: u32) -> io::Result<(Arc<File>, u64)> {
        let tree = m.tree.as_ref().expect("a folder's data has a folder manifest");
        if i as usize >= m.chunks.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no such chunk"));
        }
        let span = tree.span_of(m.chunk_size, i);
        let offset = (i - span.first_chunk) as u64 * m.chunk_size as u64;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = open.iter().position(|(e, _)| *e == span.entry) {
            let hit = open.remove(k);
            let f = hit.1.clone();
            open.push(hit);
            return Ok((f, offset));
        }
        let path = Tree::path_under(&self.root(), tree.entries[span.entry].path());
        let f = Arc::new(open_no_link(&path, self.writable, false)?);
        if open.len() >= OPEN_HANDLES {
            open.remove(0);
        }
        open.push((span.entry, f.clone()));
        Ok((f, offset))
    }
}

/// Whether `--only` patterns select the path `rel` of a folder: a pattern
/// matches the whole path (`*` any characters, `/` included; `?` one
/// character; the rest literally), or one of its parent folders, so a
/// folder's path selects everything in it. No patterns select everything.
pub fn selects(patterns: &[String], rel: &str) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let mut prefixes = rel.match_indices('/').map(|(i, _)| &rel[..i]).chain([rel]);
    prefixes.any(|p| patterns.iter().any(|pat| glob(pat.as_bytes(), p.as_bytes())))
}

/// `*` and `?` matching, iterative with one backtrack point (linear for
/// one `*`, at most quadratic).
fn glob(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// The chunks of the files `patterns` select, or None when they select
/// everything (no patterns, or not a folder).
pub fn wanted_chunks(m: &Manifest, patterns: &[String]) -> Option<HaveBits> {
    let tree = m.tree.as_ref().filter(|_| !patterns.is_empty())?;
    let wanted = HaveBits::new(m.chunks.len() as u32);
    for span in tree.spans(m.chunk_size) {
        if selects(patterns, tree.entries[span.entry].path()) {
            for c in span.first_chunk..span.first_chunk + span.chunks {
                wanted.set(c);
            }
        }
    }
    Some(wanted)
}

/// Creates the tree of `m` under `root` for a download: its folders, and
/// its files at their full size (sparse: holes until written); with
/// `--only` patterns, only the entries they select and the folders
/// holding them. Files that are there already keep their bytes (a
/// resumed download). Only called with a manifest whose tree passed
/// validation, so every path stays under `root`.
pub fn create_tree(m: &Manifest, root: &Path, patterns: &[String]) -> io::Result<()> {
    let Some(tree) = &m.tree else { return Ok(()) };
    std::fs::create_dir_all(root)?;
    let chosen: Vec<&Entry> = tree.entries.iter().filter(|e| selects(patterns, e.path())).collect();
    let mut dirs: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for e in &chosen {
        let p = e.path();
        dirs.extend(p.match_indices('/').map(|(i, _)| &p[..i]));
        if let Entry::Dir { path } = e {
            dirs.insert(path);
        }
    }
    // In byte order a folder comes before what it holds. A folder there
    // already (a resumed download) must be a folder, not a link to one.
    for rel in dirs {
        let path = Tree::path_under(root, rel);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && is_real_dir(&path) => {}
            Err(e) => return Err(e),
        }
    }
    for e in chosen {
        if let Entry::File { path: rel, size } = e {
            let f = open_no_link(&Tree::path_under(root, rel), true, true)?;
            f.set_len(*size)?;
        }
    }
    Ok(())
}

fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Opens a file of a folder, refusing a symbolic link in its place
/// (`O_NOFOLLOW`): a link planted in a folder being built or served
/// cannot make the node write or read elsewhere.
fn open_no_link(path: &Path, write: bool, create: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(write)
        .create(create)
        .truncate(false)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link planted in a folder being built (a resumed download) is not
    /// followed: neither a file's nor a folder's.
    #[test]
    fn links_in_a_folder_being_built_are_refused() {
        use protocol::content::{hash_folder, MIN_CHUNK};
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.bin"), b"hello").unwrap();
        std::fs::write(src.join("sub/b.bin"), b"world").unwrap();
        let m = hash_folder(&src, "x".into(), MIN_CHUNK, false, |_| {}).unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"precious").unwrap();
        let built = d.path().join("built");
        std::fs::create_dir(&built).unwrap();
        std::os::unix::fs::symlink(&outside, built.join("a.bin")).unwrap();
        assert!(create_tree(&m, &built, &[]).is_err());
        assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
        std::fs::remove_file(built.join("a.bin")).unwrap();
        std::fs::remove_dir(built.join("sub")).unwrap();
        std::os::unix::fs::symlink(d.path(), built.join("sub")).unwrap();
        assert!(create_tree(&m, &built, &[]).is_err());
        assert!(!d.path().join("b.bin").exists());
        // Served: a file replaced by a link after sharing is not read.
        std::fs::remove_file(built.join("sub")).unwrap();
        create_tree(&m, &built, &[]).unwrap();
        let data = Data::open(&m, &built, true).unwrap();
        data.write_chunk(&m, 0, b"hello").unwrap();
        std::fs::remove_file(built.join("a.bin")).unwrap();
        std::os::unix::fs::symlink(&outside, built.join("a.bin")).unwrap();
        let fresh = Data::open(&m, &built, false).unwrap();
        let mut buf = [0u8; 5];
        assert!(fresh.read_chunk(&m, 0, &mut buf).is_err());
    }

    #[test]
    fn patterns_select_paths_and_folders() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(selects(&[], "any/thing"));
        assert!(selects(&p(&["*.flac"]), "cd1/01 intro.flac"));
        assert!(!selects(&p(&["*.flac"]), "cd1/cover.jpg"));
        assert!(selects(&p(&["cd1"]), "cd1/cover.jpg"));
        assert!(!selects(&p(&["cd1"]), "cd10/cover.jpg"));
        assert!(selects(&p(&["cd?/*.jpg"]), "cd2/cover.jpg"));
        assert!(selects(&p(&["x", "cd2/*"]), "cd2/a/b"));
        assert!(!selects(&p(&["a*b*c*d*e"]), &"ab".repeat(2000)));
    }
}
