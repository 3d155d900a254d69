use std::collections::BTreeSet;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use opendal::{ErrorKind, Operator, services};

use crate::{Backend, Error, Result, check_key, check_prefix, check_range};

/// Directory (under the root) where OpenDAL stages atomic writes before renaming them.
const STAGING_DIR: &str = ".staging";

/// The local filesystem backend, on Apache OpenDAL's `fs` service.
///
/// A new object is written unnamed in its directory and linked into place (or, where the
/// file system cannot, written to a staging file and renamed), so no reader ever sees a
/// truncated object under its real name. A put that replaces an object fsyncs its file
/// before the rename (a crash leaves the old object or the new one); a new object is made
/// durable by the next [`Backend::sync`] (one `syncfs` for all of them, then the directories
/// that received renames), which spares an fsync per chunk: with trees of small files, one
/// fsync per object was most of a backup's time.
#[derive(Debug)]
pub struct FsBackend {
    root: PathBuf,
    op: Operator,
    rt: tokio::runtime::Runtime,
    dirty_dirs: Mutex<BTreeSet<PathBuf>>,
    /// New objects were written since the last sync (their data needs a `syncfs`).
    unsynced: std::sync::atomic::AtomicBool,
    /// Names of this process's staging files.
    staged: std::sync::atomic::AtomicU64,
    /// The root, open since the backend was: `syncfs` on it reports every write-back error
    /// since then (one opened at sync time would miss earlier ones).
    root_dir: File,
    /// Bytes of new objects written since the last early write-back.
    ahead: std::sync::atomic::AtomicU64,
    /// Wakes the thread that starts write-back early (made at the first need).
    flusher: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
}

/// New bytes after which write-back starts in the background: the sync at the end of a
/// backup then finds little left to write, instead of waiting for all of it at once.
const WRITE_AHEAD: u64 = 256 << 20;

impl FsBackend {
    /// Opens (creating if needed) a backend rooted at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        let storage_err = |message: String| Error::Storage {
            key: root.display().to_string(),
            op: "open",
            message,
        };
        std::fs::create_dir_all(root).map_err(|e| storage_err(e.to_string()))?;
        let root = root
            .canonicalize()
            .map_err(|e| storage_err(e.to_string()))?;
        let staging = root.join(STAGING_DIR);
        let root_str = root
            .to_str()
            .ok_or_else(|| storage_err("path is not UTF-8".into()))?;
        let staging_str = staging
            .to_str()
            .ok_or_else(|| storage_err("path is not UTF-8".into()))?;
        let builder = services::Fs::default()
            .root(root_str)
            .atomic_write_dir(staging_str);
        let op = Operator::new(builder).map_err(|e| storage_err(e.to_string()))?;
        let root_dir = File::open(&root).map_err(|e| storage_err(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kura-fs-io")
            .enable_all()
            .build()
            .map_err(|e| storage_err(e.to_string()))?;
        Ok(FsBackend {
            root,
            op,
            rt,
            dirty_dirs: Mutex::new(BTreeSet::new()),
            unsynced: Default::default(),
            staged: Default::default(),
            root_dir,
            ahead: Default::default(),
            flusher: Mutex::new(None),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A new object: staged, renamed into place unless `dest` exists (then
    /// [`Fresh::Exists`], and nothing changed), made durable by the next sync.
    fn put_fresh(&self, key: &str, dest: &Path, data: &[u8]) -> Result<Fresh> {
        use std::io::Write;
        let err = |e: std::io::Error| io_err(key, "put", e);
        match write_unnamed(dest, data) {
            Ok(Some(fresh)) => {
                if fresh == Fresh::Written {
                    self.wrote_new(key, data.len());
                }
                return Ok(fresh);
            }
            Ok(None) => {} // no unnamed files here: staged
            Err(e) => return Err(err(e)),
        }
        let staging = self.root.join(STAGING_DIR);
        let n = self
            .staged
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = staging.join(format!("kura-{}-{n}", std::process::id()));
        let write = || -> std::io::Result<Fresh> {
            let mut f = match File::create(&tmp) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(&staging)?;
                    File::create(&tmp)?
                }
                r => r?,
            };
            f.write_all(data)?;
            // The parent (`chunks/HH/`) usually exists: made only when the rename says not.
            match rename_new(&tmp, dest) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    rename_new(&tmp, dest)
                }
                r => r,
            }
        };
        match write() {
            Ok(Fresh::Written) => {}
            Ok(Fresh::Exists) => {
                let _ = std::fs::remove_file(&tmp);
                return Ok(Fresh::Exists);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(err(e));
            }
        }
        self.wrote_new(key, data.len());
        Ok(Fresh::Written)
    }

    /// Notes a new object for the next sync, and starts write-back early every
    /// [`WRITE_AHEAD`] bytes.
    fn wrote_new(&self, key: &str, len: usize) {
        use std::sync::atomic::Ordering;
        self.unsynced.store(true, Ordering::SeqCst);
        self.mark_dirty(key);
        let before = self.ahead.fetch_add(len as u64, Ordering::Relaxed);
        if before + len as u64 >= WRITE_AHEAD {
            self.ahead.store(0, Ordering::Relaxed);
            self.write_back_early();
        }
    }

    /// Asks the background thread for a `syncfs` (skipped when one is already asked for).
    /// Only a head start: errors are left for [`Backend::sync`] to report, on its own
    /// descriptor.
    fn write_back_early(&self) {
        let mut flusher = self.flusher.lock().unwrap_or_else(|e| e.into_inner());
        if flusher.is_none() {
            let Ok(dir) = File::open(&self.root) else {
                return;
            };
            let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
            let spawned = std::thread::Builder::new()
                .name("kura-fs-flush".into())
                .spawn(move || {
                    for () in rx {
                        let _ = rustix::fs::syncfs(&dir);
                    }
                });
            if spawned.is_err() {
                return;
            }
            *flusher = Some(tx);
        }
        if let Some(tx) = flusher.as_ref() {
            let _ = tx.try_send(());
        }
    }

    fn mark_dirty(&self, key: &str) {
        let mut dir = self.root.join(key);
        dir.pop();
        let mut dirty = self.dirty_dirs.lock().unwrap_or_else(|e| e.into_inner());
        // New directories must be made durable in their parents too.
        while dir.starts_with(&self.root) && dirty.insert(dir.clone()) {
            if dir == self.root || !dir.pop() {
                break;
            }
        }
    }
}

