//! A directory of a file system as a tar stream (a browser's folder download).

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use crate::{Entry, EntryKind, Error, FileSystem, Result};

/// Writes the directory (or file) at `path` and everything under it to `out` as a tar
/// archive whose names start with the entry's own name; returns the bytes of file contents.
/// Special files are left out. A failure mid-way leaves the archive without its end
/// marker, so a reader sees it is incomplete.
pub fn write_tar(fs: &FileSystem, path: &str, out: impl Write) -> Result<u64> {
    let top = fs.entry(path)?;
    let mut b = tar::Builder::new(out);
    let base: &[u8] = if top.raw_path() == b"/" {
        b""
    } else {
        top.raw_path()
            .rsplit(|c| *c == b'/')
            .next()
            .unwrap_or_default()
    };
    let mut total = 0;
    add(fs, &mut b, &top, base.to_vec(), &mut total)?;
    b.finish().map_err(|e| Error::Write {
        what: "the archive".into(),
        source: e,
    })?;
    Ok(total)
}

fn header(e: &Entry, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(e.mode);
    h.set_uid(e.uid.into());
    h.set_gid(e.gid.into());
    h.set_mtime(e.mtime.max(0) as u64);
    h
}

fn add<W: Write>(
    fs: &FileSystem,
    b: &mut tar::Builder<W>,
    e: &Entry,
    name: Vec<u8>,
    total: &mut u64,
) -> Result<()> {
    let werr = |source: std::io::Error| Error::Write {
        what: e.path.clone(),
        source,
    };
    let at = OsStr::from_bytes(&name);
    match e.kind {
        EntryKind::Dir => {
            if !name.is_empty() {
                let mut h = header(e, tar::EntryType::Directory, 0);
                b.append_data(&mut h, at, std::io::empty()).map_err(werr)?;
            }
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
                add(fs, b, &child, n, total)?;
            }
        }
        EntryKind::File => {
            let mut h = header(e, tar::EntryType::Regular, e.size);
            let r = fs.reader_raw(e.raw_path())?;
            b.append_data(&mut h, at, r).map_err(werr)?;
            *total += e.size;
        }
        EntryKind::Symlink => {
            let mut h = header(e, tar::EntryType::Symlink, 0);
            b.append_link(&mut h, at, OsStr::from_bytes(&e.raw_target))
                .map_err(werr)?;
        }
        _ => {}
    }
    Ok(())
}
