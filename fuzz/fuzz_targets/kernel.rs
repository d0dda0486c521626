//! Fuzzes kernel-image handling for `rypervisor boot`: format detection and linux-loader's
//! bzImage/ELF loaders over whatever file a user passes, into a 32 MiB guest. Any input must
//! load or give an error, never panic or write outside guest memory.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use rypervisor::boot::kernel::load_kernel;
use rypervisor::loader::kernel::detect;
use rypervisor::memory::GuestRam;

fuzz_target!(|data: &[u8]| {
    let Some(kind) = detect(data) else { return };
    let ram = GuestRam::new(0, 32 << 20).unwrap();
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(data).unwrap();
    let _ = load_kernel(
        ram.guest_memory(),
        std::path::Path::new("fuzz"),
        &mut file,
        kind,
    );
});
