//! Linux kernel images: which format a file is, told from its first bytes. `boot` loads the
//! kernels (through linux-loader); `run` uses the same check to refuse a kernel with a hint.

use serde::Serialize;

/// Bytes of a file's head that [`detect`] needs (past the bzImage setup header's magic).
pub const HEAD_BYTES: usize = 0x400;

/// The kernel formats `boot` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum KernelFormat {
    /// bzImage, entered at its 64-bit entry point with a zero page.
    BzImage,
    /// ELF vmlinux with a Xen PVH note, entered in 32-bit mode with `hvm_start_info`.
    VmlinuxPvh,
    /// ELF vmlinux without PVH, entered at its 64-bit entry with a zero page.
    Vmlinux64,
}

impl KernelFormat {
    /// Whether the kernel starts in 32-bit protected mode with paging off (PVH) rather than
    /// in long mode.
    pub fn is_pvh(self) -> bool {
        self == KernelFormat::VmlinuxPvh
    }
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

/// What a file's first bytes say it is (an ELF's entry, PVH or 64-bit, is known only once
/// its notes are parsed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFile {
    /// A bzImage: the boot sector signature and the "HdrS" setup header magic.
    BzImage,
    /// An ELF file.
    Elf,
}

impl KernelFile {
    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            KernelFile::BzImage => "bzImage",
            KernelFile::Elf => "ELF",
        }
    }
}

/// Detects the kernel format from the first bytes of a file.
pub fn detect(bytes: &[u8]) -> Option<KernelFile> {
    if bytes.get(0x1fe..0x200) == Some(&[0x55, 0xaa]) && bytes.get(0x202..0x206) == Some(b"HdrS") {
        Some(KernelFile::BzImage)
    } else if bytes.starts_with(b"\x7fELF") {
        Some(KernelFile::Elf)
    } else {
        None
    }
}

/// What is wrong with a kernel file, found before a VM is made for it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    /// A setup-header field says the kernel cannot be booted this way.
    #[error("bzImage header field {field} is {value:#x}: {why}")]
    Header {
        /// The field, as `Documentation/x86/boot.rst` names it.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What that means.
        why: &'static str,
    },
    /// The file is shorter than its header says.
    #[error("bzImage is truncated: its header (setup_sects, syssize) says {expected} bytes, the file has {actual}")]
    Truncated {
        /// Size the header implies.
        expected: u64,
        /// The file's size.
        actual: u64,
    },
    /// The kernel needs more memory than the guest has.
    #[error("the kernel needs {} of memory from 1 MiB up, more than --mem {} gives: raise --mem", crate::memory::human_size(*needs), crate::memory::human_size(*mem))]
    TooLittleMemory {
        /// Bytes above 1 MiB it needs (a bzImage's init_size, a vmlinux's segments).
        needs: u64,
        /// Guest memory.
        mem: u64,
    },
    /// An ELF that is a user program, not a kernel.
    #[error("this ELF is a program linked at user addresses (up to {vaddr:#x}), not a Linux kernel (a vmlinux is linked in the kernel half, e.g. 0xffffffff81000000): to run a Linux program, use `rypervisor exec`")]
    UserProgram {
        /// Its highest segment's virtual address.
        vaddr: u64,
    },
}

/// Where in the setup header (offsets from the file's start, `Documentation/x86/boot.rst`).
mod hdr {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const SYSSIZE: usize = 0x1f4;
    pub const VERSION: usize = 0x206;
    pub const LOADFLAGS: usize = 0x211;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const XLOADFLAGS: usize = 0x236;
    pub const INIT_SIZE: usize = 0x260;
    /// loadflags: the protected-mode code loads at 1 MiB (a bzImage).
    pub const LOADED_HIGH: u8 = 1;
    /// xloadflags: the kernel has the 64-bit entry point at 0x200.
    pub const XLF_KERNEL_64: u16 = 1;
}

fn le(bytes: &[u8], at: usize, len: usize) -> u64 {
    let mut v = 0u64;
    for (i, b) in bytes.iter().skip(at).take(len).enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    v
}

