//! Booting Linux: `rypervisor boot`.
//!
//! [`prepare`] builds a PC-like micro-VM for a kernel the way Firecracker and kvmtool do:
//! in-kernel irqchip and PIT, guest RAM with an e820 map, the kernel loaded by linux-loader
//! (bzImage: protected-mode part at 1 MiB and the zero page from its setup header; vmlinux:
//! PVH entry if the ELF has the Xen PVH note, else its 64-bit entry with a zero page), the
//! initrd at the top of RAM, the command line, an MP table for the vCPUs, CPUID from
//! `KVM_GET_SUPPORTED_CPUID` filtered by a [`CpuTemplate`], and the legacy devices a Linux
//! guest touches: 8250 UART (IRQ 4 through an irqfd), i8042 (reset), CMOS RTC, the POST port,
//! PCI configuration ports, and a boot-marker port. [`LinuxVm::run`] runs every vCPU on its
//! own thread until the guest powers off, resets, panics, or the time limit expires.

pub mod console;
pub mod layout;
pub mod mptable;
pub mod params;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_fpu, kvm_pit_config, kvm_regs, kvm_segment, kvm_sregs, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::arch::{cr0, cr4, descriptor, efer, load_segments, segment, selector};
use crate::bus::{AddressSpace, Bus, SharedDevice};
use crate::cpu_template::{self, CpuTemplate, Workaround};
use crate::devices::i8042::{self, I8042};
use crate::devices::misc::{BootMarker, Sink, BOOT_MARKER_PORT};
use crate::devices::rtc::{self, Rtc};
use crate::devices::serial::{EventFdTrigger, COM1, REGISTERS};
use crate::devices::{SerialDevice, StopSignal};
use crate::disasm;
use crate::kvm::{KvmError, KvmSystem, DEFAULT_DEVICE};
use crate::machine::{read_internal_error, register_dump};
use crate::memory::{human_size, GuestRam, MemoryError};
use crate::vcpu::{handle_exit, ExitAction, ExitStats, Stop};
use crate::vm::{Vm, VmError};
use console::{ConsoleEvents, ConsoleWatch};

/// Default guest memory.
pub const DEFAULT_MEM: u64 = 256 << 20;
/// Most vCPUs (the MP table and APIC ids are 8-bit; kept modest for a micro-VM).
pub const MAX_CPUS: u8 = 32;
/// The UART's interrupt line (COM1).
const SERIAL_IRQ: u32 = 4;

/// Errors preparing or running a Linux guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be read.
    #[error("cannot read kernel {path}: {source}")]
    ReadKernel {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The initrd cannot be read.
    #[error("cannot read initrd {path}: {source}")]
    ReadInitrd {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Neither a bzImage nor an ELF.
    #[error(
        "{0} is not a Linux kernel: expected a bzImage (\"HdrS\" boot header) or an ELF vmlinux"
    )]
    NotAKernel(PathBuf),
    /// linux-loader refused the image.
    #[error("cannot load kernel {path} ({format}): {why} (truncated or corrupt?)")]
    Load {
        /// The path.
        path: PathBuf,
        /// bzImage or ELF.
        format: &'static str,
        /// linux-loader's error.
        why: String,
    },
    /// The initrd does not fit.
    #[error("initrd {path} ({}) does not fit in guest memory ({}) above the kernel: raise --mem", human_size(*size), human_size(*mem))]
    InitrdTooLarge {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Guest memory.
        mem: u64,
    },
    /// The command line is too long.
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// linux-loader refused the command line.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// A bad vCPU count.
    #[error("--cpus must be between 1 and {max} (got {got})")]
    Cpus {
        /// Asked for.
        got: u32,
        /// The limit here.
        max: u8,
    },
    /// A bad memory size.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Opening KVM failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Creating the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// An ioctl failed.
    #[error("{name} failed: {source}")]
    Ioctl {
        /// The ioctl.
        name: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Writing boot parameters failed.
    #[error("cannot write boot parameters: {0}")]
    BootParams(String),
    /// A device could not be placed on the bus.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    /// The vCPU kick signal could not be set up.
    #[error(transparent)]
    Watchdog(#[from] crate::watchdog::WatchdogError),
    /// A thread could not start.
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
}

fn ioctl(name: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BootError {
    move |source| BootError::Ioctl { name, source }
}

/// What to boot and how.
#[derive(Clone, Debug)]
pub struct BootConfig {
    /// Kernel image: bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Appended to the default command line.
    pub cmdline: Option<String>,
    /// Guest RAM.
    pub mem: u64,
    /// vCPUs.
    pub cpus: u32,
    /// CPU template (the CLI picks nested-safe where KVM emulates ring 0, else host).
    pub template: CpuTemplate,
    /// Stop after this long.
    pub timeout: Option<Duration>,
    /// KVM device.
    pub kvm_device: PathBuf,
    /// Where times are measured from (process start, for the CLI).
    pub origin: Instant,
}

impl BootConfig {
    /// Checks the vCPU count and memory size (no I/O, no KVM).
    pub fn check(&self) -> Result<(), BootError> {
        check_config(self)
    }

    /// A configuration for `kernel` with the defaults.
    pub fn new(kernel: &Path) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            mem: DEFAULT_MEM,
            cpus: 1,
            template: CpuTemplate::Host,
            timeout: None,
            kvm_device: DEFAULT_DEVICE.into(),
            origin: Instant::now(),
        }
    }
}

