//! A guest's vsock driver, modelled on guest memory with [`DriverQueue`]s: it keeps the RX
//! queue full of buffers, sends packets on TX and collects what the device gave it. Unit
//! tests, the device benchmark and the fuzz target drive a real [`Vsock`] (and real host
//! Unix sockets) with it; there is no guest kernel and no KVM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::device::{RX, TX};
use super::packet::{Header, HEADER_SIZE, MAX_PAYLOAD, TYPE_STREAM};
use super::{Vsock, VsockError, HOST_CID};
use crate::virtio::driver::{Buffer, DriverQueue};
use crate::virtio::{Active, Interrupt, VirtioDevice};

const MEM: u64 = 24 << 20;
const RING_BASE: [u64; 3] = [0x1000, 0x5000, 0x9000];
const QUEUE: u16 = 256;
const RX_BUFFERS: usize = 64;
const RX_BASE: u64 = 0x10_0000;
const TX_BUFFERS: u64 = 32;
const TX_BASE: u64 = 0x60_0000;
const TX_STRIDE: u64 = 0x1_1000; // a header and the largest payload

/// The model driver and its device.
pub struct GuestDriver {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device under test.
    pub device: Vsock,
    /// The guest's CID.
    pub cid: u64,
    rx: DriverQueue,
    tx: DriverQueue,
    rx_payload: u32,
    rx_free: Vec<u64>,
    tx_free: Vec<u64>,
    /// The device's interrupt line.
    pub irq: EventFd,
    interrupt: Arc<Interrupt>,
    /// The rings follow VIRTIO_RING_F_EVENT_IDX (as Linux negotiates it when offered).
    event_idx: bool,
    /// RX buffers the device gave back with nothing in them (or less than a header).
    pub rx_returned_empty: usize,
    /// Time spent inside the device's queue and socket handlers (what its event-loop thread
    /// would spend), apart from the model driver's own work.
    pub device_time: Duration,
}

impl std::fmt::Debug for GuestDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestDriver")
            .field("cid", &self.cid)
            .finish()
    }
}

impl GuestDriver {
    /// A device listening on `path`, activated with EVENT_IDX as Linux's driver negotiates
    /// it, its RX queue given buffers of `rx_payload` payload bytes (Linux uses 4 KiB) after
    /// the header.
    pub fn new(cid: u64, path: PathBuf, rx_payload: u32) -> Result<Self, VsockError> {
        Self::with_event_idx(cid, path, rx_payload, true)
    }

