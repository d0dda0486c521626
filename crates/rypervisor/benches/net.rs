//! virtio-net at device level, no guest, on real taps: frames per second through the device
//! to the tap (TX: the model driver offers a 1514-byte frame, the device writes it to tap A)
//! and from it (RX: an AF_PACKET socket sends a frame out of tap A's interface, the device
//! reads it into a guest buffer), next to raw `writev`/`read` on tap B in the same run.
//! Floor and device alternate within each round; medians and ratios.
//!
//! Needs two taps and root (AF_PACKET): run `scripts/bench-net.sh`, which makes them in a
//! network namespace of its own and sets `TAPS=tapA,tapB`.

#![allow(missing_docs)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rypervisor::virtio::driver::{Buffer, DriverQueue};
use rypervisor::virtio::net::{open_tap, Net, VNET_HDR};
use rypervisor::virtio::{Active, Interrupt, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const SPAN: Duration = Duration::from_millis(300);
const FRAME: usize = 1514;

fn rate(mut step: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < SPAN {
        step();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
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
    rx: DriverQueue,
    tx: DriverQueue,
    dev: Net,
}

fn rig(tap: File) -> Rig {
    let mut dev = Net::new(tap, [0x02, 0, 0, 0, 0, 0x42]).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let (rx, tx) = (
        DriverQueue::new(&mem, 64, 0x1000),
        DriverQueue::new(&mem, 64, 0x3000),
    );
    dev.activate(Active {
        mem: mem.clone(),
        queues: vec![rx.device_queue(false), tx.device_queue(false)],
        features: 0,
        interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
    });
    mem.write_slice(&frame(), GuestAddress(0x10_0000)).unwrap();
    Rig { mem, rx, tx, dev }
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
    let mut buf = vec![0u8; VNET_HDR + FRAME + 64];
    println!("| direction | raw tap (floor) | virtio-net device | ratio |");
    println!("|---|---|---|---|");
    for direction in ["guest → tap (TX)", "tap → guest (RX)"] {
        let tx = direction.contains("TX");
        let mut floor = || {
            if tx {
                use std::io::Write;
                (&raw).write_all(&f).unwrap();
            } else {
                use std::io::Read;
                inject_b.send(bare);
                while (&raw).read(&mut buf).is_err() {}
            }
        };
        let mut device = || {
            if tx {
                let chain = [Buffer {
                    addr: 0x10_0000,
                    len: f.len() as u32,
                    writable: false,
                }];
                r.tx.offer(&chain).unwrap();
                r.dev.process_queue(1);
                while r.tx.take_used().is_some() {}
            } else {
                let rx_buf = [Buffer {
                    addr: 0x20_0000,
                    len: (VNET_HDR + FRAME + 64) as u32,
                    writable: true,
                }];
                r.rx.offer(&rx_buf).unwrap();
                inject_a.send(bare);
                loop {
                    r.dev.process_fd(0);
                    if r.rx.take_used().is_some() {
                        break;
                    }
                }
            }
        };
        let (mut fl, mut dv) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            if round % 2 == 0 {
                fl.push(rate(&mut floor));
                dv.push(rate(&mut device));
            } else {
                dv.push(rate(&mut device));
                fl.push(rate(&mut floor));
            }
        }
        let (fl, dv) = (median(fl), median(dv));
        println!(
            "| {direction} | {:.0}k frames/s | {:.0}k frames/s | **{:.2}×** |",
            fl / 1e3,
            dv / 1e3,
            dv / fl
        );
    }
    let _ = &r.mem;
}