/// The kernel formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum KernelFormat {
    /// bzImage, entered at its 64-bit entry point with a zero page.
    BzImage,
    /// ELF vmlinux with a Xen PVH note, entered in 32-bit mode with `hvm_start_info`.
    VmlinuxPvh,
    /// ELF vmlinux without PVH, entered at its 64-bit entry with a zero page.
    Vmlinux64,
}

impl std::fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::BzImage => "bzImage (64-bit boot protocol)",
            Self::VmlinuxPvh => "ELF vmlinux (PVH entry)",
            Self::Vmlinux64 => "ELF vmlinux (64-bit entry)",
        })
    }
}

/// Detects the kernel format from the first bytes of the file.
pub fn detect(bytes: &[u8]) -> Option<&'static str> {
    if bytes.len() > 0x206 && bytes[0x1fe..0x200] == [0x55, 0xaa] && &bytes[0x202..0x206] == b"HdrS"
    {
        Some("bzImage")
    } else if bytes.starts_with(b"\x7fELF") {
        Some("ELF")
    } else {
        None
    }
}

/// How the guest ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The kernel halted after `poweroff`/`halt` ("reboot: System halted" / "Power down").
    PoweredOff,
    /// The guest reset the machine (i8042 reset, triple fault or a reset system event)
    /// without a panic on the console.
    Reset,
    /// The console showed a kernel panic (and then the guest reset, with `panic=1`).
    Panic,
    /// The time limit expired.
    TimedOut,
    /// The user typed Ctrl-A x.
    UserQuit,
    /// The VM stopped on something the VMM cannot continue from (report attached).
    Crashed(String),
}

impl Ending {
    /// The exit status for `rypervisor boot`.
    pub fn status(&self) -> i32 {
        match self {
            Ending::PoweredOff | Ending::Reset | Ending::UserQuit => 0,
            Ending::Panic => 1,
            Ending::TimedOut => 124,
            Ending::Crashed(_) => 3,
        }
    }
}

/// The result of a boot.
#[derive(Clone, Debug)]
pub struct BootReport {
    /// How it ended.
    pub ending: Ending,
    /// The kernel format.
    pub format: KernelFormat,
    /// The CPU template used.
    pub template: CpuTemplate,
    /// The full command line.
    pub cmdline: String,
    /// From `origin` to the first `KVM_RUN` of the boot vCPU (the kernel's first instruction).
    pub kernel_entry: Option<Duration>,
    /// From `origin` to the guest's boot-marker write.
    pub marker: Option<Duration>,
    /// From `origin` to the end.
    pub ended: Duration,
    /// Exit counts per vCPU.
    pub exits: Vec<ExitStats>,
    /// Emulation failures stepped over by the CPU template.
    pub workarounds: u64,
    /// Where each vCPU was when the VM stopped (RIP and the instruction there), for reports
    /// of a guest that timed out.
    pub last_places: Vec<String>,
}

/// A prepared Linux VM.
pub struct LinuxVm {
    vcpus: Vec<VcpuFd>,
    bus: Arc<Bus>,
    stop: Arc<StopSignal>,
    events: Arc<ConsoleEvents>,
    serial: Arc<Mutex<SerialDevice<EventFdTrigger>>>,
    marker: BootMarker,
    report: BootReport,
    config: BootConfig,
    // Kept alive for the VM's lifetime; dropped after the vCPUs (field order).
    _vm: Vm,
    _kvm: KvmSystem,
    ram: GuestRam,
}

