//! [`Sandbox`]: a built micro-VM with its program, and its run loop: `Vcpu::run` →
//! `handle_exit`, where a system call is its own arm (served by the [`linux`](super::linux)
//! layer, then completed as `sysret` would), an exception stub's `hlt` is the program's fault,
//! and anything else ends the VM with a report.

use std::sync::Arc;
use std::time::Duration;

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VmFd;

use super::exit::{Exit, Fault};
use super::handlers::{user_regs, SYSRET_RFLAGS};
use super::host::{BufferHost, Host};
use super::layout;
use super::linux::block::ERESTARTSYS;

use super::linux::shared::Shared;
use super::linux::trace::{self, TraceSink};
use super::linux::{Context, Next, Process, SyscallArgs, SyscallStats};
use super::machine::{Kvm, Machine};
use super::spawn::ThreadWaker;
use super::usermem::UserMemory;
use super::vdso::{self, clock::host_monotonic_ns, clock::HostTime, clock::TimeKeeper};
use super::warm::WarmSandbox;
use super::{Policy, SandboxError};
use crate::arch::ExceptionFrame;
use crate::bus::Bus;
use crate::devices::StopSignal;
use crate::disasm;
use crate::kvm::ioctl;
use crate::vcpu::{handle_exit, ExitAction, ExitKind, ExitStats, Stop, Vcpu};
use crate::watchdog::Watchdog;

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

/// Where the run loop stopped.
pub(super) enum Paused {
    /// The program ended.
    Ended(Exit),
    /// Before serving a read of stdin (a warm sandbox snapshots here).
    AtStdinRead,
}

/// A built micro-VM with its program ready to run.
pub struct Sandbox {
    pub(super) name: String,
    // Field order: the vCPU and VM close before the memory they map is freed.
    pub(super) vcpu: Vcpu,
    /// Shared by the process's threads (each a vCPU of it).
    pub(super) vm: Arc<VmFd>,
    /// The next vCPU id in this VM.
    pub(super) next_vcpu: Arc<std::sync::atomic::AtomicU64>,
    /// The vCPUs of this VM's threads that ended, for new threads to reuse.
    pub(super) spare_vcpus: Arc<std::sync::Mutex<Vec<Vcpu>>>,
    pub(super) mem: UserMemory,
    /// `/dev/kvm`, shared with the tree's other micro-VMs.
    pub(super) kvm: Arc<Kvm>,
    pub(super) tsc_clock: bool,
    pub(super) process: Process,
    /// Nothing is on the sandbox's bus: any port or MMIO exit other than a system call is
    /// unexpected.
    bus: Bus,
    stop: StopSignal,
    /// The program made a system call that is not served yet (a warm sandbox pauses at its
    /// first read of stdin); the registers hold it.
    pub(super) paused: bool,
    watchdog: Option<Arc<Watchdog>>,
    timeout: Option<Duration>,
    trace: Option<TraceSink>,
    stats: RunStats,
    /// Unique in the process: snapshots are restored only into the sandbox they came from.
    pub(super) id: u64,
    /// The snapshot the dirty logs are relative to (the last one taken or restored).
    pub(super) baseline: Option<u64>,
    /// Whether the vCPU's segment/control registers may differ from the snapshot's.
    pub(super) sregs_touched: bool,
    build_time: Duration,
    /// The vDSO's time page.
    pub(super) clock: Shared<TimeKeeper>,
    /// This thread as the tree kicks it (while it runs).
    pub(super) waker: Option<ThreadWaker>,
    /// Whether this sandbox re-bases the vDSO's time page: one writer per page, so not a
    /// process's other threads, nor a `vfork` child on its parent's memory (until it execs).
    pub(super) keeps_time: bool,
    /// The process ended while the VMM served a call that cannot say so itself (a `vfork`
    /// parent's wait).
    pub(super) pending_end: Option<Exit>,
    /// The FPU state of each signal handler running, to restore at its `rt_sigreturn`
    /// (bounded: a handler that leaves by `siglongjmp` never returns).
    pub(super) fpu_saved: Vec<Box<kvm_bindings::kvm_xsave>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("program", &self.name)
            .field("mem", &self.mem.size())
            .finish_non_exhaustive()
    }
}

/// The system call in the registers of a syscall exit (Linux's x86-64 convention).
pub(super) fn syscall_args(regs: &kvm_regs) -> SyscallArgs {
    SyscallArgs {
        nr: regs.rax,
        args: [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9],
    }
}

