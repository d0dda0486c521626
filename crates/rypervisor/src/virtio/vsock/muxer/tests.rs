//! The muxer's own tests (no guest, no KVM): what connections leave behind when they come
//! and go, a connection the event loop cannot watch, and host programs that keep connecting
//! without a word. Device-level tests are in
//! `vsock/tests.rs`.

use super::*;

/// A stream packet from guest port 7 to host port 80.
fn from_port_7_to_80(op: u16) -> Header {
    Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 7,
        dst_port: 80,
        kind: TYPE_STREAM,
        op,
        ..Header::default()
    }
}

#[test]
fn connections_that_come_and_go_leave_nothing_queued_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let mut m = Muxer::new(3, path.clone()).unwrap();
    let _peer = std::os::unix::net::UnixListener::bind(unix::port_path(&path, 80)).unwrap();
    let header = from_port_7_to_80;
    // The guest never gives RX buffers; it connects and resets, again and again.
    for _ in 0..2000 {
        m.from_guest(&header(OP_REQUEST), &Buffers::default());
        m.from_guest(&header(OP_RST), &Buffers::default());
    }
    assert_eq!(m.connections(), 0);
    assert!(m.owed_entries() <= 1, "{} entries", m.owed_entries());
}

#[test]
fn a_guest_connection_that_cannot_be_watched_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let mut m = Muxer::new(3, path.clone()).unwrap();
    let _peer = std::os::unix::net::UnixListener::bind(unix::port_path(&path, 80)).unwrap();
    m.watch.break_for_test();
    let request = from_port_7_to_80(OP_REQUEST);
    m.from_guest(&request, &Buffers::default());
    assert_eq!(m.connections(), 0);
    let (rst, _) = m.next_packet(&[]).expect("an answer for the guest");
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 80, 7));
}

#[test]
fn host_programs_that_keep_connecting_neither_hold_the_loop_nor_take_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let mut m = Muxer::new(3, path.clone()).unwrap();
    // 100 host programs connect and say nothing (the listener's backlog holds them).
    let _silent: Vec<_> = (0..100)
        .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
        .collect();
    // One wake-up of the listener takes a bounded share; the listener stays ready.
    m.ready(LISTENER, EventSet::IN);
    assert_eq!(m.lines.len(), ACCEPTS_PER_WAKE);
    assert!(m.host_ready().iter().any(|&(id, _)| id == LISTENER));
    // However many wake-ups, silent programs hold at most MAX_PENDING_LINES slots.
    for _ in 0..20 {
        m.ready(LISTENER, EventSet::IN);
    }
    assert_eq!(m.lines.len(), MAX_PENDING_LINES);
    // The guest can still connect out.
    let _peer = std::os::unix::net::UnixListener::bind(unix::port_path(&path, 80)).unwrap();
    let request = from_port_7_to_80(OP_REQUEST);
    m.from_guest(&request, &Buffers::default());
    assert_eq!(m.connections(), 1);
}
