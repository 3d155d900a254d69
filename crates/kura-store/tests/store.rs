//! Round trips and failure modes of the vault format.

use std::sync::Arc;

use kura_backend::{Backend, MemoryBackend};
use kura_store::blob::{self, BlobKind};
use kura_store::{ChunkId, DiskIndex, Error, KeySecret, Vault, VaultOptions};
use proptest::prelude::*;

fn vault(secret: &KeySecret) -> (Arc<MemoryBackend>, Vault) {
    let b = Arc::new(MemoryBackend::default());
    let v = Vault::create(b.clone(), &VaultOptions::for_tests(), secret).unwrap();
    (b, v)
}

fn secrets() -> Vec<KeySecret> {
    vec![
        KeySecret::None,
        KeySecret::from("pass phrase"),
        KeySecret::KeyFile(kura_store::keys::generate_key_file()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn blob_round_trips(data in prop::collection::vec(any::<u8>(), 0..20_000), repeat in any::<bool>(), s in 0usize..3) {
        let data = if repeat { data.repeat(4) } else { data };
        let (_, v) = vault(&secrets()[s]);
        let mut codec = v.codec();
        let stored = codec.encode(BlobKind::Index, b"ctx", &data).unwrap();
        blob::check_stored("t", &stored).unwrap();
        prop_assert_eq!(codec.decode(BlobKind::Index, b"ctx", "t", stored.clone()).unwrap(), data);
        if s > 0 {
            // Encrypted blobs only authenticate under the name they were written for.
            prop_assert!(codec.decode(BlobKind::Index, b"other", "t", stored).is_err());
        }
    }

    #[test]
    fn blob_detects_any_single_byte_change(data in prop::collection::vec(any::<u8>(), 1..5000), pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let (_, v) = vault(&KeySecret::from("p"));
        let mut codec = v.codec();
        let id = codec.chunk_id(&data);
        let mut stored = codec.encode_chunk(&id, &data).unwrap();
        let i = pos.index(stored.len());
        stored[i] ^= flip;
        let corrupt = matches!(codec.decode_chunk(&id, stored.clone()), Err(Error::Corrupt { .. }));
        prop_assert!(corrupt);
        prop_assert!(blob::check_stored("t", &stored).is_err());
    }

    #[test]
    fn blob_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let (_, v) = vault(&KeySecret::None);
        let _ = v.codec().decode(BlobKind::Chunk, b"", "t", bytes);
    }

    #[test]
    fn index_round_trips(size in 0u64..(1 << 40), seed in any::<u8>()) {
        let chunk_size = 64 << 10;
        let n = DiskIndex::chunk_count(size, chunk_size).min(3000);
        let size = size.min(n * u64::from(chunk_size));
        let n = DiskIndex::chunk_count(size, chunk_size);
        let chunks = (0..n).map(|i| if i % 3 == 0 { ChunkId::ZERO } else { ChunkId([seed ^ (i as u8); 32]) }).collect();
        let idx = DiskIndex { size, chunk_size, chunks };
        prop_assert_eq!(DiskIndex::decode("t", &idx.encode()).unwrap(), idx);
    }

    #[test]
    fn manifest_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = kura_store::Manifest::decode("t", &bytes);
    }

    #[test]
    fn index_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = DiskIndex::decode("t", &bytes);
    }
}

#[test]
fn index_rejects_nonzero_reserved_bytes() {
    // Found by the index fuzz target: a decoded index must re-encode to the same bytes.
    let mut b = DiskIndex {
        size: 0,
        chunk_size: 65536,
        chunks: vec![],
    }
    .encode();
    b[7] = 16;
    assert!(DiskIndex::decode("i", &b).is_err());
    let mut b = DiskIndex {
        size: 0,
        chunk_size: 65536,
        chunks: vec![],
    }
    .encode();
    b[21] = 1;
    assert!(DiskIndex::decode("i", &b).is_err());
}

