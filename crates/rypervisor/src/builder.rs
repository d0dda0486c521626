//! Building a machine in the steps of the LWN article "Using the KVM API".
//!
//! Each `stepN_*` function is one step of the article; with an enabled [`Observer`] it
//! narrates the ioctls it issues (fd numbers, arguments, results) and why. The article's
//! program runs in real mode; the same steps build protected- and long-mode guests, where
//! step 5 also writes the CPU tables described in [`crate::arch`].

use std::sync::Arc;

use kvm_bindings::{kvm_regs, kvm_sregs};

use crate::arch::{self, ArchError, CpuMode, Privilege, SystemArea, FOUR_GIB, SYSTEM_AREA_SIZE};
use crate::bus::Bus;
use crate::devices::StopSignal;
use crate::disasm;
use crate::explain::{self, Event, MapRegion, Observer};
use crate::kvm::{ioctl, IoctlError, KvmError, KvmSystem};
use crate::loader::{Image, LoaderError};
use crate::machine::{Machine, MachineConfig};
use crate::memory::{human_size, GuestRam, MemoryError};
use crate::vcpu::{Vcpu, VcpuError};
use crate::vm::{Vm, VmError};

/// Largest RAM for `run`-style guests: the VMM's identity map covers 0–4 GiB and the top
/// GiB is left for MMIO devices.
pub const MAX_RAM: u64 = 3 << 30;

