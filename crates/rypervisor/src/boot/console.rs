//! The guest console as the VMM watches it: the serial output goes to the user unchanged,
//! and lines that mean "the guest is ending" are noticed on the way, because a powered-off
//! Linux guest without ACPI just halts every CPU (with an in-kernel irqchip, a halt never
//! reaches the VMM) and a panicking one only says so on the console. Input goes the other
//! way: [`console_input`] feeds the UART from stdin and handles the Ctrl-A escape.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::USER_QUIT;
use crate::devices::serial::EventFdTrigger;
use crate::devices::{SerialDevice, StopSignal};

/// What the console showed.
#[derive(Debug, Default)]
pub struct ConsoleEvents {
    /// "reboot: System halted" or "reboot: Power down": the guest has stopped for good.
    pub halted: AtomicBool,
    /// "Kernel panic - not syncing".
    pub panic: AtomicBool,
    /// "reboot: Restarting system": a reset the guest asked for (`reboot`).
    pub restarting: AtomicBool,
}

/// Lines that mean the guest stopped (printed by `kernel/reboot.c` before halting).
const HALTED: [&str; 2] = ["reboot: System halted", "reboot: Power down"];
const PANIC: &str = "Kernel panic - not syncing";
/// Printed by `kernel_restart()` before a reboot the guest asked for.
const RESTARTING: &str = "reboot: Restarting system";

/// A writer that forwards to `out` and watches complete lines.
pub struct ConsoleWatch {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    events: Arc<ConsoleEvents>,
}

impl ConsoleWatch {
    /// Forwards to `out`, reporting into `events`.
    pub fn new(out: Box<dyn Write + Send>, events: Arc<ConsoleEvents>) -> Self {
        Self {
            out,
            line: Vec::new(),
            events,
        }
    }

    fn check_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        if HALTED.iter().any(|h| text.contains(h)) {
            self.events.halted.store(true, Ordering::Release);
        }
        if text.contains(PANIC) {
            self.events.panic.store(true, Ordering::Release);
        }
        if text.contains(RESTARTING) {
            self.events.restarting.store(true, Ordering::Release);
        }
        self.line.clear();
    }
}

impl Write for ConsoleWatch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.check_line();
            } else if self.line.len() < 4096 {
                self.line.push(b);
            }
        }
        // The writer behind is a bounded output whose own thread writes promptly: no flush.
        self.out.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Reads stdin-like `input` and feeds the guest console, handling the Ctrl-A escape:
/// Ctrl-A x ends the VM, Ctrl-A Ctrl-A sends one Ctrl-A. Runs until `input` ends or the VM
/// is gone. Input waits in the UART's bounded queue; when the guest does not read it for a
/// while, what does not fit is dropped (said once), so this thread keeps reading and Ctrl-A x
/// always works.
pub fn console_input(
    mut input: Box<dyn Read + Send>,
    serial: Arc<Mutex<SerialDevice<EventFdTrigger>>>,
    stop: Arc<StopSignal>,
    filter: Option<seccompiler::BpfProgram>,
) -> std::io::Result<JoinHandle<()>> {
    let queue = serial
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .input_queue();
    std::thread::Builder::new()
        .name("console-input".into())
        .spawn(move || {
            crate::seccomp::confine_role("console input", filter);
            let mut buf = [0u8; 256];
            let mut escape = Escape::default();
            let mut dropped = false;
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => return queue.end(),
                    Ok(n) => n,
                };
                let Some(out) = escape.filter(&buf[..n]) else {
                    stop.request(USER_QUIT);
                    return;
                };
                // Wait for room without holding the device's lock, then let the UART take it.
                match queue.push_for(&out, PATIENCE) {
                    None => return,
                    Some(n) if n < out.len() && !dropped => {
                        dropped = true;
                        tracing::warn!(
                            "console input dropped: the guest is not reading its console"
                        );
                    }
                    Some(_) => {}
                }
                serial
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pump_input();
            }
        })
}

/// How long console input waits for the guest to make room before it is dropped.
const PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

/// The Ctrl-A escape state.
#[derive(Debug, Default)]
struct Escape {
    pending: bool,
}

impl Escape {
    /// The bytes for the guest, or `None` on Ctrl-A x.
    fn filter(&mut self, input: &[u8]) -> Option<Vec<u8>> {
        const CTRL_A: u8 = 0x01;
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            match (self.pending, b) {
                (false, CTRL_A) => self.pending = true,
                (false, b) => out.push(b),
                (true, b'x') | (true, b'X') => return None,
                (true, b) => {
                    self.pending = false;
                    out.push(CTRL_A);
                    if b != CTRL_A {
                        out.push(b);
                    }
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::SharedBuffer;

    #[test]
    fn ctrl_a_escapes() {
        let mut e = Escape::default();
        assert_eq!(e.filter(b"ab\x01\x01c"), Some(b"ab\x01c".to_vec()));
        assert_eq!(e.filter(b"\x01"), Some(vec![]));
        assert_eq!(e.filter(b"z"), Some(b"\x01z".to_vec()));
        assert_eq!(e.filter(b"q\x01x"), None);
    }

    #[test]
    fn notices_halt_and_panic_lines_and_passes_everything_on() {
        let out = SharedBuffer::default();
        let events = Arc::new(ConsoleEvents::default());
        let mut w = ConsoleWatch::new(Box::new(out.clone()), events.clone());
        for b in
            b"[    1.0] Kernel panic - not syncing: Attempted to kill init!\r\n[ 2.0] reboot: Sys"
        {
            w.write_all(&[*b]).unwrap();
        }
        assert!(events.panic.load(Ordering::Acquire));
        assert!(
            !events.halted.load(Ordering::Acquire),
            "line not complete yet"
        );
        w.write_all(b"tem halted\r\n").unwrap();
        assert!(events.halted.load(Ordering::Acquire));
        assert!(String::from_utf8(out.contents())
            .unwrap()
            .ends_with("reboot: System halted\r\n"));
    }
}
