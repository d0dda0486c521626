//! The parts of one micro-VM — the VM, its memory, the vCPU, the vDSO clock — made in steps
//! for a new program ([`Machine::load`]: at build time and at `execve`) or as the copy a
//! `fork` child starts from ([`Machine::fork`]). What all micro-VMs of a sandbox share (the
//! open `/dev/kvm` and what it supports) is [`Kvm`]; a checked program is an [`Image`].

use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_xcrs, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Cap;

use super::host::fill_random;
use super::linux::start::{self, StartInfo};
use super::linux::UID;
use super::program::{Program, ProgramError};
use super::usermem::UserMemory;
use super::vdso::{self, clock::HostTime, clock::TimeKeeper};
use super::{layout, Policy, SandboxError, MAX_STACK};
use crate::arch::rflags;
use crate::hostfile::read_regular;
use crate::kvm::{ioctl, KvmSystem};
use crate::memory::PAGE_SIZE;
use crate::vcpu::Vcpu;
use crate::vm::Vm;

/// The open KVM device and what it supports, shared by every micro-VM of a sandbox (a child
/// or a new image needs no `open` of `/dev/kvm`, which the seccomp filter forbids).
#[derive(Debug)]
pub struct Kvm {
    /// `/dev/kvm`.
    pub system: KvmSystem,
    /// CPUID as KVM supports it.
    pub cpuid: CpuId,
    /// Whether `KVM_CAP_SYNC_REGS` is there.
    pub sync_regs: bool,
    /// `/proc/self/pagemap`, opened before any seccomp filter: which guest pages a `fork`
    /// copies (present or swapped out). `None` where it cannot be read (then `mincore`).
    pub pagemap: Option<std::fs::File>,
}

impl Kvm {
    /// Opens `device` and asks what it supports.
    pub fn open(device: &Path) -> Result<Self, SandboxError> {
        let system = KvmSystem::open(device)?;
        let cpuid = system
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        let sync_regs = system.kvm.check_extension(Cap::SyncRegs);
        let pagemap = std::fs::File::open("/proc/self/pagemap").ok();
        Ok(Self {
            system,
            cpuid,
            sync_regs,
            pagemap,
        })
    }
}

/// A checked program with its interpreter, placed for a guest of `mem` bytes.
#[derive(Clone, Debug)]
pub struct Image {
    /// The program.
    pub program: Program,
    /// Its interpreter (`PT_INTERP`), placed below the stack.
    pub interp: Option<Program>,
    /// Stack size (at the top of memory).
    pub stack_size: u64,
    /// Guest memory size.
    pub mem: u64,
}

impl Image {
    /// Checks `bytes` as program `name` for a guest of `mem` bytes, reading its interpreter
    /// where `policy` allows; nothing touches KVM yet.
    pub fn prepare(
        name: &str,
        bytes: Vec<u8>,
        mem: u64,
        policy: &Policy,
    ) -> Result<Self, SandboxError> {
        let program = Program::parse(name, bytes)?;
        layout::check_mem(mem)?;
        let stack_size = (mem / 8).min(MAX_STACK) & !(PAGE_SIZE - 1);
        let stack_bottom = mem - stack_size;
        let interp = interpreter(name, &program, policy, mem, stack_bottom)?;
        let limit = interp.as_ref().map_or(stack_bottom, |i| i.start);
        program.check_fits(name, limit, mem)?;
        if let Some(i) = &interp {
            i.check_fits(name, stack_bottom, mem)?;
        }
        Ok(Self {
            program,
            interp,
            stack_size,
            mem,
        })
    }

    /// Where the stack starts.
    pub fn stack_bottom(&self) -> u64 {
        self.mem - self.stack_size
    }
}

/// A dynamically linked program's interpreter, read from the host where the policy allows
/// it, placed at the top of the mapping area (below the stack).
fn interpreter(
    name: &str,
    program: &Program,
    policy: &Policy,
    mem: u64,
    top: u64,
) -> Result<Option<Program>, SandboxError> {
    let Some(path) = &program.interp else {
        return Ok(None);
    };
    let Some(host) = policy.check_read(path.as_bytes()) else {
        let shown = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
        let dir = shown
            .parent()
            .unwrap_or(Path::new("/"))
            .display()
            .to_string();
        return Err(ProgramError::InterpreterNotAllowed {
            name: name.into(),
            interp: path.clone(),
            dir,
        }
        .into());
    };
    let bytes = read_regular("interpreter", &host, mem, "guest memory (--mem)")?;
    Ok(Some(Program::interpreter(name, path, bytes, top)?))
}

