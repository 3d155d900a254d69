//! Writing files of a recovery point into a directory, safely.
//!
//! Every file is created relative to an open directory handle with `O_NOFOLLOW`, each
//! directory is entered with `O_DIRECTORY | O_NOFOLLOW`, and each name from the file system
//! is checked (no `/`, NUL, `.` or `..`): whatever the guest wrote, nothing is written
//! outside the target, and a symlink already there (or one extracted a moment ago) is never
//! followed. Links are extracted as links, with their target as stored.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use serde::Serialize;

use crate::{Entry, EntryKind, Error, FileSystem, Result};

/// How to extract.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtractOptions {
    /// Replace files and links that already exist (a directory is never replaced).
    pub overwrite: bool,
    /// Give files their recorded owner and group (needs root).
    pub owners: bool,
}

/// What an extraction wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExtractReport {
    /// Regular files written.
    pub files: u64,
    /// Directories created or entered.
    pub dirs: u64,
    /// Symbolic links made.
    pub links: u64,
    /// Of the files, those made as hard links to one written before.
    pub hard_links: u64,
    /// FIFOs and device nodes made.
    pub specials: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
    /// What was not written, and why (existing without overwrite, special files).
    pub skipped: Vec<String>,
}

fn write_err(what: &[u8], e: impl Into<std::io::Error>) -> Error {
    Error::Write {
        what: String::from_utf8_lossy(what).into_owned(),
        source: e.into(),
    }
}

/// A name read from the file system, fit to be created in a directory.
fn checked_name(entry: &Entry) -> Result<&[u8]> {
    let name = entry
        .raw_path()
        .rsplit(|b| *b == b'/')
        .next()
        .unwrap_or_default();
    if name.is_empty() || name == b"." || name == b".." || name.contains(&0) {
        return Err(Error::corrupt(
            entry.path.clone(),
            "the file system names an entry that cannot be a file name",
        ));
    }
    Ok(name)
}

/// Extracts each of `paths` (absolute inside the file system) into the existing directory
/// `to`, under its own name: `/etc/hosts` becomes `TO/hosts`, `/etc` becomes `TO/etc/...`,
/// and `/` puts the whole file system's contents in `TO`.
pub fn extract(
    fs: &FileSystem,
    paths: &[String],
    to: &Path,
    opts: ExtractOptions,
) -> Result<ExtractReport> {
    extract_in(fs, paths, to, false, opts)
}

/// Extracts each of `paths` back where it was under `root` (a file item's protected
/// directory): `/a/b/c` is written into `ROOT/a/b`. Missing parent directories are made
/// (with the point's modes and times); each is entered with `O_NOFOLLOW`, so a link that
/// took the place of a directory since the backup is never followed: that path is skipped
/// and reported.
pub fn extract_original(
    fs: &FileSystem,
    paths: &[String],
    root: &Path,
    opts: ExtractOptions,
) -> Result<ExtractReport> {
    extract_in(fs, paths, root, true, opts)
}

/// Files of hard-link groups already written, open, so the next member links to them.
type Links = std::collections::HashMap<u64, std::fs::File>;

/// Most hard-link groups kept open at once; past that, members are written as copies.
const MAX_OPEN_LINKS: usize = 1024;

/// [`extract`], or with `original` [`extract_original`].
fn extract_in(
    fs: &FileSystem,
    paths: &[String],
    to: &Path,
    original: bool,
    opts: ExtractOptions,
) -> Result<ExtractReport> {
    let target = rustix::fs::open(
        to,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| write_err(to.as_os_str().as_bytes(), e))?;
    // Look every path up before writing anything: a typo fails the whole request cleanly.
    let entries = paths
        .iter()
        .map(|p| fs.entry(p))
        .collect::<Result<Vec<_>>>()?;
    let fillers = fs.concurrent_reads();
    if fillers <= 1 {
        let mut walk = Walk::new(fs, opts, None);
        walk.all(&target, &entries, original)?;
        return Ok(walk.report);
    }
    // The walk makes every directory, link and empty file in order on this thread; the
    // contents of files are read and written by `fillers` threads meanwhile. A directory's
    // times are still set after its last entry was made: filling a file does not touch them.
    let (jobs, queue) = crossbeam_channel::bounded::<Fill>(fillers * 2);
    let failed = Failed::default();
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..fillers)
            .map(|_| {
                let queue = queue.clone();
                let failed = &failed;
                s.spawn(move || filler(&queue, opts, failed))
            })
            .collect();
        drop(queue);
        let mut walk = Walk::new(
            fs,
            opts,
            Some(Fillers {
                jobs,
                failed: &failed,
            }),
        );
        let walked = walk.all(&target, &entries, original);
        walk.fillers = None;
        let mut report = walk.report;
        for t in threads {
            let (bytes, skipped) = t.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            report.bytes += bytes;
            report.skipped.extend(skipped);
        }
        // A filler's error is the cause; the walk only stopped because of it.
        if let Some(e) = failed
            .error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(e);
        }
        walked.map(|()| report)
    })
}

