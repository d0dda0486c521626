//! VM exits: what `KVM_RUN` returned, decoded into one enum, and [`handle_exit`], the whole
//! dispatch as one `match`: each arm is a bus call or a decision, plus a counter.
//!
//! `handle_exit` knows no ports and no devices: I/O goes to the [`Bus`], and the one exit a
//! face treats specially, the sandbox's system call, arrives already named ([`VmExit::Syscall`])
//! because the vCPU was told its port when it was created. It is a free function so tests can
//! feed it exits without a VM.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::bus::{AddressSpace, Bus};
use crate::devices::StopSignal;

/// One VM exit, decoded from `kvm_run`. I/O exits borrow `kvm_run`'s data area: an `in` or
/// MMIO read is answered by filling the slice before the next `KVM_RUN`.
#[derive(Debug)]
pub enum VmExit<'a> {
    /// `in` from a port.
    IoIn(u16, &'a mut [u8]),
    /// `out` to a port.
    IoOut(u16, &'a [u8]),
    /// A read of guest-physical memory with no RAM behind it.
    MmioRead(u64, &'a mut [u8]),
    /// A write to guest-physical memory with no RAM behind it.
    MmioWrite(u64, &'a [u8]),
    /// An `out` to the vCPU's system-call port: the sandbox's path from a program into the VMM
    /// (the arguments are in the registers).
    Syscall,
    /// `hlt` with no in-kernel irqchip to wait in.
    Hlt,
    /// Triple fault (`KVM_EXIT_SHUTDOWN`).
    Shutdown,
    /// `KVM_EXIT_SYSTEM_EVENT` of this type (the guest asked for a reset or shutdown).
    SystemEvent(u32),
    /// The hardware refused to enter the guest.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// Host CPU.
        cpu: u32,
    },
    /// KVM could not handle something; [`Vcpu::internal_error`](super::Vcpu::internal_error)
    /// reads the details.
    InternalError,
    /// `KVM_RUN` returned without running to an exit: a signal or `immediate_exit` (a kick).
    Kicked,
    /// An exit this VMM does not handle, by its KVM name.
    Other(&'static str),
}

impl VmExit<'_> {
    /// The KVM name of the exit reason.
    pub fn kvm_name(&self) -> &'static str {
        match self {
            VmExit::IoIn(..) | VmExit::IoOut(..) | VmExit::Syscall => "KVM_EXIT_IO",
            VmExit::MmioRead(..) | VmExit::MmioWrite(..) => "KVM_EXIT_MMIO",
            VmExit::Hlt => "KVM_EXIT_HLT",
            VmExit::Shutdown => "KVM_EXIT_SHUTDOWN",
            VmExit::SystemEvent(_) => "KVM_EXIT_SYSTEM_EVENT",
            VmExit::FailEntry { .. } => "KVM_EXIT_FAIL_ENTRY",
            VmExit::InternalError => "KVM_EXIT_INTERNAL_ERROR",
            VmExit::Kicked => "EINTR",
            VmExit::Other(name) => name,
        }
    }

    /// One line describing the exit for learners: direction, address, size and data.
    pub fn describe(&self) -> String {
        let io = |what: &str, at: String, data: &[u8]| {
            format!("{what} {at}, {} byte(s): {}", data.len(), data_text(data))
        };
        match self {
            VmExit::IoOut(port, data) => io("out port", format!("{port:#x}"), data),
            VmExit::IoIn(port, data) => io("in port", format!("{port:#x}"), data),
            VmExit::MmioWrite(addr, data) => io("write", format!("{addr:#x}"), data),
            VmExit::MmioRead(addr, data) => io("read", format!("{addr:#x}"), data),
            VmExit::FailEntry { reason, cpu } => {
                format!("hardware entry failure reason {reason:#x} on host cpu {cpu}")
            }
            VmExit::Hlt => "the guest executed hlt".into(),
            VmExit::Shutdown => {
                "triple fault: the guest could not even handle a double fault".into()
            }
            VmExit::Syscall => "a system call (out to the system-call port)".into(),
            _ => String::new(),
        }
    }
}

fn data_text(data: &[u8]) -> String {
    let mut v = 0u64;
    for (i, b) in data.iter().take(8).enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    let printable = match data {
        [c] if c.is_ascii_graphic() || *c == b' ' => format!(" '{}'", *c as char),
        [b'\n'] => " '\\n'".into(),
        _ => String::new(),
    };
    format!("{v:#0w$x}{printable}", w = 2 + 2 * data.len())
}

/// Kinds of VM exit, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    /// `in` from a port.
    IoIn,
    /// `out` to a port.
    IoOut,
    /// Read of MMIO.
    MmioRead,
    /// Write to MMIO.
    MmioWrite,
    /// A system call (sandbox).
    Syscall,
    /// `hlt`.
    Hlt,
    /// Triple fault.
    Shutdown,
    /// Reset or shutdown asked for by the guest.
    SystemEvent,
    /// VM entry failed.
    FailEntry,
    /// KVM could not handle something.
    InternalError,
    /// `KVM_RUN` returned early because of a signal or `immediate_exit` (a kick).
    Interrupted,
    /// Anything else.
    Other,
}