impl std::fmt::Debug for LinuxVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxVm")
            .field("format", &self.report.format)
            .field("cpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

fn check_config(config: &BootConfig) -> Result<(), BootError> {
    if config.cpus == 0 || config.cpus > u32::from(MAX_CPUS) {
        return Err(BootError::Cpus {
            got: config.cpus,
            max: MAX_CPUS,
        });
    }
    if config.mem < layout::MIN_MEM {
        return Err(MemoryError::TooSmall {
            size: config.mem,
            why: format!(
                "a Linux guest needs at least {}",
                human_size(layout::MIN_MEM)
            ),
        }
        .into());
    }
    if config.mem > layout::MAX_MEM {
        return Err(MemoryError::TooLarge {
            size: config.mem,
            why: format!(
                "rypervisor boot keeps RAM below the 32-bit MMIO hole (at most {})",
                human_size(layout::MAX_MEM)
            ),
        }
        .into());
    }
    Ok(())
}

/// Builds the VM for `config`, with the guest console going to `console`.
pub fn prepare(config: BootConfig, console: Box<dyn Write + Send>) -> Result<LinuxVm, BootError> {
    check_config(&config)?;
    let initrd = match &config.initrd {
        Some(p) => Some(std::fs::read(p).map_err(|source| BootError::ReadInitrd {
            path: p.clone(),
            source,
        })?),
        None => None,
    };
    if let (Some(bytes), Some(path)) = (&initrd, &config.initrd) {
        if bytes.len() as u64 >= config.mem - layout::HIGH_MEM {
            return Err(BootError::InitrdTooLarge {
                path: path.clone(),
                size: bytes.len() as u64,
                mem: config.mem,
            });
        }
    }
    let cmdline = params::cmdline(
        cpu_template::kernel_options(config.template),
        config.cmdline.as_deref(),
    );
    if cmdline.len() + 1 > layout::CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: layout::CMDLINE_MAX - 1,
        });
    }

    let mut kernel_file = File::open(&config.kernel).map_err(|source| BootError::ReadKernel {
        path: config.kernel.clone(),
        source,
    })?;
    let mut head = vec![0u8; 0x400];
    let n = kernel_file
        .read(&mut head)
        .map_err(|source| BootError::ReadKernel {
            path: config.kernel.clone(),
            source,
        })?;
    let kind = detect(&head[..n]).ok_or_else(|| BootError::NotAKernel(config.kernel.clone()))?;
    let kvm = KvmSystem::open(&config.kvm_device)?;
    let vm = Vm::create(&kvm)?;
    let max = kvm.kvm.get_max_vcpus().min(usize::from(MAX_CPUS));
    if config.cpus as usize > max {
        return Err(BootError::Cpus {
            got: config.cpus,
            max: max as u8,
        });
    }
    vm.fd
        .set_tss_address(layout::KVM_TSS as usize)
        .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
    vm.fd
        .set_identity_map_address(layout::KVM_IDENTITY_MAP)
        .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.fd
        .create_irq_chip()
        .map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.fd.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;

    let ram = GuestRam::new(0, config.mem)?;
    vm.register_ram(&ram, 0)?;
    let mem = ram.guest_memory();

    // The kernel.
    let (format, loaded) = load_kernel(mem, &config.kernel, &mut kernel_file, kind)?;
    let kernel_end = loaded.kernel_load.0 + loaded.kernel_end;

    // The command line, within the kernel's own limit.
    let max_cmdline = match loaded.setup_header {
        Some(h) if h.cmdline_size > 0 => (h.cmdline_size as usize).min(layout::CMDLINE_MAX),
        _ => layout::CMDLINE_MAX,
    };
    if cmdline.len() + 1 > max_cmdline {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: max_cmdline - 1,
        });
    }
    let line =
        Cmdline::try_from(&cmdline, max_cmdline).map_err(|e| BootError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(layout::CMDLINE), &line)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;

    // The initrd, as high as the kernel allows.
    let initrd_at = match (&initrd, &config.initrd) {
        (Some(bytes), Some(path)) => {
            let max_addr = loaded
                .setup_header
                .map_or(u64::MAX, |h| u64::from(h.initrd_addr_max).max(0x37ff_ffff));
            let addr = layout::initrd_address(config.mem, bytes.len() as u64, max_addr, kernel_end)
                .ok_or_else(|| BootError::InitrdTooLarge {
                    path: path.clone(),
                    size: bytes.len() as u64,
                    mem: config.mem,
                })?;
            ram.write(addr, bytes)?;
            Some((addr, bytes.len() as u64))
        }
        _ => None,
    };

    // Boot parameters.
    let boot_err = |e: linux_loader::configurator::Error| BootError::BootParams(e.to_string());
    let entry = match (format, loaded.pvh_boot_cap) {
        (KernelFormat::VmlinuxPvh, PvhBootCapability::PvhEntryPresent(addr)) => {
            let (info, memmap, modules) = params::pvh_start_info(config.mem, initrd_at);
            let (memmap_addr, modlist_addr) = params::pvh_addresses();
            let mut bp = BootParams::new(&info, GuestAddress(layout::PVH_INFO));
            bp.set_sections(&memmap, GuestAddress(memmap_addr));
            if !modules.is_empty() {
                bp.set_modules(&modules, GuestAddress(modlist_addr));
            }
            PvhBootConfigurator::write_bootparams(&bp, mem).map_err(boot_err)?;
            addr.0
        }
        _ => {
            let zero = params::zero_page(
                loaded.setup_header,
                config.mem,
                cmdline.len() + 1,
                initrd_at,
            );
            LinuxBootConfigurator::write_bootparams(
                &BootParams::new(&zero, GuestAddress(layout::ZERO_PAGE)),
                mem,
            )
            .map_err(boot_err)?;
            match format {
                // The 64-bit entry is 0x200 past the start of the protected-mode code.
                KernelFormat::BzImage => loaded.kernel_load.0 + 0x200,
                _ => loaded.kernel_load.0,
            }
        }
    };
    ram.write(layout::EBDA, &mptable::build(config.cpus as u8))?;
    write_boot_tables(&ram, format == KernelFormat::VmlinuxPvh)?;

    // vCPUs.
    let supported = kvm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
    let mut vcpus = Vec::new();
    for id in 0..config.cpus as u8 {
        let vcpu = vm
            .fd
            .create_vcpu(u64::from(id))
            .map_err(ioctl("KVM_CREATE_VCPU"))?;
        let mut cpuid = supported.clone();
        cpu_template::apply(config.template, &mut cpuid, id, config.cpus as u8);
        vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
        setup_msrs(&vcpu)?;
        setup_lapic(&vcpu)?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        vcpu.set_fpu(&fpu).map_err(ioctl("KVM_SET_FPU"))?;
        if id == 0 {
            setup_boot_cpu(&vcpu, format, entry)?;
        }
        vcpus.push(vcpu);
    }

    // Devices.
    let stop = StopSignal::new();
    let events = Arc::new(ConsoleEvents::default());
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BootError::Thread)?;
    vm.fd
        .register_irqfd(&irq, SERIAL_IRQ)
        .map_err(ioctl("KVM_IRQFD"))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        EventFdTrigger(irq),
        Box::new(ConsoleWatch::new(console, events.clone())),
        None,
    )));
    let marker = BootMarker::new(config.origin);
    let mut bus = Bus::default();
    let add = |bus: &mut Bus, name: &'static str, base: u16, len: u64, dev: SharedDevice| {
        bus.insert(AddressSpace::Pio, u64::from(base), len, name, dev)
            .map_err(BootError::from)
    };
    add(&mut bus, "serial", COM1, REGISTERS, serial.clone())?;
    add(
        &mut bus,
        "i8042",
        i8042::DATA_PORT,
        i8042::PORTS,
        Arc::new(Mutex::new(I8042::new(stop.clone()))),
    )?;
    add(
        &mut bus,
        "rtc",
        rtc::PORT,
        rtc::PORTS,
        Arc::new(Mutex::new(Rtc::default())),
    )?;
    add(
        &mut bus,
        "boot-marker",
        BOOT_MARKER_PORT,
        1,
        Arc::new(Mutex::new(marker.clone())),
    )?;
    // POST code and DMA page registers (Linux touches 0x80 for I/O delays, 0x87 early on).
    add(&mut bus, "post", 0x80, 0x10, Arc::new(Mutex::new(Sink)))?;
    add(&mut bus, "pci-config", 0xcf8, 8, Arc::new(Mutex::new(Sink)))?;

    let report = BootReport {
        ending: Ending::TimedOut,
        format,
        template: config.template,
        cmdline,
        kernel_entry: None,
        marker: None,
        ended: Duration::ZERO,
        exits: Vec::new(),
        workarounds: 0,
        last_places: Vec::new(),
    };
    Ok(LinuxVm {
        vcpus,
        bus: Arc::new(bus),
        stop,
        events,
        serial,
        marker,
        report,
        config,
        _vm: vm,
        _kvm: kvm,
        ram,
    })
}