/// A file made by the walk, for a filler to write its contents into.
struct Fill {
    file: std::fs::File,
    contents: Box<dyn std::io::Read + Send>,
    entry: Entry,
}

/// The first error of a filler; the walk stops at its next file once there is one.
#[derive(Default)]
struct Failed {
    error: std::sync::Mutex<Option<Error>>,
    any: std::sync::atomic::AtomicBool,
}

/// Where the walk hands files to the fillers.
struct Fillers<'a> {
    jobs: crossbeam_channel::Sender<Fill>,
    failed: &'a Failed,
}

/// Writes the contents of the files it is handed until the walk is over; after an error it
/// records it and only drains the queue. Returns the bytes it wrote and what it skipped.
fn filler(
    queue: &crossbeam_channel::Receiver<Fill>,
    opts: ExtractOptions,
    failed: &Failed,
) -> (u64, Vec<String>) {
    let mut buf = Vec::new();
    let (mut bytes, mut skipped) = (0, Vec::new());
    for mut job in queue {
        if failed.any.load(std::sync::atomic::Ordering::Relaxed) {
            continue;
        }
        match fill(
            &job.file,
            &mut job.contents,
            &job.entry,
            opts,
            &mut buf,
            &mut skipped,
        ) {
            Ok(n) => bytes += n,
            Err(e) => {
                let mut first = failed.error.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert(e);
                failed.any.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    (bytes, skipped)
}

/// Writes a new file's contents (leaving holes where whole blocks are zero), then its
/// length, owner, mode, times and extended attributes; returns the bytes of contents.
fn fill(
    file: &std::fs::File,
    contents: &mut dyn std::io::Read,
    e: &Entry,
    opts: ExtractOptions,
    buf: &mut Vec<u8>,
    skipped: &mut Vec<String>,
) -> Result<u64> {
    let mut sparse = Sparse { file, pos: 0 };
    let n = crate::fs::copy_file(e.raw_path(), contents, &mut sparse, buf)?;
    file.set_len(sparse.pos)
        .map_err(|err| write_err(e.raw_path(), err))?;
    set_meta_fd(file, e, opts).map_err(|err| write_err(e.raw_path(), err))?;
    set_xattrs(file, e, skipped);
    Ok(n)
}

/// An extraction's walk: what it reads, how it writes, and what it wrote so far.
struct Walk<'a> {
    fs: &'a FileSystem,
    opts: ExtractOptions,
    report: ExtractReport,
    links: Links,
    /// For the contents of files the walk writes itself.
    buf: Vec<u8>,
    /// Where files go to be filled by other threads, when the file system allows it.
    fillers: Option<Fillers<'a>>,
}

impl<'a> Walk<'a> {
    fn new(fs: &'a FileSystem, opts: ExtractOptions, fillers: Option<Fillers<'a>>) -> Self {
        Walk {
            fs,
            opts,
            report: ExtractReport::default(),
            links: Links::new(),
            buf: Vec::new(),
            fillers,
        }
    }

    /// Extracts `entries` into `target` (or, with `original`, each into its old directory
    /// below `target`).
    fn all(&mut self, target: &OwnedFd, entries: &[Entry], original: bool) -> Result<()> {
        for e in entries {
            if e.raw_path() == b"/" {
                for child in self.fs.list_raw(b"/")? {
                    self.entry(target, &child)?;
                }
                set_meta_fd(target, e, self.opts).map_err(|err| write_err(b"/", err))?;
            } else if !original {
                self.entry(target, e)?;
            } else if let Some(dir) =
                Self::enter_parents(self.fs, target, e, self.opts, &mut self.report)?
            {
                self.entry(&dir, e)?;
            }
        }
        Ok(())
    }

    /// The directory `e` was in, below `root`: each component entered with `O_NOFOLLOW`, made
    /// (with the point's metadata) when missing. `None`, with the reason in the report, when a
    /// component is no longer a directory.
    fn enter_parents(
        fs: &FileSystem,
        root: &OwnedFd,
        e: &Entry,
        opts: ExtractOptions,
        report: &mut ExtractReport,
    ) -> Result<Option<OwnedFd>> {
        let raw = e.raw_path();
        let parent = &raw[..raw.iter().rposition(|b| *b == b'/').unwrap_or(0)];
        let mut dir = rustix::io::dup(root).map_err(|err| write_err(raw, err))?;
        let mut so_far = Vec::new();
        let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
        for comp in parent.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            so_far.push(b'/');
            so_far.extend_from_slice(comp);
            let name = OsStr::from_bytes(comp);
            dir = match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => {
                    rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))
                        .map_err(|err| write_err(&so_far, err))?;
                    let fd = rustix::fs::openat(&dir, name, flags, Mode::empty())
                        .map_err(|err| write_err(&so_far, err))?;
                    report.dirs += 1;
                    if let Ok(meta) = fs.entry_raw(&so_far) {
                        set_meta_fd(&fd, &meta, opts).map_err(|err| write_err(&so_far, err))?;
                    }
                    fd
                }
                Err(_) => {
                    report.skipped.push(format!(
                    "{}: {} is no longer a directory there (a link or a file took its place; nothing is written through it)",
                    e.path,
                    String::from_utf8_lossy(&so_far)
                ));
                    return Ok(None);
                }
            };
        }
        Ok(Some(dir))
    }

    /// Extracts `e` into `dir`, and all below it.
    fn entry(&mut self, dir: &OwnedFd, e: &Entry) -> Result<()> {
        let (fs, opts) = (self.fs, self.opts);
        let report = &mut self.report;
        let name = OsStr::from_bytes(checked_name(e)?);
        let existing = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok();
        let existing_dir = existing.as_ref().is_some_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
        });
        match e.kind {
            EntryKind::Dir => {
                if existing.is_some() && !existing_dir {
                    if !opts.overwrite {
                        report
                            .skipped
                            .push(format!("{}: exists and is not a directory", e.path));
                        return Ok(());
                    }
                    rustix::fs::unlinkat(dir, name, AtFlags::empty())
                        .map_err(|err| write_err(e.raw_path(), err))?;
                }
                if !existing_dir {
                    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
                        .map_err(|err| write_err(e.raw_path(), err))?;
                }
                let sub = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|err| write_err(e.raw_path(), err))?;
                report.dirs += 1;
                for child in fs.list_raw(e.raw_path())? {
                    self.entry(&sub, &child)?;
                }
                // The directory's own mode and times last: writing into it changed its times.
                set_meta_fd(&sub, e, opts).map_err(|err| write_err(e.raw_path(), err))?;
                set_xattrs(&sub, e, &mut self.report.skipped);
            }
            EntryKind::File | EntryKind::Symlink => {
                if let Some(_st) = &existing {
                    if existing_dir || !opts.overwrite {
                        report.skipped.push(format!(
                            "{}: exists{}",
                            e.path,
                            if existing_dir {
                                " as a directory"
                            } else {
                                " (--overwrite replaces it)"
                            }
                        ));
                        return Ok(());
                    }
                    // Replaced, never written through: whatever is there goes first.
                    rustix::fs::unlinkat(dir, name, AtFlags::empty())
                        .map_err(|err| write_err(e.raw_path(), err))?;
                }
                if e.kind == EntryKind::Symlink {
                    rustix::fs::symlinkat(OsStr::from_bytes(&e.raw_target), dir, name)
                        .map_err(|err| write_err(e.raw_path(), err))?;
                    if opts.owners {
                        rustix::fs::chownat(
                            dir,
                            name,
                            Some(rustix::fs::Uid::from_raw(e.uid)),
                            Some(rustix::fs::Gid::from_raw(e.gid)),
                            AtFlags::SYMLINK_NOFOLLOW,
                        )
                        .map_err(|err| write_err(e.raw_path(), err))?;
                    }
                    rustix::fs::utimensat(dir, name, &times(e), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|err| write_err(e.raw_path(), err))?;
                    report.links += 1;
                } else {
                    // Another member of its hard-link group was written: link to it (through
                    // the open file, never through a path someone could change meanwhile).
                    if let Some(first) = e.link_group.and_then(|g| self.links.get(&g)) {
                        let via = format!("/proc/self/fd/{}", first.as_raw_fd());
                        if rustix::fs::linkat(
                            rustix::fs::CWD,
                            via.as_str(),
                            dir,
                            name,
                            AtFlags::SYMLINK_FOLLOW,
                        )
                        .is_ok()
                        {
                            report.files += 1;
                            report.hard_links += 1;
                            return Ok(());
                        }
                    }
                    let fd = rustix::fs::openat(
                        dir,
                        name,
                        OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::WRONLY
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map_err(|err| write_err(e.raw_path(), err))?;
                    let file = std::fs::File::from(fd);
                    report.files += 1;
                    if let Some(g) = e.link_group
                        && self.links.len() < MAX_OPEN_LINKS
                    {
                        let kept = file
                            .try_clone()
                            .map_err(|err| write_err(e.raw_path(), err))?;
                        self.links.insert(g, kept);
                    }
                    match &self.fillers {
                        Some(f) => {
                            if f.failed.any.load(std::sync::atomic::Ordering::Relaxed) {
                                return Err(Error::Invalid("stopped: a file failed".into()));
                            }
                            let contents =
                                fs.sendable_reader_raw(e.raw_path())?.ok_or_else(|| {
                                    Error::Invalid(format!(
                                        "{}: no reader for another thread",
                                        e.path
                                    ))
                                })?;
                            let job = Fill {
                                file,
                                contents: Box::new(contents),
                                entry: e.clone(),
                            };
                            if f.jobs.send(job).is_err() {
                                return Err(Error::Invalid("stopped: the fillers are gone".into()));
                            }
                        }
                        None => {
                            let mut contents = fs.reader_raw(e.raw_path())?;
                            let n = fill(
                                &file,
                                &mut contents,
                                e,
                                opts,
                                &mut self.buf,
                                &mut self.report.skipped,
                            )?;
                            self.report.bytes += n;
                        }
                    }
                }
            }
            EntryKind::Fifo | EntryKind::BlockDevice | EntryKind::CharDevice => {
                if e.kind != EntryKind::Fifo && !opts.owners {
                    report.skipped.push(format!(
                        "{}: a device node is made only when kura runs as root",
                        e.path
                    ));
                    return Ok(());
                }
                if existing.is_some() {
                    if existing_dir || !opts.overwrite {
                        report.skipped.push(format!("{}: exists", e.path));
                        return Ok(());
                    }
                    rustix::fs::unlinkat(dir, name, AtFlags::empty())
                        .map_err(|err| write_err(e.raw_path(), err))?;
                }
                let kind = match e.kind {
                    EntryKind::Fifo => rustix::fs::FileType::Fifo,
                    EntryKind::BlockDevice => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::CharacterDevice,
                };
                rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(0o600), e.extra.rdev)
                    .map_err(|err| write_err(e.raw_path(), err))?;
                // Its metadata through a handle on the node itself (O_PATH opens no device).
                let node = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|err| write_err(e.raw_path(), err))?;
                let via = format!("/proc/self/fd/{}", node.as_raw_fd());
                (|| -> rustix::io::Result<()> {
                    if opts.owners {
                        rustix::fs::chown(
                            via.as_str(),
                            Some(rustix::fs::Uid::from_raw(e.uid)),
                            Some(rustix::fs::Gid::from_raw(e.gid)),
                        )?;
                    }
                    rustix::fs::chmod(via.as_str(), Mode::from_raw_mode(e.mode))?;
                    rustix::fs::utimensat(
                        rustix::fs::CWD,
                        via.as_str(),
                        &times(e),
                        AtFlags::empty(),
                    )
                })()
                .map_err(|err| write_err(e.raw_path(), err))?;
                report.specials += 1;
            }
            EntryKind::Socket => report.skipped.push(format!(
                "{}: a socket is not recreated (its program makes it)",
                e.path
            )),
        }
        Ok(())
    }
}

