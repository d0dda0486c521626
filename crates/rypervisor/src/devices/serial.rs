//! The 8250/16550 UART: vm-superio's [`Serial`] on the bus, its output wired to a writer
//! (stdout for `rypervisor run`, through a [`BoundedOutput`](super::output::BoundedOutput))
//! and its input, once the guest first reads the UART, fed from a reader (stdin) by a helper
//! thread through a bounded [`InputQueue`].

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex};
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

/// Host input waiting for the guest: a small bounded buffer between the thread that reads
/// the host side (stdin) and the UART's 64-byte receive FIFO. The reading thread waits while
/// it is full, so input the guest does not take costs at most [`INPUT_BUFFER`] bytes, like a
/// real UART behind a terminal with flow control.
#[derive(Debug, Default)]
pub struct InputQueue {
    state: Mutex<InputState>,
    room: Condvar,
}

#[derive(Debug, Default)]
struct InputState {
    bytes: VecDeque<u8>,
    /// The host side ended (EOF): no more input.
    ended: bool,
    /// The device is gone: producers stop.
    closed: bool,
    /// The guest has read the UART: a parked reader may start reading.
    wanted: bool,
}

/// Room for host input beyond the UART's FIFO.
pub const INPUT_BUFFER: usize = 4096;

impl InputQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, InputState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `data`, waiting while the buffer is full. Returns false once the device is
    /// gone (the producer should stop).
    pub fn push(&self, mut data: &[u8]) -> bool {
        let mut state = self.lock();
        while !data.is_empty() {
            if state.closed {
                return false;
            }
            let room = INPUT_BUFFER.saturating_sub(state.bytes.len());
            if room == 0 {
                state = self.room.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let n = room.min(data.len());
            state.bytes.extend(&data[..n]);
            data = &data[n..];
        }
        !state.closed
    }

    /// Queues `data`, waiting at most `patience` for room; returns how many bytes were queued
    /// (the rest is the caller's to drop or retry), or `None` once the device is gone.
    pub fn push_for(&self, data: &[u8], patience: std::time::Duration) -> Option<usize> {
        let deadline = std::time::Instant::now() + patience;
        let mut state = self.lock();
        let mut done = 0;
        while done < data.len() {
            if state.closed {
                return None;
            }
            let room = INPUT_BUFFER.saturating_sub(state.bytes.len());
            if room > 0 {
                let n = room.min(data.len() - done);
                state.bytes.extend(&data[done..done + n]);
                done += n;
                continue;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .room
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Some(done)
    }

    /// The guest wants input: wakes a parked reader (once).
    fn want(&self) {
        let mut state = self.lock();
        if !state.wanted {
            state.wanted = true;
            drop(state);
            self.room.notify_all();
        }
    }

    /// Waits until the guest wants input; false if the device went away first.
    fn wait_until_wanted(&self) -> bool {
        let mut state = self.lock();
        while !state.wanted && !state.closed {
            state = self.room.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        !state.closed
    }

    /// The host side has no more input.
    pub fn end(&self) {
        self.lock().ended = true;
    }

    /// Moves up to `max` queued bytes into `sink` (which takes as many as it can and says
    /// how many).
    fn drain_into(&self, max: usize, sink: impl FnOnce(&[u8]) -> usize) {
        let mut state = self.lock();
        if state.bytes.is_empty() || max == 0 {
            return;
        }
        let mut chunk = [0u8; 64];
        let n = max.min(chunk.len()).min(state.bytes.len());
        for (d, s) in chunk.iter_mut().zip(state.bytes.iter()) {
            *d = *s;
        }
        let taken = sink(&chunk[..n]).min(n);
        state.bytes.drain(..taken);
        drop(state);
        self.room.notify_all();
    }

    fn is_done(&self) -> bool {
        let state = self.lock();
        state.ended && state.bytes.is_empty()
    }

    fn close(&self) {
        self.lock().closed = true;
        self.room.notify_all();
    }
}

enum Input {
    /// Not read yet: the source is untouched until the guest reads the UART.
    Idle(Box<dyn Read + Send>),
    /// Bytes arrive through the queue (from our reader thread, or pushed by the VMM).
    Queued,
    /// No input configured.
    None,
}

/// A UART: vm-superio's register model plus host-side input and output.
pub struct SerialDevice<T: Trigger = NoInterrupt> {
    uart: Serial<T, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
    input: Input,
    queue: Arc<InputQueue>,
    /// Whether a failed output write was already reported (reported once, not per byte).
    output_failed: bool,
}

impl<T: Trigger> Drop for SerialDevice<T> {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl<T: Trigger> SerialDevice<T> {
    /// A UART writing to `out`, reading from `input` (if any), raising `irq` when it
    /// wants attention.
    pub fn new(irq: T, out: Box<dyn Write + Send>, input: Option<Box<dyn Read + Send>>) -> Self {
        Self {
            uart: Serial::new(irq, out),
            input: input.map_or(Input::None, Input::Idle),
            queue: Arc::default(),
            output_failed: false,
        }
    }

    /// The input queue, for a VMM that pushes host input itself (an interrupt-driven
    /// console): push there (it waits while full; never hold the device's lock meanwhile),
    /// then call [`SerialDevice::pump_input`].
    pub fn input_queue(&mut self) -> Arc<InputQueue> {
        self.input = Input::Queued;
        self.queue.clone()
    }

    /// Starts the input reader now, parked until the guest first reads the UART (so input
    /// the guest never asks for is never read), with `on_start` run first on its thread
    /// (its seccomp filter): a confined vCPU thread cannot start threads later.
    pub fn start_input_parked(
        &mut self,
        on_start: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<()> {
        if let Input::Idle(source) = std::mem::replace(&mut self.input, Input::Queued) {
            let queue = self.queue.clone();
            let parked = Box::new(move || {
                on_start();
                queue.wait_until_wanted()
            });
            if let Err(e) = start_reader(source, self.queue.clone(), parked) {
                self.input = Input::None;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Moves queued input into the UART's receive FIFO (raising the interrupt), without
    /// blocking; starts the reader thread on the first call (or wakes the parked one).
    pub fn pump_input(&mut self) {
        if let Input::Idle(source) = std::mem::replace(&mut self.input, Input::Queued) {
            if start_reader(source, self.queue.clone(), Box::new(|| true)).is_err() {
                self.input = Input::None;
            }
        }
        self.queue.want();
        let uart = &mut self.uart;
        self.queue.drain_into(uart.fifo_capacity(), |bytes| {
            uart.enqueue_raw_bytes(bytes).unwrap_or(0)
        });
    }

    /// Flushes the output stream.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

/// Reads `source` on a helper thread into `queue`, so a guest polling the UART never blocks
/// the vCPU; `first` runs first on the thread (false: stop without reading).
fn start_reader(
    mut source: Box<dyn Read + Send>,
    queue: Arc<InputQueue>,
    first: Box<dyn FnOnce() -> bool + Send>,
) -> std::io::Result<()> {
    thread::Builder::new()
        .name("serial-input".into())
        .spawn(move || {
            if !first() {
                return;
            }
            let mut buf = [0u8; 256];
            loop {
                match source.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) if !queue.push(&buf[..n]) => return,
                    Ok(_) => {}
                }
            }
            queue.end();
        })
        .map(drop)
}

impl<T: Trigger + Send> BusDevice for SerialDevice<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let input_possible = match self.input {
            Input::None => false,
            Input::Idle(_) => true,
            Input::Queued => !self.queue.is_done(),
        };
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
