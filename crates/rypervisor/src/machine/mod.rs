//! A built virtual machine for `rypervisor run`: KVM objects, guest RAM, the bus, and the
//! run loop, which is `Vcpu::run` → `handle_exit` until a stop, then a [`RunReport`].

mod narrate;
mod report;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::{kvm_regs, kvm_sregs};

pub use report::{ExceptionInfo, Outcome, RunReport};

use crate::arch::{self, CpuMode, ExceptionFrame, Gpr, Privilege, SystemArea};
use crate::bus::{AddressSpace, Bus, BusError, SharedDevice};
use crate::devices::exit::EXIT_PORT;
use crate::devices::output::{BoundedOutput, GiveUp};
use crate::devices::serial::{COM1, REGISTERS};
use crate::devices::{ExitDevice, NoInterrupt, SerialDevice, StopSignal};
use crate::disasm::{self, Decoded};
use crate::explain::Observer;
use crate::kvm::{KvmSystem, DEFAULT_DEVICE};
use crate::memory::GuestRam;
use crate::seccomp::run::{confine_hook, RunFilters};
use crate::vcpu::{handle_exit, ExitAction, ExitStats, Stop, Vcpu, VcpuError};
use crate::vm::Vm;
use crate::watchdog::{Watchdog, WatchdogError};

/// Errors while running a machine (guest faults are not errors: they are [`Outcome`]s).
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// A vCPU ioctl failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A device could not be registered.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The timeout watchdog could not be set up.
    #[error("cannot set up the timeout: {0}")]
    Watchdog(#[from] WatchdogError),
    /// The seccomp filters could not be built or applied.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// A device's thread could not start.
    #[error("cannot start a device thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What to build.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// First guest-physical address of RAM.
    pub ram_base: u64,
    /// Bytes of RAM.
    pub ram_size: u64,
    /// Privilege level of the first instruction (CPL3 needs long mode).
    pub privilege: Privilege,
    /// Registers to preset before the first `KVM_RUN`.
    pub registers: Vec<(Gpr, u64)>,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// The KVM device node.
    pub kvm_device: PathBuf,
    /// Confine every thread with the seccomp filter of its role once the VM is built (see
    /// [`crate::seccomp::run`]). The thread that calls [`Machine::run`] is the vCPU's and
    /// stays confined after it returns, so this suits a process that ends with the guest
    /// (the CLI), not a library caller that goes on to other work: off by default.
    pub seccomp: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            ram_base: 0,
            ram_size: 2 << 20,
            privilege: Privilege::Kernel,
            registers: Vec::new(),
            timeout: None,
            kvm_device: PathBuf::from(DEFAULT_DEVICE),
            seccomp: false,
        }
    }
}

/// A built virtual machine, ready to run. Field order is drop order: the vCPU and VM go
/// before the memory KVM maps.
pub struct Machine {
    pub(crate) vcpu: Vcpu,
    pub(crate) vm: Vm,
    pub(crate) ram: GuestRam,
    pub(crate) kvm: KvmSystem,
    pub(crate) bus: Bus,
    pub(crate) stop: Arc<StopSignal>,
    pub(crate) area: SystemArea,
    pub(crate) mode: CpuMode,
    pub(crate) timeout: Option<Duration>,
    pub(crate) serial: Option<Arc<Mutex<SerialDevice>>>,
    /// When the UART's output stops waiting for a stream that does not drain.
    pub(crate) give_up: Arc<GiveUp>,
    /// The threads' seccomp filters (with `MachineConfig::seccomp`).
    pub(crate) filters: Option<RunFilters>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("mode", &self.mode)
            .field("ram", &self.ram)
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// Maps `device` at `[base, base+len)` in `space`.
    pub fn add_device(
        &mut self,
        space: AddressSpace,
        base: u64,
        len: u64,
        name: &str,
        device: SharedDevice,
    ) -> Result<(), MachineError> {
        Ok(self.bus.insert(space, base, len, name, device)?)
    }

