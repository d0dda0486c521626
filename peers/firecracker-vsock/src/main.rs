//! Firecracker's own virtio-vsock device with its Unix-socket backend (hybrid vsock:
//! `vmm::devices::virtio::vsock::{Vsock, VsockUnixBackend}`, the muxer and its connection
//! state machine) at device level, no guest, no KVM: the peer of rypervisor's
//! `crates/rypervisor/benches/vsock.rs`, run in the same harness (its
//! `benches/vsock_harness/mod.rs`: cases, floors, interleaved rounds, table) with the same
//! memory layout, queue size, 64 RX buffers, TX chains of header + payload descriptors and
//! CREDIT_UPDATE every 128 KiB. The model guest driver (`guest.rs`) is
//! rypervisor's `virtio::vsock::model::GuestDriver` re-written over `DriverQueue<FcMem>` for
//! Firecracker's device. Run both with `peers/run.sh vsock`.
//!
//! The device is driven as Firecracker's event loop drives it: a guest kick is its queue
//! eventfd being signalled (KVM's ioeventfd: written here, untimed) and the event manager then
//! calling `Vsock::process`, i.e. `handle_{rx,tx}q_event(EventSet::IN)` (which read that
//! eventfd) followed by `signal_used_queues`; host-socket readiness is the muxer's epoll fd
//! (`backend().as_raw_fd()`, nested in the event manager's epoll) turning readable — polled
//! here, untimed, as the loop's wait — and then `notify_backend(EventSet::IN)` (the muxer's
//! own `epoll_wait(0)` and its handlers, TX retry, RX fill) and `signal_used_queues`.
//!
//! Env: `ROUNDS=N` (default 7), `ONLY=text`, `PROFILE=floor|device`, `VERIFY_ONLY=1`,
//! `STEPS=N` (with ONLY: N device steps of the first matching case, for `strace -c`).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use rypervisor::virtio::vsock::packet::{
    Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
};

mod guest;
#[path = "../../../crates/rypervisor/benches/vsock_harness/mod.rs"]
mod vsock_harness;

use guest::FcGuest;
use rypervisor::virtio::vsock::unix::port_path;
use vsock_harness::{run, Step, CASES};

pub const HOST_CID: u64 = 2;

/// A guest connected to the host's port 5000 (a listener at `<uds>_5000`).
fn connected(size: u32) -> (tempfile::TempDir, FcGuest, UnixStream) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let listener = UnixListener::bind(port_path(&path, 5000)).unwrap();
    let mut g = FcGuest::new(3, &path, size);
    g.send(g.header(OP_REQUEST, 40000, 5000, 0), &[]);
    let got = g.collect();
    assert_eq!(got.len(), 1, "one reply to OP_REQUEST");
    assert_eq!({ got[0].0.op }, OP_RESPONSE);
    g.last_alloc = got[0].0.buf_alloc;
    let (host, _) = listener.accept().unwrap();
    (dir, g, host)
}

