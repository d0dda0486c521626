//! A built virtual machine: KVM objects, guest RAM, the bus, and the run loop.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_regs, kvm_sregs, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
};

use crate::arch::{self, CpuMode, Gpr, Privilege, SystemArea};
use crate::bus::{AddressSpace, Bus, BusError, SharedDevice};
use crate::devices::exit::EXIT_PORT;
use crate::devices::serial::{COM1, REGISTERS};
use crate::devices::{ExitDevice, NoInterrupt, SerialDevice, StopSignal};
use crate::disasm::{self, Decoded};
use crate::explain::{self, Event, Observer};
use crate::kvm::{KvmSystem, DEFAULT_DEVICE};
use crate::memory::GuestRam;
use crate::vcpu::{
    describe_exit, exit_name, handle_exit, ExitAction, ExitKind, ExitStats, Stop, Vcpu, VcpuError,
};
use crate::vm::Vm;
use crate::watchdog::Watchdog;

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
    Watchdog(String),
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
        }
    }
}

/// A CPU exception the guest took, caught by the VMM's IDT stubs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExceptionInfo {
    /// Vector number.
    pub vector: u8,
    /// Error code, for vectors that push one.
    pub error_code: Option<u64>,
    /// Address of the faulting instruction.
    pub rip: u64,
    /// Code segment selector at the fault (its low bits are the privilege level).
    pub cs: u64,
    /// RFLAGS at the fault.
    pub rflags: u64,
    /// Stack pointer at the fault.
    pub rsp: u64,
    /// CR2 (the faulting address) for page faults.
    pub cr2: Option<u64>,
}

/// Details of `KVM_EXIT_INTERNAL_ERROR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalErrorInfo {
    /// `KVM_INTERNAL_ERROR_*` suberror.
    pub suberror: u32,
    /// Extra data words from KVM.
    pub data: Vec<u64>,
    /// Instruction bytes KVM reported (emulation failures), if any.
    pub insn_bytes: Vec<u8>,
}

impl InternalErrorInfo {
    /// What the suberror means.
    pub fn meaning(&self) -> &'static str {
        match self.suberror {
            1 => "emulation failure: KVM's instruction emulator cannot execute this instruction",
            2 => "simultaneous exceptions while delivering an exception",
            3 => "exception during event delivery (e.g. the IDT or stack is unusable)",
            4 => "unexpected hardware exit reason",
            _ => "unknown suberror",
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote this status to the exit device.
    Exited(u8),
    /// The guest executed `hlt` (nothing can wake it: there are no interrupts).
    Halted,
    /// The timeout expired.
    TimedOut,
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault,
    /// The guest took a CPU exception.
    Exception(ExceptionInfo),
    /// The hardware refused to enter the guest.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// Host CPU.
        cpu: u32,
    },
    /// KVM could not handle something the guest did.
    InternalError(InternalErrorInfo),
    /// An exit this VMM does not handle.
    UnexpectedExit(&'static str),
}

impl Outcome {
    /// The process exit status `rypervisor run` uses: the guest's own status, 0 for `hlt`,
    /// 124 for a timeout (like `timeout(1)`), 2 for a triple fault, 3 for other faults.
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::Exited(v) => i32::from(*v),
            Outcome::Halted => 0,
            Outcome::TimedOut => 124,
            Outcome::TripleFault => 2,
            _ => 3,
        }
    }

    /// Whether this is a guest failure worth a register report.
    pub fn is_fault(&self) -> bool {
        !matches!(self, Outcome::Exited(_) | Outcome::Halted)
    }
}

/// The result of [`Machine::run`].
#[derive(Clone, Debug)]
pub struct RunReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Exit counts and timing.
    pub stats: ExitStats,
    /// Registers at the end.
    pub regs: kvm_regs,
    /// Special registers at the end.
    pub sregs: kvm_sregs,
    /// The instruction that caused the end (at the faulting RIP for exceptions).
    pub instruction: Option<Decoded>,
}

