//! The harness of the vsock device benchmark, apart from any device: the cases (4 KiB and
//! 64 KiB payloads, one packet or a batch per kick, both directions), the Unix socket-pair
//! floors and the interleaved rounds that time them against a device's steps.
//! `benches/vsock.rs` runs rypervisor's device in it and `peers/firecracker-vsock`
//! Firecracker's, so both are measured the same way.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

const SPAN: Duration = Duration::from_millis(300);

/// Rates of one side: MB/s over the time `step` counted (the floor: all of it; the device:
/// its handlers and the host program's socket calls) and over wall time (the device's with
/// the model driver's own work).
#[derive(Clone, Copy)]
pub struct Rate {
    pub mbs: f64,
    pub wall_mbs: f64,
}

/// Runs `step` (which moves `bytes` and returns the time to count) until it has counted
/// about SPAN.
pub fn throughput(bytes: usize, mut step: impl FnMut() -> Duration) -> Rate {
    let start = Instant::now();
    let (mut n, mut counted) = (0u64, Duration::ZERO);
    while counted < SPAN {
        counted += step();
        n += 1;
    }
    let moved = n as f64 * bytes as f64 / 1e6;
    Rate {
        mbs: moved / counted.as_secs_f64(),
        wall_mbs: moved / start.elapsed().as_secs_f64(),
    }
}

pub fn median(v: &[Rate], key: impl Fn(&Rate) -> f64) -> f64 {
    let mut v: Vec<f64> = v.iter().map(key).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Packets per step: 1 (ping-pong: every packet pays a kick, an interrupt, an epoll turn) or
/// a batch, as a streaming driver queues several packets per kick.
pub const BATCH: usize = 8;

/// A socket pair moving `batch` writes of `size` bytes per step, then reading them: the floor.
/// Its reads are as the device's path reads: guest → host, the host program reads the batch
/// at once; host → guest, the reading side takes one packet's `size` at a time (each guest
/// RX buffer holds one packet). With `interrupt`, it also writes an eventfd once per step,
/// as the device signals its irqfd once per kick: what any device pays beyond the bytes.
pub fn floor(
    size: usize,
    batch: usize,
    per_packet_reads: bool,
    interrupt: bool,
) -> impl FnMut() -> Duration {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let data = vec![0x5au8; size];
    let mut buf = vec![0u8; size * batch];
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    move || {
        let start = Instant::now();
        for _ in 0..batch {
            a.write_all(&data).unwrap();
        }
        if per_packet_reads {
            for chunk in buf.chunks_mut(size) {
                b.read_exact(chunk).unwrap();
            }
        } else {
            b.read_exact(&mut buf).unwrap();
        }
        if interrupt {
            irq.write(1).unwrap();
        }
        start.elapsed()
    }
}

/// The cases: payload size, packets per kick.
pub const CASES: [(usize, usize); 4] =
    [(4 << 10, 1), (4 << 10, BATCH), (64 << 10, 1), (64 << 10, 2)];

/// `ROUNDS` (default 7).
pub fn rounds() -> usize {
    std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7)
}

/// One step of a case: it moves the case's bytes and returns the time to count.
pub type Step = Box<dyn FnMut() -> Duration>;

/// Runs every case (those whose label, "host → guest 4K×1", contains `ONLY`) against the
/// floors, `device(direction, size, batch)` setting up the device's step for one (with the
/// directory that holds its sockets); prints the table, `name` heading the device's column.
pub fn run(name: &str, device: impl Fn(&str, usize, usize) -> (tempfile::TempDir, Step)) {
    let rounds = rounds();
    println!(
        "| direction | payload | packets per kick | socket pair (floor) | {name} | ratio | ratio to floor + interrupt | device + model driver | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (size, batch) in CASES {
        for direction in ["guest → host", "host → guest"] {
            // `ONLY=text` keeps the cases whose label ("host → guest 4K×1") contains it.
            let label = format!("{direction} {}K×{batch}", size >> 10);
            if !label.contains(&std::env::var("ONLY").unwrap_or_default()) {
                continue;
            }
            let bytes = size * batch;
            let per_packet_reads = direction == "host → guest";
            let mut floor_step = floor(size, batch, per_packet_reads, false);
            let mut floor_irq = floor(size, batch, per_packet_reads, true);
            let (_dir, mut device_step) = device(direction, size, batch);
            let (mut f, mut fi, mut d) = (Vec::new(), Vec::new(), Vec::new());
            if let Ok(side) = std::env::var("PROFILE") {
                // One side alone, for a profiler: PROFILE=floor or PROFILE=device.
                let step: &mut dyn FnMut() -> Duration = match side.as_str() {
                    "floor" => &mut floor_step,
                    _ => &mut device_step,
                };
                let mbs = throughput(bytes, step).mbs;
                println!(
                    "| {direction} | {} KiB | {batch} | {side} alone: {mbs:.0} MB/s |",
                    size >> 10
                );
                continue;
            }
            for round in 0..rounds {
                if round % 2 == 0 {
                    f.push(throughput(bytes, &mut floor_step));
                    fi.push(throughput(bytes, &mut floor_irq));
                    d.push(throughput(bytes, &mut device_step));
                } else {
                    d.push(throughput(bytes, &mut device_step));
                    fi.push(throughput(bytes, &mut floor_irq));
                    f.push(throughput(bytes, &mut floor_step));
                }
            }
            let (floor_mbs, irq_mbs) = (median(&f, |r| r.mbs), median(&fi, |r| r.mbs));
            let (mbs, wall) = (median(&d, |r| r.mbs), median(&d, |r| r.wall_mbs));
            println!(
                "| {direction} | {} KiB | {batch} | {floor_mbs:.0} MB/s | {mbs:.0} MB/s | **{:.2}×** | {:.2}× | {wall:.0} MB/s | {:.2}× |",
                size >> 10,
                mbs / floor_mbs,
                mbs / irq_mbs,
                wall / floor_mbs
            );
        }
    }
}
