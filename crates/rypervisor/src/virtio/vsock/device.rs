//! The virtio-vsock device: three queues (0 RX: buffers the driver gives us for packets to
//! the guest; 1 TX: the guest's packets; 2 events: held, as we never reset the transport
//! under a live guest), the guest's CID in its configuration space, and the [`Muxer`] that
//! owns the host side. Everything runs on the device event loop.

use std::path::PathBuf;

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::Muxer;
use super::packet::{check, Header, Refusal, HEADER_SIZE, MAX_PAYLOAD};
use super::{VsockError, VIRTIO_ID_VSOCK};
use crate::virtio::buffers::Buffers;
use crate::virtio::{
    notify_used, queue_eventfds, ring_broken, serve_queue, stop_broken, Active, Complaints,
    VirtioDevice,
};
use vm_memory::ByteValued;

/// Queue indices.
pub const RX: usize = 0;
/// The guest's packets.
pub const TX: usize = 1;
/// Transport events (unused by us).
pub const EVENTS: usize = 2;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];

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
        let outcome = serve_queue(queue, mem, interrupt, kick, |chain| {
            let head = chain.head_index();
            match read_packet(chain, mem, self.guest_cid) {
                Ok((header, payload)) => {
                    stats.tx += 1;
                    muxer.from_guest(&header, &payload);
                }
                Err((why, header)) => {
                    stats.dropped += 1;
                    complaints.note("vsock", format_args!("TX buffer {head} dropped: {why}"));
                    if let Some(h) = header {
                        muxer.reset_connection(&h);
                    }
                }
            }
            0
        });
        if outcome.is_err() {
            return stop_broken(&mut self.active, &mut self.complaints, "vsock");
        }
        self.process_rx();
    }

    /// Fills the guest's RX buffers with owed packets, one packet per buffer.
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
        let (mut used, mut broken) = (false, false);
        while self.muxer.has_packets() {
            let _ = queue.disable_notification(mem);
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                if ring_broken(queue, mem) {
                    broken = true;
                    break;
                }
                // No buffers: ask to be kicked when some come, and look once more.
                match queue.enable_notification(mem) {
                    Ok(true) => continue,
                    _ => break,
                }
            };
            let head = chain.head_index();
            let written = match write_packet(chain, mem, &mut self.muxer) {
                Ok(Some(n)) => n,
                Ok(None) => {
                    queue.go_to_previous_position(); // nothing owed after all: keep the buffer
                    break;
                }
                Err(why) => {
                    let what = format_args!("RX buffer {head} unusable ({why}): returned empty");
                    self.complaints.note("vsock", what);
                    0
                }
            };
            self.stats.rx += u64::from(written > 0);
            used = true;
            if queue.add_used(mem, head, written).is_err() {
                return self.complaints.note("vsock", format_args!("bad used ring"));
            }
            budget -= 1;
            if budget == 0 {
                let _ = self.events[RX].write(1); // fairness: the event loop comes back
                break;
            }
        }
        if used {
            notify_used(queue, mem, &active.interrupt);
        }
        if broken {
            stop_broken(&mut self.active, &mut self.complaints, "vsock");
        }
    }
}

/// Reads one TX packet's header, checked, and finds its payload in guest memory (only the
/// chain's driver-readable descriptors count: a chain of writable ones is too short). A
/// refused packet's header comes back when it deserves an RST (a non-stream socket).
fn read_packet<'m>(
    chain: DescriptorChain<&'m GuestMemoryMmap>,
    mem: &'m GuestMemoryMmap,
    guest_cid: u64,
) -> Result<(Header, Buffers<'m>), (String, Option<Header>)> {
    let mut r = Buffers::of(chain, mem, false).map_err(|e| (e.to_string(), None))?;
    let header: Header = r.read_obj().map_err(|e| (e.to_string(), None))?;
    match check(&header, guest_cid, r.len()) {
        Ok(()) => {}
        // A non-stream socket is refused; a payload longer than its buffers would tear the
        // stream, so its connection is reset.
        Err(Refusal::NotStream) => return Err(("not a stream socket".into(), Some(header))),
        Err(Refusal::BadLength) => return Err(("payload past its buffers".into(), Some(header))),
        Err(why) => return Err((format!("{why:?}"), None)),
    }
    Ok((header, r.take(header.len as usize)))
}

/// Writes the muxer's next packet into an RX buffer, the payload read from the host socket
/// straight into guest memory; the bytes written, or `None` if nothing was owed after all.
fn write_packet(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    muxer: &mut Muxer,
) -> Result<Option<u32>, String> {
    let mut w = Buffers::of(chain, mem, true).map_err(|e| e.to_string())?;
    if w.len() < HEADER_SIZE {
        return Err("shorter than a header".into());
    }
    let mut payload = w.clone();
    payload.skip(HEADER_SIZE);
    let payload = payload.take(MAX_PAYLOAD as usize);
    let Some((header, len)) = muxer.next_packet(&payload) else {
        return Ok(None);
    };
    w.write_bytes(header.as_slice())
        .map_err(|e| e.to_string())?;
    Ok(Some((HEADER_SIZE + len) as u32))
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
        if std::mem::take(&mut self.reset_pending) {
            self.muxer.reset();
        }
        match index {
            RX => self.process_rx(),
            TX => self.process_tx(),
            _ => {} // the event queue's buffers stay with us
        }
    }

    fn other_fds(&self) -> Vec<std::os::fd::RawFd> {
        vec![self.muxer.fd()]
    }

    fn process_fd(&mut self, _index: usize) {
        if std::mem::take(&mut self.reset_pending) {
            self.muxer.reset();
        }
        self.muxer.process_host();
        self.process_rx();
    }

    fn stop(&mut self) {
        self.muxer.stop();
    }
}
