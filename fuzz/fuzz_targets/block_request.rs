//! Fuzzes virtio-blk request handling: chains of any shape (descriptors into or outside guest
//! memory, either direction, any lengths) carrying any header (type, sector) and any data
//! (DISCARD / WRITE_ZEROES segments included), against a small image file, read-only or not.
//! The device must never panic, and must never touch the file past its end.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use rypervisor::virtio::block::{Block, Disk};
use rypervisor::virtio::driver::{Buffer, DriverQueue};
use rypervisor::virtio::{Active, Interrupt, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const IMAGE: u64 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let file = tempfile::tempfile().unwrap();
    file.set_len(IMAGE).unwrap();
    let disk = Disk::new(
        file.try_clone().unwrap(),
        IMAGE,
        mode & 1 != 0,
        mode & 2 != 0,
    );
    let mut dev = Block::new(disk, Some("FUZZ")).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut q = DriverQueue::new(&mem, 16, 0x1000);
    dev.activate(Active {
        mem: mem.clone(),
        queues: vec![q.device_queue(mode & 4 != 0)],
        features: 0,
        interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
    });
    // Records: [n descriptors (1-4)] then per descriptor [addr: 3 bytes, len: 2 bytes << shift,
    // flags], then 32 bytes written at 0x8000 (a header and two segments, where chains point).
    let mut rest = data;
    while rest.len() >= 1 + 6 + 32 {
        let n = usize::from(rest[0] % 4) + 1;
        let need = 1 + 6 * n + 32;
        if rest.len() < need {
            break;
        }
        let chain: Vec<Buffer> = rest[1..1 + 6 * n]
            .chunks_exact(6)
            .map(|c| Buffer {
                addr: u64::from(u32::from_le_bytes([c[0], c[1], c[2], 0])) << (c[5] >> 5),
                len: u32::from(u16::from_le_bytes([c[3], c[4]])) << (c[5] & 7),
                writable: c[5] & 8 != 0,
            })
            .collect();
        let _ = mem.write_slice(&rest[1 + 6 * n..need], GuestAddress(0x8000));
        if q.offer(&chain).is_some() {
            dev.process_queue(0);
        }
        while q.take_used().is_some() {}
        rest = &rest[need..];
    }
    assert_eq!(
        file.metadata().unwrap().len(),
        IMAGE,
        "the image keeps its size"
    );
});
