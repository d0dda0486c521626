//! The harness of the virtio-blk device benchmark, apart from any device: the 64 MiB image
//! in the page cache, the guest-memory layout, the workloads, the `pread`/`pwrite` floors
//! and the interleaved rounds that time them against a device's batches. `benches/block.rs`
//! runs rypervisor's device in it and `peers/firecracker-blk` Firecracker's, so both are
//! measured the same way.

use std::cell::Cell;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// The image's size.
pub const IMAGE: u64 = 64 << 20;
const SPAN: Duration = Duration::from_millis(300);
/// Where requests' headers, status bytes and data go in an 8 MiB guest memory.
pub const HEADERS: u64 = 0x10_0000;
/// (Status bytes.)
pub const STATUS: u64 = 0x18_0000;
/// (Data buffers.)
pub const DATA: u64 = 0x20_0000;

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
#[derive(Clone)]
pub struct Offsets {
    x: u64,
    sequential: bool,
    at: u64,
}

impl Offsets {
    pub fn new(sequential: bool) -> Self {
        Self {
            x: 7,
            sequential,
            at: 0,
        }
    }

    pub fn next(&mut self, len: u64) -> u64 {
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

/// A 64 MiB image file written whole (in the page cache, no holes), with a name (a peer
/// opens it by path).
pub fn image() -> tempfile::NamedTempFile {
    let image = tempfile::NamedTempFile::new().unwrap();
    let file = image.as_file();
    file.set_len(IMAGE).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for at in (0..IMAGE).step_by(chunk.len()) {
        file.write_all_at(&chunk, at).unwrap();
    }
    image
}

/// `ROUNDS` (default 7).
pub fn rounds() -> usize {
    std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7)
}

/// The workloads: name, write, queue depth, request size.
pub const CASES: [(&str, bool, usize, u32); 5] = [
    ("4 KiB random read, QD 1", false, 1, 4096),
    ("4 KiB random read, QD 32", false, 32, 4096),
    ("4 KiB random write, QD 1", true, 1, 4096),
    ("4 KiB random write, QD 32", true, 32, 4096),
    ("1 MiB sequential read", false, 1, 1 << 20),
];

/// Runs every workload (those whose name contains `ONLY`) against the floors on `file`
/// (with `PROFILE=device`, the device alone: for a profiler),
/// `device` serving one batch — `(write, depth, len, offsets)`: `depth` requests of `len`
/// bytes at the next offsets, one kick, every completion taken — and returning the time
/// the device took; prints the table, `name` heading the device's column.
pub fn run(
    name: &str,
    file: &std::fs::File,
    mut device: impl FnMut(bool, usize, u32, &mut Offsets) -> Duration,
) {
    let rounds = rounds();
    println!(
        "| workload | pread/pwrite (floor) | {name} | ratio | ratio to floor + interrupt | device + model driver | ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    // `ONLY=text` keeps the workloads whose name contains it (for profiling one of them).
    let only = std::env::var("ONLY").unwrap_or_default();
    for (case, write, depth, len) in CASES.into_iter().filter(|c| c.0.contains(&only)) {
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
        let mut device = || device(write, depth, len, &mut d_off);
        if std::env::var("PROFILE").is_ok_and(|p| p == "device") {
            // The device alone, for a profiler.
            let iops = measure(depth, len as usize, &mut device).iops;
            println!("| {case} | | device alone: {:.0}k IOPS |", iops / 1000.0);
            continue;
        }
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
            "| {case} | {} | {} | **{:.2}×** | {:.2}× | {} | {:.2}× |",
            show(floor_iops, median(&f, |r| r.mbs)),
            show(iops, median(&d, |r| r.mbs)),
            iops / floor_iops,
            iops / floor_irq,
            show(wall, median(&d, |r| r.wall_mbs)),
            wall / floor_iops
        );
    }
}
