//! Fuzzes the vsock device from both sides: the guest's TX packets (any header — with the
//! CIDs made right half the time, so they reach the connection logic — any payload, any
//! descriptor chain, into or outside guest memory, either direction) and host programs
//! (connecting to the socket and writing anything: CONNECT lines, junk, half lines, bytes
//! out of band or with passed descriptors). The device must never panic, and what it holds
//! stays bounded.
#![no_main]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};

use libfuzzer_sys::fuzz_target;
use rypervisor::virtio::driver::Buffer;
use rypervisor::virtio::vsock::model::GuestDriver;
use rypervisor::virtio::vsock::unix::port_path;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let Ok(mut guest) = GuestDriver::new(3, path.clone(), 4096) else {
        return;
    };
    // Something for the guest to connect to: host port 80.
    let listener = UnixListener::bind(port_path(&path, 80)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut hosts: Vec<UnixStream> = Vec::new();
    let mut accepted: Vec<UnixStream> = Vec::new();
    // Records: [kind, length, bytes...]; kind & 7 picks the action (0 a TX packet, with bit 7
    // set: right CIDs and type, bit 6: the true length; 1 a raw chain; 2 a host connect; 3 host
    // bytes; 5 host bytes out of band, 6 with a passed descriptor, from a host program that
    // connected (bit 6 clear) or one the guest reached (set); else the device serves), bits
    // 3-5 which host stream.
    let mut rest = data;
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], usize::from(rest[1]));
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        match kind & 7 {
            0 => {
                let mut header = [0u8; 44];
                let n = body.len().min(44);
                header[..n].copy_from_slice(&body[..n]);
                if kind & 0x80 != 0 {
                    header[0..8].copy_from_slice(&3u64.to_le_bytes()); // from the guest
                    header[8..16].copy_from_slice(&2u64.to_le_bytes()); // to the host
                    header[28..30].copy_from_slice(&1u16.to_le_bytes()); // a stream
                    let payload = (body.len().saturating_sub(44)) as u32;
                    if kind & 0x40 != 0 {
                        header[24..28].copy_from_slice(&payload.to_le_bytes());
                    }
                }
                let payload = body.get(44..).unwrap_or(&[]);
                guest.send_raw(&header, payload);
            }
            1 => {
                let chain: Vec<Buffer> = body
                    .chunks_exact(6)
                    .take(4)
                    .map(|c| Buffer {
                        addr: u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            << (c[4] & 15),
                        len: u32::from(c[5]) << (c[4] >> 4),
                        writable: c[4] & 1 != 0,
                    })
                    .collect();
                if !chain.is_empty() {
                    guest.send_chain(&chain);
                }
            }
            2 if hosts.len() < 8 => {
                if let Ok(mut s) = UnixStream::connect(&path) {
                    let _ = s.set_nonblocking(true);
                    let _ = s.write(body);
                    hosts.push(s);
                }
            }
            2 | 3 => {
                let which = usize::from(kind >> 3 & 7) % hosts.len().max(1);
                if let Some(s) = hosts.get_mut(which) {
                    let _ = s.write(body);
                }
                if let Ok((s, _)) = listener.accept() {
                    let _ = s.set_nonblocking(true);
                    accepted.push(s);
                }
            }
            5 | 6 => {
                let streams = if kind & 0x40 == 0 { &hosts } else { &accepted };
                let which = usize::from(kind >> 3 & 7) % streams.len().max(1);
                if let Some(s) = streams.get(which) {
                    if kind & 7 == 5 {
                        let flags = libc::MSG_OOB | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                        // SAFETY: a plain system call on a live socket with a live buffer.
                        unsafe {
                            libc::send(s.as_raw_fd(), body.as_ptr().cast(), body.len(), flags)
                        };
                    } else {
                        let _ = s.send_with_fd(body, listener.as_raw_fd());
                    }
                }
            }
            _ => {
                let _ = guest.receive();
            }
        }
    }
    let _ = guest.receive();
    assert!(guest.device.connections() <= rypervisor::virtio::vsock::muxer::MAX_CONNECTIONS);
});
