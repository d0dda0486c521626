//! [`SandboxBuilder`]: what to run and under which limits, then [`SandboxBuilder::build`],
//! which checks the program before touching KVM and builds the micro-VM in steps: the VM and
//! its memory, the vCPU (CPUID, CPU tables, the system-call MSRs), the program and its stack.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_xcrs, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Cap;

use super::host::fill_random;
use super::linux::start::{self, StartInfo};
use super::linux::{Process, UID};
use super::program::{Program, ProgramError};
use super::run::Sandbox;
use super::usermem::UserMemory;
use super::vdso::{self, clock::HostTime, clock::TimeKeeper};
use super::{layout, Policy, SandboxError, DEFAULT_MEM, MAX_STACK};
use crate::arch::rflags;
use crate::hostfile::read_regular;
use crate::kvm::{ioctl, KvmSystem, DEFAULT_DEVICE};
use crate::memory::PAGE_SIZE;
use crate::vcpu::Vcpu;
use crate::vm::Vm;
use crate::watchdog::Watchdog;

/// Configuration of a sandbox, built up with chained calls.
#[derive(Clone, Debug)]
pub struct SandboxBuilder {
    name: String,
    program: Source,
    args: Vec<String>,
    env: Vec<String>,
    mem: u64,
    timeout: Option<Duration>,
    policy: Policy,
    trace: Option<crate::sandbox::linux::trace::TraceSink>,
    kvm_device: PathBuf,
    tsc_clock: bool,
}

impl SandboxBuilder {
    /// A sandbox for the program in `bytes`, called `name` in messages and argv[0].
    pub fn new(name: &str, bytes: Vec<u8>) -> Self {
        Self::with_source(name, Source::Bytes(bytes))
    }

    fn with_source(name: &str, program: Source) -> Self {
        Self {
            name: name.into(),
            program,
            args: vec![name.into()],
            env: Vec::new(),
            mem: DEFAULT_MEM,
            timeout: None,
            policy: Policy::default(),
            trace: None,
            kvm_device: PathBuf::from(DEFAULT_DEVICE),
            tsc_clock: true,
        }
    }

    /// A sandbox for the program file at `path`. The file is read by [`build`](Self::build),
    /// once the memory size is known: it must be a regular file no larger than that.
    pub fn from_file(path: &Path) -> Result<Self, SandboxError> {
        Ok(Self::with_source(
            &path.display().to_string(),
            Source::File(path.to_path_buf()),
        ))
    }

    /// The whole argv, argv[0] included.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// The environment (`NAME=value` strings); empty by default.
    pub fn env<I: IntoIterator<Item = S>, S: Into<String>>(mut self, env: I) -> Self {
        self.env = env.into_iter().map(Into::into).collect();
        self
    }

    /// Guest memory size: everything the program can ever use.
    pub fn mem(mut self, bytes: u64) -> Self {
        self.mem = bytes;
        self
    }

    /// Wall-clock limit for each run.
    pub fn timeout(mut self, limit: Option<Duration>) -> Self {
        self.timeout = limit;
        self
    }

    /// The system-call policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Print each system call strace-style on stderr.
    pub fn trace(mut self, on: bool) -> Self {
        use crate::sandbox::linux::trace::TraceSink;
        self.trace = on.then_some(TraceSink::Stderr);
        self
    }

    /// Write the system-call trace to `file` instead of stderr.
    pub fn trace_to(mut self, file: std::fs::File) -> Self {
        self.trace = Some(crate::sandbox::linux::trace::TraceSink::File(file.into()));
        self
    }

    /// Whether the vDSO reads the clocks from the TSC where the TSC can be trusted (the
    /// default); `false` sends every vDSO call to the VMM as a system call, as on a host
    /// without an invariant TSC.
    pub fn tsc_clock(mut self, on: bool) -> Self {
        self.tsc_clock = on;
        self
    }

    /// The KVM device to open.
    pub fn kvm_device(mut self, path: &Path) -> Self {
        self.kvm_device = path.into();
        self
    }

