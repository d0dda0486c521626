//! Narration: what the VMM does, step by step, for learners (`--explain`) and tools (`--json`).
//!
//! The builder and the exit loop report [`Event`]s to an [`Observer`]: each ioctl with its
//! file descriptor, argument and result, the guest memory map, register tables with the
//! fields that changed, each VM exit decoded. [`Silent`] ignores them at the cost of one
//! branch; [`Narrator`] renders them as text or JSON lines.

use std::io::Write;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use serde::Serialize;

use crate::disasm::Decoded;

/// One region of the guest memory map.
#[derive(Clone, Debug, Serialize)]
pub struct MapRegion {
    /// First guest-physical address.
    pub guest_start: u64,
    /// One past the last guest-physical address.
    pub guest_end: u64,
    /// Host virtual address backing `guest_start` (0 when it is not RAM).
    pub host_start: u64,
    /// What is there.
    pub what: String,
}

/// One row of a register table.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RegRow {
    /// Register name.
    pub name: &'static str,
    /// Value before the change.
    pub before: String,
    /// Value after the change.
    pub after: String,
    /// Whether it changed.
    pub changed: bool,
}

/// Something the VMM did or saw.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A numbered step of the LWN article.
    Step {
        /// Step number.
        number: u32,
        /// Short title.
        title: String,
        /// Why the step exists.
        why: String,
    },
    /// An ioctl on a KVM file descriptor.
    Ioctl {
        /// Its name in `<linux/kvm.h>`.
        name: &'static str,
        /// The file descriptor it was issued on.
        fd: i32,
        /// The argument, described.
        arg: String,
        /// The result, described.
        result: String,
    },
    /// Another system call (open, mmap).
    Syscall {
        /// Its name.
        name: &'static str,
        /// The arguments, described.
        args: String,
        /// The result, described.
        result: String,
    },
    /// The guest-physical memory map.
    MemoryMap {
        /// Regions in address order.
        regions: Vec<MapRegion>,
    },
    /// A register table.
    Registers {
        /// What the table shows.
        title: String,
        /// Rows, in the kernel struct's order.
        rows: Vec<RegRow>,
    },
    /// A code listing.
    Listing {
        /// What the code is.
        title: String,
        /// Instructions.
        instructions: Vec<Decoded>,
    },
    /// A VM exit.
    Exit {
        /// Exit number, from 1.
        number: u64,
        /// The KVM exit reason (`KVM_EXIT_IO`, ...).
        reason: &'static str,
        /// Decoded details (port, direction, data...).
        detail: String,
        /// The instruction at RIP when the exit was reported.
        instruction: Option<Decoded>,
        /// Whether RIP still points at the instruction that exited or already past it.
        rip_is: &'static str,
        /// What the VMM did about it.
        action: String,
    },
    /// A remark.
    Note {
        /// Text.
        text: String,
    },
}

/// Receives events. `enabled()` lets callers skip building events nobody reads.
pub trait Observer {
    /// Whether events are wanted at all.
    fn enabled(&self) -> bool {
        true
    }
    /// One event.
    fn event(&mut self, event: Event);
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Observer for Silent {
    fn enabled(&self) -> bool {
        false
    }
    fn event(&mut self, _event: Event) {}
}

/// Collects events in memory (for tests and tools embedding the library).
#[derive(Debug, Default)]
pub struct Recorder {
    /// Events in order.
    pub events: Vec<Event>,
}

impl Observer for Recorder {
    fn event(&mut self, event: Event) {
        self.events.push(event);
    }
}

impl Recorder {
    /// The names of the ioctls recorded, in order.
    pub fn ioctl_names(&self) -> Vec<&'static str> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Ioctl { name, .. } => Some(*name),
                _ => None,
            })
            .collect()
    }
}

/// Output format of a [`Narrator`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Renders events to a writer.
pub struct Narrator<W: Write> {
    out: W,
    format: Format,
}

impl<W: Write> Narrator<W> {
    /// A narrator writing `format` to `out`.
    pub fn new(out: W, format: Format) -> Self {
        Self { out, format }
    }
}

impl<W: Write> Observer for Narrator<W> {
    fn event(&mut self, event: Event) {
        // Narration is best effort: a closed pipe must not stop the VM.
        let _ = match self.format {
            Format::Json => serde_json::to_string(&event)
                .map_err(std::io::Error::other)
                .and_then(|line| writeln!(self.out, "{line}")),
            Format::Text => write!(self.out, "{}", render_text(&event)),
        };
        let _ = self.out.flush();
    }
}

