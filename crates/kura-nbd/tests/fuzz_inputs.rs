//! The fuzz harness's inputs replayed (feature `fuzzing`): the seed session (a client that
//! negotiates everything, reads, asks for status, writes and disconnects), every truncation
//! of it, and what fuzzing found (fuzz/regressions/nbd_server) end cleanly.
#![cfg(feature = "fuzzing")]

use std::path::Path;

fn inputs(kind: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(kind)
        .join("nbd_server");
    match std::fs::read_dir(dir) {
        Ok(d) => d
            .flatten()
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn the_seed_session_is_answered_and_every_truncation_ends_cleanly() {
    let seeds = inputs("seeds");
    assert!(
        !seeds.is_empty(),
        "fuzz/seeds/nbd_server has the seed session"
    );
    for seed in &seeds {
        // The whole session gets every answer: handshake, options, reads (64 KiB of data
        // and a 128 KiB read of hole and data), status replies.
        let written = kura_nbd::fuzz_session(seed);
        assert!(written > 4096 + 65536, "only {written} bytes answered");
        for cut in 0..seed.len() {
            kura_nbd::fuzz_session(&seed[..cut]);
        }
    }
    for found in inputs("regressions") {
        kura_nbd::fuzz_session(&found);
    }
}
