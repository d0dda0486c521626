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
}
