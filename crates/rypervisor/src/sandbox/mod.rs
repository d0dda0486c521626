//! The sandbox: one static Linux program in its own KVM micro-VM, with no guest kernel.
//!
//! The program runs at CPL3 in long mode. Each system call it makes leaves the VM (see
//! [`layout`] for the path) and is served by [`syscalls::Process::dispatch`] under a
//! [`Policy`]; everything else the program does runs natively on the CPU.
//!
//! The types follow the life of a micro-VM:
//! - [`SandboxBuilder`]: program, arguments, environment, memory size, time limit, policy;
//! - [`Sandbox`]: built and ready at the program's entry point; [`Sandbox::run`] runs it to
//!   its end and returns an [`Exit`];
//! - [`WarmSandbox`]: a sandbox snapshotted where the program first reads stdin; each
//!   [`WarmSandbox::call`] serves one request (stdin in, stdout/stderr out) and resets the VM
//!   to the snapshot, restoring only the pages the program or the VMM dirtied, the
//!   registers and the FPU state.
//!
//! ```no_run
//! use rypervisor::sandbox::SandboxBuilder;
//! let sandbox = SandboxBuilder::from_file("./hello".as_ref())?.args(["hello"]).build()?;
//! let mut warm = sandbox.into_warm()?;
//! let reply = warm.call(b"request 1\n")?;
//! println!("{} → {:?}", reply.exit.status(), String::from_utf8_lossy(&reply.stdout));
//! # Ok::<(), rypervisor::sandbox::SandboxError>(())
//! ```

pub mod layout;
pub mod policy;
pub mod program;
pub mod syscalls;
pub mod usermem;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_xcrs, kvm_xsave, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, SyncReg, VcpuExit, VcpuFd, VmFd};

pub use policy::{Policy, PolicyError, STRICT_STATUS};
pub use program::{Program, ProgramError};
pub use syscalls::{BufferHost, Host, StdHost, SyscallArgs};

use crate::disasm;
use crate::kvm::{KvmError, KvmSystem, DEFAULT_DEVICE};
use crate::machine::{read_internal_error, InternalErrorInfo};
use crate::memory::{MemoryError, PAGE_SIZE};
use crate::vm::{Vm, VmError};
use crate::watchdog::{Watchdog, WatchdogError};
use syscalls::{Context, Next, Process};
use usermem::UserMemory;

/// Default guest memory: the whole sandbox, program and heap included.
pub const DEFAULT_MEM: u64 = 64 << 20;
/// Largest stack the program gets (less when memory is small: an eighth of it).
pub const MAX_STACK: u64 = 8 << 20;

