//! The exit device: a guest ends the VM by writing its exit status to one port.
//!
//! Like QEMU's `isa-debug-exit`, but the byte written *is* the status (QEMU reports
//! `(value << 1) | 1`). `rypervisor run` maps it at port 0xf4.

use std::sync::Arc;

use super::StopSignal;
use crate::bus::BusDevice;

/// The port `rypervisor run` maps the exit device at.
pub const EXIT_PORT: u16 = 0xf4;

/// Ends the VM with the first byte written to it.
#[derive(Debug)]
pub struct ExitDevice {
    stop: Arc<StopSignal>,
}

impl ExitDevice {
    /// An exit device that signals `stop`.
    pub fn new(stop: Arc<StopSignal>) -> Self {
        Self { stop }
    }
}

impl BusDevice for ExitDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&status) = data.first() {
            self.stop.request(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_byte_is_the_status() {
        let stop = StopSignal::new();
        let mut d = ExitDevice::new(stop.clone());
        d.write(0, &[42, 0, 0, 0]);
        assert_eq!(stop.requested(), Some(42));
    }
}
