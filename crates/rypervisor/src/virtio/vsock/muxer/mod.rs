//! The host side of the device: the listener at `PATH`, host programs still writing their
//! `CONNECT` line, the table of connections, and which of them owe the guest a packet.
//!
//! Every host descriptor is watched through a [`Watch`]: the event loop's own epoll once the
//! device is attached (one `epoll_wait` names the ready socket), an epoll of the muxer's own
//! before (tests, benchmarks). A timer serves the deadlines: a CONNECT line must arrive
//! within [`CONNECT_TIMEOUT`], and the guest must answer our REQUEST within it.
//! Everything a host program or the guest can make us hold is bounded: at most
//! [`MAX_CONNECTIONS`] connections and lines in progress, each holding at most the credit we
//! advertised; RSTs for packets that match no connection are capped too (beyond, dropped:
//! the guest gave a packet no connection to answer it on, and it will time out).
//!
//! Accepting host programs, their CONNECT lines and the deadline timer are in `host.rs`; this
//! file keeps the table, the guest's packets and what the guest is owed.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::conn::{Connection, State};
use super::connect::ConnectLine;
use super::packet::{
    Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, TYPE_STREAM,
};
use super::{unix, VsockError, HOST_CID};
use crate::virtio::buffers::{Buffers, Window};
use crate::virtio::{Complaints, Watch};

mod host;

/// Connections (and CONNECT lines being read) at most.
pub const MAX_CONNECTIONS: usize = 256;
/// CONNECT lines being read at most, so host programs that connect and say nothing leave
/// most of the connections to the guest.
pub const MAX_PENDING_LINES: usize = 64;
/// Host connections accepted per wake-up of the listener (level-triggered: the event loop
/// comes back for the rest after serving everything else), so a host program that keeps
/// connecting cannot hold the loop.
const ACCEPTS_PER_WAKE: usize = 16;
/// How long a host program has to send its CONNECT line, and the guest to answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// RSTs for stray packets held at most.
const MAX_STRAY_RSTS: usize = 256;
/// Host ports given to host-initiated connections start here (as Firecracker's).
const FIRST_HOST_PORT: u32 = 1 << 30;
const TICK: Duration = Duration::from_millis(250);

const LISTENER: u32 = u32::MAX;
const TIMER: u32 = u32::MAX - 1;

/// A host program's stream is watched for these while its CONNECT line is read.
const LINE_EVENTS: EventSet = EventSet::IN;

/// A connection's host stream is watched for these, edge-triggered (read until WouldBlock,
/// and left unread while the guest has no credit or buffers); PRI: out-of-band data.
const STREAM_EVENTS: EventSet = EventSet::IN
    .union(EventSet::PRIORITY)
    .union(EventSet::OUT)
    .union(EventSet::READ_HANG_UP)
    .union(EventSet::EDGE_TRIGGERED);

/// A connection's key: (host port, guest port).
type Key = (u32, u32);

struct PendingLine {
    stream: UnixStream,
    line: ConnectLine,
    deadline: Instant,
}

/// The muxer.
pub struct Muxer {
    guest_cid: u64,
    path: PathBuf,
    listener: UnixListener,
    watch: Watch,
    timer: TimerFd,
    ticking: bool,
    /// (Ordered maps: a few lookups of small keys per packet cost less than hashing them.)
    conns: BTreeMap<Key, Connection>,
    lines: BTreeMap<u32, PendingLine>,
    /// Watch id → connection.
    tokens: BTreeMap<u32, Key>,
    next_token: u32,
    next_host_port: u32,
    /// Connections that owe the guest a packet, in turn.
    owing: VecDeque<Key>,
    stray_rsts: VecDeque<Header>,
    /// The socket file was removed.
    removed: bool,
    /// Rate-limited logging of what the guest or host programs get wrong.
    complaints: Complaints,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("path", &self.path)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl Muxer {
    /// Listens on `path` (see [`unix::listen`]) for a guest with `guest_cid`.
    pub fn new(guest_cid: u64, path: PathBuf) -> Result<Self, VsockError> {
        let listener = unix::listen(&path)?;
        let watch = Watch::own().map_err(VsockError::Epoll)?;
        let timer = TimerFd::new()
            .map_err(|e| VsockError::Timer(std::io::Error::from_raw_os_error(e.errno())))?;
        // SAFETY: a plain fcntl on a descriptor we own: a read after a re-arm never waits.
        unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let m = Self {
            guest_cid,
            path,
            listener,
            watch,
            timer,
            ticking: false,
            conns: BTreeMap::new(),
            lines: BTreeMap::new(),
            tokens: BTreeMap::new(),
            next_token: 0,
            next_host_port: FIRST_HOST_PORT,
            owing: VecDeque::new(),
            stray_rsts: VecDeque::new(),
            removed: false,
            complaints: Complaints::default(),
        };
        for (fd, id, events) in m.descriptors() {
            m.watch(fd, id, events)?;
        }
        Ok(m)
    }

    /// Moves every host descriptor to `watch` (the event loop's), under the same ids; an
    /// error leaves some unwatched (the VM does not start).
    pub fn attach(&mut self, watch: Watch) -> std::io::Result<()> {
        let old = std::mem::replace(&mut self.watch, watch);
        for (fd, id, events) in self.descriptors() {
            old.delete(fd);
            self.watch.add(fd, events, id)?;
        }
        Ok(())
    }

    /// Every host descriptor watched, with its id and events: the listener, the timer,
    /// CONNECT lines being read, connections' streams.
    fn descriptors(&self) -> Vec<(RawFd, u32, EventSet)> {
        let mut fds = vec![
            (self.listener.as_raw_fd(), LISTENER, EventSet::IN),
            (self.timer.as_raw_fd(), TIMER, EventSet::IN),
        ];
        fds.extend((self.lines.iter()).map(|(t, p)| (p.stream.as_raw_fd(), *t, LINE_EVENTS)));
        for (token, key) in &self.tokens {
            if let Some(conn) = self.conns.get(key) {
                fds.push((conn.stream().as_raw_fd(), *token, STREAM_EVENTS));
            }
        }
        fds
    }

    /// How many connections are open.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn watch(&self, fd: RawFd, token: u32, events: EventSet) -> Result<(), VsockError> {
        self.watch.add(fd, events, token).map_err(VsockError::Epoll)
    }