/// Errors building or running a sandbox (not the program's own failures: those are
/// [`Exit`]s).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Opening /dev/kvm failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Creating the VM or its memory failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A guest memory problem.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The program cannot run here.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// The program file cannot be read.
    #[error("cannot read program {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A vCPU ioctl failed.
    #[error("{name} failed: {source}")]
    Ioctl {
        /// The ioctl.
        name: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// The watchdog could not start.
    #[error(transparent)]
    Watchdog(#[from] WatchdogError),
    /// A snapshot was asked for while the program holds host files open.
    #[error("cannot snapshot: the program holds {0} host file(s) open")]
    FilesOpen(usize),
    /// The program ended before the point a warm sandbox snapshots at.
    #[error("the program ended ({0}) before it read stdin, so there is nothing to snapshot")]
    EndedBeforeSnapshot(String),
    /// reset() without a snapshot.
    #[error("reset needs a snapshot")]
    NoSnapshot,
}

fn ioctl(name: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SandboxError {
    move |source| SandboxError::Ioctl { name, source }
}

/// How the program ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// exit/exit_group with this status.
    Exited(i32),
    /// `--strict` ended it at a system call outside the policy.
    Denied {
        /// The call's number.
        nr: u64,
    },
    /// A CPU exception at CPL3.
    Fault(Fault),
    /// The time limit expired.
    TimedOut,
    /// The VM stopped for a reason that is not the program's doing (emulation failure,
    /// triple fault, unexpected exit).
    Crashed(String),
}

/// Exit status for a CPU exception, as a shell reports a signal (128 + signal).
pub fn fault_status(vector: u8) -> i32 {
    128 + match vector {
        0 | 16 | 19 => libc::SIGFPE,
        1 | 3 => libc::SIGTRAP,
        6 => libc::SIGILL,
        17 => libc::SIGBUS,
        _ => libc::SIGSEGV,
    }
}

impl Exit {
    /// The process exit status a shell would show.
    pub fn status(&self) -> i32 {
        match self {
            Exit::Exited(s) => *s,
            Exit::Denied { .. } => STRICT_STATUS,
            Exit::Fault(f) => fault_status(f.vector),
            Exit::TimedOut => 124,
            Exit::Crashed(_) => 1,
        }
    }

    /// A one-line report for stderr, or `None` for a normal exit.
    pub fn report(&self) -> Option<String> {
        match self {
            Exit::Exited(_) => None,
            Exit::Denied { nr } => Some(format!(
                "program killed: system call {} ({nr}) is not allowed (--strict)",
                syscalls::name(*nr)
            )),
            Exit::Fault(f) => Some(f.to_string()),
            Exit::TimedOut => Some("program stopped: time limit expired".into()),
            Exit::Crashed(why) => Some(format!("sandbox VM stopped: {why}")),
        }
    }
}

/// A CPU exception the program caused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Vector.
    pub vector: u8,
    /// Error code, if the vector has one.
    pub error_code: Option<u64>,
    /// Faulting instruction.
    pub rip: u64,
    /// Stack pointer at the fault.
    pub rsp: u64,
    /// Faulting address (page faults).
    pub address: Option<u64>,
    /// The instruction, disassembled (empty if unreadable).
    pub instruction: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let signal = match fault_status(self.vector) - 128 {
            libc::SIGFPE => "SIGFPE",
            libc::SIGILL => "SIGILL",
            libc::SIGTRAP => "SIGTRAP",
            libc::SIGBUS => "SIGBUS",
            _ => "SIGSEGV",
        };
        write!(
            f,
            "program killed by {signal}: {} at rip {:#x}",
            layout::exception_name(self.vector),
            self.rip
        )?;
        if !self.instruction.is_empty() {
            write!(f, " ({})", self.instruction)?;
        }
        if let Some(a) = self.address {
            write!(f, ", address {a:#x}")?;
        }
        if let Some(c) = self.error_code {
            write!(f, ", error code {c:#x}")?;
        }
        Ok(())
    }
}

/// Time and counts of one run.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// System calls served.
    pub syscalls: u64,
    /// VM exits.
    pub exits: u64,
    /// Time inside KVM_RUN (the program running, plus the exit round trips).
    pub guest_time: Duration,
    /// Time in the VMM serving exits.
    pub vmm_time: Duration,
    /// Whether `syscall` entered CPL0 (hardware KVM) or stayed at CPL3 (some nested hosts).
    pub syscall_entry: Option<&'static str>,
}

/// What a reset did.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResetStats {
    /// Pages copied back from the snapshot.
    pub pages: u64,
    /// Time the reset took.
    pub time: Duration,
}

/// Everything needed to put a sandbox back where it was.
struct Snapshot {
    memory: Vec<u8>,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: Box<kvm_xsave>,
    fs_base: u64,
    process: Process,
    paused: bool,
}

/// Configuration of a sandbox, built up with chained calls.
#[derive(Clone, Debug)]
pub struct SandboxBuilder {
    name: String,
    bytes: Vec<u8>,
    args: Vec<String>,
    env: Vec<String>,
    mem: u64,
    timeout: Option<Duration>,
    policy: Policy,
    trace: bool,
    kvm_device: PathBuf,
}

