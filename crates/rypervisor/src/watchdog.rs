//! The time limit: a watchdog thread that kicks a vCPU thread out of `KVM_RUN`.
//!
//! A guest spinning at CPL3 never exits on its own, so the only way to stop it is from another
//! thread: after the deadline the watchdog sends a real-time signal (with a do-nothing handler
//! installed without `SA_RESTART`) to the thread running the vCPU. `KVM_RUN` then returns
//! `EINTR`, and so does a blocking host `read` the VMM is doing for the guest. The kick repeats
//! every few milliseconds until the run loop disarms the watchdog, because a signal that lands
//! while the thread is in the VMM rather than in the guest is otherwise lost.
//!
//! One watchdog thread lives as long as its owner (a sandbox serves request after request with
//! the same one), so arming it costs a mutex and a condition variable, not a thread spawn.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// How often a fired watchdog repeats its kick.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

/// Errors setting up the watchdog.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The kick signal's handler could not be installed.
    #[error("cannot install the watchdog's signal handler: {0}")]
    Signal(String),
    /// The thread could not be started.
    #[error("cannot start the watchdog thread: {0}")]
    Thread(#[source] std::io::Error),
}

#[derive(Default)]
struct State {
    /// The armed deadline and the thread to kick.
    armed: Option<(Instant, Target)>,
    fired: bool,
    shutdown: bool,
}

/// A thread to signal.
#[derive(Clone, Copy)]
struct Target(libc::pthread_t);

// SAFETY: a Target is only stored while the watchdog is armed, and `Watchdog::disarm` (called
// by the armed thread before it returns from its run, also through `Armed`'s Drop) removes it
// under the same lock the kicking thread holds while it signals; so the target thread is alive
// for every `pthread_kill`.
unsafe impl Killable for Target {
    fn pthread_handle(&self) -> libc::pthread_t {
        self.0
    }
}

extern "C" fn noop_signal_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal used to kick a vCPU thread.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the kick signal's do-nothing handler (once per process), for any code that
/// kicks vCPU threads out of `KVM_RUN` itself.
pub fn install_kick_handler() -> Result<(), WatchdogError> {
    static REGISTER: Once = Once::new();
    let mut registered = Ok(());
    REGISTER.call_once(|| registered = register_signal_handler(kick_signal(), noop_signal_handler));
    registered.map_err(|e| WatchdogError::Signal(e.to_string()))
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
        static REGISTER: Once = Once::new();
        let mut registered = Ok(());
        REGISTER
            .call_once(|| registered = register_signal_handler(kick_signal(), noop_signal_handler));
        registered.map_err(|e| WatchdogError::Signal(e.to_string()))?;
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let theirs = shared.clone();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
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
            state = match state.armed {
                None => cv.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some((deadline, target)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        state.fired = true;
                        // Kicked under the lock: disarm cannot return while a kick is in flight.
                        let _ = target.kill(kick_signal());
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

    /// Arms the watchdog for the calling thread: after `timeout` it is kicked until
    /// [`Watchdog::disarm`]. Returns a guard that disarms on drop.
    pub fn arm(&self, timeout: Duration) -> Armed<'_> {
        // SAFETY: pthread_self has no preconditions.
        let me = Target(unsafe { libc::pthread_self() });
        let (mutex, cv) = &*self.shared;
        let mut state = lock(mutex);
        state.armed = Some((Instant::now() + timeout, me));
        state.fired = false;
        cv.notify_all();
        Armed { dog: self }
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
            .map(|(d, _)| d.saturating_duration_since(Instant::now()))
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

/// An armed watchdog; disarms it when dropped.
#[must_use = "the watchdog disarms when this guard is dropped"]
pub struct Armed<'a> {
    dog: &'a Watchdog,
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
        let armed = dog.arm(Duration::from_millis(30));
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
        let armed = dog.arm(Duration::from_secs(60));
        assert!(!armed.fired());
        assert!(armed.remaining() > Duration::from_secs(50));
    }
}
