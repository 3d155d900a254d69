//! Fuzz harness (feature `fuzzing`): any bytes as a guest's disk, read the way `kura files`
//! reads a point. The input is a sparse disk of 512 MiB: records of a 4-byte little-endian
//! block number and up to 4096 bytes of that 4 KiB block; every other block reads as zeros.
//! A seed then holds a file system's written blocks only (an XFS of 320 MiB has 55).

use std::collections::BTreeMap;
use std::io::Write;

use crate::{Archive, FileSystem, ReadAt, volumes, write_archive};

/// The virtual disk's size.
const SIZE: u64 = 512 << 20;
/// Its block size.
const BLOCK: usize = 4096;
/// Archive bytes written per volume before the walk is stopped.
const BUDGET: usize = 4 << 20;

#[derive(Clone)]
struct Disk(std::sync::Arc<BTreeMap<u64, Vec<u8>>>);

impl Disk {
    fn parse(data: &[u8]) -> Disk {
        let mut blocks = BTreeMap::new();
        for rec in data.chunks(4 + BLOCK) {
            if rec.len() > 4 {
                let n = u32::from_le_bytes(rec[..4].try_into().expect("4 bytes"));
                blocks.insert(u64::from(n) % (SIZE / BLOCK as u64), rec[4..].to_vec());
            }
        }
        Disk(std::sync::Arc::new(blocks))
    }

    /// The records of `image`'s blocks that are not all zeros: a seed.
    fn records(image: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, b) in image.chunks(BLOCK).enumerate() {
            if b.iter().any(|x| *x != 0) {
                out.extend_from_slice(&(n as u32).to_le_bytes());
                out.extend_from_slice(b);
                out.resize(out.len() + BLOCK - b.len(), 0);
            }
        }
        out
    }
}

impl ReadAt for Disk {
    fn size(&self) -> u64 {
        SIZE
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > SIZE) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "past the end of the disk",
            ));
        }
        buf.fill(0);
        let (first, last) = (
            offset / BLOCK as u64,
            (offset + buf.len() as u64) / BLOCK as u64,
        );
        for (n, data) in self.0.range(first..=last) {
            let start = n * BLOCK as u64;
            let lo = offset.max(start);
            let hi = (offset + buf.len() as u64).min(start + data.len() as u64);
            if lo < hi {
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&data[(lo - start) as usize..(hi - start) as usize]);
            }
        }
        Ok(())
    }
}

/// A seed for [`disk`]: the blocks of `image` that are not zeros.
pub fn seed(image: &[u8]) -> Vec<u8> {
    Disk::records(image)
}

/// Output that refuses to grow past [`BUDGET`].
struct Bounded(usize);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0 + buf.len() > BUDGET {
            return Err(std::io::Error::other("the fuzz budget is spent"));
        }
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Finds the volumes of `data`, opens each file system and writes all of it as a tar
/// archive (listing every directory, reading every file and link) into a bounded sink.
/// Returns the archive bytes written: a value or an error at every step, never a panic.
pub fn disk(data: &[u8]) -> usize {
    let disk = Disk::parse(data);
    let Ok(vols) = volumes(&mut disk.clone()) else {
        return 0;
    };
    let mut total = 0;
    for v in vols.iter().take(8) {
        let Ok(fs) = FileSystem::open(Box::new(disk.clone()), v) else {
            continue;
        };
        let mut out = Bounded(0);
        let _ = write_archive(&fs, "/", Archive::Tar, &mut out);
        total += out.0;
    }
    total
}
