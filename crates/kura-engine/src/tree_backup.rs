//! Backup of a file tree: walk it, skip the files the previous point already has, cut the
//! others into content-defined chunks, and store every directory as a chunk.
//!
//! ```text
//! walker: directory by directory, sorted by name; each file compared with the previous
//!         point's entry of the same path (size, mtime, ctime, inode): unchanged → its chunks
//!         are reused without reading; otherwise it is opened (O_NOFOLLOW, checked inode)
//!         and handed to a worker ─┐
//! workers: FastCDC → zero? → keyed BLAKE3 → known? skip : zstd → AEAD → put ◄┘
//! then:    directories bottom-up as JSON chunks; the tree index lists every chunk
//! ```
//!
//! The previous point's directories are the files cache: they hold each file's size, times,
//! inode and chunks, and they are read one directory at a time as the walk reaches it, so
//! nothing needs keeping beside the vault. Memory holds the new tree's entries (about
//! 200 bytes per file) and one file's chunk per worker.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::bounded;
use kura_source::TreeSource;
use kura_source::tree::{EntryStat, EntryType, SourceDir, xattrs_of};
use kura_store::tree::{DIR_VERSION, Name};
use kura_store::{ChunkId, Dir, Node, NodeKind, Piece, RpStats, TreeIndex, Vault, is_zero};

use crate::backup::Reuse;
use crate::{Error, ErrorKind, Progress, Result, workers};

/// Deepest nesting the walk follows (deeper directories are skipped with a warning).
const MAX_DEPTH: usize = 1024;

/// What backing a tree up gave.
pub(crate) struct TreeOutcome {
    pub index: TreeIndex,
    pub stats: RpStats,
    pub healed: Vec<ChunkId>,
    /// Entries left out because they could not be read, each with why.
    pub warnings: Vec<String>,
    /// Files whose chunks came from the previous point without reading them.
    pub unchanged_files: u64,
    /// Files read.
    pub read_files: u64,
}

/// The content-defined chunk sizes for a vault: an average of a quarter of its chunk size,
/// between a sixteenth and the whole (1 MiB in 256 KiB..4 MiB by default).
fn cdc_sizes(chunk_size: u32) -> (u32, u32, u32) {
    let max = chunk_size.clamp(1024, 16 << 20);
    let avg = (max / 4).clamp(256, 4 << 20);
    let min = (max / 16).clamp(64, 1 << 20);
    (min, avg, max)
}

struct FileJob {
    slot: usize,
    file: std::fs::File,
    /// Its size when listed.
    size: u64,
    path: String,
}

/// A directory whose entries are known, waiting for its files' chunks and its
/// subdirectories' chunks.
struct Pending {
    nodes: Vec<Node>,
    /// (entry, pending directory) of each subdirectory.
    subdirs: Vec<(usize, usize)>,
    /// (entry, file job) of each file being read.
    files: Vec<(usize, usize)>,
}

struct Walker<'a> {
    vault: &'a Vault,
    src: &'a TreeSource,
    reuse: &'a Reuse<'a>,
    progress: &'a dyn Progress,
    codec: kura_store::Codec,
    dirs: Vec<Pending>,
    jobs: crossbeam_channel::Sender<FileJob>,
    next_slot: usize,
    /// Files with several links already seen: inode → file job.
    links: HashMap<u64, usize>,
    warnings: Vec<String>,
    unchanged_files: u64,
    failed: &'a AtomicBool,
}

fn kind_of(t: EntryType) -> NodeKind {
    match t {
        EntryType::File => NodeKind::File,
        EntryType::Dir => NodeKind::Dir,
        EntryType::Symlink => NodeKind::Symlink,
        EntryType::BlockDevice => NodeKind::BlockDevice,
        EntryType::CharDevice => NodeKind::CharDevice,
        EntryType::Fifo => NodeKind::Fifo,
        EntryType::Socket => NodeKind::Socket,
    }
}

