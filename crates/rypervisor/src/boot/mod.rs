//! Booting Linux: `rypervisor boot`.
//!
//! [`prepare`] builds a PC-like micro-VM for a kernel the way Firecracker and kvmtool do, as
//! a list of named steps (see [`builder`]): in-kernel irqchip and PIT, guest RAM with an e820
//! map, the kernel loaded by linux-loader (bzImage: protected-mode part at 1 MiB and the zero
//! page from its setup header; vmlinux: PVH entry if the ELF has the Xen PVH note, else its
//! 64-bit entry with a zero page), the initrd at the top of RAM, the command line, an MP table
//! for the vCPUs, CPUID from `KVM_GET_SUPPORTED_CPUID` filtered by a [`CpuTemplate`], and the
//! legacy devices a Linux guest touches: 8250 UART (IRQ 4 through an irqfd), i8042 (reset),
//! CMOS RTC, the POST port, PCI configuration ports, and a boot-marker port.
//! [`LinuxVm::run`] (see [`run`]) runs every vCPU on its own thread until the guest powers
//! off, resets, panics, or the time limit expires.

pub mod builder;
pub mod console;
pub mod kernel;
pub mod layout;
pub mod mptable;
pub mod params;
pub mod run;
pub mod vcpus;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use crate::loader::kernel::{detect, KernelFormat};
pub use builder::prepare;
pub use console::console_input;
pub use run::LinuxVm;

use crate::cpu_template::CpuTemplate;
use crate::hostfile::{shown, HostFileError};
use crate::kvm::{IoctlError, KvmError, DEFAULT_DEVICE};
use crate::loader::kernel::KernelError;
use crate::memory::{human_size, MemoryError};
use crate::vcpu::kick::KickError;
use crate::vcpu::{ExitStats, VcpuError};
use crate::virtio::VirtioError;
use crate::vm::VmError;

/// Default guest memory.
pub const DEFAULT_MEM: u64 = 256 << 20;
/// Most vCPUs (the MP table and APIC ids are 8-bit; kept modest for a micro-VM).
pub const MAX_CPUS: u8 = 32;
/// The status a Ctrl-A x request carries on the stop signal.
pub const USER_QUIT: u8 = 0xfe;
/// A host signal asks the VM to end: `SIGNALLED | signal number` on the stop signal
/// ([`LinuxVm::stop_handle`]), a single atomic store that a signal handler may make; the VM
/// then ends as [`Ending::Signal`], its devices stopped as for any other ending.
pub const SIGNALLED: u8 = 0x80;

