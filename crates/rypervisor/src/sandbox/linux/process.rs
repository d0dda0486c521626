//! The small calls start-ups and shells make about their own process, answered as Linux
//! would for a process of the sandbox's tree: `umask`, `getgroups`, the process
//! group and session ids, `times`, `getrusage`, `sysinfo`, and the `prctl` options programs
//! set or probe (the name, the child subreaper, dumpability, the parent-death signal,
//! no-new-privileges), and the CPU it runs on (one CPU: `sched_getaffinity`, `getcpu`).

use super::abi::{Rusage, Sysinfo, Tms};
use super::identity::UID;
use super::{Context, Errno, Process, SysResult};

/// Clock ticks per second of `times` (Linux's USER_HZ).
const USER_HZ: i64 = 100;

/// What the kernel keeps about the process beyond its memory, files and signals.
#[derive(Clone, Debug)]
pub struct ProcessState {
    /// The file mode creation mask (no file is ever created; kept for `umask`'s answer).
    umask: u32,
    /// `PR_SET_NAME`'s name (the thread's `comm`), NUL-padded.
    name: [u8; 16],
    dumpable: bool,
    no_new_privs: bool,
    pdeathsig: i32,
}

impl ProcessState {
    /// The name `execve` gives: the file name of the program's path, as `comm`.
    pub fn set_name(&mut self, path: &[u8]) {
        let base = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        self.name = [0; 16];
        let n = base.len().min(15);
        self.name[..n].copy_from_slice(&base[..n]);
    }
}

impl Default for ProcessState {
    fn default() -> Self {
        let mut name = [0u8; 16];
        name[..7].copy_from_slice(b"program");
        Self {
            umask: 0o022,
            name,
            dumpable: true,
            no_new_privs: false,
            pdeathsig: 0,
        }
    }
}

impl Process {
    /// `ESRCH` unless `pid` is 0, this thread or its process.
    fn is_me(&self, pid: u64) -> Result<(), Errno> {
        match pid as i32 {
            0 => Ok(()),
            p if p == self.pid || p == self.tgid => Ok(()),
            _ => Err(Errno::ESRCH),
        }
    }

    /// `sched_getaffinity`: CPU 0 only (threads are vCPUs the host schedules; a program told
    /// of one CPU does not size itself by the host); the size written.
    pub(super) fn getaffinity(
        &self,
        pid: u64,
        len: u64,
        mask: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        self.is_me(pid)?;
        // Linux copies whole longs of its CPU mask and refuses a buffer too small for it.
        if len < 8 || !len.is_multiple_of(8) {
            return Err(Errno::EINVAL.into());
        }
        cx.mem.write(mask, &1u64.to_le_bytes())?;
        Ok(8)
    }

    /// `sched_setaffinity`: any mask that includes CPU 0.
    pub(super) fn setaffinity(
        &self,
        pid: u64,
        len: u64,
        mask: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        self.is_me(pid)?;
        let mut first = [0u8; 1];
        if len == 0 {
            return Err(Errno::EINVAL.into());
        }
        cx.mem.read(mask, &mut first)?;
        if first[0] & 1 == 0 {
            return Err(Errno::EINVAL.into());
        }
        Ok(0)
    }

    /// `getcpu`: CPU 0, node 0.
    pub(super) fn getcpu(cpu: u64, node: u64, cx: &mut Context<'_>) -> SysResult {
        for at in [cpu, node].into_iter().filter(|&a| a != 0) {
            cx.mem.write(at, &0u32.to_le_bytes())?;
        }
        Ok(0)
    }

    /// Microseconds the program has run (it is the only thread: time since start).
    fn run_time(&self, cx: &mut Context<'_>) -> (i64, i64) {
        let (s0, n0) = self.started.unwrap_or((0, 0));
        let (s, n) = cx.host.clock(libc::CLOCK_MONOTONIC).unwrap_or((s0, n0));
        let us = ((s - s0) * 1_000_000 + (n - n0) / 1000).max(0);
        (us / 1_000_000, us % 1_000_000)
    }

