//! The 8250/16550 UART: vm-superio's [`Serial`] on the bus, its output wired to a writer
//! (stdout for `rypervisor run`) and its input, once the guest first reads the UART, fed
//! from a reader (stdin) by a helper thread.

use std::io::{Read, Write};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread;

use vm_superio::{Serial, Trigger};

use crate::bus::BusDevice;

/// The legacy COM1 base port.
pub const COM1: u16 = 0x3f8;
/// Registers the UART occupies.
pub const REGISTERS: u64 = 8;
/// Offset of the line status register.
const LSR: u64 = 5;
/// Offset of the receive buffer register.
const RBR: u64 = 0;

/// An interrupt trigger that goes nowhere, for machines without an interrupt controller
/// (`rypervisor run`: guests there poll the UART).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoInterrupt;

impl Trigger for NoInterrupt {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// An interrupt trigger backed by an eventfd, for an irqfd (`KVM_IRQFD`): writing the eventfd
/// raises the guest interrupt line it is registered for.
#[derive(Debug)]
pub struct EventFdTrigger(pub vmm_sys_util::eventfd::EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

enum Input {
    /// Not read yet: the source is untouched until the guest reads the UART.
    Idle(Box<dyn Read + Send>),
    /// Bytes arrive from a reader thread.
    Running(Receiver<Vec<u8>>),
    /// No input (none configured, or end of file).
    Closed,
}

/// A UART: vm-superio's register model plus host-side input and output.
pub struct SerialDevice<T: Trigger = NoInterrupt> {
    uart: Serial<T, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
    input: Input,
    /// Bytes received from the input but not yet taken by the FIFO.
    pending: Vec<u8>,
    /// Whether a failed output write was already reported (reported once, not per byte).
    output_failed: bool,
}

impl<T: Trigger> SerialDevice<T> {
    /// A UART writing to `out`, reading from `input` (if any), raising `irq` when it
    /// wants attention.
    pub fn new(irq: T, out: Box<dyn Write + Send>, input: Option<Box<dyn Read + Send>>) -> Self {
        Self {
            uart: Serial::new(irq, out),
            input: input.map_or(Input::Closed, Input::Idle),
            pending: Vec::new(),
            output_failed: false,
        }
    }

    /// Moves available input into the UART's receive FIFO, without blocking.
    fn pump_input(&mut self) {
        self.input = match std::mem::replace(&mut self.input, Input::Closed) {
            Input::Idle(source) => start_reader(source),
            other => other,
        };
        if let Input::Running(rx) = &self.input {
            loop {
                match rx.try_recv() {
                    Ok(bytes) => self.pending.extend_from_slice(&bytes),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.input = Input::Closed;
                        break;
                    }
                }
            }
        }
        if !self.pending.is_empty() {
            if let Ok(n) = self.uart.enqueue_raw_bytes(&self.pending) {
                self.pending.drain(..n);
            }
        }
    }

    /// Queues host input pushed by the VMM (an interrupt-driven console): as much as the
    /// receive FIFO takes now (raising the interrupt), the rest when the guest drains it.
    pub fn push_input(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        self.pump_input();
    }

    /// Flushes the output stream.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

/// Reads `source` on a helper thread, so a guest polling the UART never blocks the vCPU.
fn start_reader(mut source: Box<dyn Read + Send>) -> Input {
    let (tx, rx) = mpsc::channel();
    let spawned = thread::Builder::new()
        .name("serial-input".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            loop {
                match source.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    if spawned.is_ok() {
        Input::Running(rx)
    } else {
        Input::Closed
    }
}

impl<T: Trigger + Send> BusDevice for SerialDevice<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let input_possible = !matches!(self.input, Input::Closed) || !self.pending.is_empty();
        if (offset == LSR || offset == RBR) && input_possible {
            self.pump_input();
        }
        // The UART's registers are one byte wide; wider reads see the register in the low byte.
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            if let Err(e) = self.uart.write(offset as u8, b) {
                if !self.output_failed {
                    self.output_failed = true;
                    tracing::warn!("serial output failed (further failures not reported): {e:?}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::SharedBuffer;

    #[test]
    fn transmit_goes_to_the_writer() {
        let out = SharedBuffer::default();
        let mut s = SerialDevice::new(NoInterrupt, Box::new(out.clone()), None);
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(out.contents(), b"hi\n");
    }

    #[test]
    fn input_arrives_after_the_guest_polls() {
        let mut s = SerialDevice::new(
            NoInterrupt,
            Box::new(SharedBuffer::default()),
            Some(Box::new(std::io::Cursor::new(b"ab".to_vec()))),
        );
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 2 && std::time::Instant::now() < deadline {
            let mut lsr = [0u8];
            s.read(LSR, &mut lsr);
            if lsr[0] & 1 != 0 {
                let mut b = [0u8];
                s.read(RBR, &mut b);
                got.push(b[0]);
            }
        }
        assert_eq!(got, b"ab");
    }
}
