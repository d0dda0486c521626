//! The model guest driver of rypervisor's `virtio/vsock/model.rs` (`GuestDriver`: the RX
//! queue kept full of 64 buffers, TX chains of a header and a payload, the same memory
//! layout), on Firecracker's vsock device and memory type, with the calls Firecracker's event
//! loop makes for a queue kick and for host-socket readiness (see `main.rs`).

use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rypervisor::virtio::driver::{Buffer, DriverQueue};
use rypervisor::virtio::vsock::packet::{Header, HEADER_SIZE, MAX_PAYLOAD, TYPE_STREAM};
use vm_memory::{ByteValued, Bytes, GuestAddress};
use vmm::devices::virtio::device::VirtioDevice;
use vmm::devices::virtio::transport::mmio::IrqTrigger;
use vmm::devices::virtio::transport::{VirtioInterrupt, VirtioInterruptType};
use vmm::devices::virtio::vsock::{Vsock, VsockChannel, VsockUnixBackend};
use vmm::vstate::memory::GuestMemoryMmap as FcMem;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::HOST_CID;

const VIRTIO_F_VERSION_1: u64 = 32;

// Firecracker's queue indices (device.rs: RXQ_INDEX 0, TXQ_INDEX 1, EVQ_INDEX 2).
const RX: usize = 0;
const TX: usize = 1;

// The layout of rypervisor's model driver (virtio/vsock/model.rs).
const MEM: usize = 24 << 20;
const RING_BASE: [u64; 3] = [0x1000, 0x5000, 0x9000];
const QUEUE: u16 = 256;
const RX_BUFFERS: usize = 64;
const RX_BASE: u64 = 0x10_0000;
const TX_BUFFERS: u64 = 32;
const TX_BASE: u64 = 0x60_0000;
const TX_STRIDE: u64 = 0x1_1000;

/// rypervisor's `GuestDriver`, on Firecracker's device and memory type.
pub struct FcGuest {
    pub(crate) mem: FcMem,
    pub(crate) dev: Vsock<VsockUnixBackend>,
    pub(crate) cid: u64,
    pub(crate) rx: DriverQueue<FcMem>,
    pub(crate) tx: DriverQueue<FcMem>,
    pub(crate) desc: [u64; 3],
    pub(crate) rx_payload: u32,
    pub(crate) rx_free: Vec<u64>,
    pub(crate) tx_free: Vec<u64>,
    pub(crate) irq: Arc<IrqTrigger>,
    pub(crate) status: Arc<AtomicU32>,
    /// Time inside the device's handlers (what Firecracker's event-loop thread spends).
    pub(crate) device_time: Duration,
    /// Backend wakes that found the muxer's epoll fd readable.
    pub(crate) wakes: u64,
    /// The device's buf_alloc in its OP_RESPONSE.
    pub(crate) last_alloc: u32,
    pub(crate) kick_read_uncounted: bool,
}

impl FcGuest {
    pub(crate) fn new(cid: u64, path: &Path, rx_payload: u32) -> Self {
        let mem = vmm::test_utils::single_region_mem(MEM);
        let backend = VsockUnixBackend::new(cid, path.to_str().unwrap().to_string()).unwrap();
        let mut dev = Vsock::new(cid, backend).unwrap();
        let queues: Vec<DriverQueue<FcMem>> = RING_BASE
            .iter()
            .map(|&b| DriverQueue::new(&mem, QUEUE, b))
            .collect();
        let mut desc = [0u64; 3];
        // What the MMIO transport does on the driver's queue setup: size, addresses, ready.
        for (i, q) in queues.iter().enumerate() {
            let fq = &mut dev.queues_mut()[i];
            fq.size = QUEUE;
            let (d, a, u) = q.rings();
            desc[i] = d;
            fq.desc_table_address = GuestAddress(d);
            fq.avail_ring_address = GuestAddress(a);
            fq.used_ring_address = GuestAddress(u);
            fq.ready = true;
        }
        // VERSION_1 only: no EVENT_IDX, as ours (activated with event_idx false).
        let features = 1u64 << VIRTIO_F_VERSION_1;
        assert_eq!(dev.avail_features() & features, features);
        dev.set_acked_features(features);
        let irq = Arc::new(IrqTrigger::new());
        dev.activate(mem.clone(), irq.clone() as Arc<dyn VirtioInterrupt>)
            .unwrap();
        let status = irq.status();
        let [rx, tx, _events]: [DriverQueue<FcMem>; 3] = queues.try_into().ok().unwrap();
        let rx_payload = rx_payload.min(MAX_PAYLOAD);
        let stride = (u64::from(rx_payload) + HEADER_SIZE as u64 + 0xfff) & !0xfff;
        let rx_free = (0..RX_BUFFERS as u64)
            .map(|i| RX_BASE + i * stride)
            .collect();
        let tx_free = (0..TX_BUFFERS).map(|i| TX_BASE + i * TX_STRIDE).collect();
        assert!(RX_BASE + RX_BUFFERS as u64 * stride <= TX_BASE);
        let mut g = Self {
            mem,
            dev,
            cid,
            rx,
            tx,
            desc,
            rx_payload,
            rx_free,
            tx_free,
            irq,
            status,
            device_time: Duration::ZERO,
            wakes: 0,
            last_alloc: 0,
            kick_read_uncounted: std::env::var("KICK_READ_UNCOUNTED").is_ok_and(|v| v == "1"),
        };
        g.refill_rx();
        g.queue(RX); // the driver's kick after filling RX
        g.queue(TX); // as ours: the activation's kick
        g
    }

