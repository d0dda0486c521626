//! The vsock device end to end without a guest: the model driver on guest memory on one side,
//! real Unix sockets in a temporary directory on the other.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use super::model::GuestDriver;
use super::packet::*;
use super::unix::port_path;
use crate::virtio::driver::Buffer;

fn driver(dir: &tempfile::TempDir) -> GuestDriver {
    GuestDriver::new(3, dir.path().join("v.sock"), 4096).unwrap()
}

/// A driver with EVENT_IDX (as Linux's) or without (the flags in the rings).
fn driver_with(dir: &tempfile::TempDir, event_idx: bool) -> GuestDriver {
    GuestDriver::with_event_idx(3, dir.path().join("v.sock"), 4096, event_idx).unwrap()
}

fn host_connect(dir: &tempfile::TempDir, line: &[u8]) -> UnixStream {
    let mut s = UnixStream::connect(dir.path().join("v.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(line).unwrap();
    s
}

/// Receives until a packet with `op` arrives (others are returned too).
fn until(g: &mut GuestDriver, op: u16) -> Vec<(Header, Vec<u8>)> {
    let mut all = Vec::new();
    for _ in 0..100 {
        all.extend(g.receive());
        if all.iter().any(|(h, _)| h.op == op) {
            return all;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no {op} packet: {all:?}");
}

/// The host connects, the guest accepts: (host stream, host port, guest port).
fn established(g: &mut GuestDriver, dir: &tempfile::TempDir, port: u32) -> (UnixStream, u32) {
    let mut host = host_connect(dir, format!("CONNECT {port}\n").as_bytes());
    let got = until(g, OP_REQUEST);
    let (req, _) = got.iter().find(|(h, _)| h.op == OP_REQUEST).unwrap();
    let (src, dst, sport, dport) = (req.src_cid, req.dst_cid, req.src_port, req.dst_port);
    assert_eq!((src, dst, dport), (2, g.cid, port));
    assert!(sport >= 1 << 30, "host ports as Firecracker's");
    g.send(g.header(OP_RESPONSE, port, sport, 0), &[]);
    let mut ok = vec![0u8; format!("OK {sport}\n").len()];
    host.read_exact(&mut ok).unwrap();
    assert_eq!(ok, format!("OK {sport}\n").as_bytes());
    (host, sport)
}

#[test]
fn a_host_program_reaches_a_guest_port_and_bytes_flow_both_ways() {
    // Both ways a driver may ask for kicks and interrupts.
    for event_idx in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut g = driver_with(&dir, event_idx);
        let (mut host, hport) = established(&mut g, &dir, 1234);
        host.write_all(b"ping").unwrap();
        let got = until(&mut g, OP_RW);
        let (h, data) = got.iter().find(|(h, _)| h.op == OP_RW).unwrap();
        assert_eq!(data, b"ping");
        let (len, buf_alloc) = (h.len, h.buf_alloc);
        assert_eq!((len, buf_alloc), (4, super::credit::HOST_BUF_ALLOC));
        let mut rw = g.header(OP_RW, 1234, hport, 4);
        rw.fwd_cnt = 4;
        g.send(rw, b"pong");
        let mut back = [0u8; 4];
        host.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"pong");
        // The host program closes: the guest hears SHUTDOWN, closes too, and gets its RST.
        drop(host);
        let got = until(&mut g, OP_SHUTDOWN);
        let flags = got
            .iter()
            .find(|(h, _)| h.op == OP_SHUTDOWN)
            .unwrap()
            .0
            .flags;
        assert_eq!(flags & SHUTDOWN_SEND, SHUTDOWN_SEND);
        let mut bye = g.header(OP_SHUTDOWN, 1234, hport, 0);
        bye.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        g.send(bye, &[]);
        until(&mut g, OP_RST);
        assert_eq!(g.device.connections(), 0);
    }
}

#[test]
fn a_guest_reaches_path_underscore_port_or_is_reset() {
    // Both ways a driver may ask for kicks and interrupts.
    for event_idx in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut g = driver_with(&dir, event_idx);
        let listener = UnixListener::bind(port_path(&dir.path().join("v.sock"), 5000)).unwrap();
        g.send(g.header(OP_REQUEST, 40000, 5000, 0), &[]);
        let got = g.collect();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!({ got[0].0.op }, OP_RESPONSE);
        let (mut peer, _) = listener.accept().unwrap();
        g.send(g.header(OP_RW, 40000, 5000, 5), b"hello");
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // Nobody listens on PATH_5001: RST at once.
        g.send(g.header(OP_REQUEST, 40001, 5001, 0), &[]);
        let got = g.collect();
        assert_eq!({ got[0].0.op }, OP_RST);
        let (sp, dp) = (got[0].0.src_port, got[0].0.dst_port);
        assert_eq!((sp, dp), (5001, 40001));
        // A packet for no connection: RST; an RST for none: nothing.
        g.send(g.header(OP_RW, 40002, 5000, 1), b"x");
        assert_eq!({ g.collect()[0].0.op }, OP_RST);
        g.send(g.header(OP_RST, 40003, 5000, 0), &[]);
        assert!(g.collect().is_empty());
    }
}

#[test]
fn nobody_listening_in_the_guest_closes_the_host_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = driver(&dir);
    let mut host = host_connect(&dir, b"CONNECT 4321\n");
    let got = until(&mut g, OP_REQUEST);
    let req = got[0].0;
    g.send(req.reply(OP_RST), &[]);
    let mut rest = Vec::new();
    assert_eq!(host.read_to_end(&mut rest).unwrap(), 0, "closed without OK");
    assert_eq!(g.device.connections(), 0);
}

