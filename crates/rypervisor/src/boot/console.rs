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
}

/// Lines that mean the guest stopped (printed by `kernel/reboot.c` before halting).
const HALTED: [&str; 2] = ["reboot: System halted", "reboot: Power down"];
const PANIC: &str = "Kernel panic - not syncing";

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
        // The guest's console is unbuffered: flush at each write (one byte per UART write).
        self.out.write_all(buf)?;
        if buf.contains(&b'\n') {
            self.out.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Reads stdin-like `input` and feeds the guest console, handling the Ctrl-A escape:
/// Ctrl-A x ends the VM, Ctrl-A Ctrl-A sends one Ctrl-A. Runs until `input` ends.
pub fn console_input(
    mut input: Box<dyn Read + Send>,
    serial: Arc<Mutex<SerialDevice<EventFdTrigger>>>,
    stop: Arc<StopSignal>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("console-input".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            let mut escape = false;
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut out = Vec::with_capacity(n);
                for &b in &buf[..n] {
                    match (escape, b) {
                        (false, 0x01) => escape = true,
                        (false, b) => out.push(b),
                        (true, b'x') | (true, b'X') => {
                            stop.request(USER_QUIT);
                            return;
                        }
                        (true, b) => {
                            escape = false;
                            out.push(0x01);
                            if b != 0x01 {
                                out.push(b);
                            }
                        }
                    }
                }
                if !out.is_empty() {
                    serial
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_input(&out);
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::SharedBuffer;

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
