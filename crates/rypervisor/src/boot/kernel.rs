//! The kernel in guest memory: loading it with linux-loader, and the boot parameters it reads
//! at entry (the zero page for the Linux boot protocol, or PVH's `hvm_start_info`).

use std::fs::File;
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{KernelLoader, KernelLoaderResult};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{layout, params, BootError};
use crate::loader::kernel::{KernelFile, KernelFormat};

/// A kernel in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// Its format.
    pub format: KernelFormat,
    /// What linux-loader found: where it went, its setup header (bzImage), PVH entry.
    pub loaded: KernelLoaderResult,
}

impl LoadedKernel {
    /// One past the kernel's last byte in guest memory.
    pub fn end(&self) -> u64 {
        self.loaded.kernel_load.0 + self.loaded.kernel_end
    }

    /// The longest command line the kernel accepts, NUL included.
    pub fn max_cmdline(&self) -> usize {
        match self.loaded.setup_header {
            Some(h) if h.cmdline_size > 0 => (h.cmdline_size as usize).min(layout::CMDLINE_MAX),
            _ => layout::CMDLINE_MAX,
        }
    }

    /// The highest address the initrd may end at.
    pub fn initrd_addr_max(&self) -> u64 {
        self.loaded
            .setup_header
            .map_or(u64::MAX, |h| u64::from(h.initrd_addr_max).max(0x37ff_ffff))
    }
}

/// Loads the kernel in `file` (detected as `kind`) into `mem` with linux-loader: a bzImage's
/// protected-mode part at 1 MiB, or an ELF's segments at their addresses (at or above 1 MiB).
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &mut File,
    kind: KernelFile,
) -> Result<LoadedKernel, BootError> {
    let load_err = |source| BootError::Load {
        path: path.to_path_buf(),
        format: kind.name(),
        source,
    };
    let high = Some(GuestAddress(layout::HIGH_MEM));
    let (format, loaded) = match kind {
        KernelFile::BzImage => {
            let r = BzImage::load(mem, None, file, high).map_err(load_err)?;
            (KernelFormat::BzImage, r)
        }
        KernelFile::Elf => {
            let r = Elf::load(mem, None, file, high).map_err(load_err)?;
            match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(_) => (KernelFormat::VmlinuxPvh, r),
                _ => (KernelFormat::Vmlinux64, r),
            }
        }
    };
    Ok(LoadedKernel { format, loaded })
}

/// Writes the boot parameters for `kernel` and returns its entry point.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    ram_size: u64,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<u64, BootError> {
    let loaded = &kernel.loaded;
    if let (true, PvhBootCapability::PvhEntryPresent(entry)) =
        (kernel.format.is_pvh(), loaded.pvh_boot_cap)
    {
        let (info, memmap, modules) = params::pvh_start_info(ram_size, initrd);
        let (memmap_addr, modlist_addr) = params::pvh_addresses();
        let mut bp = BootParams::new(&info, GuestAddress(layout::PVH_INFO));
        bp.set_sections(&memmap, GuestAddress(memmap_addr));
        if !modules.is_empty() {
            bp.set_modules(&modules, GuestAddress(modlist_addr));
        }
        PvhBootConfigurator::write_bootparams(&bp, mem).map_err(BootError::BootParams)?;
        return Ok(entry.0);
    }
    let zero = params::zero_page(loaded.setup_header, ram_size, cmdline_len, initrd);
    let bp = BootParams::new(&zero, GuestAddress(layout::ZERO_PAGE));
    LinuxBootConfigurator::write_bootparams(&bp, mem).map_err(BootError::BootParams)?;
    Ok(match kernel.format {
        // The 64-bit entry is 0x200 past the start of the protected-mode code.
        KernelFormat::BzImage => loaded.kernel_load.0 + 0x200,
        _ => loaded.kernel_load.0,
    })
}
