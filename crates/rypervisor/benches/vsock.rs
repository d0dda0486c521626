//! The vsock device at device level, no guest: the model driver (`virtio::vsock::model`)
//! pushes RW packets through the real device to a real Unix socket (guest → host) and takes
//! what a host program writes (host → guest), 4 KiB and 64 KiB payloads, one packet or a
//! batch per kick. The guest's own copies (its application's bytes into and out of its
//! buffers) are left out: they run on the guest's vCPU, not in the VMM. The floor moves the
//! same bytes over a Unix socket pair with `write` + `read`. The device's rate counts the
//! time in its handlers (`GuestDriver::device_time`: its event-loop thread's share) plus the
//! host program's socket calls; the model driver's own ring work (offering buffers, taking
//! used ones) would run on the guest's vCPU and is shown apart, as the rate over wall time of
//! all of it together. A second floor adds one eventfd write per kick, the interrupt any
//! device raises (its ratio says what the device costs beyond it). Floors and device alternate
//! within each round (the order flips every round), so drift on a noisy host falls on both;
//! the table gives the median throughput of each and the ratio. Run with
//! `cargo bench -p rypervisor --bench vsock` (`ROUNDS=N` to change the default 7; `ONLY=text`
//! keeps the cases whose label contains it; `PROFILE=floor|device` runs one side alone).

#![allow(missing_docs)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use rypervisor::virtio::vsock::model::GuestDriver;
use rypervisor::virtio::vsock::packet::{OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RW};
use rypervisor::virtio::vsock::unix::port_path;
use vmm_sys_util::eventfd::EventFd;

const SPAN: Duration = Duration::from_millis(300);

/// Rates of one side: MB/s over the time `step` counted (the floor: all of it; the device:
/// its handlers and the host program's socket calls) and over wall time (the device's with
/// the model driver's own work).
#[derive(Clone, Copy)]
struct Rate {
    mbs: f64,
    wall_mbs: f64,
}

/// Runs `step` (which moves `bytes` and returns the time to count) until it has counted
/// about SPAN.
fn throughput(bytes: usize, mut step: impl FnMut() -> Duration) -> Rate {
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

fn median(v: &[Rate], key: impl Fn(&Rate) -> f64) -> f64 {
    let mut v: Vec<f64> = v.iter().map(key).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Packets per step: 1 (ping-pong: every packet pays a kick, an interrupt, an epoll turn) or
/// a batch, as a streaming driver queues several packets per kick.
const BATCH: usize = 8;

/// A socket pair moving `batch` writes of `size` bytes per step, then reading them: the floor.
/// Its reads are as the device's path reads: guest → host, the host program reads the batch
/// at once; host → guest, the reading side takes one packet's `size` at a time (each guest
/// RX buffer holds one packet). With `interrupt`, it also writes an eventfd once per step,
/// as the device signals its irqfd once per kick: what any device pays beyond the bytes.
fn floor(
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

/// A guest connected to the host's port 5000 (a listener in a temporary directory).
fn connected(size: u32) -> (tempfile::TempDir, GuestDriver, UnixStream) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let listener = UnixListener::bind(port_path(&path, 5000)).unwrap();
    let mut g = GuestDriver::new(3, path, size).unwrap();
    g.send(g.header(OP_REQUEST, 40000, 5000, 0), &[]);
    let got = g.collect();
    assert_eq!({ got[0].0.op }, OP_RESPONSE);
    let (host, _) = listener.accept().unwrap();
    (dir, g, host)
}

/// Guest → host: `batch` RW packets per kick, read by the host program.
fn guest_to_host(size: usize, batch: usize) -> (tempfile::TempDir, impl FnMut() -> Duration) {
    let (dir, mut g, mut host) = connected(size as u32);
    let data = vec![0x5au8; size];
    let mut buf = vec![0u8; size * batch];
    // The TX buffers' payload areas hold the bytes once; each step the model re-offers them.
    let rw = g.header(OP_RW, 40000, 5000, size as u32);
    g.send_batch(&vec![(rw, &data[..]); batch]);
    host.read_exact(&mut buf).unwrap();
    let step = move || {
        let device = g.device_time;
        g.send_in_place(rw, size, batch);
        let start = Instant::now();
        host.read_exact(&mut buf).unwrap();
        let host_time = start.elapsed();
        // The guest takes the device's CREDIT_UPDATEs (one per 128 KiB forwarded) as Linux
        // does; left in the ring they would use up its buffers and leave the device owing.
        g.collect();
        host_time + (g.device_time - device)
    };
    (dir, step)
}

/// Host → guest: the host program writes, the device fills RX buffers, the guest takes them
/// and says so with a CREDIT_UPDATE every 128 KiB (as Linux does when its buffer drains).
fn host_to_guest(size: usize, batch: usize) -> (tempfile::TempDir, impl FnMut() -> Duration) {
    let (dir, mut g, mut host) = connected(size as u32);
    let data = vec![0x5au8; size];
    let (mut received, mut told) = (0u32, 0u32);
    let step = move || {
        let (device, start) = (g.device_time, Instant::now());
        for _ in 0..batch {
            host.write_all(&data).unwrap();
        }
        let host_time = start.elapsed();
        let mut got = 0;
        while got < size * batch {
            for h in g.receive_headers() {
                if h.op == OP_RW {
                    got += h.len as usize;
                }
            }
        }
        received = received.wrapping_add(got as u32);
        if received.wrapping_sub(told) >= 128 << 10 {
            let mut update = g.header(OP_CREDIT_UPDATE, 40000, 5000, 0);
            update.fwd_cnt = received;
            g.send(update, &[]);
            told = received;
        }
        host_time + (g.device_time - device)
    };
    (dir, step)
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    println!(
        "| direction | payload | packets per kick | socket pair (floor) | vsock device | ratio | ratio to floor + interrupt | device + model driver | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (size, batch) in [(4 << 10, 1), (4 << 10, BATCH), (64 << 10, 1), (64 << 10, 2)] {
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
            let (_dir, mut device_step): (_, Box<dyn FnMut() -> Duration>) = match direction {
                "guest → host" => {
                    let (d, s) = guest_to_host(size, batch);
                    (d, Box::new(s))
                }
                _ => {
                    let (d, s) = host_to_guest(size, batch);
                    (d, Box::new(s))
                }
            };
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
