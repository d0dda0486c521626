//! virtio-blk at device level, no guest: the model driver (`virtio::driver`) offers requests
//! to the real device over a 64 MiB image in the page cache: 4 KiB random reads and writes at
//! queue depth 1 and 32 (32 requests per kick), and sequential 1 MiB reads. The floor does
//! the same I/O with `pread`/`pwrite` into a buffer of the same kind of memory; a second
//! floor adds one eventfd write per kick, the interrupt any device raises (its ratio says
//! what the device costs beyond it). Floors and device alternate within each round (the
//! order flips every round); medians of each and the ratios. The device's rate
//! counts the time of its `process_queue` calls, which is what its event-loop thread spends
//! (the floor's: the whole of its loop); the model driver's own work (headers, descriptors,
//! taking used entries, acknowledging each interrupt as Linux's handler does, with
//! EVENT_IDX) would run on the guest's vCPU, and is shown apart, as the rate over
//! wall time of driver and device together. Run with
//! `cargo bench -p rypervisor --bench block` (`ROUNDS=N`, default 7; `ONLY=read` keeps the
//! workloads whose name contains the text).

#![allow(missing_docs)]

mod block_harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use block_harness::{image, run, Offsets, DATA, HEADERS, IMAGE, STATUS};

use rypervisor::virtio::block::{Block, Disk};
use rypervisor::virtio::driver::{Buffer, DriverQueue};
use rypervisor::virtio::{Active, Interrupt, VirtioDevice};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

struct Rig {
    mem: GuestMemoryMmap,
    q: DriverQueue,
    dev: Block,
    interrupt: Arc<Interrupt>,
}

fn rig(file: &std::fs::File) -> Rig {
    let disk = Disk::new(file.try_clone().unwrap(), IMAGE, false, false);
    let mut dev = Block::new(disk, None).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
    let mut q = DriverQueue::new(&mem, 128, 0x1000);
    let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    // EVENT_IDX, as Linux's driver negotiates it.
    q.want_next_used();
    dev.activate(Active {
        mem: mem.clone(),
        queues: vec![q.device_queue(true)],
        features: 1 << VIRTIO_RING_F_EVENT_IDX,
        interrupt: interrupt.clone(),
    });
    Rig {
        mem,
        q,
        dev,
        interrupt,
    }
}

impl Rig {
    /// `depth` requests of `len` bytes at random offsets, one kick, all completions taken;
    /// the time the device took to serve them.
    fn batch(&mut self, write: bool, depth: usize, len: u32, offsets: &mut Offsets) -> Duration {
        for i in 0..depth as u64 {
            let sector = offsets.next(u64::from(len)) / 512;
            let mut header = [0u8; 16];
            header[..4].copy_from_slice(&u32::from(write).to_le_bytes());
            header[8..].copy_from_slice(&sector.to_le_bytes());
            let at = HEADERS + 16 * i;
            self.mem.write_slice(&header, GuestAddress(at)).unwrap();
            let chain = [
                Buffer {
                    addr: at,
                    len: 16,
                    writable: false,
                },
                Buffer {
                    addr: DATA + i * u64::from(len),
                    len,
                    writable: !write,
                },
                Buffer {
                    addr: STATUS + i,
                    len: 1,
                    writable: true,
                },
            ];
            self.q.offer(&chain).unwrap();
        }
        // The kick, if the device asked for one (it waits for it otherwise: a stall).
        let served = Instant::now();
        if self.q.needs_kick(true) {
            self.dev.process_queue(0);
        }
        let served = served.elapsed();
        // The interrupt handler: acknowledges (so the next completion interrupts again, as
        // in a VM), takes every completion, then asks for an interrupt at the next.
        let status = self.interrupt.status();
        assert_ne!(status, 0, "the device interrupted");
        self.interrupt.ack(status);
        let mut done = 0;
        while self.q.take_used().is_some() {
            done += 1;
        }
        self.q.want_next_used();
        assert_eq!(done, depth);
        assert_eq!(self.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
        served
    }
}

fn main() {
    let image = image();
    let mut r = rig(image.as_file());
    run(
        "virtio-blk device",
        image.as_file(),
        |write, depth, len, offsets| r.batch(write, depth, len, offsets),
    );
}
