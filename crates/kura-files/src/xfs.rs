//! XFS volumes (v4 and v5, the default of RHEL-family installs), read-only, through the
//! lamxfs crate.
//!
//! lamxfs walks directories, extent lists and B+trees, reads file contents and symlinks,
//! and replays a log that still holds committed changes (what a crash-consistent point of a
//! running VM has) in memory. It gives each inode's mode and size only, so the owner, link
//! count, times and device number are read here from the inode's core on disk. An inode
//! whose on-disk core does not match what lamxfs read (it changed only in the log) is shown
//! with lamxfs's mode and size and an unknown owner and time (0), never with another
//! inode's.

use std::cell::RefCell;
use std::rc::Rc;

use crate::{Entry, EntryKind, Error, ReadAt, Result};

/// The volume, shared by lamxfs and the inode-core reads of this module.
#[derive(Clone)]
struct Disk {
    disk: Rc<RefCell<Box<dyn ReadAt>>>,
    start: u64,
    len: u64,
}

impl Disk {
    fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "a read of {} bytes at {offset} runs past the volume's {} bytes",
                    buf.len(),
                    self.len
                ),
            ));
        }
        self.disk.borrow_mut().read_at(buf, self.start + offset)
    }
}

impl lamxfs::BlockRead for Disk {
    type Error = std::io::Error;

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.read(offset, buf)
    }
}

/// Where the inodes are: the superblock fields that turn an inode number into a byte offset.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    blocksize: u64,
    agblocks: u64,
    agcount: u64,
    inodesize: usize,
    inopblog: u32,
    agblklog: u32,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Geometry {
    fn parse(sb: &[u8; 512]) -> Option<Geometry> {
        let g = Geometry {
            blocksize: u64::from(be32(sb, 4)),
            agblocks: u64::from(be32(sb, 84)),
            agcount: u64::from(be32(sb, 88)),
            inodesize: usize::from(be16(sb, 104)),
            inopblog: u32::from(sb[123]),
            agblklog: u32::from(sb[124]),
        };
        // lamxfs has checked the superblock; these are what this module relies on.
        let sane = (512..=65536).contains(&g.blocksize)
            && (256..=2048).contains(&g.inodesize)
            && g.inopblog + g.agblklog < 64
            && g.agblocks > 0
            && g.agcount > 0;
        sane.then_some(g)
    }

    /// The byte offset of inode `ino` in the volume, if it lies in an allocation group.
    fn offset(&self, ino: u64) -> Option<u64> {
        let agino_bits = self.agblklog + self.inopblog;
        let agno = ino >> agino_bits;
        let agino = ino & ((1u64 << agino_bits) - 1);
        let agbno = agino >> self.inopblog;
        let index = agino & ((1u64 << self.inopblog) - 1);
        if agno >= self.agcount || agbno >= self.agblocks {
            return None;
        }
        (agno * self.agblocks + agbno)
            .checked_mul(self.blocksize)?
            .checked_add(index * self.inodesize as u64)
    }
}

/// What an inode's core gives beyond lamxfs's mode and size.
#[derive(Debug, Clone, Copy, Default)]
struct Core {
    uid: u32,
    gid: u32,
    nlink: u32,
    atime: (i64, u32),
    mtime: (i64, u32),
    rdev: u64,
}

/// Nanoseconds since 1901-12-13T20:45:52Z (bigtime) or seconds and nanoseconds (legacy).
fn timestamp(raw: u64, bigtime: bool) -> (i64, u32) {
    if bigtime {
        let secs = (raw / 1_000_000_000) as i64 - (1i64 << 31);
        (secs, (raw % 1_000_000_000) as u32)
    } else {
        let secs = (raw >> 32) as u32 as i32;
        let nsec = (raw as u32).min(999_999_999);
        (i64::from(secs), nsec)
    }
}

/// The core of inode `ino` as read from `raw`, when it is that inode with mode `mode`.
fn parse_core(raw: &[u8], ino: u64, mode: u32) -> Option<Core> {
    const DIFLAG2_BIGTIME: u64 = 1 << 3;
    if raw.len() < 184 || &raw[0..2] != b"IN" || u32::from(be16(raw, 2)) != mode {
        return None;
    }
    let version = raw[4];
    if version >= 3 && be64(raw, 152) != ino {
        return None;
    }
    let bigtime = version >= 3 && be64(raw, 120) & DIFLAG2_BIGTIME != 0;
    // Device nodes keep their number in the data fork, in Linux's old 32-bit encoding.
    let fork = if version >= 3 { 176 } else { 100 };
    let rdev = if matches!(mode & 0o170000, 0o020000 | 0o060000) && raw[5] == 0 {
        let dev = be32(raw, fork);
        let (major, minor) = (u64::from(dev >> 18), u64::from(dev & 0x3ffff));
        // glibc's makedev.
        ((major & 0xffff_f000) << 32)
            | ((major & 0xfff) << 8)
            | ((minor & 0xffff_ff00) << 12)
            | (minor & 0xff)
    } else {
        0
    };
    Some(Core {
        uid: be32(raw, 8),
        gid: be32(raw, 12),
        nlink: if version == 1 {
            u32::from(be16(raw, 6))
        } else {
            be32(raw, 16)
        },
        atime: timestamp(be64(raw, 32), bigtime),
        mtime: timestamp(be64(raw, 40), bigtime),
        rdev,
    })
}

