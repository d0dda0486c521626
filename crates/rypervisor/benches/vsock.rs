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

mod vsock_harness;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use rypervisor::virtio::vsock::model::GuestDriver;
use rypervisor::virtio::vsock::packet::{OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RW};
use rypervisor::virtio::vsock::unix::port_path;
use vsock_harness::{run, Step};

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
    run(
        "vsock device",
        |direction, size, batch| -> (tempfile::TempDir, Step) {
            match direction {
                "guest → host" => {
                    let (d, s) = guest_to_host(size, batch);
                    (d, Box::new(s))
                }
                _ => {
                    let (d, s) = host_to_guest(size, batch);
                    (d, Box::new(s))
                }
            }
        },
    );
}
