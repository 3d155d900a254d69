//! A file system on a volume, read-only: list directories, read files and links.

use serde::Serialize;

use crate::{Error, FsKind, ReadAt, Result, Volume, guarded};

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A block device node.
    BlockDevice,
    /// A character device node.
    CharDevice,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
}

/// One file, directory or link, as its file system records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Absolute path inside the file system (bytes that are not UTF-8 are shown as U+FFFD).
    pub path: String,
    /// Its last component.
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
    /// Length in bytes (files and links).
    pub size: u64,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last modification, seconds since the Unix epoch.
    pub mtime: i64,
    /// Its nanoseconds.
    pub mtime_nsec: u32,
    /// Last access, seconds since the Unix epoch.
    pub atime: i64,
    /// Its nanoseconds.
    pub atime_nsec: u32,
    /// A link's target, as stored (never followed by kura).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The path's exact bytes.
    #[serde(skip)]
    pub(crate) raw: Vec<u8>,
    /// A link target's exact bytes.
    #[serde(skip)]
    pub(crate) raw_target: Vec<u8>,
    /// Hard links: entries of one extraction with the same group are one file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_group: Option<u64>,
    /// What only some sources record (a file item's trees): extended attributes, device
    /// numbers.
    #[serde(skip)]
    pub(crate) extra: Extra,
}

/// Metadata beyond what every file system gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extra {
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) rdev: u64,
}

/// The fields of an [`Entry`] a [`Tree`] gives, by their exact bytes.
#[derive(Debug, Clone, Default)]
pub struct RawEntry {
    /// Absolute path inside the tree (`/` for its root).
    pub path: Vec<u8>,
    /// What it is.
    pub kind: Option<EntryKind>,
    /// Length in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: (i64, u32),
    /// Access time.
    pub atime: (i64, u32),
    /// A link's target.
    pub target: Option<Vec<u8>>,
    /// Hard-link group (entries with the same one are one file).
    pub link_group: Option<u64>,
    /// Extended attributes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A device node's number.
    pub rdev: u64,
}

impl Entry {
    /// The path's exact bytes as the file system stores them.
    pub fn raw_path(&self) -> &[u8] {
        &self.raw
    }

    /// An entry from its exact bytes.
    pub fn from_raw(r: RawEntry) -> Entry {
        let name = r.path.rsplit(|b| *b == b'/').next().unwrap_or_default();
        Entry {
            path: lossy(&r.path),
            name: if r.path == b"/" {
                "/".into()
            } else {
                lossy(name)
            },
            kind: r.kind.unwrap_or(EntryKind::File),
            size: r.size,
            mode: r.mode & 0o7777,
            uid: r.uid,
            gid: r.gid,
            mtime: r.mtime.0,
            mtime_nsec: r.mtime.1,
            atime: r.atime.0,
            atime_nsec: r.atime.1,
            target: r.target.as_deref().map(lossy),
            raw_target: r.target.unwrap_or_default(),
            link_group: r.link_group,
            extra: Extra {
                xattrs: r.xattrs,
                rdev: r.rdev,
            },
            raw: r.path,
        }
    }
}

/// A file tree that is not on a disk (a file item's recovery point), read through
/// [`FileSystem::from_tree`]. Paths are absolute byte paths without `.` or `..`.
pub trait Tree: Send {
    /// The entry at `path`.
    fn entry(&self, path: &[u8]) -> Result<Entry>;
    /// The entries of the directory at `path`, sorted by name.
    fn list(&self, path: &[u8]) -> Result<Vec<Entry>>;
    /// The contents of the regular file at `path`.
    fn reader(&self, path: &[u8]) -> Result<Box<dyn std::io::Read + Send>>;
    /// How many files an extraction may read at once, each reader on a thread of its own;
    /// 1 (the default) reads them one after the other on the extracting thread.
    fn concurrent_reads(&self) -> usize {
        1
    }
}

/// A readable file system (ext2/3/4, XFS or FAT) on one volume of a disk.
pub struct FileSystem {
    inner: Inner,
}

