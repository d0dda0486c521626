//! The program: checking an x86-64 ELF and loading it — a static program or static PIE
//! alone; a dynamically linked one together with its interpreter (`PT_INTERP`, `ld.so`),
//! loaded as the kernel does: the program at its base, the interpreter at the top of the
//! mapping area, and the interpreter started with `AT_BASE` and `AT_ENTRY` telling it where
//! both are. The interpreter then opens and maps the shared libraries itself, through the
//! system calls the policy serves (`openat`, `mmap` of allowed files). The process start (the
//! stack with argv, envp and auxv) is the Linux ABI's, in `linux/start.rs`.

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

use super::layout::{self, USER_BASE};
use crate::memory::{human_size, GuestRam, MemoryError};

/// Where a static-PIE program is loaded (the usual non-PIE base).
pub const PIE_BASE: u64 = 0x40_0000;

/// Errors about the program file.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// The file starts with `#!`.
    #[error("{0} is a script ('#!' line): the sandbox runs static x86-64 ELF programs only")]
    Script(String),
    /// The file is not ELF at all.
    #[error("{0} is not an ELF program (no \\x7fELF header): the sandbox runs static x86-64 ELF programs")]
    NotElf(String),
    /// A 32-bit ELF.
    #[error("{0} is a 32-bit ELF: the sandbox runs 64-bit (x86-64) programs only")]
    Elf32(String),
    /// An ELF for another CPU.
    #[error("{name} is an ELF for machine {machine}, not x86-64")]
    WrongMachine {
        /// The file.
        name: String,
        /// The e_machine description.
        machine: String,
    },
    /// Neither an executable nor a static PIE.
    #[error("{name} is an ELF of type {kind} (not an executable): the sandbox runs programs, not objects or libraries")]
    NotExecutable {
        /// The file.
        name: String,
        /// e_type.
        kind: u16,
    },
    /// The program's interpreter lies outside the files the policy lets it read.
    #[error("{name} is dynamically linked: its interpreter {interp} is not under an --allow-read root; add --allow-read {dir} (its shared libraries must be readable too: --allow-read /usr covers Debian's), or rebuild it static (`gcc -static`)")]
    InterpreterNotAllowed {
        /// The file.
        name: String,
        /// The PT_INTERP path.
        interp: String,
        /// The directory that holds it (resolved).
        dir: String,
    },
    /// The interpreter is itself dynamic, or not a shared object.
    #[error("{name}: its interpreter {interp} is not a shared object the sandbox can start (it has an interpreter of its own or is not position independent)")]
    BadInterpreter {
        /// The file.
        name: String,
        /// The PT_INTERP path.
        interp: String,
    },
    /// The ELF structure is broken.
    #[error("{name} is a corrupt ELF: {why}")]
    Corrupt {
        /// The file.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// A segment does not fit in the sandbox's memory.
    #[error("{name} does not fit: segment at {start:#x}..{end:#x}, but program memory is {lo:#x}..{hi:#x} (--mem {}); {hint}", human_size(*hi))]
    DoesNotFit {
        /// The file.
        name: String,
        /// Segment start.
        start: u64,
        /// Segment end.
        end: u64,
        /// First program address.
        lo: u64,
        /// End of memory.
        hi: u64,
        /// What to change.
        hint: &'static str,
    },
    /// Arguments and environment do not fit on the stack.
    #[error("arguments and environment ({} bytes) do not fit on the {} stack", .0, human_size(*.1))]
    ArgsTooLong(usize, u64),
    /// Writing guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// One loadable segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest address (after relocation).
    pub addr: u64,
    /// Offset of its bytes in the file.
    pub offset: usize,
    /// Bytes from the file.
    pub file_size: usize,
    /// Bytes in memory (the rest is zero: .bss).
    pub mem_size: u64,
}

/// A checked static program.
#[derive(Clone, Debug)]
pub struct Program {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// Entry point (after relocation).
    pub entry: u64,
    /// Load bias (0 for a non-PIE executable).
    pub bias: u64,
    /// Loadable segments.
    pub segments: Vec<Segment>,
    /// Address of the program headers in memory (AT_PHDR).
    pub phdr: u64,
    /// Number of program headers (AT_PHNUM).
    pub phnum: u64,
    /// Lowest loaded address.
    pub start: u64,
    /// One past the highest loaded address.
    pub end: u64,
    /// Whether the program is position independent (PIE).
    pub pie: bool,
    /// The interpreter it asks for (`PT_INTERP`), if it is dynamically linked.
    pub interp: Option<String>,
}

