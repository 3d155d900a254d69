//! Any bytes as a vault config: parsed, bounds-checked, and (key-file configs) unwrapped.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kura_store::fuzz::config(data);
});
