//! virtio-blk at device level, no guest: the model driver (`virtio::driver`) offers requests
//! to the real device over a 64 MiB image in the page cache: 4 KiB random reads and writes at
//! queue depth 1 and 32 (32 requests per kick), and sequential 1 MiB reads. The floor does
//! the same I/O with `pread`/`pwrite` into a buffer of the same kind of memory; a second
//! floor adds one eventfd write per kick, the interrupt any device raises (its ratio says
//! what the device costs beyond it). Floors and device alternate within each round (the
//! order flips every round); medians of each and the ratios. The device's rate
//! counts the time of its `process_queue` calls, which is what its event-loop thread spends
//! (the floor's: the whole of its loop); the model driver's own work (headers, descriptors,
//! taking used entries) would run on the guest's vCPU, and is shown apart, as the rate over
//! wall time of driver and device together. Run with
//! `cargo bench -p rypervisor --bench block` (`ROUNDS=N`, default 7; `ONLY=read` keeps the
//! workloads whose name contains the text).

#![allow(missing_docs)]

use std::cell::Cell;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rypervisor::virtio::block::{Block, Disk};
use rypervisor::virtio::driver::{Buffer, DriverQueue};
use rypervisor::virtio::{Active, Interrupt, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const IMAGE: u64 = 64 << 20;
const SPAN: Duration = Duration::from_millis(300);
const HEADERS: u64 = 0x10_0000;
const STATUS: u64 = 0x18_0000;
const DATA: u64 = 0x20_0000;

/// One side's rates: operations/s and MB/s over the time `step` counted (the device's
/// thread: `process_queue`; the floor: all of it), and operations/s over wall time (the
/// device's with the model driver's own work).
#[derive(Clone, Copy)]
struct Rate {
    iops: f64,
    mbs: f64,
    wall_iops: f64,
    wall_mbs: f64,
}

/// Runs `step` (`ops` operations of `bytes` bytes each; it returns the time to count) until
/// it has counted about SPAN.
fn measure(ops: usize, bytes: usize, mut step: impl FnMut() -> Duration) -> Rate {
    let start = Instant::now();
    let (mut n, mut counted) = (0u64, Duration::ZERO);
    while counted < SPAN {
        counted += step();
        n += ops as u64;
    }
    let (c, wall) = (counted.as_secs_f64(), start.elapsed().as_secs_f64());
    Rate {
        iops: n as f64 / c,
        mbs: n as f64 * bytes as f64 / c / 1e6,
        wall_iops: n as f64 / wall,
        wall_mbs: n as f64 * bytes as f64 / wall / 1e6,
    }
}

fn median(v: &[Rate], key: impl Fn(&Rate) -> f64) -> f64 {
    let mut v: Vec<f64> = v.iter().map(key).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Offsets for `len`-byte I/O, the same series for floor and device: random and aligned
/// (xorshift, seed 7) or, for the sequential workload, one after another, wrapping at the
/// image's end.
struct Offsets {
    x: u64,
    sequential: bool,
    at: u64,
}

impl Offsets {
    fn new(sequential: bool) -> Self {
        Self {
            x: 7,
            sequential,
            at: 0,
        }
    }

    fn next(&mut self, len: u64) -> u64 {
        if self.sequential {
            let at = self.at;
            self.at = (self.at + len) % IMAGE;
            return at;
        }
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        (self.x % (IMAGE / len)) * len
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    q: DriverQueue,
    dev: Block,
}

fn rig(file: &std::fs::File) -> Rig {
    let disk = Disk::new(file.try_clone().unwrap(), IMAGE, false, false);
    let mut dev = Block::new(disk, None).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
    let q = DriverQueue::new(&mem, 128, 0x1000);
    dev.activate(Active {
        mem: mem.clone(),
        queues: vec![q.device_queue(false)],
        features: 0,
        interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
    });
    Rig { mem, q, dev }
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
        let served = Instant::now();
        self.dev.process_queue(0);
        let served = served.elapsed();
        let mut done = 0;
        while self.q.take_used().is_some() {
            done += 1;
        }
        assert_eq!(done, depth);
        assert_eq!(self.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
        served
    }
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    let file = tempfile::tempfile().unwrap();
    file.set_len(IMAGE).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for at in (0..IMAGE).step_by(chunk.len()) {
        file.write_all_at(&chunk, at).unwrap(); // in the page cache, no holes
    }
    let mut r = rig(&file);
    println!(
        "| workload | pread/pwrite (floor) | virtio-blk device | ratio | ratio to floor + interrupt | device + model driver | ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    let cases: [(&str, bool, usize, u32); 5] = [
        ("4 KiB random read, QD 1", false, 1, 4096),
        ("4 KiB random read, QD 32", false, 32, 4096),
        ("4 KiB random write, QD 1", true, 1, 4096),
        ("4 KiB random write, QD 32", true, 32, 4096),
        ("1 MiB sequential read", false, 1, 1 << 20),
    ];
    // `ONLY=text` keeps the workloads whose name contains it (for profiling one of them).
    let only = std::env::var("ONLY").unwrap_or_default();
    for (name, write, depth, len) in cases.into_iter().filter(|c| c.0.contains(&only)) {
        let sequential = len == 1 << 20;
        // The floor's buffer is memory of the same kind as guest memory (an anonymous mapping
        // of the same size), so both copies land in like pages (THP and TLB effects alike).
        let floor_mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let host = GuestMemoryBackend::get_host_address(&floor_mem, GuestAddress(DATA)).unwrap();
        // SAFETY: the mapping is 8 MiB, DATA + 32 × 4 KiB or 1 MiB lies inside it, and it
        // outlives `buf` (both live until the end of this iteration); nothing else uses it.
        let buf = unsafe { std::slice::from_raw_parts_mut(host, len as usize * depth) };
        let (mut fo, mut d_off) = (Offsets::new(sequential), Offsets::new(sequential));
        // With `interrupt` set, the floor also writes an eventfd once per kick, as the device
        // signals its irqfd: what any device pays beyond the I/O itself.
        let (interrupt, irq) = (Cell::new(false), EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut floor = || {
            let start = Instant::now();
            for i in 0..depth {
                let at = fo.next(u64::from(len));
                let b = &mut buf[i * len as usize..(i + 1) * len as usize];
                if write {
                    file.write_all_at(b, at).unwrap();
                } else {
                    file.read_exact_at(b, at).unwrap();
                }
            }
            if interrupt.get() {
                irq.write(1).unwrap();
            }
            start.elapsed()
        };
        let mut device = || r.batch(write, depth, len, &mut d_off);
        let (mut f, mut fi, mut d) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let mut floor_pair = |plain: bool| {
                interrupt.set(!plain);
                let v = if plain { &mut f } else { &mut fi };
                v.push(measure(depth, len as usize, &mut floor));
            };
            if round % 2 == 0 {
                floor_pair(true);
                floor_pair(false);
                d.push(measure(depth, len as usize, &mut device));
            } else {
                d.push(measure(depth, len as usize, &mut device));
                floor_pair(false);
                floor_pair(true);
            }
        }
        let show = |iops: f64, mbs: f64| match sequential {
            true => format!("{mbs:.0} MB/s"),
            false => format!("{:.0}k IOPS", iops / 1000.0),
        };
        let (floor_iops, floor_irq) = (median(&f, |r| r.iops), median(&fi, |r| r.iops));
        let (iops, wall) = (median(&d, |r| r.iops), median(&d, |r| r.wall_iops));
        println!(
            "| {name} | {} | {} | **{:.2}×** | {:.2}× | {} | {:.2}× |",
            show(floor_iops, median(&f, |r| r.mbs)),
            show(iops, median(&d, |r| r.mbs)),
            iops / floor_iops,
            iops / floor_irq,
            show(wall, median(&d, |r| r.wall_mbs)),
            wall / floor_iops
        );
    }
}
