//! virtio devices for a booted Linux guest, on the rust-vmm crates: split rings through
//! `virtio-queue`, constants from `virtio-bindings`.
//!
//! The parts, each a file:
//! - [`VirtioDevice`] (here): what a device model provides — its type, queues, features,
//!   configuration space, and what it does once the driver has set it up;
//! - [`mmio`]: the virtio-mmio version 2 transport, the device's 4 KiB register window on the
//!   bus (feature negotiation, the status state machine, queue setup, reset, interrupts);
//! - [`event_loop`]: the one thread that serves every device's queue notifications
//!   (ioeventfds: a guest's notify never exits to the VMM) and host sockets, so vCPU threads
//!   never block on device I/O;
//! - [`rng`]: virtio-rng, fed from the host's `getrandom`;
//! - [`block`]: virtio-blk over a disk image file;
//! - [`net`]: virtio-net over an existing tap device;
//! - [`vsock`]: virtio-vsock with Firecracker's hybrid host side (Unix sockets);
//! - [`buffers`]: a chain's buffers as guest-memory slices, for I/O without copies;
//! - [`driver`]: a model of a guest driver's side of a queue, for tests, benchmarks, fuzzing.
//!
//! Interrupts go to the guest through an irqfd ([`Interrupt`]), after the interrupt status
//! bit is set, as the Linux driver reads it first.

pub mod block;
pub mod buffers;
pub mod driver;
pub mod event_loop;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use smallvec::SmallVec;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use event_loop::Watch;
pub use mmio::MmioTransport;

/// Interrupt status bit: a used ring was updated.
pub const INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// Errors setting a device up.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// An eventfd could not be made.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// A queue size the device asked for is not valid.
    #[error("invalid queue size {0}")]
    QueueSize(u16),
    /// The event loop could not start.
    #[error("cannot start the device event loop: {0}")]
    EventLoop(#[source] std::io::Error),
    /// A device could not register its descriptors in the event loop's epoll.
    #[error("virtio-{0}: cannot watch its descriptors in the device event loop: {1}")]
    Watch(&'static str, #[source] std::io::Error),
}

/// A device's line to the guest: the interrupt status register and the irqfd that raises
/// the device's interrupt — and whether the device gave up on the driver's rings
/// (DEVICE_NEEDS_RESET, which the transport shows in STATUS), since the device, on the event
/// loop, is the one that finds them broken.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
    needs_reset: AtomicBool,
}