fn corrupt(name: &str, why: impl Into<String>) -> ProgramError {
    ProgramError::Corrupt {
        name: name.to_string(),
        why: why.into(),
    }
}

/// The ELF header, if `bytes` is a little-endian x86-64 executable or static PIE.
fn elf_header<'a>(
    name: &str,
    bytes: &'a [u8],
) -> Result<&'a elf::FileHeader64<Endianness>, ProgramError> {
    if bytes.starts_with(b"#!") {
        return Err(ProgramError::Script(name.into()));
    }
    if !bytes.starts_with(b"\x7fELF") {
        return Err(ProgramError::NotElf(name.into()));
    }
    match bytes.get(4) {
        Some(&elf::ELFCLASS32) => return Err(ProgramError::Elf32(name.into())),
        Some(&elf::ELFCLASS64) => {}
        _ => return Err(corrupt(name, "unknown ELF class")),
    }
    let header =
        elf::FileHeader64::<Endianness>::parse(bytes).map_err(|e| corrupt(name, e.to_string()))?;
    let endian = header.endian().map_err(|e| corrupt(name, e.to_string()))?;
    if endian != Endianness::Little {
        return Err(corrupt(name, "big-endian ELF"));
    }
    let machine = header.e_machine(endian);
    if machine != elf::EM_X86_64 {
        return Err(ProgramError::WrongMachine {
            name: name.into(),
            machine: crate::loader::machine_name(machine),
        });
    }
    let kind = header.e_type(endian);
    if kind != elf::ET_EXEC && kind != elf::ET_DYN {
        return Err(ProgramError::NotExecutable {
            name: name.into(),
            kind,
        });
    }
    Ok(header)
}

/// One PT_LOAD, checked against the file and relocated by `bias`.
fn segment(
    name: &str,
    p: &elf::ProgramHeader64<Endianness>,
    bias: u64,
    file_len: usize,
) -> Result<Segment, ProgramError> {
    let endian = Endianness::Little;
    let (vaddr, memsz) = (p.p_vaddr(endian), p.p_memsz(endian));
    let (offset, filesz) = (p.p_offset(endian), p.p_filesz(endian));
    if filesz > memsz {
        return Err(corrupt(
            name,
            "segment with more file bytes than memory bytes",
        ));
    }
    let in_file = offset
        .checked_add(filesz)
        .is_some_and(|end| end <= file_len as u64);
    if !in_file {
        return Err(corrupt(
            name,
            "segment extends past the end of the file (truncated?)",
        ));
    }
    let addr = vaddr
        .checked_add(bias)
        .filter(|a| a.checked_add(memsz).is_some())
        .ok_or_else(|| corrupt(name, "segment address overflows"))?;
    Ok(Segment {
        addr,
        offset: offset as usize,
        file_size: filesz as usize,
        mem_size: memsz,
    })
}

/// Where the program headers are in memory (AT_PHDR): PT_PHDR, or the load that holds them.
fn phdr_address(
    phoff: u64,
    headers: &[elf::ProgramHeader64<Endianness>],
    loads: &[&elf::ProgramHeader64<Endianness>],
    bias: u64,
) -> u64 {
    let endian = Endianness::Little;
    if let Some(p) = headers.iter().find(|p| p.p_type(endian) == elf::PT_PHDR) {
        return p.p_vaddr(endian).wrapping_add(bias);
    }
    loads
        .iter()
        .find(|p| {
            let o = p.p_offset(endian);
            phoff >= o && phoff < o + p.p_filesz(endian)
        })
        .map(|p| p.p_vaddr(endian) + (phoff - p.p_offset(endian)) + bias)
        .unwrap_or(0)
}

impl Program {
    /// Checks `bytes` (named `name` in errors) as an x86-64 program; a PIE is placed at
    /// [`PIE_BASE`].
    pub fn parse(name: &str, bytes: Vec<u8>) -> Result<Self, ProgramError> {
        Self::parse_at(name, bytes, PIE_BASE)
    }

    /// Checks `bytes` as the interpreter `interp` of program `name`, placed so that it ends
    /// at or below `top` (2 MiB aligned, as a large page of the sandbox's memory).
    pub fn interpreter(
        name: &str,
        interp: &str,
        bytes: Vec<u8>,
        top: u64,
    ) -> Result<Self, ProgramError> {
        let bad = || ProgramError::BadInterpreter {
            name: name.into(),
            interp: interp.into(),
        };
        let probe = Self::parse_at(interp, bytes, 0)?;
        if probe.interp.is_some() || !probe.pie {
            return Err(bad());
        }
        let span = (probe.end - probe.start)
            .checked_next_multiple_of(layout::MEM_ALIGN)
            .ok_or_else(bad)?;
        let base = top.checked_sub(span).ok_or_else(bad)? & !(layout::MEM_ALIGN - 1);
        Self::parse_at(interp, probe.bytes, base)
    }

