//! The virtio-blk device: one request queue, the features a drive's options ask for, and
//! the configuration space (capacity, segment limits, discard and write-zeroes limits).
//! Requests are served on the device event loop, every available one per kick, in order
//! (see `disk.rs` for why synchronously).

use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use vmm_sys_util::eventfd::EventFd;

use super::disk::Disk;
use super::request::{execute, MAX_SEGMENTS, MAX_WRITE_ZEROES_SECTORS};
use crate::virtio::{
    queue_eventfds, serve_queue_metered, stop_broken, Active, Complaints, VirtioDevice, VirtioError,
};

const QUEUE_SIZE: u16 = 256;
/// Bytes one turn of the event loop moves at most before the other devices get theirs (the
/// request that crosses it finishes; the rest waits for the next turn): ~2–5 ms of page-cache
/// copies, where a queue's worth of large requests could hold the loop for seconds.
const BYTES_PER_TURN: u64 = 16 << 20;

/// Request counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Requests completed (any status).
    pub requests: u64,
    /// Requests dropped: no status byte the device can write.
    pub dropped: u64,
}

/// The device.
pub struct Block {
    disk: Disk,
    serial: Vec<u8>,
    config: Vec<u8>,
    events: Vec<EventFd>,
    active: Option<Active>,
    complaints: Complaints,
    /// What it did.
    pub stats: BlockStats,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("sectors", &self.disk.sectors())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The configuration space's bytes for `disk`.
fn config_space(disk: &Disk) -> Vec<u8> {
    use std::mem::offset_of;
    let mut bytes = vec![0u8; std::mem::size_of::<virtio_blk_config>()];
    let mut put = |at: usize, value: &[u8]| bytes[at..at + value.len()].copy_from_slice(value);
    type C = virtio_blk_config;
    put(offset_of!(C, capacity), &disk.sectors().to_le_bytes());
    put(
        offset_of!(C, seg_max),
        &u32::from(QUEUE_SIZE - 2).to_le_bytes(),
    );
    put(offset_of!(C, max_discard_sectors), &u32::MAX.to_le_bytes());
    put(offset_of!(C, max_discard_seg), &MAX_SEGMENTS.to_le_bytes());
    put(offset_of!(C, discard_sector_alignment), &1u32.to_le_bytes());
    put(
        offset_of!(C, max_write_zeroes_sectors),
        &MAX_WRITE_ZEROES_SECTORS.to_le_bytes(),
    );
    put(
        offset_of!(C, max_write_zeroes_seg),
        &MAX_SEGMENTS.to_le_bytes(),
    );
    put(offset_of!(C, write_zeroes_may_unmap), &[1]);
    bytes
}

impl Block {
    /// A device over `disk`; GET_ID answers `serial`.
    pub fn new(disk: Disk, serial: Option<&str>) -> Result<Self, VirtioError> {
        Ok(Self {
            config: config_space(&disk),
            disk,
            serial: serial.unwrap_or("").as_bytes().to_vec(),
            events: queue_eventfds(1)?,
            active: None,
            complaints: Complaints::default(),
            stats: BlockStats::default(),
        })
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn name(&self) -> &'static str {
        "blk"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = 1 << VIRTIO_BLK_F_SEG_MAX;
        if self.disk.read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        if self.disk.writeback() {
            f |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset.saturating_add(i as u64)).unwrap_or(usize::MAX);
            *byte = self.config.get(at).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, active: Active) {
        tracing::debug!("virtio-blk: activated ({:?})", active);
        self.active = Some(active);
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
            let what = format_args!("queue kicked before DRIVER_OK: ignored");
            return self.complaints.note("blk", what);
        };
        let Some(queue) = active.queues.first_mut() else {
            return;
        };
        let mem = &active.mem;
        let (disk, serial) = (&self.disk, &self.serial[..]);
        let (stats, complaints) = (&mut self.stats, &mut self.complaints);
        let (interrupt, kick) = (&active.interrupt, &self.events[0]);
        let outcome = serve_queue_metered(queue, mem, interrupt, kick, BYTES_PER_TURN, |chain| {
            let head = chain.head_index();
            match execute(chain, mem, disk, serial) {
                Ok(done) => {
                    stats.requests += 1;
                    if u32::from(done.status) == virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR {
                        complaints.note("blk", format_args!("request {head}: IOERR"));
                    }
                    (done.written, done.moved)
                }
                Err(e) => {
                    stats.dropped += 1;
                    complaints.note("blk", format_args!("request {head} dropped: {e}"));
                    (0, 0)
                }
            }
        });
        if outcome.is_err() {
            stop_broken(&mut self.active, &mut self.complaints, "blk");
        }
    }
}