#[test]
fn bad_connect_lines_close_the_host_connection_and_harm_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = driver(&dir);
    let too_long = [b"CONNECT ".as_slice(), &[b'1'; 64], b"\n"].concat();
    for line in [&b"HELLO 1\n"[..], b"CONNECT x\n", &too_long] {
        let mut host = host_connect(&dir, line);
        let _ = g.receive();
        // Closed: EOF, or a reset where bytes were left unread (the long line).
        let mut rest = Vec::new();
        match host.read_to_end(&mut rest) {
            Ok(n) => assert_eq!(n, 0, "{line:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{line:?}"),
        }
    }
    // A line cut off by EOF.
    let host = host_connect(&dir, b"CONN");
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = g.receive();
    assert_eq!(g.device.connections(), 0);
    assert!(
        g.collect().is_empty(),
        "the guest never heard of any of them"
    );
    // Still serving.
    let (_host, _) = established(&mut g, &dir, 7);
}

#[test]
fn a_slow_guest_reader_stops_the_host_writer_instead_of_growing_buffers() {
    // Both ways a driver may ask for kicks and interrupts.
    for event_idx in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut g = driver_with(&dir, event_idx);
        let mut host = host_connect(&dir, b"CONNECT 9\n");
        let req = until(&mut g, OP_REQUEST)[0].0;
        let mut resp = req.reply(OP_RESPONSE);
        resp.buf_alloc = 16 << 10; // the guest can hold 16 KiB
        g.send(resp, &[]);
        let mut ok = [0u8; 14];
        host.read_exact(&mut ok).unwrap();
        host.set_nonblocking(true).unwrap();
        let chunk = vec![0x5au8; 64 << 10];
        let payload = |got: Vec<(Header, Vec<u8>)>| -> usize {
            (got.iter().filter(|(h, _)| h.op == OP_RW))
                .map(|(_, d)| d.len())
                .sum()
        };
        let (mut written, mut delivered) = (0, 0);
        for _ in 0..64 {
            match host.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => break,
            }
            delivered += payload(g.receive());
        }
        for _ in 0..20 {
            delivered += payload(g.receive());
        }
        assert_eq!(delivered, 16 << 10, "exactly the guest's credit");
        assert!(written > delivered, "the rest waits in the host socket");
        assert!(
            written < 4 << 20,
            "and the host writer was stopped ({written} bytes)"
        );
        // The guest reads and says so: more flows.
        let mut update = req.reply(OP_CREDIT_UPDATE);
        update.buf_alloc = 16 << 10;
        update.fwd_cnt = 16 << 10;
        g.send(update, &[]);
        let more = payload(until(&mut g, OP_RW));
        assert!(more > 0 && more <= 16 << 10);
    }
}

