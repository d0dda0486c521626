//! One connection's state machine against a real Unix socket pair: owed packets in order,
//! credit, held bytes, the byte read past the guest's buffers, shutdowns and RST.

use super::*;
use crate::virtio::vsock::credit::HOST_BUF_ALLOC;
use std::io::Read;

/// The guest's bytes as buffers.
fn data(bytes: &[u8]) -> Vec<u8> {
    bytes.to_vec()
}

fn send(c: &mut Connection, bytes: &[u8]) {
    let mut copy = data(bytes);
    c.guest_data(&Buffers::from_bytes(&mut copy));
}

fn next(c: &mut Connection, buf: &mut [u8]) -> Option<Outgoing> {
    c.next_packet(&[Window::whole(&Buffers::from_bytes(buf))])
}

fn pair() -> (Connection, UnixStream) {
    pair_with_credit(64 << 10)
}

/// A guest connection whose guest has `buf_alloc` bytes of buffer space.
fn pair_with_credit(buf_alloc: u32) -> (Connection, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    (Connection::guest_initiated(ours, buf_alloc, 0), theirs)
}

#[test]
fn a_guest_connection_answers_then_carries_bytes_both_ways() {
    let (mut c, mut host) = pair();
    let mut buf = [0u8; 4096];
    assert_eq!(next(&mut c, &mut buf).unwrap().op, OP_RESPONSE);
    assert_eq!(next(&mut c, &mut buf), None, "nothing from the host yet");
    assert!(!c.owes());
    host.write_all(b"hello").unwrap();
    c.host_ready(true, false, false);
    let p = next(&mut c, &mut buf).unwrap();
    assert_eq!((p.op, p.len, &buf[..5]), (OP_RW, 5, &b"hello"[..]));
    send(&mut c, b"world");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"world");
}

