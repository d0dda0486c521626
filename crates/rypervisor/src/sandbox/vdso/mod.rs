//! The sandbox's vDSO: a small ELF shared object, mapped read-only and executable at a fixed
//! address in the VMM's low 2 MiB and named by `AT_SYSINFO_EHDR`, so C libraries read the
//! clocks without a VM exit (glibc and musl look it up at start-up, static programs too).
//!
//! It exports what the kernel's x86-64 vDSO does — `__vdso_clock_gettime`,
//! `__vdso_gettimeofday`, `__vdso_time`, `__vdso_clock_getres`, `__vdso_getcpu`, each also
//! under its plain name as a weak alias — all at version `LINUX_2.6`, as the kernel's are
//! (Go's runtime insists on the version table; glibc and musl check it). The functions are
//! assembled by
//! [`code`]; the time page they read is [`clock`]. The object is laid out by the `object`
//! crate's ELF writer, linked at the address it is mapped at (so its load bias is 0 and a
//! loader never needs to relocate or write it): one `PT_LOAD`, a `PT_DYNAMIC` with `DT_HASH`,
//! `DT_SYMTAB`, `DT_STRTAB`, `DT_VERSYM`, `DT_VERDEF` and `DT_SONAME`, and section headers
//! for tools.
//!
//! The image is the project's own, generated when a sandbox is built; the tests read it back
//! with `object`'s reader and run its functions in real guests.

pub mod clock;
pub mod code;

use object::elf;
use object::write::elf::{FileHeader, ProgramHeader, SectionHeader, Sym, Verdef, Writer};
use object::Endianness;

/// Guest address of the time page (user read-only).
pub const VVAR: u64 = 0x11000;
/// Guest address of the vDSO image (user read + execute).
pub const VDSO_BASE: u64 = 0x12000;
/// Room for the image: two pages.
pub const VDSO_MAX: u64 = 0x2000;

