//! Where a Linux guest's boot structures go in guest-physical memory (the usual PC layout,
//! as Firecracker and Cloud Hypervisor use it), and the e820 map that describes RAM.
//!
//! | address | what |
//! |---|---|
//! | `0x0500` | boot GDT (`arch`'s: 32-bit code `0x08` for PVH, data `0x10`, 64-bit code `0x18`, TSS `0x30`) |
//! | `0x0540` | boot IDT (empty) |
//! | `0x0580` | boot TSS (no I/O bitmap) |
//! | `0x6000` | PVH `hvm_start_info`, then its memory map and module list |
//! | `0x7000` | zero page (`boot_params`) |
//! | `0x8ff0` | boot stack top |
//! | `0x9000` | PML4, `0xa000` PDPT, `0xb000`–`0xefff` 4 page directories (identity map of 4 GiB, 2 MiB pages) |
//! | `0x20000` | kernel command line |
//! | `0x9fc00` | EBDA: the MP table (`_MP_` floating pointer + configuration table) |
//! | `0x100000` | the kernel (bzImage protected-mode part, or vmlinux segments at their addresses) |
//! | `0xd0000000` | virtio-mmio windows, 4 KiB each (IRQs 5, 6, 7, 9, 10, 11) |
//! | top of RAM | the initrd, page aligned, below the kernel's `initrd_addr_max` |

/// Boot GDT.
pub const GDT: u64 = 0x500;
/// Boot IDT.
pub const IDT: u64 = 0x540;
/// Boot TSS.
pub const TSS: u64 = 0x580;
/// PVH start info.
pub const PVH_INFO: u64 = 0x6000;
/// Zero page.
pub const ZERO_PAGE: u64 = 0x7000;
/// Boot stack top.
pub const BOOT_STACK: u64 = 0x8ff0;
/// PML4.
pub const PML4: u64 = 0x9000;
/// PDPT.
pub const PDPT: u64 = 0xa000;
/// First of four page directories.
pub const PD: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Room for the command line (Linux's COMMAND_LINE_SIZE on x86).
pub const CMDLINE_MAX: usize = 2048;
/// Start of the EBDA, where the MP table goes; low RAM ends here.
pub const EBDA: u64 = 0x9fc00;
/// Where the kernel and high memory start.
pub const HIGH_MEM: u64 = 0x10_0000;
/// The first virtio-mmio window: one 4 KiB window per device from here (above any RAM).
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// The ISA interrupt lines virtio devices get, in order (the MP table routes all 16 to the
/// I/O APIC; 4 is the UART's, 8 the RTC's, 12–15 belong to the mouse, FPU and IDE).
pub const VIRTIO_IRQS: [u32; 6] = [5, 6, 7, 9, 10, 11];
/// The I/O APIC's MMIO base.
pub const IOAPIC: u64 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const LAPIC: u64 = 0xfee0_0000;
/// KVM's TSS (three pages, Intel only) just below the BIOS area.
pub const KVM_TSS: u64 = 0xfffb_d000;
/// KVM's identity-map page (Intel only), right before the TSS.
pub const KVM_IDENTITY_MAP: u64 = 0xfffb_c000;
/// Largest guest: RAM stays below the 32-bit MMIO hole, so one e820 RAM entry suffices.
pub const MAX_MEM: u64 = 3 << 30;
/// Smallest guest worth booting.
pub const MIN_MEM: u64 = 16 << 20;

/// e820 entry types.
pub mod e820 {
    /// Usable RAM.
    pub const RAM: u32 = 1;
    /// Reserved.
    pub const RESERVED: u32 = 2;
}

/// One e820 entry: (address, size, type).
pub type E820Entry = (u64, u64, u32);

/// The e820 map for `mem` bytes of RAM: low RAM up to the EBDA, the EBDA (MP table)
/// reserved, then RAM from 1 MiB to the end.
pub fn e820_map(mem: u64) -> Vec<E820Entry> {
    vec![
        (0, EBDA, e820::RAM),
        (EBDA, 0xa0000 - EBDA, e820::RESERVED),
        (HIGH_MEM, mem - HIGH_MEM, e820::RAM),
    ]
}

/// Where the initrd goes: page aligned, as high as possible below `min(mem, max_addr + 1)`,
/// above `kernel_end`. `None` if it does not fit.
pub fn initrd_address(mem: u64, size: u64, max_addr: u64, kernel_end: u64) -> Option<u64> {
    let top = mem.min(max_addr.saturating_add(1));
    let addr = top.checked_sub(size)? & !0xfff;
    (addr >= kernel_end).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_ram_and_reserves_the_ebda() {
        let map = e820_map(256 << 20);
        assert_eq!(map[0], (0, 0x9fc00, e820::RAM));
        assert_eq!(map[1], (0x9fc00, 0x400, e820::RESERVED));
        assert_eq!(map[2], (0x10_0000, (256 << 20) - 0x10_0000, e820::RAM));
        let ram: u64 = map.iter().filter(|e| e.2 == e820::RAM).map(|e| e.1).sum();
        assert_eq!(
            ram,
            (256 << 20) - 0x60400,
            "everything but the hole below 1 MiB"
        );
    }

    #[test]
    fn initrd_goes_high_and_respects_limits() {
        assert_eq!(
            initrd_address(256 << 20, 0x1800, u64::MAX, 0x200_0000),
            Some((256 << 20) - 0x2000)
        );
        // The kernel's initrd_addr_max wins over the end of RAM.
        assert_eq!(
            initrd_address(1 << 30, 0x1000, 0x37ff_ffff, 0),
            Some(0x3800_0000 - 0x1000)
        );
        assert_eq!(
            initrd_address(64 << 20, 70 << 20, u64::MAX, 0),
            None,
            "larger than RAM"
        );
        assert_eq!(
            initrd_address(64 << 20, 60 << 20, u64::MAX, 8 << 20),
            None,
            "over the kernel"
        );
    }
}
