//! A directory of a file system as an archive stream (a browser's folder download): tar,
//! or zip for those whose tools open only that.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use crate::{Entry, EntryKind, Error, FileSystem, Result};

/// The kinds of archive a folder downloads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archive {
    /// POSIX tar (GNU headers): names as bytes, owners, modes, symlinks.
    Tar,
    /// Zip, stored (not compressed), streamed with data descriptors: modes, times and
    /// symlinks; names that are not UTF-8 are written with U+FFFD for their bad bytes.
    Zip,
}

impl Archive {
    /// Parses `tar` or `zip`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tar" => Some(Archive::Tar),
            "zip" => Some(Archive::Zip),
            _ => None,
        }
    }

    /// The file name extension and the media type.
    pub fn extension_and_type(self) -> (&'static str, &'static str) {
        match self {
            Archive::Tar => ("tar", "application/x-tar"),
            Archive::Zip => ("zip", "application/zip"),
        }
    }
}

/// Writes the directory (or file) at `path` and everything under it to `out` as an archive
/// whose names start with the entry's own name; returns the bytes of file contents.
/// Special files are left out. A failure mid-way leaves the archive without its end (tar's
/// end marker, zip's central directory), so a reader sees it is incomplete.
pub fn write_archive(fs: &FileSystem, path: &str, kind: Archive, out: impl Write) -> Result<u64> {
    let top = fs.entry(path)?;
    let base: &[u8] = if top.raw_path() == b"/" {
        b""
    } else {
        top.raw_path()
            .rsplit(|c| *c == b'/')
            .next()
            .unwrap_or_default()
    };
    let end = |e: std::io::Error| Error::Write {
        what: "the archive".into(),
        source: e,
    };
    let mut total = 0;
    match kind {
        Archive::Tar => {
            let mut b = tar::Builder::new(out);
            walk(fs, &top, base.to_vec(), &mut |e, name| {
                tar_entry(fs, &mut b, e, name, &mut total)
            })?;
            b.finish().map_err(end)?;
        }
        Archive::Zip => {
            let mut z = zip::ZipWriter::new_stream(out);
            walk(fs, &top, base.to_vec(), &mut |e, name| {
                zip_entry(fs, &mut z, e, name, &mut total)
            })?;
            z.finish().map_err(|e| end(e.into()))?;
        }
    }
    Ok(total)
}

/// Calls `visit` with every entry from `e` down, each with its name in the archive
/// (`name`, then `name/child`...; the top directory of a whole file system has none).
fn walk(
    fs: &FileSystem,
    e: &Entry,
    name: Vec<u8>,
    visit: &mut dyn FnMut(&Entry, &[u8]) -> Result<()>,
) -> Result<()> {
    visit(e, &name)?;
    if e.kind == EntryKind::Dir {
        for child in fs.list_raw(e.raw_path())? {
            let leaf = child
                .raw_path()
                .rsplit(|c| *c == b'/')
                .next()
                .unwrap_or_default();
            let mut n = name.clone();
            if !n.is_empty() {
                n.push(b'/');
            }
            n.extend_from_slice(leaf);
            walk(fs, &child, n, visit)?;
        }
    }
    Ok(())
}

fn write_err(e: &Entry) -> impl Fn(std::io::Error) -> Error + '_ {
    |source| Error::Write {
        what: e.path.clone(),
        source,
    }
}

fn tar_header(e: &Entry, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(e.mode);
    h.set_uid(e.uid.into());
    h.set_gid(e.gid.into());
    h.set_mtime(e.mtime.max(0) as u64);
    h
}

fn tar_entry<W: Write>(
    fs: &FileSystem,
    b: &mut tar::Builder<W>,
    e: &Entry,
    name: &[u8],
    total: &mut u64,
) -> Result<()> {
    let at = OsStr::from_bytes(name);
    match e.kind {
        EntryKind::Dir if !name.is_empty() => {
            let mut h = tar_header(e, tar::EntryType::Directory, 0);
            b.append_data(&mut h, at, std::io::empty())
                .map_err(write_err(e))?;
        }
        EntryKind::File => {
            let mut h = tar_header(e, tar::EntryType::Regular, e.size);
            let r = fs.reader_raw(e.raw_path())?;
            b.append_data(&mut h, at, r).map_err(write_err(e))?;
            *total += e.size;
        }
        EntryKind::Symlink => {
            let mut h = tar_header(e, tar::EntryType::Symlink, 0);
            b.append_link(&mut h, at, OsStr::from_bytes(&e.raw_target))
                .map_err(write_err(e))?;
        }
        _ => {}
    }
    Ok(())
}

fn zip_entry<W: Write>(
    fs: &FileSystem,
    z: &mut zip::ZipWriter<zip::write::StreamWriter<W>>,
    e: &Entry,
    name: &[u8],
    total: &mut u64,
) -> Result<()> {
    let zerr = |err: zip::result::ZipError| write_err(e)(err.into());
    // Zip times are local civil times from 1980 to 2107; kura writes UTC, and leaves a
    // time outside that range at the format's default.
    let mtime = jiff::Timestamp::from_second(e.mtime)
        .ok()
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).datetime())
        .and_then(|c| zip::DateTime::try_from(c).ok())
        .unwrap_or_default();
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(e.mode & 0o7777)
        .last_modified_time(mtime)
        .large_file(e.size >= u64::from(u32::MAX));
    let name = String::from_utf8_lossy(name);
    match e.kind {
        EntryKind::Dir if !name.is_empty() => z.add_directory(name, options).map_err(zerr)?,
        EntryKind::File => {
            z.start_file(name, options).map_err(zerr)?;
            let mut r = fs.reader_raw(e.raw_path())?;
            std::io::copy(&mut r, z).map_err(write_err(e))?;
            *total += e.size;
        }
        EntryKind::Symlink => z
            .add_symlink(name, String::from_utf8_lossy(&e.raw_target), options)
            .map_err(zerr)?,
        _ => {}
    }
    Ok(())
}