    pub(super) fn umask(&mut self, mask: u64) -> SysResult {
        let old = self.process.umask;
        self.process.umask = mask as u32 & 0o777;
        Ok(i64::from(old))
    }

    pub(super) fn getgroups(size: u64, list: u64, cx: &mut Context<'_>) -> SysResult {
        match size as i32 {
            0 => Ok(1),
            n if n < 0 => Err(Errno::EINVAL.into()),
            _ => {
                cx.mem.write(list, &(UID as u32).to_le_bytes())?;
                Ok(1)
            }
        }
    }

    pub(super) fn times(&mut self, buf: u64, cx: &mut Context<'_>) -> SysResult {
        let (s, us) = self.run_time(cx);
        let ticks = s * USER_HZ + us * USER_HZ / 1_000_000;
        if buf != 0 {
            let mut t = Tms::default();
            t.0.tms_utime = ticks;
            cx.mem.write_obj(buf, &t)?;
        }
        // Ticks since an arbitrary point: the host's monotonic clock.
        let (ms, mn) = cx.host.clock(libc::CLOCK_MONOTONIC).unwrap_or((0, 0));
        Ok(ms * USER_HZ + mn / (1_000_000_000 / USER_HZ))
    }

    pub(super) fn getrusage(&mut self, who: u64, buf: u64, cx: &mut Context<'_>) -> SysResult {
        let mut r = Rusage::default();
        match who as i32 {
            libc::RUSAGE_SELF | libc::RUSAGE_THREAD => {
                let (s, us) = self.run_time(cx);
                r.0.ru_utime = libc::timeval {
                    tv_sec: s,
                    tv_usec: us,
                };
                r.0.ru_maxrss = (self.mem_size() / 1024) as i64;
            }
            libc::RUSAGE_CHILDREN => {} // it has none
            _ => return Err(Errno::EINVAL.into()),
        }
        cx.mem.write_obj(buf, &r)?;
        Ok(0)
    }

    pub(super) fn sysinfo(&mut self, buf: u64, cx: &mut Context<'_>) -> SysResult {
        let mut i = Sysinfo::default();
        i.0.uptime = self.run_time(cx).0;
        let (size, brk) = (self.mem_size(), self.brk());
        i.0.totalram = size;
        i.0.freeram = size.saturating_sub(brk);
        i.0.procs = self.tree.running() as u16;
        i.0.mem_unit = 1;
        cx.mem.write_obj(buf, &i)?;
        Ok(0)
    }

    pub(super) fn prctl(&mut self, option: u64, arg: u64, cx: &mut Context<'_>) -> SysResult {
        let p = &mut self.process;
        match option as i32 {
            libc::PR_SET_NAME => {
                let name = cx.mem.read_cstr(arg, 4096)?;
                p.name = [0; 16];
                let n = name.len().min(15);
                p.name[..n].copy_from_slice(&name[..n]);
                Ok(0)
            }
            libc::PR_GET_NAME => {
                cx.mem.write(arg, &p.name)?;
                Ok(0)
            }
            libc::PR_SET_CHILD_SUBREAPER => Ok(0),
            libc::PR_GET_DUMPABLE => Ok(i64::from(p.dumpable)),
            libc::PR_SET_DUMPABLE if arg <= 1 => {
                p.dumpable = arg == 1;
                Ok(0)
            }
            libc::PR_SET_PDEATHSIG if arg <= 64 => {
                p.pdeathsig = arg as i32;
                Ok(0)
            }
            libc::PR_GET_PDEATHSIG => {
                cx.mem.write(arg, &p.pdeathsig.to_le_bytes())?;
                Ok(0)
            }
            libc::PR_SET_NO_NEW_PRIVS if arg == 1 => {
                p.no_new_privs = true;
                Ok(0)
            }
            libc::PR_GET_NO_NEW_PRIVS => Ok(i64::from(p.no_new_privs)),
            _ => Err(Errno::EINVAL.into()),
        }
    }
}