/// Errors preparing or running a Linux guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel or initrd cannot be opened or read, or is not a regular file.
    #[error(transparent)]
    File(#[from] HostFileError),
    /// The kernel's header says it cannot boot here.
    #[error("cannot load kernel {}: {source}", shown(path))]
    BadKernel {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        source: KernelError,
    },
    /// Neither a bzImage nor an ELF.
    #[error(
        "{} is not a Linux kernel: expected a bzImage (\"HdrS\" boot header) or an ELF vmlinux", shown(.0)
    )]
    NotAKernel(PathBuf),
    /// linux-loader refused the image.
    #[error(
        "cannot load kernel {} ({format}): {source} (truncated or corrupt?)",
        shown(path)
    )]
    Load {
        /// The path.
        path: PathBuf,
        /// bzImage or ELF.
        format: &'static str,
        /// linux-loader's error.
        source: linux_loader::loader::Error,
    },
    /// The initrd does not fit.
    #[error("initrd {} ({}) does not fit in guest memory ({}) above the kernel: raise --mem", shown(path), human_size(*size), human_size(*mem))]
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
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// linux-loader could not write the command line to guest memory.
    #[error("cannot write the kernel command line: {0}")]
    WriteCmdline(#[source] linux_loader::loader::Error),
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
    #[error(transparent)]
    Ioctl(#[from] IoctlError),
    /// A vCPU ioctl failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Writing boot parameters failed.
    #[error("cannot write boot parameters: {0}")]
    BootParams(#[source] linux_loader::configurator::Error),
    /// A device could not be placed on the bus.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    /// The vCPU kick signal could not be set up.
    #[error(transparent)]
    Kick(#[from] KickError),
    /// An eventfd for an interrupt could not be made.
    #[error("cannot create an eventfd for IRQ {irq}: {source}")]
    EventFd {
        /// The interrupt line.
        irq: u32,
        /// The OS error.
        source: std::io::Error,
    },
    /// A thread could not start.
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    /// More virtio devices than interrupt lines for them.
    #[error("at most {0} virtio devices")]
    TooManyDevices(usize),
    /// The seccomp filters could not be built or applied.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// A virtio device could not be set up.
    #[error(transparent)]
    Virtio(#[from] VirtioError),
    /// The vsock device could not be set up (its socket path, its CID).
    #[error(transparent)]
    Vsock(#[from] crate::virtio::vsock::VsockError),
    /// A drive could not be attached.
    #[error(transparent)]
    Block(#[from] crate::virtio::block::BlockError),
    /// A tap could not be attached.
    #[error(transparent)]
    Net(#[from] crate::virtio::net::NetError),
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
    /// Give the guest a virtio-rng device.
    pub rng: bool,
    /// Give the guest a virtio-vsock device with this CID and host socket.
    pub vsock: Option<crate::virtio::vsock::VsockConfig>,
    /// Disks: `/dev/vda`, `/dev/vdb`... in this order.
    pub drives: Vec<crate::virtio::block::DriveConfig>,
    /// Network interfaces on existing tap devices: `eth0`, `eth1`... in this order.
    pub nets: Vec<crate::virtio::net::NetConfig>,
    /// Confine every VMM thread with the seccomp filter of its role once the VM is built.
    pub seccomp: bool,
}

impl BootConfig {
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
            rng: false,
            vsock: None,
            drives: Vec::new(),
            nets: Vec::new(),
            seccomp: true,
        }
    }

    /// Checks the vCPU count and memory size (no I/O, no KVM).
    pub fn check(&self) -> Result<(), BootError> {
        if self.cpus == 0 || self.cpus > u32::from(MAX_CPUS) {
            return Err(BootError::Cpus {
                got: self.cpus,
                max: MAX_CPUS,
            });
        }
        if self.mem < layout::MIN_MEM {
            let why = format!(
                "a Linux guest needs at least {}",
                human_size(layout::MIN_MEM)
            );
            return Err(MemoryError::TooSmall {
                size: self.mem,
                why,
            }
            .into());
        }
        if self.mem > layout::MAX_MEM {
            let why = format!(
                "rypervisor boot keeps RAM below the 32-bit MMIO hole (at most {})",
                human_size(layout::MAX_MEM)
            );
            return Err(MemoryError::TooLarge {
                size: self.mem,
                why,
            }
            .into());
        }
        Ok(())
    }
}

/// How the guest ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The kernel halted after `poweroff`/`halt` ("reboot: System halted" / "Power down").
    PoweredOff,
    /// The guest reset the machine (i8042 reset, triple fault or a reset system event)
    /// after asking for it ("reboot: Restarting system" on the console).
    Reset,
    /// The console showed a kernel panic (and then the guest reset, with `panic=1`).
    Panic,
    /// The time limit expired.
    TimedOut,
    /// The user typed Ctrl-A x.
    UserQuit,
    /// A host signal (SIGTERM, SIGINT, SIGHUP, SIGQUIT) asked the VMM to stop (see
    /// [`SIGNALLED`]); its number.
    Signal(i32),
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
            Ending::Signal(sig) => 128 + sig,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sizes_and_counts_are_refused_before_kvm() {
        let mut c = BootConfig::new(Path::new("/nonexistent"));
        c.cpus = 0;
        let err = c.check().unwrap_err().to_string();
        assert!(err.contains("--cpus must be between 1"), "{err}");
        c.cpus = 1;
        c.mem = 1 << 20;
        let err = c.check().unwrap_err().to_string();
        assert!(err.contains("at least 16 MiB"), "{err}");
        c.mem = 4 << 30;
        assert!(c.check().is_err());
        c.mem = DEFAULT_MEM;
        assert!(c.check().is_ok());
    }
}
