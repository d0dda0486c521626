//! The muxer's host-program side: accepting on the listener, reading each program's
//! `CONNECT` line (bounded: [`MAX_CONNECTIONS`] at once, [`MAX_PENDING_LINES`] of them lines,
//! each within [`CONNECT_TIMEOUT`]; [`ACCEPTS_PER_WAKE`] accepted per wake-up),
//! turning a whole line into a connection, and the timer that ends lines and unanswered
//! REQUESTs past their deadline. The connection table and what the guest is owed stay in
//! the parent module.

use std::os::fd::AsRawFd;
use std::time::Instant;

use super::{
    Key, Muxer, PendingLine, ACCEPTS_PER_WAKE, CONNECT_TIMEOUT, FIRST_HOST_PORT, LINE_EVENTS,
    MAX_CONNECTIONS, MAX_PENDING_LINES, TICK, TIMER,
};
use crate::virtio::vsock::conn::Connection;
use crate::virtio::vsock::connect::{ConnectLine, Step};
use crate::virtio::vsock::packet::OP_REQUEST;
use crate::virtio::vsock::unix;

impl Muxer {
    pub(super) fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_WAKE {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let what = format_args!("accept on {}: {e}", self.path.display());
                    return self.complaints.note("vsock", what);
                }
            };
            if self.conns.len() + self.lines.len() >= MAX_CONNECTIONS {
                let what = format_args!("{MAX_CONNECTIONS} connections open: a new one is closed");
                self.complaints.note("vsock", what);
                continue;
            }
            if self.lines.len() >= MAX_PENDING_LINES {
                let what = format_args!(
                    "{MAX_PENDING_LINES} host connections have not sent CONNECT yet: a new one is closed"
                );
                self.complaints.note("vsock", what);
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true).and(unix::oob_inline(&stream)) {
                let what = format_args!("setting up a host connection: {e}");
                self.complaints.note("vsock", what);
                continue;
            }
            let token = self.token();
            if self.watch(stream.as_raw_fd(), token, LINE_EVENTS).is_err() {
                continue;
            }
            let deadline = Instant::now() + CONNECT_TIMEOUT;
            let line = ConnectLine::default();
            self.lines.insert(
                token,
                PendingLine {
                    stream,
                    line,
                    deadline,
                },
            );
            self.start_ticking();
            self.read_line(token);
        }
    }

    /// A watch id no line or connection holds.
    pub(super) fn token(&mut self) -> u32 {
        loop {
            self.next_token = (self.next_token + 1) % TIMER;
            let t = self.next_token;
            if !self.lines.contains_key(&t) && !self.tokens.contains_key(&t) {
                return t;
            }
        }
    }

    /// Reads more of a CONNECT line; a whole one becomes a connection and a REQUEST.
    pub(super) fn read_line(&mut self, token: u32) {
        let Some(pending) = self.lines.get_mut(&token) else {
            return;
        };
        let step = pending.line.read_from(&mut pending.stream);
        let port = match step {
            Step::More => return,
            Step::Refused(why) => {
                tracing::info!("vsock: host connection closed: {why}");
                return self.drop_line(token);
            }
            Step::Port(port) => port,
        };
        let Some(pending) = self.lines.remove(&token) else {
            return;
        };
        self.unwatch(pending.stream.as_raw_fd());
        let host_port = self.free_host_port(port);
        let conn = Connection::host_initiated(pending.stream, Instant::now() + CONNECT_TIMEOUT);
        if let Err(e) = self.insert(token, (host_port, port), conn) {
            // (The guest has not been asked yet: closing the host program's stream is all.)
            let what = format_args!("host connection to port {port} closed: {e}");
            self.complaints.note("vsock", what);
        }
    }

    pub(super) fn drop_line(&mut self, token: u32) {
        if let Some(p) = self.lines.remove(&token) {
            self.unwatch(p.stream.as_raw_fd());
        }
    }

    pub(super) fn free_host_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let port = self.next_host_port;
            self.next_host_port = self
                .next_host_port
                .checked_add(1)
                .unwrap_or(FIRST_HOST_PORT);
            if !self.conns.contains_key(&(port, guest_port)) {
                return port;
            }
        }
    }

    pub(super) fn start_ticking(&mut self) {
        if !self.ticking && self.timer.reset(TICK, Some(TICK)).is_ok() {
            self.ticking = true;
        }
    }

    /// The timer: CONNECT lines and REQUESTs past their deadline end.
    pub(super) fn tick(&mut self) {
        let _ = self.timer.wait();
        let now = Instant::now();
        let late: Vec<u32> = (self.lines.iter())
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            tracing::info!("vsock: host connection closed: no CONNECT line in time");
            self.drop_line(token);
        }
        let expired: Vec<Key> = (self.conns.iter())
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            // The host program's stream closes now and the slot is free; the guest gets an
            // RST for the REQUEST it never answered.
            tracing::info!("vsock: guest port {} did not answer in time", key.1);
            self.remove(key);
            let request = self.packet_header(key, OP_REQUEST);
            self.refuse(&request);
        }
        let waiting = !self.lines.is_empty() || self.conns.values().any(|c| c.deadline.is_some());
        if !waiting && self.timer.clear().is_ok() {
            self.ticking = false;
        }
    }
}
