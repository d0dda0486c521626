//! virtio-blk without a guest: requests built by the model driver on guest memory, served by
//! the real device against a temporary image file.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::request::{MAX_SEGMENTS, MAX_WRITE_ZEROES_SECTORS};
use super::*;
use crate::virtio::driver::{Buffer, DriverQueue};
use crate::virtio::{Active, Interrupt, VirtioDevice};

const HEADER: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x34_0000;

struct Rig {
    mem: GuestMemoryMmap,
    q: DriverQueue,
    dev: Block,
    image: tempfile::NamedTempFile,
    interrupt: Arc<Interrupt>,
}

fn rig(size: usize, spec: &str) -> Rig {
    rig_with_queue(size, spec, 16)
}

fn rig_with_queue(size: usize, spec: &str, queue_size: u16) -> Rig {
    let mut image = tempfile::NamedTempFile::new().unwrap();
    let bytes: Vec<u8> = (0..size).map(|i| (i / 512) as u8).collect();
    image.write_all(&bytes).unwrap();
    let d: DriveConfig = format!("path={}{spec}", image.path().display())
        .parse()
        .unwrap();
    let mut opened = open_all(std::slice::from_ref(&d)).unwrap();
    let (disk, cfg) = opened.remove(0);
    let mut dev = Block::new(disk, cfg.serial.as_deref()).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let q = DriverQueue::new(&mem, queue_size, 0x1000);
    let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    dev.activate(Active {
        mem: mem.clone(),
        // EVENT_IDX, as Linux's driver negotiates it: kicks only when the device asks.
        queues: vec![q.device_queue(true)],
        features: 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX,
        interrupt: interrupt.clone(),
    });
    Rig {
        mem,
        q,
        dev,
        image,
        interrupt,
    }
}

impl Rig {
    /// Sends a request (`data`: its buffers after the header) and returns (status, used length).
    fn request(&mut self, kind: u32, sector: u64, data: &[Buffer]) -> (u8, u32) {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&header, GuestAddress(HEADER)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mut chain = vec![readable(HEADER, 16)];
        chain.extend_from_slice(data);
        chain.push(writable(STATUS, 1));
        self.raw(&chain)
    }

