use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::{DiskReader, Error, Extent, ExtentKind, Result, normalize};

/// A raw image file or block device, read with `pread`; holes found with SEEK_DATA/SEEK_HOLE.
#[derive(Debug)]
pub struct RawReader {
    path: PathBuf,
    file: File,
    size: u64,
    /// Device and inode at open, to notice a file replaced under the reader.
    identity: (u64, u64),
    /// False when the filesystem or device does not support SEEK_DATA (then all is data).
    seek_data: bool,
}

impl RawReader {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                path: path.to_path_buf(),
            },
            _ => io(e),
        })?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_dir() {
            return Err(io(std::io::Error::other("it is a directory")));
        }
        // Works for files and block devices alike.
        let size = file.seek(SeekFrom::End(0)).map_err(io)?;
        let seek_data = meta.is_file();
        Ok(RawReader {
            path: path.to_path_buf(),
            file,
            size,
            identity: (meta.dev(), meta.ino()),
            seek_data,
        })
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The next data offset at or after `pos`, or `None` when only a hole remains.
    fn next_data(&self, pos: u64) -> Result<Option<u64>> {
        match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(pos)) {
            Ok(off) => Ok(Some(off)),
            Err(rustix::io::Errno::NXIO) => Ok(None),
            Err(e) => Err(self.io(e.into())),
        }
    }

    fn next_hole(&self, pos: u64) -> Result<u64> {
        rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Hole(pos)).map_err(|e| self.io(e.into()))
    }
}

impl DiskReader for RawReader {
    fn size(&self) -> u64 {
        self.size
    }

    fn format(&self) -> &str {
        "raw"
    }

    fn extents(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        if !self.seek_data {
            return Ok(vec![Extent {
                offset,
                len: end - offset,
                kind: ExtentKind::Data,
            }]);
        }
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = match self.next_data(pos) {
                Ok(Some(d)) => d.min(end),
                Ok(None) => end,
                Err(_) if pos == offset => {
                    // Filesystem without SEEK_DATA: treat everything as data from now on.
                    self.seek_data = false;
                    return Ok(vec![Extent {
                        offset,
                        len: end - offset,
                        kind: ExtentKind::Data,
                    }]);
                }
                Err(e) => return Err(e),
            };
            if data > pos {
                out.push(Extent {
                    offset: pos,
                    len: data - pos,
                    kind: ExtentKind::Zero,
                });
            }
            if data >= end {
                break;
            }
            let hole = self.next_hole(data)?.min(end);
            out.push(Extent {
                offset: data,
                len: hole - data,
                kind: ExtentKind::Data,
            });
            pos = hole;
        }
        Ok(normalize(out, offset, end))
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| self.io(e))
    }

    fn check_unchanged(&mut self) -> Result<()> {
        let changed = |what: String| Error::Changed {
            path: self.path.clone(),
            what,
        };
        // SEEK_DATA past a new end answers ENXIO, which reads as a hole: only the size
        // after the last read tells a shrunk file from a sparse one.
        let now = self.file.seek(SeekFrom::End(0)).map_err(|e| self.io(e))?;
        if now != self.size {
            return Err(changed(format!(
                "its size went from {} to {now} bytes",
                self.size
            )));
        }
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => Ok(()),
            Ok(_) => Err(changed("another file now has its name".into())),
            Err(e) => Err(changed(format!("it can no longer be opened ({e})"))),
        }
    }
}
