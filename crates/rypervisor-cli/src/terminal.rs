//! The console's terminal mode while a guest runs, and the host signals that end the guest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use rypervisor::boot::SIGNALLED;
use rypervisor::devices::StopSignal;

/// The settings to restore.
static SAVED: OnceLock<libc::termios> = OnceLock::new();
/// Where a signal asks the running VM to stop.
static STOP: OnceLock<Arc<StopSignal>> = OnceLock::new();
/// A signal asked already: a second one ends the process at once (a stop that hangs).
static ASKED: AtomicBool = AtomicBool::new(false);

/// The signals that end a VM gracefully. Raw mode turns Ctrl-C into a byte for the guest,
/// so SIGINT only comes from outside (or from a terminal not in raw mode: stdin redirected).
const SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGINT];

/// Puts the terminal on stdin in raw mode and restores it when dropped.
pub struct RawMode(bool);

impl RawMode {
    /// Raw mode if stdin is a terminal; otherwise nothing.
    pub fn enable_if_tty() -> Self {
        // SAFETY: isatty and tcgetattr/tcsetattr only read or write the termios struct
        // passed, a live local; fd 0 is the process's stdin.
        unsafe {
            if libc::isatty(0) != 1 {
                return Self(false);
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return Self(false);
            }
            let saved = *SAVED.get_or_init(|| saved);
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            raw.c_oflag |= libc::OPOST | libc::ONLCR; // keep "\n" → "\r\n" for our own messages
            libc::tcsetattr(0, libc::TCSANOW, &raw);
            Self(true)
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let (true, Some(saved)) = (self.0, SAVED.get()) {
            // SAFETY: restores the settings read in enable_if_tty on the same fd.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
        }
    }
}

/// A signal asks the VM to stop, and nothing else: it may land on any of the VMM's threads,
/// whose seccomp filters allow a vCPU or the event loop no terminal or signal calls, so the
/// supervisor does the rest (devices stopped, vsock's socket file removed, the terminal
/// restored) and then the process dies by the same signal ([`die_by`]).
///
/// A second signal while the stop is under way ends the process at once (`_exit`, which
/// every filter allows), as a user pressing Ctrl-C again or a service manager insisting
/// expects.
extern "C" fn ask_to_stop(sig: libc::c_int) {
    if ASKED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe and ends the process.
        unsafe { libc::_exit(128 + sig) };
    }
    if let Some(stop) = STOP.get() {
        // (An atomic compare-and-swap: async-signal-safe. Signal numbers are below 0x80.)
        stop.request(SIGNALLED | (sig as u8 & !SIGNALLED));
    }
}

/// From now on SIGTERM, SIGHUP, SIGQUIT and SIGINT end the VM behind `stop` as its own end
/// would (its `Ending` is then `Signal`).
pub fn stop_on_signals(stop: Arc<StopSignal>) {
    let _ = STOP.set(stop);
    for sig in SIGNALS {
        // SAFETY: the handler makes atomic stores and, on a second signal, calls `_exit`:
        // both async-signal-safe.
        unsafe { libc::signal(sig, ask_to_stop as *const () as libc::sighandler_t) };
    }
}

/// Dies by `sig` (the VM ended on it, everything undone), so a shell or a service manager
/// sees what it sent: status 128 + `sig`, or the signal itself.
pub fn die_by(sig: libc::c_int) -> ! {
    // SAFETY: restoring a signal's default action and raising it on ourselves.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

/// A signal's name, for the line saying why the VM stopped.
pub fn signal_name(sig: libc::c_int) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGQUIT => "SIGQUIT".into(),
        libc::SIGINT => "SIGINT".into(),
        n => format!("signal {n}"),
    }
}
