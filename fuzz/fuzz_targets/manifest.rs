//! Any bytes given to the manifest decoder give a manifest or an error, never a panic; a
//! decoded manifest survives a re-encode.
#![no_main]

use kura_store::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode("fuzz", data) {
        assert_eq!(Manifest::decode("fuzz", &m.encode()).unwrap(), m);
    }
});