enum Inner {
    Ext4(ext4_view::Ext4),
    Fat(crate::fat::Fat),
    Xfs(crate::xfs::Xfs),
    Tree(Box<dyn Tree>),
}

impl std::fmt::Debug for FileSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileSystem")
    }
}

/// A volume of a disk as ext4-view reads it: every read checked against the volume's end.
struct VolumeReader {
    disk: Box<dyn ReadAt>,
    start: u64,
    len: u64,
}

impl ext4_view::Ext4Read for VolumeReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let end = start_byte.checked_add(dst.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(format!(
                "a read of {} bytes at {start_byte} runs past the volume's {} bytes",
                dst.len(),
                self.len
            )
            .into());
        }
        self.disk.read_at(dst, self.start + start_byte)?;
        Ok(())
    }
}

fn fs_error(what: &str, e: ext4_view::Ext4Error) -> Error {
    use ext4_view::Ext4Error as E;
    match e {
        E::NotFound => Error::NotFound(format!("{what}: no such file or directory")),
        E::NotADirectory => Error::Invalid(format!("{what}: not a directory")),
        E::IsADirectory => Error::Invalid(format!("{what}: is a directory")),
        E::IsASpecialFile => Error::Invalid(format!("{what}: a special file has no contents")),
        E::Incompatible(i) => Error::Unsupported(format!("{what}: {i}")),
        e => Error::corrupt(what, e.to_string()),
    }
}

