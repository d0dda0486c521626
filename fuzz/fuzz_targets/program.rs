//! Fuzzes the sandbox's program checker: any file handed to `rypervisor exec` must be
//! accepted as a static x86-64 program or refused with an error, never panic; an accepted
//! one must load into memory without touching anything outside program memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rypervisor::sandbox::program::Program;
use rypervisor::sandbox::usermem::UserMemory;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Program::parse("fuzz", data.to_vec()) {
        let mem = UserMemory::new(8 << 20).unwrap();
        if p.check_fits("fuzz", 7 << 20, 8 << 20).is_ok() {
            p.load(mem.ram()).unwrap();
        }
    }
});