    fn raw(&mut self, chain: &[Buffer]) -> (u8, u32) {
        self.q.offer(chain).unwrap();
        self.kick();
        let (_, len) = self.q.take_used().expect("the request was used");
        (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
    }

    /// Kicks the device if it asked for a kick, or serves it if it kicked itself (as the
    /// event loop would); a stall shows as a request never used.
    fn kick(&mut self) {
        let kicked_itself = self.dev.queue_events()[0].read().is_ok();
        if self.q.needs_kick(true) || kicked_itself {
            self.dev.process_queue(0);
        }
    }

    fn file(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.image.as_file().read_exact_at(&mut v, offset).unwrap();
        v
    }
}

fn readable(addr: u64, len: u32) -> Buffer {
    Buffer {
        addr,
        len,
        writable: false,
    }
}

fn writable(addr: u64, len: u32) -> Buffer {
    Buffer {
        addr,
        len,
        writable: true,
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn reads_and_writes_reach_the_file_in_sectors() {
    let mut r = rig(64 << 10, "");
    // Two sectors from sector 3, into two buffers.
    let data = [writable(DATA, 512), writable(DATA + 0x1000, 512)];
    assert_eq!(r.request(VIRTIO_BLK_T_IN, 3, &data), (OK, 1025));
    let mut got = [0u8; 512];
    r.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert!(got.iter().all(|&b| b == 4), "sector 4's bytes");
    r.mem
        .write_slice(&[0xab; 1024], GuestAddress(DATA))
        .unwrap();
    let out = [readable(DATA, 1024)];
    assert_eq!(r.request(VIRTIO_BLK_T_OUT, 10, &out), (OK, 1));
    assert_eq!(r.file(10 * 512, 1024), vec![0xab; 1024]);
    assert_eq!(r.file(12 * 512, 1), vec![12], "nothing past it");
    // The status byte may end the data's own buffer (one descriptor after the header).
    let mut header = [0u8; 16];
    header[8..].copy_from_slice(&5u64.to_le_bytes()); // IN (0), sector 5
    r.mem.write_slice(&header, GuestAddress(HEADER)).unwrap();
    r.mem.write_obj(0xffu8, GuestAddress(DATA + 512)).unwrap();
    r.q.offer(&[readable(HEADER, 16), writable(DATA, 513)])
        .unwrap();
    r.kick();
    assert_eq!(r.q.take_used().map(|u| u.1), Some(513));
    r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert!(got.iter().all(|&b| b == 5), "sector 5's bytes");
    assert_eq!(r.mem.read_obj::<u8>(GuestAddress(DATA + 512)).unwrap(), OK);
}

#[test]
fn requests_outside_the_disk_or_not_whole_sectors_fail_with_ioerr() {
    let mut r = rig(64 << 10, "");
    let last = (64 << 10) / 512 - 1;
    assert_eq!(
        r.request(VIRTIO_BLK_T_IN, last, &[writable(DATA, 512)]).0,
        OK
    );
    assert_eq!(
        r.request(VIRTIO_BLK_T_IN, last, &[writable(DATA, 1024)]).0,
        IOERR
    );
    assert_eq!(
        r.request(VIRTIO_BLK_T_IN, u64::MAX, &[writable(DATA, 512)])
            .0,
        IOERR
    );
    assert_eq!(
        r.request(VIRTIO_BLK_T_OUT, 0, &[readable(DATA, 100)]).0,
        IOERR
    );
    assert_eq!(r.request(99, 0, &[]).0, UNSUPP, "an unknown type");
    assert_eq!(r.dev.stats.requests, 5);
}

#[test]
fn a_read_only_drive_refuses_every_write() {
    let mut r = rig(8 << 10, ",ro");
    assert_ne!(r.dev.features() & 1 << VIRTIO_BLK_F_RO, 0);
    assert_eq!(r.dev.features() & 1 << VIRTIO_BLK_F_DISCARD, 0);
    assert_eq!(
        r.request(VIRTIO_BLK_T_OUT, 0, &[readable(DATA, 512)]).0,
        IOERR
    );
    let seg = [0u8; 16];
    r.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
    assert_eq!(
        r.request(VIRTIO_BLK_T_DISCARD, 0, &[readable(DATA, 16)]).0,
        IOERR
    );
    r.mem
        .write_slice(&segment(1, 1, 0), GuestAddress(DATA))
        .unwrap();
    assert_eq!(
        r.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[readable(DATA, 16)])
            .0,
        IOERR
    );
    assert_eq!(r.file(512, 512), vec![1; 512], "unchanged");
    assert_eq!(r.file(0, 512), vec![0; 512], "unchanged");
    assert_eq!(r.request(VIRTIO_BLK_T_IN, 1, &[writable(DATA, 512)]).0, OK);
}

#[test]
fn flush_is_offered_and_served_only_with_writeback() {
    let mut plain = rig(4096, "");
    assert_eq!(plain.dev.features() & 1 << VIRTIO_BLK_F_FLUSH, 0);
    assert_eq!(plain.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, UNSUPP);
    let mut wb = rig(4096, ",cache=writeback");
    assert_ne!(wb.dev.features() & 1 << VIRTIO_BLK_F_FLUSH, 0);
    assert_eq!(wb.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
}

#[test]
fn get_id_answers_the_serial_in_twenty_bytes() {
    let mut r = rig(4096, ",serial=DATA-123");
    assert_eq!(
        r.request(VIRTIO_BLK_T_GET_ID, 0, &[writable(DATA, 20)]),
        (OK, 21)
    );
    let mut id = [0xffu8; 20];
    r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..8], b"DATA-123");
    assert!(id[8..].iter().all(|&b| b == 0), "NUL-padded");
    // A shorter buffer gets what fits.
    assert_eq!(
        r.request(VIRTIO_BLK_T_GET_ID, 0, &[writable(DATA, 4)]),
        (OK, 5)
    );
}

fn segment(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..].copy_from_slice(&flags.to_le_bytes());
    s
}

