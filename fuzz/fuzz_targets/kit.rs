//! Any bytes as a recovery kit (JSON or a printable line).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kura_store::fuzz::kit(data);
});
