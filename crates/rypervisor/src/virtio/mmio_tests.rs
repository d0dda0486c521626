//! The transport's registers and state machine, driven as the Linux driver drives them, and
//! as a careless one would.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::bus::BusDevice;
use crate::virtio::{queue_eventfds, Active, Interrupt, VirtioDevice};
use virtio_queue::QueueT;

/// A device that records what the transport did to it.
struct Fake {
    events: Vec<EventFd>,
    activated: Option<(usize, u64)>,
    /// The sizes of the queues it was given.
    sizes: Vec<u16>,
    resets: u32,
}

impl VirtioDevice for Fake {
    fn device_type(&self) -> u32 {
        19
    }
    fn name(&self) -> &'static str {
        "fake"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 256]
    }
    fn features(&self) -> u64 {
        1 << 3
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = 3u64.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn activate(&mut self, active: Active) {
        self.activated = Some((active.queues.len(), active.features));
        self.sizes = active.queues.iter().map(|q| q.size()).collect();
    }
    fn reset(&mut self) {
        self.activated = None;
        self.resets += 1;
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.events
    }
    fn process_queue(&mut self, _index: usize) {}
}

struct Rig {
    t: MmioTransport,
    fake: Arc<Mutex<Fake>>,
    interrupt: Arc<Interrupt>,
}