    /// Checks the program, creates the VM, loads the program and prepares the process start.
    pub fn build(mut self) -> Result<Sandbox, SandboxError> {
        let started = Instant::now();
        // Cheap checks first: a bad program or size fails before any KVM work.
        let bytes = match std::mem::replace(&mut self.program, Source::Bytes(Vec::new())) {
            Source::Bytes(bytes) => bytes,
            Source::File(path) => read_regular("program", &path, self.mem, "guest memory (--mem)")?,
        };
        let program = Program::parse(&self.name, bytes)?;
        layout::check_mem(self.mem)?;
        let stack_size = (self.mem / 8).min(MAX_STACK) & !(PAGE_SIZE - 1);
        let stack_bottom = self.mem - stack_size;
        let interp = self.interpreter(&program, stack_bottom)?;
        let limit = interp.as_ref().map_or(stack_bottom, |i| i.start);
        program.check_fits(&self.name, limit, self.mem)?;
        if let Some(i) = &interp {
            i.check_fits(&self.name, stack_bottom, self.mem)?;
        }

        let kvm = KvmSystem::open(&self.kvm_device)?;
        let vm = Vm::create(&kvm)?;
        let mem = UserMemory::new(self.mem)?;
        vm.register_ram_with(mem.ram(), 0, true)?;
        let cpuid = kvm
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpu = create_vcpu(&vm, &cpuid, &mem)?;
        program.load(mem.ram())?;
        if let Some(i) = &interp {
            i.load(mem.ram())?;
        }
        let clock = start_clock(&vcpu, &cpuid, &mem, self.tsc_clock)?;
        let info = StartInfo {
            args: &self.args,
            env: &self.env,
            hwcap: leaf(&cpuid, 1).map_or(0, |e| u64::from(e.edx)),
            random: random_bytes(),
            uid: UID as u64,
            vdso: vdso::VDSO_BASE,
            interp_base: interp.as_ref().map_or(0, |i| i.start),
        };
        let rsp = start::build_stack(mem.ram(), &program, &info, stack_bottom, self.mem)?;
        let regs = kvm_regs {
            rip: interp.as_ref().map_or(program.entry, |i| i.entry),
            rsp,
            rflags: rflags::FIXED | rflags::IF,
            ..Default::default()
        };
        vcpu.fd().set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
        if kvm.kvm.check_extension(Cap::SyncRegs) {
            vcpu.enable_sync_regs();
        }
        // Only a sandbox with a time limit needs the watchdog thread.
        let watchdog = match self.timeout {
            Some(_) => Some(Arc::new(Watchdog::new()?)),
            None => None,
        };
        let mut process = Process::new(self.policy, program.end, self.mem, stack_size);
        if let Some(i) = &interp {
            process.reserve(i.start, i.end);
        }
        Ok(Sandbox::new(
            self.name,
            (kvm, vm, vcpu, mem, clock),
            process,
            (watchdog, self.timeout),
            self.trace,
            started.elapsed(),
        ))
    }
}

/// Where the program comes from.
#[derive(Clone, Debug)]
enum Source {
    /// Its bytes.
    Bytes(Vec<u8>),
    /// A file, read at build time.
    File(PathBuf),
}

impl SandboxBuilder {
    /// A dynamically linked program's interpreter, read from the host where the policy
    /// allows it, placed at the top of the mapping area (below the stack).
    fn interpreter(&self, program: &Program, top: u64) -> Result<Option<Program>, SandboxError> {
        let Some(path) = &program.interp else {
            return Ok(None);
        };
        let Some(host) = self.policy.check_read(path.as_bytes()) else {
            let shown = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
            let dir = shown
                .parent()
                .unwrap_or(Path::new("/"))
                .display()
                .to_string();
            return Err(ProgramError::InterpreterNotAllowed {
                name: self.name.clone(),
                interp: path.clone(),
                dir,
            }
            .into());
        };
        let bytes = read_regular("interpreter", &host, self.mem, "guest memory (--mem)")?;
        Ok(Some(Program::interpreter(&self.name, path, bytes, top)?))
    }
}

/// The vDSO and its time page, written into the VMM's low pages: the TSC is trusted where
/// KVM's CPUID says it is invariant and KVM tells its frequency; else the page sends every
/// vDSO call to the VMM.
fn start_clock(
    vcpu: &Vcpu,
    cpuid: &CpuId,
    mem: &UserMemory,
    tsc_clock: bool,
) -> Result<TimeKeeper, SandboxError> {
    let invariant = leaf(cpuid, 0x8000_0007).is_some_and(|e| e.edx & (1 << 8) != 0);
    let invariant = invariant && tsc_clock;
    let khz = vcpu.fd().get_tsc_khz().ok().filter(|&k| k > 0);
    let tsc = match (invariant, khz) {
        (true, Some(khz)) => Some((vcpu.get_msr(layout::msr::TSC)?, khz)),
        _ => None,
    };
    let keeper = TimeKeeper::start(tsc, &HostTime::now());
    mem.ram().write(vdso::VDSO_BASE, vdso::image()?)?;
    mem.ram()
        .write(vdso::VVAR, vm_memory::ByteValued::as_slice(keeper.page()))?;
    Ok(keeper)
}

/// A CPUID leaf (index 0) of what KVM supports.
fn leaf(cpuid: &CpuId, function: u32) -> Option<kvm_bindings::kvm_cpuid_entry2> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == 0)
        .copied()
}

/// AT_RANDOM's 16 bytes.
fn random_bytes() -> [u8; 16] {
    let mut random = [0u8; 16];
    fill_random(&mut random);
    random
}

/// The vCPU at CPL3 in long mode: CPUID as KVM supports it (so the C library picks the same
/// code paths as on the host), the CPU tables, XCR0 where XSAVE is there, the system-call
/// MSRs, and the system-call port named.
fn create_vcpu(vm: &Vm, cpuid: &CpuId, mem: &UserMemory) -> Result<Vcpu, SandboxError> {
    let fd = vm.fd.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
    fd.set_cpuid2(cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
    let xsave = leaf(cpuid, 1).is_some_and(|e| e.ecx & (1 << 26) != 0);
    let mut sregs = fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    layout::write_tables(mem.ram(), mem.size(), &mut sregs)?;
    layout::setup_sregs(&mut sregs, xsave);
    fd.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
    if xsave {
        // XCR0: x87, SSE, AVX and AVX-512 state as far as KVM supports them (AVX needs it;
        // never AMX, which needs host permission).
        let supported = leaf(cpuid, 0xd).map_or(3, |e| u64::from(e.eax));
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = supported & 0xe7;
        fd.set_xcrs(&xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
    }
    let mut vcpu = Vcpu::new(fd, 0);
    vcpu.set_syscall_port(layout::SYSCALL_PORT);
    vcpu.set_msrs(&layout::msrs())?;
    Ok(vcpu)
}