#[test]
fn index_rejects_inconsistent_counts() {
    let idx = DiskIndex {
        size: 100_000,
        chunk_size: 65536,
        chunks: vec![ChunkId::ZERO; 2],
    };
    let mut b = idx.encode();
    b[24] = 3; // claims three chunks
    let e = DiskIndex::decode("index x", &b).unwrap_err();
    assert!(e.to_string().contains("index x"), "{e}");
    let mut b = idx.encode();
    b.truncate(b.len() - 1);
    assert!(DiskIndex::decode("index x", &b).is_err());
}

#[test]
fn wrong_passphrase_and_missing_secret_are_refused() {
    let (b, _) = vault(&KeySecret::from("right"));
    assert!(matches!(
        Vault::open(b.clone(), &KeySecret::from("wrong")),
        Err(Error::WrongKey)
    ));
    assert!(matches!(
        Vault::open(b.clone(), &KeySecret::None),
        Err(Error::SecretNeeded {
            needed: "passphrase"
        })
    ));
    Vault::open(b, &KeySecret::from("right")).unwrap();
}

#[test]
fn key_file_vault_needs_the_same_file() {
    let kf = kura_store::keys::generate_key_file();
    let (b, _) = vault(&KeySecret::KeyFile(kf.clone()));
    let other = kura_store::keys::generate_key_file();
    assert!(matches!(
        Vault::open(b.clone(), &KeySecret::KeyFile(other)),
        Err(Error::WrongKey)
    ));
    Vault::open(b, &KeySecret::KeyFile(kf)).unwrap();
}

#[test]
fn no_plaintext_or_key_reaches_the_backend() {
    let marker = b"KURA-PLAINTEXT-MARKER-0123456789";
    let mut data = Vec::new();
    while data.len() < 200_000 {
        data.extend_from_slice(marker);
    }
    let (b, v) = vault(&KeySecret::from("secret passphrase"));
    let mut codec = v.codec();
    let id = v.chunk_id(&data);
    v.put_chunk(&id, codec.encode_chunk(&id, &data).unwrap())
        .unwrap();
    for key in b.list("").unwrap() {
        let bytes = b.get(&key).unwrap();
        assert!(
            !bytes.windows(16).any(|w| w == &marker[..16]),
            "marker found in {key}"
        );
        assert!(
            !bytes.windows(17).any(|w| w == b"secret passphrase"),
            "passphrase found in {key}"
        );
    }
}

#[test]
fn creating_twice_is_refused_and_changes_nothing() {
    let (b, v) = vault(&KeySecret::None);
    let before = b.get("config").unwrap();
    let e = Vault::create(b.clone(), &VaultOptions::for_tests(), &KeySecret::None).unwrap_err();
    assert!(matches!(e, Error::AlreadyAVault { .. }), "{e}");
    assert_eq!(b.get("config").unwrap(), before);
    drop(v);
}

#[test]
fn not_a_vault_is_named() {
    let b = MemoryBackend::default();
    assert!(matches!(
        Vault::read_config(&b),
        Err(Error::NotAVault { .. })
    ));
    b.put("config", b"{not json".to_vec()).unwrap();
    assert!(matches!(
        Vault::read_config(&b),
        Err(Error::NotAVault { .. })
    ));
}

#[test]
fn bad_chunk_sizes_are_refused() {
    for cs in [0, 4096, 65537, 128 << 20] {
        let b = Arc::new(MemoryBackend::default());
        let opts = VaultOptions {
            chunk_size: cs,
            ..VaultOptions::for_tests()
        };
        let e = Vault::create(b.clone(), &opts, &KeySecret::None).unwrap_err();
        assert!(e.to_string().contains("chunk size"), "{e}");
        assert!(
            b.list("").unwrap().is_empty(),
            "a refused create writes nothing"
        );
    }
}