/// Loads the kernel in `file` (detected as `kind` by [`detect`]) into `mem` with linux-loader:
/// a bzImage's protected-mode part at 1 MiB, or an ELF's segments at their addresses (at or
/// above 1 MiB). Returns the format and linux-loader's result (entry, setup header, PVH).
pub fn load_kernel(
    mem: &vm_memory::GuestMemoryMmap,
    path: &Path,
    file: &mut File,
    kind: &str,
) -> Result<(KernelFormat, linux_loader::loader::KernelLoaderResult), BootError> {
    let load_err = |format: &'static str| {
        move |e: linux_loader::loader::Error| BootError::Load {
            path: path.to_path_buf(),
            format,
            why: e.to_string(),
        }
    };
    let high = Some(GuestAddress(layout::HIGH_MEM));
    if kind == "bzImage" {
        let r = BzImage::load(mem, None, file, high).map_err(load_err("bzImage"))?;
        Ok((KernelFormat::BzImage, r))
    } else {
        let r = Elf::load(mem, None, file, high).map_err(load_err("ELF"))?;
        let f = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(_) => KernelFormat::VmlinuxPvh,
            _ => KernelFormat::Vmlinux64,
        };
        Ok((f, r))
    }
}

/// GDT, empty IDT and identity page tables (the page tables only matter for the 64-bit
/// entry; PVH starts with paging off and a 32-bit code segment at the same selector).
fn write_boot_tables(ram: &GuestRam, pvh: bool) -> Result<(), BootError> {
    let tss = kvm_segment {
        type_: 0xb,
        present: 1,
        limit: 0x67,
        selector: 0x18,
        ..Default::default()
    };
    let gdt: [u64; 4] = [
        0,
        descriptor(&segment(0x08, true, !pvh)),
        descriptor(&segment(0x10, false, false)),
        descriptor(&tss),
    ];
    let bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    ram.write(layout::GDT, &bytes)?;
    ram.write(layout::IDT, &[0u8; 8])?;
    let flags = 0x3; // present, writable
    ram.write(layout::PML4, &(layout::PDPT | flags).to_le_bytes())?;
    let pdpt: Vec<u8> = (0..4u64)
        .flat_map(|i| ((layout::PD + i * 0x1000) | flags).to_le_bytes())
        .collect();
    ram.write(layout::PDPT, &pdpt)?;
    let pds: Vec<u8> = (0..4 * 512u64)
        .flat_map(|i| ((i << 21) | flags | 0x80).to_le_bytes())
        .collect();
    ram.write(layout::PD, &pds)?;
    Ok(())
}