/// Writes a file's contents leaving holes where whole blocks are zero (a sparse file stays
/// sparse; the length is set at the end).
struct Sparse<'f> {
    file: &'f std::fs::File,
    pos: u64,
}

impl std::io::Write for Sparse<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        for block in buf.chunks(64 << 10) {
            if !block.iter().all(|b| *b == 0) {
                self.file.write_all_at(block, self.pos)?;
            }
            self.pos += block.len() as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Extended attributes (ACLs among them) as recorded; one that cannot be set here is
/// reported, not fatal.
fn set_xattrs(fd: impl AsFd, e: &Entry, skipped: &mut Vec<String>) {
    for (name, value) in &e.extra.xattrs {
        let Ok(c) = std::ffi::CString::new(name.clone()) else {
            continue;
        };
        if let Err(err) =
            rustix::fs::fsetxattr(&fd, c.as_c_str(), value, rustix::fs::XattrFlags::empty())
        {
            skipped.push(format!(
                "{}: extended attribute {} not restored: {err}",
                e.path,
                String::from_utf8_lossy(name)
            ));
        }
    }
}

fn times(e: &Entry) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: e.atime,
            tv_nsec: e.atime_nsec.into(),
        },
        last_modification: Timespec {
            tv_sec: e.mtime,
            tv_nsec: e.mtime_nsec.into(),
        },
    }
}

/// Owner, mode and times of an open file or directory, as recorded.
fn set_meta_fd(fd: impl AsFd, e: &Entry, opts: ExtractOptions) -> rustix::io::Result<()> {
    if opts.owners {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(e.uid)),
            Some(rustix::fs::Gid::from_raw(e.gid)),
        )?;
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(e.mode))?;
    rustix::fs::futimens(&fd, &times(e))
}
