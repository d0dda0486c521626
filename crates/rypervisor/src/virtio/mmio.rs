//! The virtio-mmio transport, version 2 ("modern", VIRTIO_F_VERSION_1): a device's 4 KiB
//! register window on the bus. It keeps the status state machine (ACKNOWLEDGE → DRIVER →
//! FEATURES_OK → DRIVER_OK), negotiates features 32 bits at a time, holds the queues while
//! the driver sets them up, hands them to the device at DRIVER_OK, and resets on a write
//! of 0 to STATUS. A driver that breaks the rules has the write ignored and logged; one
//! that makes the device unusable (a ready queue outside guest memory or at address 0, or
//! rings the device later finds broken) gets DEVICE_NEEDS_RESET and a configuration
//! interrupt. Registers are 32 bits wide; other widths are ignored (configuration space
//! takes any width).

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Active, Complaints, Interrupt, VirtioDevice, VirtioError};
use crate::bus::BusDevice;

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The transport version: 2 is virtio 1.x ("modern").
pub const VERSION: u32 = 2;
/// Our vendor ID ("RYPV").
pub const VENDOR_ID: u32 = 0x5650_5952;
/// The register window.
pub const WINDOW: u64 = 0x1000;
/// Offset of QUEUE_NOTIFY, where an ioeventfd per queue catches the driver's kicks.
pub const NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

/// The status bits in the order a driver sets them.
const STEPS: [u32; 4] = [
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_DRIVER_OK,
];

/// One device's transport.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    /// What a vCPU reads or kicks without the device's lock, which the event loop holds
    /// while it serves the device (a vCPU would wait for that): its name, type and queue
    /// kicks.
    name: &'static str,
    device_type: u32,
    kicks: Vec<EventFd>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    offered: u64,
    acked: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    status: u32,
    complaints: Complaints,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("status", &self.status)
            .field("acked", &self.acked)
            .finish_non_exhaustive()
    }
}

fn fresh_queues(sizes: &[u16]) -> Result<Vec<Queue>, VirtioError> {
    sizes
        .iter()
        .map(|&n| Queue::new(n).map_err(|_| VirtioError::QueueSize(n)))
        .collect()
}

