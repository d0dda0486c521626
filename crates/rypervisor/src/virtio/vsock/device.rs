//! The virtio-vsock device: three queues (0 RX: buffers the driver gives us for packets to
//! the guest; 1 TX: the guest's packets; 2 events: held, as we never reset the transport
//! under a live guest), the guest's CID in its configuration space, and the [`Muxer`] that
//! owns the host side. Everything runs on the device event loop.

use std::path::PathBuf;

use smallvec::SmallVec;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::credit::HOST_BUF_ALLOC;
use super::muxer::Muxer;
use super::packet::{check, Header, Refusal, HEADER_SIZE, MAX_PAYLOAD, OP_RW};
use super::{VsockError, VIRTIO_ID_VSOCK};
use crate::virtio::buffers::{Buffers, Window};
use crate::virtio::{
    notify_used, queue_eventfds, ring_broken, serve_queue_batched, stop_broken, Active, Complaints,
    VirtioDevice, VirtioError, Watch,
};
use vm_memory::ByteValued;

/// Queue indices.
pub const RX: usize = 0;
/// The guest's packets.
pub const TX: usize = 1;
/// Transport events (unused by us).
pub const EVENTS: usize = 2;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
/// TX chains served together at most (64 KiB of Linux's 4 KiB packets).
const TX_BATCH: usize = 16;
/// Payload bytes joined into one write at most: what we advertise, so a guest that keeps
/// to its credit (held + sent ≤ 64 KiB) always passes the check with its packets joined.
const RUN_MAX: usize = HOST_BUF_ALLOC as usize;

/// Packet counts, for tests and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockStats {
    /// Packets the guest sent that were served.
    pub tx: u64,
    /// Packets given to the guest.
    pub rx: u64,
    /// Guest packets dropped (bad descriptors, not for the host, spoofed, too long).
    pub dropped: u64,
}

/// The device.
pub struct Vsock {
    guest_cid: u64,
    events: Vec<EventFd>,
    active: Option<Active>,
    muxer: Muxer,
    complaints: Complaints,
    /// The driver reset the device: the event loop closes the connections (a reset comes
    /// on a vCPU thread, whose seccomp filter allows no socket calls).
    reset_pending: bool,
    /// What it did.
    pub stats: VsockStats,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// A device for a guest with `guest_cid`, listening on `path` for host programs.
    pub fn new(guest_cid: u64, path: PathBuf) -> Result<Self, VsockError> {
        if guest_cid < super::MIN_GUEST_CID || guest_cid > u64::from(u32::MAX) {
            return Err(VsockError::Cid(guest_cid));
        }
        Ok(Self {
            guest_cid,
            events: queue_eventfds(QUEUE_SIZES.len()).map_err(VsockError::Virtio)?,
            active: None,
            muxer: Muxer::new(guest_cid, path)?,
            complaints: Complaints::default(),
            reset_pending: false,
            stats: VsockStats::default(),
        })
    }

    /// Which host sockets are ready, as (id, events) for `process_event`, when no event
    /// loop is attached (the model driver, tests): the events the loop would report.
    pub fn host_ready(&self) -> Vec<(u32, EventSet)> {
        self.muxer.host_ready()
    }

    /// Ends the connections of before a driver reset (asked for on a vCPU thread, done
    /// here on the event loop's) before anything else is served: nothing owed to the old
    /// driver may reach the new one's rings.
    fn finish_reset(&mut self) {
        if std::mem::take(&mut self.reset_pending) {
            self.muxer.reset();
        }
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.muxer.connections()
    }

