//! The console's terminal mode while a guest runs.

use std::sync::OnceLock;

/// The settings to restore, readable from a signal handler.
static SAVED: OnceLock<libc::termios> = OnceLock::new();

/// Puts the terminal on stdin in raw mode and restores it when dropped, and on SIGTERM,
/// SIGHUP and SIGQUIT (raw mode turns Ctrl-C into a byte for the guest, so SIGINT only
/// comes from outside and is handled the same way).
pub struct RawMode(bool);

extern "C" fn restore_and_die(sig: libc::c_int) {
    if let Some(saved) = SAVED.get() {
        // SAFETY: tcsetattr, signal and raise are async-signal-safe; `saved` is a
        // fully initialised termios that is never written again.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, saved);
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

impl RawMode {
    /// Raw mode if stdin is a terminal; otherwise nothing.
    pub fn enable_if_tty() -> Self {
        // SAFETY: isatty and tcgetattr/tcsetattr only read or write the termios struct
        // passed, a live local; fd 0 is the process's stdin. The handlers installed
        // only restore the terminal and re-raise the signal.
        unsafe {
            if libc::isatty(0) != 1 {
                return Self(false);
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return Self(false);
            }
            let saved = *SAVED.get_or_init(|| saved);
            for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGINT] {
                libc::signal(sig, restore_and_die as *const () as libc::sighandler_t);
            }
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