    fn parse_at(name: &str, bytes: Vec<u8>, pie_base: u64) -> Result<Self, ProgramError> {
        let header = elf_header(name, &bytes)?;
        let endian = Endianness::Little;
        let kind = header.e_type(endian);
        let headers = header
            .program_headers(endian, &*bytes)
            .map_err(|e| corrupt(name, e.to_string()))?;
        let interp = match headers.iter().find(|p| p.p_type(endian) == elf::PT_INTERP) {
            Some(p) => {
                let data = (p.data(endian, &*bytes)).map_err(|_| corrupt(name, "bad PT_INTERP"))?;
                let path = std::str::from_utf8(data)
                    .ok()
                    .map(|t| t.trim_end_matches('\0'))
                    .filter(|t| !t.is_empty() && !t.contains('\0'))
                    .ok_or_else(|| corrupt(name, "PT_INTERP is not a path"))?;
                Some(path.to_string())
            }
            None => None,
        };
        let pie = kind == elf::ET_DYN;
        let loads: Vec<&elf::ProgramHeader64<Endianness>> = headers
            .iter()
            .filter(|p| p.p_type(endian) == elf::PT_LOAD && p.p_memsz(endian) > 0)
            .collect();
        let first = loads
            .iter()
            .map(|p| p.p_vaddr(endian))
            .min()
            .ok_or_else(|| corrupt(name, "no loadable segments"))?;
        let bias = if pie {
            pie_base.saturating_sub(first & !0xfff)
        } else {
            0
        };
        let segments = loads
            .iter()
            .map(|p| segment(name, p, bias, bytes.len()))
            .collect::<Result<Vec<_>, _>>()?;
        let start = segments.iter().map(|s| s.addr).min().unwrap_or(0);
        let end = segments
            .iter()
            .map(|s| s.addr + s.mem_size)
            .max()
            .unwrap_or(0);
        Ok(Self {
            entry: header.e_entry(endian).wrapping_add(bias),
            bias,
            segments,
            phdr: phdr_address(header.e_phoff(endian), headers, &loads, bias),
            phnum: headers.len() as u64,
            start,
            end,
            pie,
            interp,
            bytes,
        })
    }

    /// Checks that every segment lies in program memory `[USER_BASE, limit)`.
    pub fn check_fits(&self, name: &str, limit: u64, mem: u64) -> Result<(), ProgramError> {
        for s in &self.segments {
            let end = s.addr + s.mem_size;
            if s.addr < USER_BASE || end > limit {
                return Err(ProgramError::DoesNotFit {
                    name: name.into(),
                    start: s.addr,
                    end,
                    lo: USER_BASE,
                    hi: mem,
                    hint: if s.addr < USER_BASE {
                        "link it at 0x400000 or above (the default) or as a static PIE"
                    } else {
                        "give the sandbox more memory with --mem"
                    },
                });
            }
        }
        Ok(())
    }

