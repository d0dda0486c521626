//! Kicking a vCPU out of `KVM_RUN` from another thread, so that a stop cannot be lost.
//!
//! A guest spinning at CPL3 never exits on its own. To stop it, another thread (the
//! watchdog, the boot supervisor) does two things, in this order:
//!
//! 1. it sets `kvm_run.immediate_exit`: a `KVM_RUN` that *starts* after this returns `EINTR`
//!    at once, without entering the guest;
//! 2. it sends the kick signal (a real-time signal with a do-nothing handler installed
//!    without `SA_RESTART`) to the vCPU's thread: a `KVM_RUN` that is *running* returns
//!    `EINTR`, and so does a blocking host call the thread is in.
//!
//! Whatever the vCPU thread is doing when the kick comes, its next `KVM_RUN` returns, and it
//! then checks why it was kicked. Without step 1, a signal that lands while the thread is in
//! the VMM (between two exits) would be lost and the guest would run on. Firecracker kicks
//! the same way; it sets `immediate_exit` from the signal handler through a thread-local
//! pointer to the vCPU, while here the kicker writes the byte itself under a lock that the
//! vCPU's drop also takes, so no pointer can outlive the `kvm_run` mapping and the signal
//! handler stays empty (and async-signal-safe).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Once};

use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// Errors installing the kick signal's handler.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the vCPU kick signal handler: {0}")]
pub struct KickError(#[source] vmm_sys_util::errno::Error);

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the kick signal's do-nothing handler (once per process). Without a handler the
/// signal would kill the process; with one installed without `SA_RESTART`, it interrupts
/// `KVM_RUN` and blocking calls with `EINTR`.
pub fn install_handler() -> Result<(), KickError> {
    static REGISTER: Once = Once::new();
    let mut registered = Ok(());
    REGISTER.call_once(|| registered = register_signal_handler(signal(), noop_handler));
    registered.map_err(KickError)
}

/// The address of one vCPU's `kvm_run.immediate_exit` byte, 0 once the vCPU is gone.
#[derive(Debug, Default)]
pub(crate) struct ImmediateExit {
    addr: Mutex<usize>,
}

impl ImmediateExit {
    /// Shares `byte` (inside a live `kvm_run` mapping) with kickers.
    pub(crate) fn new(byte: *mut u8) -> Arc<Self> {
        Arc::new(Self {
            addr: Mutex::new(byte as usize),
        })
    }

    /// Stores `value` into the byte, if the vCPU still exists; returns the previous value.
    pub(crate) fn swap(&self, value: u8) -> u8 {
        let addr = self.addr.lock().unwrap_or_else(|p| p.into_inner());
        if *addr == 0 {
            return 0;
        }
        // SAFETY: a non-zero address points into the vCPU's `kvm_run` mapping, which stays
        // mapped until the vCPU is dropped; `forget` (called by the vCPU's drop before the
        // mapping goes) zeroes it under this same lock, so the byte is live here. It is one
        // byte, so always aligned; the kernel reads it with READ_ONCE at KVM_RUN entry, and
        // every user-space access goes through this atomic.
        let byte = unsafe { AtomicU8::from_ptr(*addr as *mut u8) };
        byte.swap(value, Ordering::SeqCst)
    }

    /// The vCPU is going away: no more writes.
    pub(crate) fn forget(&self) {
        *self.addr.lock().unwrap_or_else(|p| p.into_inner()) = 0;
    }
}

/// A handle that kicks one vCPU out of `KVM_RUN`; cheap to clone and to send to other
/// threads. Kicking a vCPU that no longer exists does nothing.
#[derive(Clone, Debug)]
pub struct Kicker {
    exit: Arc<ImmediateExit>,
}

impl Kicker {
    pub(crate) fn new(exit: Arc<ImmediateExit>) -> Self {
        Self { exit }
    }

    /// Kicks the vCPU running on `thread`: sets `immediate_exit`, then signals the thread.
    /// Whoever kicks sets their reason (a flag, a fired deadline) *before* kicking; the vCPU
    /// thread checks it when its `KVM_RUN` returns.
    pub fn kick(&self, thread: &impl Killable) {
        self.exit.swap(1);
        interrupt(thread);
    }
}

/// Sends the kick signal to `thread`: a blocking call it is in returns `EINTR`.
pub fn interrupt(thread: &impl Killable) {
    // ESRCH (the thread just ended) is fine: there is nothing left to interrupt.
    let _ = thread.kill(signal());
}

/// The kick signal held back on the calling thread until this is dropped (a kick meanwhile
/// is taken then; its `immediate_exit` stays set, so the next `KVM_RUN` still returns at
/// once): for host calls that must not fail with `EINTR`, such as creating a VM.
pub struct Deferred(libc::sigset_t);

impl Deferred {
    /// Blocks the kick signal on this thread.
    pub fn new() -> Self {
        // SAFETY: an all-zero sigset_t is a valid (empty) set for sigemptyset to initialise;
        // pthread_sigmask only reads `set` and writes `old`, both live locals.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal());
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            Self(old)
        }
    }
}

impl Default for Deferred {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new`, a valid sigset_t.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

/// The calling thread, as a target for kicks ([`Killable`] is implemented by vmm-sys-util for
/// `JoinHandle`s; this is the same for a thread that was not spawned by us, e.g. `main`).
/// Crate-private: only the watchdog holds one, and only while the thread is running (see
/// the `Killable` impl).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ThisThread(libc::pthread_t);

impl ThisThread {
    /// The calling thread.
    pub(crate) fn get() -> Self {
        // SAFETY: pthread_self has no preconditions and cannot fail.
        Self(unsafe { libc::pthread_self() })
    }
}

// SAFETY: `pthread_handle` returns the id of a thread that was running when `get` was called.
// Every holder (the watchdog, while armed) drops the handle before that thread can end: the
// armed thread itself disarms before returning from its run.
unsafe impl Killable for ThisThread {
    fn pthread_handle(&self) -> libc::pthread_t {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_byte_is_never_written() {
        let mut byte = 0u8;
        let exit = ImmediateExit::new(&mut byte);
        assert_eq!(exit.swap(1), 0);
        assert_eq!(exit.swap(0), 1);
        exit.forget();
        assert_eq!(exit.swap(1), 0);
        assert_eq!(byte, 0, "no write after forget");
    }
}
