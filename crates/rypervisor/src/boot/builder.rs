//! [`prepare`]: building the micro-VM for a kernel, as a list of named steps (in the manner of
//! Firecracker's `builder.rs`). Everything that can be checked without KVM is checked first,
//! so bad input leaves nothing behind.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::IoEventAddress;
use linux_loader::loader::{load_cmdline, Cmdline};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::console::{ConsoleEvents, ConsoleWatch};
use super::kernel::{load_kernel, write_boot_params, LoadedKernel};
use super::run::{Devices, LinuxVm};
use super::vcpus::{create_vcpu, setup_boot_cpu, write_boot_tables};
use super::{layout, mptable, params, BootConfig, BootError, MAX_CPUS};
use crate::bus::{AddressSpace, Bus, SharedDevice};
use crate::cpu_template;
use crate::devices::i8042::{self, I8042};
use crate::devices::misc::{BootMarker, Sink, BOOT_MARKER_PORT};
use crate::devices::output::{BoundedOutput, GiveUp};
use crate::devices::rtc::{self, Rtc};
use crate::devices::serial::{EventFdTrigger, COM1, REGISTERS};
use crate::devices::{SerialDevice, StopSignal};
use crate::hostfile::{self, HostFileError};
use crate::kvm::{ioctl, KvmSystem};
use crate::loader::kernel::{self, detect, KernelFile};
use crate::memory::GuestRam;
use crate::seccomp::boot::boot_filters;
use crate::vcpu::Vcpu;
use crate::virtio::block::{self, Block};
use crate::virtio::net::{self, Net};
use crate::virtio::rng::Rng;
use crate::virtio::vsock::Vsock;
use crate::virtio::{mmio, Interrupt, MmioTransport, VirtioDevice};
use crate::vm::Vm;

use crate::seccomp::confine_role;
use seccompiler::BpfProgram;

/// A virtio device, shared by its transport (vCPU threads) and the event loop.
type SharedVirtio = Arc<Mutex<dyn VirtioDevice>>;

/// The UART's interrupt line (COM1).
const SERIAL_IRQ: u32 = 4;
/// How much of a kernel file is read to check it: the bzImage setup header, or an ELF's
/// header and program headers.
const ELF_HEAD_BYTES: usize = 64 << 10;

/// Builds the VM for `config`, with the guest console going to `console`.
pub fn prepare(config: BootConfig, console: Box<dyn Write + Send>) -> Result<LinuxVm, BootError> {
    // Input, checked before KVM is touched.
    config.check()?;
    let filters = match config.seccomp {
        true => Some(boot_filters()?),
        false => None,
    };
    let initrd = read_initrd(&config)?;
    let virtio = virtio_devices(&config)?;
    let cmdline = command_line(&config, virtio.len())?;
    let (mut kernel_file, kind) = open_kernel(&config.kernel, config.mem)?;
    // The VM, its interrupt controllers and memory.
    let kvm = KvmSystem::open(&config.kvm_device)?;
    let vm = create_vm(&kvm, config.cpus)?;
    create_irqchip_and_pit(&vm)?;
    let ram = GuestRam::new(0, config.mem)?;
    vm.register_ram(&ram, 0)?;
    // The kernel and everything it reads at entry.
    let kernel = load_kernel(ram.guest_memory(), &config.kernel, &mut kernel_file, kind)?;
    write_cmdline(&ram, &kernel, &cmdline)?;
    let initrd_at = load_initrd(&ram, &config, &kernel, initrd.as_deref())?;
    let entry = write_boot_params(
        ram.guest_memory(),
        &kernel,
        config.mem,
        cmdline.len() + 1,
        initrd_at,
    )?;
    ram.write(layout::EBDA, &mptable::build(config.cpus as u8))?;
    // The vCPUs, the boot vCPU at the entry point.
    let vcpus = create_vcpus(&kvm, &vm, &ram, &config, &kernel, entry)?;
    // The devices.
    let output_filter = filters.as_ref().map(|f| f.console_output.clone());
    let devices = create_devices(&vm, &ram, (console, output_filter), &config, virtio)?;
    let mut linux = LinuxVm::new(vcpus, devices, kernel.format, cmdline, config, vm, kvm, ram);
    linux.filters = filters;
    Ok(linux)
}

