//! Device models. Each knows its registers and nothing of buses or ports: the machine maps
//! it on the [`Bus`](crate::bus::Bus) and hands it what it needs to reach the outside world
//! (an output stream, an interrupt trigger, a [`StopSignal`]). [`output`] keeps a slow or
//! unread output stream from stalling a vCPU.

pub mod exit;
pub mod i8042;
pub mod misc;
pub mod output;
pub mod rtc;
pub mod serial;

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

pub use exit::ExitDevice;
pub use serial::{NoInterrupt, SerialDevice};

/// A request from a device to end the VM with an exit status (the first request wins).
///
/// The exit loop checks it after each bus access: one atomic load.
#[derive(Debug, Default)]
pub struct StopSignal {
    /// 0: running; otherwise 0x100 | status.
    state: AtomicU32,
}

impl StopSignal {
    /// A new, unsignalled handle.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Asks the VMM to end the VM with `status`. Later requests are ignored.
    pub fn request(&self, status: u8) {
        let _ = self.state.compare_exchange(
            0,
            0x100 | u32::from(status),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The requested status, if any.
    pub fn requested(&self) -> Option<u8> {
        match self.state.load(Ordering::Acquire) {
            0 => None,
            s => Some(s as u8),
        }
    }
}

/// An in-memory output sink that can be cloned and read back: for tests, examples, and
/// embedding a VM whose console should not go to stdout.
#[derive(Clone, Debug, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// Everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_request_wins() {
        let s = StopSignal::new();
        assert_eq!(s.requested(), None);
        s.request(0);
        s.request(7);
        assert_eq!(s.requested(), Some(0));
    }
}
