//! FAT12/16/32 volumes (EFI system partitions, USB sticks) through the fatfs crate, read-only.
//!
//! FAT has no owners, modes or links: entries get 0:0, 0755 for directories and 0644 for
//! files (0444 when read-only), and its timestamps (local time without a zone) are taken as
//! UTC.

use std::cell::RefCell;
use std::io::{Read, Seek, SeekFrom, Write};
use std::rc::Rc;

use crate::{Entry, EntryKind, Error, ReadAt, Result};

/// A volume as fatfs wants it: `Read + Write + Seek`, where every write is refused.
pub(crate) struct FatDisk {
    disk: Box<dyn ReadAt>,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for FatDisk {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.disk.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for FatDisk {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "a recovery point is read-only",
        ))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for FatDisk {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

type Fs = fatfs::FileSystem<FatDisk>;

/// An open FAT volume; shared by the readers of its files.
#[derive(Clone)]
pub(crate) struct Fat(Rc<RefCell<Fs>>);

fn io(what: &str, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::NotFound(format!("{what}: no such file or directory"))
        }
        _ => Error::corrupt(what, e.to_string()),
    }
}

fn unix_seconds(d: fatfs::DateTime) -> i64 {
    jiff::civil::DateTime::new(
        d.date.year as i16,
        d.date.month as i8,
        d.date.day as i8,
        d.time.hour as i8,
        d.time.min as i8,
        d.time.sec as i8,
        0,
    )
    .ok()
    .and_then(|t| t.to_zoned(jiff::tz::TimeZone::UTC).ok())
    .map(|z| z.timestamp().as_second())
    .unwrap_or(0)
}

impl Fat {
    pub(crate) fn open(disk: Box<dyn ReadAt>, start: u64, len: u64, what: &str) -> Result<Fat> {
        let d = FatDisk {
            disk,
            start,
            len,
            pos: 0,
        };
        let fs = fatfs::FileSystem::new(d, fatfs::FsOptions::new()).map_err(|e| io(what, e))?;
        Ok(Fat(Rc::new(RefCell::new(fs))))
    }

    fn lock(&self) -> std::cell::Ref<'_, Fs> {
        self.0.borrow()
    }

    /// A path's components below the root, as fatfs takes them.
    fn rel(raw: &[u8]) -> Result<String> {
        let s = std::str::from_utf8(raw).map_err(|_| {
            Error::NotFound(format!("{}: not a FAT name", String::from_utf8_lossy(raw)))
        })?;
        Ok(s.trim_start_matches('/').to_string())
    }

    fn entry_of(parent: &[u8], e: &fatfs::DirEntry<'_, FatDisk>) -> Entry {
        let name = e.file_name();
        let mut raw = parent.to_vec();
        if raw != b"/" {
            raw.push(b'/');
        }
        raw.extend_from_slice(name.as_bytes());
        let dir = e.is_dir();
        let ro = e.attributes().contains(fatfs::FileAttributes::READ_ONLY);
        let mtime = unix_seconds(e.modified());
        Entry {
            path: String::from_utf8_lossy(&raw).into_owned(),
            name,
            kind: if dir { EntryKind::Dir } else { EntryKind::File },
            size: if dir { 0 } else { e.len() },
            mode: match (dir, ro) {
                (true, _) => 0o755,
                (false, true) => 0o444,
                (false, false) => 0o644,
            },
            uid: 0,
            gid: 0,
            mtime,
            mtime_nsec: 0,
            atime: mtime,
            atime_nsec: 0,
            target: None,
            raw,
            raw_target: Vec::new(),
            link_group: None,
            extra: Default::default(),
        }
    }

    pub(crate) fn list_raw(&self, raw: &[u8]) -> Result<Vec<Entry>> {
        let what = String::from_utf8_lossy(raw).into_owned();
        let fs = self.lock();
        let root = fs.root_dir();
        let rel = Self::rel(raw)?;
        let dir = if rel.is_empty() {
            root
        } else {
            root.open_dir(&rel).map_err(|e| io(&what, e))?
        };
        let mut out = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(|e| io(&what, e))?;
            crate::fs::too_many(&what, out.len())?;
            let n = e.file_name();
            if n == "." || n == ".." || e.attributes().contains(fatfs::FileAttributes::VOLUME_ID) {
                continue;
            }
            out.push(Self::entry_of(raw, &e));
        }
        out.sort_by(|a, b| a.raw.cmp(&b.raw));
        Ok(out)
    }

    pub(crate) fn entry_raw(&self, raw: &[u8]) -> Result<Entry> {
        let what = String::from_utf8_lossy(raw).into_owned();
        if raw == b"/" {
            return Ok(Entry {
                path: "/".into(),
                name: "/".into(),
                kind: EntryKind::Dir,
                size: 0,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 0,
                mtime_nsec: 0,
                atime: 0,
                atime_nsec: 0,
                target: None,
                raw: b"/".to_vec(),
                raw_target: Vec::new(),
                link_group: None,
                extra: Default::default(),
            });
        }
        let cut = raw.iter().rposition(|b| *b == b'/').unwrap_or(0);
        let parent: &[u8] = if cut == 0 { b"/" } else { &raw[..cut] };
        let name = &raw[cut + 1..];
        // FAT names compare without case.
        self.list_raw(parent)?
            .into_iter()
            .find(|e| e.name.as_bytes().eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::NotFound(format!("{what}: no such file or directory")))
    }

    pub(crate) fn reader_raw(&self, raw: &[u8]) -> Result<FatReader> {
        let e = self.entry_raw(raw)?;
        if e.kind == EntryKind::Dir {
            return Err(Error::Invalid(format!("{}: is a directory", e.path)));
        }
        Ok(FatReader {
            fat: self.clone(),
            path: Self::rel(&e.raw)?,
            pos: 0,
            len: e.size,
        })
    }
}

/// A FAT file's contents: each read opens the file again at its position (fatfs files
/// borrow their file system, which this reader shares).
pub(crate) struct FatReader {
    fat: Fat,
    path: String,
    pos: u64,
    len: u64,
}

impl Read for FatReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let fs = self.fat.lock();
        let mut f = fs.root_dir().open_file(&self.path)?;
        f.seek(SeekFrom::Start(self.pos))?;
        let want = (buf.len() as u64).min(self.len - self.pos) as usize;
        let n = f.read(&mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}