/// The initrd's bytes, refused before reading when they cannot fit above the kernel.
fn read_initrd(config: &BootConfig) -> Result<Option<Vec<u8>>, BootError> {
    let Some(path) = &config.initrd else {
        return Ok(None);
    };
    let (file, size) = hostfile::open_regular("initrd", path, u64::MAX, "")?;
    if size >= config.mem - layout::HIGH_MEM {
        return Err(BootError::InitrdTooLarge {
            path: path.clone(),
            size,
            mem: config.mem,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(size)
        .read_to_end(&mut bytes)
        .map_err(|source| HostFileError::Read {
            what: "initrd",
            path: path.clone(),
            source,
        })?;
    Ok(Some(bytes))
}

/// The default command line, the template's options and the user's, within the x86 limit
/// (the kernel's own limit is checked once it is loaded), then one `virtio_mmio.device=` per
/// virtio device (linux-loader's helper puts them before any `--` init arguments).
fn command_line(config: &BootConfig, virtio: usize) -> Result<String, BootError> {
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
    let root = root_option(config);
    if virtio == 0 && root.is_none() {
        return Ok(cmdline);
    }
    let mut line = Cmdline::try_from(&cmdline, layout::CMDLINE_MAX).map_err(BootError::Cmdline)?;
    if let Some((device, mode)) = root {
        line.insert("root", &device).map_err(BootError::Cmdline)?;
        line.insert_str(mode).map_err(BootError::Cmdline)?;
    }
    for (i, irq) in layout::VIRTIO_IRQS.iter().take(virtio).enumerate() {
        let base = GuestAddress(layout::VIRTIO_MMIO_BASE + i as u64 * mmio::WINDOW);
        line.add_virtio_mmio_device(mmio::WINDOW, base, *irq, None)
            .map_err(BootError::Cmdline)?;
    }
    let text = line.as_cstring().map_err(BootError::Cmdline)?;
    Ok(text.to_string_lossy().into_owned())
}

/// `root=/dev/vdX` and `rw`/`ro` for the drive marked `root` (drives are vda, vdb... in the
/// order given), unless the user's command line names a root itself.
fn root_option(config: &BootConfig) -> Option<(String, &'static str)> {
    let user = config.cmdline.as_deref().unwrap_or("");
    if user.split_whitespace().any(|w| w.starts_with("root=")) {
        return None;
    }
    let (index, drive) = config.drives.iter().enumerate().find(|(_, d)| d.root)?;
    let letter = char::from(b'a' + index as u8);
    let mode = if drive.read_only { "ro" } else { "rw" };
    Some((format!("/dev/vd{letter}"), mode))
}

/// The virtio devices the configuration asks for, in window order.
fn virtio_devices(config: &BootConfig) -> Result<Vec<SharedVirtio>, BootError> {
    let mut devices: Vec<SharedVirtio> = Vec::new();
    if config.rng {
        devices.push(Arc::new(Mutex::new(Rng::new()?)));
    }
    if let Some(v) = &config.vsock {
        devices.push(Arc::new(Mutex::new(Vsock::new(v.cid, v.uds.clone())?)));
    }
    for (disk, drive) in block::open_all(&config.drives)? {
        devices.push(Arc::new(Mutex::new(Block::new(
            disk,
            drive.serial.as_deref(),
        )?)));
    }
    net::check_all(&config.nets)?;
    for n in &config.nets {
        let tap = net::open_tap(&n.tap)?;
        devices.push(Arc::new(Mutex::new(Net::new(tap, n.mac)?)));
    }
    if devices.len() > layout::VIRTIO_IRQS.len() {
        return Err(BootError::TooManyDevices(layout::VIRTIO_IRQS.len()));
    }
    Ok(devices)
}

/// Each virtio device on the bus: its 4 KiB window, an irqfd on its IRQ, and an ioeventfd per
/// queue on QUEUE_NOTIFY (datamatch: the queue's index), so a kick never exits to the VMM.
fn attach_virtio(
    vm: &Vm,
    ram: &GuestRam,
    bus: &mut Bus,
    virtio: &[SharedVirtio],
) -> Result<(), BootError> {
    for (i, device) in virtio.iter().enumerate() {
        let base = layout::VIRTIO_MMIO_BASE + i as u64 * mmio::WINDOW;
        let irq = layout::VIRTIO_IRQS[i];
        let irqfd = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|source| BootError::EventFd { irq, source })?;
        vm.fd
            .register_irqfd(&irqfd, irq)
            .map_err(ioctl("KVM_IRQFD"))?;
        let (name, notify) = {
            let d = device.lock().unwrap_or_else(|p| p.into_inner());
            for (q, evt) in d.queue_events().iter().enumerate() {
                let at = IoEventAddress::Mmio(base + mmio::NOTIFY_OFFSET);
                vm.fd
                    .register_ioevent(evt, &at, q as u32)
                    .map_err(ioctl("KVM_IOEVENTFD"))?;
            }
            (d.name(), d.queue_events().len())
        };
        let interrupt = Arc::new(Interrupt::new(irqfd));
        let transport = MmioTransport::new(device.clone(), ram.guest_memory().clone(), interrupt)?;
        let label = format!("virtio-{name} ({notify} queues, IRQ {irq})");
        bus.insert(
            AddressSpace::Mmio,
            base,
            mmio::WINDOW,
            &label,
            Arc::new(Mutex::new(transport)),
        )?;
    }
    Ok(())
}

/// Opens the kernel (a regular file, never blocking), tells its format from its first bytes
/// and checks its headers against the boot protocol and the guest's memory.
fn open_kernel(path: &Path, mem: u64) -> Result<(File, KernelFile), BootError> {
    // linux-loader reads only what it loads, so the file's size is not a limit by itself.
    let (file, size) = hostfile::open_regular("kernel", path, u64::MAX, "")?;
    let mut head = vec![0u8; (size as usize).min(ELF_HEAD_BYTES)];
    file.read_exact_at(&mut head, 0)
        .map_err(|source| HostFileError::Read {
            what: "kernel",
            path: path.into(),
            source,
        })?;
    let kind = detect(&head).ok_or_else(|| BootError::NotAKernel(path.to_path_buf()))?;
    let checked = match kind {
        KernelFile::BzImage => kernel::check_bzimage(&head, size, mem),
        KernelFile::Elf => kernel::check_vmlinux(&head, mem),
    };
    checked.map_err(|source| BootError::BadKernel {
        path: path.into(),
        source,
    })?;
    Ok((file, kind))
}

/// `KVM_CREATE_VM`, once the host is known to take `cpus` vCPUs; the TSS and identity-map
/// pages KVM needs on Intel go just below 4 GiB.
fn create_vm(kvm: &KvmSystem, cpus: u32) -> Result<Vm, BootError> {
    let vm = Vm::create(kvm)?;
    let max = kvm.kvm.get_max_vcpus().min(usize::from(MAX_CPUS));
    if cpus as usize > max {
        return Err(BootError::Cpus {
            got: cpus,
            max: max as u8,
        });
    }
    vm.fd
        .set_tss_address(layout::KVM_TSS as usize)
        .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
    vm.fd
        .set_identity_map_address(layout::KVM_IDENTITY_MAP)
        .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
    Ok(vm)
}

/// The in-kernel PIC, IOAPIC and LAPICs, and the PIT (its speaker port a dummy).
fn create_irqchip_and_pit(vm: &Vm) -> Result<(), BootError> {
    vm.fd
        .create_irq_chip()
        .map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.fd.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
    Ok(())
}

/// The command line, within the kernel's own limit, where the boot parameters point.
fn write_cmdline(ram: &GuestRam, kernel: &LoadedKernel, cmdline: &str) -> Result<(), BootError> {
    let max = kernel.max_cmdline();
    if cmdline.len() + 1 > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: max - 1,
        });
    }
    let line = Cmdline::try_from(cmdline, max).map_err(BootError::Cmdline)?;
    load_cmdline(ram.guest_memory(), GuestAddress(layout::CMDLINE), &line)
        .map_err(BootError::WriteCmdline)
}