fn node_of(name: &[u8], st: &EntryStat) -> Node {
    Node {
        name: Name(name.to_vec()),
        kind: kind_of(st.kind),
        mode: st.mode,
        uid: st.uid,
        gid: st.gid,
        size: if st.kind == EntryType::Symlink {
            st.size
        } else {
            0
        },
        mtime: st.mtime,
        // Access times are not kept (as Borg does by default): they change whenever anyone
        // reads, which would make every directory new at every backup. A restore sets the
        // modification time.
        atime: st.mtime,
        ctime: st.ctime,
        ino: st.ino,
        nlink: st.nlink,
        rdev: if matches!(st.kind, EntryType::BlockDevice | EntryType::CharDevice) {
            st.rdev
        } else {
            0
        },
        chunks: Vec::new(),
        tree: None,
        target: None,
        xattrs: Vec::new(),
    }
}

fn xattrs(list: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Name, Name)> {
    list.into_iter().map(|(n, v)| (Name(n), Name(v))).collect()
}

impl Walker<'_> {
    fn skip(&mut self, path: &std::path::Path, why: impl std::fmt::Display) {
        self.warnings
            .push(format!("{}: not backed up: {why}", path.display()));
    }

    /// The previous point's directory under `node`, when it was one.
    fn previous_dir(&mut self, prev: Option<&Dir>, name: &[u8]) -> Option<Dir> {
        let node = prev?.get(name)?;
        let piece = node.tree.filter(|_| node.kind == NodeKind::Dir)?;
        // Unreadable: only the cache is lost, and the directory is read in full.
        self.vault.get_dir(&piece, &mut self.codec).ok()
    }

    /// The previous point's chunks of this file, when it is unchanged since (size, times
    /// and inode equal) and every chunk can still be reused.
    fn unchanged(&self, prev: Option<&Dir>, name: &[u8], st: &EntryStat) -> Result<Option<Node>> {
        let Some(p) = prev.and_then(|d| d.get(name)) else {
            return Ok(None);
        };
        if p.kind != NodeKind::File
            || p.size != st.size
            || p.mtime != st.mtime
            || p.ctime != st.ctime
            || p.ino != st.ino
        {
            return Ok(None);
        }
        for piece in &p.chunks {
            if !piece.id.is_zero() && !self.reuse.still_there(self.vault, &piece.id)? {
                return Ok(None); // read it again: that heals it
            }
        }
        Ok(Some(p.clone()))
    }

    /// Lists `dir` and everything under it; returns its pending directory.
    fn walk(
        &mut self,
        dir: &SourceDir,
        prev: Option<&Dir>,
        rel: &[u8],
        depth: usize,
    ) -> Result<usize> {
        let me = self.dirs.len();
        self.dirs.push(Pending {
            nodes: Vec::new(),
            subdirs: Vec::new(),
            files: Vec::new(),
        });
        let entries = match dir.entries() {
            Ok(e) => e,
            Err(e) => {
                self.skip(dir.path(), format!("its entries cannot be listed: {e}"));
                return Ok(me);
            }
        };
        for (name, st) in entries {
            crate::progress::check_cancel(self.progress)?;
            if self.failed.load(Ordering::SeqCst) {
                return Ok(me);
            }
            let mut child_rel = rel.to_vec();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(&name);
            if self.src.excluded(&child_rel) {
                continue;
            }
            let path = || dir.path().join(String::from_utf8_lossy(&name).as_ref());
            let mut node = node_of(&name, &st);
            match st.kind {
                EntryType::Dir => {
                    if depth >= MAX_DEPTH {
                        self.skip(
                            &path(),
                            format!("nested deeper than {MAX_DEPTH} directories"),
                        );
                        continue;
                    }
                    let sub = match dir.open_dir(&name, &st) {
                        Ok(s) => s,
                        Err(e) => {
                            self.skip(&path(), e);
                            continue;
                        }
                    };
                    let at = self.dirs[me].nodes.len();
                    let child = match sub {
                        Some(sub) => {
                            node.xattrs = xattrs(sub.xattrs());
                            let prev_sub = self.previous_dir(prev, &name);
                            self.walk(&sub, prev_sub.as_ref(), &child_rel, depth + 1)?
                        }
                        // A mount point: kept as an empty directory, its contents are
                        // another file system's.
                        None => {
                            self.dirs.push(Pending {
                                nodes: Vec::new(),
                                subdirs: Vec::new(),
                                files: Vec::new(),
                            });
                            self.dirs.len() - 1
                        }
                    };
                    self.dirs[me].nodes.push(node);
                    self.dirs[me].subdirs.push((at, child));
                }
                EntryType::File => {
                    if let Some(same) = self.unchanged(prev, &name, &st)? {
                        self.unchanged_files += 1;
                        self.progress.advance(same.size);
                        node.size = same.size;
                        node.chunks = same.chunks;
                        node.xattrs = same.xattrs;
                        self.dirs[me].nodes.push(node);
                        continue;
                    }
                    let at = self.dirs[me].nodes.len();
                    if st.nlink > 1
                        && let Some(&slot) = self.links.get(&st.ino)
                    {
                        self.dirs[me].nodes.push(node);
                        self.dirs[me].files.push((at, slot));
                        continue;
                    }
                    let file = match dir.open_file(&name, &st) {
                        Ok(f) => f,
                        Err(e) => {
                            self.skip(&path(), e);
                            continue;
                        }
                    };
                    node.xattrs = xattrs(xattrs_of(&file));
                    let slot = self.next_slot;
                    self.next_slot += 1;
                    if st.nlink > 1 {
                        self.links.insert(st.ino, slot);
                    }
                    self.dirs[me].nodes.push(node);
                    self.dirs[me].files.push((at, slot));
                    let job = FileJob {
                        slot,
                        file,
                        size: st.size,
                        path: path().display().to_string(),
                    };
                    if self.jobs.send(job).is_err() {
                        return Ok(me);
                    }
                }
                EntryType::Symlink => match dir.read_link(&name) {
                    Ok(t) => {
                        node.size = t.len() as u64;
                        node.target = Some(Name(t));
                        self.dirs[me].nodes.push(node);
                    }
                    Err(e) => self.skip(&path(), e),
                },
                _ => self.dirs[me].nodes.push(node),
            }
        }
        Ok(me)
    }
}

