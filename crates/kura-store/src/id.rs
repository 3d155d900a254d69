use std::fmt;

use crate::{Error, Result};

/// A chunk id: keyed BLAKE3 of the chunk's plaintext under the vault's id key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The well-known id of a chunk made only of zero bytes (of any length). It is never
    /// hashed, stored or fetched; a restore leaves a hole where it appears.
    pub const ZERO: ChunkId = ChunkId([0; 32]);

    /// True for [`ChunkId::ZERO`].
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| Error::Invalid {
            field: "chunk id",
            reason: format!("{s:?}: {e}"),
        })?;
        Ok(ChunkId(out))
    }

    /// The object key of this chunk in a vault.
    pub fn key(&self) -> String {
        let h = self.to_hex();
        format!("chunks/{}/{}", &h[..2], h)
    }

    /// A short form for messages (first 12 hex digits).
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.short())
    }
}

/// True when every byte of `buf` is zero. Fast enough to run on every chunk read: it checks
/// 64-byte blocks (which the compiler vectorizes) and stops at the first non-zero block.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(64);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}