/// What [`FsBackend::put_fresh`] did.
#[derive(Debug, PartialEq)]
enum Fresh {
    Written,
    /// An object had the key: left as it was.
    Exists,
}

/// Writes a new object as an unnamed file in its directory (`O_TMPFILE`), then gives it
/// its name with `linkat`, which refuses an existing name: the object appears whole or not
/// at all, a crash leaves nothing to clean up, and writers do not queue on one staging
/// directory's lock. `None` when the file system (or a missing `/proc`) does not allow it.
fn write_unnamed(dest: &Path, data: &[u8]) -> std::io::Result<Option<Fresh>> {
    use rustix::fs::{AtFlags, CWD, Mode, OFlags, linkat, openat};
    use rustix::io::Errno;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let Some(dir) = dest.parent() else {
        return Ok(None);
    };
    let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
    let mode = Mode::from_bits_truncate(0o666);
    let fd = match openat(CWD, dir, flags, mode) {
        Ok(fd) => fd,
        // The parent (`chunks/HH/`) usually exists: made only when the open says not.
        Err(Errno::NOENT) => {
            std::fs::create_dir_all(dir)?;
            match openat(CWD, dir, flags, mode) {
                Ok(fd) => fd,
                Err(e) if unsupported(e) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) if unsupported(e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut f = File::from(fd);
    f.write_all(data)?;
    let by_fd = format!("/proc/self/fd/{}", f.as_raw_fd());
    match linkat(CWD, by_fd.as_str(), CWD, dest, AtFlags::SYMLINK_FOLLOW) {
        Ok(()) => Ok(Some(Fresh::Written)),
        Err(Errno::EXIST) => Ok(Some(Fresh::Exists)),
        Err(Errno::NOENT) if !Path::new("/proc/self/fd").exists() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn unsupported(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    matches!(
        e,
        Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOSYS
    )
}

/// Renames `from` to `to` unless `to` exists, in one step (`RENAME_NOREPLACE`). A file
/// system without it (some network ones) gets a check first; there a racing writer of the
/// same new key may replace the other's object, which only puts matter where both are new.
fn rename_new(from: &Path, to: &Path) -> std::io::Result<Fresh> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(Fresh::Written),
        Err(rustix::io::Errno::EXIST) => Ok(Fresh::Exists),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Ok(Fresh::Exists);
            }
            std::fs::rename(from, to).map(|()| Fresh::Written)
        }
        Err(e) => Err(e.into()),
    }
}

fn io_err(key: &str, op: &'static str, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => Error::NotFound {
            key: key.to_string(),
        },
        _ => Error::Storage {
            key: key.to_string(),
            op,
            message: e.to_string(),
        },
    }
}

fn map_err(key: &str, op: &'static str, e: opendal::Error) -> Error {
    match e.kind() {
        ErrorKind::NotFound => Error::NotFound {
            key: key.to_string(),
        },
        ErrorKind::ConditionNotMatch | ErrorKind::AlreadyExists => Error::AlreadyExists {
            key: key.to_string(),
        },
        _ => Error::Storage {
            key: key.to_string(),
            op,
            message: e.to_string(),
        },
    }
}