fn wrap(text: &str, indent: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            out.push_str(indent);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Renders one event as text, ending with a newline.
pub fn render_text(event: &Event) -> String {
    match event {
        Event::Step { number, title, why } => {
            format!("\nStep {number}: {title}\n{}", wrap(why, "  │ ", 88))
        }
        Event::Ioctl {
            name,
            fd,
            arg,
            result,
        } => format!("  ioctl({fd}, {name}, {arg}) = {result}\n"),
        Event::Syscall { name, args, result } => format!("  {name}({args}) = {result}\n"),
        Event::MemoryMap { regions } => memory_map_text(regions),
        Event::Registers { title, rows } => registers_text(title, rows),
        Event::Listing {
            title,
            instructions,
        } => {
            let mut s = format!("  {title}\n");
            for i in instructions {
                s += &format!("    {i}\n");
            }
            s
        }
        Event::Exit {
            number,
            reason,
            detail,
            instruction,
            rip_is,
            action,
        } => {
            let mut s = format!("  exit #{number}: {reason}: {detail}\n");
            if let Some(i) = instruction {
                s += &format!("    RIP at {rip_is}: {i}\n");
            }
            s + &format!("    → {action}\n")
        }
        Event::Note { text } => wrap(text, "  ", 90),
    }
}

fn memory_map_text(regions: &[MapRegion]) -> String {
    let mut s =
        String::from("  guest physical                        host virtual         contents\n");
    for r in regions {
        let host = if r.host_start == 0 {
            "-".to_string()
        } else {
            format!("{:#014x}", r.host_start)
        };
        s += &format!(
            "  {:#018x}..{:#018x}  {:<20} {}\n",
            r.guest_start, r.guest_end, host, r.what
        );
    }
    s
}

fn registers_text(title: &str, rows: &[RegRow]) -> String {
    let w = rows
        .iter()
        .map(|r| r.before.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let mut s = format!(
        "  {title}\n  {:<9} {:<w$}    {}\n",
        "register", "before", "after"
    );
    for r in rows {
        let mark = if r.changed { "*" } else { " " };
        let arrow = if r.changed { "→" } else { " " };
        let after = if r.changed { r.after.as_str() } else { "" };
        s += &format!("  {mark}{:<8} {:<w$} {arrow} {after}\n", r.name, r.before);
    }
    s + "  (* changed)\n"
}

fn hex64(v: u64) -> String {
    format!("{v:#018x}")
}

/// The general-purpose registers as (name, value) pairs, in `struct kvm_regs` order.
pub fn regs_fields(r: &kvm_regs) -> Vec<(&'static str, String)> {
    [
        ("rax", r.rax),
        ("rbx", r.rbx),
        ("rcx", r.rcx),
        ("rdx", r.rdx),
        ("rsi", r.rsi),
        ("rdi", r.rdi),
        ("rsp", r.rsp),
        ("rbp", r.rbp),
        ("r8", r.r8),
        ("r9", r.r9),
        ("r10", r.r10),
        ("r11", r.r11),
        ("r12", r.r12),
        ("r13", r.r13),
        ("r14", r.r14),
        ("r15", r.r15),
        ("rip", r.rip),
        ("rflags", r.rflags),
    ]
    .into_iter()
    .map(|(n, v)| (n, hex64(v)))
    .collect()
}

fn seg(s: &kvm_segment) -> String {
    format!(
        "sel={:04x} base={:08x} limit={:08x} type={:x} p={} dpl={} s={} l={} db={} g={}",
        s.selector, s.base, s.limit, s.type_, s.present, s.dpl, s.s, s.l, s.db, s.g
    )
}

/// The special registers as (name, value) pairs, in `struct kvm_sregs` order.
pub fn sregs_fields(s: &kvm_sregs) -> Vec<(&'static str, String)> {
    vec![
        ("cs", seg(&s.cs)),
        ("ds", seg(&s.ds)),
        ("es", seg(&s.es)),
        ("fs", seg(&s.fs)),
        ("gs", seg(&s.gs)),
        ("ss", seg(&s.ss)),
        ("tr", seg(&s.tr)),
        ("ldt", seg(&s.ldt)),
        (
            "gdt",
            format!("base={:08x} limit={:04x}", s.gdt.base, s.gdt.limit),
        ),
        (
            "idt",
            format!("base={:08x} limit={:04x}", s.idt.base, s.idt.limit),
        ),
        ("cr0", hex64(s.cr0)),
        ("cr2", hex64(s.cr2)),
        ("cr3", hex64(s.cr3)),
        ("cr4", hex64(s.cr4)),
        ("cr8", hex64(s.cr8)),
        ("efer", hex64(s.efer)),
        ("apic_base", hex64(s.apic_base)),
    ]
}

/// Pairs up two field lists into rows, marking the changed ones.
pub fn diff(before: &[(&'static str, String)], after: &[(&'static str, String)]) -> Vec<RegRow> {
    before
        .iter()
        .zip(after)
        .map(|((name, b), (_, a))| RegRow {
            name,
            before: b.clone(),
            after: a.clone(),
            changed: a != b,
        })
        .collect()
}

/// Serializes any value as one line of JSON (for the CLI's `--json` outputs).
pub fn to_json<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_registers_are_marked() {
        let before = kvm_regs::default();
        let after = kvm_regs {
            rip: 0x1000,
            rflags: 2,
            ..Default::default()
        };
        let rows = diff(&regs_fields(&before), &regs_fields(&after));
        let changed: Vec<_> = rows.iter().filter(|r| r.changed).map(|r| r.name).collect();
        assert_eq!(changed, ["rip", "rflags"]);
        let text = render_text(&Event::Registers {
            title: "regs".into(),
            rows,
        });
        assert!(text.contains("*rip"), "{text}");
        assert!(text.contains(" rax"), "{text}");
    }

    #[test]
    fn json_lines_are_tagged() {
        let mut out = Vec::new();
        Narrator::new(&mut out, Format::Json).event(Event::Ioctl {
            name: "KVM_CREATE_VM",
            fd: 3,
            arg: "0".into(),
            result: "4".into(),
        });
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["event"], "ioctl");
        assert_eq!(v["name"], "KVM_CREATE_VM");
        assert_eq!(v["fd"], 3);
    }
}
