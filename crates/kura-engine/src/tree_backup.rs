//! Backup of a file tree: walk it, skip the files the previous point already has, cut the
//! others into content-defined chunks, and store every directory as a chunk.
//!
//! ```text
//! walker: directory by directory, sorted by name; each file compared with the previous
//!         point's entry of the same path (size, mtime, ctime, inode): unchanged → its chunks
//!         are reused without reading; otherwise it is opened (O_NOFOLLOW, checked inode)
//!         and handed to a worker ─┐
//! workers: FastCDC → zero? → keyed BLAKE3 → known? skip : zstd → AEAD → put ◄┘
//!          a directory is written (a JSON chunk) by whoever delivers its last file or
//!          subdirectory, so the tree is written bottom-up while the walk goes on
//! ```
//!
//! The previous point's directories are the files cache: they hold each file's size, times,
//! inode and chunks, and they are read one directory at a time as the walk reaches it, so
//! nothing needs keeping beside the vault. Memory holds the directories in flight (the
//! walk's current path and those whose files are still being read), one file's chunk per
//! worker, and the point's list of chunk ids for its index.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::bounded;
use kura_source::TreeSource;
use kura_source::tree::{EntryStat, EntryType, SourceDir, xattrs_of};
use kura_store::tree::{DIR_VERSION, Name};
use kura_store::{
    ChunkId, Dir, Node, NodeKind, PackWriter, Piece, RpStats, TreeIndex, Vault, is_zero,
};

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
    /// The directory it is an entry of, and where.
    dir: usize,
    at: usize,
    /// Its number among the files read (hard links wait on the first copy's).
    slot: usize,
    linked: bool,
    file: std::fs::File,
    /// What it was when listed.
    stat: EntryStat,
    path: String,
}

/// Work for the pool: a file to read, or directories whose entries are all known to write
/// (handed over a few at a time: waking a worker for each small directory cost more than
/// writing it, in a no-change backup).
enum Job {
    File(FileJob),
    Dirs(Vec<(usize, PendingDir)>),
}

/// Ready directories the walk hands over at once.
const DIR_BATCH: usize = 32;

/// A directory being listed, or listed and waiting for its files' chunks and its
/// subdirectories' chunks. Whoever delivers the last of them writes it.
struct PendingDir {
    /// Where its chunk goes: (parent directory, entry there); `None` for the root.
    parent: Option<(usize, usize)>,
    /// Its entries, once the walk has listed them all.
    nodes: Vec<Node>,
    /// Deliveries still awaited: files being read, subdirectories not yet written, and the
    /// end of its own listing.
    remaining: usize,
    files: Vec<(usize, FileResult)>,
    subdirs: Vec<(usize, Piece)>,
}

/// A hard-linked file's first copy: the later copies wait for its result.
enum LinkSlot {
    Waiting(Vec<(usize, usize)>),
    Done(FileResult),
}

/// The directories in flight, shared by the walk and the workers. Memory holds only these:
/// the walk's current path and the directories whose files are still being read.
#[derive(Default)]
struct InFlight {
    dirs: HashMap<usize, PendingDir>,
    links: HashMap<usize, LinkSlot>,
}

/// What every directory written adds to the point.
#[derive(Default)]
struct Written {
    root: Option<Piece>,
    dirs: u64,
    files: u64,
    bytes: u64,
    /// Every chunk referenced (with repeats; sorted and deduplicated at the end).
    chunks: Vec<ChunkId>,
}

/// The state of one tree's backup that the walk and the workers share.
struct Shared<'a> {
    vault: &'a Vault,
    reuse: &'a Reuse<'a>,
    /// The previous point's tree: its directories are the files cache.
    prev: Option<&'a TreeIndex>,
    /// Where new chunks go.
    packs: PackWriter,
    root_node: Node,
    in_flight: Mutex<InFlight>,
    written: Mutex<Written>,
    warnings: Mutex<Vec<String>>,
    counters: Counters,
    healed: Mutex<Vec<ChunkId>>,
}