fn error(what: &str, e: lamxfs::Error) -> Error {
    use lamxfs::Error as E;
    match e {
        E::NotFound {
            component: "not_a_directory",
        } => Error::Invalid(format!("{what}: a path component is not a directory")),
        E::NotFound { .. } => Error::NotFound(format!("{what}: no such file or directory")),
        E::NotARegularFile => Error::Invalid(format!("{what}: not a regular file")),
        E::UnsupportedFeature(f) => Error::Unsupported(format!(
            "{what}: this XFS uses a feature kura cannot read ({f}); restore the disk instead"
        )),
        E::BadSuperblock(r) => Error::Unsupported(format!(
            "{what}: kura cannot read this XFS superblock ({}); restore the disk instead",
            lamxfs::Error::BadSuperblock(r).token()
        )),
        E::Io { offset, .. } => Error::corrupt(
            what,
            format!(
                "a read at byte {offset} of the volume failed (it lies outside it, or the point could not be read)"
            ),
        ),
        e => Error::corrupt(what, format!("damaged XFS metadata ({})", e.token())),
    }
}

fn kind_of(mode: u32) -> EntryKind {
    match mode & 0o170000 {
        0o040000 => EntryKind::Dir,
        0o120000 => EntryKind::Symlink,
        0o060000 => EntryKind::BlockDevice,
        0o020000 => EntryKind::CharDevice,
        0o010000 => EntryKind::Fifo,
        0o140000 => EntryKind::Socket,
        _ => EntryKind::File,
    }
}

type Fs = lamxfs::Xfs<Disk>;

/// An open XFS volume; shared by the readers of its files.
#[derive(Clone)]
pub(crate) struct Xfs {
    fs: Rc<RefCell<Fs>>,
    disk: Disk,
    geometry: Geometry,
}

impl Xfs {
    pub(crate) fn open(disk: Box<dyn ReadAt>, start: u64, len: u64, what: &str) -> Result<Xfs> {
        let disk = Disk {
            disk: Rc::new(RefCell::new(disk)),
            start,
            len,
        };
        let fs = lamxfs::Xfs::open(disk.clone(), len).map_err(|e| error(what, e))?;
        let mut sb = [0u8; 512];
        disk.read(0, &mut sb)?;
        let geometry = Geometry::parse(&sb)
            .ok_or_else(|| Error::corrupt(what, "the XFS superblock's geometry is out of range"))?;
        Ok(Xfs {
            fs: Rc::new(RefCell::new(fs)),
            disk,
            geometry,
        })
    }

    fn core(&self, ino: u64, mode: u32) -> Option<Core> {
        let at = self.geometry.offset(ino)?;
        let mut raw = vec![0u8; self.geometry.inodesize];
        self.disk.read(at, &mut raw).ok()?;
        parse_core(&raw, ino, mode)
    }

    /// The entry of inode `ino`, found at `raw` (its path).
    fn entry_of(&self, raw: &[u8], ino: u64) -> Result<Entry> {
        let what = String::from_utf8_lossy(raw).into_owned();
        let meta = self
            .fs
            .borrow_mut()
            .metadata(&lamxfs::Inode { ino })
            .map_err(|e| error(&what, e))?;
        let kind = kind_of(meta.mode());
        let core = self.core(ino, meta.mode()).unwrap_or_default();
        let target = if kind == EntryKind::Symlink {
            Some(
                self.fs
                    .borrow_mut()
                    .read_link(lamxfs::Path::new(raw))
                    .map_err(|e| error(&what, e))?,
            )
        } else {
            None
        };
        let name = raw.rsplit(|b| *b == b'/').next().unwrap_or_default();
        Ok(Entry {
            path: what,
            name: if raw == b"/" {
                "/".into()
            } else {
                String::from_utf8_lossy(name).into_owned()
            },
            kind,
            size: meta.size(),
            mode: meta.mode() & 0o7777,
            uid: core.uid,
            gid: core.gid,
            mtime: core.mtime.0,
            mtime_nsec: core.mtime.1,
            atime: core.atime.0,
            atime_nsec: core.atime.1,
            target: target
                .as_deref()
                .map(|t| String::from_utf8_lossy(t).into_owned()),
            raw_target: target.unwrap_or_default(),
            raw: raw.to_vec(),
            // Inode numbers are unique in one file system: the group of a hard link.
            link_group: (kind != EntryKind::Dir && core.nlink > 1).then_some(ino),
            extra: crate::fs::Extra {
                xattrs: Vec::new(),
                rdev: core.rdev,
            },
        })
    }

