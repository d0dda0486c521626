//! virtio-net without a guest or a tap: the model driver on guest memory, and a SOCK_SEQPACKET
//! socket pair standing in for the tap (one datagram per frame, as a tap reads and writes).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::device::{RX, TX};
use super::*;
use crate::virtio::driver::{Buffer, DriverQueue};
use crate::virtio::{Active, Interrupt, VirtioDevice};

struct Rig {
    mem: GuestMemoryMmap,
    rx: DriverQueue,
    tx: DriverQueue,
    dev: Net,
    /// The host side of the "tap".
    peer: UnixDatagram,
}

/// A SOCK_SEQPACKET pair: the device's end non-blocking.
fn pair() -> (File, UnixDatagram) {
    let mut fds = [0; 2];
    let kind = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC;
    // SAFETY: a plain system call filling a live array; the result is checked.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) };
    assert_eq!(r, 0);
    // SAFETY: two new descriptors nobody else owns.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let ours = File::from(a);
    // SAFETY: a plain fcntl on our own descriptor.
    unsafe { libc::fcntl(ours.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    (ours, UnixDatagram::from(b))
}

fn rig(features: u64) -> Rig {
    let (tap, peer) = pair();
    rig_on(tap, peer, features)
}

fn rig_on(tap: File, peer: UnixDatagram, features: u64) -> Rig {
    let mut dev = Net::new(tap, [0x52, 0x54, 0, 1, 2, 3]).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let rx = DriverQueue::new(&mem, 16, 0x1000);
    let tx = DriverQueue::new(&mem, 16, 0x3000);
    dev.activate(Active {
        mem: mem.clone(),
        // EVENT_IDX, as Linux's driver negotiates it: kicks only when the device asks.
        queues: vec![rx.device_queue(true), tx.device_queue(true)],
        features: features | 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX,
        interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
    });
    Rig {
        mem,
        rx,
        tx,
        dev,
        peer,
    }
}

impl Rig {
    /// Kicks queue `q` if the device asked for a kick (a stall shows as a frame that never
    /// arrives).
    fn kick(&mut self, q: usize) {
        let wanted = match q {
            RX => self.rx.needs_kick(true),
            _ => self.tx.needs_kick(true),
        };
        if wanted {
            self.dev.process_queue(q);
        }
    }
}

fn frame(tag: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR];
    f.extend((0..60).map(|i| tag ^ i as u8));
    f
}

fn rx_buffer(addr: u64, len: u32) -> Buffer {
    Buffer {
        addr,
        len,
        writable: true,
    }
}

#[test]
fn guest_frames_reach_the_tap_header_and_all() {
    let mut r = rig(0);
    let f = frame(7);
    r.mem
        .write_slice(&f[..VNET_HDR], GuestAddress(0x10_0000))
        .unwrap();
    r.mem
        .write_slice(&f[VNET_HDR..], GuestAddress(0x10_1000))
        .unwrap();
    let chain = [
        Buffer {
            addr: 0x10_0000,
            len: VNET_HDR as u32,
            writable: false,
        },
        Buffer {
            addr: 0x10_1000,
            len: 60,
            writable: false,
        },
    ];
    r.tx.offer(&chain).unwrap();
    r.kick(TX);
    let mut got = [0u8; 256];
    let n = r.peer.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..], "one frame, one write");
    assert_eq!(r.dev.stats.tx, 1);
    // Shorter than a header: dropped.
    r.tx.offer(&[Buffer {
        addr: 0x10_0000,
        len: 4,
        writable: false,
    }])
    .unwrap();
    r.kick(TX);
    assert_eq!(r.dev.stats.tx_dropped, 1);
}

