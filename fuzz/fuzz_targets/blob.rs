//! Any bytes as a stored blob: the keyless check and a full decode, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kura_store::fuzz::blob(data);
});
