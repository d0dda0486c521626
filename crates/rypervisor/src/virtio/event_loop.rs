//! The device event loop: one thread that waits (epoll) on every device's queue eventfds
//! and its other descriptors, and calls the device for each one that is ready. vCPU threads
//! never wait for device I/O: a driver's kick is an ioeventfd KVM signals, served here.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{VirtioDevice, VirtioError};

/// What a ready descriptor stands for: device, then queue or other fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Stop,
    Queue(usize, usize),
    Other(usize, usize),
}

fn token(source: Source) -> u64 {
    match source {
        Source::Stop => 0,
        Source::Queue(d, i) => 1 << 62 | (d as u64) << 32 | i as u64,
        Source::Other(d, i) => 2 << 62 | (d as u64) << 32 | i as u64,
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
        _ => Source::Stop,
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
        let epoll = Epoll::new().map_err(VirtioError::EventLoop)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        let add = |fd: RawFd, events: EventSet, source: Source| {
            let event = EpollEvent::new(events, token(source));
            epoll
                .ctl(ControlOperation::Add, fd, event)
                .map_err(VirtioError::EventLoop)
        };
        add(stop.as_raw_fd(), EventSet::IN, Source::Stop)?;
        for (d, device) in devices.iter().enumerate() {
            let device = device.lock().unwrap_or_else(|p| p.into_inner());
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
                serve(&epoll, &devices);
            })
            .map_err(VirtioError::EventLoop)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

fn serve(epoll: &Epoll, devices: &Devices) {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return tracing::error!("virtio event loop: epoll_wait failed: {e}"),
        };
        for event in &events[..n] {
            match source(event.data()) {
                Source::Stop => {
                    for device in devices {
                        device.lock().unwrap_or_else(|p| p.into_inner()).stop();
                    }
                    return;
                }
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
            }
        }
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

    #[test]
    fn tokens_name_their_source() {
        for s in [Source::Stop, Source::Queue(3, 2), Source::Other(1, 17)] {
            assert_eq!(source(token(s)), s);
        }
    }
}
