//! One vsock stream between a guest port and a host Unix stream: its state, what it owes the
//! guest (a REQUEST, RESPONSE, payload, SHUTDOWN, CREDIT_UPDATE or RST), and the guest's
//! bytes not yet taken by the host program.
//!
//! The host stream is non-blocking and watched edge-triggered: `readable` stays set until a
//! read finds the stream drained, so no wakeup is lost while the guest has no credit or no
//! buffers (the bytes then wait in the host socket, and the host writer blocks, as a slow
//! reader should make it). Each read asks for one byte more than the guest's buffers hold,
//! so that it tells by itself whether the stream had more; that byte is carried to the next
//! packet. The guest's bytes that the host socket does not take at once are kept,
//! at most the `HOST_BUF_ALLOC` we advertised; a guest that sends more is reset.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::credit::Credit;
use super::packet::{
    OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV,
    SHUTDOWN_SEND,
};
use crate::virtio::buffers::{recv_windows, Buffers, StreamRead, Window};
use smallvec::SmallVec;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// A host program asked (CONNECT line); our REQUEST goes or went to the guest.
    HostConnecting,
    /// Both sides agreed; bytes flow.
    Established,
    /// An RST is owed to the guest; then the connection is gone.
    Resetting,
}

/// RX buffers one read from the host stream may fill at most (64 KiB of Linux's 4 KiB
/// buffers): one connection cannot take the whole queue at once.
pub const MAX_RX_BATCH: usize = 16;

/// Packets owed to the guest (bits).
const OWE_REQUEST: u8 = 1;
const OWE_RESPONSE: u8 = 2;
const OWE_SHUTDOWN: u8 = 4;
const OWE_CREDIT: u8 = 8;

/// What a connection sends the guest next: operation, flags, payload bytes in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// `OP_*`.
    pub op: u16,
    /// SHUTDOWN flags.
    pub flags: u32,
    /// Payload bytes written to the caller's buffer.
    pub len: usize,
    /// Our credit numbers (buf_alloc, fwd_cnt).
    pub credit: (u32, u32),
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    state: State,
    credit: Credit,
    /// Bytes the host socket has not taken yet: the guest's, after `control` bytes of ours
    /// (the `OK` line).
    pending: VecDeque<u8>,
    control: usize,
    owed: u8,
    /// SHUTDOWN flags to send (what the host will no longer do).
    shutdown_flags: u32,
    /// The host stream may have bytes (or EOF) to read.
    readable: bool,
    /// The host program will send no more.
    host_eof: bool,
    /// epoll reported the host's end closed: its EOF waits behind any bytes still queued.
    host_hung_up: bool,
    /// epoll reported an out-of-band mark (MSG_OOB) in the host stream: a read stops short
    /// there without a flag to tell, so reads go on until one finds nothing.
    host_urgent: bool,
    /// What the guest said it will no longer do (SHUTDOWN flags).
    guest_shut: u32,
    /// The host stream's write side was shut (after the guest's SHUTDOWN_SEND).
    host_write_shut: bool,
    /// Until when a host-initiated REQUEST waits for the guest's answer.
    pub deadline: Option<Instant>,
    /// In the device's list of connections that owe the guest something.
    pub queued: bool,
    /// RX buffers the host stream's last burst filled (its reads from readable to drained):
    /// the next read is offered as many, and one more while the stream has more. Within a
    /// burst, the buffers it filled so far (so a long burst is read in 1, 2, 4, ... buffers).
    filled_last: usize,
    /// RX buffers the reads of the current burst filled.
    burst: usize,
    /// A byte read ahead of the guest's buffers: each read asks for one byte more than they
    /// hold, so that it tells by itself whether the stream is drained. It is the first byte
    /// of the next payload (one per connection; the guest's credit is counted when it is
    /// delivered).
    carry: Option<u8>,
}

impl Connection {
    /// A connection a host program asked for: a REQUEST is owed to the guest.
    pub fn host_initiated(stream: UnixStream, deadline: Instant) -> Self {
        let mut c = Self::new(stream, State::HostConnecting);
        c.owed = OWE_REQUEST;
        c.deadline = Some(deadline);
        c
    }

