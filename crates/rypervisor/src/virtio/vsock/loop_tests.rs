//! The vsock device on a running event loop (no model driver polling it): host sockets
//! served from the loop's own epoll, and a whole connection through it. The helpers are
//! the parent's.

use std::io::{Read, Write};

use super::*;

/// Attached to a running event loop, the device's listener, CONNECT lines and timer are
/// served from the loop's own epoll (no epoll of the muxer's own is left to wait on): a
/// malformed line is closed at once, and a line for a guest that never answers is closed
/// when its deadline passes.
#[test]
fn host_sockets_are_served_from_the_event_loops_epoll() {
    use crate::virtio::event_loop::EventLoop;
    use crate::virtio::VirtioDevice;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let device = crate::virtio::vsock::Vsock::new(3, dir.path().join("v.sock")).unwrap();
    let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(device));
    let _event_loop = EventLoop::start(vec![device], || {}).unwrap();
    let mut buf = [0u8; 16];
    let mut bad = host_connect(&dir, b"CONNECT nope\n");
    assert_eq!(bad.read(&mut buf).unwrap(), 0, "a malformed line is closed");
    let started = std::time::Instant::now();
    let mut unanswered = host_connect(&dir, b"CONNECT 5000\n");
    assert_eq!(
        unanswered.read(&mut buf).unwrap(),
        0,
        "closed at the deadline"
    );
    assert!(started.elapsed() >= crate::virtio::vsock::muxer::CONNECT_TIMEOUT / 2);
}

/// A whole host-initiated connection through a running event loop, the device activated on
/// guest memory the test drives as the guest: the CONNECT line becomes a REQUEST in the RX
/// ring (served at the end of the loop's wake), the guest's RESPONSE (a TX kick through the
/// queue's eventfd) becomes `OK <port>`, and the host's bytes reach the RX ring as RW from
/// the connection's edge-triggered stream, watched in the loop's own epoll.
#[test]
fn a_host_connection_flows_through_the_event_loop() {
    use crate::virtio::driver::DriverQueue;
    use crate::virtio::event_loop::EventLoop;
    use crate::virtio::{Active, Interrupt, VirtioDevice};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EventFd;
    const RINGS: [u64; 3] = [0x1000, 0x5000, 0x9000];
    let dir = tempfile::tempdir().unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let queues: Vec<DriverQueue> = RINGS
        .iter()
        .map(|&b| DriverQueue::new(&mem, 64, b))
        .collect();
    let mut device = crate::virtio::vsock::Vsock::new(3, dir.path().join("v.sock")).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    device.activate(Active {
        mem: mem.clone(),
        queues: queues.iter().map(|q| q.device_queue(false)).collect(),
        features: 0,
        interrupt: Arc::new(Interrupt::new(irq)),
    });
    let kick_tx = device.queue_events()[crate::virtio::vsock::device::TX]
        .try_clone()
        .unwrap();
    let [mut rx, mut tx, _events]: [DriverQueue; 3] = queues.try_into().unwrap();
    for i in 0..8u64 {
        let len = (HEADER_SIZE + 4096) as u32;
        let addr = 0x10_0000 + i * 0x2000;
        let buffer = Buffer {
            addr,
            len,
            writable: true,
        };
        rx.offer(&[buffer]).unwrap();
    }
    let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(device));
    let _event_loop = EventLoop::start(vec![device], || {}).unwrap();
    // The next packet the device gives the guest, waited for.
    let mut next_rx = || -> (Header, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some((head, len)) = rx.take_used() {
                let desc = GuestAddress(RINGS[0] + 16 * u64::from(head));
                let addr = GuestAddress(mem.read_obj::<u64>(desc).unwrap());
                let header: Header = mem.read_obj(addr).unwrap();
                let mut payload = vec![0u8; len as usize - HEADER_SIZE];
                let at = addr.unchecked_add(HEADER_SIZE as u64);
                mem.read_slice(&mut payload, at).unwrap();
                return (header, payload);
            }
            assert!(Instant::now() < deadline, "nothing reached the RX ring");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let mut host = host_connect(&dir, b"CONNECT 5000\n");
    let (request, _) = next_rx();
    assert_eq!(({ request.op }, { request.dst_port }), (OP_REQUEST, 5000));
    let response = Header {
        src_cid: 3,
        dst_cid: crate::virtio::vsock::HOST_CID,
        src_port: 5000,
        dst_port: request.src_port,
        kind: TYPE_STREAM,
        op: OP_RESPONSE,
        buf_alloc: 64 << 10,
        ..Header::default()
    };
    mem.write_slice(response.as_slice(), GuestAddress(0x30_0000))
        .unwrap();
    let chain = Buffer {
        addr: 0x30_0000,
        len: HEADER_SIZE as u32,
        writable: false,
    };
    tx.offer(&[chain]).unwrap();
    kick_tx.write(1).unwrap();
    let mut line = [0u8; 32];
    let n = host.read(&mut line).unwrap();
    let ok = format!("OK {}\n", { request.src_port });
    assert_eq!(&line[..n], ok.as_bytes());
    host.write_all(b"hello").unwrap();
    let (rw, payload) = next_rx();
    assert_eq!(({ rw.op }, &payload[..]), (OP_RW, &b"hello"[..]));
}