/// A path given by a user, as an absolute byte path; `..` is refused (paths name entries of
/// the point, never climb out of one).
fn user_path(path: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if c == ".." {
            return Err(Error::Invalid(format!(
                "{path}: `..` is not allowed in a path inside a recovery point"
            )));
        }
        out.push(b'/');
        out.extend_from_slice(c.as_bytes());
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl FileSystem {
    /// A tree read through its own [`Tree`] (a file item's point).
    pub fn from_tree(tree: Box<dyn Tree>) -> FileSystem {
        FileSystem {
            inner: Inner::Tree(tree),
        }
    }

    /// Opens the file system of `volume` on `disk`.
    pub fn open(disk: Box<dyn ReadAt>, volume: &Volume) -> Result<FileSystem> {
        if !volume.fs.readable() {
            return Err(Error::Unsupported(match volume.fs {
                FsKind::Unknown => format!(
                    "volume {} holds no file system kura recognizes",
                    volume.number
                ),
                k => format!(
                    "volume {} holds {k:?}, which kura cannot read yet (ext2/3/4, XFS and FAT only); restore the disk instead",
                    volume.number
                ),
            }));
        }
        let what = format!("the file system of volume {}", volume.number);
        // A logical volume: its runs as a disk of their own.
        let (disk, volume): (Box<dyn ReadAt>, std::borrow::Cow<'_, Volume>) =
            if volume.map.is_empty() {
                (disk, std::borrow::Cow::Borrowed(volume))
            } else {
                let mapped = crate::lvm::Mapped {
                    disk,
                    segments: volume.map.clone(),
                    size: volume.size,
                };
                let mut v = volume.clone();
                v.start = 0;
                v.map.clear();
                (Box::new(mapped), std::borrow::Cow::Owned(v))
            };
        let volume = volume.as_ref();
        if volume.fs == FsKind::Vfat {
            let fat = guarded(&what, || {
                crate::fat::Fat::open(disk, volume.start, volume.size, &what)
            })?;
            return Ok(FileSystem {
                inner: Inner::Fat(fat),
            });
        }
        if volume.fs == FsKind::Xfs {
            let xfs = guarded(&what, || {
                crate::xfs::Xfs::open(disk, volume.start, volume.size, &what)
            })?;
            return Ok(FileSystem {
                inner: Inner::Xfs(xfs),
            });
        }
        let reader = VolumeReader {
            disk,
            start: volume.start,
            len: volume.size,
        };
        let ext4 = guarded(&what, || {
            ext4_view::Ext4::load(Box::new(reader)).map_err(|e| fs_error(&what, e))
        })?;
        Ok(FileSystem {
            inner: Inner::Ext4(ext4),
        })
    }

    /// The entry at `path` (a link itself, not what it points to).
    pub fn entry(&self, path: &str) -> Result<Entry> {
        let raw = user_path(path)?;
        self.entry_raw(&raw)
    }

    pub(crate) fn entry_raw(&self, raw: &[u8]) -> Result<Entry> {
        let what = lossy(raw);
        let ext4 = match &self.inner {
            Inner::Ext4(x) => x,
            Inner::Fat(f) => return guarded(&what, || f.entry_raw(raw)),
            Inner::Xfs(x) => return guarded(&what, || x.entry_raw(raw)),
            Inner::Tree(t) => return t.entry(raw),
        };
        guarded(&what, || {
            let p = ext4_view::Path::try_from(raw)
                .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
            let m = ext4.symlink_metadata(p).map_err(|e| fs_error(&what, e))?;
            let kind = match m.file_type() {
                ext4_view::FileType::Regular => EntryKind::File,
                ext4_view::FileType::Directory => EntryKind::Dir,
                ext4_view::FileType::Symlink => EntryKind::Symlink,
                ext4_view::FileType::BlockDevice => EntryKind::BlockDevice,
                ext4_view::FileType::CharacterDevice => EntryKind::CharDevice,
                ext4_view::FileType::Fifo => EntryKind::Fifo,
                ext4_view::FileType::Socket => EntryKind::Socket,
            };
            let target = if kind == EntryKind::Symlink {
                let t = ext4.read_link(p).map_err(|e| fs_error(&what, e))?;
                Some(t.as_ref().to_vec())
            } else {
                None
            };
            let name = raw.rsplit(|b| *b == b'/').next().unwrap_or_default();
            Ok(Entry {
                path: what.clone(),
                name: if raw == b"/" { "/".into() } else { lossy(name) },
                kind,
                size: m.len(),
                mode: u32::from(m.mode()) & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: m.modified().seconds(),
                mtime_nsec: m.modified().nanoseconds(),
                atime: m.accessed().seconds(),
                atime_nsec: m.accessed().nanoseconds(),
                target: target.as_deref().map(lossy),
                raw_target: target.unwrap_or_default(),
                raw: raw.to_vec(),
                link_group: None,
                extra: Extra::default(),
            })
        })
    }

    /// The entries of the directory at `path`, by name (without `.` and `..`).
    pub fn list(&self, path: &str) -> Result<Vec<Entry>> {
        let raw = user_path(path)?;
        self.list_raw(&raw)
    }

    pub(crate) fn list_raw(&self, raw: &[u8]) -> Result<Vec<Entry>> {
        let what = lossy(raw);
        // A directory that (through damage or malice) contains itself makes paths grow
        // without end: a walk stops at this depth instead of running forever.
        if raw.iter().filter(|b| **b == b'/').count() > MAX_DEPTH {
            return Err(Error::corrupt(
                what,
                format!(
                    "directories nest deeper than {MAX_DEPTH} levels (a loop in the file system?)"
                ),
            ));
        }
        let ext4 = match &self.inner {
            Inner::Ext4(x) => x,
            Inner::Fat(f) => return guarded(&what, || f.list_raw(raw)),
            Inner::Xfs(x) => return guarded(&what, || x.list_raw(raw)),
            Inner::Tree(t) => return t.list(raw),
        };
        let names = guarded(&what, || {
            let p = ext4_view::Path::try_from(raw)
                .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
            let mut names = Vec::new();
            for e in ext4.read_dir(p).map_err(|e| fs_error(&what, e))? {
                let e = e.map_err(|e| fs_error(&what, e))?;
                too_many(&what, names.len())?;
                let n = e.file_name().as_ref().to_vec();
                if n != b"." && n != b".." {
                    names.push(n);
                }
            }
            Ok(names)
        })?;
        let mut out = names
            .into_iter()
            .map(|n| {
                let mut child = raw.to_vec();
                if child != b"/" {
                    child.push(b'/');
                }
                child.extend_from_slice(&n);
                self.entry_raw(&child)
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.raw.cmp(&b.raw));
        Ok(out)
    }

    /// A reader of the contents of the regular file at `path`.
    pub fn reader(&self, path: &str) -> Result<impl std::io::Read + use<>> {
        let raw = user_path(path)?;
        self.reader_raw(&raw)
    }

    pub(crate) fn reader_raw(&self, raw: &[u8]) -> Result<impl std::io::Read + use<>> {
        let what = lossy(raw);
        guarded(&what, || {
            let inner: Box<dyn std::io::Read> = match &self.inner {
                Inner::Fat(f) => Box::new(f.reader_raw(raw)?),
                Inner::Xfs(x) => Box::new(x.reader_raw(raw)?),
                Inner::Tree(t) => Box::new(t.reader(raw)?),
                Inner::Ext4(ext4) => {
                    let p = ext4_view::Path::try_from(raw)
                        .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
                    Box::new(ext4.open(p).map_err(|e| fs_error(&what, e))?)
                }
            };
            Ok(Guarded {
                inner,
                what: what.clone(),
            })
        })
    }

    /// How many files an extraction may read at once (see [`Tree::concurrent_reads`]); 1
    /// for the file systems of disks, whose readers stay on the thread that opened them.
    pub(crate) fn concurrent_reads(&self) -> usize {
        match &self.inner {
            Inner::Tree(t) => t.concurrent_reads().max(1),
            _ => 1,
        }
    }

    /// A reader of the file at `raw` that may be read on another thread, where the file
    /// system gives one (a tree's); `None` for the file systems of disks.
    pub(crate) fn sendable_reader_raw(
        &self,
        raw: &[u8],
    ) -> Result<Option<impl std::io::Read + Send + use<>>> {
        let Inner::Tree(t) = &self.inner else {
            return Ok(None);
        };
        let what = lossy(raw);
        guarded(&what, || {
            Ok(Some(Guarded {
                inner: t.reader(raw)?,
                what: what.clone(),
            }))
        })
    }
}

/// Size of the buffer a file's contents are copied through.
const COPY_BUFFER: usize = 1 << 20;

/// Copies `r` (the contents of the file at `raw`) into `to` through `buf`, which is grown to
/// [`COPY_BUFFER`] once and reused by the caller's next copy; returns the bytes copied.
pub(crate) fn copy_file(
    raw: &[u8],
    r: &mut dyn std::io::Read,
    to: &mut dyn std::io::Write,
    buf: &mut Vec<u8>,
) -> Result<u64> {
    if buf.len() < COPY_BUFFER {
        buf.resize(COPY_BUFFER, 0);
    }
    let mut total = 0u64;
    loop {
        let n = r
            .read(buf)
            .map_err(|e| Error::corrupt(lossy(raw), e.to_string()))?;
        if n == 0 {
            return Ok(total);
        }
        to.write_all(&buf[..n]).map_err(|source| Error::Write {
            what: lossy(raw),
            source,
        })?;
        total += n as u64;
    }
}

/// Deepest directory nesting a walk follows.
pub(crate) const MAX_DEPTH: usize = 256;
/// Most entries one directory may list (a loop in a damaged directory would never end).
pub(crate) const MAX_ENTRIES: usize = 1_000_000;

pub(crate) fn too_many(what: &str, n: usize) -> Result<()> {
    if n >= MAX_ENTRIES {
        return Err(Error::corrupt(
            what,
            format!("more than {MAX_ENTRIES} entries in one directory (a loop in it?)"),
        ));
    }
    Ok(())
}

/// A file's reader whose parser panics become read errors.
struct Guarded<R> {
    inner: R,
    what: String,
}

impl<R: std::io::Read> std::io::Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let inner = &mut self.inner;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.read(buf))).unwrap_or_else(
            |_| {
                Err(std::io::Error::other(format!(
                    "{}: the parser gave up on malformed data",
                    self.what
                )))
            },
        )
    }
}
