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
        + replay("tree", fuzz::tree);
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
