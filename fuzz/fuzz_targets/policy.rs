//! Any bytes as a policy document: parsed and validated, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kura_policy::Policy::parse(data);
});
