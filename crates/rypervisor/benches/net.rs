//! virtio-net at device level, no guest, on real taps: frames per second through the device
//! to the tap (TX: the model driver offers 1514-byte frames, the device writes them to tap A)
//! and from it (RX: an AF_PACKET socket sends frames out of tap A's interface, the device
//! reads them into guest buffers), next to raw `write`/`read` on tap B in the same run; one
//! frame per kick (ping-pong: every frame pays a kick and an interrupt) or a batch, as
//! Linux's driver queues several frames per kick under load (`xmit_more` on TX; RX buffers
//! posted ahead). The device's rate counts the time in its handlers (`process_queue`,
//! `process_fd`: its event-loop thread's share) and the host side's sends; the model
//! driver's own ring work would run on the guest's vCPU and is shown apart, as the rate over
//! wall time. A second floor adds one eventfd write per kick, the interrupt any device
//! raises per batch of used buffers here (its ratio says what the device costs beyond it).
//! Floors and device alternate within each round; medians and ratios. The model driver
//! negotiates EVENT_IDX and kicks only when the device asks, as Linux's does, and
//! acknowledges every interrupt.
//!
//! Needs two taps and root (AF_PACKET): run `scripts/bench-net.sh`, which makes them in a
//! network namespace of its own and sets `TAPS=tapA,tapB`.

#![allow(missing_docs)]

use std::cell::Cell;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rypervisor::virtio::driver::{Buffer, DriverQueue};
use rypervisor::virtio::net::{open_tap, Net, VNET_HDR};
use rypervisor::virtio::{Active, Interrupt, VirtioDevice};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const SPAN: Duration = Duration::from_millis(300);
const FRAME: usize = 1514;
/// An RX buffer: the vnet header, a frame and some slack.
const RX_BUF: usize = VNET_HDR + FRAME + 64;
/// Frames per kick in the batched cases, as `benches/vsock.rs` batches packets.
const BATCH: usize = 8;

/// Frames/s over the time `step` (which moves `frames` frames) counted (the floor: all of
/// it; the device: its handlers and the host side's sends), and over wall time (with the
/// model driver's own ring work).
fn rate(frames: usize, mut step: impl FnMut() -> Duration) -> (f64, f64) {
    let start = Instant::now();
    let (mut n, mut counted) = (0u64, Duration::ZERO);
    while counted < SPAN {
        counted += step();
        n += frames as u64;
    }
    let n = n as f64;
    (n / counted.as_secs_f64(), n / start.elapsed().as_secs_f64())
}

fn median(v: &[(f64, f64)], key: impl Fn(&(f64, f64)) -> f64) -> f64 {
    let mut v: Vec<f64> = v.iter().map(key).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `f`, adding its time to `total`.
fn timed<T>(total: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let t = f();
    *total += start.elapsed();
    t
}

/// An Ethernet frame to a MAC nobody has (the stack drops it early), after a zero vnet header.
fn frame() -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR];
    f.extend([0x02, 0, 0, 0, 0, 0x99, 0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5]); // local experimental
    f.resize(VNET_HDR + FRAME, 0x5a);
    f
}

/// An AF_PACKET socket that sends raw frames out of interface `name`.
struct Injector {
    fd: OwnedFd,
    addr: libc::sockaddr_ll,
}

impl Injector {
    fn new(name: &str) -> Self {
        let cname = std::ffi::CString::new(name).unwrap();
        // SAFETY: plain libc calls; results checked.
        let (fd, index) = unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET needs root: run scripts/bench-net.sh");
            (
                OwnedFd::from_raw_fd(fd),
                libc::if_nametoindex(cname.as_ptr()),
            )
        };
        // SAFETY: sockaddr_ll is plain data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        Self { fd, addr }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: sends `frame` to a valid sockaddr_ll; the result is checked.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&self.addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n as usize,
            frame.len(),
            "{}",
            std::io::Error::last_os_error()
        );
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    rx: DriverQueue,
    tx: DriverQueue,
    dev: Net,
}

impl Rig {
    /// The driver's interrupt handler acknowledges what it saw (as Linux's virtio-mmio
    /// driver does), so the device raises the line again for the next used buffer.
    fn acknowledge(&self) {
        let status = self.interrupt.status();
        if status != 0 {
            self.interrupt.ack(status);
        }
    }
}

fn rig(tap: File) -> Rig {
    let mut dev = Net::new(tap, [0x02, 0, 0, 0, 0, 0x42]).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let (mut rx, mut tx) = (
        DriverQueue::new(&mem, 64, 0x1000),
        DriverQueue::new(&mem, 64, 0x3000),
    );
    // EVENT_IDX, as Linux's driver negotiates it: interrupts at the next used buffer.
    rx.want_next_used();
    tx.want_next_used();
    let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    dev.activate(Active {
        mem: mem.clone(),
        queues: vec![rx.device_queue(true), tx.device_queue(true)],
        features: 1 << VIRTIO_RING_F_EVENT_IDX,
        interrupt: interrupt.clone(),
    });
    mem.write_slice(&frame(), GuestAddress(0x10_0000)).unwrap();
    Rig {
        mem,
        interrupt,
        rx,
        tx,
        dev,
    }
}