    pub(crate) fn entry_raw(&self, raw: &[u8]) -> Result<Entry> {
        let what = String::from_utf8_lossy(raw).into_owned();
        let ino = self
            .fs
            .borrow_mut()
            .resolve(lamxfs::Path::new(raw))
            .map_err(|e| error(&what, e))?;
        self.entry_of(raw, ino.ino)
    }

    pub(crate) fn list_raw(&self, raw: &[u8]) -> Result<Vec<Entry>> {
        let what = String::from_utf8_lossy(raw).into_owned();
        let dir = self.entry_raw(raw)?;
        if dir.kind != EntryKind::Dir {
            return Err(Error::Invalid(format!("{what}: not a directory")));
        }
        let names = self
            .fs
            .borrow_mut()
            .read_dir(lamxfs::Path::new(raw))
            .map_err(|e| error(&what, e))?;
        crate::fs::too_many(&what, names.len())?;
        let mut out = Vec::with_capacity(names.len());
        for e in names {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            if e.name.is_empty() || e.name.contains(&b'/') || e.name.contains(&0) {
                return Err(Error::corrupt(
                    what,
                    "the directory names an entry that cannot be a file name",
                ));
            }
            let mut child = raw.to_vec();
            if child != b"/" {
                child.push(b'/');
            }
            child.extend_from_slice(&e.name);
            out.push(self.entry_of(&child, e.inode_number)?);
        }
        out.sort_by(|a, b| a.raw.cmp(&b.raw));
        Ok(out)
    }

    pub(crate) fn reader_raw(&self, raw: &[u8]) -> Result<XfsReader> {
        let e = self.entry_raw(raw)?;
        if e.kind != EntryKind::File {
            return Err(Error::Invalid(format!("{}: not a regular file", e.path)));
        }
        let ino = self
            .fs
            .borrow_mut()
            .resolve(lamxfs::Path::new(raw))
            .map_err(|err| error(&e.path, err))?;
        Ok(XfsReader {
            xfs: self.clone(),
            ino,
            pos: 0,
            len: e.size,
        })
    }
}

/// An XFS file's contents, read at its position on each call.
pub(crate) struct XfsReader {
    xfs: Xfs,
    ino: lamxfs::Inode,
    pos: u64,
    len: u64,
}

impl std::io::Read for XfsReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.len - self.pos) as usize;
        let n = self
            .xfs
            .fs
            .borrow_mut()
            .read_file_at(&self.ino, self.pos, &mut buf[..want])
            .map_err(|e| {
                std::io::Error::other(format!("reading XFS inode {}: {}", self.ino.ino, e.token()))
            })?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "XFS inode {} ends at byte {} of its {} bytes",
                    self.ino.ino, self.pos, self.len
                ),
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_decode_in_both_encodings() {
        // Legacy: signed seconds, then nanoseconds.
        assert_eq!(
            timestamp((1_709_210_096u64 << 32) | 500_000_000, false),
            (1_709_210_096, 500_000_000)
        );
        assert_eq!(timestamp((-1i32 as u32 as u64) << 32, false), (-1, 0));
        // bigtime: nanoseconds since 2^31 seconds before the epoch.
        let raw = ((1u64 << 31) + 1_709_210_096) * 1_000_000_000 + 7;
        assert_eq!(timestamp(raw, true), (1_709_210_096, 7));
    }

    #[test]
    fn an_inode_number_outside_the_groups_has_no_offset() {
        let g = Geometry {
            blocksize: 4096,
            agblocks: 1000,
            agcount: 4,
            inodesize: 512,
            inopblog: 3,
            agblklog: 10,
        };
        assert_eq!(g.offset(0), Some(0));
        assert_eq!(
            g.offset((1 << 13) | (2 << 3) | 1),
            Some((1000 + 2) * 4096 + 512)
        );
        assert_eq!(g.offset(4 << 13), None, "group 4 of 4");
        assert_eq!(g.offset(1000 << 3), None, "block 1000 of 1000");
        assert_eq!(g.offset(u64::MAX), None);
    }

    #[test]
    fn a_core_that_is_not_the_inode_asked_for_is_not_used() {
        let mut raw = vec![0u8; 512];
        raw[0..2].copy_from_slice(b"IN");
        raw[2..4].copy_from_slice(&0o100644u16.to_be_bytes());
        raw[4] = 3;
        raw[8..12].copy_from_slice(&1000u32.to_be_bytes());
        raw[16..20].copy_from_slice(&2u32.to_be_bytes());
        raw[152..160].copy_from_slice(&99u64.to_be_bytes());
        let c = parse_core(&raw, 99, 0o100644).unwrap();
        assert_eq!((c.uid, c.nlink), (1000, 2));
        assert!(
            parse_core(&raw, 98, 0o100644).is_none(),
            "another inode's number"
        );
        assert!(parse_core(&raw, 99, 0o100600).is_none(), "another mode");
        raw[0] = b'X';
        assert!(parse_core(&raw, 99, 0o100644).is_none(), "no magic");
    }
}