/// What a worker made of one file: its pieces, or why it could not be read.
type FileResult = std::result::Result<Vec<Piece>, String>;

#[derive(Default)]
struct Counters {
    read_bytes: AtomicU64,
    new_chunks: AtomicU64,
    new_stored: AtomicU64,
    new_plain: AtomicU64,
}

/// Reads one file into chunks, storing the new ones.
#[allow(clippy::too_many_arguments)]
fn chunk_file(
    vault: &Vault,
    codec: &mut kura_store::Codec,
    reuse: &Reuse<'_>,
    job: &mut FileJob,
    sizes: (u32, u32, u32),
    counters: &Counters,
    healed: &Mutex<Vec<ChunkId>>,
    progress: &dyn Progress,
) -> Result<FileResult> {
    let (min, avg, max) = sizes;
    let mut pieces = Vec::new();
    // One chunk of the file: hashed, stored unless known, recorded.
    let mut store = |data: &[u8]| -> Result<()> {
        crate::progress::check_cancel(progress)?;
        counters
            .read_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let id = if is_zero(data) {
            ChunkId::ZERO
        } else {
            codec.chunk_id(data)
        };
        if !id.is_zero()
            && let Some(healing) = reuse.decide(vault, &id)?
        {
            let stored = codec.encode_chunk(&id, data)?;
            counters
                .new_stored
                .fetch_add(stored.len() as u64, Ordering::Relaxed);
            vault.put_chunk(&id, stored)?;
            counters.new_chunks.fetch_add(1, Ordering::Relaxed);
            counters
                .new_plain
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            if healing {
                healed.lock().unwrap_or_else(|e| e.into_inner()).push(id);
            }
        }
        progress.advance(data.len() as u64);
        pieces.push(Piece {
            id,
            len: data.len() as u32,
        });
        Ok(())
    };
    let unreadable =
        |e: &dyn std::fmt::Display| Ok(Err(format!("{}: not backed up: {e}", job.path)));
    if job.size <= u64::from(max) {
        // A file that fits in one chunk's room (most files of a tree) is read at once and
        // cut in memory; a larger one streams through the chunker's own buffer.
        let mut whole = Vec::with_capacity(job.size as usize + 1);
        if let Err(e) = std::io::Read::read_to_end(&mut job.file, &mut whole) {
            return unreadable(&e);
        }
        if whole.len() as u64 <= u64::from(min) {
            if !whole.is_empty() {
                store(&whole)?;
            }
        } else {
            for c in fastcdc::v2020::FastCDC::new(&whole, min, avg, max) {
                store(&whole[c.offset..c.offset + c.length])?;
            }
        }
    } else {
        for c in fastcdc::v2020::StreamCDC::new(&mut job.file, min, avg, max) {
            match c {
                Ok(c) => store(&c.data)?,
                Err(e) => return unreadable(&e),
            }
        }
    }
    // A file still growing is kept as far as it was read (crash-consistent, like the rest
    // of a live tree).
    Ok(Ok(pieces))
}