impl SandboxBuilder {
    /// A sandbox for the program in `bytes`, called `name` in messages and argv[0].
    pub fn new(name: &str, bytes: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            bytes,
            args: vec![name.into()],
            env: Vec::new(),
            mem: DEFAULT_MEM,
            timeout: None,
            policy: Policy::default(),
            trace: false,
            kvm_device: PathBuf::from(DEFAULT_DEVICE),
        }
    }

    /// A sandbox for the program file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, SandboxError> {
        let bytes = std::fs::read(path).map_err(|source| SandboxError::Read {
            path: path.into(),
            source,
        })?;
        Ok(Self::new(&path.display().to_string(), bytes))
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
        self.trace = on;
        self
    }

    /// The KVM device to open.
    pub fn kvm_device(mut self, path: &Path) -> Self {
        self.kvm_device = path.into();
        self
    }

    /// Checks the program, creates the VM, loads the program and prepares the process start.
    pub fn build(self) -> Result<Sandbox, SandboxError> {
        let started = Instant::now();
        // Cheap checks first: a bad program or size fails before any KVM work.
        let program = Program::parse(&self.name, self.bytes)?;
        layout::check_mem(self.mem)?;
        let stack_size = (self.mem / 8).min(MAX_STACK) & !(PAGE_SIZE - 1);
        program.check_fits(&self.name, self.mem - stack_size, self.mem)?;

        let kvm = KvmSystem::open(&self.kvm_device)?;
        let vm = Vm::create(&kvm)?;
        let mem = UserMemory::new(self.mem)?;
        vm.register_ram_with(mem.ram(), 0, true)?;
        let mut vcpu = vm.fd.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;

        // CPUID: what KVM supports, so the C library picks the same code paths as on the host.
        let cpuid = kvm
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        let leaf = |f: u32, i: u32| {
            cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == f && e.index == i)
                .copied()
        };
        let hwcap = leaf(1, 0).map_or(0, |e| u64::from(e.edx));
        let xsave = leaf(1, 0).is_some_and(|e| e.ecx & (1 << 26) != 0);
        vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;

        layout::write_tables(mem.ram(), self.mem)?;
        program.load(mem.ram())?;
        let mut random = [0u8; 16];
        syscalls::fill_random(&mut random);
        let info = program::StartInfo {
            args: &self.args,
            env: &self.env,
            hwcap,
            random,
            uid: syscalls::UID as u64,
        };
        let rsp =
            program::build_stack(mem.ram(), &program, &info, self.mem - stack_size, self.mem)?;

        let mut sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        layout::setup_sregs(&mut sregs, xsave);
        vcpu.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
        if xsave {
            // XCR0: x87, SSE, AVX and AVX-512 state as far as KVM supports them (AVX needs it;
            // never AMX, which needs host permission).
            let supported = leaf(0xd, 0).map_or(3, |e| u64::from(e.eax));
            let mut xcrs = kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            };
            xcrs.xcrs[0].xcr = 0;
            xcrs.xcrs[0].value = supported & 0xe7;
            vcpu.set_xcrs(&xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
        }
        crate::vcpu::set_msrs(&vcpu, &layout::msrs()).map_err(ioctl("KVM_SET_MSRS"))?;
        let regs = kvm_regs {
            rip: program.entry,
            rsp,
            rflags: 0x202,
            ..Default::default()
        };
        vcpu.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;

        let sync_regs = kvm.kvm.check_extension(Cap::SyncRegs);
        if sync_regs {
            vcpu.set_sync_valid_reg(SyncReg::Register);
            vcpu.set_sync_valid_reg(SyncReg::SystemRegister);
        }
        let process = Process::new(self.policy, program.end, self.mem, stack_size);
        Ok(Sandbox {
            name: self.name,
            _kvm: kvm,
            vm: vm.fd,
            vcpu,
            mem,
            process,
            sync_regs,
            fs_base: 0,
            paused: false,
            // Only a sandbox with a time limit needs the watchdog thread.
            watchdog: match self.timeout {
                Some(_) => Some(std::sync::Arc::new(Watchdog::new()?)),
                None => None,
            },
            timeout: self.timeout,
            trace: self.trace,
            stats: RunStats::default(),
            snapshot: None,
            sregs_touched: false,
            build_time: started.elapsed(),
        })
    }
}