/// The MSRs Linux expects zeroed at entry, and fast strings enabled.
fn setup_msrs(vcpu: &VcpuFd) -> Result<(), BootError> {
    let entries = [
        (0x174, 0),       // IA32_SYSENTER_CS
        (0x175, 0),       // IA32_SYSENTER_ESP
        (0x176, 0),       // IA32_SYSENTER_EIP
        (0xc000_0081, 0), // STAR
        (0xc000_0082, 0), // LSTAR
        (0xc000_0083, 0), // CSTAR
        (0xc000_0084, 0), // SFMASK
        (0xc000_0102, 0), // KERNEL_GS_BASE
        (0x10, 0),        // TSC
        (0x1a0, 1),       // IA32_MISC_ENABLE: fast strings
    ];
    crate::vcpu::set_msrs(vcpu, &entries).map_err(ioctl("KVM_SET_MSRS"))
}

/// LINT0 as ExtINT (the PIC's interrupts) and LINT1 as NMI, as a PC's firmware leaves them.
fn setup_lapic(vcpu: &VcpuFd) -> Result<(), BootError> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const EXTINT: u32 = 7;
    const NMI: u32 = 4;
    let mut lapic = vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    for (offset, mode) in [(LVT_LINT0, EXTINT), (LVT_LINT1, NMI)] {
        let mut raw = [0u8; 4];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = lapic.regs[offset + i] as u8;
        }
        let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(ioctl("KVM_SET_LAPIC"))?;
    Ok(())
}

