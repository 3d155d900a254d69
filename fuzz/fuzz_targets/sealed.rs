//! Blobs sealed with a valid checksum and AEAD tag around fuzzed header fields and payload,
//! so decompression and the decoder of every blob kind are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kura_store::fuzz::sealed(data);
});
