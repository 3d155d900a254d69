//! Fuzz harnesses (feature `fuzzing`, never in release builds): each takes arbitrary bytes
//! and drives one decoder of untrusted input; a panic is a bug. The cargo-fuzz targets in
//! `fuzz/` call them, and the regression tests replay the inputs fuzzing found.
//!
//! Random bytes almost never pass a blob's checksum, let alone its AEAD tag, so [`sealed`]
//! builds blobs whose header fields and payload come from the input but whose checksum and
//! tag are valid under a fixed test key: the fuzzer then reaches decompression and the
//! decoders of every blob kind behind those gates.

use std::sync::{Arc, OnceLock};

use kura_backend::{Backend, MemoryBackend};

use crate::blob::BlobKind;
use crate::{ChunkId, DiskIndex, KeySecret, Manifest, Vault, VaultOptions};

/// An unencrypted and an encrypted vault with fixed keys, made once.
fn vaults() -> &'static [Vault; 2] {
    static V: OnceLock<[Vault; 2]> = OnceLock::new();
    V.get_or_init(|| {
        let make = |s: &KeySecret| {
            Vault::create(
                Arc::new(MemoryBackend::default()),
                &VaultOptions::for_tests(),
                s,
            )
            .expect("a test vault")
        };
        [
            make(&KeySecret::None),
            make(&KeySecret::KeyFile(zeroize::Zeroizing::new(vec![7u8; 32]))),
        ]
    })
}

/// Raw bytes as a stored blob: the keyless check and a full decode under both vaults.
pub fn blob(data: &[u8]) {
    let _ = crate::blob::check_stored("fuzz", data);
    for v in vaults() {
        let mut codec = v.codec();
        let _ = codec.decode_chunk(&ChunkId([7; 32]), data.to_vec());
        let _ = codec.decode(BlobKind::Index, b"rps/x/disk0.index", "fuzz", data.to_vec());
    }
}

/// Input layout: `[vault, kind, compressed, plain_len: u32 LE, payload...]`. The blob is
/// sealed with a valid tag and checksum, then decoded, and its plaintext goes through the
/// decoder of its kind.
pub fn sealed(data: &[u8]) {
    let Some((head, payload)) = data.split_first_chunk::<7>() else {
        return;
    };
    let v = &vaults()[usize::from(head[0] & 1)];
    let kind = head[1];
    let compressed = head[2];
    // Bounded so that a declared length cannot make the decoder allocate gigabytes here.
    let plain_len = u64::from(u32::from_le_bytes([head[3], head[4], head[5], head[6]]) & 0x3f_ffff);
    let context: &[u8] = if kind == BlobKind::Chunk as u8 {
        &[7; 32]
    } else {
        b"fuzz/object"
    };
    let mut codec = v.codec();
    let stored = codec.seal_raw(kind, compressed, plain_len, context, payload);
    let Some(kind) = BlobKind::from_code(kind) else {
        let _ = codec.decode(BlobKind::Chunk, context, "fuzz", stored);
        return;
    };
    let Ok(plain) = codec.decode(kind, context, "fuzz", stored) else {
        return;
    };
    match kind {
        BlobKind::Chunk => {}
        BlobKind::Index => {
            if let Ok(idx) = DiskIndex::decode("fuzz", &plain) {
                assert_eq!(idx.encode(), plain, "an index re-encodes to its bytes");
            }
        }
        BlobKind::Manifest => {
            if let Ok(m) = Manifest::decode("fuzz", &plain) {
                assert_eq!(
                    Manifest::decode("fuzz", &m.encode()).expect("re-decodes"),
                    m
                );
            }
        }
        BlobKind::Item => {
            let _ = serde_json::from_slice::<crate::ItemRecord>(&plain);
        }
        BlobKind::Health => {
            let _ = serde_json::from_slice::<crate::BadChunks>(&plain);
            let _ = serde_json::from_slice::<crate::Healed>(&plain);
        }
        // A pack header is parsed by `pack`, which can bind it to its pack's key.
        BlobKind::Pack => {}
    }
}

/// Raw bytes as a vault config: parsed, and for key-file configs (cheap to try) opened with
/// a key file, which runs the key unwrapping on the config's fields. Argon2id configs are
/// only parsed and bounds-checked: their cost is what the bounds limit.
pub fn config(data: &[u8]) {
    let b = MemoryBackend::default();
    if b.put("config", data.to_vec()).is_err() {
        return;
    }
    let Ok(config) = Vault::read_config(&b) else {
        return;
    };
    let key_file = config
        .encryption
        .as_ref()
        .is_none_or(|e| matches!(e.key.kek, crate::keys::KekSpec::KeyFile));
    if key_file {
        let _ = Vault::open(
            Arc::new(b),
            &KeySecret::KeyFile(zeroize::Zeroizing::new(vec![7u8; 32])),
        );
    }
}

/// Raw bytes as a recovery kit (JSON or a printable line), opened without a passphrase
/// (a sealed kit's Argon2id is not what is fuzzed here).
pub fn kit(data: &[u8]) {
    let _ = crate::kit::open(data, None);
}

/// A file tree's documents, which a vault's writer controls: the first byte picks the
/// decoder (even: a directory's JSON, odd: a tree index), the rest is its input. What
/// decodes re-encodes to something that decodes the same.
pub fn tree(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    if pick & 1 == 0 {
        if let Ok(d) = crate::Dir::decode("fuzz", body) {
            assert_eq!(crate::Dir::decode("fuzz", &d.encode()).unwrap(), d);
        }
    } else if let Ok(t) = crate::TreeIndex::decode("fuzz", body) {
        let again = t.encode();
        if body[4] == 1 {
            // Version 1 is read, and rewritten as the current version.
            assert_eq!(crate::TreeIndex::decode("fuzz", &again).unwrap(), t);
        } else {
            assert_eq!(again, body, "a tree index re-encodes to its bytes");
        }
    }
}

/// A pack, which a vault's writer controls. Input layout: `[vault, n: u16 LE, blobs (n
/// bytes), header plaintext...]`: the header is sealed with a valid tag under the fixed test
/// key (random bytes would stop at its checksum), the pack assembled, and its header parsed;
/// every chunk it lists is then read from its place, as verify does.
pub fn pack(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let v = &vaults()[usize::from(head[0] & 1)];
    let n = usize::from(u16::from_le_bytes([head[1], head[2]])).min(rest.len());
    let (blobs, header) = rest.split_at(n);
    let id = crate::PackId([9; 32]);
    let mut codec = v.codec();
    let Ok(sealed) = codec.encode(BlobKind::Pack, id.key().as_bytes(), header) else {
        return;
    };
    let mut stored = blobs.to_vec();
    stored.extend_from_slice(&sealed);
    stored.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    if let Ok(entries) = crate::pack::pack_entries(&mut codec, &id, &stored) {
        for r in entries {
            let at = r.packed.expect("a pack's entries are packed");
            let blob = &stored[at.offset as usize..at.offset as usize + at.len as usize];
            let _ = codec.decode_chunk(&r.id, blob.to_vec());
        }
    }
    // The same bytes as a pack under another name are refused.
    let _ = crate::pack::pack_entries(&mut codec, &crate::PackId([8; 32]), &stored);
}