#[test]
fn sixty_four_connections_at_once() {
    // Both ways a driver may ask for kicks and interrupts.
    for event_idx in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut g = driver_with(&dir, event_idx);
        let mut hosts: Vec<(UnixStream, u32, u32)> = (0..64)
            .map(|i| {
                let (h, hp) = established(&mut g, &dir, 100 + i);
                (h, hp, 100 + i)
            })
            .collect();
        assert_eq!(g.device.connections(), 64);
        for (host, _, port) in &mut hosts {
            host.write_all(format!("to {port}").as_bytes()).unwrap();
        }
        let mut seen = std::collections::HashMap::new();
        for _ in 0..50 {
            for (h, data) in g.receive() {
                if h.op == OP_RW {
                    seen.insert(h.dst_port, data);
                }
            }
            if seen.len() == 64 {
                break;
            }
        }
        for (_, _, port) in &hosts {
            assert_eq!(seen[port], format!("to {port}").as_bytes());
        }
    }
}

#[test]
fn bad_packets_and_chains_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = driver(&dir);
    let listener = UnixListener::bind(port_path(&dir.path().join("v.sock"), 80)).unwrap();
    let mut spoofed = g.header(OP_REQUEST, 1, 80, 0);
    spoofed.src_cid = 9;
    g.send(spoofed, &[]);
    let mut elsewhere = g.header(OP_REQUEST, 1, 80, 0);
    elsewhere.dst_cid = 5;
    g.send(elsewhere, &[]);
    g.send(g.header(OP_RW, 1, 80, 1000), b"short"); // says 1000, carries 5
    g.send_raw(&[0u8; 20], &[]); // shorter than a header
    let outside = Buffer {
        addr: 0xffff_0000_0000,
        len: 44,
        writable: false,
    };
    g.send_chain(&[outside]);
    let writable = Buffer {
        addr: 0x70_0000,
        len: 44,
        writable: true,
    };
    g.send_chain(&[writable]);
    assert_eq!(g.device.stats.dropped, 6);
    // Only the torn RW is answered (an RST: a stream missing bytes cannot go on).
    let answers = g.collect();
    assert_eq!(answers.len(), 1, "nothing else answers a dropped packet");
    assert_eq!({ answers[0].0.op }, OP_RST);
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "and no connection was made");
    // A non-stream socket is answered with an RST.
    let mut seqpacket = g.header(OP_REQUEST, 1, 80, 0);
    seqpacket.kind = 2;
    g.send(seqpacket, &[]);
    assert_eq!({ g.collect()[0].0.op }, OP_RST);
    // An RST is never answered, whatever is wrong with it.
    let mut rst_seqpacket = g.header(OP_RST, 1, 80, 0);
    rst_seqpacket.kind = 2;
    g.send(rst_seqpacket, &[]);
    g.send(g.header(OP_RST, 1, 80, 1000), b"short");
    assert_eq!(g.collect().len(), 0, "no RST for an RST");
    // Still serving; a non-stream packet on a stream connection's ports leaves it alone.
    g.send(g.header(OP_REQUEST, 2, 80, 0), &[]);
    assert_eq!({ g.collect()[0].0.op }, OP_RESPONSE);
    let mut other_socket = g.header(OP_RW, 2, 80, 0);
    other_socket.kind = 2;
    g.send(other_socket, &[]);
    assert_eq!({ g.collect()[0].0.op }, OP_RST);
    assert_eq!(
        g.device.connections(),
        1,
        "the stream on those ports lives on"
    );
}

#[test]
fn the_config_space_holds_the_cid_and_reset_closes_everything() {
    use crate::virtio::VirtioDevice;
    let dir = tempfile::tempdir().unwrap();
    let mut g =
        GuestDriver::new(0x1_0000_0005 & 0xffff_ffff, dir.path().join("v.sock"), 4096).unwrap();
    let mut cid = [0u8; 8];
    g.device.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), 5);
    let mut hi = [0xffu8; 4];
    g.device.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4], "the driver reads two 32-bit halves");
    let (mut host, _) = established(&mut g, &dir, 1);
    g.device.reset();
    g.device.process_queue(super::device::TX); // the event loop's turn
    assert_eq!(g.device.connections(), 0);
    let mut rest = Vec::new();
    assert_eq!(host.read_to_end(&mut rest).unwrap(), 0);
    g.device.stop();
    assert!(
        !dir.path().join("v.sock").exists(),
        "the socket file is removed"
    );
    assert!(matches!(
        super::Vsock::new(2, dir.path().join("w.sock")),
        Err(super::VsockError::Cid(2))
    ));
}