impl MmioTransport {
    /// The transport for `device`, in guest memory `mem`, interrupting through `interrupt`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, VirtioError> {
        let (name, device_type, queues, kicks, features) = {
            let d = device.lock().unwrap_or_else(|p| p.into_inner());
            let kicks = (d.queue_events().iter())
                .map(EventFd::try_clone)
                .collect::<Result<Vec<_>, _>>()
                .map_err(VirtioError::EventFd)?;
            let queues = fresh_queues(d.queue_max_sizes())?;
            (d.name(), d.device_type(), queues, kicks, d.features())
        };
        let offered = features | (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX);
        Ok(Self {
            device,
            name,
            device_type,
            kicks,
            mem,
            interrupt,
            queues,
            offered,
            acked: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            status: 0,
            complaints: Complaints::default(),
        })
    }

    fn device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The status register: the driver's bits, and DEVICE_NEEDS_RESET once the device
    /// (here at DRIVER_OK, or later on the event loop) gave up on the driver's rings.
    pub fn status(&self) -> u32 {
        match self.interrupt.reset_needed() {
            true => self.status | VIRTIO_CONFIG_S_NEEDS_RESET,
            false => self.status,
        }
    }

    fn mistake(&mut self, what: std::fmt::Arguments<'_>) {
        self.complaints
            .note(self.name, format_args!("driver error, ignored: {what}"));
    }

    fn register(&self, offset: u32) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_type,
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status(),
            // The configuration never changes once the device exists.
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            // No shared memory regions: a length of -1 says the selected one does not exist.
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            _ => 0,
        }
    }

    /// Whether the driver may set queues up now: features agreed, device not yet live.
    fn configuring(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0
    }

    fn write_queue(&mut self, offset: u32, value: u32) {
        if !self.configuring() {
            self.mistake(format_args!(
                "queue register {offset:#x} written outside FEATURES_OK..DRIVER_OK"
            ));
            return;
        }
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            let sel = self.queue_sel;
            self.mistake(format_args!("queue {sel} does not exist"));
            return;
        };
        // virtio-queue refuses bad sizes and misaligned addresses itself (keeping the old
        // value); DRIVER_OK checks the result.
        match offset {
            VIRTIO_MMIO_QUEUE_NUM => match u16::try_from(value) {
                Ok(size) => q.set_size(size),
                Err(_) => self.mistake(format_args!("queue size {value} is past 65535")),
            },
            VIRTIO_MMIO_QUEUE_READY => q.set_ready(value == 1),
            VIRTIO_MMIO_QUEUE_DESC_LOW => q.set_desc_table_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(value)),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(value)),
            VIRTIO_MMIO_QUEUE_USED_LOW => q.set_used_ring_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            self.mistake(format_args!("features written after FEATURES_OK"));
            return;
        }
        self.acked = match self.driver_features_sel {
            0 => (self.acked & !0xffff_ffff) | u64::from(value),
            1 => (self.acked & 0xffff_ffff) | (u64::from(value) << 32),
            _ => self.acked,
        };
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            return self.reset();
        }
        // DEVICE_NEEDS_RESET is the device's to set: a driver writes back what it read.
        let value = value & !VIRTIO_CONFIG_S_NEEDS_RESET;
        let new = value & !self.status;
        if value & self.status != self.status {
            let old = self.status;
            return self.mistake(format_args!("status {value:#x} clears bits of {old:#x}"));
        }
        if new & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED; // the driver gave up
            return;
        }
        // Each step needs the ones before it.
        for (i, &step) in STEPS.iter().enumerate() {
            let before = STEPS[..i].iter().fold(0, |a, s| a | s);
            if new & step != 0 && value & before != before {
                return self.mistake(format_args!("status {value:#x} skips a step"));
            }
        }
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_ok() {
            // Left clear: the driver reads STATUS back and sees the features were refused.
            self.status = value & !(VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
            return;
        }
        self.status = value;
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.activate();
        }
    }

    /// Whether the driver's features are ours (and modern); if so, rings follow EVENT_IDX.
    fn features_ok(&mut self) -> bool {
        let ok = self.acked & !self.offered == 0 && self.acked & (1 << VIRTIO_F_VERSION_1) != 0;
        if !ok {
            let (acked, offered) = (self.acked, self.offered);
            self.mistake(format_args!(
                "features {acked:#x} are not a modern subset of {offered:#x}"
            ));
            return false;
        }
        let event_idx = self.acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for q in &mut self.queues {
            q.set_event_idx(event_idx);
        }
        true
    }

    fn activate(&mut self) {
        // virtio-queue takes an avail ring at guest address 0 for one never set up, and
        // would hand out nothing from it while its index says there is more.
        let broken = (self.queues.iter())
            .position(|q| q.ready() && (!q.is_valid(&self.mem) || q.avail_ring() == 0));
        if let Some(index) = broken {
            self.mistake(format_args!(
                "queue {index} lies outside guest memory or at address 0"
            ));
            return self.interrupt.needs_reset();
        }
        // The device gets its own copies; these stay for the registers the driver may still
        // read (QUEUE_READY reads back what it wrote).
        let queues: Result<Vec<Queue>, _> = (self.queues.iter())
            .map(|q| Queue::try_from(q.state()))
            .collect();
        let Ok(queues) = queues else {
            self.mistake(format_args!("a queue's setup cannot be handed over"));
            return self.interrupt.needs_reset();
        };
        let active = Active {
            mem: self.mem.clone(),
            queues,
            features: self.acked,
            interrupt: self.interrupt.clone(),
        };
        self.device().activate(active);
    }

    /// Device reset: status 0, features and queues forgotten, the device idle.
    fn reset(&mut self) {
        self.device().reset();
        // (The transport always holds its queues: the device got copies.)
        self.queues.iter_mut().for_each(QueueT::reset);
        self.status = 0;
        self.acked = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.clear();
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            data.fill(0);
            self.device()
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            let len = data.len();
            return self.mistake(format_args!("{len}-byte read of register {offset:#x}"));
        }
        data.copy_from_slice(&self.register(offset as u32).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            let len = data.len();
            return self.mistake(format_args!("{len}-byte write of register {offset:#x}"));
        };
        let value = u32::from_le_bytes(bytes);
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_READY
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue(offset as u32, value),
            // Without an ioeventfd for it (or for another value), the kick comes here: pass
            // it to the device's event, which the event loop serves.
            VIRTIO_MMIO_QUEUE_NOTIFY if (value as usize) < self.kicks.len() => {
                let _ = self.kicks[value as usize].write(1);
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                self.mistake(format_args!("kick of queue {value}, which does not exist"))
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            _ => self.mistake(format_args!("write of {value:#x} to {offset:#x}")),
        }
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