impl Interrupt {
    /// An interrupt that signals `irqfd` (registered with `KVM_IRQFD` for the device's line).
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
            needs_reset: AtomicBool::new(false),
        }
    }

    /// The device cannot go on until the driver resets it: DEVICE_NEEDS_RESET, and a
    /// configuration interrupt so the driver looks (virtio 1.2, 2.1.2).
    pub fn needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal(INT_CONFIG);
    }

    /// Whether [`Self::needs_reset`] was called since the last reset.
    pub fn reset_needed(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Sets `bit` in the interrupt status, then raises the line — unless the bit was set
    /// already: the driver has not acknowledged the last interrupt yet, and its handler,
    /// which acknowledges before it looks at the rings, will see what was just added.
    pub fn signal(&self, bit: u32) {
        if self.status.fetch_or(bit, Ordering::SeqCst) & bit != 0 {
            return;
        }
        if let Err(e) = self.irqfd.write(1) {
            tracing::warn!("virtio: cannot raise the interrupt: {e}");
        }
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// INTERRUPT_ACK: the driver clears what it has seen.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Device reset: nothing pending, nothing broken.
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// A device model behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;

    /// A short name for messages.
    fn name(&self) -> &'static str;

    /// The largest size of each of its queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits it offers beyond what the transport adds (VERSION_1, EVENT_IDX).
    fn features(&self) -> u64;

    /// Reads its configuration space at `offset` (bytes past the end read as zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// The driver set DRIVER_OK: the device takes its queues (set up, valid) and the
    /// features acknowledged, and starts serving. Called on a vCPU thread (a register write):
    /// no host I/O here (the vCPU's seccomp filter forbids it); kick the event loop instead.
    fn activate(&mut self, active: Active);

    /// The driver reset the device (or the transport marked it broken): it drops its queues.
    /// Called on a vCPU thread, as `activate`: host resources are released by the event loop.
    fn reset(&mut self);

    /// One eventfd per queue: KVM signals it when the driver kicks the queue (an
    /// ioeventfd on QUEUE_NOTIFY with the queue's index), the event loop waits on it.
    fn queue_events(&self) -> &[EventFd];

    /// The event loop saw queue `index`'s eventfd (already read): serve the queue.
    fn process_queue(&mut self, index: usize);

    /// Other descriptors the event loop should watch for this device (a vsock muxer's epoll,
    /// a tap), each with the events to wait for: `EDGE_TRIGGERED` for one the device reads
    /// until `WouldBlock` and may leave unread while the guest has no buffers.
    fn other_fds(&self) -> Vec<(std::os::fd::RawFd, vmm_sys_util::epoll::EventSet)> {
        Vec::new()
    }

    /// The event loop saw `other_fds()[index]` become ready.
    fn process_fd(&mut self, _index: usize) {}

    /// The event loop's [`Watch`], given once before it starts: a device whose descriptors
    /// come and go registers them there itself (an error stops the VM from starting).
    fn attach(&mut self, _watch: Watch) -> Result<(), VirtioError> {
        Ok(())
    }

    /// A descriptor registered under `id` through the [`Watch`] is ready with `events`.
    fn process_event(&mut self, _id: u32, _events: vmm_sys_util::epoll::EventSet) {}

    /// The event loop reported all of this wake's `process_event`s (so a device serves its
    /// queue once after many sockets became ready).
    fn events_done(&mut self) {}

    /// The VM is ending (called on the event loop's thread): close host resources.
    fn stop(&mut self) {}

    /// A kick that reached the transport instead of an ioeventfd: wake the event loop.
    fn kick(&self, index: usize) {
        match self.queue_events().get(index) {
            Some(evt) => {
                let _ = evt.write(1);
            }
            None => tracing::warn!(
                "virtio-{}: kick of queue {index}, which does not exist",
                self.name()
            ),
        }
    }
}

/// One eventfd per queue, non-blocking, for [`VirtioDevice::queue_events`].
pub fn queue_eventfds(count: usize) -> Result<Vec<EventFd>, VirtioError> {
    (0..count)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioError::EventFd))
        .collect()
}

/// A log line for the first few guest mistakes of a device, then quiet (they stay counted).
#[derive(Debug, Default)]
pub struct Complaints(u32);

impl Complaints {
    /// Logs `what` unless enough were logged already.
    pub fn note(&mut self, device: &str, what: std::fmt::Arguments<'_>) {
        self.0 = self.0.saturating_add(1);
        if self.0 <= 8 {
            tracing::warn!("virtio-{device}: {what}");
        }
    }

    /// How many there were.
    pub fn count(&self) -> u32 {
        self.0
    }
}

/// What a device gets when the driver has set it up.
pub struct Active {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Its queues, in order.
    pub queues: Vec<Queue>,
    /// The features the driver acknowledged.
    pub features: u64,
    /// The interrupt to signal used buffers with.
    pub interrupt: std::sync::Arc<Interrupt>,
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Active")
            .field("queues", &self.queues.len())
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

/// How [`serve_chains`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Served {
    /// Nothing more is available (and with EVENT_IDX the driver will kick for more).
    Done,
    /// A queue's worth was served.
    OutOfBudget,
    /// The rings are outside guest memory, or the driver's indexes make no sense.
    BadRing,
}

/// The driver broke a queue's rings (outside guest memory, indexes past the queue): the
/// device stops serving until the driver resets it ([`stop_broken`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingsBroken;

/// Serves a queue: every available chain to `serve` (which returns the bytes it wrote for
/// the used ring), at most a queue's worth per call — beyond, `kick` is written so the
/// event loop comes back after serving the others — then interrupts the driver if it
/// wants to hear of the used buffers.
pub fn serve_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &Interrupt,
    kick: &EventFd,
    mut serve: impl FnMut(Chain<'_>) -> u32,
) -> Result<(), RingsBroken> {
    serve_queue_metered(queue, mem, interrupt, kick, u64::MAX, |c| (serve(c), 0))
}

