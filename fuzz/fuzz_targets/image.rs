//! Fuzzes the image loader: any bytes a user hands to `rypervisor run` (ELF or flat) must
//! give an image or an error, never a panic, and a returned image must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rypervisor::loader::{FlatOptions, Image};

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = Image::from_bytes(data.to_vec(), FlatOptions::default()) {
        for s in &image.segments {
            assert!(s.data.len() as u64 <= s.mem_size);
        }
        let _ = image.check_fits(0, 2 << 20, "");
    }
});
