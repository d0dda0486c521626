//! Guest images: flat binaries and ELF executables, detected by content.
//!
//! A flat binary is copied as-is to a load address and runs in the mode the user names.
//! An ELF file says everything itself: its class (32/64-bit) gives the mode, its `PT_LOAD`
//! program headers say which bytes go to which guest-physical address (`p_paddr`; the VMM's
//! identity map makes that the virtual address too), and `e_entry` is where to start.
//!
//! `linux-loader` parses ELF too, but only 64-bit kernels (vmlinux); guest programs here may
//! be 32- or 64-bit, so the `object` crate parses the headers and this module checks them.
//! Linux kernels are told apart by [`kernel`], which `boot` shares.

pub mod kernel;

use std::path::Path;

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;
use serde::Serialize;

use crate::arch::CpuMode;
use crate::hostfile::{read_regular, HostFileError};

/// Where flat binaries load when no address is given.
pub const DEFAULT_LOAD: u64 = 0x1000;

/// Errors reading or checking an image.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The file cannot be read, is not a regular file, or does not fit.
    #[error(transparent)]
    File(#[from] HostFileError),
    /// The file is empty.
    #[error("{0}: the image is empty")]
    Empty(String),
    /// The ELF file is truncated or malformed.
    #[error("corrupt ELF: {0}")]
    CorruptElf(String),
    /// An ELF file for another architecture or of another kind.
    #[error("unsupported ELF: {0}")]
    UnsupportedElf(String),
    /// A Linux kernel was given to `run`.
    #[error("this is a Linux kernel (bzImage): `run` runs bare guest programs, not kernels")]
    LinuxKernel,
    /// The mode given contradicts the ELF class.
    #[error("--mode {given:?} contradicts the ELF file, which is {elf:?} mode")]
    ModeMismatch {
        /// Mode the user asked for.
        given: CpuMode,
        /// Mode the ELF class implies.
        elf: CpuMode,
    },
    /// A segment does not fit in guest memory.
    #[error("image bytes {start:#x}..{end:#x} do not fit in guest memory {ram_start:#x}..{ram_end:#x}{hint}")]
    OutsideMemory {
        /// Segment start.
        start: u64,
        /// Segment end.
        end: u64,
        /// RAM start.
        ram_start: u64,
        /// Usable RAM end.
        ram_end: u64,
        /// Extra advice.
        hint: String,
    },
    /// The entry point is not inside guest memory.
    #[error("entry point {entry:#x} is outside guest memory {ram_start:#x}..{ram_end:#x}")]
    EntryOutside {
        /// Entry.
        entry: u64,
        /// RAM start.
        ram_start: u64,
        /// RAM end.
        ram_end: u64,
    },
}

/// Which kind of file an image came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Raw bytes.
    Flat,
    /// ELF, 32-bit.
    Elf32,
    /// ELF, 64-bit.
    Elf64,
}

/// Bytes to place at a guest-physical address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: u64,
    /// Bytes from the file.
    pub data: Vec<u8>,
    /// Size in memory (`>= data.len()`; the rest is zero-filled, e.g. `.bss`).
    pub mem_size: u64,
}

/// A guest program ready to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// What to copy where.
    pub segments: Vec<Segment>,
    /// First instruction.
    pub entry: u64,
    /// Mode to start in.
    pub mode: CpuMode,
    /// Where it came from.
    pub format: ImageFormat,
    /// It looks like a Linux program (a 64-bit ELF linked at the usual user address with a
    /// GNU stack header), which `rypervisor exec` runs, rather than a bare guest.
    pub linux_program: bool,
}

/// How to treat a flat binary (ignored for ELF, except for consistency checks).
#[derive(Clone, Copy, Debug, Default)]
pub struct FlatOptions {
    /// Mode, if the user gave one.
    pub mode: Option<CpuMode>,
    /// Load address (default [`DEFAULT_LOAD`]).
    pub load: Option<u64>,
    /// Entry (default: the load address).
    pub entry: Option<u64>,
}

impl Image {
    /// A flat binary `code` loaded at `load`, starting at `entry` (default `load`).
    pub fn flat(
        code: Vec<u8>,
        load: u64,
        entry: Option<u64>,
        mode: CpuMode,
    ) -> Result<Self, LoaderError> {
        if code.is_empty() {
            return Err(LoaderError::Empty("flat binary".into()));
        }
        let mem_size = code.len() as u64;
        Ok(Self {
            segments: vec![Segment {
                addr: load,
                data: code,
                mem_size,
            }],
            entry: entry.unwrap_or(load),
            mode,
            format: ImageFormat::Flat,
            linux_program: false,
        })
    }