#[test]
fn vsock_specs_parse_or_say_what_is_wrong() {
    use super::{VsockConfig, VsockError};
    let ok: VsockConfig = "cid=3,uds=/tmp/v.sock".parse().unwrap();
    assert_eq!((ok.cid, ok.uds.to_str().unwrap()), (3, "/tmp/v.sock"));
    let swapped: VsockConfig = "uds=v,cid=4294967295".parse().unwrap();
    assert_eq!(swapped.cid, u64::from(u32::MAX));
    for (spec, want) in [
        ("cid=2,uds=v", "CID 2 is not allowed"),
        ("cid=4294967296,uds=v", "not allowed"),
        ("cid=x,uds=v", "cid must be a number"),
        ("cid=3", "uds=PATH is missing"),
        ("uds=v", "cid=N is missing"),
        ("cid=3,uds=v,port=1", "unknown key"),
        ("cid=3,cid=4,uds=v", "twice"),
        ("cid=3,uds=", "needs a path"),
        ("3", "KEY=VALUE"),
    ] {
        let err = spec.parse::<VsockConfig>().unwrap_err();
        assert!(err.to_string().contains(want), "{spec}: {err}");
        assert!(matches!(err, VsockError::Spec { .. } | VsockError::Cid(_)));
    }
}

#[test]
fn one_read_of_the_host_stream_fills_several_rx_buffers_each_a_packet_of_its_own() {
    // Both ways a driver may ask for kicks and interrupts.
    for event_idx in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut g = driver_with(&dir, event_idx); // 4 KiB RX buffers
        let (mut host, hport) = established(&mut g, &dir, 1234);
        let mut sent = Vec::new();
        for (round, size) in [1usize, 4096, 4097, 10_000, 50_000, 3]
            .into_iter()
            .enumerate()
        {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + round) as u8).collect();
            host.write_all(&bytes).unwrap();
            sent.extend(bytes);
        }
        let mut got = Vec::new();
        let mut packets = 0u64;
        for _ in 0..200 {
            for (h, data) in g.receive() {
                assert_eq!({ h.op }, OP_RW);
                let (len, dst, src) = (h.len, h.dst_port, h.src_port);
                assert_eq!((len as usize, dst, src), (data.len(), 1234, hport));
                assert!(data.len() <= 4096 && !data.is_empty());
                got.extend(data);
                packets += 1;
            }
            if got.len() == sent.len() {
                break;
            }
        }
        assert!(got == sent, "every byte once, in order");
        assert!(packets >= sent.len().div_ceil(4096) as u64);
        assert_eq!(
            g.device.stats.rx,
            1 + packets,
            "the REQUEST, then one per RW"
        );
        // Buffers offered to a read and not filled go back to the queue: 100 small writes, each
        // read into one of two buffers offered, would otherwise run the 64 buffers out.
        let mut told = 0u32;
        for round in 0..100u8 {
            host.write_all(&[round; 100]).unwrap();
            let mut n = 0;
            for _ in 0..100 {
                for (h, data) in g.receive() {
                    assert!({ h.op } == OP_RW && data.iter().all(|&b| b == round));
                    n += data.len();
                }
                if n == 100 {
                    break;
                }
            }
            assert_eq!(n, 100, "round {round}: the bytes arrived");
            told += 100;
            let mut update = g.header(OP_CREDIT_UPDATE, 1234, hport, 0);
            update.fwd_cnt = sent.len() as u32 + told;
            g.send(update, &[]);
        }
        // ... and all 64 are still there: 32 KiB arrive in one turn of the event loop.
        host.write_all(&[7u8; 32 << 10]).unwrap();
        let got: usize = g.receive().iter().map(|(_, data)| data.len()).sum();
        assert_eq!(got, 32 << 10);
    }
}

#[test]
fn a_connections_payloads_in_one_kick_reach_its_stream_in_order_around_other_packets() {
    // Both ways a driver may ask for kicks and interrupts.
    for event_idx in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut g = driver_with(&dir, event_idx);
        let (mut a, ap) = established(&mut g, &dir, 1);
        let (mut b, bp) = established(&mut g, &dir, 2);
        let rw = |g: &GuestDriver, port, hport, data: &[u8]| {
            g.header(OP_RW, port, hport, data.len() as u32)
        };
        let mut shut = g.header(OP_SHUTDOWN, 1, ap, 0);
        shut.flags = SHUTDOWN_SEND;
        let batch = [
            (rw(&g, 1, ap, b"a1"), &b"a1"[..]),
            (rw(&g, 1, ap, b"a22"), &b"a22"[..]),
            (rw(&g, 2, bp, b"b1"), &b"b1"[..]),
            (rw(&g, 1, ap, b"a3"), &b"a3"[..]),
            (shut, &b""[..]),
            (rw(&g, 2, bp, b"b22"), &b"b22"[..]),
        ];
        g.send_batch(&batch);
        let mut all = String::new();
        a.read_to_string(&mut all).unwrap(); // then EOF: the SHUTDOWN came after the bytes
        assert_eq!(all, "a1a22a3");
        let mut got = [0u8; 5];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"b1b22");
        assert_eq!(
            g.device.stats.tx,
            2 + 6,
            "two RESPONSEs, then every packet of the batch"
        );
    }
}