impl Backend for FsBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn remove_stale_uploads(&self, older_than: std::time::Duration) -> Result<u64> {
        let dir = self.root.join(STAGING_DIR);
        let mut removed = 0;
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(0);
        };
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > older_than);
            if old && e.file_type().is_ok_and(|t| t.is_file()) {
                std::fs::remove_file(e.path()).map_err(|err| Error::Storage {
                    key: e.path().display().to_string(),
                    op: "delete",
                    message: err.to_string(),
                })?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn cheap_stat(&self) -> bool {
        true
    }

    fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        check_key(key)?;
        let dest = self.root.join(key);
        // Most puts make a new object (a chunk): written once, with no stat first. A
        // replacement (an item record, a health blob: small and rare) is written twice, the
        // unnamed copy refused by linkat and then OpenDAL's fsync-then-rename, so that a
        // crash never damages an object that was there.
        if self.put_fresh(key, &dest, &data)? == Fresh::Written {
            return Ok(());
        }
        self.rt
            .block_on(self.op.write(key, data))
            .map_err(|e| map_err(key, "put", e))?;
        self.mark_dirty(key);
        Ok(())
    }

    fn put_new(&self, key: &str, data: Vec<u8>) -> Result<()> {
        check_key(key)?;
        match self.put_fresh(key, &self.root.join(key), &data)? {
            Fresh::Written => Ok(()),
            Fresh::Exists => Err(Error::AlreadyExists {
                key: key.to_string(),
            }),
        }
    }

    // Reads and stats go to the file directly: a rename makes an object appear whole, so a
    // plain read sees it or not, and it costs a system call instead of a trip through the
    // async runtime (which dominated backups and restores of trees of many small files).
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        check_key(key)?;
        std::fs::read(self.root.join(key)).map_err(|e| io_err(key, "get", e))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        check_key(key)?;
        // One open and one positioned read: a chunk in a pack costs what a chunk object does.
        let file =
            std::fs::File::open(self.root.join(key)).map_err(|e| io_err(key, "get_range", e))?;
        let meta = file.metadata().map_err(|e| io_err(key, "get_range", e))?;
        if !meta.is_file() {
            return Err(Error::NotFound {
                key: key.to_string(),
            });
        }
        check_range(key, &range, meta.len())?;
        let mut buf = vec![0; (range.end - range.start) as usize];
        file.read_exact_at(&mut buf, range.start)
            .map_err(|e| io_err(key, "get_range", e))?;
        Ok(buf)
    }

    fn stat(&self, key: &str) -> Result<Option<u64>> {
        check_key(key)?;
        match std::fs::metadata(self.root.join(key)) {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            Ok(_) => Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(io_err(key, "stat", e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list_sizes(prefix)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    // A walk of the directories: each entry's size comes from the same `statx` that tells
    // a file from a directory, and nothing goes through the async runtime.
    fn list_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        check_prefix(prefix)?;
        let mut out = Vec::new();
        let mut todo = vec![prefix.to_string()];
        while let Some(dir) = todo.pop() {
            let entries = match std::fs::read_dir(self.root.join(&dir)) {
                Ok(e) => e,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(io_err(&dir, "list", e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_err(&dir, "list", e))?;
                // Not a key (staging files, names outside the key alphabet): not an object.
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if dir.is_empty() && name == STAGING_DIR {
                    continue;
                }
                let key = format!("{dir}{name}");
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&key, "list", e)),
                };
                if meta.is_dir() {
                    todo.push(format!("{key}/"));
                } else if meta.is_file() && check_key(&key).is_ok() {
                    out.push((key, meta.len()));
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        match self.rt.block_on(self.op.delete(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(map_err(key, "delete", e)),
        }?;
        self.mark_dirty(key);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        if self
            .unsynced
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            let r = rustix::fs::syncfs(&self.root_dir).map_err(std::io::Error::from);
            if let Err(e) = r {
                self.unsynced
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                return Err(Error::Storage {
                    key: self.root.display().to_string(),
                    op: "sync",
                    message: e.to_string(),
                });
            }
        }
        let dirs = std::mem::take(&mut *self.dirty_dirs.lock().unwrap_or_else(|e| e.into_inner()));
        // Deepest first, so a new directory's entries are durable before its own name.
        for dir in dirs.iter().rev() {
            let r = File::open(dir).and_then(|f| f.sync_all());
            if let Err(e) = r {
                // Put what is left back so a retry covers it.
                self.dirty_dirs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(dirs.iter().cloned());
                return Err(Error::Storage {
                    key: dir.display().to_string(),
                    op: "sync",
                    message: e.to_string(),
                });
            }
        }
        Ok(())
    }
}
