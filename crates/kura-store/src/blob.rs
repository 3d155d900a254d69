//! The stored form of chunks, indexes, manifests and item records.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "KURA"
//!      4     1  blob format version (1)
//!      5     1  kind: 1 chunk, 2 index, 3 manifest, 4 item record, 5 health, 6 pack header
//!      6     1  compression: 0 none, 1 zstd
//!      7     1  cipher: 0 none, 1 AES-256-GCM, 2 ChaCha20-Poly1305
//!      8     8  plaintext length, u64 little-endian
//!     16    16  salt (random per blob; zero without encryption)
//!     32     8  payload length n, u64 little-endian
//!     40     n  payload: (compressed) plaintext, sealed with a 16-byte tag when encrypted
//!   40+n    32  BLAKE3 (unkeyed) of bytes 0..40+n
//! ```
//!
//! The AEAD's associated data is the 40-byte header followed by the blob's *context*: the
//! 32-byte chunk id for chunks, the object key for everything else. A blob therefore
//! authenticates only under the name it was written for, and an authentic chunk is known to
//! hold the content its id was computed from without hashing it again. Each blob is sealed
//! under its own key, `BLAKE3-keyed(blob key, salt)`, with an all-zero nonce: keys never
//! repeat, so nonces need not be random, and there is no limit on the number of blobs.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use std::sync::Arc;

use crate::keys::{Cipher, Keys, random_bytes};
use crate::{ChunkId, Error, Result};

/// Blob magic.
pub const MAGIC: &[u8; 4] = b"KURA";
/// Blob format version written by this build.
pub const BLOB_VERSION: u8 = 1;
/// Header length.
pub const HEADER_LEN: usize = 40;
/// Trailing checksum length.
pub const CHECKSUM_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// Largest plaintext a blob may declare (guards allocations when decoding).
pub const MAX_PLAIN_LEN: u64 = 1 << 32;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// A chunk of disk data.
    Chunk = 1,
    /// A [`crate::DiskIndex`].
    Index = 2,
    /// A [`crate::Manifest`].
    Manifest = 3,
    /// An [`crate::ItemRecord`].
    Item = 4,
    /// A health record: the vault's bad-chunk list or a backup's healed chunks.
    Health = 5,
    /// The header of a pack ([`crate::pack`]).
    Pack = 6,
}

impl BlobKind {
    /// The kind of a header's kind byte.
    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => BlobKind::Chunk,
            2 => BlobKind::Index,
            3 => BlobKind::Manifest,
            4 => BlobKind::Item,
            5 => BlobKind::Health,
            6 => BlobKind::Pack,
            _ => return None,
        })
    }
}

/// Encodes and decodes blobs for one vault. Holds reusable zstd contexts, so make one per
/// worker thread ([`crate::Vault::codec`]).
pub struct Codec {
    keys: Arc<Keys>,
    cipher: Option<Cipher>,
    compressor: zstd::bulk::Compressor<'static>,
    decompressor: zstd::bulk::Decompressor<'static>,
    scratch: Vec<u8>,
}

impl Codec {
    pub(crate) fn new(keys: Arc<Keys>, cipher: Option<Cipher>, level: i32) -> Result<Self> {
        let zerr = |e: std::io::Error| Error::Invalid {
            field: "compression level",
            reason: e.to_string(),
        };
        Ok(Codec {
            keys,
            cipher,
            compressor: zstd::bulk::Compressor::new(level).map_err(zerr)?,
            decompressor: zstd::bulk::Decompressor::new().map_err(zerr)?,
            scratch: Vec::new(),
        })
    }