    /// [`Self::new`], the rings following EVENT_IDX or not. Either way the driver kicks only
    /// when the device asked for a kick ([`DriverQueue::needs_kick`]) and, with EVENT_IDX,
    /// asks for the next interrupt once it has drained a used ring, as Linux's does.
    pub fn with_event_idx(
        cid: u64,
        path: PathBuf,
        rx_payload: u32,
        event_idx: bool,
    ) -> Result<Self, VsockError> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)])
            .expect("model memory");
        let mut device = Vsock::new(cid, path)?;
        let queues: Vec<DriverQueue> = RING_BASE
            .iter()
            .map(|&b| DriverQueue::new(&mem, QUEUE, b))
            .collect();
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(crate::virtio::VirtioError::EventFd)?;
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().expect("an eventfd clone")));
        device.activate(Active {
            mem: mem.clone(),
            queues: queues.iter().map(|q| q.device_queue(event_idx)).collect(),
            features: if event_idx {
                1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX
            } else {
                0
            },
            interrupt: interrupt.clone(),
        });
        let [rx, tx, _events]: [DriverQueue; 3] = queues.try_into().expect("three queues");
        let rx_payload = rx_payload.min(MAX_PAYLOAD);
        let stride = (u64::from(rx_payload) + HEADER_SIZE as u64 + 0xfff) & !0xfff;
        let rx_free = (0..RX_BUFFERS as u64)
            .map(|i| RX_BASE + i * stride)
            .collect();
        let tx_free = (0..TX_BUFFERS).map(|i| TX_BASE + i * TX_STRIDE).collect();
        assert!(
            RX_BASE + RX_BUFFERS as u64 * stride <= TX_BASE,
            "RX buffers fit"
        );
        let mut driver = Self {
            mem,
            device,
            cid,
            rx,
            tx,
            rx_payload,
            rx_free,
            tx_free,
            irq,
            interrupt,
            event_idx,
            rx_returned_empty: 0,
            device_time: Duration::ZERO,
        };
        driver.refill_rx();
        driver.want_interrupts();
        driver.serve(TX); // the activation's kick
        Ok(driver)
    }

    /// Whether the device gave up on the rings and asked for a reset (DEVICE_NEEDS_RESET).
    pub fn reset_needed(&self) -> bool {
        self.interrupt.reset_needed()
    }

    /// Makes the first RX buffer offered name a descriptor past the table (a driver's bug),
    /// before the device has taken any.
    #[cfg(test)]
    pub(crate) fn break_first_rx_buffer(&mut self) {
        let (_, avail, _) = self.rx.rings();
        let _ = self.mem.write_obj(u16::MAX, GuestAddress(avail + 4));
    }

    /// Kicks queue `q` if the device asked for a kick for what was offered since the last.
    fn queue(&mut self, q: usize) {
        let wanted = match q {
            RX => self.rx.needs_kick(self.event_idx),
            _ => self.tx.needs_kick(self.event_idx),
        };
        if wanted {
            self.serve(q);
        }
    }

    /// With EVENT_IDX, asks for an interrupt at the next used buffer of each queue (what
    /// Linux's `virtqueue_enable_cb` does once a used ring is drained).
    fn want_interrupts(&mut self) {
        if self.event_idx {
            self.rx.want_next_used();
            self.tx.want_next_used();
        }
    }

    /// The device serves queue `q` (a kick).
    fn serve(&mut self, q: usize) {
        let start = Instant::now();
        self.device.process_queue(q);
        self.device_time += start.elapsed();
    }

    /// What the device's event loop does when host sockets are ready: its wait names them
    /// (not the device's work: the loop waits for every device, as the floor's reader
    /// blocks), the device serves each, then its RX queue.
    fn sockets(&mut self) {
        let ready = self.device.host_ready();
        let start = Instant::now();
        for (id, events) in ready {
            self.device.process_event(id, events);
        }
        self.device.events_done();
        self.device_time += start.elapsed();
    }

    /// A header from the guest's `port` to the host's `host_port`.
    pub fn header(&self, op: u16, port: u32, host_port: u32, len: u32) -> Header {
        Header {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port: port,
            dst_port: host_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 256 << 10,
            fwd_cnt: 0,
        }
    }

    fn refill_rx(&mut self) {
        while let Some(addr) = self.rx_free.pop() {
            let len = HEADER_SIZE as u32 + self.rx_payload;
            let buf = Buffer {
                addr,
                len,
                writable: true,
            };
            if self.rx.offer(&[buf]).is_none() {
                self.rx_free.push(addr);
                break;
            }
        }
    }

    /// Sends one packet (header and payload in two descriptors, as Linux does) and lets the
    /// device serve it.
    pub fn send(&mut self, header: Header, payload: &[u8]) {
        self.send_raw(header.as_slice(), payload);
    }

    /// Sends several packets with one kick, as a driver with EVENT_IDX batches them.
    pub fn send_batch(&mut self, packets: &[(Header, &[u8])]) {
        for (header, payload) in packets {
            self.offer_tx(header.as_slice(), payload);
        }
        self.queue(TX);
        self.reclaim_tx();
    }

    /// Sends `count` packets of `len` payload bytes with one kick, the payload being whatever
    /// the TX buffers hold: the guest's own copy of its application's bytes is left out (it
    /// is the guest's work, on its own vCPU), so a benchmark sees the VMM's share alone.
    pub fn send_in_place(&mut self, header: Header, len: usize, count: usize) {
        self.reclaim_tx();
        for _ in 0..count {
            let Some(addr) = self.tx_free.pop() else {
                break;
            };
            let _ = self.mem.write_slice(header.as_slice(), GuestAddress(addr));
            let chain = [
                Buffer {
                    addr,
                    len: HEADER_SIZE as u32,
                    writable: false,
                },
                Buffer {
                    addr: addr + 0x100,
                    len: len.min(TX_STRIDE as usize - 0x100) as u32,
                    writable: false,
                },
            ];
            if self.tx.offer(&chain).is_none() {
                self.tx_free.push(addr);
                break;
            }
        }
        self.queue(TX);
        self.reclaim_tx();
    }

    /// Lets the device serve its host sockets and takes the packets it gave the guest, their
    /// headers only (the guest's copy of the payload out of its buffers left out, as above).
    pub fn receive_headers(&mut self) -> Vec<Header> {
        self.sockets();
        self.acknowledge();
        let mut got = Vec::new();
        while let Some((head, len)) = self.rx.take_used() {
            let addr = self.head_address(RX, head);
            let mut header = Header::default();
            if len as usize >= HEADER_SIZE
                && self
                    .mem
                    .read_slice(header.as_mut_slice(), GuestAddress(addr))
                    .is_ok()
            {
                got.push(header);
            }
            self.rx_done(addr, len);
        }
        self.want_interrupts();
        self.refill_rx();
        if !got.is_empty() {
            self.queue(RX);
        }
        got
    }

    /// Sends any bytes as a packet's header and payload descriptors (for fuzzing).
    pub fn send_raw(&mut self, header: &[u8], payload: &[u8]) {
        if self.offer_tx(header, payload) {
            self.queue(TX);
            self.reclaim_tx();
        }
    }

    /// Offers one TX packet without kicking; false when no TX buffer is free.
    fn offer_tx(&mut self, header: &[u8], payload: &[u8]) -> bool {
        self.reclaim_tx();
        let Some(addr) = self.tx_free.pop() else {
            return false;
        };
        let payload = &payload[..payload.len().min(TX_STRIDE as usize - 0x100)];
        let _ = self.mem.write_slice(header, GuestAddress(addr));
        let at = addr + 0x100;
        let _ = self.mem.write_slice(payload, GuestAddress(at));
        let mut chain = vec![Buffer {
            addr,
            len: header.len() as u32,
            writable: false,
        }];
        if !payload.is_empty() {
            chain.push(Buffer {
                addr: at,
                len: payload.len() as u32,
                writable: false,
            });
        }
        if self.tx.offer(&chain).is_none() {
            self.tx_free.push(addr);
            return false;
        }
        true
    }

    /// Offers any chain on TX (descriptors anywhere, any direction) and lets the device
    /// serve it.
    pub fn send_chain(&mut self, chain: &[Buffer]) {
        if self.tx.offer(chain).is_some() {
            self.queue(TX);
        }
        self.reclaim_tx();
    }

    /// The driver's interrupt handler: reads and acknowledges the status (as Linux's
    /// virtio-mmio driver does before it looks at the rings).
    fn acknowledge(&self) {
        // (The irqfd's counter is left alone: in a real VM KVM consumes it, not the guest.)
        let status = self.interrupt.status();
        if status != 0 {
            self.interrupt.ack(status);
        }
    }

    fn reclaim_tx(&mut self) {
        self.acknowledge();
        while let Some((head, _)) = self.tx.take_used() {
            let addr = self.head_address(TX, head);
            let ours = (TX_BASE..TX_BASE + TX_BUFFERS * TX_STRIDE).contains(&addr)
                && (addr - TX_BASE).is_multiple_of(TX_STRIDE);
            if ours && !self.tx_free.contains(&addr) {
                self.tx_free.push(addr);
            }
        }
        self.want_interrupts();
    }

    /// The address of a chain's first descriptor (still in the table after its use).
    fn head_address(&self, queue: usize, head: u16) -> u64 {
        let at = GuestAddress(RING_BASE[queue] + 16 * u64::from(head));
        self.mem.read_obj(at).unwrap_or(u64::MAX)
    }

    /// Lets the device serve its host sockets, then takes every packet it gave the guest
    /// (and gives the buffers back).
    pub fn receive(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.sockets();
        self.collect()
    }

    /// Takes the packets already in used RX buffers (without serving host sockets).
    pub fn collect(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.acknowledge();
        let mut got = Vec::new();
        while let Some((head, len)) = self.rx.take_used() {
            let addr = self.head_address(RX, head);
            let mut header = Header::default();
            let ok = self
                .mem
                .read_slice(header.as_mut_slice(), GuestAddress(addr))
                .is_ok();
            let n = (len as usize).saturating_sub(HEADER_SIZE);
            let mut payload = vec![0u8; n];
            let _ = self
                .mem
                .read_slice(&mut payload, GuestAddress(addr + HEADER_SIZE as u64));
            if ok && len as usize >= HEADER_SIZE {
                got.push((header, payload));
            }
            self.rx_done(addr, len);
        }
        self.want_interrupts();
        self.refill_rx();
        if !got.is_empty() {
            self.queue(RX); // the driver's kick after refilling
        }
        got
    }

    /// An RX buffer came back used with `len` bytes: one of the model's is free again (a
    /// chain offered with [`Self::offer_rx_chain`] is not the model's to reuse).
    fn rx_done(&mut self, addr: u64, len: u32) {
        if (len as usize) < HEADER_SIZE {
            self.rx_returned_empty += 1;
        }
        let ours = (RX_BASE..TX_BASE).contains(&addr);
        if ours && !self.rx_free.contains(&addr) {
            self.rx_free.push(addr);
        }
    }

    /// Offers any chain on RX, behind the buffers the model keeps there (for tests of what
    /// a driver may post).
    pub fn offer_rx_chain(&mut self, chain: &[Buffer]) {
        self.rx.offer(chain);
        self.queue(RX);
    }

    /// How many RX buffers the device holds.
    pub fn rx_offered(&self) -> usize {
        RX_BUFFERS - self.rx_free.len()
    }
}