#[test]
fn host_eof_becomes_a_shutdown_and_the_guests_close_an_rst() {
    let (mut c, host) = pair();
    let mut buf = [0u8; 64];
    next(&mut c, &mut buf); // RESPONSE
    host.shutdown(Shutdown::Write).unwrap();
    c.host_ready(true, false, false);
    let p = next(&mut c, &mut buf).unwrap();
    assert_eq!((p.op, p.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    assert_eq!(c.state(), State::Established, "the guest may still send");
    c.guest_shutdown(SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert_eq!(next(&mut c, &mut buf).unwrap().op, OP_RST);
}

#[test]
fn bytes_then_a_close_reach_the_guest_as_data_then_shutdown() {
    let (mut c, mut host) = pair();
    let mut buf = [0u8; 64];
    next(&mut c, &mut buf); // RESPONSE
    host.write_all(b"last").unwrap();
    drop(host); // one epoll event: IN and HUP together
    c.host_ready(true, false, true);
    let p = next(&mut c, &mut buf).unwrap();
    assert_eq!((p.op, p.len), (OP_RW, 4), "a short read...");
    let p = next(&mut c, &mut buf).unwrap();
    assert_eq!(p.op, OP_SHUTDOWN, "...and still the EOF behind it");
}

#[test]
fn reads_that_fill_the_buffer_exactly_carry_one_byte_and_lose_none() {
    let (mut c, mut host) = pair();
    let mut buf = [0u8; 4];
    next(&mut c, &mut buf); // RESPONSE
    host.write_all(b"abcd").unwrap();
    c.host_ready(true, false, false);
    let p = next(&mut c, &mut buf).unwrap();
    assert_eq!((p.op, p.len, &buf), (OP_RW, 4, b"abcd"));
    assert!(
        !c.owes(),
        "one read told the stream is drained: no second read, no buffer"
    );
    assert_eq!(c.buffers_wanted(), 1);
    // More than the buffer: its first byte beyond is carried, the stream stays readable.
    host.write_all(b"efghijklm").unwrap();
    c.host_ready(true, false, false);
    let p = next(&mut c, &mut buf).unwrap();
    assert_eq!((p.len, &buf), (4, b"efgh"));
    assert!(
        c.owes() && c.buffers_wanted() == 2,
        "it had more: one more buffer next"
    );
    let p = next(&mut c, &mut buf).unwrap();
    assert_eq!((p.len, &buf), (4, b"ijkl"), "the carried byte comes first");
    let p = next(&mut c, &mut buf).unwrap();
    assert_eq!((p.len, &buf[..1]), (1, &b"m"[..]));
    assert!(!c.owes());
    assert_eq!(next(&mut c, &mut buf), None);
    host.write_all(b"n").unwrap();
    c.host_ready(true, false, false);
    assert_eq!(
        c.buffers_wanted(),
        3,
        "the whole burst's buffers are offered next time"
    );
    let mut one = [0u8; 1];
    let mut two = [0u8; 1];
    let p = c.next_packet(&[
        Window::whole(&Buffers::from_bytes(&mut one)),
        Window::whole(&Buffers::from_bytes(&mut two)),
    ]);
    assert_eq!((p.unwrap().len, one), (1, *b"n"));
}

#[test]
fn a_carried_byte_reaches_the_guest_before_the_eof_behind_it() {
    let (mut c, mut host) = pair();
    let mut buf = [0u8; 2];
    next(&mut c, &mut buf); // RESPONSE
    host.write_all(b"xyz").unwrap();
    drop(host);
    c.host_ready(true, false, true);
    assert_eq!(next(&mut c, &mut buf).unwrap().len, 2);
    let p = next(&mut c, &mut buf).unwrap();
    assert_eq!((p.op, p.len, buf[0]), (OP_RW, 1, b'z'));
    assert_eq!(next(&mut c, &mut buf).unwrap().op, OP_SHUTDOWN);
}

#[test]
fn with_one_byte_of_credit_left_the_carried_byte_is_all_that_goes() {
    let (mut c, mut host) = pair_with_credit(2);
    let mut buf = [0u8; 64];
    next(&mut c, &mut buf); // RESPONSE
    host.write_all(b"123").unwrap();
    assert_eq!(next(&mut c, &mut buf).unwrap().len, 2, "at most the credit");
    assert!(!c.owes(), "no credit: nothing, though a byte is carried");
    c.peer_credit(3, 0);
    let p = next(&mut c, &mut buf).unwrap();
    assert_eq!((p.len, buf[0]), (1, b'3'));
    assert_eq!(next(&mut c, &mut buf), None);
}

#[test]
fn a_guest_half_close_is_an_eof_for_the_host_program() {
    let (mut c, mut host) = pair();
    send(&mut c, b"last words");
    c.guest_shutdown(SHUTDOWN_SEND);
    let mut all = String::new();
    host.read_to_string(&mut all).unwrap();
    assert_eq!(all, "last words");
    assert_eq!(c.state(), State::Established, "the host may still answer");
}

#[test]
fn no_credit_no_data_and_a_credit_update_when_the_guest_is_nearly_out() {
    let (mut c, mut host) = pair_with_credit(0);
    let mut buf = [0u8; 64];
    next(&mut c, &mut buf); // RESPONSE
    host.write_all(b"waiting").unwrap();
    assert!(!c.owes(), "a guest with no buffer space gets nothing");
    c.peer_credit(3, 0);
    let p = next(&mut c, &mut buf).unwrap();
    assert_eq!((p.op, p.len), (OP_RW, 3), "at most the credit");
    // The guest sends nearly all of what we advertised; the host takes it.
    let mut reader = host.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        let mut v = vec![0u8; (HOST_BUF_ALLOC - 100) as usize];
        reader.read_exact(&mut v).unwrap();
    });
    for _ in 0..(HOST_BUF_ALLOC - 100) / 1000 {
        send(&mut c, &[7u8; 1000]);
        while c.held() > 0 {
            c.host_ready(false, true, false);
        }
    }
    send(&mut c, &vec![7u8; ((HOST_BUF_ALLOC - 100) % 1000) as usize]);
    while c.held() > 0 {
        c.host_ready(false, true, false);
    }
    t.join().unwrap();
    let p = next(&mut c, &mut buf).unwrap();
    assert_eq!(p.op, OP_CREDIT_UPDATE);
    assert_eq!(p.credit, (HOST_BUF_ALLOC, HOST_BUF_ALLOC - 100));
}

#[test]
fn a_guest_that_sends_past_its_credit_is_reset() {
    let (mut c, _host) = pair(); // nobody reads the host side
    let chunk = vec![1u8; 16 << 10];
    for _ in 0..64 {
        send(&mut c, &chunk);
        if c.state() == State::Resetting {
            break;
        }
    }
    assert_eq!(c.state(), State::Resetting);
    assert!(c.held() == 0, "nothing held after a reset");
    let mut buf = [0u8; 8];
    assert_eq!(next(&mut c, &mut buf).unwrap().op, OP_RST);
}

#[test]
fn a_host_connection_sends_a_request_and_ok_on_acceptance() {
    let (ours, mut host) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut c = Connection::host_initiated(ours, Instant::now());
    let mut buf = [0u8; 8];
    assert_eq!(next(&mut c, &mut buf).unwrap().op, OP_REQUEST);
    c.accepted(1 << 30);
    let mut line = [0u8; 14];
    host.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"OK 1073741824\n");
    assert_eq!(c.deadline, None);
    c.accepted(5); // a second RESPONSE: the guest is confused
    assert_eq!(c.state(), State::Resetting);
}

#[test]
fn bytes_behind_passed_descriptors_follow_without_another_host_write() {
    use std::os::fd::AsRawFd;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let (mut c, mut host) = pair();
    let mut buf = [0u8; 64];
    next(&mut c, &mut buf); // RESPONSE
    let (pipe_r, pipe_w) = std::io::pipe().unwrap();
    host.write_all(b"before").unwrap();
    host.send_with_fd(&b"+fd"[..], pipe_w.as_raw_fd()).unwrap();
    host.write_all(b"after").unwrap();
    drop(pipe_w); // (the only copy left is the one in flight)
    c.host_ready(true, false, false); // one edge for all three writes
    let mut got = Vec::new();
    while let Some(p) = next(&mut c, &mut buf) {
        assert_eq!(p.op, OP_RW);
        got.extend_from_slice(&buf[..p.len]);
    }
    assert_eq!(
        got, b"before+fdafter",
        "a read that stops at descriptors is not the stream drained"
    );
    assert!(!c.owes());
    // EOF (POLLHUP) once no write end is left. (Waited for, not read non-blocking: a test
    // forking in parallel may hold a copy of the write end for a moment.)
    let mut poll = libc::pollfd {
        fd: pipe_r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    let ready = unsafe { libc::poll(&mut poll, 1, 5000) };
    let mut rest = Vec::new();
    assert!(
        ready == 1 && (&pipe_r).read_to_end(&mut rest).unwrap() == 0,
        "the passed write end was closed, never kept by the VMM"
    );
}