/// A built micro-VM with its program ready to run.
pub struct Sandbox {
    name: String,
    // Field order: the vCPU and VM close before the memory they map is freed.
    vcpu: VcpuFd,
    vm: VmFd,
    _kvm: KvmSystem,
    mem: UserMemory,
    process: Process,
    sync_regs: bool,
    fs_base: u64,
    /// The program made a system call that is not served yet (a warm sandbox pauses at its
    /// first read of stdin); the registers hold it.
    paused: bool,
    watchdog: Option<std::sync::Arc<Watchdog>>,
    timeout: Option<Duration>,
    trace: bool,
    stats: RunStats,
    snapshot: Option<Snapshot>,
    /// Whether the vCPU's segment/control registers may differ from the snapshot's.
    sregs_touched: bool,
    build_time: Duration,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("program", &self.name)
            .field("mem", &self.mem.size())
            .finish_non_exhaustive()
    }
}

/// Where the run loop stopped.
enum Stop {
    Ended(Exit),
    /// Paused before serving a read of stdin.
    AtStdinRead,
}

/// The system call in the registers of a syscall exit (Linux's x86-64 convention).
fn syscall_args(regs: &kvm_regs) -> SyscallArgs {
    SyscallArgs {
        nr: regs.rax,
        args: [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9],
    }
}

fn is_stdin_read(call: &SyscallArgs) -> bool {
    (call.nr == syscalls::nr::READ || call.nr == syscalls::nr::READV) && call.args[0] == 0
}

impl Sandbox {
    /// Time `build` took.
    pub fn build_time(&self) -> Duration {
        self.build_time
    }

    /// Statistics of the last run.
    pub fn stats(&self) -> &RunStats {
        &self.stats
    }

    /// System-call counts since the program started (by number) and how many were denied.
    pub fn syscall_stats(&self) -> &syscalls::SyscallStats {
        &self.process.stats
    }

    /// Guest memory size.
    pub fn mem_size(&self) -> u64 {
        self.mem.size()
    }

    /// Runs the program until it ends, with `host` as its standard streams.
    pub fn run(&mut self, host: &mut dyn Host) -> Result<Exit, SandboxError> {
        match self.run_loop(host, false)? {
            Stop::Ended(exit) => Ok(exit),
            // run_loop pauses only when asked to.
            Stop::AtStdinRead => Ok(Exit::Crashed("internal: paused without a request".into())),
        }
    }

    /// Runs until the program first reads stdin (or ends), then snapshots there and returns a
    /// [`WarmSandbox`] that serves requests from that point.
    pub fn into_warm(mut self) -> Result<WarmSandbox, SandboxError> {
        let mut host = BufferHost::default();
        match self.run_loop(&mut host, true)? {
            Stop::AtStdinRead => {}
            Stop::Ended(exit) => {
                let what = exit
                    .report()
                    .unwrap_or_else(|| format!("status {}", exit.status()));
                return Err(SandboxError::EndedBeforeSnapshot(what));
            }
        }
        self.snapshot()?;
        Ok(WarmSandbox {
            sandbox: self,
            startup_output: host,
        })
    }

    /// The registers at the last exit and whether CS is at CPL0: one copy out of `kvm_run`'s
    /// synced registers (or two ioctls on hosts without `KVM_CAP_SYNC_REGS`).
    fn state(&mut self) -> Result<(kvm_regs, bool), SandboxError> {
        let (regs, sregs) = if self.sync_regs {
            let sync = self.vcpu.sync_regs();
            (sync.regs, sync.sregs)
        } else {
            (
                self.vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?,
                self.vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?,
            )
        };
        Ok((regs, layout::is_kernel_cs(&sregs)))
    }

    fn put_regs(&mut self, regs: &kvm_regs) -> Result<(), SandboxError> {
        if self.sync_regs {
            self.vcpu.sync_regs_mut().regs = *regs;
            self.vcpu.set_sync_dirty_reg(SyncReg::Register);
            Ok(())
        } else {
            self.vcpu.set_regs(regs).map_err(ioctl("KVM_SET_REGS"))
        }
    }