fn is_stdin_read(call: &SyscallArgs) -> bool {
    use super::linux::sysno::{READ, READV};
    (call.nr == READ || call.nr == READV) && call.args[0] == 0
}

/// Sandbox ids.
static NEXT_SANDBOX: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Sandbox {
    pub(super) fn new(
        name: String,
        (kvm, machine, tsc_clock): (Arc<Kvm>, Machine, bool),
        process: Process,
        (watchdog, timeout): (Option<Arc<Watchdog>>, Option<Duration>),
        trace: Option<TraceSink>,
        build_time: Duration,
    ) -> Self {
        let Machine {
            vcpu,
            vm,
            mem,
            clock,
        } = machine;
        Self {
            name,
            vcpu,
            vm,
            next_vcpu: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            spare_vcpus: Arc::default(),
            mem,
            kvm,
            tsc_clock,
            process,
            bus: Bus::new(),
            stop: StopSignal::default(),
            paused: false,
            watchdog,
            timeout,
            trace,
            stats: RunStats::default(),
            id: NEXT_SANDBOX.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            baseline: None,
            sregs_touched: false,
            build_time,
            clock: Shared::new(clock),
            waker: None,
            keeps_time: true,
            pending_end: None,
            fpu_saved: Vec::new(),
        }
    }

    /// A child process's sandbox on `machine` (no watchdog: the tree's end stops it).
    pub(super) fn child(&self, machine: Machine, process: Process) -> Sandbox {
        let mut child = Sandbox::new(
            self.name.clone(),
            (self.kvm.clone(), machine, self.tsc_clock),
            process,
            (None, None),
            self.trace.clone(),
            Duration::ZERO,
        );
        child.sregs_touched = true;
        child
    }

    /// A new thread of this process on `vcpu`: the same VM, memory and clock.
    pub(super) fn thread(&self, vcpu: Vcpu, process: Process) -> Sandbox {
        let mut t = Sandbox::new(
            self.name.clone(),
            (
                self.kvm.clone(),
                Machine {
                    vcpu,
                    vm: self.vm.clone(),
                    mem: self.mem.share(),
                    clock: self.clock.lock().clone(),
                },
                self.tsc_clock,
            ),
            process,
            (None, None),
            self.trace.clone(),
            Duration::ZERO,
        );
        t.next_vcpu = self.next_vcpu.clone();
        t.spare_vcpus = self.spare_vcpus.clone();
        t.clock = self.clock.share(); // one keeper for the page they share
        t.sregs_touched = true;
        t.keeps_time = false; // the first thread keeps the page they share
        t
    }

    /// Puts `machine` in place of the current one (`execve`); the old VM closes first.
    pub(super) fn replace_machine(&mut self, machine: Machine) {
        let Machine {
            vcpu,
            vm,
            mem,
            clock,
        } = machine;
        self.vcpu = vcpu;
        self.vm = vm;
        self.clock = Shared::new(clock);
        self.next_vcpu = Arc::new(std::sync::atomic::AtomicU64::new(1));
        self.spare_vcpus = Arc::default();
        self.mem = mem;
        self.fpu_saved.clear();
        self.baseline = None;
        self.sregs_touched = true;
        self.keeps_time = true; // a machine of its own
    }

    /// Runs `f` with the process and a [`Context`] for it.
    pub(super) fn with_context<R>(
        &mut self,
        host: &mut dyn Host,
        f: impl FnOnce(&mut Process, &mut Context<'_>) -> R,
    ) -> R {
        let remaining = match &self.watchdog {
            Some(w) => Some(w.remaining().unwrap_or_default()),
            None => self.process.tree().remaining(),
        };
        let (vcpu, clock) = (&self.vcpu, &self.clock);
        let vdso_clock =
            move |c: i32| (clock.lock()).read(c, || vcpu.get_msr(layout::msr::TSC).ok());
        let mut cx = Context {
            mem: &mut self.mem,
            host,
            remaining,
            vdso_clock: Some(&vdso_clock),
            interrupt: None,
        };
        f(&mut self.process, &mut cx)
    }

    /// Time `build` took.
    pub fn build_time(&self) -> Duration {
        self.build_time
    }

    /// Statistics of the last run.
    pub fn stats(&self) -> &RunStats {
        &self.stats
    }

    /// System-call counts since the program started (by number) and how many were denied.
    pub fn syscall_stats(&self) -> &SyscallStats {
        &self.process.stats
    }

    /// Guest memory size.
    pub fn mem_size(&self) -> u64 {
        self.mem.size()
    }

    /// The policy the sandbox serves (the CLI sizes its seccomp filter by it).
    pub fn policy(&self) -> &Policy {
        self.process.policy()
    }

    /// Runs the program until it ends, with `host` as its standard streams.
    /// Processes it starts run on threads of their own; they all end when it ends (it is the
    /// tree's init) and their threads are joined before this returns.
    pub fn run(&mut self, host: &mut dyn Host) -> Result<Exit, SandboxError> {
        let tree = self.process.tree().clone();
        let deadline = self
            .timeout
            .and_then(|t| std::time::Instant::now().checked_add(t));
        tree.set_deadline(deadline);
        self.waker = Some(ThreadWaker::register(
            &tree,
            self.process.pid(),
            self.vcpu.kicker(),
        )?);
        let ended = self.run_loop(host, false);
        let ended = match ended {
            Ok(Paused::Ended(exit)) => Ok(Paused::Ended(self.end_of_process(exit))),
            other => other,
        };
        self.waker = None;
        tree.end();
        match ended? {
            Paused::Ended(exit) => Ok(exit),
            // run_loop pauses only when asked to.
            Paused::AtStdinRead => Ok(Exit::Crashed("internal: paused without a request".into())),
        }
    }

    /// Runs until the program first reads stdin (or ends), then snapshots there and returns a
    /// [`WarmSandbox`] that serves requests from that point.
    pub fn into_warm(mut self) -> Result<WarmSandbox, SandboxError> {
        let mut host = BufferHost::default();
        if let Paused::Ended(exit) = self.run_loop(&mut host, true)? {
            let what = exit
                .report()
                .unwrap_or_else(|| format!("status {}", exit.status()));
            return Err(SandboxError::EndedBeforeSnapshot(what));
        }
        let snapshot = self.snapshot()?;
        Ok(WarmSandbox::new(self, snapshot, host))
    }

    /// The run loop: system calls served until the program ends (or, with `pause_at_stdin`,
    /// reads stdin).
    pub(super) fn run_loop(
        &mut self,
        host: &mut dyn Host,
        pause_at_stdin: bool,
    ) -> Result<Paused, SandboxError> {
        self.stats = RunStats::default();
        let mut exits = ExitStats::default();
        let dog = self.watchdog.clone();
        let armed = dog
            .as_ref()
            .zip(self.timeout)
            .map(|(d, t)| d.arm(t, Some(self.vcpu.kicker())));
        let tree = self.process.tree().clone();
        let timed_out = || armed.as_ref().is_some_and(|a| a.fired());
        let mut next = if std::mem::take(&mut self.paused) {
            // The registers still hold the paused call (a reset put them back).
            Some(self.serve(host)?)
        } else {
            None
        };
        let ended = loop {
            match next.take() {
                Some(Some(exit)) => break Paused::Ended(exit),
                Some(None) | None if timed_out() => break Paused::Ended(Exit::TimedOut),
                _ => {}
            }
            let exit = self.vcpu.run(&mut exits)?;
            match handle_exit(exit, &self.bus, &self.stop, &mut exits) {
                ExitAction::Syscall => {}
                ExitAction::Kicked if tree.killed_for(self.process.pid()) => {
                    break Paused::Ended(Exit::Signaled(libc::SIGKILL))
                }
                // A CPU exception at an IDT stub: the program's handler for its signal, if
                // it has one; else its end.
                ExitAction::Stop(Stop::Halted) => match self.fault_to_handler(host)? {
                    Some(exit) => break Paused::Ended(exit),
                    None => continue,
                },
                ExitAction::Kicked => {
                    // Kicked by a signal another process sent: delivered where the program is.
                    if tree.has_incoming(self.process.pid()) {
                        next = Some(self.deliver_async(host)?);
                    }
                    continue;
                }
                action => break Paused::Ended(self.vm_stopped(action, &exits)?),
            }
            if pause_at_stdin && is_stdin_read(&syscall_args(&self.vcpu.exit_state()?.0)) {
                self.paused = true;
                break Paused::AtStdinRead;
            }
            next = Some(self.serve(host)?);
        };
        self.vcpu.finish(&mut exits);
        self.stats.exits = exits.total();
        (self.stats.guest_time, self.stats.vmm_time) = (exits.guest_time, exits.vmm_time);
        Ok(ended)
    }

    /// The VM stopped for something other than a system call: why, for the program's report.
    fn vm_stopped(&mut self, action: ExitAction, exits: &ExitStats) -> Result<Exit, SandboxError> {
        self.sregs_touched = true;
        Ok(match action {
            ExitAction::Stop(Stop::Halted) => self.exception()?,
            ExitAction::Stop(Stop::TripleFault) => {
                Exit::Crashed("triple fault (KVM_EXIT_SHUTDOWN)".into())
            }
            ExitAction::Stop(Stop::InternalError) => {
                let info = self.vcpu.internal_error();
                let (regs, sregs) = self.vcpu.state()?;
                Exit::Crashed(info.summary(regs.rip, &sregs))
            }
            ExitAction::Stop(Stop::Unexpected(name)) => {
                Exit::Crashed(format!("unexpected VM exit {name}"))
            }
            // Port I/O the program did itself (the I/O bitmap lets only the system-call port
            // through, and only its `out` is a call): on Linux it would be a #GP, so SIGSEGV.
            ExitAction::Continue
                if matches!(exits.last, Some(ExitKind::IoIn | ExitKind::IoOut)) =>
            {
                self.port_io_fault()?
            }
            // Nothing is on the bus: any other access is as unexpected as any other exit.
            _ => {
                let name = exits.last.map_or("?", |k| k.kvm_name());
                Exit::Crashed(format!("unexpected VM exit {name}"))
            }
        })
    }

    /// The program's own `in`/`out`: a general-protection fault, as Linux gives it.
    fn port_io_fault(&mut self) -> Result<Exit, SandboxError> {
        const GP: u8 = 13;
        let (regs, _) = self.vcpu.state()?;
        Ok(Exit::Fault(Fault {
            vector: GP,
            error_code: Some(0),
            rip: regs.rip,
            rsp: regs.rsp,
            address: None,
            instruction: self.instruction_at(regs.rip),
        }))
    }

    /// The instruction at `rip` disassembled, if it lies in program memory (the program may
    /// have jumped anywhere, up to the top of the address space).
    fn instruction_at(&self, rip: u64) -> String {
        let size = self.mem.size();
        if !layout::is_user(rip, 1, size) {
            return String::new();
        }
        let mut bytes = [0u8; 15];
        let len = (size - rip).min(15) as usize;
        match self.mem.ram().read(rip, &mut bytes[..len]) {
            Ok(()) => {
                let d = disasm::decode(&bytes[..len], 64, rip);
                format!("{} [{}]", d.text, disasm::hex(&d.bytes))
            }
            Err(_) => String::new(),
        }
    }

    /// Serves the system call in the registers and completes it: `None` to continue the
    /// program, or how it ended.
    fn serve(&mut self, host: &mut dyn Host) -> Result<Option<Exit>, SandboxError> {
        self.keep_time()?;
        let (regs, sregs) = self.vcpu.exit_state()?;
        let call = syscall_args(&regs);
        self.stats.syscalls += 1;
        let next = self.with_context(host, |p, cx| p.dispatch(&call, cx));
        if let Some(sink) = self.trace.as_mut() {
            let pid = self.process.pid();
            sink.line(pid, &trace::trace_line(&call, &next, &self.mem));
        }
        let next = match next {
            Next::Vm(request) => match self.vm_request(request, (&regs, &sregs), host)? {
                Some(value) => Next::Return(value),
                None => return Ok(None), // a new image, at its entry point
            },
            next => next,
        };
        if let Some(exit) = self.pending_end.take() {
            return Ok(Some(exit));
        }
        // The program's registers once the call is done: the result in RAX and, as after
        // `sysret`, RIP from RCX and RFLAGS from R11; or, for `rt_sigreturn`, the frame's; or,
        // for a call a handler interrupts that restarts after it, the `syscall` again.
        let (after, whole) = match next {
            Next::Return(value) if value == ERESTARTSYS.ret() => {
                let mut again = user_regs(&regs, call.nr as i64);
                again.rip = regs.rcx.wrapping_sub(2); // `syscall` is 2 bytes
                (again, true)
            }
            Next::Return(value) => (user_regs(&regs, value), false),
            Next::SigReturn => {
                match self.with_context(host, |p, cx| p.sigreturn(regs.rsp, regs.r11, cx)) {
                    Ok(restored) => {
                        if let Some(fpu) = self.fpu_saved.pop() {
                            // SAFETY: the buffer came from KVM_GET_XSAVE on this vCPU.
                            unsafe { self.vcpu.fd().set_xsave(&fpu) }
                                .map_err(ioctl("KVM_SET_XSAVE"))?;
                        }
                        (restored, true)
                    }
                    Err(exit) => return Ok(Some(exit)),
                }
            }
            Next::End(exit) => return Ok(Some(exit)),
            Next::Vm(_) => {
                return Ok(Some(Exit::Crashed(
                    "internal: a VM request came back".into(),
                )))
            }
        };
        let entry = match self.with_context(host, |p, cx| p.deliver(&after, cx)) {
            Ok(entry) => entry,
            Err(exit) => return Ok(Some(exit)),
        };
        if let Some(base) = self.process.take_fs_change() {
            self.vcpu.set_msrs(&[(layout::msr::FS_BASE, base)])?;
        }
        match (entry, whole) {
            (None, false) => {
                let value = after.rax as i64;
                self.complete(value, regs, &sregs)?;
            }
            (None, true) => self.resume(&after, regs, &sregs)?,
            (Some(e), _) => return self.enter_handler(&e, &after, regs, &sregs),
        }
        Ok(None)
    }

    /// Re-bases the vDSO's time page when a refresh is due. The keeper is shared by the
    /// process's threads (their clock system calls read the same one); its first thread
    /// writes the page.
    fn keep_time(&mut self) -> Result<(), SandboxError> {
        if self.keeps_time && self.clock.lock().due(host_monotonic_ns()) {
            let tsc = self.vcpu.get_msr(layout::msr::TSC)?;
            self.clock.lock().refresh(tsc, &HostTime::now());
            self.write_time_page()?;
        }
        Ok(())
    }

    /// Writes the keeper's page (also after a restore put back an older one) under its
    /// sequence lock, as other vCPUs of the process may be reading it: an odd sequence
    /// first, then the body, then the page's own (even) sequence.
    pub(super) fn write_time_page(&mut self) -> Result<(), SandboxError> {
        use std::sync::atomic::{fence, Ordering};
        let page = *self.clock.lock().page();
        let bytes = vm_memory::ByteValued::as_slice(&page);
        let seq = vdso::clock::SEQ as usize;
        let ram = self.mem.ram();
        ram.write(vdso::VVAR, &(page.seq.wrapping_sub(1) | 1).to_le_bytes())?;
        fence(Ordering::SeqCst);
        ram.write(vdso::VVAR + 4, &bytes[seq + 4..])?;
        fence(Ordering::SeqCst);
        Ok(ram.write(vdso::VVAR, &bytes[seq..seq + 4])?)
    }

    /// Puts a system call's result in RAX and returns to the program (see [`layout`]).
    pub(super) fn complete(
        &mut self,
        value: i64,
        mut regs: kvm_regs,
        sregs: &kvm_sregs,
    ) -> Result<(), SandboxError> {
        regs.rax = value as u64;
        let kernel = layout::is_kernel_cs(sregs);
        if !kernel {
            // `syscall` stayed at CPL3 (nested host): do sysret's work here. RFLAGS gets
            // R11 with the bits sysret itself would clear.
            regs.rip = regs.rcx;
            regs.rflags = (regs.r11 & SYSRET_RFLAGS) | crate::arch::rflags::FIXED;
        }
        self.stats.syscall_entry = Some(if kernel {
            "cpl0 (sysretq)"
        } else {
            "cpl3 (vmm returns)"
        });
        Ok(self.vcpu.set_regs(&regs)?)
    }

    /// Decodes the exception behind a HLT at an IDT stub.
    pub(super) fn exception(&mut self) -> Result<Exit, SandboxError> {
        let (regs, sregs) = self.vcpu.state()?;
        let Some(vector) = layout::vector_at(regs.rip) else {
            let rip = regs.rip;
            return Ok(Exit::Crashed(format!(
                "hlt at {rip:#x} outside the exception stubs"
            )));
        };
        let ram = self.mem.ram();
        let frame = ExceptionFrame::decode(vector, true, regs.rsp, &sregs, |addr| {
            ram.read_u64(addr).unwrap_or(u64::MAX)
        });
        let rip = frame.rip;
        Ok(Exit::Fault(Fault {
            vector,
            error_code: frame.error_code,
            instruction: self.instruction_at(rip),
            rip,
            rsp: frame.rsp,
            address: frame.cr2,
        }))
    }
}