fn guest_to_host(size: usize, batch: usize) -> (tempfile::TempDir, impl FnMut() -> Duration) {
    let (dir, mut g, mut host) = connected(size as u32);
    let data = vec![0x5au8; size];
    let mut buf = vec![0u8; size * batch];
    let rw = g.header(OP_RW, 40000, 5000, size as u32);
    g.send_batch(&vec![(rw, &data[..]); batch]);
    host.read_exact(&mut buf).unwrap();
    let step = move || {
        let device = g.device_time;
        g.send_in_place(rw, size, batch);
        let start = Instant::now();
        host.read_exact(&mut buf).unwrap();
        let host_time = start.elapsed();
        g.collect();
        host_time + (g.device_time - device)
    };
    (dir, step)
}

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
        let deadline = Instant::now() + Duration::from_secs(5);
        while got < size * batch {
            for h in g.receive_headers() {
                if h.op == OP_RW {
                    got += h.len as usize;
                }
            }
            assert!(
                Instant::now() < deadline,
                "host → guest stalled at {got} bytes"
            );
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

fn pattern(at: usize) -> u8 {
    (at as u64).wrapping_mul(2654435761).wrapping_shr(13) as u8
}

/// Correctness, untimed: bytes intact both ways over several MiB (varied packet sizes),
/// headers addressed right, no RST, interrupts raised, credit updates from the device.
fn verify() {
    const TOTAL: usize = 6 << 20;
    for rx_size in [4096u32, 64 << 10] {
        // Guest → host.
        let (_d, mut g, mut host) = connected(rx_size);
        let _ = g.irq_evt().read();
        let (mut sent, mut credit_updates, mut credit_requests) = (0usize, 0usize, 0usize);
        // A guest that keeps to the device's credit, as Linux does: never more bytes in flight
        // than the buf_alloc it advertised less what its fwd_cnt says was forwarded.
        let (mut peer_alloc, mut peer_fwd) = (g.last_alloc, 0u32);
        let sizes = [4096usize, 65536, 1000, 4096 * 3, 1, 32768];
        let mut k = 0;
        while sent < TOTAL {
            let mut pkts = Vec::new();
            let mut batch_bytes = 0;
            for _ in 0..(1 + k % 4) {
                let credit = (peer_alloc as usize).saturating_sub(
                    (sent + batch_bytes).wrapping_sub(peer_fwd as usize) & 0xffff_ffff,
                );
                let n = sizes[k % sizes.len()]
                    .min(TOTAL - sent - batch_bytes)
                    .min(credit);
                if n == 0 {
                    break;
                }
                let payload: Vec<u8> = (0..n).map(|i| pattern(sent + batch_bytes + i)).collect();
                pkts.push((g.header(OP_RW, 40000, 5000, n as u32), payload));
                batch_bytes += n;
                k += 1;
            }
            if pkts.is_empty() {
                // Out of credit: ask for an update.
                g.send(g.header(OP_CREDIT_REQUEST, 40000, 5000, 0), &[]);
                credit_requests += 1;
            } else {
                let refs: Vec<(Header, &[u8])> = pkts.iter().map(|(h, p)| (*h, &p[..])).collect();
                g.send_batch(&refs);
                let mut buf = vec![0u8; batch_bytes];
                host.read_exact(&mut buf).unwrap();
                for (i, b) in buf.iter().enumerate() {
                    assert_eq!(*b, pattern(sent + i), "guest → host byte {}", sent + i);
                }
                sent += batch_bytes;
            }
            for (h, _) in g.collect() {
                assert_ne!({ h.op }, OP_RST, "RST guest → host");
                assert_eq!({ h.src_port }, 5000);
                assert_eq!({ h.dst_port }, 40000);
                peer_alloc = h.buf_alloc;
                peer_fwd = h.fwd_cnt;
                if h.op == OP_CREDIT_UPDATE {
                    credit_updates += 1;
                }
            }
        }
        let irqs = g.irq_evt().read().unwrap_or(0);
        assert!(
            irqs > 0 && credit_updates > 0,
            "irqs {irqs} credit updates {credit_updates}"
        );
        println!(
            "verify guest → host (RX buffers {rx_size}): {sent} bytes intact, {credit_updates} CREDIT_UPDATEs ({credit_requests} asked for), {irqs} interrupts, device buf_alloc {peer_alloc}"
        );

        // Host → guest, same connection.
        let (mut recvd, mut told, mut wrote) = (0usize, 0usize, 0usize);
        let mut got = Vec::with_capacity(TOTAL);
        let mut rw_packets = 0usize;
        let chunk = 48 << 10;
        while recvd < TOTAL {
            if wrote < TOTAL && wrote - recvd < 96 << 10 {
                let n = chunk.min(TOTAL - wrote);
                let data: Vec<u8> = (0..n).map(|i| pattern(wrote + i) ^ 0xa5).collect();
                host.write_all(&data).unwrap();
                wrote += n;
            }
            for (h, p) in g.receive() {
                assert_eq!({ h.dst_cid }, 3);
                assert_eq!({ h.src_cid }, HOST_CID);
                assert_eq!({ h.src_port }, 5000);
                assert_eq!({ h.dst_port }, 40000);
                assert_ne!({ h.op }, OP_RST, "RST host → guest");
                if h.op == OP_RW {
                    assert_eq!(h.len as usize, p.len());
                    assert!(p.len() <= rx_size as usize);
                    got.extend_from_slice(&p);
                    recvd += p.len();
                    rw_packets += 1;
                }
            }
            if recvd - told >= 128 << 10 {
                let mut update = g.header(OP_CREDIT_UPDATE, 40000, 5000, 0);
                update.fwd_cnt = recvd as u32;
                g.send(update, &[]);
                told = recvd;
            }
        }
        for (i, b) in got.iter().enumerate() {
            assert_eq!(*b, pattern(i) ^ 0xa5, "host → guest byte {i}");
        }
        println!(
            "verify host → guest (RX buffers {rx_size}): {recvd} bytes intact in {rw_packets} RW packets, {} backend wakes",
            g.wakes
        );
    }
    println!("verify: ok");
}

/// The device's step for one case, with the directory holding its sockets.
fn device_step(direction: &str, size: usize, batch: usize) -> (tempfile::TempDir, Step) {
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
}

fn main() {
    let only = std::env::var("ONLY").unwrap_or_default();
    if let Some(n) = std::env::var("STEPS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        // N device steps of the first matching case alone (for strace -c).
        for (size, batch) in CASES {
            for direction in ["guest → host", "host → guest"] {
                let label = format!("{direction} {}K×{batch}", size >> 10);
                if !label.contains(&only) {
                    continue;
                }
                let (_dir, mut step) = device_step(direction, size, batch);
                eprintln!("STEPS-START");
                let mut t = Duration::ZERO;
                for _ in 0..n {
                    t += step();
                }
                println!("{label}: {n} steps, {} packets, counted {:?}", n * batch, t);
                return;
            }
        }
        return;
    }
    verify();
    if std::env::var("VERIFY_ONLY").is_ok_and(|v| v == "1") {
        return;
    }
    run("Firecracker vsock device", device_step);
}
