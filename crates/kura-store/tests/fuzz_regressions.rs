//! Inputs the fuzzers found or were seeded with (fuzz/regressions/TARGET, fuzz/seeds/TARGET)
//! replayed through the same harnesses: what once broke a decoder stays fixed.
#![cfg(feature = "fuzzing")]

use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut n = 0;
    for kind in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for e in entries {
            harness(&std::fs::read(e.unwrap().path()).unwrap());
            n += 1;
        }
    }
    n
}

#[test]
fn store_decoders_survive_every_recorded_input() {
    use kura_store::fuzz;
    let total = replay("blob", fuzz::blob)
        + replay("sealed", fuzz::sealed)
        + replay("config", fuzz::config)
        + replay("kit", fuzz::kit)
        + replay("tree", fuzz::tree)
        + replay("pack", fuzz::pack);
    assert!(total > 0, "no recorded inputs");
}

/// The sealed harness reaches the decoders: a real index sealed by it decodes.
#[test]
fn sealed_inputs_reach_the_index_decoder() {
    let idx = kura_store::DiskIndex {
        size: 3 << 16,
        chunk_size: 1 << 16,
        chunks: vec![
            kura_store::ChunkId([1; 32]),
            kura_store::ChunkId::ZERO,
            kura_store::ChunkId([2; 32]),
        ],
    };
    let plain = idx.encode();
    let mut input = vec![1, 2, 0];
    input.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    input.extend_from_slice(&plain);
    // Runs the round-trip assertion inside the harness (it would panic on a mismatch).
    kura_store::fuzz::sealed(&input);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/sealed");
    let seed = root.join("index-encrypted");
    if !seed.exists() {
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(&seed, &input).unwrap();
    }
}

/// The tree seeds are valid documents, so fuzzing starts from inputs that reach the
/// round trip, not only the first error.
#[test]
fn tree_seeds_decode() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/tree");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap()[1..].to_vec();
    let d = kura_store::Dir::decode("seed", &read("directory")).unwrap();
    assert_eq!(d.entries.len(), 5);
    let t = kura_store::TreeIndex::decode("seed", &read("tree-index")).unwrap();
    assert_eq!((t.files, t.dirs, t.chunks.len()), (1, 2, 3));
}

/// Writes a seed when it is missing (the first run after adding it), so that fuzzing starts
/// from an input that reaches the decoder's end, not its first error.
fn seed(target: &str, name: &str, input: &[u8]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let path = root.join(name);
    if !path.exists() {
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(&path, input).unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), input, "seed {target}/{name}");
}

/// A tree index with packs, and a pack of two chunks: both go through their harnesses
/// whole (a mismatch would panic there), and are the seeds of their fuzz targets.
#[test]
fn pack_and_tree_index_seeds_reach_the_end_of_their_decoders() {
    use kura_store::{ChunkId, PackId, Packed, Piece, TreeIndex};
    let root = ChunkId([2; 32]);
    let t = TreeIndex {
        root: Piece { id: root, len: 90 },
        files: 2,
        dirs: 1,
        bytes: 300,
        chunks: vec![ChunkId([1; 32]), root, ChunkId([3; 32])],
        places: vec![
            Some(Packed {
                pack: PackId([5; 32]),
                offset: 0,
                len: 120,
            }),
            None,
            Some(Packed {
                pack: PackId([5; 32]),
                offset: 120,
                len: 80,
            }),
        ],
    };
    let mut input = vec![1];
    input.extend_from_slice(&t.encode());
    kura_store::fuzz::tree(&input);
    seed("tree", "tree-index-v2", &input);

    // Two blobs of 72 bytes (empty payloads; they fail their own checks, which is what the
    // harness then reports) and a header listing them.
    let mut header = b"KPAK\x01\0\0\0".to_vec();
    header.extend_from_slice(&2u64.to_le_bytes());
    for (i, offset) in [(1u8, 0u32), (2, 72)] {
        header.extend_from_slice(&[i; 32]);
        header.extend_from_slice(&offset.to_le_bytes());
        header.extend_from_slice(&72u32.to_le_bytes());
    }
    let mut input = vec![1];
    input.extend_from_slice(&144u16.to_le_bytes());
    input.extend_from_slice(&[0u8; 144]);
    input.extend_from_slice(&header);
    kura_store::fuzz::pack(&input);
    seed("pack", "two-chunks", &input);
}