    /// Keyed BLAKE3 of `data` under the vault's id key.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.keys.id_key, data).as_bytes())
    }

    /// Encodes a chunk's plaintext, whose id is `id`.
    pub fn encode_chunk(&mut self, id: &ChunkId, plain: &[u8]) -> Result<Vec<u8>> {
        self.encode(BlobKind::Chunk, &id.0, plain)
    }

    /// Encodes `plain` as a blob of `kind` bound to `context` (see the module doc).
    pub fn encode(&mut self, kind: BlobKind, context: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let bound = zstd::zstd_safe::compress_bound(plain.len());
        // The payload is built in a scratch buffer kept across calls (no page faults per chunk).
        let mut body = std::mem::take(&mut self.scratch);
        body.clear();
        body.reserve(bound.max(plain.len()) + TAG_LEN);
        let compressed = !plain.is_empty()
            && self
                .compressor
                .compress_to_buffer(plain, &mut body)
                .is_ok_and(|n| n < plain.len());
        if !compressed {
            body.clear();
            body.extend_from_slice(plain);
        }
        let salt = match self.cipher {
            Some(_) => random_bytes::<16>(),
            None => [0u8; 16],
        };
        let out = self.seal(
            kind as u8,
            u8::from(compressed),
            plain.len() as u64,
            salt,
            context,
            &mut body,
        );
        self.scratch = body;
        out
    }

    fn blob_aead(&self, cipher: Cipher, salt: &[u8; 16]) -> LessSafeKey {
        let blob_key = self
            .keys
            .blob_key
            .as_ref()
            .expect("an encrypting codec always has a blob key");
        let key = blake3::keyed_hash(blob_key, salt);
        LessSafeKey::new(UnboundKey::new(cipher.algorithm(), key.as_bytes()).expect("32-byte key"))
    }

    /// Builds a blob whose header fields and payload are given as they are (for fuzzing: any
    /// kind, compression and length bytes), with a valid AEAD tag and checksum, so that a
    /// fuzzer reaches what lies behind those gates. Only with the `fuzzing` feature.
    #[cfg(feature = "fuzzing")]
    pub fn seal_raw(
        &mut self,
        kind: u8,
        compressed: u8,
        plain_len: u64,
        context: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        let salt = if self.cipher.is_some() {
            [3u8; 16]
        } else {
            [0u8; 16]
        };
        self.seal(
            kind,
            compressed,
            plain_len,
            salt,
            context,
            &mut payload.to_vec(),
        )
        .expect("small payloads seal")
    }

    /// The stored form of a payload: header (from the given fields), the payload sealed in
    /// place under the blob's key when encrypted, and the checksum of both.
    fn seal(
        &self,
        kind: u8,
        compressed: u8,
        plain_len: u64,
        salt: [u8; 16],
        context: &[u8],
        body: &mut Vec<u8>,
    ) -> Result<Vec<u8>> {
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(MAGIC);
        header[4] = BLOB_VERSION;
        header[5] = kind;
        header[6] = compressed;
        header[7] = self.cipher.map_or(0, Cipher::code);
        header[8..16].copy_from_slice(&plain_len.to_le_bytes());
        header[16..32].copy_from_slice(&salt);
        let sealed_len = body.len() + if self.cipher.is_some() { TAG_LEN } else { 0 };
        header[32..40].copy_from_slice(&(sealed_len as u64).to_le_bytes());
        if let Some(cipher) = self.cipher {
            self.blob_aead(cipher, &salt)
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key([0; 12]),
                    Aad::from(associated_data(&header, context)),
                    body,
                )
                .map_err(|_| Error::Invalid {
                    field: "blob",
                    reason: "too large to encrypt".into(),
                })?;
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + CHECKSUM_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(body);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        Ok(out)
    }

    /// Decodes a blob of `kind` written for `context`; `object` names it in errors. Checks
    /// the checksum, the header, the AEAD tag and the lengths.
    pub fn decode(
        &mut self,
        kind: BlobKind,
        context: &[u8],
        object: &str,
        stored: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let header = check_stored(object, &stored)?;
        if header.kind != kind {
            return Err(Error::corrupt(
                object,
                format!("holds a {:?} blob, expected {kind:?}", header.kind),
            ));
        }
        if header.cipher != self.cipher {
            return Err(Error::corrupt(
                object,
                format!(
                    "is {} but the vault uses {}",
                    header.cipher.map_or("unencrypted", Cipher::name),
                    self.cipher.map_or("no encryption", Cipher::name)
                ),
            ));
        }
        let mut stored = stored;
        let end = stored.len() - CHECKSUM_LEN;
        let (head, rest) = stored.split_at_mut(HEADER_LEN);
        let body = &mut rest[..end - HEADER_LEN];
        let payload_len = match self.cipher {
            Some(cipher) => {
                let aad = associated_data(head, context);
                self.blob_aead(cipher, &header.salt)
                    .open_in_place(Nonce::assume_unique_for_key([0; 12]), Aad::from(aad), body)
                    .map_err(|_| {
                        Error::corrupt(
                            object,
                            "authentication failed (wrong key, wrong name or tampered data)",
                        )
                    })?
                    .len()
            }
            None => body.len(),
        };
        let payload = &body[..payload_len];
        if header.compressed {
            let out = self
                .decompressor
                .decompress(payload, header.plain_len as usize)
                .map_err(|e| Error::corrupt(object, format!("zstd: {e}")))?;
            if out.len() as u64 != header.plain_len {
                return Err(Error::corrupt(
                    object,
                    "decompressed length differs from the header",
                ));
            }
            Ok(out)
        } else {
            if payload_len as u64 != header.plain_len {
                return Err(Error::corrupt(
                    object,
                    "payload length differs from the header",
                ));
            }
            // Reuse the stored buffer: move the plaintext to its front.
            stored.copy_within(HEADER_LEN..HEADER_LEN + payload_len, 0);
            stored.truncate(payload_len);
            Ok(stored)
        }
    }

    /// Decodes a chunk and checks that it holds the content of `id`: by the AEAD tag (which
    /// covers the id) when encrypted, by hashing it again otherwise.
    pub fn decode_chunk(&mut self, id: &ChunkId, stored: Vec<u8>) -> Result<Vec<u8>> {
        let object = format!("chunk {id}");
        let plain = self.decode(BlobKind::Chunk, &id.0, &object, stored)?;
        if self.cipher.is_none() && self.chunk_id(&plain) != *id {
            return Err(Error::corrupt(object, "content does not match its id"));
        }
        Ok(plain)
    }
}