impl RunReport {
    /// A multi-line, human-readable account of a fault: what happened, where, the
    /// instruction, and the registers.
    pub fn fault_report(&self) -> String {
        let mut s = String::new();
        let _ = match &self.outcome {
            Outcome::TimedOut => writeln!(s, "guest stopped: timeout expired"),
            Outcome::TripleFault => writeln!(
                s,
                "guest triple fault (KVM_EXIT_SHUTDOWN): an exception occurred that the guest could not handle, \
                 not even as a double fault"
            ),
            Outcome::Exception(e) => {
                let _ = write!(
                    s,
                    "guest exception {} (vector {}) at rip {:#x}, cpl {}",
                    arch::exception_name(e.vector),
                    e.vector,
                    e.rip,
                    e.cs & 3
                );
                if let Some(code) = e.error_code {
                    let _ = write!(s, ", error code {code:#x}");
                }
                if let Some(cr2) = e.cr2 {
                    let _ = write!(s, ", address {cr2:#x}");
                }
                writeln!(s, "\n  (rip, rsp and rflags below are from the exception frame)")
            }
            Outcome::FailEntry { reason, cpu } => writeln!(
                s,
                "KVM_EXIT_FAIL_ENTRY: the CPU refused to enter the guest (hardware reason {reason:#x}, host cpu {cpu}); \
                 the guest state is invalid"
            ),
            Outcome::InternalError(e) => {
                let _ = writeln!(s, "KVM_EXIT_INTERNAL_ERROR suberror {}: {}", e.suberror, e.meaning());
                if !e.data.is_empty() {
                    let words: Vec<String> = e.data.iter().map(|d| format!("{d:#x}")).collect();
                    let _ = writeln!(s, "  data: {}", words.join(" "));
                }
                if !e.insn_bytes.is_empty() {
                    let _ = writeln!(s, "  instruction bytes reported by KVM: {}", disasm::hex(&e.insn_bytes));
                }
                Ok(())
            }
            Outcome::UnexpectedExit(name) => writeln!(s, "unexpected VM exit {name}: rypervisor does not handle it"),
            Outcome::Exited(v) => writeln!(s, "guest exited with status {v}"),
            Outcome::Halted => writeln!(s, "guest halted"),
        };
        if let Some(i) = &self.instruction {
            let _ = writeln!(s, "  instruction: {i}");
        }
        s + &register_dump(&self.regs, &self.sregs)
    }
}

