//! The Linux process start: the initial stack with argc, argv, envp and the auxiliary vector,
//! as the System V x86-64 ABI lays them out, for the program's entry point.

use crate::memory::GuestRam;
use crate::sandbox::program::{Program, ProgramError};

/// Auxiliary vector keys (`<elf.h>` AT_*), as `libc` has them.
pub mod at {
    /// End of the vector.
    pub const NULL: u64 = libc::AT_NULL;
    /// Program headers.
    pub const PHDR: u64 = libc::AT_PHDR;
    /// Size of one program header.
    pub const PHENT: u64 = libc::AT_PHENT;
    /// Number of program headers.
    pub const PHNUM: u64 = libc::AT_PHNUM;
    /// Page size.
    pub const PAGESZ: u64 = libc::AT_PAGESZ;
    /// Interpreter base (0: none).
    pub const BASE: u64 = libc::AT_BASE;
    /// Flags.
    pub const FLAGS: u64 = libc::AT_FLAGS;
    /// Program entry.
    pub const ENTRY: u64 = libc::AT_ENTRY;
    /// Real uid.
    pub const UID: u64 = libc::AT_UID;
    /// Effective uid.
    pub const EUID: u64 = libc::AT_EUID;
    /// Real gid.
    pub const GID: u64 = libc::AT_GID;
    /// Effective gid.
    pub const EGID: u64 = libc::AT_EGID;
    /// Platform string.
    pub const PLATFORM: u64 = libc::AT_PLATFORM;
    /// CPUID.1:EDX.
    pub const HWCAP: u64 = libc::AT_HWCAP;
    /// Clock ticks per second.
    pub const CLKTCK: u64 = libc::AT_CLKTCK;
    /// Secure mode (setuid).
    pub const SECURE: u64 = libc::AT_SECURE;
    /// 16 random bytes.
    pub const RANDOM: u64 = libc::AT_RANDOM;
    /// More hardware capabilities.
    pub const HWCAP2: u64 = libc::AT_HWCAP2;
    /// File name of the program.
    pub const EXECFN: u64 = libc::AT_EXECFN;
    /// The vDSO's ELF header.
    pub const SYSINFO_EHDR: u64 = libc::AT_SYSINFO_EHDR;
}

/// What the process start needs besides the program.
#[derive(Clone, Debug)]
pub struct StartInfo<'a> {
    /// argv (`argv[0]` first).
    pub args: &'a [Vec<u8>],
    /// envp entries (`NAME=value`).
    pub env: &'a [Vec<u8>],
    /// AT_EXECFN's string: the path `execve` was given (`None`: `argv[0]`).
    pub execfn: Option<&'a [u8]>,
    /// AT_HWCAP.
    pub hwcap: u64,
    /// AT_RANDOM's bytes.
    pub random: [u8; 16],
    /// The identity the program sees (AT_UID etc.).
    pub uid: u64,
    /// AT_SYSINFO_EHDR: where the vDSO is (0: none).
    pub vdso: u64,
    /// AT_BASE: where the interpreter is (0: a static program).
    pub interp_base: u64,
}

/// The strings at the top of the stack: argv and envp, the platform name, AT_RANDOM's
/// bytes; with where each starts.
struct Strings {
    blob: Vec<u8>,
    /// Offsets of argv then envp strings.
    offsets: Vec<usize>,
    platform: usize,
    random: usize,
    execfn: Option<usize>,
}

impl Strings {
    fn new(info: &StartInfo<'_>) -> Self {
        let mut blob: Vec<u8> = Vec::new();
        let mut offsets = Vec::new();
        for s in info.args.iter().chain(info.env.iter()) {
            offsets.push(blob.len());
            blob.extend_from_slice(s);
            blob.push(0);
        }
        let execfn = match info.execfn {
            Some(path) => {
                let at = blob.len();
                blob.extend_from_slice(path);
                blob.push(0);
                Some(at)
            }
            None => offsets.first().copied(),
        };
        let platform = blob.len();
        blob.extend_from_slice(b"x86_64\0");
        let random = blob.len();
        blob.extend_from_slice(&info.random);
        Self {
            blob,
            offsets,
            platform,
            random,
            execfn,
        }
    }
}

