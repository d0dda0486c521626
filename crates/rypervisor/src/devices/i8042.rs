//! The i8042 keyboard controller, as much as a Linux guest needs to reboot: vm-superio's
//! [`I8042Device`] (reads are an empty controller; the "pulse reset line" command, 0xfe to the
//! command port, fires its reset trigger) on the bus, with the trigger ending the VM.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::StopSignal;
use crate::bus::BusDevice;

/// Data port.
pub const DATA_PORT: u16 = 0x60;
/// Ports the device covers, from [`DATA_PORT`] (offsets 0, data, and 4, command/status).
pub const PORTS: u64 = 5;

/// Exit status the VM gets when the guest resets through the i8042.
pub const RESET_STATUS: u8 = 0;

/// The reset line: a request to end the VM.
#[derive(Debug)]
pub struct ResetLine(Arc<StopSignal>);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(RESET_STATUS);
        Ok(())
    }
}

/// The i8042 on the bus.
#[derive(Debug)]
pub struct I8042(I8042Device<ResetLine>);

impl I8042 {
    /// A controller that raises `stop` on a reset command.
    pub fn new(stop: Arc<StopSignal>) -> Self {
        Self(I8042Device::new(ResetLine(stop)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.0.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            let Ok(()) = self.0.write(offset, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMAND_OFFSET: u64 = 4;
    const CMD_RESET: u8 = 0xfe;

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
    }
}
