//! Writing files of a recovery point into a directory, safely.
//!
//! Every file is created relative to an open directory handle with `O_NOFOLLOW`, each
//! directory is entered with `O_DIRECTORY | O_NOFOLLOW`, and each name from the file system
//! is checked (no `/`, NUL, `.` or `..`): whatever the guest wrote, nothing is written
//! outside the target, and a symlink already there (or one extracted a moment ago) is never
//! followed. Links are extracted as links, with their target as stored.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
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
    let target = rustix::fs::open(
        to,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| write_err(to.as_os_str().as_bytes(), e))?;
    let mut report = ExtractReport::default();
    // Look every path up before writing anything: a typo fails the whole request cleanly.
    let entries = paths
        .iter()
        .map(|p| fs.entry(p))
        .collect::<Result<Vec<_>>>()?;
    for e in &entries {
        if e.raw_path() == b"/" {
            for child in fs.list_raw(b"/")? {
                write_entry(fs, &target, &child, opts, &mut report)?;
            }
            set_meta_fd(&target, e, opts).map_err(|err| write_err(b"/", err))?;
        } else {
            write_entry(fs, &target, e, opts, &mut report)?;
        }
    }
    Ok(report)
}

fn write_entry(
    fs: &FileSystem,
    dir: &OwnedFd,
    e: &Entry,
    opts: ExtractOptions,
    report: &mut ExtractReport,
) -> Result<()> {
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
                write_entry(fs, &sub, &child, opts, report)?;
            }
            // The directory's own mode and times last: writing into it changed its times.
            set_meta_fd(&sub, e, opts).map_err(|err| write_err(e.raw_path(), err))?;
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
                let mut file = std::fs::File::from(fd);
                report.bytes += fs.copy_raw(e.raw_path(), &mut file)?;
                set_meta_fd(&file, e, opts).map_err(|err| write_err(e.raw_path(), err))?;
                report.files += 1;
            }
        }
        _ => report.skipped.push(format!(
            "{}: a special file ({:?}) is not extracted",
            e.path, e.kind
        )),
    }
    Ok(())
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