/// The auxiliary vector, with the strings placed at `strings`.
fn auxv(program: &Program, info: &StartInfo<'_>, s: &Strings, strings: u64) -> Vec<(u64, u64)> {
    let execfn = s.execfn.map_or(0, |o| strings + o as u64);
    let mut auxv = vec![
        (at::PHDR, program.phdr),
        (
            at::PHENT,
            std::mem::size_of::<object::elf::ProgramHeader64<object::Endianness>>() as u64,
        ),
        (at::PHNUM, program.phnum),
        (at::PAGESZ, 4096),
        (at::BASE, info.interp_base),
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
        (at::PLATFORM, strings + s.platform as u64),
        (at::RANDOM, strings + s.random as u64),
        (at::EXECFN, execfn),
    ];
    if info.vdso != 0 {
        auxv.push((at::SYSINFO_EHDR, info.vdso));
    }
    auxv.push((at::NULL, 0));
    auxv
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
    let s = Strings::new(info);
    // The auxv's length does not depend on where the strings go.
    let aux_len = auxv(program, info, &s, 0).len();
    let words = 1 + info.args.len() + 1 + info.env.len() + 1 + aux_len * 2;
    let needed = s.blob.len() as u64 + 16 + words as u64 * 8 + 16;
    if needed > (top - bottom) / 2 {
        return Err(ProgramError::ArgsTooLong(needed as usize, top - bottom));
    }
    // The strings first, at the top; then argc, argv, envp and auxv below them.
    let strings = (top - 16 - s.blob.len() as u64) & !0xf;
    ram.write(strings, &s.blob)?;
    let rsp = (strings - words as u64 * 8) & !0xf;
    let mut table: Vec<u64> = Vec::with_capacity(words);
    table.push(info.args.len() as u64);
    let mut addresses = s.offsets.iter().map(|o| strings + *o as u64);
    table.extend(addresses.by_ref().take(info.args.len()));
    table.push(0);
    table.extend(addresses);
    table.push(0);
    let aux = auxv(program, info, &s, strings);
    table.extend(aux.iter().flat_map(|&(key, value)| [key, value]));
    let bytes: Vec<u8> = table.iter().flat_map(|w| w.to_le_bytes()).collect();
    ram.write(rsp, &bytes)?;
    Ok(rsp)
}

#[cfg(test)]
mod tests {
    use object::elf;

    use super::*;
    use crate::sandbox::program::tests::tiny_elf;

    #[test]
    fn the_stack_follows_the_abi() {
        let ram = GuestRam::new(0, 8 << 20).unwrap();
        let p = Program::parse("t", tiny_elf(elf::ET_EXEC, 0x40_1000, &[0xf4], None)).unwrap();
        p.check_fits("t", 6 << 20, 8 << 20).unwrap();
        p.load(&ram).unwrap();
        let args = vec![b"prog".to_vec(), b"a b".to_vec()];
        let env = vec![b"K=V".to_vec()];
        let info = StartInfo {
            args: &args,
            env: &env,
            execfn: None,
            hwcap: 0x1234,
            random: [7; 16],
            uid: 1000,
            vdso: 0x12000,
            interp_base: 0,
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
        assert_eq!(aux[&at::SYSINFO_EHDR], 0x12000);
        assert_eq!(string(aux[&at::EXECFN]), "prog");
        assert_eq!(string(aux[&at::PLATFORM]), "x86_64");
        let mut random = [0u8; 16];
        ram.read(aux[&at::RANDOM], &mut random).unwrap();
        assert_eq!(random, [7; 16]);

        let exec = StartInfo {
            execfn: Some(b"/bin/prog"),
            ..info
        };
        let rsp = build_stack(&ram, &p, &exec, 7 << 20, 8 << 20).unwrap();
        let word = |i: u64| ram.read_u64(rsp + i * 8).unwrap();
        let mut i = 1 + 2 + 1 + 1 + 1; // argc, argv, NULL, envp, NULL
        let mut execfn = 0;
        while word(i) != at::NULL {
            if word(i) == at::EXECFN {
                execfn = word(i + 1);
            }
            i += 2;
        }
        assert_eq!(string(execfn), "/bin/prog", "AT_EXECFN is execve's path");

        let huge = vec![vec![b'x'; 1 << 20]];
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
