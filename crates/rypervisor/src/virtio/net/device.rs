//! The virtio-net device: queue 0 RX (buffers the driver gives for frames to it), queue 1 TX
//! (its frames), the MAC in the configuration space. Every frame carries the 12-byte
//! `virtio_net_hdr_v1` both in the guest's buffers and on the tap (`IFF_VNET_HDR`), so frames
//! move between the tap and guest memory with one `readv`/`writev` and no copy.
//!
//! The event loop watches the tap edge-triggered: a frame that finds no guest buffer waits in
//! the tap's queue, and is delivered when the driver gives buffers back (its RX kick). A
//! frame the tap cannot take now (its queue full) is dropped and counted, as a congested NIC
//! would.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC};
use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{set_offload, VNET_HDR};
use crate::virtio::buffers::Buffers;
use crate::virtio::{
    notify_used, queue_eventfds, ring_broken, serve_queue, stop_broken, Active, Complaints,
    VirtioDevice, VirtioError,
};

/// Queue indices.
pub const RX: usize = 0;
/// The guest's frames.
pub const TX: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];

/// Frame counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames given to the guest.
    pub rx: u64,
    /// Frames the guest sent that reached the tap.
    pub tx: u64,
    /// Guest frames dropped (the tap full, malformed chains).
    pub tx_dropped: u64,
    /// Tap frames dropped (shorter than a header, longer than the buffer, unusable buffers).
    pub rx_dropped: u64,
}

/// The device.
pub struct Net {
    tap: File,
    mac: [u8; 6],
    events: Vec<EventFd>,
    /// The tap may have frames (edge-triggered: until a read says WouldBlock).
    readable: bool,
    /// Offloads to set on the tap, from the event loop (activation runs on a vCPU thread).
    offload: Option<libc::c_uint>,
    /// The driver acknowledged VIRTIO_NET_F_CSUM (it may send partially checksummed frames)
    /// and VIRTIO_NET_F_GUEST_CSUM (it takes them).
    csum: bool,
    guest_csum: bool,
    active: Option<Active>,
    complaints: Complaints,
    /// What it did.
    pub stats: NetStats,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.mac)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Net {
    /// A device on `tap` (non-blocking, with 12-byte vnet headers) with `mac`.
    pub fn new(tap: File, mac: [u8; 6]) -> Result<Self, VirtioError> {
        Ok(Self {
            tap,
            mac,
            events: queue_eventfds(QUEUE_SIZES.len())?,
            readable: true,
            offload: None,
            csum: false,
            guest_csum: false,
            active: None,
            complaints: Complaints::default(),
            stats: NetStats::default(),
        })
    }

    /// The offloads still to be set on the tap (`TUN_F_*`), if any.
    pub fn pending_offload(&self) -> Option<libc::c_uint> {
        self.offload
    }

    fn apply_offload(&mut self) {
        if let Some(flags) = self.offload.take() {
            if let Err(e) = set_offload(&self.tap, flags) {
                self.complaints
                    .note("net", format_args!("TUNSETOFFLOAD: {e}"));
            }
        }
    }

    /// Frames from the tap into the guest's RX buffers, one frame per buffer.
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (mem, queue) = (&active.mem, &mut active.queues[RX]);
        if !queue.ready() {
            return; // never set up by the driver: nothing to fill
        }
        let (mut used, mut broken) = (false, false);
        let mut budget = usize::from(queue.size());
        while self.readable && budget > 0 {
            let _ = queue.disable_notification(mem);
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                broken = ring_broken(queue, mem);
                match queue.enable_notification(mem) {
                    Ok(true) if !broken => continue,
                    _ => break, // the frames wait in the tap until buffers come
                }
            };
            let head = chain.head_index();
            let written = match Buffers::of(chain, mem, true) {
                Ok(b) if b.len() > VNET_HDR => match b.read_frame_from(self.tap.as_raw_fd()) {
                    // A frame longer than the buffer (a host MTU above what the guest's
                    // buffers hold), which the tap cut short: not handed over as whole.
                    Ok((_, true)) => {
                        self.stats.rx_dropped += 1;
                        let len = b.len();
                        let what = format_args!("a frame longer than its {len}-byte buffer");
                        self.complaints.note("net", what);
                        0
                    }
                    Ok((n, false)) if n >= VNET_HDR => {
                        // One buffer per frame: num_buffers is 1. Without GUEST_CSUM the
                        // header's flags must be 0 (whatever the tap set, e.g. from before
                        // a reset).
                        if !self.guest_csum {
                            let _ = b.write_at(0, &[0]);
                        }
                        let _ = b.write_at(10, &1u16.to_le_bytes());
                        self.stats.rx += 1;
                        n as u32
                    }
                    Ok(_) => {
                        self.stats.rx_dropped += 1;
                        0
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        self.readable = false;
                        queue.go_to_previous_position();
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                        // A buffer no frame can be read into (over IOV_MAX slices): it goes
                        // back empty and the frame stays in the tap for the next one.
                        self.complaints
                            .note("net", format_args!("RX buffer {head}: {e}"));
                        0
                    }
                    Err(e) => {
                        // The tap itself fails (its interface gone, say): nothing was read,
                        // so the buffer goes back and the tap waits for its next event,
                        // rather than each of the guest's buffers going back empty on the
                        // same error, again and again.
                        self.complaints.note("net", format_args!("tap read: {e}"));
                        self.readable = false;
                        queue.go_to_previous_position();
                        break;
                    }
                },
                _ => {
                    self.stats.rx_dropped += 1;
                    let what = format_args!("RX buffer {head} unusable: returned empty");
                    self.complaints.note("net", what);
                    0
                }
            };
            if queue.add_used(mem, head, written).is_err() {
                broken = true;
                break;
            }
            used = true;
            budget -= 1;
        }
        if budget == 0 && self.readable {
            let _ = self.events[RX].write(1); // fairness: the event loop comes back
        }
        if used {
            notify_used(queue, mem, &active.interrupt);
        }
        if broken {
            stop_broken(&mut self.active, &mut self.complaints, "net");
        }
    }

    /// The guest's frames to the tap.
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            let what = format_args!("queue kicked before DRIVER_OK: ignored");
            return self.complaints.note("net", what);
        };
        let (mem, queue) = (&active.mem, &mut active.queues[TX]);
        let (tap, stats, complaints) =
            (self.tap.as_raw_fd(), &mut self.stats, &mut self.complaints);
        let csum = self.csum;
        let (interrupt, kick) = (&active.interrupt, &self.events[TX]);
        let outcome = serve_queue(queue, mem, interrupt, kick, |chain| {
            match Buffers::of(chain, mem, false) {
                Ok(b) if b.len() > VNET_HDR && tx_allowed(&b, csum) => match b.writev_to(tap) {
                    Ok(_) => stats.tx += 1,
                    Err(e) => {
                        stats.tx_dropped += 1;
                        if e.kind() != std::io::ErrorKind::WouldBlock {
                            complaints.note("net", format_args!("tap write: {e}"));
                        }
                    }
                },
                _ => stats.tx_dropped += 1,
            }
            0
        });
        if outcome.is_err() {
            stop_broken(&mut self.active, &mut self.complaints, "net");
        }
    }
}

