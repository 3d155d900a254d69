//! Any bytes given to the disk index decoder give an index or an error, never a panic; a
//! decoded index re-encodes to the same bytes.
#![no_main]

use kura_store::DiskIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(idx) = DiskIndex::decode("fuzz", data) {
        assert_eq!(idx.encode(), data);
    }
});
