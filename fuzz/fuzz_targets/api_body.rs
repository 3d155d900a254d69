//! Any bytes as the JSON body of every API route that takes one.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kura_server::fuzz_bodies(data);
});