fn main() {
    let taps = std::env::var("TAPS").expect("TAPS=tapA,tapB: run scripts/bench-net.sh");
    let (a, b) = taps.split_once(',').expect("two taps");
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    let mut r = rig(open_tap(a).unwrap());
    let raw = open_tap(b).unwrap();
    let (inject_a, inject_b) = (Injector::new(a), Injector::new(b));
    let f = frame();
    let bare = &f[VNET_HDR..]; // AF_PACKET sends the Ethernet frame alone
    let mut buf = vec![0u8; RX_BUF];
    println!(
        "| direction | frames per kick | raw tap (floor) | virtio-net device | ratio | ratio to floor + interrupt | device + model driver | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // `ONLY=TX` or `ONLY=RX` keeps one direction (for profiling).
    let only = std::env::var("ONLY").unwrap_or_default();
    let cases = [
        ("guest → tap (TX)", 1),
        ("guest → tap (TX)", BATCH),
        ("tap → guest (RX)", 1),
        ("tap → guest (RX)", BATCH),
    ];
    for (direction, batch) in cases.into_iter().filter(|c| c.0.contains(&only)) {
        let tx = direction.contains("TX");
        // With `interrupt` set, the floor also writes an eventfd per kick, as the device
        // signals its irqfd once per batch.
        let (interrupt, irq) = (Cell::new(false), EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut floor = || {
            let start = Instant::now();
            // As the device's side: a batch is sent, then read (RX).
            if tx {
                use std::io::Write;
                (0..batch).for_each(|_| (&raw).write_all(&f).unwrap());
            } else {
                use std::io::Read;
                (0..batch).for_each(|_| inject_b.send(bare));
                for _ in 0..batch {
                    while (&raw).read(&mut buf).is_err() {}
                }
            }
            if interrupt.get() {
                irq.write(1).unwrap();
            }
            start.elapsed()
        };
        let mut device = || {
            let mut counted = Duration::ZERO;
            let mut used = 0;
            if tx {
                let chain = [Buffer {
                    addr: 0x10_0000,
                    len: f.len() as u32,
                    writable: false,
                }];
                for _ in 0..batch {
                    r.tx.offer(&chain).unwrap();
                }
                let sent = r.dev.stats.tx;
                // The kick, if the device asked for one (it waits for it otherwise).
                if r.tx.needs_kick(true) {
                    timed(&mut counted, || r.dev.process_queue(1));
                }
                r.acknowledge();
                while r.tx.take_used().is_some() {
                    used += 1;
                }
                r.tx.want_next_used();
                let reached = (r.dev.stats.tx - sent) as usize;
                assert_eq!(reached, batch, "every frame reached the tap (none dropped)");
            } else {
                for i in 0..batch {
                    let rx_buf = [Buffer {
                        addr: 0x20_0000 + (i * RX_BUF) as u64,
                        len: RX_BUF as u32,
                        writable: true,
                    }];
                    r.rx.offer(&rx_buf).unwrap();
                }
                if r.rx.needs_kick(true) {
                    timed(&mut counted, || r.dev.process_queue(0));
                }
                timed(&mut counted, || {
                    (0..batch).for_each(|_| inject_a.send(bare))
                });
                while used < batch {
                    timed(&mut counted, || r.dev.process_fd(0));
                    r.acknowledge();
                    while r.rx.take_used().is_some() {
                        used += 1;
                    }
                    r.rx.want_next_used();
                }
            }
            assert_eq!(used, batch, "{direction}: every frame comes back used");
            counted
        };
        let (mut fl, mut fi, mut dv) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let mut floor_pair = |plain: bool| {
                interrupt.set(!plain);
                let v = if plain { &mut fl } else { &mut fi };
                v.push(rate(batch, &mut floor));
            };
            if round % 2 == 0 {
                floor_pair(true);
                floor_pair(false);
                dv.push(rate(batch, &mut device));
            } else {
                dv.push(rate(batch, &mut device));
                floor_pair(false);
                floor_pair(true);
            }
        }
        let (floor_rate, floor_irq) = (median(&fl, |r| r.0), median(&fi, |r| r.0));
        let (dev_rate, wall) = (median(&dv, |r| r.0), median(&dv, |r| r.1));
        println!(
            "| {direction} | {batch} | {:.0}k frames/s | {:.0}k frames/s | **{:.2}×** | {:.2}× | {:.0}k frames/s | {:.2}× |",
            floor_rate / 1e3,
            dev_rate / 1e3,
            dev_rate / floor_rate,
            dev_rate / floor_irq,
            wall / 1e3,
            wall / floor_rate
        );
    }
    let _ = &r.mem;
}