    /// Reads an image file of at most `limit` bytes (guest RAM) and detects its format.
    pub fn from_file(path: &Path, opts: FlatOptions, limit: u64) -> Result<Self, LoaderError> {
        let bytes = read_regular("image", path, limit, "guest memory (--mem)")?;
        if bytes.is_empty() {
            return Err(LoaderError::Empty(path.display().to_string()));
        }
        Self::from_bytes(bytes, opts)
    }

    /// Detects the format of `bytes`: ELF by its magic, else a flat binary.
    pub fn from_bytes(bytes: Vec<u8>, opts: FlatOptions) -> Result<Self, LoaderError> {
        if bytes.starts_with(&elf::ELFMAG) {
            let image = Self::elf(&bytes)?;
            if let Some(given) = opts.mode {
                if given != image.mode {
                    return Err(LoaderError::ModeMismatch {
                        given,
                        elf: image.mode,
                    });
                }
            }
            return Ok(image);
        }
        if kernel::detect(&bytes) == Some(kernel::KernelFile::BzImage) {
            return Err(LoaderError::LinuxKernel);
        }
        Self::flat(
            bytes,
            opts.load.unwrap_or(DEFAULT_LOAD),
            opts.entry,
            opts.mode.unwrap_or(CpuMode::Real),
        )
    }

    /// Parses an ELF executable (32-bit i386 or 64-bit x86-64).
    pub fn elf(bytes: &[u8]) -> Result<Self, LoaderError> {
        match bytes.get(4 /* EI_CLASS */) {
            Some(&elf::ELFCLASS32) => {
                parse_elf::<elf::FileHeader32<Endianness>>(bytes, elf::EM_386, CpuMode::Protected)
            }
            Some(&elf::ELFCLASS64) => {
                parse_elf::<elf::FileHeader64<Endianness>>(bytes, elf::EM_X86_64, CpuMode::Long)
            }
            Some(c) => Err(LoaderError::CorruptElf(format!("unknown ELF class {c}"))),
            None => Err(LoaderError::CorruptElf(
                "file ends inside the ELF header".into(),
            )),
        }
    }

    /// Total bytes of all segments in memory.
    pub fn mem_size(&self) -> u64 {
        self.segments.iter().map(|s| s.mem_size).sum()
    }

    /// Checks that every segment and the entry point fit in `[ram_start, ram_end)`.
    pub fn check_fits(&self, ram_start: u64, ram_end: u64, hint: &str) -> Result<(), LoaderError> {
        for s in &self.segments {
            let end = s.addr.saturating_add(s.mem_size);
            if s.addr < ram_start || end > ram_end {
                return Err(LoaderError::OutsideMemory {
                    start: s.addr,
                    end,
                    ram_start,
                    ram_end,
                    hint: hint.to_owned(),
                });
            }
        }
        if self.entry < ram_start || self.entry >= ram_end {
            return Err(LoaderError::EntryOutside {
                entry: self.entry,
                ram_start,
                ram_end,
            });
        }
        Ok(())
    }
}

pub(crate) fn machine_name(m: u16) -> String {
    match m {
        elf::EM_386 => "i386".into(),
        elf::EM_X86_64 => "x86-64".into(),
        elf::EM_AARCH64 => "AArch64".into(),
        elf::EM_ARM => "ARM".into(),
        elf::EM_RISCV => "RISC-V".into(),
        elf::EM_PPC64 => "PowerPC64".into(),
        elf::EM_S390 => "s390".into(),
        other => format!("machine {other}"),
    }
}

