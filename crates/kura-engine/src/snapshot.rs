//! Restoring from the snapshot tier. The snapshot providers themselves are source-side
//! (`kura_source::Snapshot`).

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use kura_source::DiskReader;

use crate::{Error, Result};

/// Copies a disk's data extents into a new sparse file (restore from the snapshot tier).
pub(crate) fn copy_sparse(
    disk: &mut dyn DiskReader,
    to: &Path,
    progress: &dyn crate::Progress,
) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let size = disk.size();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| Error::io(format!("cannot create {}", to.display()), e))?;
    file.set_len(size)
        .map_err(|e| Error::io(format!("cannot size {}", to.display()), e))?;
    progress.start("restore from snapshot", size);
    let mut buf = vec![0u8; 4 << 20];
    let mut written = 0;
    for e in disk.extents(0, size)? {
        if e.kind == kura_source::ExtentKind::Zero {
            progress.advance(e.len);
            continue;
        }
        let mut off = e.offset;
        while off < e.offset + e.len {
            crate::progress::check_cancel(progress)?;
            let n = ((e.offset + e.len - off) as usize).min(buf.len());
            disk.read_at(&mut buf[..n], off)?;
            if !kura_store::is_zero(&buf[..n]) {
                file.write_all_at(&buf[..n], off)
                    .map_err(|e| Error::io(format!("cannot write {}", to.display()), e))?;
                written += n as u64;
            }
            progress.advance(n as u64);
            off += n as u64;
        }
    }
    file.sync_all()
        .map_err(|e| Error::io(format!("cannot sync {}", to.display()), e))?;
    progress.finish();
    Ok(written)
}
