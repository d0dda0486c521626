//! The device event loop: one thread that waits (epoll) on every device's queue eventfds
//! and its other descriptors, and calls the device for each one that is ready. vCPU threads
//! never wait for device I/O: a driver's kick is an ioeventfd KVM signals, served here.
//!
//! A device whose descriptors come and go (vsock's host sockets) gets a [`Watch`] on the
//! loop's own epoll and registers them itself, so one `epoll_wait` names the very socket
//! that is ready: no epoll of its own to wait on again (Firecracker's muxer nests one).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{VirtioDevice, VirtioError};

/// What a ready descriptor stands for: device, then queue, other fd, or a descriptor the
/// device watches itself under an id of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Stop,
    Queue(usize, usize),
    Other(usize, usize),
    Watched(usize, u32),
}

fn token(source: Source) -> u64 {
    match source {
        Source::Stop => 0,
        Source::Queue(d, i) => 1 << 62 | (d as u64) << 32 | i as u64,
        Source::Other(d, i) => 2 << 62 | (d as u64) << 32 | i as u64,
        Source::Watched(d, id) => 3 << 62 | (d as u64) << 32 | u64::from(id),
    }
}

fn source(token: u64) -> Source {
    let (d, i) = (
        ((token >> 32) & 0x3fff_ffff) as usize,
        (token & 0xffff_ffff) as usize,
    );
    match token >> 62 {
        1 => Source::Queue(d, i),
        2 => Source::Other(d, i),
        3 => Source::Watched(d, i as u32),
        _ => Source::Stop,
    }
}

/// Where a device registers descriptors that come and go: the event loop's epoll, under the
/// device's index (the loop then calls `process_event` with the id), or — for a device with
/// no loop, in tests and benchmarks — an epoll of its own that [`Watch::ready`] polls.
#[derive(Clone, Debug)]
pub struct Watch {
    epoll: Arc<Epoll>,
    device: usize,
    own: bool,
}

impl Watch {
    /// The event loop's `epoll`, for device `device`.
    fn shared(epoll: Arc<Epoll>, device: usize) -> Self {
        Self {
            epoll,
            device,
            own: false,
        }
    }

    /// An epoll of its own, polled by [`Watch::ready`].
    pub fn own() -> std::io::Result<Self> {
        Ok(Self {
            epoll: Arc::new(Epoll::new()?),
            device: 0,
            own: true,
        })
    }

    /// Starts watching `fd` for `events` under `id`.
    pub fn add(&self, fd: RawFd, events: EventSet, id: u32) -> std::io::Result<()> {
        let event = EpollEvent::new(events, token(Source::Watched(self.device, id)));
        self.epoll.ctl(ControlOperation::Add, fd, event)
    }