/// Backs the tree up; `previous` is the previous point's root directory (the files cache).
pub(crate) fn backup_tree(
    vault: &Vault,
    src: &TreeSource,
    previous: Option<Piece>,
    reuse: &Reuse<'_>,
    progress: &dyn Progress,
    estimate: u64,
) -> Result<TreeOutcome> {
    let sizes = cdc_sizes(vault.config().chunk_size);
    let root = src.open_root()?;
    let root_node = {
        let name = src
            .root()
            .file_name()
            .map(|n| n.as_encoded_bytes().to_vec())
            .unwrap_or_else(|| b"/".to_vec());
        let mut n = node_of(&name, &root.stat());
        n.xattrs = xattrs(root.xattrs());
        n
    };
    let prev_root = match previous {
        Some(p) => vault.get_dir(&p, &mut vault.codec()).ok(),
        None => None,
    };
    // More workers than cores: each stored chunk ends in an fsync (the backend's atomic
    // put), and many small files make that the wait, not the CPU.
    let n_workers = (workers() * 4).clamp(8, 32);
    let (tx, rx) = bounded::<FileJob>(n_workers * 4);
    let counters = Counters::default();
    let healed = Mutex::new(Vec::new());
    let results: Mutex<HashMap<usize, FileResult>> = Mutex::new(HashMap::new());
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        failed.store(true, Ordering::SeqCst);
        let mut slot = first_error.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
    };
    progress.start(&format!("backup files {}", src.root().display()), estimate);
    let walked = std::thread::scope(|s| {
        for _ in 0..n_workers {
            let rx = rx.clone();
            let (counters, healed, results, failed, fail) =
                (&counters, &healed, &results, &failed, &fail);
            s.spawn(move || {
                let mut codec = vault.codec();
                for mut job in rx {
                    if failed.load(Ordering::SeqCst) {
                        continue;
                    }
                    match chunk_file(
                        vault, &mut codec, reuse, &mut job, sizes, counters, healed, progress,
                    ) {
                        Ok(r) => {
                            results
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(job.slot, r);
                        }
                        Err(e) => fail(e),
                    }
                }
            });
        }
        drop(rx);
        // The walk recurses once per level: its own thread, with room for deep trees.
        let walker = std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn_scoped(s, || {
                let mut w = Walker {
                    vault,
                    src,
                    reuse,
                    progress,
                    codec: vault.codec(),
                    dirs: Vec::new(),
                    jobs: tx,
                    next_slot: 0,
                    links: HashMap::new(),
                    warnings: Vec::new(),
                    unchanged_files: 0,
                    failed: &failed,
                };
                let r = w.walk(&root, prev_root.as_ref(), b"", 0);
                drop(w.jobs);
                r.map(|_| (w.dirs, w.warnings, w.unchanged_files, w.next_slot))
            })
            .map_err(|e| Error::new(ErrorKind::Other, format!("starting the walk: {e}")));
        match walker {
            Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            Err(e) => Err(e),
        }
    });
    progress.finish();
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let (mut dirs, mut warnings, unchanged_files, read_files) = walked?;
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());

    // Directories bottom-up: a directory's pending index is above its parent's.
    let mut referenced: HashSet<ChunkId> = HashSet::new();
    let mut dir_pieces: Vec<Option<Piece>> = vec![None; dirs.len()];
    let mut codec = vault.codec();
    let mut stats = RpStats::default();
    let (mut files, mut bytes) = (0u64, 0u64);
    for i in (0..dirs.len()).rev() {
        let pending = std::mem::replace(
            &mut dirs[i],
            Pending {
                nodes: Vec::new(),
                subdirs: Vec::new(),
                files: Vec::new(),
            },
        );
        let mut nodes: Vec<Option<Node>> = pending.nodes.into_iter().map(Some).collect();
        for (at, slot) in pending.files {
            let node = nodes[at].as_mut().expect("each entry once");
            match results.get(&slot) {
                Some(Ok(pieces)) => {
                    node.size = pieces.iter().map(|p| u64::from(p.len)).sum();
                    node.chunks = pieces.clone();
                }
                Some(Err(why)) => {
                    warnings.push(why.clone());
                    nodes[at] = None;
                }
                None => nodes[at] = None,
            }
        }
        for (at, child) in pending.subdirs {
            let node = nodes[at].as_mut().expect("each entry once");
            node.tree = dir_pieces[child];
        }
        let nodes: Vec<Node> = nodes.into_iter().flatten().collect();
        for n in &nodes {
            if n.kind == NodeKind::File {
                files += 1;
                bytes += n.size;
            }
            referenced.extend(n.chunks.iter().map(|p| p.id).filter(|c| !c.is_zero()));
        }
        let dir = Dir {
            kura_tree: DIR_VERSION,
            entries: nodes,
            this: (i == 0).then(|| Box::new(root_node.clone())),
        };
        let plain = dir.encode();
        let id = codec.chunk_id(&plain);
        if let Some(healing) = reuse.decide(vault, &id)? {
            let stored = codec.encode_chunk(&id, &plain)?;
            stats.new_stored_bytes += stored.len() as u64;
            vault.put_chunk(&id, stored)?;
            stats.new_chunks += 1;
            stats.new_plain_bytes += plain.len() as u64;
            if healing {
                healed.lock().unwrap_or_else(|e| e.into_inner()).push(id);
            }
        }
        referenced.insert(id);
        dir_pieces[i] = Some(Piece {
            id,
            len: plain.len() as u32,
        });
    }
    results.clear();
    let root = dir_pieces
        .first()
        .copied()
        .flatten()
        .ok_or_else(|| Error::new(ErrorKind::Other, "the tree's root was not walked"))?;
    let mut chunks: Vec<ChunkId> = referenced.into_iter().collect();
    chunks.sort();
    stats.read_bytes = counters.read_bytes.load(Ordering::Relaxed);
    stats.new_chunks += counters.new_chunks.load(Ordering::Relaxed);
    stats.new_stored_bytes += counters.new_stored.load(Ordering::Relaxed);
    stats.new_plain_bytes += counters.new_plain.load(Ordering::Relaxed);
    stats.used_bytes = Some(bytes);
    Ok(TreeOutcome {
        index: TreeIndex {
            root,
            files,
            dirs: dirs.len() as u64,
            bytes,
            chunks,
        },
        stats,
        healed: healed.into_inner().unwrap_or_else(|e| e.into_inner()),
        warnings,
        unchanged_files,
        read_files: read_files as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_follow_the_vault_within_fastcdc_limits() {
        assert_eq!(cdc_sizes(4 << 20), (256 << 10, 1 << 20, 4 << 20));
        let (min, avg, max) = cdc_sizes(64 << 10);
        assert!(min >= 64 && min < avg && avg < max && max == 64 << 10);
    }
}
