//! Any bytes given to the blob decoder (keyless check and full decode with a key) must give
//! a value or an error, never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use kura_backend::MemoryBackend;
use kura_store::blob::{self, BlobKind};
use kura_store::{KeySecret, Vault, VaultOptions};
use libfuzzer_sys::fuzz_target;

fn vaults() -> &'static [Vault; 2] {
    static V: OnceLock<[Vault; 2]> = OnceLock::new();
    V.get_or_init(|| {
        let make = |s: &KeySecret| Vault::create(Arc::new(MemoryBackend::default()), &VaultOptions::for_tests(), s).unwrap();
        [make(&KeySecret::None), make(&KeySecret::from("fuzz"))]
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = blob::check_stored("fuzz", data);
    for v in vaults() {
        let mut codec = v.codec();
        let _ = codec.decode_chunk(&kura_store::ChunkId([7; 32]), data.to_vec());
        let _ = codec.decode(BlobKind::Index, b"rps/x/disk0.index", "fuzz", data.to_vec());
    }
});