/// Registers of the boot vCPU at the kernel's entry.
fn setup_boot_cpu(vcpu: &VcpuFd, format: KernelFormat, entry: u64) -> Result<(), BootError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    if format == KernelFormat::VmlinuxPvh {
        // PVH: 32-bit protected mode, paging off, flat segments, EBX = start info.
        load_segments(
            &mut sregs,
            segment(selector::CODE32, true, false),
            segment(selector::DATA, false, false),
        );
        sregs.cr0 = cr0::PE | cr0::ET;
        sregs.cr4 = 0;
        sregs.efer = 0;
        regs.rbx = layout::PVH_INFO;
    } else {
        load_segments(
            &mut sregs,
            segment(0x08, true, true),
            segment(0x10, false, false),
        );
        sregs.cr0 = cr0::PE | cr0::PG | cr0::ET;
        sregs.cr3 = layout::PML4;
        sregs.cr4 = cr4::PAE;
        sregs.efer = efer::LME | efer::LMA;
        regs.rsp = layout::BOOT_STACK;
        regs.rbp = layout::BOOT_STACK;
        regs.rsi = layout::ZERO_PAGE;
    }
    sregs.gdt.base = layout::GDT;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.idt.base = layout::IDT;
    sregs.idt.limit = 7;
    sregs.tr = kvm_segment {
        type_: 0xb,
        present: 1,
        limit: 0x67,
        selector: 0x18,
        ..Default::default()
    };
    vcpu.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
    Ok(())
}

/// What a vCPU thread reports when it stops on its own.
enum ThreadEnd {
    /// A device or system event ended the VM (reset, shutdown).
    Stopped,
    /// The guest reset the machine.
    Reset,
    /// The VM cannot go on.
    Crashed(String),
}

struct Shared {
    mem: vm_memory::GuestMemoryMmap,
    bus: Arc<Bus>,
    stop: Arc<StopSignal>,
    stopping: AtomicBool,
    template: CpuTemplate,
    origin: Instant,
    entered: Mutex<Option<Duration>>,
    workarounds: std::sync::atomic::AtomicU64,
}

/// A thread to kick out of KVM_RUN.
#[derive(Clone, Copy)]
struct VcpuThread(libc::pthread_t);

// SAFETY: the handle is only used by `LinuxVm::run` while the thread has not been joined:
// `run` kicks the threads and joins each before returning.
unsafe impl Killable for VcpuThread {
    fn pthread_handle(&self) -> libc::pthread_t {
        self.0
    }
}

impl LinuxVm {
    /// The report so far (format, template, command line).
    pub fn report(&self) -> &BootReport {
        &self.report
    }

    /// The serial device, to push console input into (`push_input`).
    pub fn serial(&self) -> Arc<Mutex<SerialDevice<EventFdTrigger>>> {
        self.serial.clone()
    }

    /// A handle that ends the VM (status 0) when requested, e.g. on Ctrl-A x.
    pub fn stop_handle(&self) -> Arc<StopSignal> {
        self.stop.clone()
    }

    /// Runs every vCPU on its own thread until the guest ends.
    pub fn run(mut self) -> Result<BootReport, BootError> {
        crate::watchdog::install_kick_handler()?;
        let shared = Arc::new(Shared {
            mem: self.ram.guest_memory().clone(),
            bus: self.bus.clone(),
            stop: self.stop.clone(),
            stopping: AtomicBool::new(false),
            template: self.config.template,
            origin: self.config.origin,
            entered: Mutex::new(None),
            workarounds: Default::default(),
        });
        let (tx, rx) = mpsc::channel::<(usize, ThreadEnd)>();
        let mut threads: Vec<(VcpuThread, JoinHandle<(ExitStats, String)>)> = Vec::new();
        let (started_tx, started_rx) = mpsc::channel::<VcpuThread>();
        for (index, vcpu) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let shared = shared.clone();
            let tx = tx.clone();
            let started = started_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    // SAFETY: pthread_self has no preconditions.
                    let _ = started.send(VcpuThread(unsafe { libc::pthread_self() }));
                    vcpu_loop(index, vcpu, &shared, &tx)
                })
                .map_err(BootError::Thread)?;
            let me = started_rx
                .recv()
                .map_err(|e| BootError::Thread(std::io::Error::other(e)))?;
            threads.push((me, handle));
        }
        drop(tx);

        let deadline = self.config.timeout.map(|t| Instant::now() + t);
        let ending = loop {
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok((_, ThreadEnd::Crashed(report))) => break Ending::Crashed(report),
                Ok((_, ThreadEnd::Reset)) => break self.reset_ending(),
                Ok((_, ThreadEnd::Stopped)) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break self.reset_ending(),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if self.events.halted.load(Ordering::Acquire) {
                break Ending::PoweredOff;
            }
            if let Some(status) = self.stop.requested() {
                break if status == USER_QUIT {
                    Ending::UserQuit
                } else {
                    self.reset_ending()
                };
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break Ending::TimedOut;
            }
        };
        // Stop every vCPU: raise the flag, then kick until each thread has left KVM_RUN.
        shared.stopping.store(true, Ordering::Release);
        let mut exits = Vec::new();
        let mut places = Vec::new();
        for (thread, handle) in threads {
            while !handle.is_finished() {
                let _ = thread.kill(crate::watchdog::kick_signal());
                std::thread::sleep(Duration::from_millis(2));
            }
            let (stats, place) = handle.join().unwrap_or_default();
            exits.push(stats);
            places.push(place);
        }
        if let Ok(mut s) = self.serial.lock() {
            s.flush();
        }
        let mut report = self.report.clone();
        report.ending = ending;
        report.exits = exits;
        report.kernel_entry = *shared.entered.lock().unwrap_or_else(|p| p.into_inner());
        report.marker = *self.marker.seen.lock().unwrap_or_else(|p| p.into_inner());
        report.ended = self.config.origin.elapsed();
        report.workarounds = shared.workarounds.load(Ordering::Relaxed);
        report.last_places = places;
        Ok(report)
    }

    fn reset_ending(&self) -> Ending {
        if self.events.panic.load(Ordering::Acquire) {
            Ending::Panic
        } else {
            Ending::Reset
        }
    }
}