/// What a new image starts with.
#[derive(Clone, Copy, Debug)]
pub struct Start<'a> {
    /// argv.
    pub args: &'a [Vec<u8>],
    /// envp.
    pub env: &'a [Vec<u8>],
    /// `AT_EXECFN` (`argv[0]` if `None`).
    pub execfn: Option<&'a [u8]>,
    /// Whether the vDSO may read the TSC.
    pub tsc_clock: bool,
}

/// One micro-VM.
pub struct Machine {
    /// The VM (closed before the memory it maps is freed: field order).
    pub vcpu: Vcpu,
    /// The VM (shared by the process's threads, each a vCPU of it).
    pub vm: std::sync::Arc<kvm_ioctls::VmFd>,
    /// Guest memory.
    pub mem: UserMemory,
    /// The vDSO's time page.
    pub clock: TimeKeeper,
}

impl Machine {
    /// A VM running `image` from its entry point: (1) the VM and its memory, (2) the vCPU
    /// with its CPU tables, (3) the program and interpreter loaded, (4) the vDSO and its
    /// clock, (5) the stack with argv, envp and auxv, (6) the registers.
    pub fn load(kvm: &Kvm, image: &Image, start: &Start<'_>) -> Result<Self, SandboxError> {
        // A kick (a child's SIGCHLD) must not fail the KVM calls below with EINTR.
        let _deferred = crate::vcpu::kick::Deferred::new();
        let vm = Vm::create(&kvm.system)?;
        let mem = UserMemory::new(image.mem)?;
        vm.register_ram_with(mem.ram(), 0, true)?;
        let mut vcpu = create_vcpu(&vm, &kvm.cpuid, &mem)?;
        image.program.load(mem.ram())?;
        if let Some(i) = &image.interp {
            i.load(mem.ram())?;
        }
        let clock = start_clock(&vcpu, &kvm.cpuid, &mem, start.tsc_clock)?;
        let info = StartInfo {
            args: start.args,
            env: start.env,
            execfn: start.execfn,
            hwcap: leaf(&kvm.cpuid, 1).map_or(0, |e| u64::from(e.edx)),
            random: random_bytes(),
            uid: UID as u64,
            vdso: vdso::VDSO_BASE,
            interp_base: image.interp.as_ref().map_or(0, |i| i.start),
        };
        let (bottom, top) = (image.stack_bottom(), image.mem);
        let rsp = start::build_stack(mem.ram(), &image.program, &info, bottom, top)?;
        let entry = image
            .interp
            .as_ref()
            .map_or(image.program.entry, |i| i.entry);
        let regs = kvm_regs {
            rip: entry,
            rsp,
            rflags: rflags::FIXED | rflags::IF,
            ..Default::default()
        };
        vcpu.fd().set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
        if kvm.sync_regs {
            vcpu.enable_sync_regs();
        }
        Ok(Self {
            vcpu,
            vm: std::sync::Arc::new(vm.fd),
            mem,
            clock,
        })
    }

    /// A `fork` (or `vfork`, `share_mem`) child of the machine whose vCPU is `parent`, stopped
    /// at a system call with `regs`/`sregs`: (1) a VM with a copy of the memory (or the same
    /// memory), (2) a vCPU with the parent's segment, FPU and MSR state, TSC included, so the
    /// parent's vDSO time page holds for the child, (3) the parent's registers (the caller
    /// completes the call with the child's return value).
    pub fn fork(
        kvm: &Kvm,
        parent: &Vcpu,
        parent_mem: &UserMemory,
        share_mem: bool,
        clock: &TimeKeeper,
        (regs, sregs): (&kvm_regs, &kvm_sregs),
    ) -> Result<Self, SandboxError> {
        let _deferred = crate::vcpu::kick::Deferred::new();
        let vm = Vm::create(&kvm.system)?;
        let mem = if share_mem {
            parent_mem.share()
        } else {
            UserMemory::copy_of(parent_mem, kvm.pagemap.as_ref())?.0
        };
        vm.register_ram_with(mem.ram(), 0, true)?;
        // The tables are in the memory (copied, or shared: then other vCPUs of the parent
        // may be running on them, so they are never rewritten); the parent's segment
        // registers point at them.
        let mut vcpu = new_vcpu(&vm.fd, &kvm.cpuid, 0)?;
        copy_cpu(kvm, parent, &mut vcpu, (regs, sregs))?;
        Ok(Self {
            vcpu,
            vm: std::sync::Arc::new(vm.fd),
            mem,
            clock: clock.clone(),
        })
    }