#[test]
fn tap_frames_wait_for_guest_buffers_and_arrive_in_order() {
    let mut r = rig(0);
    for tag in 1..=3 {
        r.peer.send(&frame(tag)).unwrap();
    }
    r.dev.process_fd(0);
    assert_eq!(
        r.dev.stats.rx, 0,
        "no buffers yet: nothing lost, nothing delivered"
    );
    for i in 0..3 {
        r.rx.offer(&[rx_buffer(0x20_0000 + i * 0x1000, 1526)])
            .unwrap();
    }
    r.kick(RX); // the driver's kick after giving buffers
    for tag in 1..=3u64 {
        let (_, len) = r.rx.take_used().expect("a frame");
        assert_eq!(len as usize, VNET_HDR + 60);
        let mut got = vec![0u8; len as usize];
        let at = GuestAddress(0x20_0000 + (tag - 1) * 0x1000);
        r.mem.read_slice(&mut got, at).unwrap();
        assert_eq!(&got[VNET_HDR..], &frame(tag as u8)[VNET_HDR..]);
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    }
    assert_eq!(r.dev.stats.rx, 3);
    // A buffer too small for a header is returned empty; the frame waits for a good one.
    r.peer.send(&frame(9)).unwrap();
    r.rx.offer(&[rx_buffer(0x30_0000, 8)]).unwrap();
    r.dev.process_fd(0);
    assert_eq!(r.rx.take_used().map(|u| u.1), Some(0), "returned empty");
    r.rx.offer(&[rx_buffer(0x30_0000, 1526)]).unwrap();
    r.kick(RX);
    assert_eq!(r.rx.take_used().map(|u| u.1), Some(72));
    // A frame longer than its buffer (in one slice or two) is dropped, not handed over cut;
    // one that fills a buffer exactly is whole.
    for split in [false, true] {
        r.peer.send(&frame(10)).unwrap();
        match split {
            false => r.rx.offer(&[rx_buffer(0x30_0000, 71)]),
            true => {
                r.rx.offer(&[rx_buffer(0x30_0000, 40), rx_buffer(0x31_0000, 31)])
            }
        }
        .unwrap();
        r.dev.process_fd(0);
        assert_eq!(r.rx.take_used().map(|u| u.1), Some(0), "split {split}");
    }
    assert_eq!(r.dev.stats.rx_dropped, 3);
    r.peer.send(&frame(11)).unwrap();
    r.rx.offer(&[rx_buffer(0x30_0000, 72)]).unwrap();
    r.dev.process_fd(0);
    assert_eq!(r.rx.take_used().map(|u| u.1), Some(72));
}

#[test]
fn offloads_follow_what_the_guest_acknowledged() {
    use virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_CSUM;
    let r = rig(1 << VIRTIO_NET_F_GUEST_CSUM);
    assert_eq!(r.dev.pending_offload(), Some(libc::TUN_F_CSUM));
    let mut r = rig(0);
    assert_eq!(r.dev.pending_offload(), Some(0));
    r.dev.process_queue(RX); // the event loop applies it (a socket ignores TUNSETOFFLOAD)
    assert_eq!(r.dev.pending_offload(), None);
    let mut mac = [0u8; 6];
    r.dev.read_config(0, &mut mac);
    assert_eq!(mac, [0x52, 0x54, 0, 1, 2, 3]);
}

#[test]
fn net_specs_parse_and_a_missing_tap_says_how_to_make_one() {
    let n: NetConfig = "tap=tap0,mac=02:00:00:aa:bb:cc".parse().unwrap();
    assert_eq!(
        (n.tap.as_str(), n.mac),
        ("tap0", [2, 0, 0, 0xaa, 0xbb, 0xcc])
    );
    let d: NetConfig = "tap=tap0".parse().unwrap();
    assert_eq!(d.mac, default_mac("tap0"), "a stable default");
    assert_ne!(default_mac("tap0"), default_mac("tap1"));
    for (spec, want) in [
        ("mac=02:00:00:00:00:01", "tap=NAME is missing"),
        ("tap=t,mac=01:00:00:00:00:01", "unicast"),
        ("tap=t,mac=02:00:00", "six hex pairs"),
        ("tap=waytoolongname16", "1 to 15"),
        ("tap=t,queues=2", "unknown key"),
        ("tap=t,mac=+2:00:00:00:00:01", "six hex pairs"),
        ("tap=t,tap=u", "given twice"),
        (
            "tap=t,mac=02:00:00:00:00:01,mac=02:00:00:00:00:02",
            "given twice",
        ),
    ] {
        let e = spec.parse::<NetConfig>().unwrap_err().to_string();
        assert!(e.contains(want), "{spec}: {e}");
    }
    let nets =
        |specs: &[&str]| -> Vec<NetConfig> { specs.iter().map(|s| s.parse().unwrap()).collect() };
    assert!(check_all(&nets(&["tap=a", "tap=b"])).is_ok());
    let e = check_all(&nets(&["tap=a", "tap=b", "tap=a"])).unwrap_err();
    assert!(
        e.to_string().contains("tap=a: the same tap is given twice"),
        "{e}"
    );
    let same_mac = ["tap=a,mac=02:00:00:00:00:01", "tap=b,mac=02:00:00:00:00:01"];
    let e = check_all(&nets(&same_mac)).unwrap_err();
    assert!(e.to_string().contains("MAC 02:00:00:00:00:01"), "{e}");
    let e = open_tap("rvnope0").unwrap_err().to_string();
    assert!(e.contains("ip tuntap add rvnope0 mode tap"), "{e}");
}

