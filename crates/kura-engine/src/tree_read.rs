//! A file item's recovery point as a read-only file system: directories fetched from the
//! vault as a path reaches them, file data chunk by chunk as it is read. Listing, downloads,
//! `files get` and file restores read points of file items through this, exactly as they
//! read the file systems inside disk points.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kura_files::{Entry, EntryKind, RawEntry};
use kura_store::{ChunkId, Codec, Dir, Node, NodeKind, PackWindows, Piece, TreeIndex, Vault};

/// Directories kept decoded for the next lookups.
const CACHED_DIRS: usize = 4096;

pub(crate) struct VaultTree {
    source: Source,
    state: Mutex<State>,
    /// Codecs for file readers, each taken by a reader while it reads and given back after
    /// (making one per file costs more than a small file's read).
    codecs: Arc<Mutex<Vec<Codec>>>,
    pub(crate) chunks: Arc<AtomicU64>,
    pub(crate) bytes: Arc<AtomicU64>,
}

/// Where a tree's chunks are read from.
#[derive(Clone)]
struct Source {
    vault: Vault,
    /// The tree's index: its root, and where each chunk is.
    index: Arc<TreeIndex>,
    /// Pack windows kept for the next chunks, on an object store.
    windows: Option<Arc<PackWindows>>,
}

impl Source {
    /// The chunk `id` of the tree, fetched, checked and decoded.
    fn chunk(&self, id: &ChunkId, codec: &mut Codec) -> kura_store::Result<Vec<u8>> {
        match (&self.windows, self.index.place(id)) {
            (Some(w), Some(Some(at))) => w.get(&self.vault, id, &at, codec),
            _ => self.vault.get_tree_chunk(&self.index, id, codec),
        }
    }
}

struct State {
    codec: Codec,
    dirs: HashMap<Vec<u8>, Arc<Dir>>,
}

fn corrupt(what: &[u8], e: impl std::fmt::Display) -> kura_files::Error {
    kura_files::Error::Corrupt {
        what: String::from_utf8_lossy(what).into_owned(),
        reason: e.to_string(),
    }
}

fn kind(k: NodeKind) -> EntryKind {
    match k {
        NodeKind::File => EntryKind::File,
        NodeKind::Dir => EntryKind::Dir,
        NodeKind::Symlink => EntryKind::Symlink,
        NodeKind::BlockDevice => EntryKind::BlockDevice,
        NodeKind::CharDevice => EntryKind::CharDevice,
        NodeKind::Fifo => EntryKind::Fifo,
        NodeKind::Socket => EntryKind::Socket,
    }
}

fn entry_of(path: Vec<u8>, n: &Node) -> Entry {
    Entry::from_raw(RawEntry {
        path,
        kind: Some(kind(n.kind)),
        size: n.size,
        mode: n.mode,
        uid: n.uid,
        gid: n.gid,
        mtime: n.mtime,
        atime: n.atime,
        target: n.target.as_ref().map(|t| t.0.clone()),
        link_group: (n.kind == NodeKind::File && n.nlink > 1).then_some(n.ino),
        xattrs: n
            .xattrs
            .iter()
            .map(|(k, v)| (k.0.clone(), v.0.clone()))
            .collect(),
        rdev: n.rdev,
    })
}