/// Checks a bzImage's setup header (`head`: at least [`HEAD_BYTES`] of the file) against the
/// 64-bit boot protocol this VMM uses, the file's size and `mem` bytes of guest RAM.
pub fn check_bzimage(head: &[u8], file_len: u64, mem: u64) -> Result<(), KernelError> {
    let field = |field, value, why| Err(KernelError::Header { field, value, why });
    let version = le(head, hdr::VERSION, 2);
    if version < 0x206 {
        return field(
            "version",
            version,
            "boot protocol 2.06 or later is needed (the command line size and the 64-bit entry)",
        );
    }
    if le(head, hdr::LOADFLAGS, 1) & u64::from(hdr::LOADED_HIGH) == 0 {
        return field(
            "loadflags",
            le(head, hdr::LOADFLAGS, 1),
            "LOADED_HIGH is clear: a zImage (loaded below 1 MiB) cannot be booted, only a bzImage",
        );
    }
    let xloadflags = le(head, hdr::XLOADFLAGS, 2);
    if version >= 0x20c && xloadflags & u64::from(hdr::XLF_KERNEL_64) == 0 {
        return field("xloadflags", xloadflags, "XLF_KERNEL_64 is clear: the kernel has no 64-bit entry point, which rypervisor boots through");
    }
    let cmdline_size = le(head, hdr::CMDLINE_SIZE, 4);
    if cmdline_size == 0 {
        return field("cmdline_size", 0, "the kernel takes no command line");
    }
    let setup_sects = match le(head, hdr::SETUP_SECTS, 1) {
        0 => 4,
        n => n,
    };
    let expected = (setup_sects + 1) * 512 + le(head, hdr::SYSSIZE, 4) * 16;
    if file_len < expected {
        return Err(KernelError::Truncated {
            expected,
            actual: file_len,
        });
    }
    let init_size = if version >= 0x20a {
        le(head, hdr::INIT_SIZE, 4)
    } else {
        0
    };
    if (1 << 20) + init_size > mem {
        return Err(KernelError::TooLittleMemory {
            needs: init_size,
            mem,
        });
    }
    Ok(())
}

/// Whether an ELF note segment holds Xen's PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`).
fn has_pvh_note(mut notes: &[u8]) -> bool {
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let word = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    while let (Some(namesz), Some(descsz), Some(kind)) =
        (word(notes, 0), word(notes, 4), word(notes, 8))
    {
        let name_end = 12 + namesz as usize;
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && notes.get(12..name_end) == Some(b"Xen\0") {
            return true;
        }
        let next = 12 + (namesz as usize).div_ceil(4) * 4 + (descsz as usize).div_ceil(4) * 4;
        match notes.get(next..) {
            Some(rest) if next > 12 => notes = rest,
            _ => return false,
        }
    }
    false
}

