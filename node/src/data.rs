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
        let f = Arc::new(OpenOptions::new().read(true).write(self.writable).open(path)?);
        if open.len() >= OPEN_HANDLES {
            open.remove(0);
        }
        open.push((span.entry, f.clone()));
        Ok((f, offset))
    }
}

/// Creates the tree of `m` under `root` for a download: every folder, and
/// every file at its full size (sparse: holes until written). Files that
/// are there already keep their bytes (a resumed download). Only called
/// with a manifest whose tree passed validation, so every path stays
/// under `root`.
pub fn create_tree(m: &Manifest, root: &Path) -> io::Result<()> {
    let Some(tree) = &m.tree else { return Ok(()) };
    std::fs::create_dir_all(root)?;
    for e in &tree.entries {
        let path = Tree::path_under(root, e.path());
        match e {
            Entry::Dir { .. } => match std::fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
                Err(e) => return Err(e),
            },
            Entry::File { size, .. } => {
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)?;
                f.set_len(*size)?;
            }
        }
    }
    Ok(())
}