/// The status a Ctrl-A x request carries on the stop signal.
pub const USER_QUIT: u8 = 0xfe;

fn vcpu_loop(
    index: usize,
    mut vcpu: VcpuFd,
    shared: &Shared,
    tx: &mpsc::Sender<(usize, ThreadEnd)>,
) -> (ExitStats, String) {
    let stats = vcpu_run(index, &mut vcpu, shared, tx);
    (stats, where_is(index, &vcpu, &shared.mem))
}

/// "vCPU n at rip X (mode): instruction [bytes]", read through the vCPU's own page tables.
fn where_is(index: usize, vcpu: &VcpuFd, mem: &vm_memory::GuestMemoryMmap) -> String {
    use vm_memory::Bytes;
    let (Ok(regs), Ok(sregs)) = (vcpu.get_regs(), vcpu.get_sregs()) else {
        return format!("vCPU {index}: registers unavailable");
    };
    let bits = crate::arch::code_bitness(&sregs);
    let linear = sregs.cs.base.wrapping_add(regs.rip);
    let mut text = format!(
        "vCPU {index} at rip {:#x} ({bits}-bit, cpl {})",
        regs.rip,
        sregs.cs.selector & 3
    );
    if let Ok(t) = vcpu.translate_gva(linear) {
        let mut bytes = [0u8; 15];
        if t.valid == 1
            && mem
                .read_slice(&mut bytes, GuestAddress(t.physical_address))
                .is_ok()
        {
            let d = disasm::decode(&bytes, bits, regs.rip);
            text += &format!(": {} [{}]", d.text, disasm::hex(&d.bytes));
        }
    }
    text
}

fn vcpu_run(
    index: usize,
    vcpu: &mut VcpuFd,
    shared: &Shared,
    tx: &mpsc::Sender<(usize, ThreadEnd)>,
) -> ExitStats {
    let mut stats = ExitStats::default();
    let mut first = true;
    let end = |e: ThreadEnd| {
        let _ = tx.send((index, e));
    };
    loop {
        if shared.stopping.load(Ordering::Acquire) {
            return stats;
        }
        if first && index == 0 {
            *shared.entered.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(shared.origin.elapsed());
        }
        first = false;
        let entered = Instant::now();
        let result = vcpu.run();
        let exited = Instant::now();
        stats.guest_time += exited - entered;
        let mut exit = match result {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => {
                end(ThreadEnd::Crashed(format!(
                    "vCPU {index}: KVM_RUN failed: {e}"
                )));
                return stats;
            }
        };
        if let VcpuExit::SystemEvent(kind, _) = exit {
            match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => end(ThreadEnd::Reset),
                other => end(ThreadEnd::Crashed(format!(
                    "vCPU {index}: system event {other}"
                ))),
            }
            return stats;
        }
        let action = handle_exit(&mut exit, &shared.bus, &shared.stop, &mut stats);
        stats.vmm_time += exited.elapsed();
        match action {
            ExitAction::Continue => {}
            ExitAction::Stop(Stop::Requested(_)) => {
                end(ThreadEnd::Stopped);
                return stats;
            }
            ExitAction::Stop(Stop::Halted) => {} // with an in-kernel irqchip HLT stays in KVM
            ExitAction::Stop(Stop::TripleFault) => {
                end(ThreadEnd::Reset);
                return stats;
            }
            ExitAction::Stop(Stop::InternalError) => match internal_error(index, vcpu, shared) {
                Ok(()) => {}
                Err(report) => {
                    end(ThreadEnd::Crashed(report));
                    return stats;
                }
            },
            ExitAction::Stop(other) => {
                end(ThreadEnd::Crashed(format!("vCPU {index}: {other:?}")));
                return stats;
            }
        }
    }
}