fn associated_data(header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + context.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(context);
    aad
}

/// A parsed blob header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Kind.
    pub kind: BlobKind,
    /// Whether the payload is zstd-compressed.
    pub compressed: bool,
    /// Cipher, if encrypted.
    pub cipher: Option<Cipher>,
    /// Plaintext length.
    pub plain_len: u64,
    /// Per-blob salt.
    pub salt: [u8; 16],
}

/// Checks a stored blob without any key: structure, lengths and checksum.
pub fn check_stored(object: &str, stored: &[u8]) -> Result<Header> {
    if stored.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(Error::corrupt(
            object,
            format!("truncated: {} bytes", stored.len()),
        ));
    }
    if &stored[..4] != MAGIC {
        return Err(Error::corrupt(object, "bad magic"));
    }
    if stored[4] != BLOB_VERSION {
        return Err(Error::corrupt(
            object,
            format!("unknown blob version {}", stored[4]),
        ));
    }
    let payload_len = u64::from_le_bytes(stored[32..40].try_into().expect("8 bytes"));
    let expected = (HEADER_LEN + CHECKSUM_LEN) as u64;
    if payload_len.checked_add(expected) != Some(stored.len() as u64) {
        return Err(Error::corrupt(
            object,
            format!(
                "truncated or padded: header says {payload_len} payload bytes, found {}",
                stored.len() as u64 - expected
            ),
        ));
    }
    let split = stored.len() - CHECKSUM_LEN;
    if blake3::hash(&stored[..split]).as_bytes() != &stored[split..] {
        return Err(Error::corrupt(object, "checksum mismatch"));
    }
    let kind = BlobKind::from_code(stored[5])
        .ok_or_else(|| Error::corrupt(object, format!("unknown kind {}", stored[5])))?;
    let compressed = match stored[6] {
        0 => false,
        1 => true,
        c => return Err(Error::corrupt(object, format!("unknown compression {c}"))),
    };
    let cipher = match stored[7] {
        0 => None,
        c => Some(
            Cipher::from_code(c)
                .ok_or_else(|| Error::corrupt(object, format!("unknown cipher {c}")))?,
        ),
    };
    let plain_len = u64::from_le_bytes(stored[8..16].try_into().expect("8 bytes"));
    if plain_len > MAX_PLAIN_LEN {
        return Err(Error::corrupt(
            object,
            format!("declares {plain_len} plaintext bytes"),
        ));
    }
    Ok(Header {
        kind,
        compressed,
        cipher,
        plain_len,
        salt: stored[16..32].try_into().expect("16 bytes"),
    })
}