    fn unwatch(&self, fd: RawFd) {
        self.watch.delete(fd);
    }

    /// What the host side has ready (never waits), when not attached to an event loop
    /// (tests, benchmarks), for [`Self::ready`]; the loop reports those itself.
    pub fn host_ready(&self) -> Vec<(u32, EventSet)> {
        self.watch.ready().unwrap_or_else(|e| {
            tracing::error!("vsock: epoll_wait failed: {e}");
            Vec::new()
        })
    }

    /// The host descriptor watched under `id` is ready with `set`.
    pub fn ready(&mut self, id: u32, set: EventSet) {
        match id {
            LISTENER => self.accept(),
            TIMER => self.tick(),
            token => self.stream_ready(token, set),
        }
    }

    fn stream_ready(&mut self, token: u32, set: EventSet) {
        if self.lines.contains_key(&token) {
            return self.read_line(token);
        }
        let Some(&key) = self.tokens.get(&token) else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            let hup = EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR;
            let (readable, writable) = (set.contains(EventSet::IN), set.contains(EventSet::OUT));
            conn.host_ready(readable, writable, set.intersects(hup));
            if set.contains(EventSet::PRIORITY) {
                conn.host_urgent();
            }
        }
        self.requeue(key);
    }

    /// Adds a connection, watched edge-triggered, and queues what it owes the guest. A
    /// stream the event loop cannot watch (`ENOMEM`, `max_user_watches`) is closed, and the
    /// error returned: the caller tells the guest.
    fn insert(&mut self, token: u32, key: Key, conn: Connection) -> Result<(), VsockError> {
        self.watch(conn.stream().as_raw_fd(), token, STREAM_EVENTS)?;
        self.tokens.insert(token, key);
        self.conns.insert(key, conn);
        self.requeue(key);
        Ok(())
    }

    fn remove(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            self.unwatch(conn.stream().as_raw_fd());
            self.tokens.retain(|_, k| *k != key);
            // A later connection with the same ports starts unqueued: no stale entry may stay.
            self.owing.retain(|k| *k != key);
        }
    }

    /// Puts a connection in the queue of those owing the guest, once.
    fn requeue(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if conn.owes() && !conn.queued {
                conn.queued = true;
                self.owing.push_back(key);
            }
        }
    }

    /// A packet from the guest (already checked: to the host, from the guest, a stream).
    pub fn from_guest(&mut self, header: &Header, payload: &Buffers<'_>) {
        let key = (header.dst_port, header.src_port);
        let (op, flags) = (header.op, header.flags);
        let Some(conn) = self.conns.get_mut(&key) else {
            return match op {
                OP_REQUEST => self.guest_connect(header),
                OP_RST => {}
                _ => self.refuse(header),
            };
        };
        conn.peer_credit(header.buf_alloc, header.fwd_cnt);
        match op {
            OP_RESPONSE => conn.accepted(key.0),
            OP_RW => {
                conn.guest_data(payload);
                if conn.state() == State::Resetting {
                    let what = format_args!(
                        "guest port {}: data past its credit or its shutdown: reset",
                        key.1
                    );
                    self.complaints.note("vsock", what);
                }
            }
            OP_SHUTDOWN => conn.guest_shutdown(flags),
            OP_CREDIT_REQUEST => conn.credit_requested(),
            OP_CREDIT_UPDATE => {}
            OP_RST => return self.remove(key),
            // A second REQUEST on a live connection, or an unknown operation.
            _ => conn.reset(),
        }
        self.requeue(key);
    }

    /// The guest connects to host port P: rypervisor connects to `PATH_P`.
    fn guest_connect(&mut self, header: &Header) {
        if self.conns.len() + self.lines.len() >= MAX_CONNECTIONS {
            let what = format_args!("{MAX_CONNECTIONS} connections open: the guest's is refused");
            self.complaints.note("vsock", what);
            return self.refuse(header);
        }
        let path = unix::port_path(&self.path, header.dst_port);
        match unix::connect_nonblocking(&path) {
            Ok(stream) => {
                let conn = Connection::guest_initiated(stream, header.buf_alloc, header.fwd_cnt);
                let token = self.token();
                if let Err(e) = self.insert(token, (header.dst_port, header.src_port), conn) {
                    // Refused as if nothing listened: the guest's connect fails, not times out.
                    let what = format_args!("guest connect to {}: {e}", path.display());
                    self.complaints.note("vsock", what);
                    self.refuse(header);
                }
            }
            Err(e) => {
                tracing::info!("vsock: guest connect to {}: {e}", path.display());
                self.refuse(header);
            }
        }
    }

    /// A header as the guest would send it on connection `key` (for [`Muxer::refuse`]).
    fn packet_header(&self, key: Key, op: u16) -> Header {
        Header {
            src_cid: self.guest_cid,
            dst_cid: HOST_CID,
            src_port: key.1,
            dst_port: key.0,
            kind: TYPE_STREAM,
            op,
            ..Header::default()
        }
    }

    /// A guest packet that breaks its connection (a payload past its buffers): the
    /// connection, if any, is reset; otherwise an RST answers it (unless it is one).
    pub fn reset_connection(&mut self, header: &Header) {
        let key = (header.dst_port, header.src_port);
        match self.conns.get_mut(&key) {
            Some(conn) => {
                conn.reset();
                self.requeue(key);
            }
            None => self.refuse(header),
        }
    }

    /// Answers a guest packet with an RST (bounded: beyond the cap, dropped) — unless it is
    /// an RST itself, which is never answered (as Linux's transport never answers one).
    pub fn refuse(&mut self, header: &Header) {
        if header.op != OP_RST && self.stray_rsts.len() < MAX_STRAY_RSTS {
            self.stray_rsts.push_back(header.reply(OP_RST));
        }
    }

    /// Entries in the queues of what is owed to the guest (bounded by the connections and
    /// the stray-RST cap).
    pub fn owed_entries(&self) -> usize {
        self.owing.len() + self.stray_rsts.len()
    }

    /// Whether some packet is owed to the guest.
    pub fn has_packets(&self) -> bool {
        !self.stray_rsts.is_empty() || !self.owing.is_empty()
    }

    /// How many RX buffers the next packet would like (see [`Connection::buffers_wanted`]).
    pub fn buffers_wanted(&self) -> usize {
        if !self.stray_rsts.is_empty() {
            return 1;
        }
        let next = self.owing.front().and_then(|k| self.conns.get(k));
        next.map_or(1, Connection::buffers_wanted)
    }

    /// The next packet for the guest: its header, and its payload read into the `payload`
    /// windows (at most their lengths; an RW's `len` is the total over them). `None` when
    /// nothing is owed after all.
    pub fn next_packet(&mut self, payload: &[Window<'_, '_>]) -> Option<(Header, usize)> {
        if let Some(rst) = self.stray_rsts.pop_front() {
            return Some((rst, 0));
        }
        while let Some(key) = self.owing.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let Some(out) = conn.next_packet(payload) else {
                // Nothing after all, or only data while this buffer has no room for any: then
                // it stays queued and this buffer goes back unused.
                if conn.owes() {
                    self.requeue(key);
                    return None;
                }
                continue;
            };
            let header = Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: key.0,
                dst_port: key.1,
                len: out.len as u32,
                kind: TYPE_STREAM,
                op: out.op,
                flags: out.flags,
                buf_alloc: out.credit.0,
                fwd_cnt: out.credit.1,
            };
            if out.op == OP_RST && conn.state() == State::Resetting {
                self.remove(key);
            } else {
                self.requeue(key);
            }
            return Some((header, out.len));
        }
        None
    }

    /// The driver reset the device: every connection ends (host streams closed).
    pub fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        keys.into_iter().for_each(|k| self.remove(k));
        self.owing.clear();
        self.stray_rsts.clear();
    }

    /// The VM ends: connections close and the socket file is removed.
    pub fn stop(&mut self) {
        self.reset();
        let tokens: Vec<u32> = self.lines.keys().copied().collect();
        tokens.into_iter().for_each(|t| self.drop_line(t));
        if !self.removed {
            self.removed = true;
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for Muxer {
    /// A VM that never ran (an error while building it) leaves no socket file behind. After
    /// a run, `stop` removed it on the event loop's thread (the only one whose seccomp
    /// filter allows `unlink`).
    fn drop(&mut self) {
        if !self.removed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests;