    fn set_fs_base(&mut self, base: u64) -> Result<(), SandboxError> {
        crate::vcpu::set_msrs(&self.vcpu, &[(layout::msr::FS_BASE, base)])
            .map_err(ioctl("KVM_SET_MSRS"))?;
        self.fs_base = base;
        Ok(())
    }

    /// Serves `call` and completes it: Ok(None) to continue the program.
    fn serve(
        &mut self,
        (regs, kernel): (kvm_regs, bool),
        host: &mut dyn Host,
    ) -> Result<Option<Exit>, SandboxError> {
        let call = syscall_args(&regs);
        self.stats.syscalls += 1;
        let mut set_fs = None;
        let remaining = self
            .watchdog
            .as_ref()
            .map(|w| w.remaining().unwrap_or_default());
        let next = {
            let mut cx = Context {
                mem: &mut self.mem,
                host,
                remaining,
                set_fs: &mut set_fs,
                fs: self.fs_base,
            };
            self.process.dispatch(&call, &mut cx)
        };
        if self.trace {
            eprintln!(
                "[sandbox] {}",
                syscalls::trace_line(&call, &next, &self.mem)
            );
        }
        if let Some(base) = set_fs {
            self.set_fs_base(base)?;
        }
        match next {
            Next::Return(value) => {
                self.complete(value, regs, kernel)?;
                Ok(None)
            }
            Next::Exit(status) => Ok(Some(Exit::Exited(status))),
            Next::Kill => Ok(Some(Exit::Denied { nr: call.nr })),
            Next::TimedOut => Ok(Some(Exit::TimedOut)),
        }
    }

    /// Puts a system call's result in RAX and returns to the program (see [`layout`]).
    fn complete(
        &mut self,
        value: i64,
        mut regs: kvm_regs,
        kernel: bool,
    ) -> Result<(), SandboxError> {
        regs.rax = value as u64;
        if !kernel {
            // `syscall` stayed at CPL3 (nested host): do sysret's work here. RFLAGS gets
            // R11 with the bits sysret itself would clear.
            regs.rip = regs.rcx;
            regs.rflags = (regs.r11 & 0x3c_7fd7) | 2;
        }
        self.stats.syscall_entry = Some(if kernel {
            "cpl0 (sysretq)"
        } else {
            "cpl3 (vmm returns)"
        });
        self.put_regs(&regs)
    }

