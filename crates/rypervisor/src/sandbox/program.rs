//! The program: checking a static x86-64 ELF, loading it, and the Linux process start
//! (argv, envp and auxv on the stack, as the System V x86-64 ABI lays them out).
//!
//! Only static programs run: a dynamic one would need `ld.so` and shared libraries from the
//! host's file system, which the sandbox does not expose.

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

use super::layout::USER_BASE;
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
    /// The program asks for a dynamic loader.
    #[error("{name} is dynamically linked (interpreter {interp}): rebuild it static, e.g. `gcc -static` or `musl-gcc -static`")]
    Dynamic {
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
    /// Whether the program is position independent (static PIE).
    pub pie: bool,
}

fn corrupt(name: &str, why: impl Into<String>) -> ProgramError {
    ProgramError::Corrupt {
        name: name.to_string(),
        why: why.into(),
    }
}

impl Program {
    /// Checks `bytes` (named `name` in errors) as a static x86-64 program.
    pub fn parse(name: &str, bytes: Vec<u8>) -> Result<Self, ProgramError> {
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
        let header = elf::FileHeader64::<Endianness>::parse(&*bytes)
            .map_err(|e| corrupt(name, e.to_string()))?;
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
        let headers = header
            .program_headers(endian, &*bytes)
            .map_err(|e| corrupt(name, e.to_string()))?;
        if let Some(interp) = headers.iter().find(|p| p.p_type(endian) == elf::PT_INTERP) {
            let path = interp
                .data(endian, &*bytes)
                .ok()
                .map(|d| {
                    String::from_utf8_lossy(d)
                        .trim_end_matches('\0')
                        .to_string()
                })
                .unwrap_or_else(|| "?".into());
            return Err(ProgramError::Dynamic {
                name: name.into(),
                interp: path,
            });
        }
        let pie = kind == elf::ET_DYN;
        let loads: Vec<_> = headers
            .iter()
            .filter(|p| p.p_type(endian) == elf::PT_LOAD && p.p_memsz(endian) > 0)
            .collect();
        let first = loads
            .iter()
            .map(|p| p.p_vaddr(endian))
            .min()
            .ok_or_else(|| corrupt(name, "no loadable segments"))?;
        let bias = if pie {
            PIE_BASE.saturating_sub(first & !0xfff)
        } else {
            0
        };
        let mut segments = Vec::new();
        for p in &loads {
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
                .is_some_and(|end| end <= bytes.len() as u64);
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
            segments.push(Segment {
                addr,
                offset: offset as usize,
                file_size: filesz as usize,
                mem_size: memsz,
            });
        }
        let start = segments.iter().map(|s| s.addr).min().unwrap_or(0);
        let end = segments
            .iter()
            .map(|s| s.addr + s.mem_size)
            .max()
            .unwrap_or(0);
        let phoff = header.e_phoff(endian);
        let phdr = match headers.iter().find(|p| p.p_type(endian) == elf::PT_PHDR) {
            Some(p) => p.p_vaddr(endian).wrapping_add(bias),
            None => loads
                .iter()
                .find(|p| {
                    let o = p.p_offset(endian);
                    phoff >= o && phoff < o + p.p_filesz(endian)
                })
                .map(|p| p.p_vaddr(endian) + (phoff - p.p_offset(endian)) + bias)
                .unwrap_or(0),
        };
        Ok(Self {
            entry: header.e_entry(endian).wrapping_add(bias),
            bias,
            segments,
            phdr,
            phnum: headers.len() as u64,
            start,
            end,
            pie,
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

/// Auxiliary vector keys (`<elf.h>` AT_*).
pub mod at {
    /// End of the vector.
    pub const NULL: u64 = 0;
    /// Program headers.
    pub const PHDR: u64 = 3;
    /// Size of one program header.
    pub const PHENT: u64 = 4;
    /// Number of program headers.
    pub const PHNUM: u64 = 5;
    /// Page size.
    pub const PAGESZ: u64 = 6;
    /// Interpreter base (0: none).
    pub const BASE: u64 = 7;
    /// Flags.
    pub const FLAGS: u64 = 8;
    /// Program entry.
    pub const ENTRY: u64 = 9;
    /// Real uid.
    pub const UID: u64 = 11;
    /// Effective uid.
    pub const EUID: u64 = 12;
    /// Real gid.
    pub const GID: u64 = 13;
    /// Effective gid.
    pub const EGID: u64 = 14;
    /// Platform string.
    pub const PLATFORM: u64 = 15;
    /// CPUID.1:EDX.
    pub const HWCAP: u64 = 16;
    /// Clock ticks per second.
    pub const CLKTCK: u64 = 17;
    /// Secure mode (setuid).
    pub const SECURE: u64 = 23;
    /// 16 random bytes.
    pub const RANDOM: u64 = 25;
    /// More hardware capabilities.
    pub const HWCAP2: u64 = 26;
    /// File name of the program.
    pub const EXECFN: u64 = 31;
}

/// What the process start needs besides the program.
#[derive(Clone, Debug)]
pub struct StartInfo<'a> {
    /// argv (argv[0] first).
    pub args: &'a [String],
    /// envp entries (`NAME=value`).
    pub env: &'a [String],
    /// AT_HWCAP.
    pub hwcap: u64,
    /// AT_RANDOM's bytes.
    pub random: [u8; 16],
    /// The identity the program sees (AT_UID etc.).
    pub uid: u64,
}

/// Builds the initial stack below `top` (in `[bottom, top)`) and returns RSP, which points
/// at argc and is 16-byte aligned.
pub fn build_stack(
    ram: &GuestRam,
    program: &Program,
    info: &StartInfo<'_>,
    bottom: u64,
    top: u64,
) -> Result<u64, ProgramError> {
    // Strings and the random bytes first, at the top.
    let mut blob: Vec<u8> = Vec::new();
    let mut offsets = Vec::new();
    for s in info.args.iter().chain(info.env.iter()) {
        offsets.push(blob.len());
        blob.extend_from_slice(s.as_bytes());
        blob.push(0);
    }
    let platform = blob.len();
    blob.extend_from_slice(b"x86_64\0");
    let random = blob.len();
    blob.extend_from_slice(&info.random);
    let execfn = offsets.first().copied();

    let auxv: Vec<(u64, u64)> = vec![
        (at::PHDR, program.phdr),
        (at::PHENT, 56),
        (at::PHNUM, program.phnum),
        (at::PAGESZ, 4096),
        (at::BASE, 0),
        (at::FLAGS, 0),
        (at::ENTRY, program.entry),
        (at::UID, info.uid),
        (at::EUID, info.uid),
        (at::GID, info.uid),
        (at::EGID, info.uid),
        (at::SECURE, 0),
        (at::HWCAP, info.hwcap),
        (at::HWCAP2, 0),
        (at::CLKTCK, 100),
        (at::PLATFORM, 0), // patched below
        (at::RANDOM, 0),   // patched below
        (at::EXECFN, 0),   // patched below
        (at::NULL, 0),
    ];
    let words = 1 + info.args.len() + 1 + info.env.len() + 1 + auxv.len() * 2;
    let needed = blob.len() as u64 + 16 + words as u64 * 8 + 16;
    if needed > (top - bottom) / 2 {
        return Err(ProgramError::ArgsTooLong(needed as usize, top - bottom));
    }
    let blob_addr = (top - 16 - blob.len() as u64) & !0xf;
    ram.write(blob_addr, &blob)?;
    let rsp = (blob_addr - words as u64 * 8) & !0xf;
    let mut table: Vec<u64> = Vec::with_capacity(words);
    table.push(info.args.len() as u64);
    let mut strings = offsets.iter().map(|o| blob_addr + *o as u64);
    table.extend(strings.by_ref().take(info.args.len()));
    table.push(0);
    table.extend(strings);
    table.push(0);
    for (key, value) in auxv {
        let value = match key {
            at::PLATFORM => blob_addr + platform as u64,
            at::RANDOM => blob_addr + random as u64,
            at::EXECFN => execfn.map_or(0, |o| blob_addr + o as u64),
            _ => value,
        };
        table.push(key);
        table.push(value);
    }
    let bytes: Vec<u8> = table.iter().flat_map(|w| w.to_le_bytes()).collect();
    ram.write(rsp, &bytes)?;
    Ok(rsp)
}

#[cfg(test)]
mod tests {
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
        assert!(err(dynamic).contains("dynamically linked (interpreter /lib64/ld.so)"));
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
    fn the_stack_follows_the_abi() {
        let ram = GuestRam::new(0, 8 << 20).unwrap();
        let p = Program::parse("t", tiny_elf(elf::ET_EXEC, 0x40_1000, &[0xf4], None)).unwrap();
        p.check_fits("t", 6 << 20, 8 << 20).unwrap();
        p.load(&ram).unwrap();
        let args = vec!["prog".to_string(), "a b".to_string()];
        let env = vec!["K=V".to_string()];
        let info = StartInfo {
            args: &args,
            env: &env,
            hwcap: 0x1234,
            random: [7; 16],
            uid: 1000,
        };
        let rsp = build_stack(&ram, &p, &info, 7 << 20, 8 << 20).unwrap();
        assert_eq!(rsp % 16, 0);
        let word = |i: u64| ram.read_u64(rsp + i * 8).unwrap();
        let string = |addr: u64| {
            let mut b = vec![0u8; 16];
            ram.read(addr, &mut b).unwrap();
            String::from_utf8_lossy(&b[..b.iter().position(|c| *c == 0).unwrap()]).to_string()
        };
        assert_eq!(word(0), 2);
        assert_eq!(string(word(1)), "prog");
        assert_eq!(string(word(2)), "a b");
        assert_eq!(word(3), 0);
        assert_eq!(string(word(4)), "K=V");
        assert_eq!(word(5), 0);
        let mut aux = std::collections::BTreeMap::new();
        let mut i = 6;
        while word(i) != at::NULL {
            aux.insert(word(i), word(i + 1));
            i += 2;
        }
        assert_eq!(aux[&at::ENTRY], 0x40_1000);
        assert_eq!(aux[&at::PAGESZ], 4096);
        assert_eq!(aux[&at::HWCAP], 0x1234);
        assert_eq!(string(aux[&at::EXECFN]), "prog");
        assert_eq!(string(aux[&at::PLATFORM]), "x86_64");
        let mut random = [0u8; 16];
        ram.read(aux[&at::RANDOM], &mut random).unwrap();
        assert_eq!(random, [7; 16]);

        let too_far =
            Program::parse("t", tiny_elf(elf::ET_EXEC, 0x80_0000, &[0xf4], None)).unwrap();
        assert!(too_far
            .check_fits("t", 6 << 20, 8 << 20)
            .unwrap_err()
            .to_string()
            .contains("--mem"));
        let huge = vec!["x".repeat(1 << 20)];
        let info = StartInfo {
            args: &huge,
            ..info
        };
        assert!(matches!(
            build_stack(&ram, &p, &info, 7 << 20, 8 << 20),
            Err(ProgramError::ArgsTooLong(..))
        ));
    }
}
