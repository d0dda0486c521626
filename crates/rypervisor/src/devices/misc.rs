//! Small port devices a PC guest expects to find.
//!
//! - [`Sink`]: answers reads with all ones and ignores writes, without counting the access as
//!   a miss: the POST port 0x80 (Linux's I/O delay) and the PCI configuration ports
//!   0xcf8–0xcff (a guest probing for PCI finds no host bridge).
//! - [`BootMarker`]: Firecracker-compatible boot timer: the guest writes 123 to port 0x3f0 when
//!   it has booted, and the VMM records the time.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::bus::BusDevice;

/// A device that accepts everything and returns all ones.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sink;

impl BusDevice for Sink {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// The boot-marker port.
pub const BOOT_MARKER_PORT: u16 = 0x3f0;
/// The value that marks "boot complete".
pub const BOOT_MARKER_VALUE: u8 = 123;

/// Records when the guest writes [`BOOT_MARKER_VALUE`] to [`BOOT_MARKER_PORT`].
#[derive(Debug, Clone)]
pub struct BootMarker {
    origin: Instant,
    /// Time since `origin` of the first marker write.
    pub seen: Arc<Mutex<Option<std::time::Duration>>>,
}

impl BootMarker {
    /// A marker measuring from `origin` (usually process start).
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            seen: Arc::default(),
        }
    }

    /// Time since `origin` of the first marker write, if there was one.
    pub fn seen(&self) -> Option<std::time::Duration> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BusDevice for BootMarker {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first() == Some(&BOOT_MARKER_VALUE) {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.is_none() {
                let t = self.origin.elapsed();
                *seen = Some(t);
                tracing::info!("guest boot marker after {:.3} s", t.as_secs_f64());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_records_the_first_magic_write() {
        let mut m = BootMarker::new(Instant::now());
        m.write(0, &[1]);
        assert!(m.seen.lock().unwrap().is_none());
        m.write(0, &[BOOT_MARKER_VALUE]);
        let first = m.seen.lock().unwrap().unwrap();
        m.write(0, &[BOOT_MARKER_VALUE]);
        assert_eq!(m.seen.lock().unwrap().unwrap(), first);
        let mut b = [0u8; 4];
        Sink.read(0, &mut b);
        assert_eq!(b, [0xff; 4]);
    }
}