/// Refuses an ELF whose loadable segments are linked at user addresses (a program, not a
/// vmlinux) or do not fit in `mem` bytes of RAM. `head` holds the ELF header and program
/// headers (the first 64 KiB suffice).
pub fn check_vmlinux(head: &[u8], mem: u64) -> Result<(), KernelError> {
    use object::read::elf::{FileHeader, ProgramHeader};
    type Header = object::elf::FileHeader64<object::Endianness>;
    // What cannot be parsed here is left to linux-loader, which reports it.
    let Ok(header) = Header::parse(head) else {
        return Ok(());
    };
    let Ok(endian) = header.endian() else {
        return Ok(());
    };
    let Ok(phdrs) = header.program_headers(endian, head) else {
        return Ok(());
    };
    let loads = || {
        phdrs
            .iter()
            .filter(|p| p.p_type(endian) == object::elf::PT_LOAD)
    };
    // A vmlinux links its text in the kernel half (its per-CPU segment sits at 0, so look at
    // the highest segment); a program has nothing there. A kernel with a PVH entry note
    // (a unikernel linked low, say) is a kernel whatever its addresses.
    let pvh = phdrs
        .iter()
        .filter(|p| p.p_type(endian) == object::elf::PT_NOTE)
        .any(|p| p.data(endian, head).is_ok_and(has_pvh_note));
    if let Some(vaddr) = loads().map(|p| p.p_vaddr(endian)).max() {
        if vaddr < 0xffff_8000_0000_0000 && !pvh {
            return Err(KernelError::UserProgram { vaddr });
        }
    }
    let end = loads()
        .map(|p| p.p_paddr(endian).saturating_add(p.p_memsz(endian)))
        .max()
        .unwrap_or(0);
    if end > mem {
        return Err(KernelError::TooLittleMemory {
            needs: end.saturating_sub(1 << 20),
            mem,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_are_detected_by_content() {
        let mut bz = vec![0u8; HEAD_BYTES];
        bz[0x1fe] = 0x55;
        bz[0x1ff] = 0xaa;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect(&bz), Some(KernelFile::BzImage));
        assert_eq!(detect(b"\x7fELF\x02\x01"), Some(KernelFile::Elf));
        assert_eq!(detect(b"#!/bin/sh\n"), None);
        assert_eq!(detect(&bz[..0x100]), None);
        assert!(KernelFormat::VmlinuxPvh.is_pvh() && !KernelFormat::BzImage.is_pvh());
    }

    /// A setup header of a plausible 64-bit bzImage of `total` bytes.
    fn header(total: u64) -> Vec<u8> {
        let mut h = vec![0u8; HEAD_BYTES];
        h[0x1fe] = 0x55;
        h[0x1ff] = 0xaa;
        h[0x202..0x206].copy_from_slice(b"HdrS");
        h[hdr::SETUP_SECTS] = 4;
        let sys = ((total - 5 * 512) / 16) as u32;
        h[hdr::SYSSIZE..hdr::SYSSIZE + 4].copy_from_slice(&sys.to_le_bytes());
        h[hdr::VERSION..hdr::VERSION + 2].copy_from_slice(&0x20fu16.to_le_bytes());
        h[hdr::LOADFLAGS] = hdr::LOADED_HIGH;
        h[hdr::XLOADFLAGS] = 1;
        h[hdr::CMDLINE_SIZE..hdr::CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
        h[hdr::INIT_SIZE..hdr::INIT_SIZE + 4].copy_from_slice(&(8u32 << 20).to_le_bytes());
        h
    }

    #[test]
    fn bzimage_headers_that_break_the_protocol_are_named() {
        let good = header(1 << 20);
        assert_eq!(check_bzimage(&good, 1 << 20, 64 << 20), Ok(()));
        let field = |at: usize, value: &[u8]| {
            let mut h = good.clone();
            h[at..at + value.len()].copy_from_slice(value);
            match check_bzimage(&h, 1 << 20, 64 << 20) {
                Err(KernelError::Header { field, .. }) => field,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(field(hdr::VERSION, &[0x05, 0x02]), "version");
        assert_eq!(field(hdr::LOADFLAGS, &[0]), "loadflags");
        assert_eq!(field(hdr::XLOADFLAGS, &[0, 0]), "xloadflags");
        assert_eq!(field(hdr::CMDLINE_SIZE, &[0, 0, 0, 0]), "cmdline_size");
        assert!(matches!(
            check_bzimage(&good, 600 << 10, 64 << 20),
            Err(KernelError::Truncated { .. })
        ));
        let small = check_bzimage(&good, 1 << 20, 8 << 20).unwrap_err();
        assert!(small.to_string().contains("raise --mem"), "{small}");
    }

    #[test]
    fn pvh_notes_are_found() {
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes()); // namesz
        note.extend_from_slice(&4u32.to_le_bytes()); // descsz
        note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&0x100_0000u32.to_le_bytes());
        let mut other = note.clone();
        other[8] = 5;
        assert!(has_pvh_note(&note));
        assert!(!has_pvh_note(&other));
        let both = [other.clone(), note].concat();
        assert!(has_pvh_note(&both));
        assert!(!has_pvh_note(&other[..7]), "truncated: no panic");
    }
}
