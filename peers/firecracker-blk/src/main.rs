//! Firecracker's own virtio-blk device (`vmm::devices::virtio::block::virtio::VirtioBlock`,
//! its Sync file engine) at device level, no guest, no KVM: the peer of
//! `crates/rypervisor/benches/block.rs`, run in the same harness (its
//! `benches/block_harness/mod.rs`: the image in the page cache, memory layout, offsets,
//! workloads, floors and interleaved rounds) with the same queue size, only the device's
//! queue processing timed, and driven by the same model driver (rypervisor's `DriverQueue`,
//! on Firecracker's guest-memory type). Run both with `peers/run.sh blk`.
//!
//! Env: `ROUNDS=N` (default 7), `ONLY=text` (keep workloads whose name contains it),
//! `EVENT_IDX=1` (negotiate VIRTIO_RING_F_EVENT_IDX; the model driver then asks for the next
//! used buffer after each drain, as Linux's driver does; off by default, as in ours),
//! `VERIFY_ONLY=1` (run the correctness checks and exit), `BATCHES=N` (with `ONLY`: N device
//! batches alone, for `strace -c`).

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../../../crates/rypervisor/benches/block_harness/mod.rs"]
mod block_harness;

use block_harness::{image, rounds, run, Offsets, CASES, DATA, HEADERS, STATUS};
use rypervisor::virtio::driver::{Buffer, DriverQueue};
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::virtio::block::virtio::device::{FileEngineType, VirtioBlock, VirtioBlockConfig};
use vmm::devices::virtio::block::CacheType;
use vmm::devices::virtio::device::VirtioDevice;
use vmm::devices::virtio::transport::mmio::IrqTrigger;
use vmm::devices::virtio::transport::{VirtioInterrupt, VirtioInterruptType};
use vmm::vstate::memory::GuestMemoryMmap as FcMem;
use vmm_sys_util::eventfd::EventFd;

const RINGS: u64 = 0x1000;
const QSIZE: u16 = 128;

const VIRTIO_F_VERSION_1: u64 = 32;
const VIRTIO_RING_F_EVENT_IDX: u64 = 29;

struct Rig {
    mem: FcMem,
    q: DriverQueue<FcMem>,
    dev: VirtioBlock,
    irq: Arc<IrqTrigger>,
    event_idx: bool,
}

fn rig(path: &str, event_idx: bool) -> Rig {
    let mut dev = VirtioBlock::new(VirtioBlockConfig {
        drive_id: "bench".into(),
        partuuid: None,
        is_root_device: false,
        cache_type: CacheType::Unsafe,
        is_read_only: false,
        path_on_host: path.into(),
        rate_limiter: None,
        file_engine_type: FileEngineType::Sync,
    })
    .unwrap();
    // Same kind of memory as ours: one 8 MiB anonymous private mapping (MAP_NORESERVE),
    // no dirty tracking, no huge pages.
    let mem = vmm::test_utils::single_region_mem(8 << 20);
    let q = DriverQueue::new(&mem, QSIZE, RINGS);
    // What the MMIO/PCI transport does on the driver's queue setup: size, addresses, ready.
    {
        let fq = &mut dev.queues_mut()[0];
        fq.size = QSIZE;
        let (desc, avail, used) = q.rings();
        fq.desc_table_address = GuestAddress(desc);
        fq.avail_ring_address = GuestAddress(avail);
        fq.used_ring_address = GuestAddress(used);
        fq.ready = true;
    }
    let mut features = 1u64 << VIRTIO_F_VERSION_1;
    if event_idx {
        features |= 1u64 << VIRTIO_RING_F_EVENT_IDX;
    }
    assert_eq!(dev.avail_features() & features, features);
    dev.set_acked_features(features);
    // The MMIO transport's interrupt: sets the ISR bit and writes its eventfd (the irqfd a
    // real VM registers with KVM).
    let irq = Arc::new(IrqTrigger::new());
    dev.activate(mem.clone(), irq.clone() as Arc<dyn VirtioInterrupt>)
        .unwrap();
    Rig {
        mem,
        q,
        dev,
        irq,
        event_idx,
    }
}

impl Rig {
    fn irq_evt(&self) -> &EventFd {
        self.irq.notifier(VirtioInterruptType::Queue(0)).unwrap()
    }

    fn offer_batch(&mut self, write: bool, depth: usize, len: u32, offsets: &mut Offsets) {
        for i in 0..depth as u64 {
            let sector = offsets.next(u64::from(len)) / 512;
            let mut header = [0u8; 16];
            header[..4].copy_from_slice(&u32::from(write).to_le_bytes());
            header[8..].copy_from_slice(&sector.to_le_bytes());
            let at = HEADERS + 16 * i;
            self.mem.write_slice(&header, GuestAddress(at)).unwrap();
            let chain = [
                Buffer {
                    addr: at,
                    len: 16,
                    writable: false,
                },
                Buffer {
                    addr: DATA + i * u64::from(len),
                    len,
                    writable: !write,
                },
                Buffer {
                    addr: STATUS + i,
                    len: 1,
                    writable: true,
                },
            ];
            self.q.offer(&chain).unwrap();
        }
    }