impl ExitKind {
    /// Every kind, in display order.
    pub const ALL: [ExitKind; 12] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Syscall,
        ExitKind::Hlt,
        ExitKind::Shutdown,
        ExitKind::SystemEvent,
        ExitKind::FailEntry,
        ExitKind::InternalError,
        ExitKind::Interrupted,
        ExitKind::Other,
    ];

    /// The KVM name of the exit reason.
    pub fn kvm_name(self) -> &'static str {
        match self {
            ExitKind::IoIn | ExitKind::IoOut | ExitKind::Syscall => "KVM_EXIT_IO",
            ExitKind::MmioRead | ExitKind::MmioWrite => "KVM_EXIT_MMIO",
            ExitKind::Hlt => "KVM_EXIT_HLT",
            ExitKind::Shutdown => "KVM_EXIT_SHUTDOWN",
            ExitKind::SystemEvent => "KVM_EXIT_SYSTEM_EVENT",
            ExitKind::FailEntry => "KVM_EXIT_FAIL_ENTRY",
            ExitKind::InternalError => "KVM_EXIT_INTERNAL_ERROR",
            ExitKind::Interrupted => "EINTR",
            ExitKind::Other => "other",
        }
    }

    fn label(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io in",
            ExitKind::IoOut => "io out",
            ExitKind::MmioRead => "mmio read",
            ExitKind::MmioWrite => "mmio write",
            ExitKind::Syscall => "system call",
            ExitKind::Hlt => "hlt",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system event",
            ExitKind::FailEntry => "fail entry",
            ExitKind::InternalError => "internal error",
            ExitKind::Interrupted => "interrupted",
            ExitKind::Other => "other",
        }
    }
}

/// Exit counts and where the time went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExitStats {
    counts: [u64; ExitKind::ALL.len()],
    /// The kind of the last exit counted.
    #[serde(skip)]
    pub last: Option<ExitKind>,
    /// Accesses that hit no device.
    pub unhandled: u64,
    /// Time spent inside `KVM_RUN` (the guest running, plus KVM's own work).
    pub guest_time: Duration,
    /// Time spent in the VMM between exits.
    pub vmm_time: Duration,
}

impl ExitStats {
    /// Counts one exit of `kind`.
    pub fn record(&mut self, kind: ExitKind) {
        self.counts[kind as usize] += 1;
        self.last = Some(kind);
    }

    /// Counts one bus access; `handled` is false if it hit no device.
    pub fn record_access(&mut self, kind: ExitKind, handled: bool) {
        self.record(kind);
        self.unhandled += u64::from(!handled);
    }

    /// How many exits of `kind`.
    pub fn count(&self, kind: ExitKind) -> u64 {
        self.counts[kind as usize]
    }

    /// All exits (not counting signal interruptions).
    pub fn total(&self) -> u64 {
        self.counts.iter().sum::<u64>() - self.count(ExitKind::Interrupted)
    }
}

impl fmt::Display for ExitStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "exits: {}", self.total())?;
        for kind in ExitKind::ALL {
            let n = self.count(kind);
            if n > 0 {
                let (label, name) = (kind.label(), kind.kvm_name());
                writeln!(f, "  {label:<16} {n:>10}   ({name})")?;
            }
        }
        if self.unhandled > 0 {
            writeln!(f, "  to no device     {:>10}", self.unhandled)?;
        }
        let total = (self.guest_time + self.vmm_time)
            .as_secs_f64()
            .max(f64::MIN_POSITIVE);
        let (guest, vmm) = (self.guest_time.as_secs_f64(), self.vmm_time.as_secs_f64());
        writeln!(
            f,
            "time in guest (KVM_RUN): {:>10.3} ms ({:.1}%)",
            guest * 1e3,
            100.0 * guest / total
        )?;
        write!(
            f,
            "time in VMM:             {:>10.3} ms ({:.1}%)",
            vmm * 1e3,
            100.0 * vmm / total
        )
    }
}