    /// Copies the segments into guest memory and zeroes their .bss.
    pub fn load(&self, ram: &GuestRam) -> Result<(), ProgramError> {
        for s in &self.segments {
            ram.write(s.addr, &self.bytes[s.offset..s.offset + s.file_size])?;
            ram.zero(s.addr + s.file_size as u64, s.mem_size - s.file_size as u64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use object::write::elf::{FileHeader as WFileHeader, ProgramHeader as WProgramHeader, Writer};

    /// A minimal ELF64 with one PT_LOAD (and optionally a PT_INTERP).
    pub(crate) fn tiny_elf(kind: u16, vaddr: u64, code: &[u8], interp: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer::new(Endianness::Little, true, &mut out);
        w.reserve_file_header();
        let nph = 1 + u32::from(interp.is_some());
        w.reserve_program_headers(nph);
        let interp_off = interp.map(|i| w.reserve(i.len(), 1));
        let code_off = w.reserve(code.len(), 16);
        w.write_file_header(&WFileHeader {
            os_abi: 0,
            abi_version: 0,
            e_type: kind,
            e_machine: elf::EM_X86_64,
            e_entry: vaddr,
            e_flags: 0,
        })
        .unwrap();
        w.write_align_program_headers();
        if let (Some(i), Some(off)) = (interp, interp_off) {
            w.write_program_header(&WProgramHeader {
                p_type: elf::PT_INTERP,
                p_flags: elf::PF_R,
                p_offset: off as u64,
                p_vaddr: 0,
                p_paddr: 0,
                p_filesz: i.len() as u64,
                p_memsz: i.len() as u64,
                p_align: 1,
            });
        }
        w.write_program_header(&WProgramHeader {
            p_type: elf::PT_LOAD,
            p_flags: elf::PF_R | elf::PF_X,
            p_offset: code_off as u64,
            p_vaddr: vaddr,
            p_paddr: vaddr,
            p_filesz: code.len() as u64,
            p_memsz: code.len() as u64 + 0x100,
            p_align: 0x1000,
        });
        if let Some(i) = interp {
            w.write(i);
        }
        w.write_align(16);
        w.write(code);
        out
    }

    #[test]
    fn static_programs_parse_and_others_are_named() {
        let p = Program::parse("t", tiny_elf(elf::ET_EXEC, 0x40_1000, &[0xf4], None)).unwrap();
        assert_eq!((p.entry, p.bias, p.pie), (0x40_1000, 0, false));
        assert_eq!(p.end, 0x40_1000 + 0x101);
        let pie = Program::parse("t", tiny_elf(elf::ET_DYN, 0x1000, &[0xf4], None)).unwrap();
        assert_eq!(
            (pie.entry, pie.pie),
            (PIE_BASE, true),
            "first segment at PIE_BASE"
        );

        let err = |bytes: Vec<u8>| Program::parse("prog", bytes).unwrap_err().to_string();
        assert!(err(b"#!/bin/sh\n".to_vec()).contains("script"));
        assert!(err(b"hello".to_vec()).contains("not an ELF"));
        let dynamic = tiny_elf(elf::ET_EXEC, 0x40_1000, &[0xf4], Some(b"/lib64/ld.so\0"));
        let dynamic = Program::parse("t", dynamic).unwrap();
        assert_eq!(dynamic.interp.as_deref(), Some("/lib64/ld.so"));
        assert!(err(tiny_elf(elf::ET_EXEC, 0x40_1000, &[0xf4], Some(b"\0"))).contains("PT_INTERP"));
        let mut i386 = tiny_elf(elf::ET_EXEC, 0x40_1000, &[0xf4], None);
        i386[4] = elf::ELFCLASS32;
        assert!(err(i386).contains("32-bit"));
        let mut arm = tiny_elf(elf::ET_EXEC, 0x40_1000, &[0xf4], None);
        arm[18] = elf::EM_AARCH64 as u8;
        assert!(err(arm).contains("not x86-64"));
        let mut obj = tiny_elf(elf::ET_EXEC, 0x40_1000, &[0xf4], None);
        obj[16] = elf::ET_REL as u8;
        assert!(err(obj).contains("not an executable"));
        let whole = tiny_elf(elf::ET_EXEC, 0x40_1000, &[0x90; 64], None);
        assert!(err(whole[..whole.len() - 10].to_vec()).contains("corrupt"));
    }

    #[test]
    fn an_interpreter_is_placed_below_the_top_and_must_be_a_plain_shared_object() {
        let ld = tiny_elf(elf::ET_DYN, 0, &[0xf4; 0x3000], None);
        let top = 60 << 20;
        let i = Program::interpreter("p", "/ld.so", ld, top).unwrap();
        assert_eq!(i.start, top - (2 << 20));
        assert!(i.end <= top && i.entry == i.start);
        let exec = tiny_elf(elf::ET_EXEC, 0x40_1000, &[0xf4], None);
        let e = Program::interpreter("p", "/ld.so", exec, top).unwrap_err();
        assert!(e.to_string().contains("not a shared object"), "{e}");
        let chained = tiny_elf(elf::ET_DYN, 0, &[0xf4], Some(b"/other\0"));
        assert!(Program::interpreter("p", "/ld.so", chained, top).is_err());
    }

    #[test]
    fn programs_must_fit_in_program_memory() {
        let too_far =
            Program::parse("t", tiny_elf(elf::ET_EXEC, 0x80_0000, &[0xf4], None)).unwrap();
        let err = too_far.check_fits("t", 6 << 20, 8 << 20).unwrap_err();
        assert!(err.to_string().contains("--mem"), "{err}");
        let low = Program::parse("t", tiny_elf(elf::ET_EXEC, 0x1000, &[0xf4], None)).unwrap();
        let err = low.check_fits("t", 6 << 20, 8 << 20).unwrap_err();
        assert!(err.to_string().contains("0x400000"), "{err}");
    }
}