    /// Adds a 16550 UART at COM1 (port 0x3f8) writing to `out` (through a bounded buffer
    /// drained by a thread of its own, so a stream that does not drain stalls the guest only
    /// until the time limit) and reading from `input`.
    pub fn add_serial(
        &mut self,
        out: Box<dyn Write + Send>,
        input: Option<Box<dyn Read + Send>>,
    ) -> Result<(), MachineError> {
        let filter = self.filters.as_ref().map(|f| f.console_output.clone());
        let hook = confine_hook("console output", filter);
        let out = BoundedOutput::with_start(out, self.give_up.clone(), hook)
            .map_err(MachineError::Thread)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            NoInterrupt,
            Box::new(out),
            input,
        )));
        self.add_device(
            AddressSpace::Pio,
            u64::from(COM1),
            REGISTERS,
            "serial (8250 UART)",
            serial.clone(),
        )?;
        self.serial = Some(serial);
        Ok(())
    }

    /// Adds the exit device at port 0xf4: a byte written there ends the VM with that status.
    pub fn add_exit_device(&mut self) -> Result<(), MachineError> {
        let dev = Arc::new(Mutex::new(ExitDevice::new(self.stop.clone())));
        self.add_device(
            AddressSpace::Pio,
            u64::from(EXIT_PORT),
            1,
            "exit device",
            dev,
        )
    }

    /// The handle devices use to end the VM.
    pub fn stop_signal(&self) -> Arc<StopSignal> {
        self.stop.clone()
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestRam {
        &self.ram
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The vCPU.
    pub fn vcpu(&mut self) -> &mut Vcpu {
        &mut self.vcpu
    }

    /// The open KVM system handle.
    pub fn kvm(&self) -> &KvmSystem {
        &self.kvm
    }

    /// The VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Runs the vCPU until the guest stops (LWN step 7: the `KVM_RUN` loop).
    pub fn run(&mut self, obs: &mut dyn Observer) -> Result<RunReport, MachineError> {
        let filters = self.filters.take();
        let dog = match self.timeout {
            Some(_) => {
                let filter = filters.as_ref().map(|f| f.watchdog.clone());
                Some(Watchdog::with_start(confine_hook("watchdog", filter))?)
            }
            None => None,
        };
        if let (Some(f), Some(serial)) = (&filters, &self.serial) {
            let hook = confine_hook("console input", Some(f.console_input.clone()));
            let mut serial = serial.lock().unwrap_or_else(|p| p.into_inner());
            serial
                .start_input_parked(hook)
                .map_err(MachineError::Thread)?;
        }
        if let Some(f) = &filters {
            crate::seccomp::confine_thread(&f.vcpu)?;
        }
        if let Some(limit) = self.timeout {
            self.give_up.at(std::time::Instant::now() + limit);
        }
        let kicker = self.vcpu.kicker();
        let watchdog = dog
            .as_ref()
            .zip(self.timeout)
            .map(|(d, t)| d.arm(t, Some(kicker)));
        let timed_out = || watchdog.as_ref().is_some_and(|w| w.fired());
        let start_state = if obs.enabled() {
            Some(self.narrate_start(obs)?)
        } else {
            None
        };
        let mut stats = ExitStats::default();
        let mut exits = 0u64;
        let stop = loop {
            if timed_out() {
                break None;
            }
            let exit = self.vcpu.run(&mut stats)?;
            let described = obs.enabled().then(|| (exit.kvm_name(), exit.describe()));
            let action = handle_exit(exit, &self.bus, &self.stop, &mut stats);
            if action == ExitAction::Kicked {
                continue;
            }
            exits += 1;
            if let Some((reason, detail)) = described {
                self.narrate_exit(obs, exits, reason, detail, &action);
            }
            if let ExitAction::Stop(s) = action {
                break Some(s);
            }
        };
        self.vcpu.finish(&mut stats);
        if stop.is_none() {
            // Timed out: a moment for what the guest printed last (unless stdout is stuck).
            self.give_up
                .at(std::time::Instant::now() + std::time::Duration::from_millis(200));
        }
        drop(watchdog);
        if let Some(serial) = &self.serial {
            serial.lock().unwrap_or_else(|p| p.into_inner()).flush();
        }
        let report = self.report(stop, stats)?;
        if let Some((regs, sregs)) = start_state {
            narrate::end(obs, (&regs, &sregs), (&report.regs, &report.sregs));
        }
        Ok(report)
    }

    /// Reads and disassembles the instruction at `rip` (a CS-relative address).
    fn decode_at(&self, rip: u64, sregs: &kvm_sregs) -> Option<Decoded> {
        let linear = sregs.cs.base.wrapping_add(rip);
        let phys = if sregs.cr0 & arch::cr0::PG != 0 {
            match self.vcpu.fd().translate_gva(linear) {
                Ok(t) if t.valid != 0 => t.physical_address,
                _ => linear, // the VMM's identity map: virtual == physical
            }
        } else {
            linear
        };
        let mut buf = [0u8; 15];
        let n = (self.ram.end().saturating_sub(phys)).min(15) as usize;
        if n == 0 || phys < self.ram.base() {
            return None;
        }
        self.ram.read(phys, &mut buf[..n]).ok()?;
        let bitness = arch::code_bitness(sregs);
        Some(disasm::decode(&buf[..n], bitness, rip))
    }

    fn report(&mut self, stop: Option<Stop>, stats: ExitStats) -> Result<RunReport, MachineError> {
        let (mut regs, sregs) = self.vcpu.state()?;
        let outcome = match stop {
            None => Outcome::TimedOut,
            Some(Stop::Requested(v)) => Outcome::Exited(v),
            Some(Stop::Halted) => match self.area.vector_at(regs.rip) {
                Some(vector) => Outcome::Exception(self.exception(vector, &regs, &sregs)),
                None => Outcome::Halted,
            },
            Some(Stop::TripleFault) => Outcome::TripleFault,
            Some(Stop::FailEntry { reason, cpu }) => Outcome::FailEntry { reason, cpu },
            Some(Stop::InternalError) => Outcome::InternalError(self.vcpu.internal_error()),
            Some(Stop::SystemEvent(_)) => Outcome::UnexpectedExit("KVM_EXIT_SYSTEM_EVENT"),
            Some(Stop::Unexpected(name)) => Outcome::UnexpectedExit(name),
        };
        if let Outcome::Exception(e) = &outcome {
            // Report the registers as they were at the fault, not in the VMM's stub.
            regs.rip = e.rip;
            regs.rsp = e.rsp;
            regs.rflags = e.rflags;
        }
        // Disassembly is for fault reports; a clean exit skips the formatter's setup cost.
        let instruction = match &outcome {
            o if !o.is_fault() => None,
            Outcome::InternalError(e) if !e.insn_bytes.is_empty() => {
                e.instruction(regs.rip, &sregs)
            }
            _ => self.decode_at(regs.rip, &sregs),
        };
        Ok(RunReport {
            outcome,
            stats,
            regs,
            sregs,
            instruction,
        })
    }

    /// Reads the exception frame the CPU pushed before jumping to the stub.
    fn exception(&self, vector: u8, regs: &kvm_regs, sregs: &kvm_sregs) -> ExceptionInfo {
        let long = self.mode == CpuMode::Long;
        ExceptionFrame::decode(vector, long, regs.rsp, sregs, |addr| {
            self.ram.read_u64(addr).unwrap_or(u64::MAX)
        })
    }
}
