//! A model of a guest driver's side of one split virtqueue, on guest memory: it lays out the
//! descriptor table and both rings, offers buffers (chains of descriptors) and takes used
//! ones back, as a Linux driver would. Unit tests, the device benchmarks and the fuzz
//! targets drive devices with it, with no guest and no KVM.
//!
//! virtio-queue's own `mock` module does the same for its tests, but only behind a feature
//! meant for tests, reuses descriptor 0 for every chain and lays the used ring over the
//! avail ring; a benchmark needs buffers that come and go, so this one keeps a free list.

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

/// One buffer of a chain: guest address, length, whether the device writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub addr: u64,
    /// Bytes.
    pub len: u32,
    /// The device writes it (an RX buffer); otherwise it reads it.
    pub writable: bool,
}

/// The driver's side of a queue, on guest memory of any kind (`M`: ours by default; a peer
/// benchmark drives another VMM's device on its own memory type).
#[derive(Debug)]
pub struct DriverQueue<M: GuestMemory + Clone = GuestMemoryMmap> {
    mem: M,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    used_seen: u16,
    /// `avail_idx` when [`Self::needs_kick`] last looked.
    kicked_at: u16,
    free: Vec<u16>,
}

impl<M: GuestMemory + Clone> DriverQueue<M> {
    /// A queue of `size` (a power of two) entries whose rings start at `base` (which must be
    /// 16-byte aligned and leave `Self::footprint(size)` bytes of guest memory).
    pub fn new(mem: &M, size: u16, base: u64) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        Self {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            used_seen: 0,
            kicked_at: 0,
            free: (0..size).rev().collect(),
        }
    }

    /// Bytes the rings take.
    pub fn footprint(size: u16) -> u64 {
        let s = u64::from(size);
        ((16 * s + 6 + 2 * s + 3) & !3) + 6 + 8 * s
    }

    /// The guest addresses of the descriptor table, the avail ring and the used ring (what a
    /// driver writes to the transport's queue registers).
    pub fn rings(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }

    /// With EVENT_IDX: asks for an interrupt once the device has used everything taken so
    /// far and one more (`used_event`, after the avail ring), as Linux's `virtqueue_enable_cb`
    /// does once it has drained the used ring.
    pub fn want_next_used(&mut self) {
        let at = GuestAddress(self.avail + 4 + 2 * u64::from(self.size));
        let _ = self.mem.write_obj(self.used_seen, at);
    }

    /// Whether the device wants a kick for the chains offered since the last call, as
    /// Linux's `virtqueue_kick_prepare` decides: with EVENT_IDX, when the avail index passed
    /// the `avail_event` the device wrote (after the used ring); without, unless the device
    /// set `VRING_USED_F_NO_NOTIFY`. A driver that kicks only then finds a device that asks
    /// for no kick and then waits for one (a stall).
    pub fn needs_kick(&mut self, event_idx: bool) -> bool {
        let (old, new) = (self.kicked_at, self.avail_idx);
        self.kicked_at = new;
        if event_idx {
            let at = GuestAddress(self.used + 4 + 8 * u64::from(self.size));
            let event: u16 = self.mem.read_obj(at).unwrap_or(old);
            // vring_need_event: the device's mark lies in (old, new].
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags: u16 = self.mem.read_obj(GuestAddress(self.used)).unwrap_or(0);
            flags & VRING_USED_F_NO_NOTIFY as u16 == 0
        }
    }

    /// The device's view of the queue, set up and ready (as after the driver's QUEUE_READY).
    pub fn device_queue(&self, event_idx: bool) -> Queue {
        let mut q = Queue::new(self.size).expect("a power-of-two size");
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        q.set_used_ring_address(lo, hi);
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }

    /// Offers a chain; its head index, or `None` when the table is full.
    pub fn offer(&mut self, chain: &[Buffer]) -> Option<u16> {
        if chain.is_empty() || chain.len() > self.free.len() {
            return None;
        }
        let ids: Vec<u16> = (0..chain.len()).filter_map(|_| self.free.pop()).collect();
        for (i, (b, id)) in chain.iter().zip(&ids).enumerate() {
            let mut flags = if b.writable { VRING_DESC_F_WRITE } else { 0 } as u16;
            let next = ids.get(i + 1).copied().unwrap_or(0);
            if i + 1 < chain.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let at = GuestAddress(self.desc + 16 * u64::from(*id));
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&b.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&b.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..].copy_from_slice(&next.to_le_bytes());
            self.mem.write_slice(&raw, at).ok()?;
        }
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_obj(ids[0], GuestAddress(slot)).ok()?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let idx = GuestAddress(self.avail).checked_add(2)?;
        self.mem.write_obj(self.avail_idx, idx).ok()?;
        Some(ids[0])
    }

    /// The next used entry (head index, bytes written), its descriptors freed.
    pub fn take_used(&mut self) -> Option<(u16, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).ok()?;
        if idx == self.used_seen {
            return None;
        }
        let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).ok()?;
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).ok()?;
        self.used_seen = self.used_seen.wrapping_add(1);
        let mut d = id as u16;
        for _ in 0..self.size {
            if d >= self.size || self.free.contains(&d) {
                break;
            }
            self.free.push(d);
            let base = GuestAddress(self.desc + 16 * u64::from(d));
            let flags: u16 = self.mem.read_obj(base.unchecked_add(12)).ok()?;
            if flags & VRING_DESC_F_NEXT as u16 == 0 {
                break;
            }
            d = self.mem.read_obj(base.unchecked_add(14)).ok()?;
        }
        Some((id as u16, len))
    }

    /// Sets or clears `VRING_AVAIL_F_NO_INTERRUPT` (the driver needs no interrupt for used
    /// buffers; meaningful without EVENT_IDX).
    pub fn quiet(&mut self, quiet: bool) {
        let flags = if quiet {
            VRING_AVAIL_F_NO_INTERRUPT as u16
        } else {
            0
        };
        let _ = self.mem.write_obj(flags, GuestAddress(self.avail));
    }

    /// Descriptors not in use.
    pub fn free(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_go_out_and_come_back_with_their_descriptors() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut d = DriverQueue::new(&mem, 8, 0x1000);
        assert!(DriverQueue::<GuestMemoryMmap>::footprint(8) < 0x1000);
        let mut q = d.device_queue(false);
        let b = |addr, writable| Buffer {
            addr,
            len: 100,
            writable,
        };
        let head = d.offer(&[b(0x8000, false), b(0x9000, true)]).unwrap();
        assert_eq!(d.free(), 6);
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        assert_eq!(chain.head_index(), head);
        let descs: Vec<_> = chain.collect();
        assert_eq!(descs.len(), 2);
        assert!(!descs[0].is_write_only() && descs[1].is_write_only());
        q.add_used(&mem, head, 42).unwrap();
        assert_eq!(d.take_used(), Some((head, 42)));
        assert_eq!(d.take_used(), None);
        assert_eq!(d.free(), 8);
        assert!(q.ready());
    }

    #[test]
    fn a_driver_that_asks_for_no_interrupt_without_event_idx_gets_none() {
        use crate::virtio::{notify_used, Interrupt};
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        for event_idx in [false, true] {
            let mut d = DriverQueue::new(&mem, 8, 0x1000);
            let mut q = d.device_queue(event_idx);
            let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let interrupt = Interrupt::new(irq.try_clone().unwrap());
            let used_one = |d: &mut DriverQueue, q: &mut Queue| {
                let buf = Buffer {
                    addr: 0x8000,
                    len: 1,
                    writable: true,
                };
                let head = d.offer(&[buf]).unwrap();
                q.pop_descriptor_chain(&mem).unwrap();
                q.add_used(&mem, head, 0).unwrap();
                notify_used(q, &mem, &interrupt);
                d.take_used().unwrap();
                let raised = irq.read().is_ok();
                interrupt.ack(interrupt.status());
                raised
            };
            assert!(
                used_one(&mut d, &mut q),
                "event_idx {event_idx}: interrupts by default"
            );
            d.quiet(true);
            // With EVENT_IDX the flag means nothing: used_event (0, passed) rules.
            assert!(!used_one(&mut d, &mut q), "event_idx {event_idx}");
            d.quiet(false);
            assert_eq!(
                used_one(&mut d, &mut q),
                !event_idx,
                "event_idx {event_idx}"
            );
        }
    }

    #[test]
    fn a_driver_kicks_only_when_the_device_asked() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let buf = Buffer {
            addr: 0x8000,
            len: 1,
            writable: true,
        };
        for event_idx in [false, true] {
            let mut d = DriverQueue::new(&mem, 8, 0x1000);
            let mut q = d.device_queue(event_idx);
            d.offer(&[buf]).unwrap();
            assert!(
                d.needs_kick(event_idx),
                "event_idx {event_idx}: a fresh queue"
            );
            // The device at work: no kicks wanted (with EVENT_IDX, its mark stays behind).
            q.disable_notification(&mem).unwrap();
            d.offer(&[buf]).unwrap();
            assert!(
                !d.needs_kick(event_idx),
                "event_idx {event_idx}: while serving"
            );
            // Done, it asks for the next one; a chain offered after that wants a kick.
            while q.pop_descriptor_chain(&mem).is_some() {}
            q.enable_notification(&mem).unwrap();
            assert!(d.needs_kick(event_idx) != event_idx, "nothing new offered");
            d.offer(&[buf]).unwrap();
            assert!(
                d.needs_kick(event_idx),
                "event_idx {event_idx}: after enabling"
            );
        }
    }
}
