//! The vCPU object and its exit loop.
//!
//! `KVM_RUN` returns whenever the guest does something the kernel wants userspace to handle:
//! port I/O, an access to guest-physical memory with no RAM (MMIO), `hlt`, a triple fault...
//! [`handle_exit`] is the whole dispatch: one `match`, each arm a bus call or a decision plus
//! a counter. It is a free function so tests can feed it exits without a VM.

use std::fmt;
use std::os::fd::AsRawFd;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::Serialize;

use crate::bus::{AddressSpace, Bus};
use crate::devices::StopSignal;

/// Errors from vCPU ioctls.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A named ioctl failed.
    #[error("{name} failed: {source}")]
    Ioctl {
        /// Ioctl name.
        name: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
}

impl VcpuError {
    /// Wraps an ioctl error with its name.
    pub fn ioctl(name: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Self {
        move |source| VcpuError::Ioctl { name, source }
    }
}

/// A virtual CPU.
#[derive(Debug)]
pub struct Vcpu {
    /// The kvm-ioctls handle (owns the `kvm_run` mapping).
    pub fd: VcpuFd,
    /// The vCPU id.
    pub id: u64,
}

impl Vcpu {
    /// The raw file descriptor number (for narration).
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// `KVM_GET_REGS` and `KVM_GET_SREGS`.
    pub fn state(&self) -> Result<(kvm_bindings::kvm_regs, kvm_bindings::kvm_sregs), VcpuError> {
        let regs = self
            .fd
            .get_regs()
            .map_err(VcpuError::ioctl("KVM_GET_REGS"))?;
        let sregs = self
            .fd
            .get_sregs()
            .map_err(VcpuError::ioctl("KVM_GET_SREGS"))?;
        Ok((regs, sregs))
    }
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
    /// `hlt`.
    Hlt,
    /// Triple fault.
    Shutdown,
    /// VM entry failed.
    FailEntry,
    /// KVM could not handle something.
    InternalError,
    /// `KVM_RUN` returned early because of a signal (e.g. the timeout kick).
    Interrupted,
    /// Anything else.
    Other,
}

impl ExitKind {
    /// Every kind, in display order.
    pub const ALL: [ExitKind; 10] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Hlt,
        ExitKind::Shutdown,
        ExitKind::FailEntry,
        ExitKind::InternalError,
        ExitKind::Interrupted,
        ExitKind::Other,
    ];

    /// The KVM name of the exit reason.
    pub fn kvm_name(self) -> &'static str {
        match self {
            ExitKind::IoIn | ExitKind::IoOut => "KVM_EXIT_IO",
            ExitKind::MmioRead | ExitKind::MmioWrite => "KVM_EXIT_MMIO",
            ExitKind::Hlt => "KVM_EXIT_HLT",
            ExitKind::Shutdown => "KVM_EXIT_SHUTDOWN",
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
            ExitKind::Hlt => "hlt",
            ExitKind::Shutdown => "shutdown",
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
                writeln!(
                    f,
                    "  {:<16} {:>10}   ({})",
                    kind.label(),
                    n,
                    kind.kvm_name()
                )?;
            }
        }
        if self.unhandled > 0 {
            writeln!(f, "  to no device     {:>10}", self.unhandled)?;
        }
        let total = (self.guest_time + self.vmm_time)
            .as_secs_f64()
            .max(f64::MIN_POSITIVE);
        writeln!(
            f,
            "time in guest (KVM_RUN): {:>10.3} ms ({:.1}%)",
            self.guest_time.as_secs_f64() * 1e3,
            100.0 * self.guest_time.as_secs_f64() / total
        )?;
        write!(
            f,
            "time in VMM:             {:>10.3} ms ({:.1}%)",
            self.vmm_time.as_secs_f64() * 1e3,
            100.0 * self.vmm_time.as_secs_f64() / total
        )
    }
}

/// Why the exit loop stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A device asked to end the VM with this status.
    Requested(u8),
    /// The guest executed `hlt`.
    Halted,
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault,
    /// The hardware refused to enter the guest.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// Host CPU.
        cpu: u32,
    },
    /// KVM reported an internal error; details are in `kvm_run`.
    InternalError,
    /// An exit this VMM does not handle.
    Unexpected(&'static str),
}

/// What the exit loop does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Re-enter the guest.
    Continue,
    /// Stop running.
    Stop(Stop),
}

