//! virtio-rng: one queue of buffers the driver wants filled with entropy, filled from the
//! host's `getrandom`. Each request is capped, so a driver asking for gigabytes gets a
//! bounded answer (and asks again, as it must).

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::buffers::Buffers;
use super::{
    queue_eventfds, serve_queue, stop_broken, Active, Complaints, VirtioDevice, VirtioError,
};
use crate::sandbox::host::fill_random;

/// Bytes given per request at most (as Firecracker does).
pub const MAX_REQUEST: usize = 64 << 10;
const QUEUE_SIZE: u16 = 256;

/// The entropy device.
pub struct Rng {
    events: Vec<EventFd>,
    active: Option<Active>,
    complaints: Complaints,
    /// Bytes handed to the guest.
    pub served: u64,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng").field("served", &self.served).finish()
    }
}

impl Rng {
    /// A device, idle until its driver sets it up.
    pub fn new() -> Result<Self, VirtioError> {
        Ok(Self {
            events: queue_eventfds(1)?,
            active: None,
            complaints: Complaints::default(),
            served: 0,
        })
    }
}

/// Fills the chain's writable buffers with at most [`MAX_REQUEST`] random bytes.
fn fill(
    chain: virtio_queue::DescriptorChain<&vm_memory::GuestMemoryMmap>,
    mem: &vm_memory::GuestMemoryMmap,
    entropy: &mut [u8],
) -> Result<usize, String> {
    // (Our walk, not virtio-queue's `Writer`: it bounds the chain's length.)
    let mut w = Buffers::of(chain, mem, true).map_err(|e| e.to_string())?;
    let n = w.len().min(MAX_REQUEST).min(entropy.len());
    fill_random(&mut entropy[..n]);
    w.write_bytes(&entropy[..n]).map_err(|e| e.to_string())?;
    Ok(n)
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn name(&self) -> &'static str {
        "rng"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}

    fn activate(&mut self, active: Active) {
        tracing::debug!("virtio-rng: activated ({:?})", active);
        self.active = Some(active);
        // Some drivers queue a request before DRIVER_OK (Linux 5.17/5.18 in probe): look once.
        self.kick(0);
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.events
    }

    fn process_queue(&mut self, _index: usize) {
        let Some(active) = self.active.as_mut() else {
            return self.complaints.note(
                "rng",
                format_args!("queue kicked before DRIVER_OK: ignored"),
            );
        };
        let Some(queue) = active.queues.first_mut().filter(|q| q.ready()) else {
            return;
        };
        let mem = &active.mem;
        let mut entropy = vec![0u8; MAX_REQUEST];
        let (complaints, served) = (&mut self.complaints, &mut self.served);
        let outcome = serve_queue(queue, mem, &active.interrupt, &self.events[0], |chain| {
            let head = chain.head_index();
            match fill(chain, mem, &mut entropy) {
                Ok(n) => {
                    *served += n as u64;
                    n as u32
                }
                Err(e) => {
                    let what = format_args!("buffer {head} unusable ({e}): returned empty");
                    complaints.note("rng", what);
                    0
                }
            }
        });
        tracing::debug!("virtio-rng: {} bytes served so far", self.served);
        if outcome.is_err() {
            stop_broken(&mut self.active, &mut self.complaints, "rng");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::virtio::Interrupt;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    fn writable(addr: u64, len: u32) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0))
    }

    #[test]
    fn buffers_fill_with_varied_bytes_and_bad_ones_come_back_empty() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // Three one-descriptor chains: a small buffer, one outside memory, a huge one (capped).
        let chains = [
            writable(0x2_0000, 64),
            writable(0xdead_0000, 64),
            writable(0x10_0000, 1 << 20),
        ];
        vq.add_desc_chains(&chains, 0).unwrap();
        let queue: Queue = vq.create_queue().unwrap();
        let mut rng = Rng::new().unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        rng.process_queue(0); // before DRIVER_OK: ignored
        assert_eq!(rng.complaints.count(), 1);
        rng.activate(Active {
            mem: m.clone(),
            queues: vec![queue],
            features: 0,
            interrupt: interrupt.clone(),
        });
        rng.process_queue(0);
        let used = |i: u16| vq.used().ring().ref_at(i.into()).unwrap().load().len();
        assert_eq!(vq.used().idx().load(), 3);
        assert_eq!((used(0), used(1), used(2)), (64, 0, MAX_REQUEST as u32));
        let mut got = [0u8; 64];
        m.read_slice(&mut got, GuestAddress(0x2_0000)).unwrap();
        assert!(got.iter().any(|&b| b != got[0]), "varied bytes");
        assert_eq!(irq.read().unwrap(), 1, "the driver was interrupted");
        assert_eq!(interrupt.status() & crate::virtio::INT_VRING, 1);
    }

    #[test]
    fn with_event_idx_the_driver_is_asked_for_its_next_kick() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&[writable(0x2_0000, 16), writable(0x2_1000, 16)], 0)
            .unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        // The mock's used ring overlaps its avail ring: move it (see virtio-queue's mock).
        queue.set_used_ring_address(Some(0x8000), Some(0));
        queue.set_event_idx(true);
        let mut rng = Rng::new().unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        rng.activate(Active {
            mem: m.clone(),
            queues: vec![queue],
            features: 0,
            interrupt,
        });
        rng.process_queue(0);
        assert_eq!(rng.served, 32);
        // avail_event (after the used ring's 16 entries) names the next buffer: 2. Without
        // it the driver would never kick again.
        let avail_event: u16 = m.read_obj(GuestAddress(0x8000 + 4 + 8 * 16)).unwrap();
        assert_eq!(avail_event, 2);
    }
}