#[test]
fn chunk_ids_are_keyed_per_vault() {
    let (_, a) = vault(&KeySecret::None);
    let (_, b) = vault(&KeySecret::None);
    assert_ne!(a.chunk_id(b"same"), b.chunk_id(b"same"));
    assert_eq!(a.chunk_id(b"same"), a.codec().chunk_id(b"same"));
}

#[test]
fn compressible_chunks_shrink_and_random_ones_stay_raw() {
    let (_, v) = vault(&KeySecret::from("p"));
    let mut codec = v.codec();
    let text = b"a fairly compressible line of log text\n".repeat(2000);
    assert!(codec.encode_chunk(&ChunkId::ZERO, &text).unwrap().len() < text.len() / 4);
    let random: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let stored = codec.encode_chunk(&ChunkId::ZERO, &random).unwrap();
    assert!(stored.len() <= random.len() + 40 + 32 + 16);
}

#[test]
fn a_chunk_stored_under_another_id_is_refused() {
    for secret in secrets() {
        let (_, v) = vault(&secret);
        let mut codec = v.codec();
        let (a, b) = (b"first chunk".to_vec(), b"second chunk".to_vec());
        let (ida, idb) = (codec.chunk_id(&a), codec.chunk_id(&b));
        let stored_a = codec.encode_chunk(&ida, &a).unwrap();
        assert_eq!(codec.decode_chunk(&ida, stored_a.clone()).unwrap(), a);
        let e = codec.decode_chunk(&idb, stored_a).unwrap_err();
        assert!(e.to_string().contains(&idb.to_hex()), "{e}");
    }
}

/// A tampered config asking Argon2id for 8 GiB (or hours of passes) is refused before any
/// memory is allocated, naming the parameter.
#[test]
fn tampered_argon2_costs_are_refused_before_they_cost_anything() {
    let (b, _) = vault(&KeySecret::from("right"));
    let config = b.get("config").unwrap();
    for (field, value) in [
        ("m_cost", 8u64 << 20),
        ("t_cost", 1_000_000),
        ("p_cost", 255),
    ] {
        let mut doc: serde_json::Value = serde_json::from_slice(&config).unwrap();
        doc["encryption"]["key"]["kek"][field] = value.into();
        b.put("config", serde_json::to_vec(&doc).unwrap()).unwrap();
        let e = Vault::open(b.clone(), &KeySecret::from("right")).unwrap_err();
        assert!(e.to_string().contains(field), "{e}");
        assert!(e.to_string().contains("above the limit"), "{e}");
    }
}

/// Vaults written before the item-kind seam keep their version-1 manifests: still read.
#[test]
fn version_1_manifests_are_still_read_and_disk_names_are_checked() {
    let v1 = br#"{"version": 1, "rp_id": "r1", "vault_id": "v1",
        "item": {"id": "i", "name": "web", "kind": "disk", "source": "/srv/web.qcow2", "created": "2026-01-01T00:00:00Z"},
        "time": "2026-01-01T00:00:00Z", "consistency": "crash", "tier": "vault-standard",
        "job_id": "j", "disks": [{"name": "disk0", "size": 65536, "index": "rps/r1/disk0.index",
        "chunks": 1, "zero_chunks": 0, "source_format": "qcow2"}],
        "stats": {"read_bytes": 0, "new_chunks": 0, "new_stored_bytes": 0, "new_plain_bytes": 0}}"#;
    let m = kura_store::Manifest::decode("m", v1).unwrap();
    assert_eq!(m.version, 1);
    assert_eq!(m.disks[0].name, "disk0");
    assert!(m.definition.is_none());
    let text = String::from_utf8(v1.to_vec()).unwrap();
    for bad in ["../../etc/passwd", ".hidden", ""] {
        let t = text.replace(r#""name": "disk0""#, &format!(r#""name": "{bad}""#));
        let e = kura_store::Manifest::decode("m", t.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("bad disk or tree name"), "{e}");
    }
    let t = text.replace(r#""version": 1"#, r#""version": 4"#);
    assert!(kura_store::Manifest::decode("m", t.as_bytes()).is_err());
}