/// Errors building the image.
#[derive(Debug, thiserror::Error)]
pub enum VdsoError {
    /// The assembler refused the code.
    #[error("assembling the vDSO: {0}")]
    Assemble(#[from] iced_x86::IcedError),
    /// The ELF writer refused the image.
    #[error("writing the vDSO image: {0}")]
    Write(#[from] object::write::Error),
    /// The image outgrew its pages.
    #[error("the vDSO image is {0} bytes, more than its {VDSO_MAX}")]
    TooLarge(usize),
}

/// The names exported for a function: `__vdso_X` (global) and `X` (weak).
fn exported(functions: &[code::Function]) -> Vec<(&'static str, u8, &code::Function)> {
    let mut out = Vec::new();
    for f in functions {
        out.push((f.name, elf::STB_GLOBAL, f));
        out.push((f.name.trim_start_matches("__vdso_"), elf::STB_WEAK, f));
    }
    out
}

/// The image for [`VDSO_BASE`], reading the time page at [`VVAR`]: the same for every
/// sandbox, so built once per process.
pub fn image() -> Result<&'static [u8], VdsoError> {
    static IMAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    if let Some(image) = IMAGE.get() {
        return Ok(image);
    }
    let built = build()?;
    Ok(IMAGE.get_or_init(|| built))
}

/// Builds the image.
fn build() -> Result<Vec<u8>, VdsoError> {
    // The code's size does not depend on where it is: assemble once to lay out, then at
    // its address.
    let (probe, probe_functions) = code::assemble(VDSO_BASE, VVAR)?;
    let mut out = Vec::new();
    let mut w = Writer::new(Endianness::Little, true, &mut out);
    w.reserve_file_header();
    w.reserve_program_headers(2);
    let soname = w.add_dynamic_string(b"linux-vdso.so.1");
    let version = w.add_dynamic_string(b"LINUX_2.6");
    let symbols = exported(&probe_functions);
    let names: Vec<_> = (symbols.iter())
        .map(|(name, _, _)| w.add_dynamic_string(name.as_bytes()))
        .collect();
    w.reserve_null_dynamic_symbol_index();
    for _ in &symbols {
        w.reserve_dynamic_symbol_index();
    }
    w.reserve_null_section_index();
    let text_name = w.add_section_name(b".text");
    w.reserve_hash_section_index();
    w.reserve_dynsym_section_index();
    w.reserve_gnu_versym_section_index();
    w.reserve_gnu_verdef_section_index();
    w.reserve_dynstr_section_index();
    let text_index = w.reserve_section_index();
    w.reserve_dynamic_section_index();
    w.reserve_shstrtab_section_index();

    let chain_count = w.dynamic_symbol_count();
    let bucket_count = chain_count;
    let hash_off = w.reserve_hash(bucket_count, chain_count) as u64;
    let dynsym_off = w.reserve_dynsym() as u64;
    let versym_off = w.reserve_gnu_versym() as u64;
    let verdef_off = w.reserve_gnu_verdef(2, 2) as u64;
    let dynstr_off = w.reserve_dynstr() as u64;
    let text_off = w.reserve(probe.len(), 16) as u64;
    const DYNAMIC: usize = 10;
    let dynamic_off = w.reserve_dynamic(DYNAMIC) as u64;
    w.reserve_shstrtab();
    w.reserve_section_headers();
    let total = w.reserved_len() as u64;
    let at = |offset: u64| VDSO_BASE + offset;

    // The code, assembled where it lands.
    let (code, functions) = code::assemble(at(text_off), VVAR)?;
    debug_assert_eq!(code.len(), probe.len());
    let symbols = exported(&functions);

    w.write_file_header(&FileHeader {
        os_abi: elf::ELFOSABI_SYSV,
        abi_version: 0,
        e_type: elf::ET_DYN,
        e_machine: elf::EM_X86_64,
        e_entry: 0,
        e_flags: 0,
    })?;
    w.write_align_program_headers();
    w.write_program_header(&ProgramHeader {
        p_type: elf::PT_LOAD,
        p_flags: elf::PF_R | elf::PF_X,
        p_offset: 0,
        p_vaddr: VDSO_BASE,
        p_paddr: VDSO_BASE,
        p_filesz: total,
        p_memsz: total,
        p_align: 0x1000,
    });
    let dynamic_size = (DYNAMIC * std::mem::size_of::<elf::Dyn64<Endianness>>()) as u64;
    w.write_program_header(&ProgramHeader {
        p_type: elf::PT_DYNAMIC,
        p_flags: elf::PF_R,
        p_offset: dynamic_off,
        p_vaddr: at(dynamic_off),
        p_paddr: at(dynamic_off),
        p_filesz: dynamic_size,
        p_memsz: dynamic_size,
        p_align: 8,
    });
    let hashes: Vec<u32> = (symbols.iter())
        .map(|(name, _, _)| elf::hash(name.as_bytes()))
        .collect();
    // Symbol 0 is the null symbol, outside the hash.
    w.write_hash(bucket_count, chain_count, |i| {
        (i > 0).then(|| hashes[i as usize - 1])
    });
    w.write_null_dynamic_symbol();
    for ((_, bind, f), name) in symbols.iter().zip(&names) {
        w.write_dynamic_symbol(&Sym {
            name: Some(*name),
            section: Some(text_index),
            st_info: (bind << 4) | elf::STT_FUNC,
            st_other: elf::STV_DEFAULT,
            st_shndx: 0,
            st_value: at(text_off) + f.offset,
            st_size: f.size,
        });
    }
    // Versions: 1 is the object itself, 2 is LINUX_2.6, which every symbol has.
    w.write_null_gnu_versym();
    for _ in &symbols {
        w.write_gnu_versym(2);
    }
    w.write_align_gnu_verdef();
    w.write_gnu_verdef(&Verdef {
        version: elf::VER_DEF_CURRENT,
        flags: elf::VER_FLG_BASE,
        index: 1,
        aux_count: 1,
        name: soname,
    });
    w.write_gnu_verdef(&Verdef {
        version: elf::VER_DEF_CURRENT,
        flags: 0,
        index: 2,
        aux_count: 1,
        name: version,
    });
    w.write_dynstr();
    w.write_align(16);
    w.write(&code);
    w.write_align_dynamic();
    w.write_dynamic(elf::DT_HASH, at(hash_off));
    w.write_dynamic(elf::DT_STRTAB, at(dynstr_off));
    w.write_dynamic(elf::DT_SYMTAB, at(dynsym_off));
    let strsz = w.dynstr_len() as u64;
    w.write_dynamic(elf::DT_STRSZ, strsz);
    w.write_dynamic(
        elf::DT_SYMENT,
        std::mem::size_of::<elf::Sym64<Endianness>>() as u64,
    );
    w.write_dynamic(elf::DT_VERSYM, at(versym_off));
    w.write_dynamic(elf::DT_VERDEF, at(verdef_off));
    w.write_dynamic(elf::DT_VERDEFNUM, 2);
    w.write_dynamic_string(elf::DT_SONAME, soname);
    w.write_dynamic(elf::DT_NULL, 0);
    w.write_shstrtab();
    w.write_null_section_header();
    w.write_hash_section_header(at(hash_off));
    w.write_dynsym_section_header(at(dynsym_off), 1);
    w.write_gnu_versym_section_header(at(versym_off));
    w.write_gnu_verdef_section_header(at(verdef_off));
    w.write_dynstr_section_header(at(dynstr_off));
    w.write_section_header(&SectionHeader {
        name: Some(text_name),
        sh_type: elf::SHT_PROGBITS,
        sh_flags: u64::from(elf::SHF_ALLOC | elf::SHF_EXECINSTR),
        sh_addr: at(text_off),
        sh_offset: text_off,
        sh_size: code.len() as u64,
        sh_link: 0,
        sh_info: 0,
        sh_addralign: 16,
        sh_entsize: 0,
    });
    w.write_dynamic_section_header(at(dynamic_off));
    w.write_shstrtab_section_header();
    if out.len() as u64 > VDSO_MAX {
        return Err(VdsoError::TooLarge(out.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSymbol};

    #[test]
    fn the_image_is_a_shared_object_exporting_the_kernel_s_names() {
        let bytes = image().unwrap();
        let file = object::File::parse(bytes).unwrap();
        assert_eq!(file.kind(), object::ObjectKind::Dynamic);
        let mut names: Vec<(String, u64)> = file
            .dynamic_symbols()
            .map(|s| (s.name().unwrap().to_string(), s.address()))
            .collect();
        names.sort();
        let lookup = |n: &str| names.iter().find(|(name, _)| name == n).map(|s| s.1);
        for f in [
            "clock_gettime",
            "gettimeofday",
            "time",
            "clock_getres",
            "getcpu",
        ] {
            let vdso = lookup(&format!("__vdso_{f}")).unwrap_or_else(|| panic!("{f}"));
            assert_eq!(lookup(f), Some(vdso), "{f}: the alias is the same code");
            assert!((VDSO_BASE..VDSO_BASE + bytes.len() as u64).contains(&vdso));
        }
        // Each symbol's first instruction decodes, inside the image.
        let at = lookup("__vdso_getcpu").unwrap() - VDSO_BASE;
        let mut d = iced_x86::Decoder::with_ip(64, &bytes[at as usize..], 0, 0);
        assert_eq!(d.decode().mnemonic(), iced_x86::Mnemonic::Test);
        // The SysV hash finds every name (what musl and glibc use).
        let hash = elf_hash_lookup(bytes, "__vdso_clock_gettime");
        assert_eq!(hash, lookup("__vdso_clock_gettime"));
        assert!(bytes.len() as u64 <= VDSO_MAX);
        // Every symbol at LINUX_2.6 (Go's runtime, glibc and musl match on it).
        let versions: Vec<String> = (file.dynamic_symbols())
            .map(|s| format!("{:?}", s.name()))
            .collect();
        assert_eq!(versions.len(), 10);
        assert!(bytes.windows(9).any(|w| w == b"LINUX_2.6"));
    }

    /// A DT_HASH lookup done the way a loader does it, on the raw image.
    fn elf_hash_lookup(bytes: &[u8], name: &str) -> Option<u64> {
        use object::read::elf::{Dyn as _, FileHeader as _, ProgramHeader as _};
        let header = elf::FileHeader64::<Endianness>::parse(bytes).unwrap();
        let e = header.endian().unwrap();
        let dynamic = header
            .program_headers(e, bytes)
            .unwrap()
            .iter()
            .find(|p| p.p_type(e) == elf::PT_DYNAMIC)
            .unwrap()
            .dynamic(e, bytes)
            .unwrap()
            .unwrap();
        let find = |tag: u32| {
            dynamic
                .iter()
                .find(|d| d.d_tag(e) == u64::from(tag))
                .map(|d| (d.d_val(e) - VDSO_BASE) as usize)
                .unwrap()
        };
        let (hash, strtab, symtab) = (
            find(elf::DT_HASH),
            find(elf::DT_STRTAB),
            find(elf::DT_SYMTAB),
        );
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let nbucket = word(hash);
        let mut i = word(hash + 8 + 4 * (elf::hash(name.as_bytes()) as usize % nbucket));
        while i != 0 {
            let sym = symtab + 24 * i;
            let name_at = strtab + word(sym);
            let end = bytes[name_at..].iter().position(|&b| b == 0).unwrap();
            if &bytes[name_at..name_at + end] == name.as_bytes() {
                return Some(u64::from_le_bytes(
                    bytes[sym + 8..sym + 16].try_into().unwrap(),
                ));
            }
            i = word(hash + 8 + 4 * nbucket + 4 * i);
        }
        None
    }
}