    /// Serves the guest's packets, then gives it what is owed.
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return self.complaints.note(
                "vsock",
                format_args!("queue kicked before DRIVER_OK: ignored"),
            );
        };
        let mem = &active.mem;
        let queue = &mut active.queues[TX];
        let (muxer, stats, complaints) = (&mut self.muxer, &mut self.stats, &mut self.complaints);
        let (interrupt, kick) = (&active.interrupt, &self.events[TX]);
        let guest_cid = self.guest_cid;
        let outcome = serve_queue_batched(queue, mem, interrupt, kick, TX_BATCH, |chains, lens| {
            // Consecutive RW packets of one connection go to its host stream together (one
            // `sendmsg`); anything else is served in order, after what came before it.
            let mut run: Option<(Header, Buffers<'_>)> = None;
            let flush = |run: &mut Option<(Header, Buffers<'_>)>, muxer: &mut Muxer| {
                if let Some((h, payload)) = run.take() {
                    muxer.from_guest(&h, &payload);
                }
            };
            for chain in chains {
                lens.push(0);
                let head = chain.head_index();
                match read_packet(chain.clone(), mem, guest_cid) {
                    Ok((header, payload)) => {
                        stats.tx += 1;
                        let fits = |joined: &Buffers<'_>| joined.len() + payload.len() <= RUN_MAX;
                        let run_on = run.as_mut().filter(|(h, b)| joins(h, &header) && fits(b));
                        if let Some((h, joined)) = run_on {
                            (h.buf_alloc, h.fwd_cnt) = (header.buf_alloc, header.fwd_cnt);
                            h.len = h.len.saturating_add(header.len);
                            joined.append(payload);
                            continue;
                        }
                        flush(&mut run, muxer);
                        if header.op == OP_RW {
                            run = Some((header, payload));
                        } else {
                            muxer.from_guest(&header, &payload);
                        }
                    }
                    Err((why, answer)) => {
                        flush(&mut run, muxer);
                        stats.dropped += 1;
                        complaints.note("vsock", format_args!("TX buffer {head} dropped: {why}"));
                        match answer {
                            Answer::Nothing => {}
                            Answer::Refuse(h) => muxer.refuse(&h),
                            Answer::Reset(h) => muxer.reset_connection(&h),
                        }
                    }
                }
            }
            flush(&mut run, muxer);
        });
        if outcome.is_err() {
            return stop_broken(&mut self.active, &mut self.complaints, "vsock");
        }
        self.process_rx();
    }

    /// Fills the guest's RX buffers with owed packets, one packet per buffer; a connection's
    /// data may fill several buffers from one read of its host stream.
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[RX];
        let mut budget = usize::from(queue.size()).max(1);
        if !queue.ready() {
            return; // never set up by the driver: nothing to fill
        }
        if !self.muxer.has_packets() {
            return; // (most calls, after the guest's TX: nothing owed)
        }
        let (mut used, mut broken) = (false, false);
        // A read that fills more buffers than are kept inline spills them to the heap.
        let mut bufs: SmallVec<[RxBuffer<'_>; RX_INLINE]> = SmallVec::new();
        'fill: while self.muxer.has_packets() {
            let _ = queue.disable_notification(mem);
            let wanted = self.muxer.buffers_wanted();
            bufs.clear();
            // (Unusable buffers count against the budget too: at most `budget` chains are
            // used however many the driver keeps adding meanwhile.)
            while bufs.len() < wanted.min(budget) {
                let Some(chain) = queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                match rx_buffer(chain, mem) {
                    Ok(b) => bufs.push(b),
                    // Buffers not filled go back by rewinding the queue, which must not reach
                    // past one already used: an unusable buffer behind good ones waits for
                    // the next round, where it comes first.
                    Err(_) if !bufs.is_empty() => {
                        queue.go_to_previous_position();
                        break;
                    }
                    Err(why) => {
                        let what =
                            format_args!("RX buffer {head} unusable ({why}): returned empty");
                        self.complaints.note("vsock", what);
                        used = true;
                        budget -= 1;
                        if queue.add_used(mem, head, 0).is_err() {
                            broken = true; // (a head past the table)
                            break 'fill;
                        }
                    }
                }
            }
            if bufs.is_empty() {
                if ring_broken(queue, mem) {
                    broken = true;
                    break;
                }
                if budget == 0 {
                    let _ = self.events[RX].write(1); // fairness: the event loop comes back
                    break;
                }
                // No buffers: ask to be kicked when some come, and look once more.
                match queue.enable_notification(mem) {
                    Ok(true) => continue,
                    _ => break,
                }
            }
            let packet = {
                let windows: SmallVec<[Window<'_, '_>; RX_INLINE]> =
                    bufs.iter().map(RxBuffer::payload).collect();
                self.muxer.next_packet(&windows)
            };
            let filled = match packet {
                None => 0,
                Some((header, len)) => put_packets(&mut bufs, header, len),
            };
            // What was popped and not filled goes back, last first.
            for _ in filled..bufs.len() {
                queue.go_to_previous_position();
            }
            for b in bufs.drain(..filled) {
                self.stats.rx += 1;
                used = true;
                budget -= 1;
                if queue.add_used(mem, b.head, b.written).is_err() {
                    broken = true;
                    break 'fill;
                }
            }
            if filled == 0 {
                break; // nothing owed after all: the buffers stay
            }
            if budget == 0 {
                let _ = self.events[RX].write(1); // fairness: the event loop comes back
                break;
            }
        }
        drop(bufs); // (its buffers borrow the guest memory `stop_broken` may drop)
        if used {
            notify_used(queue, mem, &active.interrupt);
        }
        if broken {
            stop_broken(&mut self.active, &mut self.complaints, "vsock");
        }
    }
}

/// RX buffers (and their windows) one round keeps on the stack: a few packets' worth, since
/// each round's array is set up afresh (up to [`MAX_RX_BATCH`](super::conn::MAX_RX_BATCH) go on the heap).
const RX_INLINE: usize = 4;

/// One RX buffer popped from the queue: its device-writable bytes, a header's room first.
struct RxBuffer<'m> {
    head: u16,
    buffers: Buffers<'m>,
    /// Bytes for the used ring once filled.
    written: u32,
}