/// [`serve_queue`] for chains whose cost differs: `serve` also says what each cost (bytes
/// moved), and once `limit` is spent the call ends as when a queue's worth is served (the
/// kick written, the rest served after the other devices), so a driver's large requests
/// cannot hold the event loop for long.
pub fn serve_queue_metered(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &Interrupt,
    kick: &EventFd,
    limit: u64,
    mut serve: impl FnMut(Chain<'_>) -> (u32, u64),
) -> Result<(), RingsBroken> {
    use virtio_queue::QueueT;
    let mut spent = 0u64;
    // One chain at a time (no list to build).
    let one = |queue: &mut Queue, budget: &mut usize| {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return Ok(0);
        };
        let head = chain.head_index();
        let (len, cost) = serve(chain);
        queue
            .add_used(mem, head, len)
            .map_err(|_| Served::BadRing)?;
        *budget -= 1;
        spent = spent.saturating_add(cost);
        if spent >= limit {
            *budget = 0;
        }
        Ok(1)
    };
    let served = serve_chains(queue, mem, one);
    finish(queue, mem, interrupt, kick, served)
}

/// A descriptor chain on guest memory.
pub type Chain<'m> = virtio_queue::DescriptorChain<&'m GuestMemoryMmap>;

/// Chains (and used lengths) a batch keeps on the stack; a bigger batch spills to the heap.
const BATCH_INLINE: usize = 4;

/// The used lengths of one batch of chains, in order.
pub type UsedLens = SmallVec<[u32; BATCH_INLINE]>;

/// [`serve_queue`], the chains handed over up to `batch` at a time (those available
/// together), so a device can serve them in one go — vsock writes a connection's
/// consecutive payloads with one `sendmsg`. `serve` pushes one used length per chain, in
/// order; all are returned used after it, so nothing is given back to the driver while
/// the device still reads it.
pub fn serve_queue_batched(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &Interrupt,
    kick: &EventFd,
    batch: usize,
    mut serve: impl FnMut(&[Chain<'_>], &mut UsedLens),
) -> Result<(), RingsBroken> {
    use virtio_queue::QueueT;
    let batch = batch.max(1);
    let mut chains: SmallVec<[Chain<'_>; BATCH_INLINE]> = SmallVec::new();
    let mut lens = UsedLens::new();
    let some = |queue: &mut Queue, budget: &mut usize| {
        chains.clear();
        while chains.len() < batch.min(*budget) {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            chains.push(chain);
        }
        if chains.is_empty() {
            return Ok(0);
        }
        lens.clear();
        serve(&chains, &mut lens);
        for (i, chain) in chains.iter().enumerate() {
            let len = lens.get(i).copied().unwrap_or(0);
            queue
                .add_used(mem, chain.head_index(), len)
                .map_err(|_| Served::BadRing)?;
        }
        *budget -= chains.len();
        Ok(chains.len())
    };
    let served = serve_chains(queue, mem, some);
    finish(queue, mem, interrupt, kick, served)
}

/// After serving: the kick to come back if the budget ran out, the driver's interrupt if
/// any buffer was used (a kick that found nothing, or a queue never made ready, raises
/// none: Linux counts an interrupt with nothing behind it as spurious).
fn finish(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &Interrupt,
    kick: &EventFd,
    (outcome, used): (Served, usize),
) -> Result<(), RingsBroken> {
    if outcome == Served::OutOfBudget {
        let _ = kick.write(1);
    }
    // (A ring found broken mid-batch may follow used entries this call did not count.)
    if used > 0 || outcome == Served::BadRing {
        notify_used(queue, mem, interrupt);
    }
    match outcome {
        Served::BadRing => Err(RingsBroken),
        _ => Ok(()),
    }
}

/// A device whose driver broke its rings drops its queues until the driver resets it, and
/// tells it so (DEVICE_NEEDS_RESET): a guest whose I/O stops gets to know why.
pub fn stop_broken(active: &mut Option<Active>, complaints: &mut Complaints, device: &str) {
    let what = "rings outside memory or indexes past the queue: stopped until reset";
    complaints.note(device, format_args!("{what}"));
    if let Some(active) = active.take() {
        active.interrupt.needs_reset();
    }
}

/// Serves every available chain by `round`s (each pops some, serves them, returns them used
/// and counts them off the budget; how many, 0 when there were none). With EVENT_IDX the driver
/// kicks only when told to (`avail_event`): notifications are re-enabled after draining,
/// and the queue drained again if buffers came meanwhile. At most the queue's size per call;
/// how it ended and how many chains were used.
fn serve_chains(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut round: impl FnMut(&mut Queue, &mut usize) -> Result<usize, Served>,
) -> (Served, usize) {
    use virtio_queue::QueueT;
    // A queue the driver never made ready (DRIVER_OK without QUEUE_READY) has nothing to
    // serve, and its ring addresses are not the driver's: touch nothing.
    if !queue.ready() {
        return (Served::Done, 0);
    }
    let (mut budget, mut used) = (usize::from(queue.size()).max(1), 0);
    let outcome = 'serve: loop {
        let _ = queue.disable_notification(mem);
        let before = used;
        loop {
            match round(queue, &mut budget) {
                Ok(0) => break,
                Ok(n) => used += n,
                Err(outcome) => break 'serve outcome,
            }
            if budget == 0 {
                break 'serve Served::OutOfBudget;
            }
        }
        if used == before && ring_broken(queue, mem) {
            break Served::BadRing;
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => break Served::Done,
            Err(_) => break Served::BadRing,
        }
    };
    (outcome, used)
}

/// The parts of a device option (`--drive path=FILE,ro`, `--net tap=NAME`): each key with its
/// value (`None` for a bare flag), in order; `Err` with the reason when a key is given twice.
pub fn option_parts(spec: &str) -> Result<Vec<(&str, Option<&str>)>, &'static str> {
    let mut parts: Vec<(&str, Option<&str>)> = Vec::new();
    for part in spec.split(',') {
        let (key, value) = match part.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (part, None),
        };
        if parts.iter().any(|&(k, _)| k == key) {
            return Err("a key is given twice");
        }
        parts.push((key, value));
    }
    Ok(parts)
}

