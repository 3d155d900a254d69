//! The files inside a disk image, read-only: partition tables (GPT, MBR), file systems
//! (ext2/3/4, XFS, FAT12/16/32) and safe extraction into a directory.
//!
//! Everything here reads through [`ReadAt`], so a disk can be a local file or a recovery
//! point's chunks fetched on demand from a vault. Every byte read is untrusted: it comes from
//! a guest. Partition tables and file systems are parsed by well-kept crates (gptman,
//! mbrman, ext4-view, lamxfs, fatfs) behind bounds checks of our own, a parser's panic becomes an error,
//! and extraction never writes outside its target directory (see [`extract`]).

mod archive;
mod extract;
mod fat;
mod fs;
mod lvm;
mod mount;
mod volume;
mod xfs;

#[cfg(feature = "fuzzing")]
pub mod fuzz;

pub use archive::{Archive, write_archive};
pub use extract::{ExtractOptions, ExtractReport, extract, extract_original};
pub use fs::{Entry, EntryKind, FileSystem, RawEntry, Tree};
pub use mount::mount;
pub use volume::{FsKind, Volume, volumes};

/// A random-access disk: exact reads at any offset below [`ReadAt::size`].
pub trait ReadAt: Send {
    /// The disk's size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; an error when that runs past the end or cannot be read.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// What went wrong, naming the path or structure concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The disk could not be read.
    #[error("reading the disk: {0}")]
    Io(#[from] std::io::Error),
    /// The disk's structures are damaged or not what they claim to be.
    #[error("{what}: {reason}")]
    Corrupt {
        /// The structure (partition table, file system, path).
        what: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// Nothing at that path, or no such partition.
    #[error("{0}")]
    NotFound(String),
    /// A request that cannot be met as asked (a file where a directory is needed...).
    #[error("{0}")]
    Invalid(String),
    /// A file system kura cannot read (yet).
    #[error("{0}")]
    Unsupported(String),
    /// Writing the extracted files.
    #[error("{what}: {source}")]
    Write {
        /// The file or directory being written.
        what: String,
        /// The system's error.
        source: std::io::Error,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// Runs a parser over untrusted bytes: a panic inside it is a damaged structure, not a crash.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Error::corrupt(what, "the parser gave up on malformed data")))
}

/// A byte range of a disk as a disk of its own (a partition), with a seek position for the
/// parsers that want `Read + Seek`.
pub(crate) struct Slice<'a> {
    disk: &'a mut dyn ReadAt,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> Slice<'a> {
    pub(crate) fn new(disk: &'a mut dyn ReadAt, start: u64, len: u64) -> Self {
        Slice {
            disk,
            start,
            len,
            pos: 0,
        }
    }
}

impl std::io::Read for Slice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.disk.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for Slice<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::End(d) => self.len.checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}