    pub(crate) fn irq_evt(&self) -> &EventFd {
        self.irq.notifier(VirtioInterruptType::Queue(0)).unwrap()
    }

    /// A guest kick of queue `q`. KVM's ioeventfd signals the queue eventfd (the guest's side,
    /// untimed); Firecracker's event manager wakes on it and calls `Vsock::process`, which for
    /// PROCESS_RXQ / PROCESS_TXQ runs `handle_rxq_event` / `handle_txq_event` (each reads the
    /// eventfd first) and then `signal_used_queues`: exactly what is timed here.
    pub(crate) fn queue(&mut self, q: usize) {
        if self.kick_read_uncounted {
            // Variant (KICK_READ_UNCOUNTED=1): the eventfd read left out of the timed part, as
            // ours leaves it to its event loop outside `process_queue`. The rest is the body
            // of handle_rxq_event / handle_txq_event (device.rs/event_handler.rs) verbatim
            // through public calls: process_tx, then has_pending_rx → process_rx.
            self.dev.queue_events()[q].write(1).unwrap();
            let _ = self.dev.queue_events()[q].read();
            let start = Instant::now();
            let mut used = Vec::new();
            if q == TX && self.dev.process_tx().unwrap() {
                used.push(TX as u16);
            }
            if self.dev.backend().has_pending_rx() && self.dev.process_rx().unwrap() {
                used.push(RX as u16);
            }
            self.dev.signal_used_queues(&used).unwrap();
            self.device_time += start.elapsed();
            return;
        }
        self.dev.queue_events()[q].write(1).unwrap();
        let start = Instant::now();
        let used = match q {
            RX => self.dev.handle_rxq_event(EventSet::IN),
            TX => self.dev.handle_txq_event(EventSet::IN),
            _ => self.dev.handle_evq_event(EventSet::IN),
        };
        self.dev.signal_used_queues(&used).unwrap();
        self.device_time += start.elapsed();
    }

    /// Host sockets: the event manager's epoll holds the muxer's epoll fd; when it is readable
    /// (checked here with poll(0), untimed, as ours leaves its loop's wait untimed) the loop
    /// calls `process` with PROCESS_NOTIFY_BACKEND: `notify_backend(EventSet::IN)` then
    /// `signal_used_queues` (timed).
    pub(crate) fn sockets(&mut self) {
        let mut p = libc::pollfd {
            fd: self.dev.backend().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, 0) } <= 0 {
            return;
        }
        self.wakes += 1;
        let start = Instant::now();
        let used = self.dev.notify_backend(EventSet::IN).unwrap();
        self.dev.signal_used_queues(&used).unwrap();
        self.device_time += start.elapsed();
    }

    pub(crate) fn header(&self, op: u16, port: u32, host_port: u32, len: u32) -> Header {
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

    pub(crate) fn refill_rx(&mut self) {
        while let Some(addr) = self.rx_free.pop() {
            let len = HEADER_SIZE as u32 + self.rx_payload;
            if self
                .rx
                .offer(&[Buffer {
                    addr,
                    len,
                    writable: true,
                }])
                .is_none()
            {
                self.rx_free.push(addr);
                break;
            }
        }
    }

    pub(crate) fn send(&mut self, header: Header, payload: &[u8]) {
        if self.offer_tx(header.as_slice(), payload) {
            self.queue(TX);
            self.reclaim_tx();
        }
    }

    pub(crate) fn send_batch(&mut self, packets: &[(Header, &[u8])]) {
        for (header, payload) in packets {
            assert!(self.offer_tx(header.as_slice(), payload), "TX buffer free");
        }
        self.queue(TX);
        self.reclaim_tx();
    }

    pub(crate) fn send_in_place(&mut self, header: Header, len: usize, count: usize) {
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

    pub(crate) fn offer_tx(&mut self, header: &[u8], payload: &[u8]) -> bool {
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

    /// The driver's interrupt handler: reads and acknowledges the ISR status (the irqfd's
    /// counter is left alone: KVM consumes it in a real VM).
    pub(crate) fn acknowledge(&self) {
        let s = self.status.load(Ordering::SeqCst);
        if s != 0 {
            self.status.fetch_and(!s, Ordering::SeqCst);
        }
    }

    pub(crate) fn reclaim_tx(&mut self) {
        self.acknowledge();
        while let Some((head, _)) = self.tx.take_used() {
            let addr = self.head_address(TX, head);
            let ours = (TX_BASE..TX_BASE + TX_BUFFERS * TX_STRIDE).contains(&addr)
                && (addr - TX_BASE) % TX_STRIDE == 0;
            if ours && !self.tx_free.contains(&addr) {
                self.tx_free.push(addr);
            }
        }
    }

    pub(crate) fn head_address(&self, queue: usize, head: u16) -> u64 {
        let at = GuestAddress(self.desc[queue] + 16 * u64::from(head));
        self.mem.read_obj(at).unwrap_or(u64::MAX)
    }

    pub(crate) fn receive_headers(&mut self) -> Vec<Header> {
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
            self.rx_free.push(addr);
        }
        self.refill_rx();
        if !got.is_empty() {
            self.queue(RX);
        }
        got
    }

    pub(crate) fn receive(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.sockets();
        self.collect()
    }

    pub(crate) fn collect(&mut self) -> Vec<(Header, Vec<u8>)> {
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
            self.rx_free.push(addr);
        }
        self.refill_rx();
        if !got.is_empty() {
            self.queue(RX);
        }
        got
    }
}