#[test]
fn discard_and_write_zeroes_change_the_file() {
    let mut r = rig(256 << 10, "");
    let blocks = |r: &Rig| {
        use std::os::unix::fs::MetadataExt;
        r.image.as_file().metadata().unwrap().blocks()
    };
    let before = blocks(&r);
    let segs = [segment(8, 16, 0), segment(100, 8, 0)].concat();
    r.mem.write_slice(&segs, GuestAddress(DATA)).unwrap();
    assert_eq!(
        r.request(VIRTIO_BLK_T_DISCARD, 0, &[readable(DATA, 32)]).0,
        OK
    );
    // Sectors 8..24 cover two whole 4 KiB pages: they are given back, not just zeroed.
    assert!(blocks(&r) < before, "a hole: {} → {}", before, blocks(&r));
    assert_eq!(
        r.file(8 * 512, 16 * 512),
        vec![0; 16 * 512],
        "a hole reads as zeros"
    );
    assert_eq!(r.file(24 * 512, 1), vec![24], "next to it, untouched");
    assert_eq!(
        r.image.as_file().metadata().unwrap().len(),
        256 << 10,
        "size kept"
    );
    for flags in [0, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP] {
        r.image
            .as_file()
            .write_all_at(&[0xee; 4 * 512], 200 * 512)
            .unwrap();
        let seg = segment(200, 4, flags);
        r.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
        assert_eq!(
            r.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[readable(DATA, 16)])
                .0,
            OK
        );
        assert_eq!(r.file(200 * 512, 4 * 512), vec![0; 4 * 512]);
    }
    // Bad segments: past the end, a flag discard does not have, a torn segment.
    let bad = segment(511, 2, 0);
    r.mem.write_slice(&bad, GuestAddress(DATA)).unwrap();
    assert_eq!(
        r.request(VIRTIO_BLK_T_DISCARD, 0, &[readable(DATA, 16)]).0,
        IOERR
    );
    let flagged = segment(0, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    r.mem.write_slice(&flagged, GuestAddress(DATA)).unwrap();
    assert_eq!(
        r.request(VIRTIO_BLK_T_DISCARD, 0, &[readable(DATA, 16)]).0,
        UNSUPP
    );
    assert_eq!(
        r.request(VIRTIO_BLK_T_DISCARD, 0, &[readable(DATA, 10)]).0,
        IOERR
    );
}

#[test]
fn discard_and_write_zeroes_keep_to_their_limits_and_check_every_segment_first() {
    let mut r = rig(17 << 20, "");
    let request = |r: &mut Rig, kind, segs: &[[u8; 16]]| {
        let bytes = segs.concat();
        r.mem.write_slice(&bytes, GuestAddress(DATA)).unwrap();
        r.request(kind, 0, &[readable(DATA, bytes.len() as u32)]).0
    };
    let max = MAX_WRITE_ZEROES_SECTORS;
    let zeroes = VIRTIO_BLK_T_WRITE_ZEROES;
    assert_eq!(request(&mut r, zeroes, &[segment(0, max + 1, 0)]), IOERR);
    let split = [segment(0, max / 2, 0), segment(max as u64, max / 2 + 1, 0)];
    assert_eq!(
        request(&mut r, zeroes, &split),
        IOERR,
        "the limit is on the sum"
    );
    assert_eq!(
        r.file(0, 1),
        vec![0],
        "sector 0 untouched (its bytes are 0)"
    );
    assert_eq!(r.file(512, 1), vec![1], "nothing zeroed");
    assert_eq!(request(&mut r, zeroes, &[segment(0, max, 0)]), OK);
    assert_eq!(r.file(512, 1), vec![0]);
    let many = vec![segment(34_000, 1, 0); MAX_SEGMENTS as usize + 1];
    assert_eq!(request(&mut r, VIRTIO_BLK_T_DISCARD, &many), UNSUPP);
    assert_eq!(request(&mut r, zeroes, &many), UNSUPP);
    assert_eq!(r.file(34_000 * 512, 1), vec![34_000u32 as u8], "untouched");
    // A good segment before a bad one: neither is executed.
    let last = (17 << 20) / 512 - 1;
    let mixed = [segment(34_000, 1, 0), segment(last, 2, 0)];
    assert_eq!(request(&mut r, zeroes, &mixed), IOERR);
    assert_eq!(r.file(34_000 * 512, 1), vec![34_000u32 as u8], "untouched");
}

