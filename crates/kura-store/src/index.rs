use crate::{ChunkId, Error, Result};

const MAGIC: &[u8; 4] = b"KIDX";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 32;

/// The full list of chunks of one disk in one recovery point: chunk `i` covers bytes
/// `i * chunk_size .. min((i + 1) * chunk_size, size)`. No chains: an index alone restores
/// its disk.
///
/// Plaintext layout (inside an index blob):
/// ```text
///  0  4  magic "KIDX"      4  1  version (1)    5  3  zero
///  8  8  disk size (u64 LE)                     16 4  chunk size (u32 LE)
/// 20  4  zero              24 8  chunk count (u64 LE) = ceil(size / chunk size)
/// 32  32 × count chunk ids (all-zero id = zero chunk)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIndex {
    /// Disk size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// One id per chunk.
    pub chunks: Vec<ChunkId>,
}

impl DiskIndex {
    /// Number of chunks a disk of `size` bytes has.
    pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
        size.div_ceil(u64::from(chunk_size))
    }

    /// Byte range of chunk `i`.
    pub fn chunk_range(&self, i: usize) -> std::ops::Range<u64> {
        let start = i as u64 * u64::from(self.chunk_size);
        start..(start + u64::from(self.chunk_size)).min(self.size)
    }

    /// Serializes to the layout above.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 32 * self.chunks.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, 0, 0, 0]);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for id in &self.chunks {
            out.extend_from_slice(&id.0);
        }
        out
    }

    /// Parses and validates the layout above; `object` names the index in errors.
    pub fn decode(object: &str, b: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::corrupt(object, reason);
        if b.len() < HEADER_LEN {
            return Err(bad(format!("index truncated at {} bytes", b.len())));
        }
        if &b[..4] != MAGIC {
            return Err(bad("not a disk index (bad magic)".into()));
        }
        if b[4] != VERSION {
            return Err(bad(format!("unknown index version {}", b[4])));
        }
        if b[5..8] != [0; 3] || b[20..24] != [0; 4] {
            return Err(bad("reserved header bytes are not zero".into()));
        }
        let size = u64::from_le_bytes(b[8..16].try_into().expect("8"));
        let chunk_size = u32::from_le_bytes(b[16..20].try_into().expect("4"));
        let count = u64::from_le_bytes(b[24..32].try_into().expect("8"));
        if chunk_size == 0 {
            return Err(bad("chunk size is zero".into()));
        }
        if count != Self::chunk_count(size, chunk_size) {
            return Err(bad(format!(
                "{count} chunks cannot describe {size} bytes in chunks of {chunk_size}"
            )));
        }
        let body = &b[HEADER_LEN..];
        if Some(body.len() as u64) != count.checked_mul(32) {
            return Err(bad(format!(
                "expected {count} chunk ids, found {} bytes",
                body.len()
            )));
        }
        let chunks = body
            .chunks_exact(32)
            .map(|c| ChunkId(c.try_into().expect("32")))
            .collect();
        Ok(DiskIndex {
            size,
            chunk_size,
            chunks,
        })
    }
}