impl<'m> RxBuffer<'m> {
    /// Where its payload goes: after the header, at most MAX_PAYLOAD.
    fn payload(&self) -> Window<'_, 'm> {
        let room = self.buffers.len() - HEADER_SIZE;
        Window {
            buffers: &self.buffers,
            skip: HEADER_SIZE,
            len: room.min(MAX_PAYLOAD as usize),
        }
    }
}

fn rx_buffer<'m>(
    chain: DescriptorChain<&'m GuestMemoryMmap>,
    mem: &'m GuestMemoryMmap,
) -> Result<RxBuffer<'m>, String> {
    let head = chain.head_index();
    let buffers = Buffers::of(chain, mem, true).map_err(|e| e.to_string())?;
    // A buffer of a header alone (Linux's hold a header and 4 KiB) is returned empty: it
    // could carry a control packet, but data owed next would find no room in it and wait
    // for ever at the head of the ring.
    if buffers.len() <= HEADER_SIZE {
        return Err("no room behind a header".into());
    }
    Ok(RxBuffer {
        head,
        buffers,
        written: 0,
    })
}

/// Writes the packet's header into the first buffer, or — for an RW whose `len` bytes the
/// read spread over several buffers — one RW header into each buffer they reached, with its
/// share of the bytes; how many buffers were filled.
fn put_packets(bufs: &mut [RxBuffer<'_>], header: Header, len: usize) -> usize {
    let mut left = len;
    let mut filled = 0;
    for b in bufs.iter_mut() {
        let share = left.min(b.payload().len);
        let mut h = header;
        h.len = share as u32;
        // The buffer holds a header's room (checked when it was popped).
        let _ = b.buffers.write_bytes(h.as_slice());
        b.written = (HEADER_SIZE + share) as u32;
        filled += 1;
        left -= share;
        if left == 0 || header.op != OP_RW {
            break;
        }
    }
    filled
}

/// Whether `next` continues the run of RW packets that `run` heads: data on the same
/// connection.
fn joins(run: &Header, next: &Header) -> bool {
    next.op == OP_RW
        && run.op == OP_RW
        && (next.src_port, next.dst_port) == (run.src_port, run.dst_port)
}

/// What a refused TX packet gets besides being dropped.
enum Answer {
    /// Nothing (no header to answer, or not addressed to us).
    Nothing,
    /// An RST for its ports (a socket type we do not serve): a stream connection on the
    /// same ports is another socket, left alone.
    Refuse(Header),
    /// Its connection is reset (a payload past its buffers would tear the stream).
    Reset(Header),
}

/// Reads one TX packet's header, checked, and finds its payload in guest memory (only the
/// chain's driver-readable descriptors count: a chain of writable ones is too short).
fn read_packet<'m>(
    chain: DescriptorChain<&'m GuestMemoryMmap>,
    mem: &'m GuestMemoryMmap,
    guest_cid: u64,
) -> Result<(Header, Buffers<'m>), (String, Answer)> {
    let mut r = Buffers::of(chain, mem, false).map_err(|e| (e.to_string(), Answer::Nothing))?;
    let header: Header = r.read_obj().map_err(|e| (e.to_string(), Answer::Nothing))?;
    match check(&header, guest_cid, r.len()) {
        Ok(()) => {}
        Err(Refusal::NotStream) => {
            return Err(("not a stream socket".into(), Answer::Refuse(header)))
        }
        Err(Refusal::BadLength) => {
            return Err(("payload past its buffers".into(), Answer::Reset(header)))
        }
        Err(why) => return Err((format!("{why:?}"), Answer::Nothing)),
    }
    r.truncate(header.len as usize);
    Ok((header, r))
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn name(&self) -> &'static str {
        "vsock"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0 // stream sockets are implied (no VIRTIO_VSOCK_F_SEQPACKET)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes(); // le64 guest_cid
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            *byte = usize::try_from(at)
                .ok()
                .and_then(|a| config.get(a))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, active: Active) {
        tracing::debug!("virtio-vsock: activated ({:?})", active);
        if active.queues.len() != QUEUE_SIZES.len() {
            return;
        }
        self.active = Some(active);
        self.kick(TX); // packets the driver queued before DRIVER_OK
    }

    fn reset(&mut self) {
        self.active = None;
        self.reset_pending = true;
        self.kick(TX);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.events
    }

    fn process_queue(&mut self, index: usize) {
        self.finish_reset();
        match index {
            RX => self.process_rx(),
            TX => self.process_tx(),
            _ => {} // the event queue's buffers stay with us
        }
    }

    fn attach(&mut self, watch: Watch) -> Result<(), VirtioError> {
        self.muxer
            .attach(watch)
            .map_err(|e| VirtioError::Watch("vsock", e))
    }

    fn process_event(&mut self, id: u32, events: EventSet) {
        self.finish_reset();
        self.muxer.ready(id, events);
    }

    fn events_done(&mut self) {
        // (A reset may have come between this wake's events and now.)
        self.finish_reset();
        self.process_rx();
    }

    fn stop(&mut self) {
        self.muxer.stop();
    }
}