/// Why a vCPU's run should stop (the face decides what each means for its guest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A device asked to end the VM with this status.
    Requested(u8),
    /// The guest executed `hlt`.
    Halted,
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault,
    /// The guest asked for a reset or shutdown (`KVM_EXIT_SYSTEM_EVENT` of this type).
    SystemEvent(u32),
    /// The hardware refused to enter the guest.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// Host CPU.
        cpu: u32,
    },
    /// KVM reported an internal error; the details are in `kvm_run`.
    InternalError,
    /// An exit this VMM does not handle.
    Unexpected(&'static str),
}

/// What the run loop does after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Handled: re-enter the guest.
    Continue,
    /// The vCPU was kicked: check why, then re-enter or stop.
    Kicked,
    /// The program made a system call: serve it, then re-enter.
    Syscall,
    /// Stop running.
    Stop(Stop),
}

/// Dispatches one exit: I/O to the bus, everything else to a decision. Counts it.
///
/// After a bus access the [`StopSignal`] is consulted, so a device can end the VM (the exit
/// device and the i8042 do).
pub fn handle_exit(
    exit: VmExit<'_>,
    bus: &Bus,
    stop: &StopSignal,
    stats: &mut ExitStats,
) -> ExitAction {
    let decided = |stats: &mut ExitStats, kind, action| {
        stats.record(kind);
        action
    };
    match exit {
        VmExit::IoOut(port, data) => {
            let handled = bus.write(AddressSpace::Pio, u64::from(port), data);
            stats.record_access(ExitKind::IoOut, handled);
        }
        VmExit::IoIn(port, data) => {
            let handled = bus.read(AddressSpace::Pio, u64::from(port), data);
            stats.record_access(ExitKind::IoIn, handled);
        }
        VmExit::MmioWrite(addr, data) => {
            let handled = bus.write(AddressSpace::Mmio, addr, data);
            stats.record_access(ExitKind::MmioWrite, handled);
        }
        VmExit::MmioRead(addr, data) => {
            let handled = bus.read(AddressSpace::Mmio, addr, data);
            stats.record_access(ExitKind::MmioRead, handled);
        }
        VmExit::Syscall => return decided(stats, ExitKind::Syscall, ExitAction::Syscall),
        VmExit::Kicked => return decided(stats, ExitKind::Interrupted, ExitAction::Kicked),
        VmExit::Hlt => return decided(stats, ExitKind::Hlt, ExitAction::Stop(Stop::Halted)),
        VmExit::Shutdown => {
            return decided(
                stats,
                ExitKind::Shutdown,
                ExitAction::Stop(Stop::TripleFault),
            )
        }
        VmExit::SystemEvent(kind) => {
            let action = ExitAction::Stop(Stop::SystemEvent(kind));
            return decided(stats, ExitKind::SystemEvent, action);
        }
        VmExit::FailEntry { reason, cpu } => {
            let action = ExitAction::Stop(Stop::FailEntry { reason, cpu });
            return decided(stats, ExitKind::FailEntry, action);
        }
        VmExit::InternalError => {
            let action = ExitAction::Stop(Stop::InternalError);
            return decided(stats, ExitKind::InternalError, action);
        }
        VmExit::Other(name) => {
            return decided(
                stats,
                ExitKind::Other,
                ExitAction::Stop(Stop::Unexpected(name)),
            )
        }
    }
    match stop.requested() {
        Some(status) => ExitAction::Stop(Stop::Requested(status)),
        None => ExitAction::Continue,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::bus::BusDevice;
    use crate::devices::{ExitDevice, NoInterrupt, SerialDevice, SharedBuffer};

    fn machine_bus() -> (Bus, Arc<StopSignal>, SharedBuffer) {
        let stop = StopSignal::new();
        let out = SharedBuffer::default();
        let mut bus = Bus::new();
        let serial: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(SerialDevice::new(
            NoInterrupt,
            Box::new(out.clone()),
            None,
        )));
        bus.insert(AddressSpace::Pio, 0x3f8, 8, "serial", serial)
            .unwrap();
        let exit = Arc::new(Mutex::new(ExitDevice::new(stop.clone())));
        bus.insert(AddressSpace::Pio, 0xf4, 1, "exit", exit)
            .unwrap();
        (bus, stop, out)
    }

    #[test]
    fn fake_exits_reach_devices_and_are_counted() {
        let (bus, stop, out) = machine_bus();
        let mut stats = ExitStats::default();
        for b in b"ok" {
            let a = handle_exit(VmExit::IoOut(0x3f8, &[*b]), &bus, &stop, &mut stats);
            assert_eq!(a, ExitAction::Continue);
        }
        assert_eq!(out.contents(), b"ok");
        let mut lsr = [0u8];
        handle_exit(VmExit::IoIn(0x3fd, &mut lsr), &bus, &stop, &mut stats);
        assert_eq!(lsr[0] & 0x20, 0x20, "transmitter empty");
        assert_eq!(stats.count(ExitKind::IoOut), 2);
        assert_eq!(stats.count(ExitKind::IoIn), 1);
        assert_eq!(stats.last, Some(ExitKind::IoIn));
        assert_eq!(stats.unhandled, 0);
    }

    #[test]
    fn exit_device_stops_with_status() {
        let (bus, stop, _) = machine_bus();
        let mut stats = ExitStats::default();
        let a = handle_exit(VmExit::IoOut(0xf4, &[9]), &bus, &stop, &mut stats);
        assert_eq!(a, ExitAction::Stop(Stop::Requested(9)));
    }

    #[test]
    fn mmio_to_nowhere_reads_ones_and_continues() {
        let (bus, stop, _) = machine_bus();
        let mut stats = ExitStats::default();
        let mut data = [0u8; 4];
        let a = handle_exit(
            VmExit::MmioRead(0xd000_0000, &mut data),
            &bus,
            &stop,
            &mut stats,
        );
        assert_eq!(a, ExitAction::Continue);
        assert_eq!(data, [0xff; 4]);
        let a = handle_exit(
            VmExit::MmioWrite(0xd000_0000, &[1, 2]),
            &bus,
            &stop,
            &mut stats,
        );
        assert_eq!(a, ExitAction::Continue);
        assert_eq!(stats.unhandled, 2);
    }

    #[test]
    fn syscalls_kicks_and_faults_are_decisions() {
        let (bus, stop, _) = machine_bus();
        let mut stats = ExitStats::default();
        let cases: Vec<(VmExit<'_>, ExitAction)> = vec![
            (VmExit::Syscall, ExitAction::Syscall),
            (VmExit::Kicked, ExitAction::Kicked),
            (VmExit::Hlt, ExitAction::Stop(Stop::Halted)),
            (VmExit::Shutdown, ExitAction::Stop(Stop::TripleFault)),
            (
                VmExit::SystemEvent(2),
                ExitAction::Stop(Stop::SystemEvent(2)),
            ),
            (
                VmExit::FailEntry {
                    reason: 0x21,
                    cpu: 1,
                },
                ExitAction::Stop(Stop::FailEntry {
                    reason: 0x21,
                    cpu: 1,
                }),
            ),
            (VmExit::InternalError, ExitAction::Stop(Stop::InternalError)),
            (
                VmExit::Other("KVM_EXIT_UNKNOWN"),
                ExitAction::Stop(Stop::Unexpected("KVM_EXIT_UNKNOWN")),
            ),
        ];
        for (exit, want) in cases {
            assert_eq!(handle_exit(exit, &bus, &stop, &mut stats), want);
        }
        assert_eq!(stats.count(ExitKind::Syscall), 1);
        assert_eq!(stats.total(), 7, "a kick is not an exit");
        assert_eq!(stop.requested(), None, "decisions touch no device");
    }

    #[test]
    fn exits_are_described_for_learners() {
        assert_eq!(
            VmExit::IoOut(0x3f8, b"4").describe(),
            "out port 0x3f8, 1 byte(s): 0x34 '4'"
        );
        assert_eq!(
            VmExit::IoOut(0x3f8, b"\n").describe(),
            "out port 0x3f8, 1 byte(s): 0x0a '\\n'"
        );
        assert_eq!(VmExit::Syscall.kvm_name(), "KVM_EXIT_IO");
    }
}