#[test]
fn requests_in_flight_together_each_get_their_own_status() {
    let mut r = rig(64 << 10, "");
    // Five requests (the queue's 16 descriptors hold five chains of three) offered before
    // one kick: reads, a write, one outside the disk, one of an unknown type; each with its
    // header, data and status apart.
    let kinds: [(u32, u64, u8); 5] = [
        (VIRTIO_BLK_T_IN, 1, OK),
        (VIRTIO_BLK_T_OUT, 2, OK),
        (VIRTIO_BLK_T_IN, 1000, IOERR),
        (77, 0, UNSUPP),
        (VIRTIO_BLK_T_IN, 5, OK),
    ];
    let mut heads = Vec::new();
    for (i, &(kind, sector, _)) in kinds.iter().enumerate() {
        let i = i as u64;
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        r.mem
            .write_slice(&header, GuestAddress(HEADER + 16 * i))
            .unwrap();
        r.mem.write_obj(0xffu8, GuestAddress(STATUS + i)).unwrap();
        let data = DATA + 512 * i;
        r.mem
            .write_slice(&[0xc0 | i as u8; 512], GuestAddress(data))
            .unwrap();
        let chain = [
            readable(HEADER + 16 * i, 16),
            Buffer {
                addr: data,
                len: 512,
                writable: kind != VIRTIO_BLK_T_OUT,
            },
            writable(STATUS + i, 1),
        ];
        heads.push(r.q.offer(&chain).unwrap());
    }
    r.kick();
    let mut used = std::collections::HashMap::new();
    while let Some((head, len)) = r.q.take_used() {
        used.insert(head, len);
    }
    assert_eq!(used.len(), kinds.len(), "all used after one kick");
    for (i, &(kind, sector, want)) in kinds.iter().enumerate() {
        let status: u8 = r.mem.read_obj(GuestAddress(STATUS + i as u64)).unwrap();
        assert_eq!(status, want, "request {i}");
        let len = match (kind, want) {
            (VIRTIO_BLK_T_IN, OK) => 513,
            _ => 1,
        };
        assert_eq!(used[&heads[i]], len, "request {i}");
        let mut got = [0u8; 512];
        r.mem
            .read_slice(&mut got, GuestAddress(DATA + 512 * i as u64))
            .unwrap();
        match (kind, want) {
            (VIRTIO_BLK_T_IN, OK) => assert_eq!(got, [sector as u8; 512], "request {i}"),
            (VIRTIO_BLK_T_OUT, _) => {
                assert_eq!(r.file(sector * 512, 512), vec![0xc0 | i as u8; 512])
            }
            _ => {}
        }
    }
}