    /// Stops watching `fd` (closing it does as well).
    pub fn delete(&self, fd: RawFd) {
        let _ = (self.epoll).ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Makes every later [`Watch::add`] fail (`EINVAL`), as a full epoll would, for tests:
    /// the epoll's descriptor number now names `/dev/null`.
    #[cfg(test)]
    pub(crate) fn break_for_test(&self) {
        use std::os::fd::AsRawFd;
        let null = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: dup2 replaces the descriptor the Epoll owns by another open one; the Epoll
        // still closes exactly one descriptor (that number) when dropped.
        assert!(unsafe { libc::dup2(null.as_raw_fd(), self.epoll.as_raw_fd()) } >= 0);
    }

    /// What is ready now, as (id, events), without waiting: one `epoll_wait` of up to 64, as
    /// the loop's (more are reported by the next call; level-triggered descriptors are
    /// reported again until served). Empty on the event loop's epoll, whose events only the
    /// loop takes.
    pub fn ready(&self) -> std::io::Result<Vec<(u32, EventSet)>> {
        if !self.own {
            return Ok(Vec::new());
        }
        let mut events = [EpollEvent::default(); 64];
        let n = loop {
            match self.epoll.wait(0, &mut events) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        let ids = events[..n].iter().filter_map(|e| match source(e.data()) {
            Source::Watched(_, id) => Some((id, e.event_set())),
            _ => None,
        });
        Ok(ids.collect())
    }
}

/// The running loop; stops (and joins its thread) when dropped.
pub struct EventLoop {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop").finish_non_exhaustive()
    }
}

type Devices = Vec<Arc<Mutex<dyn VirtioDevice>>>;

impl EventLoop {
    /// Starts the thread serving `devices`; `on_start` runs first on it (the seccomp filter
    /// for its role).
    pub fn start(
        devices: Devices,
        on_start: impl FnOnce() + Send + 'static,
    ) -> Result<Self, VirtioError> {
        let epoll = Arc::new(Epoll::new().map_err(VirtioError::EventLoop)?);
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        let add = |fd: RawFd, events: EventSet, source: Source| {
            let event = EpollEvent::new(events, token(source));
            epoll
                .ctl(ControlOperation::Add, fd, event)
                .map_err(VirtioError::EventLoop)
        };
        add(stop.as_raw_fd(), EventSet::IN, Source::Stop)?;
        for (d, device) in devices.iter().enumerate() {
            let mut device = device.lock().unwrap_or_else(|p| p.into_inner());
            device.attach(Watch::shared(epoll.clone(), d))?;
            for (i, evt) in device.queue_events().iter().enumerate() {
                add(evt.as_raw_fd(), EventSet::IN, Source::Queue(d, i))?;
            }
            for (i, (fd, events)) in device.other_fds().into_iter().enumerate() {
                add(fd, events, Source::Other(d, i))?;
            }
        }
        let thread = std::thread::Builder::new()
            .name("virtio".into())
            .spawn(move || {
                on_start();
                let _stop = StopOnExit(&devices);
                serve(&epoll, &devices);
            })
            .map_err(VirtioError::EventLoop)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

/// Stops every device when the loop's thread leaves [`serve`] — told to, or not (an
/// `epoll_wait` failure; a panic in a handler where panics unwind, as in tests: release
/// builds abort): what a device must undo on this thread (vsock removes its socket file:
/// the only thread whose seccomp filter allows `unlink`) is undone whatever ended the loop.
struct StopOnExit<'d>(&'d Devices);

impl Drop for StopOnExit<'_> {
    fn drop(&mut self) {
        for device in self.0 {
            device.lock().unwrap_or_else(|p| p.into_inner()).stop();
        }
    }
}

fn serve(epoll: &Epoll, devices: &Devices) {
    let mut events = vec![EpollEvent::default(); 64];
    // Devices whose watched descriptors this wake reported: each hears `events_done` once.
    let mut watched = vec![false; devices.len()];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return tracing::error!("virtio event loop: epoll_wait failed: {e}"),
        };
        for event in &events[..n] {
            match source(event.data()) {
                Source::Stop => return, // (the devices stop on the way out: `StopOnExit`)
                Source::Queue(d, i) => {
                    let mut device = devices[d].lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(evt) = device.queue_events().get(i) {
                        let _ = evt.read(); // consume the kick(s)
                    }
                    device.process_queue(i);
                }
                Source::Other(d, i) => devices[d]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .process_fd(i),
                Source::Watched(d, id) => {
                    let Some(device) = devices.get(d) else {
                        continue;
                    };
                    let mut device = device.lock().unwrap_or_else(|p| p.into_inner());
                    device.process_event(id, event.event_set());
                    watched[d] = true;
                }
            }
        }
        for (d, touched) in watched.iter_mut().enumerate() {
            if std::mem::take(touched) {
                devices[d]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .events_done();
            }
        }
    }
}