    /// A connection the guest asked for and the host accepted: a RESPONSE is owed.
    pub fn guest_initiated(stream: UnixStream, buf_alloc: u32, fwd_cnt: u32) -> Self {
        let mut c = Self::new(stream, State::Established);
        c.credit.peer_says(buf_alloc, fwd_cnt);
        c.owed = OWE_RESPONSE;
        c
    }

    fn new(stream: UnixStream, state: State) -> Self {
        Self {
            stream,
            state,
            credit: Credit::default(),
            pending: VecDeque::new(),
            control: 0,
            owed: 0,
            shutdown_flags: 0,
            readable: true,
            host_eof: false,
            host_hung_up: false,
            host_urgent: false,
            guest_shut: 0,
            host_write_shut: false,
            deadline: None,
            queued: false,
            filled_last: 1,
            burst: 0,
            carry: None,
        }
    }

    /// The host stream, to watch.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Its state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Guest bytes held for the host socket.
    pub fn held(&self) -> usize {
        self.pending.len() - self.control
    }

    /// Ends the connection: an RST is owed to the guest, the host stream is closed at once.
    pub fn reset(&mut self) {
        self.state = State::Resetting;
        self.pending.clear();
        self.control = 0;
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Whether it owes the guest a packet now.
    pub fn owes(&self) -> bool {
        self.state == State::Resetting || self.owed != 0 || self.can_send_data()
    }

    /// How many RX buffers its next packet would like: one for a control packet; for data,
    /// as many as the last burst filled, one more if the stream has more (at most
    /// [`MAX_RX_BATCH`]).
    pub fn buffers_wanted(&self) -> usize {
        let control =
            self.state == State::Resetting || self.owed & (OWE_REQUEST | OWE_RESPONSE) != 0;
        if control || !self.can_send_data() {
            return 1;
        }
        (self.filled_last + usize::from(self.carry.is_some())).min(MAX_RX_BATCH)
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && (self.readable || self.carry.is_some())
            && !self.host_eof
            && self.guest_shut & SHUTDOWN_RCV == 0
            && self.credit.peer_credit() > 0
    }

    /// The host stream is ready (epoll): readable, writable, hung up.
    pub fn host_ready(&mut self, readable: bool, writable: bool, hung_up: bool) {
        if readable || hung_up {
            self.readable = true;
        }
        self.host_hung_up |= hung_up;
        if writable {
            self.flush();
        }
    }

    /// The host program sent out-of-band data (epoll's PRI): the stream is read inline
    /// (SO_OOBINLINE, so the byte is kept), but a read stops short at the mark.
    pub fn host_urgent(&mut self) {
        self.host_urgent = true;
        self.readable = true;
    }

    /// The guest's numbers, from any packet it sent.
    pub fn peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.credit.peer_says(buf_alloc, fwd_cnt);
    }

    /// The guest accepted our REQUEST: the host program hears `OK <host_port>\n`.
    pub fn accepted(&mut self, host_port: u32) {
        if self.state != State::HostConnecting {
            return self.reset();
        }
        self.state = State::Established;
        self.deadline = None;
        let line = format!("OK {host_port}\n");
        self.control = line.len();
        self.pending.extend(line.bytes());
        self.flush();
    }

    /// Payload from the guest for the host program, written from guest memory straight to
    /// the host socket; what it does not take now is kept.
    pub fn guest_data(&mut self, payload: &Buffers<'_>) {
        if self.state != State::Established || self.guest_shut & SHUTDOWN_SEND != 0 {
            return self.reset();
        }
        if !self
            .credit
            .guest_may_send(self.held() as u32, payload.len() as u32)
        {
            return self.reset(); // (the muxer says so, rate-limited: the guest controls this)
        }
        if self.pending.is_empty() {
            match send_some(&self.stream, payload) {
                Ok(n) => {
                    self.credit.forwarded(n as u32);
                    if n < payload.len() {
                        let mut rest = payload.clone();
                        rest.skip(n);
                        rest.append_to(&mut self.pending);
                    }
                }
                Err(_) => return self.reset(),
            }
        } else {
            payload.append_to(&mut self.pending);
            self.flush();
        }
        self.note_credit();
    }

