//! Fuzzes virtio-net's RX and TX paths: the guest's TX chains of any shape (into or outside
//! guest memory, either direction, any lengths) and RX buffers of any shape, against frames
//! of any size from the "tap" (a SOCK_SEQPACKET socket pair standing in for one: a datagram
//! per frame). The device must never panic and never write past the buffers it was given.
#![no_main]

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use rypervisor::virtio::driver::{Buffer, DriverQueue};
use rypervisor::virtio::net::Net;
use rypervisor::virtio::{Active, Interrupt, VirtioDevice};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

fn pair() -> (File, UnixDatagram) {
    let mut fds = [0; 2];
    let kind = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: a plain system call filling a live array; the result is checked.
    assert_eq!(
        unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) },
        0
    );
    // SAFETY: two new descriptors nobody else owns.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (File::from(a), UnixDatagram::from(b))
}

fuzz_target!(|data: &[u8]| {
    let (tap, peer) = pair();
    let mut dev = Net::new(tap, [0x52, 0x54, 0, 0, 0, 1]).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut rx = DriverQueue::new(&mem, 16, 0x1000);
    let mut tx = DriverQueue::new(&mem, 16, 0x2000);
    dev.activate(Active {
        mem: mem.clone(),
        queues: vec![rx.device_queue(false), tx.device_queue(false)],
        features: 0,
        interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
    });
    // Records: [kind, n], then n descriptors of 6 bytes (kind 0: TX chain, 1: RX chain) or
    // a frame of n * 8 bytes from the tap (kind 2); anything else lets the device serve.
    let mut rest = data;
    let mut sink = [0u8; 2048];
    while rest.len() >= 2 {
        let (kind, n) = (rest[0] % 4, usize::from(rest[1] % 5) + 1);
        rest = &rest[2..];
        match kind {
            0 | 1 if rest.len() >= 6 * n => {
                let chain: Vec<Buffer> = rest[..6 * n]
                    .chunks_exact(6)
                    .map(|c| Buffer {
                        addr: u64::from(u32::from_le_bytes([c[0], c[1], c[2], 0])) << (c[5] >> 5),
                        len: u32::from(u16::from_le_bytes([c[3], c[4]])),
                        writable: c[5] & 1 != 0,
                    })
                    .collect();
                rest = &rest[6 * n..];
                let q = if kind == 0 { &mut tx } else { &mut rx };
                if q.offer(&chain).is_some() {
                    dev.process_queue(usize::from(kind == 0));
                }
                while q.take_used().is_some() {}
            }
            2 => {
                let len = (n * 8).min(rest.len());
                let _ = peer.send(&rest[..len]);
                rest = &rest[len..];
                dev.process_fd(0);
                while rx.take_used().is_some() {}
            }
            _ => {
                dev.process_fd(0);
                while peer.recv(&mut sink).is_ok() {}
            }
        }
    }
});