/// `KVM_SET_MSRS` for `(index, value)` pairs. KVM returns how many it set; fewer than
/// asked is an error here (EINVAL), naming nothing silently lost.
pub fn set_msrs(vcpu: &VcpuFd, entries: &[(u32, u64)]) -> Result<(), kvm_ioctls::Error> {
    let entries: Vec<kvm_bindings::kvm_msr_entry> = entries
        .iter()
        .map(|&(index, data)| kvm_bindings::kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = kvm_bindings::Msrs::from_entries(&entries)
        .map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
    match vcpu.set_msrs(&msrs)? {
        n if n == entries.len() => Ok(()),
        _ => Err(kvm_ioctls::Error::new(libc::EINVAL)),
    }
}

/// The KVM name of an exit.
pub fn exit_name(exit: &VcpuExit<'_>) -> &'static str {
    match exit {
        VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => "KVM_EXIT_IO",
        VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => "KVM_EXIT_MMIO",
        VcpuExit::Hlt => "KVM_EXIT_HLT",
        VcpuExit::Shutdown => "KVM_EXIT_SHUTDOWN",
        VcpuExit::FailEntry(..) => "KVM_EXIT_FAIL_ENTRY",
        VcpuExit::InternalError => "KVM_EXIT_INTERNAL_ERROR",
        VcpuExit::Unknown => "KVM_EXIT_UNKNOWN",
        VcpuExit::Exception => "KVM_EXIT_EXCEPTION",
        VcpuExit::Hypercall(_) => "KVM_EXIT_HYPERCALL",
        VcpuExit::Debug(_) => "KVM_EXIT_DEBUG",
        VcpuExit::IrqWindowOpen => "KVM_EXIT_IRQ_WINDOW_OPEN",
        VcpuExit::Intr => "KVM_EXIT_INTR",
        VcpuExit::SystemEvent(..) => "KVM_EXIT_SYSTEM_EVENT",
        VcpuExit::X86Rdmsr(_) => "KVM_EXIT_X86_RDMSR",
        VcpuExit::X86Wrmsr(_) => "KVM_EXIT_X86_WRMSR",
        VcpuExit::MemoryFault { .. } => "KVM_EXIT_MEMORY_FAULT",
        VcpuExit::Unsupported(_) => "unsupported exit",
        _ => "KVM_EXIT_(other)",
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

/// One line describing an exit: direction, address, size and data.
pub fn describe_exit(exit: &VcpuExit<'_>) -> String {
    match exit {
        VcpuExit::IoOut(port, data) => {
            format!(
                "out port {port:#x}, {} byte(s): {}",
                data.len(),
                data_text(data)
            )
        }
        VcpuExit::IoIn(port, data) => format!(
            "in port {port:#x}, {} byte(s): {}",
            data.len(),
            data_text(data)
        ),
        VcpuExit::MmioWrite(addr, data) => {
            format!(
                "write {addr:#x}, {} byte(s): {}",
                data.len(),
                data_text(data)
            )
        }
        VcpuExit::MmioRead(addr, data) => format!(
            "read {addr:#x}, {} byte(s): {}",
            data.len(),
            data_text(data)
        ),
        VcpuExit::FailEntry(reason, cpu) => {
            format!("hardware entry failure reason {reason:#x} on host cpu {cpu}")
        }
        VcpuExit::Unsupported(r) => format!("exit reason {r}"),
        VcpuExit::Hlt => "the guest executed hlt".into(),
        VcpuExit::Shutdown => "triple fault: the guest could not even handle a double fault".into(),
        _ => String::new(),
    }
}

/// Dispatches one exit: I/O to the bus, everything else to a stop decision. Counts it.
///
/// After an access the [`StopSignal`] is consulted, so a device can end the VM (the exit
/// device does).
pub fn handle_exit(
    exit: &mut VcpuExit<'_>,
    bus: &Bus,
    stop: &StopSignal,
    stats: &mut ExitStats,
) -> ExitAction {
    match exit {
        VcpuExit::IoOut(port, data) => stats.record_access(
            ExitKind::IoOut,
            bus.write(AddressSpace::Pio, u64::from(*port), data),
        ),
        VcpuExit::IoIn(port, data) => stats.record_access(
            ExitKind::IoIn,
            bus.read(AddressSpace::Pio, u64::from(*port), data),
        ),
        VcpuExit::MmioWrite(addr, data) => stats.record_access(
            ExitKind::MmioWrite,
            bus.write(AddressSpace::Mmio, *addr, data),
        ),
        VcpuExit::MmioRead(addr, data) => stats.record_access(
            ExitKind::MmioRead,
            bus.read(AddressSpace::Mmio, *addr, data),
        ),
        VcpuExit::Hlt => {
            stats.record(ExitKind::Hlt);
            return ExitAction::Stop(Stop::Halted);
        }
        VcpuExit::Shutdown => {
            stats.record(ExitKind::Shutdown);
            return ExitAction::Stop(Stop::TripleFault);
        }
        VcpuExit::FailEntry(reason, cpu) => {
            stats.record(ExitKind::FailEntry);
            return ExitAction::Stop(Stop::FailEntry {
                reason: *reason,
                cpu: *cpu,
            });
        }
        VcpuExit::InternalError => {
            stats.record(ExitKind::InternalError);
            return ExitAction::Stop(Stop::InternalError);
        }
        VcpuExit::Intr => stats.record(ExitKind::Interrupted),
        other => {
            stats.record(ExitKind::Other);
            return ExitAction::Stop(Stop::Unexpected(exit_name(other)));
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
    use crate::devices::{ExitDevice, SharedBuffer};
    use crate::devices::{NoInterrupt, SerialDevice};

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
        bus.insert(
            AddressSpace::Pio,
            0xf4,
            1,
            "exit",
            Arc::new(Mutex::new(ExitDevice::new(stop.clone()))),
        )
        .unwrap();
        (bus, stop, out)
    }

    #[test]
    fn fake_exits_reach_devices_and_are_counted() {
        let (bus, stop, out) = machine_bus();
        let mut stats = ExitStats::default();
        for b in b"ok" {
            let a = handle_exit(&mut VcpuExit::IoOut(0x3f8, &[*b]), &bus, &stop, &mut stats);
            assert_eq!(a, ExitAction::Continue);
        }
        assert_eq!(out.contents(), b"ok");
        let mut lsr = [0u8];
        handle_exit(
            &mut VcpuExit::IoIn(0x3fd, &mut lsr),
            &bus,
            &stop,
            &mut stats,
        );
        assert_eq!(lsr[0] & 0x20, 0x20, "transmitter empty");
        assert_eq!(stats.count(ExitKind::IoOut), 2);
        assert_eq!(stats.count(ExitKind::IoIn), 1);
        assert_eq!(stats.unhandled, 0);
    }

    #[test]
    fn exit_device_stops_with_status() {
        let (bus, stop, _) = machine_bus();
        let mut stats = ExitStats::default();
        let a = handle_exit(&mut VcpuExit::IoOut(0xf4, &[9]), &bus, &stop, &mut stats);
        assert_eq!(a, ExitAction::Stop(Stop::Requested(9)));
    }

    #[test]
    fn mmio_to_nowhere_reads_ones_and_continues() {
        let (bus, stop, _) = machine_bus();
        let mut stats = ExitStats::default();
        let mut data = [0u8; 4];
        let a = handle_exit(
            &mut VcpuExit::MmioRead(0xd000_0000, &mut data),
            &bus,
            &stop,
            &mut stats,
        );
        assert_eq!(a, ExitAction::Continue);
        assert_eq!(data, [0xff; 4]);
        let a = handle_exit(
            &mut VcpuExit::MmioWrite(0xd000_0000, &[1, 2]),
            &bus,
            &stop,
            &mut stats,
        );
        assert_eq!(a, ExitAction::Continue);
        assert_eq!(stats.unhandled, 2);
    }

    #[test]
    fn faults_and_unknown_exits_stop() {
        let (bus, stop, _) = machine_bus();
        let mut stats = ExitStats::default();
        let cases: Vec<(VcpuExit<'_>, Stop)> = vec![
            (VcpuExit::Hlt, Stop::Halted),
            (VcpuExit::Shutdown, Stop::TripleFault),
            (
                VcpuExit::FailEntry(0x21, 1),
                Stop::FailEntry {
                    reason: 0x21,
                    cpu: 1,
                },
            ),
            (VcpuExit::InternalError, Stop::InternalError),
            (VcpuExit::Unknown, Stop::Unexpected("KVM_EXIT_UNKNOWN")),
            (
                VcpuExit::Unsupported(1234),
                Stop::Unexpected("unsupported exit"),
            ),
        ];
        for (mut exit, want) in cases {
            assert_eq!(
                handle_exit(&mut exit, &bus, &stop, &mut stats),
                ExitAction::Stop(want)
            );
        }
        assert_eq!(stats.total(), 6);
    }

    #[test]
    fn exits_are_described_for_learners() {
        assert_eq!(
            describe_exit(&VcpuExit::IoOut(0x3f8, b"4")),
            "out port 0x3f8, 1 byte(s): 0x34 '4'"
        );
        assert_eq!(
            describe_exit(&VcpuExit::IoOut(0x3f8, b"\n")),
            "out port 0x3f8, 1 byte(s): 0x0a '\\n'"
        );
    }
}