impl Rig {
    fn new() -> Self {
        let fake = Arc::new(Mutex::new(Fake {
            events: queue_eventfds(2).unwrap(),
            activated: None,
            sizes: Vec::new(),
            resets: 0,
        }));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let t = MmioTransport::new(fake.clone(), mem, interrupt.clone()).unwrap();
        Self { t, fake, interrupt }
    }
    fn rd(&mut self, off: u32) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(u64::from(off), &mut b);
        u32::from_le_bytes(b)
    }
    fn wr(&mut self, off: u32, v: u32) {
        self.t.write(u64::from(off), &v.to_le_bytes());
    }
    /// What the driver does up to FEATURES_OK, acknowledging `features`.
    fn negotiate(&mut self, features: u64) {
        self.wr(VIRTIO_MMIO_STATUS, 0);
        self.wr(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.wr(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        self.wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.wr(VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        self.wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.wr(VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        self.wr(VIRTIO_MMIO_STATUS, 0b1011);
    }
    fn setup_queue(&mut self, index: u32, base: u32) {
        self.wr(VIRTIO_MMIO_QUEUE_SEL, index);
        self.wr(VIRTIO_MMIO_QUEUE_NUM, 128);
        self.wr(VIRTIO_MMIO_QUEUE_DESC_LOW, base);
        self.wr(VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
        self.wr(VIRTIO_MMIO_QUEUE_AVAIL_LOW, base + 0x800);
        self.wr(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
        self.wr(VIRTIO_MMIO_QUEUE_USED_LOW, base + 0x1000);
        self.wr(VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
        self.wr(VIRTIO_MMIO_QUEUE_READY, 1);
    }
}

const MODERN: u64 = 1 << 32;

#[test]
fn a_driver_sets_the_device_up_as_linux_does() {
    let mut r = Rig::new();
    assert_eq!(r.rd(VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
    assert_eq!(r.rd(VIRTIO_MMIO_VERSION), 2);
    assert_eq!(r.rd(VIRTIO_MMIO_DEVICE_ID), 19);
    r.wr(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    let hi = r.rd(VIRTIO_MMIO_DEVICE_FEATURES);
    r.wr(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let lo = r.rd(VIRTIO_MMIO_DEVICE_FEATURES);
    let offered = (u64::from(hi) << 32) | u64::from(lo);
    assert_eq!(
        offered,
        MODERN | (1 << 29) | (1 << 3),
        "VERSION_1, EVENT_IDX, the device's"
    );
    r.negotiate(offered);
    assert_ne!(r.rd(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    for i in 0..2 {
        r.wr(VIRTIO_MMIO_QUEUE_SEL, i);
        assert_eq!(r.rd(VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(r.rd(VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        r.setup_queue(i, 0x1_0000 * (i + 1));
    }
    // An 8-byte config field read as two 32-bit halves.
    assert_eq!(u64::from(r.rd(0x100)) | u64::from(r.rd(0x104)) << 32, 3);
    r.wr(VIRTIO_MMIO_STATUS, 0b1111);
    assert_eq!(r.fake.lock().unwrap().activated, Some((2, offered)));
    // Queue registers are frozen once the device is live.
    r.wr(VIRTIO_MMIO_QUEUE_SEL, 0);
    r.wr(VIRTIO_MMIO_QUEUE_NUM, 16);
    assert_eq!(r.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    // Interrupt status and its acknowledgement.
    r.interrupt.signal(crate::virtio::INT_VRING);
    assert_eq!(r.rd(VIRTIO_MMIO_INTERRUPT_STATUS), 1);
    r.wr(VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(r.rd(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    // Reset: status 0, the device idle, queues back to their maximum.
    r.wr(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(r.rd(VIRTIO_MMIO_STATUS), 0);
    assert_eq!(r.fake.lock().unwrap().activated, None);
    assert_eq!(
        r.fake.lock().unwrap().resets,
        2,
        "once at the driver's first reset too"
    );
}

#[test]
fn features_that_are_not_ours_or_not_modern_are_refused() {
    let mut r = Rig::new();
    r.negotiate(1 << 3); // no VERSION_1
    assert_eq!(r.rd(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    r.negotiate(MODERN | (1 << 40)); // a bit we never offered
    assert_eq!(r.rd(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    r.negotiate(MODERN);
    assert_ne!(r.rd(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
}

#[test]
fn careless_drivers_are_ignored_and_broken_queues_need_reset() {
    let mut r = Rig::new();
    // Queue setup before FEATURES_OK, skipped status steps, odd widths: all ignored.
    r.wr(VIRTIO_MMIO_QUEUE_SEL, 0);
    r.wr(VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(r.rd(VIRTIO_MMIO_QUEUE_READY), 0);
    r.wr(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(r.rd(VIRTIO_MMIO_STATUS), 0);
    let mut two = [0u8; 2];
    r.t.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut two);
    assert_eq!(two, [0, 0]);
    r.t.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
    assert_eq!(r.rd(VIRTIO_MMIO_STATUS), 0);
    // A ready queue outside guest memory: DEVICE_NEEDS_RESET and a config interrupt.
    r.negotiate(MODERN);
    r.setup_queue(0, 0x7000_0000);
    r.wr(VIRTIO_MMIO_STATUS, 0b1111);
    assert_ne!(r.rd(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(
        r.rd(VIRTIO_MMIO_INTERRUPT_STATUS),
        crate::virtio::INT_CONFIG
    );
    assert_eq!(r.fake.lock().unwrap().activated, None);
    // A kick that reaches the transport wakes the queue's eventfd.
    r.wr(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert_eq!(r.fake.lock().unwrap().events[1].read().unwrap(), 1);
    r.wr(VIRTIO_MMIO_QUEUE_NOTIFY, 7); // no such queue: logged, nothing else
}

#[test]
fn queue_registers_read_back_once_the_device_is_live() {
    let mut r = Rig::new();
    r.negotiate(MODERN);
    r.setup_queue(0, 0x1_0000);
    r.wr(VIRTIO_MMIO_QUEUE_NUM, 0x1_0100); // past 16 bits: refused, not taken for 256
    r.wr(VIRTIO_MMIO_STATUS, 0b1111);
    assert_eq!(
        r.fake.lock().unwrap().sizes,
        [128, 256],
        "queue 1 never set up"
    );
    // QUEUE_READY reads back what the driver wrote, NUM_MAX stays.
    for (sel, ready) in [(0, 1), (1, 0)] {
        r.wr(VIRTIO_MMIO_QUEUE_SEL, sel);
        assert_eq!(r.rd(VIRTIO_MMIO_QUEUE_READY), ready);
        assert_eq!(r.rd(VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
    }
    // No shared memory region: its length is -1.
    assert_eq!(r.rd(VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
    assert_eq!(r.rd(VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
}

#[test]
fn a_device_that_gives_up_on_its_rings_says_so_until_reset() {
    let mut r = Rig::new();
    r.negotiate(MODERN);
    r.setup_queue(0, 0x1_0000);
    r.wr(VIRTIO_MMIO_STATUS, 0b1111);
    // What the device does on the event loop when it finds the rings broken.
    r.interrupt.needs_reset();
    assert_eq!(
        r.rd(VIRTIO_MMIO_STATUS),
        0b1111 | VIRTIO_CONFIG_S_NEEDS_RESET
    );
    assert_eq!(
        r.rd(VIRTIO_MMIO_INTERRUPT_STATUS),
        crate::virtio::INT_CONFIG
    );
    // Linux adds a status bit by writing back what it read: accepted, NEEDS_RESET stays.
    r.wr(
        VIRTIO_MMIO_STATUS,
        0b1111 | VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED,
    );
    assert_eq!(
        r.rd(VIRTIO_MMIO_STATUS),
        0b1111 | VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED
    );
    r.wr(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(r.rd(VIRTIO_MMIO_STATUS), 0);
    // A ready queue whose avail ring is at guest address 0 (virtio-queue's "never set up")
    // is refused at DRIVER_OK, as one outside guest memory is.
    r.negotiate(MODERN);
    r.setup_queue(0, 0x1_0000);
    r.wr(VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0);
    r.wr(VIRTIO_MMIO_STATUS, 0b1111);
    assert_ne!(r.rd(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(r.fake.lock().unwrap().activated, None);
}