    fn run_loop(
        &mut self,
        host: &mut dyn Host,
        pause_at_stdin: bool,
    ) -> Result<Stop, SandboxError> {
        self.stats = RunStats::default();
        let dog = self.watchdog.clone();
        let armed = dog.as_ref().zip(self.timeout).map(|(d, t)| d.arm(t));
        let timed_out =
            |a: &Option<crate::watchdog::Armed<'_>>| a.as_ref().is_some_and(|a| a.fired());
        if std::mem::take(&mut self.paused) {
            // The registers still hold the paused call (a reset put them back).
            let state = self.state()?;
            if let Some(exit) = self.serve(state, host)? {
                return Ok(Stop::Ended(exit));
            }
        }
        loop {
            if timed_out(&armed) {
                return Ok(Stop::Ended(Exit::TimedOut));
            }
            let entered = Instant::now();
            let result = self.vcpu.run();
            let exited = Instant::now();
            self.stats.guest_time += exited - entered;
            let exit = match result {
                Ok(VcpuExit::IoOut(layout::SYSCALL_PORT, _)) => None,
                Ok(VcpuExit::Hlt) => Some(self.exception()?),
                Ok(VcpuExit::Shutdown) => {
                    self.sregs_touched = true;
                    Some(Exit::Crashed("triple fault (KVM_EXIT_SHUTDOWN)".into()))
                }
                Ok(VcpuExit::InternalError) => {
                    let info = read_internal_error(&mut self.vcpu);
                    self.sregs_touched = true;
                    Some(Exit::Crashed(self.internal_error(&info)?))
                }
                Ok(other) => {
                    self.sregs_touched = true;
                    Some(Exit::Crashed(format!(
                        "unexpected VM exit {}",
                        crate::vcpu::exit_name(&other)
                    )))
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(ioctl("KVM_RUN")(e)),
            };
            self.stats.exits += 1;
            if let Some(exit) = exit {
                self.stats.vmm_time += exited.elapsed();
                return Ok(Stop::Ended(exit));
            }
            let state = self.state()?;
            let call = syscall_args(&state.0);
            if pause_at_stdin && is_stdin_read(&call) {
                self.paused = true;
                self.stats.vmm_time += exited.elapsed();
                return Ok(Stop::AtStdinRead);
            }
            let ended = self.serve(state, host)?;
            self.stats.vmm_time += exited.elapsed();
            if let Some(exit) = ended {
                return Ok(Stop::Ended(exit));
            }
        }
    }

    /// Decodes the exception behind a HLT at an IDT stub.
    fn exception(&mut self) -> Result<Exit, SandboxError> {
        self.sregs_touched = true;
        let regs = self.vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        let sregs = self.vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        let Some(vector) = layout::vector_at(regs.rip) else {
            return Ok(Exit::Crashed(format!(
                "hlt at {:#x} outside the exception stubs",
                regs.rip
            )));
        };
        let ram = self.mem.ram();
        let word = |i: u64| ram.read_u64(regs.rsp + i * 8).unwrap_or(u64::MAX);
        let (error_code, first) = if crate::arch::has_error_code(vector) {
            (Some(word(0)), 1)
        } else {
            (None, 0)
        };
        let rip = word(first);
        // The faulting instruction, if it lies in program memory (the program may have jumped
        // anywhere, up to the top of the address space).
        let size = self.mem.size();
        let instruction = if layout::is_user(rip, 1, size) {
            let mut bytes = [0u8; 15];
            let len = (size - rip).min(15) as usize;
            match ram.read(rip, &mut bytes[..len]) {
                Ok(()) => {
                    let d = disasm::decode(&bytes[..len], 64, rip);
                    format!("{} [{}]", d.text, disasm::hex(&d.bytes))
                }
                Err(_) => String::new(),
            }
        } else {
            String::new()
        };
        Ok(Exit::Fault(Fault {
            vector,
            error_code,
            rip,
            rsp: word(first + 3),
            address: (vector == 14).then_some(sregs.cr2),
            instruction,
        }))
    }

    fn internal_error(&mut self, info: &InternalErrorInfo) -> Result<String, SandboxError> {
        let regs = self.vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        let mut s = format!(
            "KVM_EXIT_INTERNAL_ERROR suberror {}: {}",
            info.suberror,
            info.meaning()
        );
        if !info.insn_bytes.is_empty() {
            let d = disasm::decode(&info.insn_bytes, 64, regs.rip);
            let _ = write!(
                s,
                "; at rip {:#x}: {} [{}]",
                regs.rip,
                d.text,
                disasm::hex(&info.insn_bytes)
            );
        } else {
            let _ = write!(s, "; at rip {:#x}", regs.rip);
        }
        Ok(s)
    }

    /// Snapshots the whole sandbox: memory, registers, FPU state and process state.
    pub fn snapshot(&mut self) -> Result<(), SandboxError> {
        if self.process.open_files() > 0 {
            return Err(SandboxError::FilesOpen(self.process.open_files()));
        }
        // Flush pending synced registers so the ioctls below see them.
        let (regs, _) = self.state()?;
        self.vcpu.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
        self.vcpu.clear_sync_dirty_reg(SyncReg::Register);
        let sregs = self.vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        let xsave = Box::new(self.vcpu.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?);
        let mut memory = vec![0u8; self.mem.size() as usize];
        self.mem.ram().read(0, &mut memory)?;
        // Start both dirty logs afresh from this point.
        self.take_dirty()?;
        self.snapshot = Some(Snapshot {
            memory,
            regs,
            sregs,
            xsave,
            fs_base: self.fs_base,
            process: self.process.clone(),
            paused: self.paused,
        });
        self.sregs_touched = false;
        Ok(())
    }

    /// Pages written since the last call, by the guest (KVM's log) or the VMM.
    fn take_dirty(&mut self) -> Result<Vec<u64>, SandboxError> {
        let mut dirty = self.mem.take_vmm_dirty();
        let guest = self
            .vm
            .get_dirty_log(0, self.mem.size() as usize)
            .map_err(VmError::DirtyLog)?;
        for (d, g) in dirty.iter_mut().zip(guest) {
            *d |= g;
        }
        Ok(dirty)
    }

    /// Puts the sandbox back to its snapshot: dirtied pages, registers, FPU/SSE/AVX state,
    /// FS base and the process state (heap, mappings, signals).
    pub fn reset(&mut self) -> Result<ResetStats, SandboxError> {
        let started = Instant::now();
        let dirty = self.take_dirty()?;
        let snap = self.snapshot.as_ref().ok_or(SandboxError::NoSnapshot)?;
        let mut pages = 0;
        for (w, word) in dirty.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let bit = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let addr = (w as u64 * 64 + bit) * PAGE_SIZE;
                let at = addr as usize;
                self.mem
                    .ram()
                    .write(addr, &snap.memory[at..at + PAGE_SIZE as usize])?;
                pages += 1;
            }
        }
        if self.sync_regs {
            // Through kvm_run's synced copy, which must not keep the last exit's registers:
            // the next system call reads its arguments from there.
            let sync = self.vcpu.sync_regs_mut();
            sync.regs = snap.regs;
            sync.sregs = snap.sregs;
            self.vcpu.set_sync_dirty_reg(SyncReg::Register);
            if self.sregs_touched {
                self.vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
            }
        } else {
            self.vcpu
                .set_regs(&snap.regs)
                .map_err(ioctl("KVM_SET_REGS"))?;
            if self.sregs_touched {
                self.vcpu
                    .set_sregs(&snap.sregs)
                    .map_err(ioctl("KVM_SET_SREGS"))?;
            }
        }
        self.sregs_touched = false;
        // SAFETY: the buffer came from KVM_GET_XSAVE on this vCPU, so it has the layout and
        // size (the 4 KiB legacy area; the sandbox never enables dynamic XSTATE features such
        // as AMX, which would need KVM_GET_XSAVE2) that KVM_SET_XSAVE reads.
        unsafe { self.vcpu.set_xsave(&snap.xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
        let (fs, process, paused) = (snap.fs_base, snap.process.clone(), snap.paused);
        if self.fs_base != fs {
            self.set_fs_base(fs)?;
        }
        self.process = process;
        self.paused = paused;
        Ok(ResetStats {
            pages,
            time: started.elapsed(),
        })
    }

    /// The policy the sandbox serves (the CLI sizes its seccomp filter by it).
    pub fn policy(&self) -> &Policy {
        self.process.policy()
    }
}

/// The reply to one request.
#[derive(Clone, Debug)]
pub struct Reply {
    /// How the program ended.
    pub exit: Exit,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
    /// The reset after the request.
    pub reset: ResetStats,
}

/// A sandbox snapshotted at the program's first read of stdin, serving one request per call.
#[derive(Debug)]
pub struct WarmSandbox {
    sandbox: Sandbox,
    startup_output: BufferHost,
}

impl WarmSandbox {
    /// What the program wrote before the snapshot (start-up output).
    pub fn startup_output(&self) -> (&[u8], &[u8]) {
        (&self.startup_output.stdout, &self.startup_output.stderr)
    }

    /// Serves one request: `input` is the program's stdin; then resets to the snapshot.
    pub fn call(&mut self, input: &[u8]) -> Result<Reply, SandboxError> {
        let mut host = BufferHost::with_input(input);
        let exit = self.sandbox.run(&mut host)?;
        let reset = self.sandbox.reset()?;
        Ok(Reply {
            exit,
            stdout: host.stdout,
            stderr: host.stderr,
            reset,
        })
    }

    /// The sandbox underneath (statistics of the last call).
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }
}
