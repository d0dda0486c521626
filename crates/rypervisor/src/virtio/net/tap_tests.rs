//! virtio-net on a real tap, in a network namespace the test's thread makes for itself (its
//! tap and interface vanish with it): a frame longer than the guest's buffer, which a tap
//! cuts short saying only what it copied, and `open_tap`'s errors on a device that is not a
//! tap or is in use. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and
//! `ip`; without them these tests fail, saying so.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::driver::{Buffer, DriverQueue};
use crate::virtio::{Active, Interrupt, VirtioDevice};

/// Runs `f` on a thread of its own in a new network namespace (a thread's namespace is its
/// own: the rest of the test process stays where it was).
fn in_own_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let thread = std::thread::spawn(move || {
        // SAFETY: a plain system call; it changes this thread's network namespace only.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        let e = std::io::Error::last_os_error();
        assert_eq!(r, 0, "this test needs a network namespace (root): {e}");
        f()
    });
    thread
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Runs `ip ARGS` (in the calling thread's namespace: a child inherits it).
fn ip(args: &str) {
    let path = format!(
        "{}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("ip")
        .args(args.split(' '))
        .env("PATH", path)
        .output()
        .expect("this test needs `ip` (iproute2)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ip {args}: {err}");
}

/// A tap `name`, up, with room for jumbo frames; IPv6 off on it so the kernel sends nothing
/// of its own out of it.
fn make_tap(name: &str) {
    ip(&format!("tuntap add {name} mode tap"));
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    ip(&format!("link set {name} mtu 9000 up"));
}

/// Sends one Ethernet frame (`payload` bytes after the header) out of interface `name`, so
/// the tap's reader receives it.
fn send_out_of(name: &str, payload: usize, tag: u8) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x99, 0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5];
    frame.extend((0..payload).map(|i| tag ^ i as u8));
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: plain system calls; results checked; sockaddr_ll is plain data.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = libc::if_nametoindex(cname.as_ptr()) as i32;
        addr.sll_halen = 6;
        let n = libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let e = std::io::Error::last_os_error();
        assert_eq!(n as usize, frame.len(), "sendto {name}: {e}");
    }
    frame
}

#[test]
fn a_tap_frame_longer_than_the_guest_buffer_is_dropped_never_overstated() {
    in_own_netns(|| {
        make_tap("rvt0");
        let mut dev = Net::new(open_tap("rvt0").unwrap(), [0x52, 0x54, 0, 1, 2, 3]).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let mut rx = DriverQueue::new(&mem, 16, 0x1000);
        let tx = DriverQueue::new(&mem, 16, 0x3000);
        dev.activate(Active {
            mem: mem.clone(),
            queues: vec![rx.device_queue(false), tx.device_queue(false)],
            features: 0,
            interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
        });
        let buf = |addr| Buffer {
            addr,
            len: 2048,
            writable: true,
        };
        // Frames sent before the link is really up (the kernel notes the carrier the tap's
        // opening brought a moment later) are dropped: one is sent until one arrives.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        rx.offer(&[buf(0x10_0000)]).unwrap();
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no frame reached the tap"
            );
            send_out_of("rvt0", 10, 0);
            std::thread::sleep(std::time::Duration::from_millis(5));
            dev.process_fd(0);
            if rx.take_used().is_some() {
                break;
            }
        }
        let (rx_before, dropped_before) = (dev.stats.rx, dev.stats.rx_dropped);
        // 4000 bytes (the tap's MTU allows it) for a 2048-byte buffer, then a small frame.
        send_out_of("rvt0", 4000, 1);
        let small = send_out_of("rvt0", 100, 2);
        let bufs: Vec<u64> = (0..8).map(|i| 0x10_0000 + i * 0x1000).collect();
        let mut heads = std::collections::HashMap::new();
        for &at in &bufs {
            heads.insert(rx.offer(&[buf(at)]).unwrap(), at);
        }
        // The kernel may send frames of its own out of a new interface (IPv6's, where it
        // could not be switched off): those are told apart by their content. A sent frame
        // may sit in the interface's queue a moment: the device is asked again until both
        // came, for at most 5 s.
        let (mut cut, mut ours) = (0, 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while (cut, ours) != (1, 1) && std::time::Instant::now() < deadline {
            dev.process_fd(0);
            while let Some((head, len)) = rx.take_used() {
                assert!(
                    len <= 2048,
                    "a used length past the 2048-byte buffer: {len}"
                );
                let mut got = vec![0u8; len as usize];
                mem.read_slice(&mut got, GuestAddress(heads[&head]))
                    .unwrap();
                match len {
                    0 => cut += 1,
                    _ if got[VNET_HDR..] == small[..] => ours += 1,
                    _ => eprintln!("(a frame of the kernel's own: {len} bytes)"),
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            (cut, ours),
            (1, 1),
            "the cut frame returned empty, the small one whole"
        );
        assert_eq!(dev.stats.rx_dropped - dropped_before, 1);
        assert!(dev.stats.rx > rx_before);
    });
}

#[test]
fn open_tap_says_what_is_wrong_with_a_device_that_is_no_tap_or_in_use() {
    in_own_netns(|| {
        let e = open_tap("lo").unwrap_err().to_string();
        assert!(e.contains("is it a tap device? ip tuntap add"), "{e}");
        make_tap("rvt1");
        let _first = open_tap("rvt1").unwrap();
        let e = open_tap("rvt1").unwrap_err().to_string();
        assert!(e.contains("not in use?"), "{e}");
    });
}