impl EventLoop {
    /// Stops the loop and joins its thread if it ends by `by` (true); if a handler is still
    /// busy then, the thread is left to end on its own once the handler returns (false).
    pub fn stop_by(mut self, by: std::time::Instant) -> bool {
        let _ = self.stop.write(1);
        let thread = self.thread.take();
        let stopped = thread.is_none_or(|t| crate::watchdog::join_by(t, by).is_some());
        if !stopped {
            // The stop eventfd stays open: closing it would take it, and its pending stop,
            // out of the epoll, and the loop would go on serving for ever.
            std::mem::forget(self);
        }
        stopped
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many level-triggered descriptors ready at once: one call reports each once (it does
    /// not wait again on what it has not served, which would report them forever).
    #[test]
    fn an_own_watch_reports_what_is_ready_in_one_wait() {
        let watch = Watch::own().unwrap();
        let fds: Vec<EventFd> = (0..40)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        for (id, fd) in fds.iter().enumerate() {
            watch.add(fd.as_raw_fd(), EventSet::IN, id as u32).unwrap();
            fd.write(1).unwrap();
        }
        // (On a thread: a `ready` that kept waiting would never return, and fail here.)
        let (done, got) = std::sync::mpsc::channel();
        let polling = watch.clone();
        std::thread::spawn(move || done.send(polling.ready().unwrap()));
        let ready = got.recv_timeout(std::time::Duration::from_secs(5));
        let mut ids: Vec<u32> = ready.expect("ready returns").iter().map(|r| r.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..40).collect::<Vec<u32>>());
        watch.delete(fds[0].as_raw_fd());
        assert_eq!(
            watch.ready().unwrap().len(),
            39,
            "level-triggered: again until read"
        );
    }

    /// A device whose queue handler does `work` (panics, takes long), and which records
    /// being stopped.
    struct Fake {
        events: Vec<EventFd>,
        stopped: Arc<std::sync::atomic::AtomicBool>,
        work: fn(),
    }

    /// [`Fake`] with its queue kicked once, and whether it was stopped.
    fn kicked(work: fn()) -> (Devices, Arc<std::sync::atomic::AtomicBool>) {
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let device = Fake {
            events: super::super::queue_eventfds(1).unwrap(),
            stopped: stopped.clone(),
            work,
        };
        device.events[0].write(1).unwrap();
        (vec![Arc::new(Mutex::new(device))], stopped)
    }

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            4
        }
        fn name(&self) -> &'static str {
            "panicky"
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            0
        }
        fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
        fn activate(&mut self, _active: super::super::Active) {}
        fn reset(&mut self) {}
        fn queue_events(&self) -> &[EventFd] {
            &self.events
        }
        fn process_queue(&mut self, _index: usize) {
            (self.work)();
        }
        fn stop(&mut self) {
            self.stopped
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// However the loop ends, its devices are stopped on its thread (vsock removes its
    /// socket file there, the only thread allowed to).
    #[test]
    fn a_loop_that_ends_without_being_told_still_stops_its_devices() {
        let (devices, stopped) = kicked(|| panic!("a bug in a device"));
        let mut event_loop = EventLoop::start(devices, || {}).unwrap();
        let thread = event_loop.thread.take().unwrap();
        assert!(thread.join().is_err(), "the handler panicked");
        assert!(stopped.load(std::sync::atomic::Ordering::SeqCst));
    }

    /// A stop waits for a busy handler only as long as asked, then leaves the loop behind.
    #[test]
    fn a_stop_is_bounded_while_a_handler_is_busy() {
        use std::time::{Duration, Instant};
        let (devices, stopped) = kicked(|| std::thread::sleep(Duration::from_secs(1)));
        let event_loop = EventLoop::start(devices, || {}).unwrap();
        std::thread::sleep(Duration::from_millis(100)); // the handler is running
        let asked = Instant::now();
        assert!(!event_loop.stop_by(asked + Duration::from_millis(200)));
        assert!(
            asked.elapsed() < Duration::from_millis(800),
            "{:?}",
            asked.elapsed()
        );
        assert!(!stopped.load(std::sync::atomic::Ordering::SeqCst));
        // Left running, it still stops once the handler returns.
        while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                asked.elapsed() < Duration::from_secs(10),
                "the loop never stopped"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // An idle loop stops at once.
        let (devices, stopped) = kicked(|| {});
        let event_loop = EventLoop::start(devices, || {}).unwrap();
        assert!(event_loop.stop_by(Instant::now() + Duration::from_secs(10)));
        assert!(stopped.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn tokens_name_their_source() {
        let watched = Source::Watched(5, u32::MAX);
        for s in [
            Source::Stop,
            Source::Queue(3, 2),
            Source::Other(1, 17),
            watched,
        ] {
            assert_eq!(source(token(s)), s);
        }
    }
}