fn parse_elf<H: FileHeader<Endian = Endianness>>(
    bytes: &[u8],
    machine: u16,
    mode: CpuMode,
) -> Result<Image, LoaderError> {
    let corrupt = |e: object::read::Error| LoaderError::CorruptElf(e.to_string());
    let header = H::parse(bytes).map_err(corrupt)?;
    let endian = check_header(header, machine, mode)?;
    let phdrs = header.program_headers(endian, bytes).map_err(corrupt)?;
    let mut segments = Vec::new();
    for ph in phdrs.iter().filter(|ph| ph.p_type(endian) == elf::PT_LOAD) {
        if let Some(segment) = load_segment::<H>(ph, endian, bytes)? {
            segments.push(segment);
        }
    }
    if segments.is_empty() {
        return Err(LoaderError::UnsupportedElf(
            "no loadable (PT_LOAD) segments".into(),
        ));
    }
    let gnu_stack = phdrs
        .iter()
        .any(|ph| ph.p_type(endian) == elf::PT_GNU_STACK);
    let lowest = segments.iter().map(|s| s.addr).min().unwrap_or(0);
    Ok(Image {
        linux_program: mode == CpuMode::Long && gnu_stack && lowest >= 0x40_0000,
        segments,
        entry: header.e_entry(endian).into(),
        mode,
        format: if mode == CpuMode::Long {
            ImageFormat::Elf64
        } else {
            ImageFormat::Elf32
        },
    })
}

/// Little-endian, for `machine`, an executable: returns the endianness to read it with.
fn check_header<H: FileHeader<Endian = Endianness>>(
    header: &H,
    machine: u16,
    mode: CpuMode,
) -> Result<Endianness, LoaderError> {
    let endian = header
        .endian()
        .map_err(|e| LoaderError::CorruptElf(e.to_string()))?;
    if endian != Endianness::Little {
        return Err(LoaderError::UnsupportedElf(
            "big-endian file; x86 is little-endian".into(),
        ));
    }
    let m = header.e_machine(endian);
    if m != machine {
        return Err(LoaderError::UnsupportedElf(format!(
            "built for {}, but a {}-bit x86 ELF must be {}",
            machine_name(m),
            mode.bitness(),
            machine_name(machine)
        )));
    }
    match header.e_type(endian) {
        elf::ET_EXEC | elf::ET_DYN => Ok(endian),
        elf::ET_REL => Err(LoaderError::UnsupportedElf(
            "a relocatable object (.o), not an executable: link it first".into(),
        )),
        t => Err(LoaderError::UnsupportedElf(format!(
            "ELF type {t} is not an executable"
        ))),
    }
}

/// One PT_LOAD's bytes and place (`None` when it takes no memory).
fn load_segment<H: FileHeader<Endian = Endianness>>(
    ph: &H::ProgramHeader,
    endian: Endianness,
    bytes: &[u8],
) -> Result<Option<Segment>, LoaderError> {
    let data = ph.data(endian, bytes).map_err(|()| {
        LoaderError::CorruptElf("a PT_LOAD segment lies past the end of the file".into())
    })?;
    let mem_size: u64 = ph.p_memsz(endian).into();
    let addr: u64 = ph.p_paddr(endian).into();
    if (data.len() as u64) > mem_size {
        return Err(LoaderError::CorruptElf(format!(
            "segment at {addr:#x} has more file bytes ({:#x}) than memory size ({mem_size:#x})",
            data.len()
        )));
    }
    Ok((mem_size > 0).then(|| Segment {
        addr,
        data: data.to_vec(),
        mem_size,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_defaults() {
        let img = Image::from_bytes(vec![0xf4], FlatOptions::default()).unwrap();
        assert_eq!(img.entry, DEFAULT_LOAD);
        assert_eq!(img.mode, CpuMode::Real);
        assert_eq!(img.format, ImageFormat::Flat);
    }

    #[test]
    fn truncated_elf_is_corrupt_not_a_panic() {
        for n in 0..64 {
            let mut b = b"\x7fELF\x02\x01\x01".to_vec();
            b.resize(n.max(4), 0);
            assert!(Image::from_bytes(b, FlatOptions::default()).is_err());
        }
    }

    #[test]
    fn fits_checks_every_segment_and_the_entry() {
        let img = Image::flat(vec![0; 0x100], 0x1000, None, CpuMode::Real).unwrap();
        img.check_fits(0, 0x2000, "").unwrap();
        assert!(img.check_fits(0, 0x1080, "").is_err());
        let img = Image::flat(vec![0; 0x100], 0x1000, Some(0x5000), CpuMode::Real).unwrap();
        assert!(matches!(
            img.check_fits(0, 0x2000, ""),
            Err(LoaderError::EntryOutside { .. })
        ));
    }

    #[test]
    fn bzimage_is_recognised() {
        let mut b = vec![0u8; 0x400];
        b[0x1fe] = 0x55;
        b[0x1ff] = 0xaa;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(matches!(
            Image::from_bytes(b, FlatOptions::default()),
            Err(LoaderError::LinuxKernel)
        ));
    }
}
