//! What kura backs up: disk images, read without touching their holes.
//!
//! A [`DiskReader`] gives a disk's size, an allocation map ([`DiskReader::extents`]) and
//! positional reads. Two readers exist:
//!
//! - [`RawReader`]: raw image files and block devices, with `pread` and SEEK_DATA/SEEK_HOLE;
//! - [`NbdReader`]: every format QEMU reads (qcow2, vmdk, vdi, vhdx, ...), served by a
//!   read-only `qemu-nbd` and read by kura's own NBD client ([`nbd`]), which negotiates
//!   structured replies and the `base:allocation` meta context so that unallocated and zero
//!   extents are never read.
//!
//! Change tracking plugs in at the NBD client: [`nbd::Client::block_status`] answers for any
//! negotiated meta context, so a `qemu:dirty-bitmap:NAME` context yields dirty extents the
//! same way `base:allocation` yields data extents.
//!
//! This crate never writes to a source and knows nothing of vaults or catalogs.
//!
//! An image's format is never taken from its bytes at backup time: it is pinned when the
//! item is protected ([`PinnedFormat`]) and every open passes it on.
//!
//! ```no_run
//! let format = kura_source::PinnedFormat::new("qcow2").unwrap();
//! let mut disk = format.open(std::path::Path::new("disk.qcow2")).unwrap();
//! let extents = disk.extents(0, disk.size()).unwrap();
//! let data: u64 = extents.iter().filter(|e| e.kind == kura_source::ExtentKind::Data).map(|e| e.len).sum();
//! println!("{} of {} bytes allocated", data, disk.size());
//! ```

mod driver;
mod format;
pub mod libvirt;
pub mod nbd;
mod qemu;
pub mod qga;
pub mod qmp;
mod raw;
mod snapshot;
pub mod tree;
mod tree_snapshot;
pub mod vm;
mod vm_off;

pub use driver::{
    Consistency, Finding, PointInTime, PointRequest, SPEC_VERSION, SourceDriver, SourceSpec,
};
pub use format::{BackingFile, FORMATS, PinnedFormat};
pub use qemu::NbdReader;
pub use raw::RawReader;
pub use snapshot::Snapshot;
pub use tree::TreeSource;
pub use tree_snapshot::TreeSnapshot;

use std::path::PathBuf;

/// What went wrong reading a source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The source does not exist.
    #[error("source {path} does not exist")]
    NotFound {
        /// Path.
        path: PathBuf,
    },
    /// I/O on the source failed.
    #[error("cannot read source {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A helper tool (qemu-img, qemu-nbd) failed or is missing.
    #[error("{tool} failed for {path}: {message}")]
    Tool {
        /// Tool name.
        tool: &'static str,
        /// Path of the source.
        path: PathBuf,
        /// What it said.
        message: String,
    },
    /// The NBD conversation failed.
    #[error("NBD: {0}")]
    Nbd(String),
    /// The QMP conversation failed or a command was refused.
    #[error("QMP: {0}")]
    Qmp(String),
    /// libvirt (virsh) refused a request or gave an unreadable answer.
    #[error("libvirt: {0}")]
    Libvirt(String),
    /// The guest agent did not answer, or refused a command.
    #[error("guest agent: {0}")]
    Agent(String),
    /// A request or a source that kura refuses (unknown format, changed backing chain).
    #[error("{0}")]
    Invalid(String),
    /// The source changed size or identity while it was read.
    #[error("source {path} changed while it was read: {what}")]
    Changed {
        /// Path.
        path: PathBuf,
        /// What changed.
        what: String,
    },
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a range of the disk reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// May hold data: must be read.
    Data,
    /// Reads as zeros (a hole or a zero extent): never read.
    Zero,
}

/// A run of bytes with one [`ExtentKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Start offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Kind.
    pub kind: ExtentKind,
}

/// A disk being read.
pub trait DiskReader: Send {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// The image format (`raw`, `qcow2`, ...).
    fn format(&self) -> &str;
    /// The allocation map of `offset..offset+len` (clamped to the disk): contiguous extents,
    /// in order, covering the whole range.
    fn extents(&mut self, offset: u64, len: u64) -> Result<Vec<Extent>>;
    /// Fills `buf` from `offset`; the range must lie inside the disk.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Fails with [`Error::Changed`] when the source no longer has the size (or, for files,
    /// the identity) it had when it was opened. Called after the last read, so a point is
    /// never made from a source that shrank or was replaced under the reader.
    fn check_unchanged(&mut self) -> Result<()> {
        Ok(())
    }
    /// What changed since an earlier point, when the source tracks it (a VM disk's dirty
    /// bitmap). The engine uses it only when `since` is the point it would compare with, the
    /// disk kept its size, and the previous index is readable; otherwise it reads everything.
    fn changes(&mut self) -> Result<Option<Changes>> {
        Ok(None)
    }
}

/// The byte ranges written since recovery point `since` (changed-block tracking).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The recovery point these changes are relative to.
    pub since: String,
    /// Dirty ranges (offset, length), in order, not overlapping.
    pub dirty: Vec<(u64, u64)>,
}

impl Changes {
    /// Bytes marked dirty.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty.iter().map(|d| d.1).sum()
    }

    /// Whether any byte of `start..end` is dirty (`dirty` is sorted: binary search).
    pub fn touches(&self, start: u64, end: u64) -> bool {
        let i = self.dirty.partition_point(|&(o, l)| o + l <= start);
        self.dirty.get(i).is_some_and(|&(o, _)| o < end)
    }
}

/// Merges neighbouring extents of the same kind and clamps them to `start..end`.
pub(crate) fn normalize(mut extents: Vec<Extent>, start: u64, end: u64) -> Vec<Extent> {
    extents.retain(|e| e.len > 0 && e.offset < end && e.offset + e.len > start);
    let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
    for mut e in extents {
        let e_end = (e.offset + e.len).min(end);
        e.offset = e.offset.max(start);
        e.len = e_end - e.offset;
        match out.last_mut() {
            Some(last) if last.kind == e.kind && last.offset + last.len == e.offset => {
                last.len += e.len
            }
            _ => out.push(e),
        }
    }
    out
}
