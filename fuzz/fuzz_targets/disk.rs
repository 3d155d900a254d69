//! Any bytes as a guest's disk, read as `kura files` reads a point: partition tables, then
//! each ext4, XFS or FAT file system walked and read whole; errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kura_files::fuzz::disk(data);
});