    /// The guest's SHUTDOWN: what it will no longer do.
    pub fn guest_shutdown(&mut self, flags: u32) {
        if flags & SHUTDOWN_RCV != 0 && self.guest_shut & SHUTDOWN_RCV == 0 {
            // The host program's writes now fail (EPIPE) instead of filling its socket.
            let _ = self.stream.shutdown(Shutdown::Read);
        }
        self.guest_shut |= flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
        self.close_write_if_done();
        self.finish_if_done();
    }

    /// The guest asked for our numbers.
    pub fn credit_requested(&mut self) {
        self.owed |= OWE_CREDIT;
    }

    /// Writes what is held to the host socket, as far as it takes it.
    fn flush(&mut self) {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match write_some(&mut self.stream, front) {
                Ok(0) => break,
                Ok(n) => {
                    self.pending.drain(..n);
                    let ours = n.min(self.control);
                    self.control -= ours;
                    self.credit.forwarded((n - ours) as u32);
                }
                Err(_) => return self.reset(),
            }
        }
        self.note_credit();
        self.close_write_if_done();
        self.finish_if_done();
    }

    fn note_credit(&mut self) {
        if self.credit.update_due() {
            self.owed |= OWE_CREDIT;
        }
    }

    /// The guest will send no more and all it sent reached the host: the host program
    /// reads EOF.
    fn close_write_if_done(&mut self) {
        if self.guest_shut & SHUTDOWN_SEND != 0 && self.pending.is_empty() && !self.host_write_shut
        {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }

    /// Nothing more can flow either way: an RST ends it (Linux waits for it after its
    /// SHUTDOWN of both directions).
    fn finish_if_done(&mut self) {
        let no_more_from_guest = self.guest_shut & SHUTDOWN_SEND != 0 && self.pending.is_empty();
        let no_more_to_guest = self.host_eof || self.guest_shut & SHUTDOWN_RCV != 0;
        if self.state == State::Established && no_more_from_guest && no_more_to_guest {
            self.reset();
        }
    }

    /// The next packet for the guest, its payload (if any) read from the host stream straight
    /// into the `payload` windows in order (at most their lengths and the guest's credit; an
    /// RW's `len` is the total, which the device spreads over the windows as separate
    /// packets). `None`: nothing after all.
    pub fn next_packet(&mut self, payload: &[Window<'_, '_>]) -> Option<Outgoing> {
        let packet = |op, flags, len, credit: &mut Credit| Outgoing {
            op,
            flags,
            len,
            credit: credit.tell(),
        };
        if self.state == State::Resetting {
            return Some(packet(OP_RST, 0, 0, &mut self.credit));
        }
        for (bit, op) in [(OWE_REQUEST, OP_REQUEST), (OWE_RESPONSE, OP_RESPONSE)] {
            if self.owed & bit != 0 {
                self.owed &= !bit;
                return Some(packet(op, 0, 0, &mut self.credit));
            }
        }
        let offered: usize = payload.iter().map(|w| w.len).sum();
        if self.can_send_data() && offered > 0 {
            let room = offered.min(self.credit.peer_credit() as usize);
            match self.read_payload(payload, room) {
                Ok(None) => self.burst = 0,
                Ok(Some(0)) => {
                    self.host_eof = true;
                    self.shutdown_flags |= SHUTDOWN_SEND;
                    self.owed |= OWE_SHUTDOWN;
                }
                Ok(Some(n)) => {
                    self.burst += windows_filled(payload, n);
                    self.filled_last = self.burst.min(MAX_RX_BATCH);
                    if self.carry.is_none() {
                        self.burst = 0; // (drained: the next burst is offered as many)
                    }
                    self.credit.sent(n as u32);
                    self.owed &= !OWE_CREDIT;
                    return Some(packet(OP_RW, 0, n, &mut self.credit));
                }
                Err(_) => {
                    self.reset();
                    return Some(packet(OP_RST, 0, 0, &mut self.credit));
                }
            }
        }
        if self.owed & OWE_SHUTDOWN != 0 {
            self.owed &= !(OWE_SHUTDOWN | OWE_CREDIT);
            let flags = self.shutdown_flags;
            let p = packet(OP_SHUTDOWN, flags, 0, &mut self.credit);
            self.finish_if_done();
            return Some(p);
        }
        if self.owed & OWE_CREDIT != 0 {
            self.owed &= !OWE_CREDIT;
            return Some(packet(OP_CREDIT_UPDATE, 0, 0, &mut self.credit));
        }
        None
    }

    /// Fills `payload` (at most `room` > 0 bytes) from the carried byte and one read of the
    /// host stream, which also carries a byte past them if the stream has more: the bytes for
    /// the guest (`Some(0)`: the stream ended, nothing carried; `None`: nothing now).
    fn read_payload(
        &mut self,
        payload: &[Window<'_, '_>],
        room: usize,
    ) -> std::io::Result<Option<usize>> {
        let mut first = 0;
        let mut windows: SmallVec<[Window<'_, '_>; 4]> = payload.iter().copied().collect();
        if let Some(byte) = self.carry {
            let w = &mut windows[0];
            if w.len == 0 || w.buffers.write_at(w.skip, &[byte]).is_err() {
                return Err(ErrorKind::InvalidInput.into()); // (the device offers no such window)
            }
            (w.skip, w.len, first) = (w.skip + 1, w.len - 1, 1);
            self.carry = None;
        }
        let some = |n| (n > 0).then_some(n);
        if !self.readable {
            return Ok(some(first)); // (the carried byte was all there was)
        }
        let mut spill = [0u8; 1];
        let Some(r) = read_some(&self.stream, &windows, room - first, &mut spill)? else {
            (self.readable, self.host_urgent) = (false, false);
            return Ok(some(first));
        };
        let read = match r {
            StreamRead { read: 0, .. } if first > 0 => {
                self.host_hung_up = true; // (its EOF is read again next time)
                return Ok(Some(first));
            }
            StreamRead { read: 0, .. } => return Ok(Some(0)),
            StreamRead { read, offered, .. } if read > offered => {
                self.carry = Some(spill[0]);
                offered
            }
            StreamRead { read, .. } => {
                // All there was: the stream is drained for now (edge-triggered epoll reports
                // its next bytes), unless the host's end closed, whose EOF is still to read,
                // the read stopped at passed descriptors (the kernel closed them; the bytes
                // behind them are already there), or at an out-of-band mark (no flag tells
                // that: while one was reported, only a read that finds nothing says drained).
                if !self.host_hung_up && !r.cut_at_descriptors && !self.host_urgent {
                    self.readable = false;
                }
                read
            }
        };
        Ok(Some(first + read))
    }
}

/// Writes what the socket takes now (0 when it takes nothing).
fn write_some(stream: &mut UnixStream, bytes: &[u8]) -> std::io::Result<usize> {
    loop {
        match stream.write(bytes) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes what the socket takes now of `payload`, in one `sendmsg` (0 when it takes nothing).
fn send_some(stream: &UnixStream, payload: &Buffers<'_>) -> std::io::Result<usize> {
    match payload.send_to(stream.as_raw_fd()) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

/// Reads what the socket has now, at most `max` bytes into `into` and then into `spill`, in
/// one `recvmsg` (`None`: nothing yet; a read of 0: end of stream).
fn read_some(
    stream: &UnixStream,
    into: &[Window<'_, '_>],
    max: usize,
    spill: &mut [u8],
) -> std::io::Result<Option<StreamRead>> {
    match recv_windows(stream.as_raw_fd(), into, max, spill) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// How many of `windows` (in order) `n` bytes reach into.
fn windows_filled(windows: &[Window<'_, '_>], n: usize) -> usize {
    let mut left = n;
    let mut filled = 0;
    for w in windows {
        if left == 0 {
            break;
        }
        left = left.saturating_sub(w.len);
        filled += 1;
    }
    filled
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