impl Shared<'_> {
    /// Stores a chunk unless the previous point or this backup has it. A new chunk goes
    /// into a pack; a bad or missing one is written again as its own object, which every
    /// point whose packed copy is damaged reads instead (packs are never rewritten).
    fn store(&self, codec: &mut kura_store::Codec, id: ChunkId, plain: &[u8]) -> Result<()> {
        if self.packs.contains(&id) {
            return Ok(());
        }
        let Some(healing) = self.reuse.decide(self.vault, &id)? else {
            return Ok(());
        };
        let stored = codec.encode_chunk(&id, plain)?;
        let added = if healing {
            let mut healed = self.healed.lock().unwrap_or_else(|e| e.into_inner());
            if healed.contains(&id) {
                false
            } else {
                self.vault.put_chunk(&id, stored.clone())?;
                healed.push(id);
                true
            }
        } else {
            self.packs.add(id, &stored)?
        };
        if added {
            let c = &self.counters;
            c.new_stored
                .fetch_add(stored.len() as u64, Ordering::Relaxed);
            c.new_chunks.fetch_add(1, Ordering::Relaxed);
            c.new_plain.fetch_add(plain.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more delivery `dir` waits for.
    fn expect(&self, dir: usize) {
        if let Some(d) = self.lock().dirs.get_mut(&dir) {
            d.remaining += 1;
        }
    }

    /// A file's result: to its directory, and to the copies linked to it.
    fn file_done(&self, job: &FileJob, r: FileResult, ready: &mut Vec<(usize, PendingDir)>) {
        let mut f = self.lock();
        if job.linked {
            let waiting = match f.links.insert(job.slot, LinkSlot::Done(r.clone())) {
                Some(LinkSlot::Waiting(w)) => w,
                _ => Vec::new(),
            };
            for (dir, at) in waiting {
                deliver(&mut f, dir, ready, |d| d.files.push((at, r.clone())));
            }
        }
        deliver(&mut f, job.dir, ready, |d| d.files.push((job.at, r)));
    }

    /// Writes each ready directory, then delivers its chunk to its parent, which may make
    /// that one ready in turn.
    fn write_ready(
        &self,
        codec: &mut kura_store::Codec,
        mut ready: Vec<(usize, PendingDir)>,
    ) -> Result<()> {
        while let Some((_, pd)) = ready.pop() {
            let parent = pd.parent;
            let piece = self.write_dir(codec, pd)?;
            match parent {
                Some((dir, at)) => {
                    let mut f = self.lock();
                    deliver(&mut f, dir, &mut ready, |d| d.subdirs.push((at, piece)));
                }
                None => self.written.lock().unwrap_or_else(|e| e.into_inner()).root = Some(piece),
            }
        }
        Ok(())
    }

    /// Stores one directory whose entries are complete; returns its chunk.
    fn write_dir(&self, codec: &mut kura_store::Codec, pd: PendingDir) -> Result<Piece> {
        let mut nodes: Vec<Option<Node>> = pd.nodes.into_iter().map(Some).collect();
        let mut warnings = Vec::new();
        for (at, r) in pd.files {
            match (r, nodes[at].as_mut()) {
                (Ok(pieces), Some(node)) => {
                    node.size = pieces.iter().map(|p| u64::from(p.len)).sum();
                    node.chunks = pieces;
                }
                (Err(why), _) => {
                    warnings.push(why);
                    nodes[at] = None;
                }
                (Ok(_), None) => {}
            }
        }
        for (at, piece) in pd.subdirs {
            if let Some(node) = nodes[at].as_mut() {
                node.tree = Some(piece);
            }
        }
        let nodes: Vec<Node> = nodes.into_iter().flatten().collect();
        let (mut files, mut bytes) = (0u64, 0u64);
        let mut chunks = Vec::new();
        for n in &nodes {
            if n.kind == NodeKind::File {
                files += 1;
                bytes += n.size;
            }
            chunks.extend(n.chunks.iter().map(|p| p.id).filter(|c| !c.is_zero()));
        }
        let dir = Dir {
            kura_tree: DIR_VERSION,
            entries: nodes,
            this: pd
                .parent
                .is_none()
                .then(|| Box::new(self.root_node.clone())),
        };
        let plain = dir.encode();
        let id = codec.chunk_id(&plain);
        self.store(codec, id, &plain)?;
        chunks.push(id);
        if !warnings.is_empty() {
            self.warnings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(warnings);
        }
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        w.dirs += 1;
        w.files += files;
        w.bytes += bytes;
        w.chunks.extend(chunks);
        Ok(Piece {
            id,
            len: plain.len() as u32,
        })
    }
}

/// Hands `dir` one delivery; when it was the last, moves the directory to `ready`.
fn deliver(
    f: &mut InFlight,
    dir: usize,
    ready: &mut Vec<(usize, PendingDir)>,
    put: impl FnOnce(&mut PendingDir),
) {
    let Some(d) = f.dirs.get_mut(&dir) else {
        return;
    };
    put(d);
    d.remaining -= 1;
    if d.remaining == 0
        && let Some(d) = f.dirs.remove(&dir)
    {
        ready.push((dir, d));
    }
}

struct Walker<'a> {
    shared: &'a Shared<'a>,
    src: &'a TreeSource,
    progress: &'a dyn Progress,
    codec: kura_store::Codec,
    jobs: crossbeam_channel::Sender<Job>,
    /// Ready directories not yet handed over.
    ready: Vec<(usize, PendingDir)>,
    next_dir: usize,
    next_slot: usize,
    /// Files with several links already seen: inode → file job.
    links: HashMap<u64, usize>,
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
        self.shared
            .warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{}: not backed up: {why}", path.display()));
    }

    /// The previous point's directory under `node`, when it was one.
    fn previous_dir(&mut self, prev: Option<&Dir>, name: &[u8]) -> Option<Dir> {
        let node = prev?.get(name)?;
        let piece = node.tree.filter(|_| node.kind == NodeKind::Dir)?;
        // Unreadable: only the cache is lost, and the directory is read in full.
        let index = self.shared.prev?;
        self.shared
            .vault
            .get_dir(index, &piece, &mut self.codec)
            .ok()
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
            if !piece.id.is_zero()
                && !self
                    .shared
                    .reuse
                    .still_there(self.shared.vault, &piece.id)?
            {
                return Ok(None); // read it again: that heals it
            }
        }
        Ok(Some(p.clone()))
    }

    /// Registers a new directory (its parent then waits for it).
    fn open_pending(&mut self, parent: Option<(usize, usize)>) -> usize {
        let me = self.next_dir;
        self.next_dir += 1;
        if let Some((p, _)) = parent {
            self.shared.expect(p);
        }
        self.shared.lock().dirs.insert(
            me,
            PendingDir {
                parent,
                nodes: Vec::new(),
                remaining: 1,
                files: Vec::new(),
                subdirs: Vec::new(),
            },
        );
        me
    }

    /// The directory's entries are all listed: it is written once its files are read.
    fn close_pending(&mut self, me: usize, nodes: Vec<Node>) {
        let mut ready = Vec::new();
        {
            let mut f = self.shared.lock();
            deliver(&mut f, me, &mut ready, |d| d.nodes = nodes);
        }
        // To a worker: the walk goes on listing meanwhile.
        self.ready.extend(ready);
        if self.ready.len() >= DIR_BATCH {
            self.hand_over();
        }
    }

    /// Sends the ready directories to the workers.
    fn hand_over(&mut self) {
        if !self.ready.is_empty() {
            let _ = self.jobs.send(Job::Dirs(std::mem::take(&mut self.ready)));
        }
    }

    /// Lists `dir` and everything under it, handing its files to the workers.
    fn walk(
        &mut self,
        dir: &SourceDir,
        prev: Option<&Dir>,
        rel: &[u8],
        depth: usize,
        parent: Option<(usize, usize)>,
    ) -> Result<()> {
        let me = self.open_pending(parent);
        let mut nodes: Vec<Node> = Vec::new();
        let entries = match dir.entries() {
            Ok(e) => e,
            Err(e) => {
                self.skip(dir.path(), format!("its entries cannot be listed: {e}"));
                self.close_pending(me, nodes);
                return Ok(());
            }
        };
        for (name, st) in entries {
            crate::progress::check_cancel(self.progress)?;
            if self.failed.load(Ordering::SeqCst) {
                return Ok(());
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
            let at = nodes.len();
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
                    match sub {
                        Some(sub) => {
                            node.xattrs = xattrs(sub.xattrs());
                            nodes.push(node);
                            let prev_sub = self.previous_dir(prev, &name);
                            self.walk(
                                &sub,
                                prev_sub.as_ref(),
                                &child_rel,
                                depth + 1,
                                Some((me, at)),
                            )?;
                        }
                        // A mount point: kept as an empty directory, its contents are
                        // another file system's.
                        None => {
                            nodes.push(node);
                            let child = self.open_pending(Some((me, at)));
                            self.close_pending(child, Vec::new());
                        }
                    }
                }
                EntryType::File => {
                    if let Some(same) = self.unchanged(prev, &name, &st)? {
                        self.unchanged_files += 1;
                        self.progress.advance(same.size);
                        node.size = same.size;
                        node.chunks = same.chunks;
                        node.xattrs = same.xattrs;
                        nodes.push(node);
                        continue;
                    }
                    if st.nlink > 1
                        && let Some(&slot) = self.links.get(&st.ino)
                    {
                        nodes.push(node);
                        let mut f = self.shared.lock();
                        let done = match f.links.get_mut(&slot) {
                            Some(LinkSlot::Done(r)) => Some(r.clone()),
                            Some(LinkSlot::Waiting(w)) => {
                                w.push((me, at));
                                None
                            }
                            None => None,
                        };
                        if let Some(d) = f.dirs.get_mut(&me) {
                            match done {
                                Some(r) => d.files.push((at, r)),
                                None => d.remaining += 1,
                            }
                        }
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
                    let linked = st.nlink > 1;
                    if linked {
                        self.links.insert(st.ino, slot);
                        self.shared
                            .lock()
                            .links
                            .insert(slot, LinkSlot::Waiting(Vec::new()));
                    }
                    nodes.push(node);
                    self.shared.expect(me);
                    let job = FileJob {
                        dir: me,
                        at,
                        slot,
                        linked,
                        file,
                        stat: st,
                        path: path().display().to_string(),
                    };
                    if self.jobs.send(Job::File(job)).is_err() {
                        return Ok(());
                    }
                }
                EntryType::Symlink => match dir.read_link(&name) {
                    Ok(t) => {
                        node.size = t.len() as u64;
                        node.target = Some(Name(t));
                        nodes.push(node);
                    }
                    Err(e) => self.skip(&path(), e),
                },
                _ => nodes.push(node),
            }
        }
        self.close_pending(me, nodes);
        Ok(())
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
fn chunk_file(
    shared: &Shared<'_>,
    codec: &mut kura_store::Codec,
    job: &mut FileJob,
    sizes: (u32, u32, u32),
    progress: &dyn Progress,
) -> Result<FileResult> {
    let counters = &shared.counters;
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
        if !id.is_zero() {
            shared.store(codec, id, data)?;
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
    if job.stat.size <= u64::from(max) {
        // A file that fits in one chunk's room (most files of a tree) is read at once and
        // cut in memory; a larger one streams through the chunker's own buffer.
        let mut whole = Vec::with_capacity(job.stat.size as usize + 1);
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
    // A file written while it was read is kept as read (crash-consistent, like the rest of
    // a live tree), and said so. Its listed times go into the point, so the next backup
    // reads it again.
    crate::hooks::gate("file_read");
    if EntryStat::of_file(&job.file).is_ok_and(|now| now.changed_since(&job.stat)) {
        shared
            .warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!(
                "{}: changed while it was read; kept as read (the next backup reads it again)",
                job.path
            ));
    }
    Ok(Ok(pieces))
}

/// Backs the tree up; `previous` is the previous point's tree (the files cache). New
/// chunks, directories among them, are written in packs.
pub(crate) fn backup_tree(
    vault: &Vault,
    src: &TreeSource,
    previous: Option<&TreeIndex>,
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
        Some(p) => vault.get_dir(p, &p.root, &mut vault.codec()).ok(),
        None => None,
    };
    // More workers than cores: writers of new objects block now and then in the kernel
    // (dirty-page throttling, directory locks), and a core should not idle meanwhile.
    // Measured on 2 cores (bench/tree.sh): 4 workers 18-20 s, 8 13.5-14.7 s, 16 14-15.6 s.
    let n_workers = (workers() * 4).clamp(8, 32);
    let (tx, rx) = bounded::<Job>(n_workers * 4);
    let shared = Shared {
        vault,
        reuse,
        prev: previous,
        packs: PackWriter::new(vault),
        root_node,
        in_flight: Mutex::new(InFlight::default()),
        written: Mutex::new(Written::default()),
        warnings: Mutex::new(Vec::new()),
        counters: Counters::default(),
        healed: Mutex::new(Vec::new()),
    };
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
            let (shared, failed, fail) = (&shared, &failed, &fail);
            s.spawn(move || {
                let mut codec = vault.codec();
                for job in rx {
                    if failed.load(Ordering::SeqCst) {
                        continue;
                    }
                    let mut ready = Vec::new();
                    let r = match job {
                        Job::File(mut job) => {
                            chunk_file(shared, &mut codec, &mut job, sizes, progress)
                                .map(|r| shared.file_done(&job, r, &mut ready))
                        }
                        Job::Dirs(dirs) => {
                            ready = dirs;
                            Ok(())
                        }
                    };
                    if let Err(e) = r.and_then(|()| shared.write_ready(&mut codec, ready)) {
                        fail(e);
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
                    shared: &shared,
                    src,
                    progress,
                    codec: vault.codec(),
                    jobs: tx,
                    ready: Vec::new(),
                    next_dir: 0,
                    next_slot: 0,
                    links: HashMap::new(),
                    unchanged_files: 0,
                    failed: &failed,
                };
                let r = w.walk(&root, prev_root.as_ref(), b"", 0, None);
                w.hand_over();
                drop(w.jobs);
                r.map(|()| (w.unchanged_files, w.next_slot))
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
    let (unchanged_files, read_files) = walked?;
    let placed = shared.packs.finish()?;
    let healed: std::collections::HashSet<ChunkId> = shared
        .healed
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .collect();
    let written = shared
        .written
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let root = written
        .root
        .ok_or_else(|| Error::new(ErrorKind::Other, "the tree's root was not written"))?;
    let mut chunks = written.chunks;
    chunks.sort_unstable();
    chunks.dedup();
    // Where each chunk is: its own object when this backup healed it, in a pack this backup
    // wrote, else where the previous point had it.
    let places = chunks
        .iter()
        .map(|id| {
            if healed.contains(id) {
                return None;
            }
            placed
                .places
                .get(id)
                .copied()
                .or_else(|| previous.and_then(|p| p.place(id)).flatten())
        })
        .collect();
    let c = &shared.counters;
    let stats = RpStats {
        read_bytes: c.read_bytes.load(Ordering::Relaxed),
        new_chunks: c.new_chunks.load(Ordering::Relaxed),
        new_stored_bytes: c.new_stored.load(Ordering::Relaxed),
        new_plain_bytes: c.new_plain.load(Ordering::Relaxed),
        used_bytes: Some(written.bytes),
    };
    // Sorted: the walk and the workers meet them in no fixed order.
    let mut warnings = shared
        .warnings
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    warnings.sort();
    Ok(TreeOutcome {
        index: TreeIndex {
            root,
            files: written.files,
            dirs: written.dirs,
            bytes: written.bytes,
            chunks,
            places,
        },
        stats,
        healed: healed.into_iter().collect(),
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
