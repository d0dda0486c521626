//! The boot parameters a kernel reads: the zero page (`struct boot_params`) for the Linux
//! boot protocol, or `hvm_start_info` for PVH, plus the command line. Pure functions over
//! linux-loader's structures, so unit tests check them without a VM.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};

use super::layout::{self, E820Entry};

/// `boot_flag`: 0xAA55.
pub const BOOT_FLAG: u16 = 0xaa55;
/// `header`: "HdrS".
pub const HDRS: u32 = 0x5372_6448;
/// `type_of_loader`: undefined loader (0xff), as other VMMs report.
pub const LOADER_TYPE: u8 = 0xff;
/// `loadflags`: KEEP_SEGMENTS | CAN_USE_HEAP are irrelevant for the 64-bit entry; LOADED_HIGH.
const LOADED_HIGH: u8 = 0x01;
/// PVH start-info magic.
pub const PVH_MAGIC: u32 = 0x336e_c578;

/// The default kernel command line: console on the first UART, reboot through the keyboard
/// controller (which the VMM turns into "the VM ended"), reboot one second after a panic, and
/// no probing of hardware a micro-VM does not have (as Firecracker does).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off nomodule \
     i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1";

/// Joins the default command line, the CPU template's options and the user's addition.
pub fn cmdline(template_options: &str, extra: Option<&str>) -> String {
    let mut s = DEFAULT_CMDLINE.to_string();
    for part in [template_options, extra.unwrap_or("")] {
        let part = part.trim();
        if !part.is_empty() {
            s.push(' ');
            s.push_str(part);
        }
    }
    s
}

/// The zero page for the 64-bit Linux boot protocol.
///
/// `header` is the setup header read from a bzImage (`None` for a vmlinux entered at its
/// 64-bit entry point, which gets a minimal valid header).
pub fn zero_page(
    header: Option<setup_header>,
    mem: u64,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> boot_params {
    let mut params = boot_params {
        hdr: header.unwrap_or(setup_header {
            boot_flag: BOOT_FLAG,
            header: HDRS,
            kernel_alignment: 0x0100_0000,
            ..Default::default()
        }),
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.cmd_line_ptr = layout::CMDLINE as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = layout::e820_map(mem);
    for (slot, (addr, size, type_)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    params.e820_entries = map.len() as u8;
    params
}

/// Where the PVH memory map and module list go, after the start info.
pub fn pvh_addresses() -> (u64, u64) {
    let memmap = layout::PVH_INFO + 64;
    let modlist = memmap + 8 * 24;
    (memmap, modlist)
}

/// The PVH start info, memory map and module list (the initrd).
pub fn pvh_start_info(
    mem: u64,
    initrd: Option<(u64, u64)>,
) -> (
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Vec<hvm_modlist_entry>,
) {
    let (memmap_addr, modlist_addr) = pvh_addresses();
    let memmap: Vec<hvm_memmap_table_entry> = layout::e820_map(mem)
        .into_iter()
        .map(|(addr, size, type_): E820Entry| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    let info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE,
        memmap_paddr: memmap_addr,
        memmap_entries: memmap.len() as u32,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { modlist_addr },
        ..Default::default()
    };
    (info, memmap, modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zero_page_carries_cmdline_initrd_and_e820() {
        let p = zero_page(None, 128 << 20, 42, Some((0x700_0000, 0x1234)));
        assert_eq!({ p.hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ p.hdr.header }, HDRS);
        assert_eq!(p.hdr.type_of_loader, LOADER_TYPE);
        assert_eq!({ p.hdr.cmd_line_ptr }, layout::CMDLINE as u32);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!({ p.hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!(p.e820_entries, 3);
        let last = p.e820_table[2];
        assert_eq!(
            ({ last.addr }, { last.size }, { last.r#type }),
            (0x10_0000, (128 << 20) - 0x10_0000, 1)
        );
        // A bzImage's own header is kept (version, alignment...), with our fields set.
        let from_image = setup_header {
            version: 0x20f,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        let p = zero_page(Some(from_image), 64 << 20, 10, None);
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
        assert_eq!(p.hdr.loadflags & LOADED_HIGH, LOADED_HIGH);
    }

    #[test]
    fn pvh_start_info_points_at_its_tables() {
        let (info, memmap, modules) = pvh_start_info(256 << 20, Some((0xf00_0000, 4096)));
        assert_eq!(info.magic, PVH_MAGIC);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, layout::CMDLINE);
        assert_eq!(info.memmap_entries as usize, memmap.len());
        assert_eq!(info.memmap_paddr, pvh_addresses().0);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, pvh_addresses().1);
        assert_eq!((modules[0].paddr, modules[0].size), (0xf00_0000, 4096));
        assert!(
            pvh_addresses().1 + 32 <= layout::ZERO_PAGE,
            "fits before the zero page"
        );
        let (info, _, modules) = pvh_start_info(256 << 20, None);
        assert_eq!(
            (info.nr_modules, info.modlist_paddr, modules.len()),
            (0, 0, 0)
        );
    }

    #[test]
    fn command_lines_join_defaults_template_and_user() {
        assert_eq!(cmdline("", None), DEFAULT_CMDLINE);
        let c = cmdline("noxsave", Some("  quiet  "));
        assert!(c.starts_with("console=ttyS0 reboot=k panic=1"));
        assert!(c.ends_with(" noxsave quiet"));
    }
}