#[test]
fn tx_frames_asking_for_offloads_not_negotiated_are_dropped() {
    let mut r = rig(0); // neither CSUM nor any GSO acknowledged
    let mut f = frame(1);
    f[0] = 1; // NEEDS_CSUM
    r.mem.write_slice(&f, GuestAddress(0x10_0000)).unwrap();
    let chain = [Buffer {
        addr: 0x10_0000,
        len: f.len() as u32,
        writable: false,
    }];
    r.tx.offer(&chain).unwrap();
    r.kick(TX);
    f[0] = 0;
    f[1] = 1; // GSO_TCPV4
    r.mem.write_slice(&f, GuestAddress(0x10_0000)).unwrap();
    r.tx.offer(&chain).unwrap();
    r.kick(TX);
    assert_eq!((r.dev.stats.tx, r.dev.stats.tx_dropped), (0, 2));
    r.peer.set_nonblocking(true).unwrap();
    assert!(
        r.peer.recv(&mut [0u8; 64]).is_err(),
        "nothing reached the tap"
    );
}

#[test]
fn tx_frames_longer_than_a_tap_takes_are_dropped_before_it() {
    let mut r = rig(0);
    r.mem
        .write_slice(
            &vec![0u8; device::MAX_TX_FRAME + 1],
            GuestAddress(0x10_0000),
        )
        .unwrap();
    for len in [device::MAX_TX_FRAME + 1, device::MAX_TX_FRAME] {
        let chain = [Buffer {
            addr: 0x10_0000,
            len: len as u32,
            writable: false,
        }];
        r.tx.offer(&chain).unwrap();
        r.kick(TX);
    }
    assert_eq!((r.dev.stats.tx, r.dev.stats.tx_dropped), (1, 1));
    let mut got = vec![0u8; device::MAX_TX_FRAME + 64];
    assert_eq!(r.peer.recv(&mut got).unwrap(), device::MAX_TX_FRAME);
}

#[test]
fn rx_header_flags_are_cleared_without_guest_csum() {
    let mut r = rig(0);
    let mut f = frame(2);
    f[0] = 2; // DATA_VALID, as a tap may set
    r.peer.send(&f).unwrap();
    r.rx.offer(&[rx_buffer(0x20_0000, 1526)]).unwrap();
    r.dev.process_fd(0);
    let mut hdr = [0xffu8; 1];
    r.mem.read_slice(&mut hdr, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(hdr[0], 0);
}

#[test]
fn a_tap_whose_reads_fail_keeps_the_guests_buffers_and_does_not_spin() {
    let (_, peer) = pair();
    let tap = File::options().write(true).open("/dev/null").unwrap(); // reads: EBADF
    let mut r = rig_on(tap, peer, 0);
    for i in 0..4 {
        r.rx.offer(&[rx_buffer(0x20_0000 + i * 0x1000, 1526)])
            .unwrap();
    }
    let rx_kick = r.dev.queue_events()[RX].try_clone().unwrap();
    let _ = rx_kick.read(); // (the kick at activation)
    r.dev.process_fd(0);
    r.dev.process_queue(RX);
    assert_eq!(r.rx.take_used(), None, "a buffer used up by a failed read");
    assert!(
        rx_kick.read().is_err(),
        "the device kicked itself to try again"
    );
    assert_eq!(r.dev.stats.rx_dropped, 0);
}
