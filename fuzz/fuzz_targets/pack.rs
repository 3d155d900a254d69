//! Any pack (its blobs and a header sealed under the test key) is parsed and its chunks read
//! from their places, giving values or errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kura_store::fuzz::pack(data));
