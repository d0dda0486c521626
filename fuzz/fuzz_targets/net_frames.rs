//! Fuzzes virtio-net's RX and TX paths: the guest's TX chains of any shape (into or outside
//! guest memory, either direction, any lengths) and RX buffers of any shape, against frames
//! of any size up to 4 KiB from the "tap" (a SOCK_SEQPACKET socket pair standing in for one:
//! a datagram per frame), with the checksum offloads acknowledged or not (the input's first
//! byte). The device must never panic, and never report more bytes used than an RX chain's
//! writable buffers hold.
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
    use virtio_bindings::virtio_net::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM};
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let features = (u64::from(first & 1) << VIRTIO_NET_F_CSUM)
        | (u64::from(first >> 1 & 1) << VIRTIO_NET_F_GUEST_CSUM);
    let (tap, peer) = pair();
    let mut dev = Net::new(tap, [0x52, 0x54, 0, 0, 0, 1]).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut rx = DriverQueue::new(&mem, 16, 0x1000);
    let mut tx = DriverQueue::new(&mem, 16, 0x2000);
    dev.activate(Active {
        mem: mem.clone(),
        queues: vec![rx.device_queue(false), tx.device_queue(false)],
        features,
        interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
    });
    // Records: [kind, n], then n descriptors of 6 bytes (kind 0: TX chain, 1: RX chain) or,
    // kind 2, a frame from the tap of the length the next two bytes give (up to 4 KiB, as
    // far as the input goes); anything else lets the device serve.
    let mut rest = data;
    let mut sink = vec![0u8; 70 << 10];
    // What each RX chain offered can hold (its writable bytes), by head.
    let mut room = std::collections::HashMap::new();
    let take_rx = |rx: &mut DriverQueue, room: &mut std::collections::HashMap<u16, u64>| {
        while let Some((head, len)) = rx.take_used() {
            let holds = room.remove(&head).unwrap_or(0);
            assert!(
                u64::from(len) <= holds,
                "used {len} of a chain holding {holds}"
            );
        }
    };
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
                let holds: u64 = (chain.iter().filter(|b| b.writable))
                    .map(|b| u64::from(b.len))
                    .sum();
                if kind == 0 {
                    if tx.offer(&chain).is_some() {
                        dev.process_queue(1);
                    }
                    while tx.take_used().is_some() {}
                } else {
                    // An RX buffer over the rings themselves would let a frame rewrite them,
                    // and then the model's own bookkeeping (not the device) goes wrong: not
                    // offered.
                    let rings = 0x1000..0x2000 + DriverQueue::<GuestMemoryMmap>::footprint(16);
                    let over_rings = chain.iter().any(|b| {
                        b.writable && b.addr < rings.end && b.addr + u64::from(b.len) > rings.start
                    });
                    if over_rings {
                        continue;
                    }
                    if let Some(head) = rx.offer(&chain) {
                        room.insert(head, holds);
                        dev.process_queue(0);
                    }
                    take_rx(&mut rx, &mut room);
                }
            }
            2 if rest.len() >= 2 => {
                let want = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % 4097;
                rest = &rest[2..];
                let len = want.min(rest.len());
                let _ = peer.send(&rest[..len]);
                rest = &rest[len..];
                dev.process_fd(0);
                take_rx(&mut rx, &mut room);
            }
            _ => {
                dev.process_fd(0);
                take_rx(&mut rx, &mut room);
                while peer.recv(&mut sink).is_ok() {}
            }
        }
    }
});