/// The initrd, as high as the kernel allows; returns where it went and its size.
fn load_initrd(
    ram: &GuestRam,
    config: &BootConfig,
    kernel: &LoadedKernel,
    initrd: Option<&[u8]>,
) -> Result<Option<(u64, u64)>, BootError> {
    let (Some(bytes), Some(path)) = (initrd, &config.initrd) else {
        return Ok(None);
    };
    let size = bytes.len() as u64;
    let addr = layout::initrd_address(config.mem, size, kernel.initrd_addr_max(), kernel.end())
        .ok_or_else(|| BootError::InitrdTooLarge {
            path: path.clone(),
            size,
            mem: config.mem,
        })?;
    ram.write(addr, bytes)?;
    Ok(Some((addr, size)))
}

/// Every vCPU with CPUID from the template; the boot vCPU at `entry` with the boot tables.
fn create_vcpus(
    kvm: &KvmSystem,
    vm: &Vm,
    ram: &GuestRam,
    config: &BootConfig,
    kernel: &LoadedKernel,
    entry: u64,
) -> Result<Vec<Vcpu>, BootError> {
    let mut tables = kvm_bindings::kvm_sregs::default();
    write_boot_tables(ram, &mut tables)?;
    let supported = kvm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
    let count = config.cpus as u8;
    let mut vcpus = Vec::with_capacity(usize::from(count));
    for id in 0..count {
        let vcpu = create_vcpu(&vm.fd, &supported, config.template, id, count)?;
        if id == 0 {
            setup_boot_cpu(&vcpu, &tables, kernel.format, entry)?;
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// The legacy devices on the bus: UART (IRQ 4 through an irqfd), i8042, RTC, boot marker,
/// and sinks for the POST and PCI configuration ports; then the virtio devices.
fn create_devices(
    vm: &Vm,
    ram: &GuestRam,
    (console, filter): (Box<dyn Write + Send>, Option<BpfProgram>),
    config: &BootConfig,
    virtio: Vec<SharedVirtio>,
) -> Result<Devices, BootError> {
    let stop = StopSignal::new();
    let events = Arc::new(ConsoleEvents::default());
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| BootError::EventFd {
        irq: SERIAL_IRQ,
        source,
    })?;
    vm.fd
        .register_irqfd(&irq, SERIAL_IRQ)
        .map_err(ioctl("KVM_IRQFD"))?;
    let give_up = GiveUp::new();
    let confine: Box<dyn FnOnce() + Send> =
        Box::new(move || confine_role("console output", filter));
    let console =
        BoundedOutput::with_start(console, give_up.clone(), confine).map_err(BootError::Thread)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        EventFdTrigger(irq),
        Box::new(ConsoleWatch::new(Box::new(console), events.clone())),
        None,
    )));
    let marker = BootMarker::new(config.origin);
    let mut bus = Bus::default();
    let mut add = |name: &'static str, base: u16, len: u64, dev: SharedDevice| {
        bus.insert(AddressSpace::Pio, u64::from(base), len, name, dev)
    };
    add("serial", COM1, REGISTERS, serial.clone())?;
    let i8042 = Arc::new(Mutex::new(I8042::new(stop.clone())));
    add("i8042", i8042::DATA_PORT, i8042::PORTS, i8042)?;
    add(
        "rtc",
        rtc::PORT,
        rtc::PORTS,
        Arc::new(Mutex::new(Rtc::default())),
    )?;
    let marker_dev = Arc::new(Mutex::new(marker.clone()));
    add("boot-marker", BOOT_MARKER_PORT, 1, marker_dev)?;
    // POST code and DMA page registers (Linux touches 0x80 for I/O delays, 0x87 early on).
    add("post", 0x80, 0x10, Arc::new(Mutex::new(Sink)))?;
    add("pci-config", 0xcf8, 8, Arc::new(Mutex::new(Sink)))?;
    attach_virtio(vm, ram, &mut bus, &virtio)?;
    Ok(Devices {
        bus: Arc::new(bus),
        stop,
        events,
        serial,
        marker,
        give_up,
        virtio,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(drives: &[&str], cmdline: Option<&str>) -> BootConfig {
        let mut c = BootConfig::new(Path::new("/nonexistent"));
        c.drives = drives.iter().map(|d| d.parse().unwrap()).collect();
        c.cmdline = cmdline.map(str::to_string);
        c
    }

    #[test]
    fn the_root_drive_is_named_by_its_place_and_mounted_as_it_is_attached() {
        let root = |drives: &[&str], cmdline| root_option(&config(drives, cmdline));
        assert_eq!(root(&["path=a"], None), None, "no drive marked root");
        let rw = Some(("/dev/vda".to_string(), "rw"));
        assert_eq!(root(&["path=a,root"], None), rw);
        let second = root(&["path=a", "path=b,root,ro"], None);
        assert_eq!(second, Some(("/dev/vdb".to_string(), "ro")));
        let own = Some("console=ttyS0 root=/dev/vdb");
        assert_eq!(root(&["path=a,root"], own), None, "the user's root= wins");
        // On the command line: root= and the mode once, before the devices' options.
        let line = command_line(&config(&["path=a", "path=b,root,ro"], None), 2).unwrap();
        assert_eq!(line.matches("root=/dev/vdb").count(), 1, "{line}");
        assert!(line.split_whitespace().any(|w| w == "ro"), "{line}");
        assert!(!line.split_whitespace().any(|w| w == "rw"), "{line}");
        assert!(
            line.contains("virtio_mmio.device=4K@0xd0001000:6"),
            "{line}"
        );
        let line = command_line(&config(&["path=a,root"], own), 1).unwrap();
        assert_eq!(line.matches("root=").count(), 1, "{line}");
    }
}
