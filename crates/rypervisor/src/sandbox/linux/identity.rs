//! Who the program is: its fixed identity (`uname`; the ids are answered in the dispatch
//! table, and the `set*id` calls succeed only for the identity it already has, as for an
//! unprivileged process), its limits (`prlimit`), its TLS (`arch_prctl`), and randomness
//! (`getrandom`).

use super::abi::{uts_field, Rlimit, Utsname};
use super::fdtable::MAX_FDS;
use super::{Context, Errno, Process, SysResult, IO_CHUNK};

/// The fixed identity: user and group id.
pub const UID: i64 = 1000;
/// `uname` fields: sysname, nodename, release, version, machine, domainname.
pub const UNAME: [&str; 6] = [
    "Linux",
    "rypervisor",
    "6.1.0-rypervisor",
    "#1 SMP rypervisor sandbox",
    "x86_64",
    "(none)",
];

/// `arch_prctl` codes (`asm/prctl.h`; libc does not export them).
const ARCH_SET_FS: u64 = 0x1002;
const ARCH_GET_FS: u64 = 0x1003;

pub(super) fn uname(buf: u64, cx: &mut Context<'_>) -> SysResult {
    let u = libc::utsname {
        sysname: uts_field(UNAME[0]),
        nodename: uts_field(UNAME[1]),
        release: uts_field(UNAME[2]),
        version: uts_field(UNAME[3]),
        machine: uts_field(UNAME[4]),
        domainname: uts_field(UNAME[5]),
    };
    cx.mem.write_obj(buf, &Utsname(u))?;
    Ok(0)
}

/// `setuid`, `setgid`, `setreuid`, `setregid`, `setresuid`, `setresgid`: each id is -1
/// (unchanged) or the one the program has; anything else is `EPERM`, as for an unprivileged
/// process (busybox and shells drop privileges they do not have at start-up).
pub(super) fn set_ids(ids: &[u64]) -> SysResult {
    let same = |&id: &u64| id as u32 == u32::MAX || i64::from(id as u32) == UID;
    if ids.iter().all(same) {
        Ok(0)
    } else {
        Err(Errno::EPERM.into())
    }
}

/// `getresuid`/`getresgid`: real, effective and saved ids, all the sandbox's.
pub(super) fn get_res_ids(ptrs: [u64; 3], cx: &mut Context<'_>) -> SysResult {
    for p in ptrs {
        cx.mem.check(p, 4)?;
    }
    for p in ptrs {
        cx.mem.write(p, &(UID as u32).to_le_bytes())?;
    }
    Ok(0)
}

pub(super) fn getrandom(buf: u64, len: u64, cx: &mut Context<'_>) -> SysResult {
    let mut data = vec![0u8; (len as usize).min(IO_CHUNK)];
    cx.mem.read(buf, &mut data)?; // check before spending entropy
    cx.host.random(&mut data);
    cx.mem.write(buf, &data)?;
    Ok(data.len() as i64)
}

impl Process {
    /// The limits the sandbox really enforces; new limits are accepted and ignored (the
    /// sandbox's own limits rule).
    pub(super) fn prlimit(&mut self, resource: u64, old: u64, cx: &mut Context<'_>) -> SysResult {
        let (stack, mem) = {
            let m = self.memory.lock();
            (m.stack_size(), m.mem_size())
        };
        let (cur, max) = match resource as u32 {
            libc::RLIMIT_STACK => (stack, stack),
            libc::RLIMIT_DATA | libc::RLIMIT_AS => (mem, mem),
            libc::RLIMIT_NOFILE => (MAX_FDS as u64, MAX_FDS as u64),
            libc::RLIMIT_NPROC => (1, 1),
            r if r <= libc::RLIMIT_RTTIME => (libc::RLIM_INFINITY, libc::RLIM_INFINITY),
            _ => return Err(Errno::EINVAL.into()),
        };
        if old != 0 {
            let limit = Rlimit(libc::rlimit {
                rlim_cur: cur,
                rlim_max: max,
            });
            cx.mem.write_obj(old, &limit)?;
        }
        Ok(0)
    }

    pub(super) fn arch_prctl(&mut self, code: u64, addr: u64, cx: &mut Context<'_>) -> SysResult {
        match code {
            ARCH_SET_FS => {
                // Any canonical address: a bad one would only fault the program itself.
                if (addr as i64) << 16 >> 16 != addr as i64 {
                    return Err(Errno::EINVAL.into());
                }
                self.fs_base = addr;
                self.fs_changed = true;
                Ok(0)
            }
            ARCH_GET_FS => {
                cx.mem.write_obj(addr, &self.fs_base)?;
                Ok(0)
            }
            _ => Err(Errno::EINVAL.into()),
        }
    }
}