/// Whether the driver's avail index is further ahead than the queue holds (or unreadable),
/// or its avail ring is at guest address 0 (which virtio-queue takes for a queue never set
/// up): virtio-queue then hands out nothing while it keeps saying buffers are there, and a
/// device that believed it would spin.
pub fn ring_broken(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    use virtio_queue::QueueT;
    if queue.avail_ring() == 0 {
        return true;
    }
    match queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire) {
        Ok(idx) => (idx - std::num::Wrapping(queue.next_avail())).0 > queue.size(),
        Err(_) => true,
    }
}

/// Signals the device's interrupt if the driver wants to hear about `queue`'s new used
/// buffers: with EVENT_IDX, when the used index passed its mark; without, unless the driver
/// set `VRING_AVAIL_F_NO_INTERRUPT`.
pub fn notify_used(queue: &mut Queue, mem: &GuestMemoryMmap, interrupt: &Interrupt) {
    use virtio_queue::QueueT;
    match queue.needs_notification(mem) {
        Ok(false) => {}
        Ok(true) if !queue.event_idx_enabled() && no_interrupt_asked(queue, mem) => {}
        Ok(true) => interrupt.signal(INT_VRING),
        Err(e) => {
            tracing::warn!("virtio: cannot read the driver's event index ({e:?}); interrupting");
            interrupt.signal(INT_VRING);
        }
    }
}

/// Whether a driver without EVENT_IDX set `VRING_AVAIL_F_NO_INTERRUPT` in the avail ring's
/// flags: it needs no interrupt for used buffers, and the device should send none (virtio
/// 1.2, 2.7.7.2). virtio-queue's `needs_notification` does not read the flag, hence this.
fn no_interrupt_asked(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
    use virtio_queue::QueueT;
    use vm_memory::Bytes;
    let flags = vm_memory::GuestAddress(queue.avail_ring());
    // (`needs_notification` fenced after the used ring's writes.)
    mem.load::<u16>(flags, Ordering::Acquire)
        .is_ok_and(|f| f & VRING_AVAIL_F_NO_INTERRUPT as u16 != 0)
}
