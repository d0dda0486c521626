//! Fuzzes the virtio-mmio transport's registers: a guest driver writes and reads any register
//! of its window at any width, in any order, with any value (queue addresses into or outside
//! guest memory, feature words, status transitions, kicks). The transport must never panic,
//! and the device behind it (virtio-rng) must serve whatever queues end up valid.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use rypervisor::bus::BusDevice;
use rypervisor::virtio::rng::Rng;
use rypervisor::virtio::{Interrupt, MmioTransport, VirtioDevice};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
    let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let mut t = MmioTransport::new(rng.clone(), mem, interrupt).unwrap();
    // Each access: [offset lo, offset hi (4 KiB window), width selector, 4 value bytes].
    for op in data.chunks_exact(7) {
        let offset = u64::from(u16::from_le_bytes([op[0], op[1]]) & 0xfff);
        let width = [1usize, 2, 4, 8][usize::from(op[2] & 3)];
        let value = [op[3], op[4], op[5], op[6], 0, 0, 0, 0];
        if op[2] & 0x80 != 0 {
            let mut out = [0u8; 8];
            t.read(offset, &mut out[..width]);
        } else {
            t.write(offset, &value[..width]);
        }
        if op[2] & 0x40 != 0 {
            // The event loop's side: the device serves its queue now.
            rng.lock().unwrap().process_queue(0);
        }
    }
});
