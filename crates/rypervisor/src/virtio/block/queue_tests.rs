//! How the block device serves its queue, whatever the driver does to it: rings it cannot
//! trust stop it (DEVICE_NEEDS_RESET) instead of spinning, and large requests and flushes
//! are spread over turns of the event loop. The rig and helpers are the parent's.

use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;

#[test]
fn an_avail_index_past_the_queue_stops_the_device_instead_of_spinning() {
    let mut r = rig(4096, "");
    // The model's avail ring follows its 16-entry descriptor table at 0x1000.
    r.mem
        .write_obj(1000u16, GuestAddress(0x1000 + 16 * 16 + 2))
        .unwrap();
    let (done, waited) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        r.dev.process_queue(0);
        r.dev.process_queue(0); // a second kick: ignored, the device waits for a reset
        let _ = done.send(());
        r
    });
    assert!(
        waited
            .recv_timeout(std::time::Duration::from_secs(10))
            .is_ok(),
        "the device spun on a broken ring"
    );
    let r = t.join().unwrap();
    assert_eq!(r.dev.stats.requests, 0);
    // The driver is told: DEVICE_NEEDS_RESET, with a configuration interrupt.
    assert!(r.interrupt.reset_needed());
    assert_eq!(r.interrupt.status(), crate::virtio::INT_CONFIG);
}

/// A queue the driver never made ready is left alone (no interrupt, nothing written); one
/// made ready with its avail ring left at guest address 0 (where virtio-queue sees no
/// queue, and hands out nothing while the index there says one buffer waits) stops the
/// device, which says it needs a reset, instead of spinning.
#[test]
fn a_queue_never_made_ready_or_with_its_ring_at_address_0_does_not_spin() {
    use virtio_queue::{Queue, QueueT};
    for ready in [false, true] {
        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(4096).unwrap();
        let d: DriveConfig = format!("path={}", image.path().display()).parse().unwrap();
        let (disk, _) = open_all(std::slice::from_ref(&d)).unwrap().remove(0);
        let mut dev = Block::new(disk, None).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_obj(1u16, GuestAddress(2)).unwrap(); // "one buffer" where ring 0 would be
        let mut queue = Queue::new(16).unwrap();
        queue.set_ready(ready);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        dev.activate(Active {
            mem: mem.clone(),
            queues: vec![queue],
            features: 0,
            interrupt: interrupt.clone(),
        });
        let (done, waited) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            dev.process_queue(0);
            dev.process_queue(0);
            let _ = done.send(());
        });
        assert!(
            waited
                .recv_timeout(std::time::Duration::from_secs(10))
                .is_ok(),
            "the device spun (queue ready: {ready})"
        );
        assert_eq!(interrupt.reset_needed(), ready);
        match ready {
            false => {
                assert!(irq.read().is_err(), "an interrupt for nothing");
                let at_0 = mem.read_obj::<u16>(GuestAddress(0)).unwrap();
                assert_eq!(at_0, 0, "something written where no ring was set up");
            }
            true => assert_eq!(interrupt.status(), crate::virtio::INT_CONFIG),
        }
    }
}

#[test]
fn large_requests_are_served_over_several_turns_of_the_event_loop() {
    let mut r = rig_with_queue(4 << 20, "", 64);
    let header = {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        h
    };
    r.mem.write_slice(&header, GuestAddress(HEADER)).unwrap();
    // Six reads of 4 MiB (sectors 0..8192), each into the same 1 MiB buffer four times over.
    let mut chain = vec![readable(HEADER, 16)];
    chain.extend([writable(DATA, 1 << 20); 4]);
    chain.push(writable(STATUS, 1));
    for _ in 0..6 {
        r.q.offer(&chain).unwrap();
    }
    let kick = r.dev.queue_events()[0].try_clone().unwrap();
    let _ = kick.read(); // (the kick at activation)
    r.dev.process_queue(0);
    let mut used = 0;
    while let Some((_, len)) = r.q.take_used() {
        assert_eq!(len, (4 << 20) + 1);
        used += 1;
    }
    assert_eq!(
        used, 4,
        "16 MiB in one turn: the request that reached it was the last"
    );
    assert_eq!(
        kick.read().unwrap(),
        1,
        "the device kicked itself to come back"
    );
    r.dev.process_queue(0);
    let rest = std::iter::from_fn(|| r.q.take_used()).count();
    assert_eq!(rest, 2);
    assert_eq!(r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);
    assert_eq!(r.dev.stats.requests, 6);
    // A flush (an fdatasync of whatever the guest dirtied) ends a turn by itself.
    let mut wb = rig(64 << 10, ",cache=writeback");
    let mut flush = [0u8; 16];
    flush[..4].copy_from_slice(&VIRTIO_BLK_T_FLUSH.to_le_bytes());
    wb.mem.write_slice(&flush, GuestAddress(HEADER)).unwrap();
    for _ in 0..2 {
        wb.q.offer(&[readable(HEADER, 16), writable(STATUS, 1)])
            .unwrap();
    }
    let kick = wb.dev.queue_events()[0].try_clone().unwrap();
    let _ = kick.read();
    wb.dev.process_queue(0);
    assert_eq!(std::iter::from_fn(|| wb.q.take_used()).count(), 1);
    assert_eq!(
        kick.read().unwrap(),
        1,
        "the device kicked itself to come back"
    );
}
