//! Just enough of the i8042 keyboard controller for a Linux guest to reboot: the "pulse
//! reset line" command (0xfe to the command port) ends the VM. Reads return an empty
//! controller (no data pending, no keyboard), so `i8042` probing finds nothing.

use std::sync::Arc;

use super::StopSignal;
use crate::bus::BusDevice;

/// Data port.
pub const DATA_PORT: u16 = 0x60;
/// Command/status port (the device spans 0x60..=0x64; offsets 0 and 4 matter).
pub const COMMAND_OFFSET: u64 = 4;
/// Ports the device covers, from [`DATA_PORT`].
pub const PORTS: u64 = 5;
const CMD_RESET: u8 = 0xfe;

/// Exit status the VM gets when the guest resets through the i8042.
pub const RESET_STATUS: u8 = 0;

/// The i8042 model.
#[derive(Debug)]
pub struct I8042 {
    stop: Arc<StopSignal>,
    reset: bool,
}

impl I8042 {
    /// A controller that raises `stop` on a reset command.
    pub fn new(stop: Arc<StopSignal>) -> Self {
        Self { stop, reset: false }
    }

    /// Whether the guest asked for a reset.
    pub fn reset_requested(&self) -> bool {
        self.reset
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET) {
            self.reset = true;
            self.stop.request(RESET_STATUS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_stops_the_vm() {
        let stop = StopSignal::new();
        let mut k = I8042::new(stop.clone());
        let mut b = [0xff];
        k.read(COMMAND_OFFSET, &mut b);
        assert_eq!(b, [0], "no data, no keyboard");
        k.write(0, &[CMD_RESET]);
        assert_eq!(
            stop.requested(),
            None,
            "0xfe to the data port is not a reset"
        );
        k.write(COMMAND_OFFSET, &[CMD_RESET]);
        assert_eq!(stop.requested(), Some(RESET_STATUS));
        assert!(k.reset_requested());
    }
}