#[test]
fn out_of_band_bytes_from_a_host_program_arrive_in_order_with_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = driver(&dir);
    // Both kinds of host stream: one the device accepted, one it connected.
    let (accepted, _) = established(&mut g, &dir, 1234);
    let listener = UnixListener::bind(port_path(&dir.path().join("v.sock"), 5000)).unwrap();
    g.send(g.header(OP_REQUEST, 7, 5000, 0), &[]);
    assert_eq!({ g.collect()[0].0.op }, OP_RESPONSE);
    let (connected, _) = listener.accept().unwrap();
    for (stream, port) in [(&accepted, 1234), (&connected, 7)] {
        use std::os::fd::AsRawFd;
        for (bytes, flags) in [(&b"abc"[..], 0), (b"d", libc::MSG_OOB), (b"efg", 0)] {
            // SAFETY: a plain system call on a live socket with a live buffer.
            let n = unsafe {
                libc::send(
                    stream.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    flags,
                )
            };
            assert_eq!(n, bytes.len() as isize);
        }
        let mut got = Vec::new();
        for _ in 0..100 {
            for (h, data) in g.receive() {
                if h.op == OP_RW && { h.dst_port } == port {
                    got.extend(data);
                }
            }
            if got.len() >= 7 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            got, b"abcdefg",
            "port {port}: the urgent byte is kept, and nothing waits behind its mark"
        );
    }
}

#[test]
fn rx_buffers_of_a_header_alone_come_back_empty_and_the_stream_flows_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = driver(&dir);
    let (host, hport) = established(&mut g, &dir, 1234);
    // Eight buffers with room for a header and nothing more, behind the model's 64.
    for i in 0..8 {
        g.offer_rx_chain(&[Buffer {
            addr: 0x100_0000 + i * 0x100,
            len: HEADER_SIZE as u32,
            writable: true,
        }]);
    }
    const TOTAL: usize = 600 << 10;
    // The host writes as the socket takes it (non-blocking: a stalled device fails the test
    // instead of hanging it).
    let mut host = host;
    host.set_nonblocking(true).unwrap();
    let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let (mut got, mut told, mut written) = (Vec::new(), 0usize, 0usize);
    for _ in 0..20_000 {
        if let Ok(n) = host.write(&data[written..]) {
            written += n;
        }
        for (h, data) in g.receive() {
            assert_ne!({ h.op }, OP_RST, "the connection lives");
            if h.op == OP_RW {
                got.extend_from_slice(&data);
            }
        }
        if got.len() - told >= 64 << 10 {
            let mut update = g.header(OP_CREDIT_UPDATE, 1234, hport, 0);
            update.fwd_cnt = got.len() as u32;
            g.send(update, &[]);
            told = got.len();
        }
        if got.len() == TOTAL {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(got.len(), TOTAL, "every byte arrived");
    assert!(
        got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
        "in order"
    );
    assert_eq!(
        g.rx_returned_empty, 8,
        "each header-only buffer came back empty"
    );
    assert_eq!(g.device.connections(), 1);
}

/// An RX buffer that names a descriptor past the table cannot be returned: the device stops
/// (no connection is served from broken rings) and asks the driver for a reset.
#[test]
fn an_rx_buffer_past_the_descriptor_table_stops_the_device_until_reset() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = driver(&dir);
    g.break_first_rx_buffer();
    let _host = host_connect(&dir, b"CONNECT 1234\n");
    for _ in 0..20 {
        assert!(g.receive_headers().is_empty(), "a packet from broken rings");
        if g.reset_needed() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(g.reset_needed(), "DEVICE_NEEDS_RESET");
}

#[path = "loop_tests.rs"]
mod event_loop;