/// An emulation failure: step over it if the CPU template knows how, else report it.
fn internal_error(index: usize, vcpu: &mut VcpuFd, shared: &Shared) -> Result<(), String> {
    let info = read_internal_error(vcpu);
    let regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    if info.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
        if let Some(w) = cpu_template::emulation_workaround(shared.template, &info.insn_bytes) {
            let mut r = regs;
            r.rip = r.rip.wrapping_add(w.length());
            vcpu.set_regs(&r)
                .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
            if w == Workaround::StepOverInt3 {
                let mut events = vcpu
                    .get_vcpu_events()
                    .map_err(|e| format!("KVM_GET_VCPU_EVENTS: {e}"))?;
                events.exception.injected = 1;
                events.exception.nr = 3; // #BP
                events.exception.has_error_code = 0;
                vcpu.set_vcpu_events(&events)
                    .map_err(|e| format!("KVM_SET_VCPU_EVENTS: {e}"))?;
            }
            shared.workarounds.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("vCPU {index}: stepped over {w:?} at {:#x}", regs.rip);
            return Ok(());
        }
    }
    let mut s = format!(
        "vCPU {index}: KVM_EXIT_INTERNAL_ERROR suberror {}: {}",
        info.suberror,
        info.meaning()
    );
    if !info.insn_bytes.is_empty() {
        let d = disasm::decode(
            &info.insn_bytes,
            crate::arch::code_bitness(&sregs),
            regs.rip,
        );
        s += &format!(
            "\n  instruction at rip {:#x}: {} [{}]",
            regs.rip,
            d.text,
            disasm::hex(&info.insn_bytes)
        );
        if shared.template == CpuTemplate::Host {
            s += "\n  (on a nested host, try --cpu-template nested-safe)";
        }
    }
    s += "\n";
    s += &register_dump(&regs, &sregs);
    Err(s)
}

/// Reads stdin-like `input` and feeds the guest console, handling the Ctrl-A escape:
/// Ctrl-A x ends the VM, Ctrl-A Ctrl-A sends one Ctrl-A. Runs until `input` ends.
pub fn console_input(
    mut input: Box<dyn Read + Send>,
    serial: Arc<Mutex<SerialDevice<EventFdTrigger>>>,
    stop: Arc<StopSignal>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("console-input".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            let mut escape = false;
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut out = Vec::with_capacity(n);
                for &b in &buf[..n] {
                    match (escape, b) {
                        (false, 0x01) => escape = true,
                        (false, b) => out.push(b),
                        (true, b'x') | (true, b'X') => {
                            stop.request(USER_QUIT);
                            return;
                        }
                        (true, b) => {
                            escape = false;
                            out.push(0x01);
                            if b != 0x01 {
                                out.push(b);
                            }
                        }
                    }
                }
                if !out.is_empty() {
                    serial
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_input(&out);
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_are_detected_by_content() {
        let mut bz = vec![0u8; 0x400];
        bz[0x1fe] = 0x55;
        bz[0x1ff] = 0xaa;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect(&bz), Some("bzImage"));
        assert_eq!(detect(b"\x7fELF\x02\x01"), Some("ELF"));
        assert_eq!(detect(b"#!/bin/sh\n"), None);
        assert_eq!(detect(&bz[..0x100]), None);
    }

    #[test]
    fn bad_sizes_and_counts_are_refused_before_kvm() {
        let mut c = BootConfig::new(Path::new("/nonexistent"));
        c.cpus = 0;
        assert!(check_config(&c)
            .unwrap_err()
            .to_string()
            .contains("--cpus must be between 1"));
        c.cpus = 1;
        c.mem = 1 << 20;
        assert!(check_config(&c)
            .unwrap_err()
            .to_string()
            .contains("at least 16 MiB"));
        c.mem = 4 << 30;
        assert!(check_config(&c).is_err());
        c.mem = DEFAULT_MEM;
        assert!(check_config(&c).is_ok());
    }
}