    /// A new thread's vCPU, `id` in `vm` (the process's VM): its creator's segments, FPU,
    /// MSRs and TSC, and registers (the caller completes the call).
    pub fn thread_vcpu(
        kvm: &Kvm,
        vm: &kvm_ioctls::VmFd,
        id: u64,
        parent: &Vcpu,
        (regs, sregs): (&kvm_regs, &kvm_sregs),
    ) -> Result<Vcpu, SandboxError> {
        let _deferred = crate::vcpu::kick::Deferred::new();
        let mut vcpu = new_vcpu(vm, &kvm.cpuid, id)?;
        copy_cpu(kvm, parent, &mut vcpu, (regs, sregs))?;
        Ok(vcpu)
    }
}

impl Machine {
    /// A new thread on the vCPU of a thread that ended (KVM frees a vCPU only with its VM,
    /// so vCPUs are reused, not made anew for every thread): its creator's state.
    pub fn reuse_vcpu(
        kvm: &Kvm,
        vcpu: &mut Vcpu,
        parent: &Vcpu,
        (regs, sregs): (&kvm_regs, &kvm_sregs),
    ) -> Result<(), SandboxError> {
        let _deferred = crate::vcpu::kick::Deferred::new();
        copy_cpu(kvm, parent, vcpu, (regs, sregs))
    }
}

/// `parent`'s state on `vcpu`: segments and tables, registers, FPU, the FS/GS bases and TSC.
fn copy_cpu(
    kvm: &Kvm,
    parent: &Vcpu,
    vcpu: &mut Vcpu,
    (regs, sregs): (&kvm_regs, &kvm_sregs),
) -> Result<(), SandboxError> {
    // Through kvm_run where a reused vCPU already syncs its registers there.
    vcpu.set_sregs(sregs)?;
    vcpu.set_regs(regs)?;
    let fpu = parent.fd().get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?;
    // SAFETY: the buffer came from KVM_GET_XSAVE on a vCPU of the same KVM, with the same
    // CPUID and XCR0.
    unsafe { vcpu.fd().set_xsave(&fpu) }.map_err(ioctl("KVM_SET_XSAVE"))?;
    let mut msrs = Vec::new();
    for index in [
        layout::msr::FS_BASE,
        layout::msr::GS_BASE,
        layout::msr::KERNEL_GS_BASE,
        layout::msr::TSC,
    ] {
        msrs.push((index, parent.get_msr(index)?));
    }
    vcpu.set_msrs(&msrs)?;
    if kvm.sync_regs {
        vcpu.enable_sync_regs();
    }
    Ok(())
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
    let vcpu = new_vcpu(&vm.fd, cpuid, 0)?;
    let xsave = leaf(cpuid, 1).is_some_and(|e| e.ecx & (1 << 26) != 0);
    let mut sregs = vcpu.fd().get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    layout::write_tables(mem.ram(), mem.size(), &mut sregs)?;
    layout::setup_sregs(&mut sregs, xsave);
    vcpu.fd()
        .set_sregs(&sregs)
        .map_err(ioctl("KVM_SET_SREGS"))?;
    Ok(vcpu)
}

/// vCPU `id` of `vm` with CPUID, XCR0 and the system-call MSRs (its segments and tables are
/// the caller's to set: a new VM's, or a thread's copy of its creator's).
fn new_vcpu(vm: &kvm_ioctls::VmFd, cpuid: &CpuId, id: u64) -> Result<Vcpu, SandboxError> {
    let fd = vm.create_vcpu(id).map_err(ioctl("KVM_CREATE_VCPU"))?;
    fd.set_cpuid2(cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
    let xsave = leaf(cpuid, 1).is_some_and(|e| e.ecx & (1 << 26) != 0);
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
    let mut vcpu = Vcpu::new(fd, id);
    vcpu.set_syscall_port(layout::SYSCALL_PORT);
    vcpu.set_msrs(&layout::msrs())?;
    Ok(vcpu)
}