    /// As ours: `depth` requests, one call of the device's queue processing (timed), all
    /// used entries taken, count and first status asserted.
    fn batch(&mut self, write: bool, depth: usize, len: u32, offsets: &mut Offsets) -> Duration {
        self.offer_batch(write, depth, len, offsets);
        let served = Instant::now();
        self.dev.process_queue(0).unwrap();
        let served = served.elapsed();
        let mut done = 0;
        while self.q.take_used().is_some() {
            done += 1;
        }
        if self.event_idx {
            self.q.want_next_used();
        }
        assert_eq!(done, depth);
        assert_eq!(self.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
        served
    }

    /// Stronger checks, untimed, run before the measurements: every status byte (pre-set to
    /// 0xff) is 0, every used length is right (Firecracker reports data + status byte for
    /// reads, the status byte for writes), read data is the image's (0x5a), written data
    /// reaches the file, and one interrupt is raised per processed batch.
    fn verify(&mut self, file: &std::fs::File) {
        let _ = self.irq_evt().read(); // drain
        let mut offs = Offsets::new(false);
        for &(write, depth, len) in &[
            (false, 1usize, 4096u32),
            (false, 32, 4096),
            (true, 1, 4096),
            (true, 32, 4096),
            (false, 1, 1 << 20),
        ] {
            for _ in 0..3 {
                // Poison status and data.
                for i in 0..depth as u64 {
                    self.mem
                        .write_obj(0xffu8, GuestAddress(STATUS + i))
                        .unwrap();
                    let fill = if write { 0xa5u8 } else { 0x00 };
                    self.mem
                        .write_slice(
                            &vec![fill; len as usize],
                            GuestAddress(DATA + i * u64::from(len)),
                        )
                        .unwrap();
                }
                let mut o2 = offs.clone();
                self.offer_batch(write, depth, len, &mut offs);
                self.dev.process_queue(0).unwrap();
                let mut used = Vec::new();
                while let Some(u) = self.q.take_used() {
                    used.push(u);
                }
                if self.event_idx {
                    self.q.want_next_used();
                }
                assert_eq!(used.len(), depth, "used entries");
                for (_, l) in &used {
                    assert_eq!(*l, if write { 1 } else { len + 1 }, "used len");
                }
                let irqs = self.irq_evt().read().unwrap_or(0);
                assert_eq!(
                    irqs, 1,
                    "interrupts per batch (write={write} depth={depth})"
                );
                for i in 0..depth as u64 {
                    let st: u8 = self.mem.read_obj(GuestAddress(STATUS + i)).unwrap();
                    assert_eq!(st, 0, "status");
                    let at = o2.next(u64::from(len));
                    let mut got = vec![0u8; len as usize];
                    self.mem
                        .read_slice(&mut got, GuestAddress(DATA + i * u64::from(len)))
                        .unwrap();
                    if write {
                        let mut f = vec![0u8; len as usize];
                        file.read_exact_at(&mut f, at).unwrap();
                        assert!(f.iter().all(|&b| b == 0xa5), "write landed in the file");
                        file.write_all_at(&vec![0x5au8; len as usize], at).unwrap();
                    } else {
                        assert!(got.iter().all(|&b| b == 0x5a), "read data landed");
                    }
                }
            }
        }
        // The rings hold state (avail/used indices); the timed runs go on from here, as
        // ours do over its cases.
        println!("verify: ok (status 0, used lengths, read data 0x5a, writes reach the file, 1 interrupt per batch)");
    }
}

fn main() {
    let event_idx = std::env::var("EVENT_IDX").is_ok_and(|v| v == "1");
    // Firecracker's device opens its image by path.
    let named = image();
    let file = named.as_file().try_clone().unwrap();
    let mut r = rig(named.path().to_str().unwrap(), event_idx);
    r.verify(&file);
    if std::env::var("VERIFY_ONLY").is_ok_and(|v| v == "1") {
        return;
    }
    // `BATCHES=N` (with ONLY=case): just N device batches of the first matching case, no
    // floors, no table: for counting the device's syscalls (strace -c) per request.
    if let Some(n) = std::env::var("BATCHES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let only = std::env::var("ONLY").unwrap_or_default();
        let (name, write, depth, len) = (CASES.into_iter())
            .find(|c| c.0.contains(&only))
            .expect("ONLY names a workload");
        let mut o = Offsets::new(false);
        for _ in 0..n {
            r.batch(write, depth, len, &mut o);
        }
        println!("{name}: {n} batches, {} requests", n * depth);
        return;
    }
    println!("EVENT_IDX: {event_idx}, rounds: {}", rounds());
    run(
        "Firecracker virtio-blk device",
        &file,
        |write, depth, len, offsets| r.batch(write, depth, len, offsets),
    );
}