/// `/a/b` → (`/a`, `b`); `/` has no parent.
fn split(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = path.iter().rposition(|b| *b == b'/')?;
    let name = &path[at + 1..];
    if name.is_empty() {
        return None;
    }
    Some((if at == 0 { b"/" } else { &path[..at] }, name))
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if p != b"/" {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl VaultTree {
    pub(crate) fn new(vault: Vault, index: Arc<TreeIndex>) -> Self {
        // On an object store packed chunks are read a window at a time: one request for
        // many small files instead of one each.
        let windows = (!vault.backend().cheap_stat()).then(|| Arc::new(PackWindows::new(&index)));
        VaultTree {
            state: Mutex::new(State {
                codec: vault.codec(),
                dirs: HashMap::new(),
            }),
            codecs: Arc::default(),
            source: Source {
                vault,
                index,
                windows,
            },
            chunks: Arc::default(),
            bytes: Arc::default(),
        }
    }

    fn fetch_dir(&self, st: &mut State, piece: &Piece) -> kura_files::Result<Arc<Dir>> {
        let plain = self
            .source
            .chunk(&piece.id, &mut st.codec)
            .map_err(|e| corrupt(b"directory", e))?;
        let d = Dir::decode(&format!("directory {}", piece.id.short()), &plain)
            .map_err(|e| corrupt(b"directory", e))?;
        self.chunks.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(u64::from(piece.len), Ordering::Relaxed);
        Ok(Arc::new(d))
    }

    /// The directory at `path`.
    fn dir(&self, path: &[u8]) -> kura_files::Result<Arc<Dir>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.dir_locked(&mut st, path)
    }

    fn dir_locked(&self, st: &mut State, path: &[u8]) -> kura_files::Result<Arc<Dir>> {
        if let Some(d) = st.dirs.get(path) {
            return Ok(d.clone());
        }
        let d = match split(path) {
            None => {
                let root = self.source.index.root;
                self.fetch_dir(st, &root)?
            }
            Some((parent, name)) => {
                let p = self.dir_locked(st, parent)?;
                let node = p.get(name).ok_or_else(|| {
                    kura_files::Error::NotFound(format!(
                        "{}: no such file or directory",
                        String::from_utf8_lossy(path)
                    ))
                })?;
                let piece = match (node.kind, node.tree) {
                    (NodeKind::Dir, Some(t)) => t,
                    _ => {
                        return Err(kura_files::Error::Invalid(format!(
                            "{}: not a directory",
                            String::from_utf8_lossy(path)
                        )));
                    }
                };
                self.fetch_dir(st, &piece)?
            }
        };
        if st.dirs.len() >= CACHED_DIRS {
            st.dirs.clear();
        }
        st.dirs.insert(path.to_vec(), d.clone());
        Ok(d)
    }

    fn node(&self, path: &[u8]) -> kura_files::Result<Node> {
        match split(path) {
            None => {
                let root = self.dir(b"/")?;
                let mut n = root.this.as_deref().cloned().ok_or_else(|| {
                    corrupt(b"/", "the tree's root directory does not describe itself")
                })?;
                n.kind = NodeKind::Dir;
                Ok(n)
            }
            Some((parent, name)) => self.dir(parent)?.get(name).cloned().ok_or_else(|| {
                kura_files::Error::NotFound(format!(
                    "{}: no such file or directory",
                    String::from_utf8_lossy(path)
                ))
            }),
        }
    }
}

impl kura_files::Tree for VaultTree {
    fn entry(&self, path: &[u8]) -> kura_files::Result<Entry> {
        Ok(entry_of(path.to_vec(), &self.node(path)?))
    }

    fn list(&self, path: &[u8]) -> kura_files::Result<Vec<Entry>> {
        let d = self.dir(path)?;
        Ok(d.entries
            .iter()
            .map(|n| entry_of(join(path, &n.name.0), n))
            .collect())
    }

    fn reader(&self, path: &[u8]) -> kura_files::Result<Box<dyn std::io::Read + Send>> {
        let n = self.node(path)?;
        if n.kind != NodeKind::File {
            return Err(kura_files::Error::Invalid(format!(
                "{}: not a regular file",
                String::from_utf8_lossy(path)
            )));
        }
        Ok(Box::new(FileReader {
            codecs: self.codecs.clone(),
            codec: None,
            source: self.source.clone(),
            pieces: n.chunks,
            next: 0,
            buf: Vec::new(),
            pos: 0,
            chunks: self.chunks.clone(),
            bytes: self.bytes.clone(),
        }))
    }

    fn concurrent_reads(&self) -> usize {
        let backend = self.source.vault.backend();
        if backend.cheap_stat() {
            crate::workers() * 2
        } else {
            crate::io_workers(backend.as_ref())
        }
    }
}

/// A file's data, one chunk fetched at a time; zero pieces are never fetched.
struct FileReader {
    source: Source,
    codecs: Arc<Mutex<Vec<Codec>>>,
    /// Taken from `codecs` at the first fetch, given back when the reader is dropped.
    codec: Option<Codec>,
    pieces: Vec<Piece>,
    next: usize,
    buf: Vec<u8>,
    pos: usize,
    chunks: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Drop for FileReader {
    fn drop(&mut self) {
        if let Some(c) = self.codec.take() {
            self.codecs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(c);
        }
    }
}

impl std::io::Read for FileReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(p) = self.pieces.get(self.next).copied() else {
                return Ok(0);
            };
            self.next += 1;
            self.pos = 0;
            self.buf = if p.id.is_zero() {
                vec![0; p.len as usize]
            } else {
                let codec = self.codec.get_or_insert_with(|| {
                    let pooled = self.codecs.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    pooled.unwrap_or_else(|| self.source.vault.codec())
                });
                let d = self
                    .source
                    .chunk(&p.id, codec)
                    .map_err(|e| std::io::Error::other(format!("chunk {}: {e}", p.id.to_hex())))?;
                self.chunks.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                if d.len() != p.len as usize {
                    return Err(std::io::Error::other(format!(
                        "chunk {} holds {} bytes, its file says {}",
                        p.id.to_hex(),
                        d.len(),
                        p.len
                    )));
                }
                d
            };
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