/// Registers as a compact block for fault reports.
pub fn register_dump(r: &kvm_regs, s: &kvm_sregs) -> String {
    let mut out = String::new();
    let f = explain::regs_fields(r);
    for row in f.chunks(4) {
        let line: Vec<String> = row.iter().map(|(n, v)| format!("{n:>6}={v}")).collect();
        let _ = writeln!(out, "  {}", line.join(" "));
    }
    let _ = writeln!(
        out,
        "  cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
        s.cr0, s.cr2, s.cr3, s.cr4, s.efer
    );
    let _ = writeln!(
        out,
        "  cs={:#06x} (base {:#x}, dpl {}, {}) ss={:#06x}",
        s.cs.selector,
        s.cs.base,
        s.cs.dpl,
        if s.cs.l == 1 {
            "64-bit"
        } else if s.cs.db == 1 {
            "32-bit"
        } else {
            "16-bit"
        },
        s.ss.selector
    );
    out
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

    /// Adds a 16550 UART at COM1 (port 0x3f8) writing to `out` and reading from `input`.
    pub fn add_serial(
        &mut self,
        out: Box<dyn Write + Send>,
        input: Option<Box<dyn Read + Send>>,
    ) -> Result<(), MachineError> {
        let serial = Arc::new(Mutex::new(SerialDevice::new(NoInterrupt, out, input)));
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
        let dog = match self.timeout {
            Some(_) => Some(Watchdog::new().map_err(|e| MachineError::Watchdog(e.to_string()))?),
            None => None,
        };
        let watchdog = dog.as_ref().zip(self.timeout).map(|(d, t)| d.arm(t));
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
            let entered = Instant::now();
            let result = self.vcpu.fd.run();
            let exited = Instant::now();
            stats.guest_time += exited - entered;
            let action = match result {
                Ok(mut exit) => {
                    let action = handle_exit(&mut exit, &self.bus, &self.stop, &mut stats);
                    exits += 1;
                    if obs.enabled() {
                        let (reason, detail) = (exit_name(&exit), describe_exit(&exit));
                        self.narrate_exit(obs, exits, reason, detail, &action);
                    }
                    action
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    stats.record(ExitKind::Interrupted);
                    ExitAction::Continue
                }
                Err(e) => {
                    return Err(VcpuError::Ioctl {
                        name: "KVM_RUN",
                        source: e,
                    }
                    .into())
                }
            };
            stats.vmm_time += exited.elapsed();
            if let ExitAction::Stop(s) = action {
                break Some(s);
            }
        };
        drop(watchdog);
        if let Some(serial) = &self.serial {
            serial.lock().unwrap_or_else(|p| p.into_inner()).flush();
        }
        let report = self.report(stop, stats)?;
        if let Some((regs, sregs)) = start_state {
            obs.event(Event::Registers {
                title: "registers: at the first KVM_RUN → at the end".into(),
                rows: explain::diff(
                    &explain::regs_fields(&regs),
                    &explain::regs_fields(&report.regs),
                ),
            });
            let srows = explain::diff(
                &explain::sregs_fields(&sregs),
                &explain::sregs_fields(&report.sregs),
            );
            if srows.iter().any(|r| r.changed) {
                obs.event(Event::Registers {
                    title: "special registers: at the first KVM_RUN → at the end".into(),
                    rows: srows,
                });
            }
        }
        Ok(report)
    }

    fn narrate_start(&self, obs: &mut dyn Observer) -> Result<(kvm_regs, kvm_sregs), MachineError> {
        let devices: Vec<String> = self
            .bus
            .ranges()
            .iter()
            .map(|r| {
                format!(
                    "{} {:#x}..{:#x}: {}",
                    r.space,
                    r.base,
                    r.base + r.len - 1,
                    r.name
                )
            })
            .collect();
        obs.event(Event::Note {
            text: format!(
                "Devices on the bus (an access to anything else is counted and ignored): {}.",
                if devices.is_empty() {
                    "none".to_string()
                } else {
                    devices.join("; ")
                }
            ),
        });
        let (regs, sregs) = self.vcpu.state()?;
        obs.event(Event::Ioctl {
            name: "KVM_RUN",
            fd: self.vcpu.raw_fd(),
            arg: "0".into(),
            result: "0 on each VM exit; kvm_run.exit_reason says why (the loop below)".into(),
        });
        Ok((regs, sregs))
    }

    fn narrate_exit(
        &mut self,
        obs: &mut dyn Observer,
        number: u64,
        reason: &'static str,
        detail: String,
        action: &ExitAction,
    ) {
        let instruction = self
            .vcpu
            .state()
            .ok()
            .and_then(|(r, s)| self.decode_at(r.rip, &s));
        let action = match action {
            ExitAction::Continue => "handled; KVM_RUN again".to_string(),
            ExitAction::Stop(Stop::Requested(v)) => {
                format!("exit device: the VM ends with status {v}")
            }
            ExitAction::Stop(Stop::Halted) => {
                "the guest halted; with no interrupt to wake it, the VM ends".into()
            }
            ExitAction::Stop(s) => format!("the VM ends: {s:?}"),
        };
        // On hardware KVM, RIP still points at an `in`/`out` when its exit reaches the VMM (KVM
        // skips it on the next KVM_RUN); when KVM emulated the instruction, RIP is already past it.
        let exiting = instruction.as_ref().is_some_and(|i| {
            reason == "KVM_EXIT_IO" && (i.text.starts_with("in") || i.text.starts_with("out"))
        });
        let rip_is = if exiting {
            "the exiting instruction"
        } else {
            "the next instruction"
        };
        obs.event(Event::Exit {
            number,
            reason,
            detail,
            instruction,
            rip_is,
            action,
        });
    }

    /// Reads and disassembles the instruction at `rip` (a CS-relative address).
    fn decode_at(&self, rip: u64, sregs: &kvm_sregs) -> Option<Decoded> {
        let linear = sregs.cs.base.wrapping_add(rip);
        let phys = if sregs.cr0 & arch::cr0::PG != 0 {
            match self.vcpu.fd.translate_gva(linear) {
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
        let (regs, sregs) = self.vcpu.state()?;
        let outcome = match stop {
            None => Outcome::TimedOut,
            Some(Stop::Requested(v)) => Outcome::Exited(v),
            Some(Stop::Halted) => match self.area.vector_at(regs.rip) {
                Some(vector) => Outcome::Exception(self.exception(vector, &regs, &sregs)),
                None => Outcome::Halted,
            },
            Some(Stop::TripleFault) => Outcome::TripleFault,
            Some(Stop::FailEntry { reason, cpu }) => Outcome::FailEntry { reason, cpu },
            Some(Stop::InternalError) => Outcome::InternalError(self.internal_error()),
            Some(Stop::Unexpected(name)) => Outcome::UnexpectedExit(name),
        };
        let mut regs = regs;
        if let Outcome::Exception(e) = &outcome {
            // Report the registers as they were at the fault, not in the VMM's stub.
            regs.rip = e.rip;
            regs.rsp = e.rsp;
            regs.rflags = e.rflags;
        }
        let rip = regs.rip;
        // Disassembly is for fault reports; a clean exit skips the formatter's setup cost.
        let instruction = match &outcome {
            o if !o.is_fault() => None,
            Outcome::InternalError(e) if !e.insn_bytes.is_empty() => {
                let bitness = arch::code_bitness(&sregs);
                Some(disasm::decode(&e.insn_bytes, bitness, rip))
            }
            _ => self.decode_at(rip, &sregs),
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
        let width = if self.mode == CpuMode::Long { 8 } else { 4 };
        let word = |i: u64| -> u64 {
            let addr = regs.rsp + i * width;
            let v = self.ram.read_u64(addr).unwrap_or(u64::MAX);
            if width == 4 {
                v & 0xffff_ffff
            } else {
                v
            }
        };
        let (error_code, first) = if arch::has_error_code(vector) {
            (Some(word(0)), 1)
        } else {
            (None, 0)
        };
        let cs = word(first + 1) & 0xffff;
        // 64-bit frames always hold RSP; 32-bit ones only on a privilege change (never here:
        // protected-mode guests run at CPL0), so the old stack is just above the frame.
        let rsp = if width == 8 {
            word(first + 3)
        } else {
            regs.rsp + (first + 3) * width
        };
        ExceptionInfo {
            vector,
            error_code,
            rip: word(first),
            cs,
            rflags: word(first + 2),
            rsp,
            cr2: (vector == 14).then_some(sregs.cr2),
        }
    }

    fn internal_error(&mut self) -> InternalErrorInfo {
        read_internal_error(&mut self.vcpu.fd)
    }
}

/// Reads the details of the `KVM_EXIT_INTERNAL_ERROR` the vCPU just returned.
pub fn read_internal_error(vcpu: &mut kvm_ioctls::VcpuFd) -> InternalErrorInfo {
    let run = vcpu.get_kvm_run();
    // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, for which the kernel fills the
    // `internal` member of the exit union; the struct is plain integers.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let ndata = (internal.ndata as usize).min(internal.data.len());
    let data = internal.data[..ndata].to_vec();
    // For emulation failures with KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
    // the words after `flags` hold `insn_size` (1 byte) then up to 15 instruction bytes.
    let mut insn_bytes = Vec::new();
    if internal.suberror == KVM_INTERNAL_ERROR_EMULATION
        && ndata >= 3
        && data[0] & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0
    {
        let raw: Vec<u8> = data[1..3].iter().flat_map(|w| w.to_le_bytes()).collect();
        let size = usize::from(raw[0]).min(15);
        insn_bytes = raw[1..1 + size].to_vec();
    }
    InternalErrorInfo {
        suberror: internal.suberror,
        data,
        insn_bytes,
    }
}
