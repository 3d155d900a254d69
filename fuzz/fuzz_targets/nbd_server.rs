//! Any bytes as what a hostile client sends to kura's NBD server.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kura_nbd::fuzz_session(data);
});
