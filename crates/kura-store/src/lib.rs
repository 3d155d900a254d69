//! kura's vault format: chunk ids, blobs, keys, disk indexes and manifests.
//!
//! A vault is a set of objects on a [`kura_backend::Backend`]. This crate decides what those
//! objects contain, byte by byte (see `docs/format.md`), and nothing else:
//!
//! - [`ChunkId`]: keyed BLAKE3 of a chunk's plaintext; [`ChunkId::ZERO`] is the all-zero
//!   chunk, which is never hashed, stored or fetched.
//! - [`blob`]: the stored form of every object except the config: a versioned header,
//!   zstd payload (raw when it does not shrink), AEAD encryption with the header as associated
//!   data, and a keyless BLAKE3 checksum of the stored bytes.
//! - [`keys`]: the vault's data key, wrapped by a passphrase (Argon2id) or a key file.
//! - [`DiskIndex`]: the full list of chunk ids of one disk in one recovery point.
//! - [`tree`]: file trees: directories as chunks, and the [`TreeIndex`] of each tree.
//! - [`pack`]: pack objects, which hold many chunks of a tree in one object.
//! - [`Manifest`]: what a recovery point is; written last, so its presence means the
//!   recovery point is complete.
//! - [`Vault`]: the typed view over a backend that ties these together.
//!
//! This crate never sees a catalog, a source or a terminal, and never hands an unwrapped key
//! or plaintext chunk data to a backend.
//!
//! ```
//! use std::sync::Arc;
//! use kura_backend::MemoryBackend;
//! use kura_store::{Vault, VaultOptions, KeySecret};
//!
//! let backend = Arc::new(MemoryBackend::default());
//! let secret = KeySecret::from("correct horse");
//! let vault = Vault::create(backend.clone(), &VaultOptions::for_tests(), &secret).unwrap();
//! let mut codec = vault.codec();
//! let data = vec![7u8; 4096];
//! let id = vault.chunk_id(&data);
//! vault.put_chunk(&id, codec.encode_chunk(&id, &data).unwrap()).unwrap();
//! let vault = Vault::open(backend, &secret).unwrap();
//! assert_eq!(vault.get_chunk(&id, &mut vault.codec()).unwrap(), data);
//! ```

pub mod blob;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod id;
mod index;
pub mod keys;
pub mod kit;
mod manifest;
pub mod pack;
pub mod pack_windows;
pub mod tree;
mod vault;

pub use blob::{BlobKind, Codec};
pub use error::{Error, Result};
pub use id::{ChunkId, is_zero};
pub use index::DiskIndex;
pub use keys::{Cipher, KeySecret, WrappedKey};
pub use manifest::{
    DiskEntry, ItemRecord, Manifest, RpStats, SnapshotRef, TreeEntry, is_disk_name,
};
pub use pack::{ChunkRef, PackId, PackWriter, Packed};
pub use pack_windows::PackWindows;
pub use tree::{Dir, Node, NodeKind, Piece, TreeIndex};

/// The manifest schema version this build writes.
pub fn manifest_version() -> u32 {
    manifest::MANIFEST_VERSION
}
pub use vault::{BadChunk, BadChunks, FORMAT_VERSION, Healed, Vault, VaultConfig, VaultOptions};