#[test]
fn malformed_chains_never_panic() {
    let mut r = rig(4096, "");
    // No writable byte for a status: dropped (used with length 0).
    r.q.offer(&[readable(HEADER, 16)]).unwrap();
    r.kick();
    assert_eq!(r.q.take_used().map(|u| u.1), Some(0));
    assert_eq!(r.dev.stats.dropped, 1);
    // A header outside guest memory: IOERR in the status byte (which is in memory).
    r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let outside = r.raw(&[readable(0xdead_0000, 16), writable(STATUS, 1)]);
    assert_eq!(outside, (IOERR, 1));
    // A header too short: IOERR.
    assert_eq!(r.raw(&[readable(HEADER, 8), writable(STATUS, 1)]).0, IOERR);
    // A data length past the end of guest memory: IOERR, nothing read.
    r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let huge = [
        readable(HEADER, 16),
        writable(DATA, 1 << 30),
        writable(STATUS, 1),
    ];
    assert_eq!(r.raw(&huge), (IOERR, 1));
    // A chain of more than 4 GiB in all (which virtio forbids): virtio-queue ends it where
    // the sum overflows, so no status byte is found and it is dropped.
    let before = r.dev.stats.dropped;
    let overflowing = [
        readable(HEADER, 16),
        writable(DATA, u32::MAX),
        writable(STATUS, 1),
    ];
    assert_eq!(r.raw(&overflowing).1, 0);
    assert_eq!(r.dev.stats.dropped, before + 1);
    // The status byte itself outside memory, or not writable: nowhere to answer, dropped.
    let before = r.dev.stats.dropped;
    r.q.offer(&[readable(0xdead_0000, 16), writable(0xdead_1000, 1)])
        .unwrap();
    r.kick();
    assert_eq!(r.q.take_used().map(|u| u.1), Some(0));
    r.q.offer(&[readable(0xdead_0000, 16), readable(STATUS, 1)])
        .unwrap();
    r.kick();
    assert_eq!(r.q.take_used().map(|u| u.1), Some(0));
    assert_eq!(r.dev.stats.dropped, before + 2);
}

#[test]
fn drive_specs_parse_or_say_what_is_wrong() {
    let d: DriveConfig = "path=a.img,ro,serial=X1,root,cache=writeback"
        .parse()
        .unwrap();
    assert!(d.read_only && d.root && d.writeback);
    assert_eq!(d.serial.as_deref(), Some("X1"));
    for (spec, want) in [
        ("ro", "path=FILE is missing"),
        ("path=a,size=3", "unknown key"),
        ("path=a,cache=none", "cache is writeback or unsafe"),
        ("path=a,serial=123456789012345678901", "at most 20"),
        ("path=a,serial=a b", "printable"),
        ("path=,ro", "file name is empty"),
        ("path=a,path=b", "given twice"),
        ("path=a,ro,ro", "given twice"),
        ("path=a,serial=X,serial=Y", "given twice"),
    ] {
        let e = spec.parse::<DriveConfig>().unwrap_err().to_string();
        assert!(e.contains(want), "{spec}: {e}");
    }
}

#[test]
fn images_that_cannot_be_attached_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str, extra: &str| -> DriveConfig {
        format!("path={}{extra}", dir.path().join(name).display())
            .parse()
            .unwrap()
    };
    let err = |d: &[DriveConfig]| open_all(d).map(|_| ()).unwrap_err().to_string();
    assert!(err(&[at("missing.img", "")]).contains("No such file"));
    assert!(err(&[at("", "")]).contains("directory") || err(&[at("", "")]).contains("regular"));
    std::fs::write(dir.path().join("odd.img"), [0u8; 1000]).unwrap();
    assert!(err(&[at("odd.img", "")]).contains("1000 bytes, is not a multiple of 512"));
    std::fs::write(dir.path().join("a.img"), [0u8; 4096]).unwrap();
    assert!(err(&[at("a.img", ""), at("a.img", ",ro")]).contains("attached twice"));
    assert!(open_all(&[at("a.img", ",ro"), at("a.img", ",ro")]).is_ok());
    assert!(err(&[at("a.img", ",root"), at("odd.img", ",root")]).contains("only one"));
    let holder = [at("a.img", "")];
    let held = open_all(&holder).unwrap();
    assert!(err(&[at("a.img", "")]).contains("in use by another process"));
    drop(held);
    assert!(open_all(&[at("a.img", "")]).is_ok(), "free again");
}

#[path = "queue_tests.rs"]
mod queue;