/// The largest frame a guest may send, its vnet header included: a 65535-byte MTU (Linux's
/// ceiling for a virtio-net device that announces none) with an Ethernet header and a VLAN
/// tag; no segmentation offload is offered, so nothing larger is meant. A longer chain is
/// dropped before the tap sees it.
pub const MAX_TX_FRAME: usize = VNET_HDR + 14 + 4 + 65_535;

/// Whether a guest frame may go to the tap: at most [`MAX_TX_FRAME`] bytes in one `writev`
/// (at most IOV_MAX slices), no segmentation offload (none is offered), and a partial
/// checksum only if CSUM was acknowledged.
///
/// The header is read here and again by the tap's write, so a guest racing its own vCPUs
/// can change it in between. That gains it nothing a tap writer cannot do: the kernel checks
/// every vnet header written to a tap (`virtio_net_hdr_to_skb`: known GSO types only,
/// checksum offsets inside the frame, GSO marked untrusted), so this check keeps the
/// negotiated contract, not the host, safe. Closing the window costs: a copy of the frame
/// took 7% of the TX rate, a checked header written apart from the rest 20% (a tap takes a
/// frame in two pieces slower; benches/net.rs, 1514-byte frames, 2026-12-04).
fn tx_allowed(frame: &Buffers<'_>, csum: bool) -> bool {
    if frame.len() > MAX_TX_FRAME {
        return false;
    }
    let mut head = [0u8; 2];
    if frame.peek(&mut head) < head.len() {
        return false;
    }
    let (flags, gso_type) = (head[0], head[1]);
    let needs_csum = flags & 1 != 0; // VIRTIO_NET_HDR_F_NEEDS_CSUM
    frame.slice_count() <= 1024 && gso_type == 0 && (csum || !needs_csum)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn name(&self) -> &'static str {
        "net"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_GUEST_CSUM
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio_net_config: mac[6], then status and the rest (features not offered): zero.
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset.saturating_add(i as u64)).unwrap_or(usize::MAX);
            *byte = self.mac.get(at).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, active: Active) {
        tracing::debug!("virtio-net: activated ({:?})", active);
        // The tap may checksum-offload frames to the guest only if the guest takes them so.
        let guest_csum = active.features & (1 << VIRTIO_NET_F_GUEST_CSUM) != 0;
        self.offload = Some(if guest_csum { libc::TUN_F_CSUM } else { 0 });
        self.guest_csum = guest_csum;
        self.csum = active.features & (1 << VIRTIO_NET_F_CSUM) != 0;
        self.active = Some(active);
        self.readable = true;
        self.kick(RX);
        self.kick(TX);
    }

    fn reset(&mut self) {
        self.active = None;
        self.offload = Some(0);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.events
    }

    fn process_queue(&mut self, index: usize) {
        self.apply_offload();
        match index {
            RX => self.process_rx(),
            TX => self.process_tx(),
            _ => {}
        }
    }

    fn other_fds(&self) -> Vec<(RawFd, EventSet)> {
        vec![(
            self.tap.as_raw_fd(),
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        )]
    }

    /// The tap became readable (an edge: it is read until `WouldBlock` before another).
    fn process_fd(&mut self, _index: usize) {
        self.readable = true;
        self.apply_offload();
        self.process_rx();
    }
}
