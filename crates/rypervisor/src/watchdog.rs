//! The time limit: a watchdog thread that kicks a vCPU out of `KVM_RUN` at the deadline.
//!
//! A guest spinning at CPL3 never exits on its own, so the only way to stop it is from another
//! thread: after the deadline the watchdog kicks the vCPU (see [`crate::vcpu::kick`]: it sets
//! `immediate_exit`, so the kick cannot be lost, and signals the thread). The signal also ends
//! a blocking host call the VMM makes for the guest with `EINTR`; since a signal that lands
//! just *before* such a call is not seen by it, the watchdog repeats the signal every few
//! milliseconds until the run loop disarms it.
//!
//! One watchdog thread lives as long as its owner (a sandbox serves request after request with
//! the same one), so arming it costs a mutex and a condition variable, not a thread spawn.
//!
//! `join_by` bounds the wait for a thread asked to stop, so an end holds too.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::vcpu::kick::{self, KickError, ThisThread};
use crate::vcpu::Kicker;

/// Joins `handle` if its thread ends by `by`; `None` (the thread left running, detached) if
/// not. `Some(Err(_))`: it panicked.
pub(crate) fn join_by<T>(handle: JoinHandle<T>, by: Instant) -> Option<std::thread::Result<T>> {
    while !handle.is_finished() {
        if Instant::now() >= by {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Some(handle.join())
}

/// How often a fired watchdog repeats its signal (for blocking host calls).
const KICK_INTERVAL: Duration = Duration::from_millis(5);

/// Errors setting up the watchdog.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The kick signal's handler could not be installed.
    #[error(transparent)]
    Signal(#[from] KickError),
    /// The thread could not be started.
    #[error("cannot start the watchdog thread: {0}")]
    Thread(#[source] std::io::Error),
}

#[derive(Default)]
struct State {
    /// The armed deadline, the thread to signal and the vCPU to kick.
    armed: Option<(Instant, ThisThread, Option<Kicker>)>,
    fired: bool,
    shutdown: bool,
}

/// A long-lived watchdog thread.
pub struct Watchdog {
    shared: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog").finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Watchdog {
    /// Installs the kick signal's handler (once per process) and starts the thread, disarmed.
    pub fn new() -> Result<Self, WatchdogError> {
        Self::with_start(Box::new(|| {}))
    }

    /// [`Watchdog::new`], with `on_start` run first on its thread (its seccomp filter).
    pub fn with_start(on_start: Box<dyn FnOnce() + Send>) -> Result<Self, WatchdogError> {
        kick::install_handler()?;
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let theirs = shared.clone();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                on_start();
                let _ = started.send(());
                Self::watch(&theirs)
            })
            .map_err(WatchdogError::Thread)?;
        // Wait until the thread runs: its start-up (the C library's per-thread set-up, the
        // thread name) is then over before a seccomp filter can be applied to all threads.
        let _ = running.recv();
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    fn watch(shared: &(Mutex<State>, Condvar)) {
        let (mutex, cv) = shared;
        let mut state = lock(mutex);
        loop {
            if state.shutdown {
                return;
            }
            state = match state.armed.clone() {
                None => cv.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some((deadline, thread, vcpu)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        state.fired = true;
                        // Kicked under the lock: disarm cannot return while a kick is in flight.
                        match vcpu {
                            Some(vcpu) => vcpu.kick(&thread),
                            None => kick::interrupt(&thread),
                        }
                        cv.wait_timeout(state, KICK_INTERVAL)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    } else {
                        cv.wait_timeout(state, deadline - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                }
            };
        }
    }

    /// Arms the watchdog for the calling thread, which runs `vcpu` (if any): after `timeout`
    /// the vCPU is kicked and the thread signalled until [`Watchdog::disarm`]. Returns a guard
    /// that disarms on drop.
    pub fn arm(&self, timeout: Duration, vcpu: Option<Kicker>) -> Armed<'_> {
        let (mutex, cv) = &*self.shared;
        let mut state = lock(mutex);
        state.armed = Some((Instant::now() + timeout, ThisThread::get(), vcpu));
        state.fired = false;
        cv.notify_all();
        Armed {
            dog: self,
            _here: std::marker::PhantomData,
        }
    }

    /// Stops the kicking. The fired flag stays readable until the next `arm`.
    pub fn disarm(&self) {
        let (mutex, cv) = &*self.shared;
        lock(mutex).armed = None;
        cv.notify_all();
    }

    /// Whether the deadline passed since the last `arm`.
    pub fn fired(&self) -> bool {
        lock(&self.shared.0).fired
    }

    /// Time left before the deadline (`None` when disarmed).
    pub fn remaining(&self) -> Option<Duration> {
        lock(&self.shared.0)
            .armed
            .as_ref()
            .map(|(d, _, _)| d.saturating_duration_since(Instant::now()))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        {
            let (mutex, cv) = &*self.shared;
            let mut state = lock(mutex);
            state.armed = None;
            state.shutdown = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An armed watchdog; disarms it when dropped. It stays on the thread it was armed for
/// (not `Send`): the watchdog may signal that thread until the guard is gone.
#[must_use = "the watchdog disarms when this guard is dropped"]
pub struct Armed<'a> {
    dog: &'a Watchdog,
    _here: std::marker::PhantomData<*const ()>,
}

impl Armed<'_> {
    /// Whether the deadline has passed.
    pub fn fired(&self) -> bool {
        self.dog.fired()
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.dog.remaining().unwrap_or_default()
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.dog.disarm();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fired_watchdog_interrupts_a_blocking_call() {
        let dog = Watchdog::new().unwrap();
        let armed = dog.arm(Duration::from_millis(30), None);
        let started = Instant::now();
        // A blocking read on a pipe nobody writes: only the kick can end it.
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid two-element array for pipe(2) to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut byte = 0u8;
        // SAFETY: reading at most one byte into a live local.
        let n = unsafe { libc::read(fds[0], (&mut byte as *mut u8).cast(), 1) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(n, -1);
        assert_eq!(errno, Some(libc::EINTR));
        assert!(armed.fired());
        assert!(started.elapsed() >= Duration::from_millis(30));
        drop(armed);
        // SAFETY: closing the two descriptors pipe(2) returned.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        // Re-arming clears the fired flag; a run that ends in time never fires.
        let armed = dog.arm(Duration::from_secs(60), None);
        assert!(!armed.fired());
        assert!(armed.remaining() > Duration::from_secs(50));
    }
}
