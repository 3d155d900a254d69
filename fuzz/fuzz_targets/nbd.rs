//! Any bytes as the answers of a hostile NBD server to kura's client.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kura_source::nbd::fuzz_replies(data);
});