/// Errors while building a machine.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The seccomp filters could not be built.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// Opening or checking KVM.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Creating the VM or registering memory.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The image does not fit.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// CPU setup.
    #[error(transparent)]
    Arch(#[from] ArchError),
    /// A vCPU ioctl.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// An ioctl.
    #[error(transparent)]
    Ioctl(#[from] IoctlError),
}

/// Builds a machine for `image` as `config` says: all the LWN steps up to (not including)
/// the run loop. Checks the input before touching KVM, so bad input leaves nothing behind.
pub fn build(
    config: &MachineConfig,
    image: &Image,
    obs: &mut dyn Observer,
) -> Result<Machine, BuildError> {
    let area = check(config, image)?;
    let kvm = step1_open_kvm(config, obs)?;
    let vm = step2_create_vm(&kvm, obs)?;
    let ram = step3_guest_memory(&vm, config, image, &area, obs)?;
    let vcpu = step4_create_vcpu(&kvm, &vm, obs)?;
    let stack = step5_special_registers(&vcpu, &ram, &area, image, config.privilege, obs)?;
    step6_registers(&vcpu, image, config, stack, obs)?;
    if obs.enabled() {
        obs.event(Event::Step {
            number: 7,
            title: "Run: KVM_RUN until the guest needs the VMM".into(),
            why: "KVM_RUN enters the guest and returns on a VM exit the kernel does not handle itself. \
                  kvm_run.exit_reason says why; for KVM_EXIT_IO the port, direction, size and data \
                  sit in kvm_run too. The VMM emulates the device and calls KVM_RUN again."
                .into(),
        });
    }
    Ok(Machine {
        vcpu,
        vm,
        ram,
        kvm,
        bus: Bus::new(),
        stop: Arc::new(StopSignal::default()),
        area,
        mode: image.mode,
        timeout: config.timeout,
        serial: None,
        give_up: crate::devices::output::GiveUp::new(),
        filters: match config.seccomp {
            true => Some(crate::seccomp::run::run_filters()?),
            false => None,
        },
    })
}

/// Checks the RAM size and placement alone (before an image is even read: its size is
/// checked against this RAM).
pub fn check_ram(config: &MachineConfig) -> Result<u64, BuildError> {
    let size = config.ram_size;
    if size == 0 {
        return Err(MemoryError::Zero.into());
    }
    if !size.is_multiple_of(crate::memory::PAGE_SIZE) {
        return Err(MemoryError::Unaligned(size).into());
    }
    let end = config
        .ram_base
        .checked_add(size)
        .filter(|&e| e <= FOUR_GIB && size <= MAX_RAM);
    end.ok_or_else(|| {
        MemoryError::TooLarge {
            size,
            why: format!(
                "guests get at most {} of RAM, below 4 GiB (the top GiB is kept for MMIO devices)",
                human_size(MAX_RAM)
            ),
        }
        .into()
    })
}

/// Validates sizes and placement without creating anything.
fn check(config: &MachineConfig, image: &Image) -> Result<SystemArea, BuildError> {
    let ram_end = check_ram(config)?;
    if config.privilege == Privilege::User && image.mode != CpuMode::Long {
        return Err(ArchError::UserNeedsLongMode.into());
    }
    let area = SystemArea::for_mode(image.mode, config.ram_base, ram_end)?;
    let (usable_end, hint) = match image.mode {
        CpuMode::Real => (ram_end.min(0x10_0000), " (real mode reaches the first 1 MiB)".to_string()),
        _ => (
            area.base,
            format!(
                " (the top {} of RAM holds the CPU tables and the stack grows below them; raise --mem)",
                human_size(SYSTEM_AREA_SIZE)
            ),
        ),
    };
    let hint = if image.linux_program {
        " (this looks like a Linux program, linked at the usual user address: run it with \
         `rypervisor exec`, which gives it a Linux process; `run` is for bare guests)"
            .to_string()
    } else {
        hint
    };
    image.check_fits(config.ram_base, usable_end, &hint)?;
    Ok(area)
}

/// Step 1: open `/dev/kvm`, check the API version and the user-memory capability.
pub fn step1_open_kvm(
    config: &MachineConfig,
    obs: &mut dyn Observer,
) -> Result<KvmSystem, BuildError> {
    let kvm = KvmSystem::open(&config.kvm_device)?;
    if obs.enabled() {
        obs.event(Event::Step {
            number: 1,
            title: format!("Open {} and check the API", config.kvm_device.display()),
            why: "/dev/kvm is the KVM subsystem's entry point: a file descriptor on it answers system-wide \
                  ioctls. The API version has been 12 since Linux 2.6.22; anything else means an \
                  incompatible kernel. KVM_CAP_USER_MEMORY says guest RAM can be ordinary process memory."
                .into(),
        });
        obs.event(Event::Syscall {
            name: "open",
            args: format!("\"{}\", O_RDWR|O_CLOEXEC", config.kvm_device.display()),
            result: format!("{} (the KVM system fd)", kvm.fd()),
        });
        obs.event(Event::Ioctl {
            name: "KVM_GET_API_VERSION",
            fd: kvm.fd(),
            arg: "0".into(),
            result: kvm.api_version.to_string(),
        });
        obs.event(Event::Ioctl {
            name: "KVM_CHECK_EXTENSION",
            fd: kvm.fd(),
            arg: "KVM_CAP_USER_MEMORY".into(),
            result: "1 (KvmSystem::open refuses a KVM without it)".into(),
        });
    }
    Ok(kvm)
}

/// Step 2: create the VM.
pub fn step2_create_vm(kvm: &KvmSystem, obs: &mut dyn Observer) -> Result<Vm, BuildError> {
    let vm = Vm::create(kvm)?;
    if obs.enabled() {
        obs.event(Event::Step {
            number: 2,
            title: "Create a virtual machine".into(),
            why: "KVM_CREATE_VM returns a new fd for the VM: memory and vCPUs are attached to it. \
                  The machine starts with no memory and no CPUs."
                .into(),
        });
        obs.event(Event::Ioctl {
            name: "KVM_CREATE_VM",
            fd: kvm.fd(),
            arg: "0 (default machine type)".into(),
            result: format!("{} (the VM fd)", vm.raw_fd()),
        });
    }
    Ok(vm)
}

/// Step 3: allocate guest RAM, copy the program in, and tell KVM where it is.
pub fn step3_guest_memory(
    vm: &Vm,
    config: &MachineConfig,
    image: &Image,
    area: &SystemArea,
    obs: &mut dyn Observer,
) -> Result<GuestRam, BuildError> {
    let ram = GuestRam::new(config.ram_base, config.ram_size)?;
    for seg in &image.segments {
        ram.write(seg.addr, &seg.data)?;
        // Memory is fresh anonymous memory: the zero-filled tail (.bss) is already zero.
    }
    let regions = vm.register_ram(&ram, 0)?;
    if obs.enabled() {
        narrate_memory(obs, vm, &ram, image, area, &regions);
    }
    Ok(ram)
}

fn memory_map(ram: &GuestRam, image: &Image, area: &SystemArea) -> Vec<MapRegion> {
    let host = |gpa: u64| ram.host_address() + (gpa - ram.base());
    let mut map = vec![MapRegion {
        guest_start: ram.base(),
        guest_end: ram.end(),
        host_start: ram.host_address(),
        what: format!("RAM, {} (KVM memory slot 0)", human_size(ram.size())),
    }];
    for s in &image.segments {
        map.push(MapRegion {
            guest_start: s.addr,
            guest_end: s.addr + s.mem_size,
            host_start: host(s.addr),
            what: "  program".into(),
        });
    }
    if area.present {
        map.push(MapRegion {
            guest_start: area.base,
            guest_end: area.base + SYSTEM_AREA_SIZE,
            host_start: host(area.base),
            what: "  page tables, GDT, exception stubs, IDT, TSS (set up by the VMM); stack below"
                .into(),
        });
    }
    if ram.end() < FOUR_GIB {
        map.push(MapRegion {
            guest_start: ram.end(),
            guest_end: FOUR_GIB,
            host_start: 0,
            what: "no RAM: accesses exit to the VMM as KVM_EXIT_MMIO".into(),
        });
    }
    map
}

/// Step 3's narration: the mapping, what was copied where, the memory slots, the map.
fn narrate_memory(
    obs: &mut dyn Observer,
    vm: &Vm,
    ram: &GuestRam,
    image: &Image,
    area: &SystemArea,
    regions: &[kvm_bindings::kvm_userspace_memory_region],
) {
    obs.event(Event::Step {
        number: 3,
        title: "Give the guest memory and load the program".into(),
        why: "Guest 'physical' memory is ordinary anonymous memory in this process (vm-memory maps it). \
              The VMM copies the program into it, then KVM_SET_USER_MEMORY_REGION tells KVM which \
              guest-physical range this host memory backs. Guest-physical addresses are what the \
              guest sees; host-virtual addresses are where that memory lives in the VMM."
            .into(),
    });
    obs.event(Event::Syscall {
        name: "mmap",
        args: format!(
            "NULL, {:#x}, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE, -1, 0",
            ram.size()
        ),
        result: format!("{:#x}", ram.host_address()),
    });
    let bits = image.mode.bitness();
    for seg in &image.segments {
        let len = seg.data.len();
        obs.event(if len <= 64 {
            Event::Listing {
                title: format!(
                    "copied {len} bytes of {bits}-bit code to guest-physical {:#x}:",
                    seg.addr
                ),
                instructions: disasm::decode_all(&seg.data, bits, seg.addr),
            }
        } else {
            Event::Note {
                text: format!(
                    "copied {len} bytes to guest-physical {:#x} ({} in memory)",
                    seg.addr, seg.mem_size
                ),
            }
        });
    }
    for r in regions {
        obs.event(Event::Ioctl {
            name: "KVM_SET_USER_MEMORY_REGION",
            fd: vm.raw_fd(),
            arg: format!(
                "{{slot={}, flags={}, guest_phys_addr={:#x}, memory_size={:#x}, userspace_addr={:#x}}}",
                r.slot, r.flags, r.guest_phys_addr, r.memory_size, r.userspace_addr
            ),
            result: "0".into(),
        });
    }
    obs.event(Event::MemoryMap {
        regions: memory_map(ram, image, area),
    });
    if image.mode == CpuMode::Real {
        obs.event(Event::Note {
            text:
                "Why this address: a real-mode guest runs its first instruction at CS:IP; the VMM \
                   sets CS to segment 0 so IP is simply the guest-physical address of the code. \
                   Address 0 is avoided because by convention the real-mode interrupt vector table \
                   lives there."
                    .into(),
        });
    }
}

/// Step 4: create vCPU 0 and map its `kvm_run` structure.
pub fn step4_create_vcpu(
    kvm: &KvmSystem,
    vm: &Vm,
    obs: &mut dyn Observer,
) -> Result<Vcpu, BuildError> {
    let mut fd = vm.fd.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
    let vcpu_fd = std::os::fd::AsRawFd::as_raw_fd(&fd);
    if obs.enabled() {
        let mmap_size = kvm
            .kvm
            .get_vcpu_mmap_size()
            .map_err(ioctl("KVM_GET_VCPU_MMAP_SIZE"))?;
        let run_addr = fd.get_kvm_run() as *mut _ as u64;
        obs.event(Event::Step {
            number: 4,
            title: "Create a virtual CPU".into(),
            why: "KVM_CREATE_VCPU returns a vCPU fd. Each vCPU shares a 'struct kvm_run' with the VMM through \
                  mmap on that fd: KVM_RUN reports each exit there (reason, I/O port, data) without another \
                  ioctl. Its size, larger than the struct, comes from KVM_GET_VCPU_MMAP_SIZE on the system fd \
                  (kvm-ioctls asks once, at KVM_CREATE_VM; it is asked again here to show it)."
                .into(),
        });
        obs.event(Event::Ioctl {
            name: "KVM_CREATE_VCPU",
            fd: vm.raw_fd(),
            arg: "0 (vCPU id)".into(),
            result: format!("{vcpu_fd} (the vCPU fd)"),
        });
        obs.event(Event::Ioctl {
            name: "KVM_GET_VCPU_MMAP_SIZE",
            fd: kvm.fd(),
            arg: "0".into(),
            result: format!(
                "{mmap_size} bytes (struct kvm_run is {} bytes)",
                std::mem::size_of::<kvm_bindings::kvm_run>()
            ),
        });
        obs.event(Event::Syscall {
            name: "mmap",
            args: format!("NULL, {mmap_size}, PROT_READ|PROT_WRITE, MAP_SHARED, {vcpu_fd}, 0"),
            result: format!("{run_addr:#x} (struct kvm_run)"),
        });
    }
    Ok(Vcpu::new(fd, 0))
}

/// Step 5: set the special registers (segments, control registers, descriptor tables).
/// Returns the initial stack pointer.
pub fn step5_special_registers(
    vcpu: &Vcpu,
    ram: &GuestRam,
    area: &SystemArea,
    image: &Image,
    privilege: Privilege,
    obs: &mut dyn Observer,
) -> Result<u64, BuildError> {
    let before: kvm_sregs = vcpu.fd().get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    let mut sregs = before;
    let stack = arch::setup_sregs(ram, area, image.mode, privilege, image.entry, &mut sregs)?;
    vcpu.fd()
        .set_sregs(&sregs)
        .map_err(ioctl("KVM_SET_SREGS"))?;
    if obs.enabled() {
        let why = step5_why(image.mode, privilege);
        obs.event(Event::Step {
            number: 5,
            title: "Set up the special registers".into(),
            why,
        });
        obs.event(Event::Ioctl {
            name: "KVM_GET_SREGS",
            fd: vcpu.raw_fd(),
            arg: "&sregs".into(),
            result: "0".into(),
        });
        obs.event(Event::Ioctl {
            name: "KVM_SET_SREGS",
            fd: vcpu.raw_fd(),
            arg: "&sregs".into(),
            result: "0".into(),
        });
        obs.event(Event::Registers {
            title:
                "special registers: reset state (KVM_GET_SREGS) → what the VMM set (KVM_SET_SREGS)"
                    .into(),
            rows: explain::diff(
                &explain::sregs_fields(&before),
                &explain::sregs_fields(&sregs),
            ),
        });
    }
    Ok(stack)
}

/// Why step 5 does what it does, for `mode` and `privilege`.
fn step5_why(mode: CpuMode, privilege: Privilege) -> String {
    match mode {
        CpuMode::Real => "A new vCPU is in the state of a PC at reset: real mode, CS selector 0xf000 with base \
                          0xffff0000 so the first fetch is the BIOS entry near 4 GiB. There is no BIOS \
                          here, so the VMM sets CS base and selector to 0: instruction addresses are then \
                          plain guest-physical addresses."
            .to_string(),
        mode => format!(
            "A new vCPU starts in real mode. To start in {} mode the VMM does a boot loader's job: it \
             writes a GDT, an IDT whose every vector halts in a stub the VMM recognises, a TSS{}, \
             then loads segment registers from the GDT and sets CR0{}.{}",
            if mode == CpuMode::Long { "long" } else { "protected" },
            if mode == CpuMode::Long { ", page tables identity-mapping the low 4 GiB with 2 MiB pages" } else { "" },
            if mode == CpuMode::Long { ", CR3, CR4.PAE and EFER.LME/LMA" } else { ".PE" },
            if privilege == Privilege::User {
                " The code segment has DPL 3, so the guest starts in user mode (CPL3); the TSS gives \
                 an exception stack (RSP0) and an I/O bitmap allowing every port."
            } else {
                ""
            }
        ),
    }
}

/// Step 6: set the general registers: entry point, flags, stack, presets.
pub fn step6_registers(
    vcpu: &Vcpu,
    image: &Image,
    config: &MachineConfig,
    stack: u64,
    obs: &mut dyn Observer,
) -> Result<(), BuildError> {
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    regs.rip = match image.mode {
        // Real mode: IP is relative to the CS base chosen in step 5.
        CpuMode::Real if image.entry > 0xffff => image.entry & 0xffff,
        _ => image.entry,
    };
    regs.rsp = stack;
    for (r, v) in &config.registers {
        r.set(&mut regs, *v);
    }
    if obs.enabled() {
        let before = vcpu.fd().get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        obs.event(Event::Step {
            number: 6,
            title: "Set up the general registers".into(),
            why: "RIP is where the guest starts; RFLAGS bit 1 is reserved and must be 1 (0x2 also leaves \
                  interrupts disabled). The VMM also sets the stack pointer and any preset registers \
                  (the LWN program adds rax and rbx). KVM_GET_REGS is called here only to show the reset state."
                .into(),
        });
        obs.event(Event::Ioctl {
            name: "KVM_GET_REGS",
            fd: vcpu.raw_fd(),
            arg: "&regs".into(),
            result: "0".into(),
        });
        vcpu.fd().set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
        obs.event(Event::Ioctl {
            name: "KVM_SET_REGS",
            fd: vcpu.raw_fd(),
            arg: "&regs".into(),
            result: "0".into(),
        });
        obs.event(Event::Registers {
            title: "registers: reset state → what the VMM set".into(),
            rows: explain::diff(&explain::regs_fields(&before), &explain::regs_fields(&regs)),
        });
    } else {
        vcpu.fd().set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
    }
    Ok(())
}
