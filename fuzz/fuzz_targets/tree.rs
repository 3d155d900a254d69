//! Any bytes given to a file tree's decoders (directory documents and tree indexes) give a
//! value or an error, never a panic; what decodes survives a re-encode.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kura_store::fuzz::tree(data));
