//! The system-call dispatcher: the sandbox's whole "kernel".
//!
//! [`Process::dispatch`] takes the registers of one system call (RAX = number, RDI, RSI,
//! RDX, R10, R8, R9 = arguments), serves it from the process state, the program's memory
//! ([`UserMemory`], which checks every pointer) and the [`Host`] (stdin/stdout/stderr, clock,
//! randomness), and says what to do next. It needs no KVM, so unit tests and the fuzz target
//! feed it arbitrary registers and memory.
//!
//! The identity the program sees is fixed: pid 1, uid/gid 1000, host name `rypervisor`,
//! kernel `Linux 6.1.0-rypervisor x86_64`, working directory `/`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::time::Duration;

use super::policy::Policy;
use super::usermem::{Errno, UserMemory};
use crate::memory::PAGE_SIZE;

/// The fixed identity: process and thread id.
pub const PID: i64 = 1;
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
/// Largest single read or write served in one call (the program loops for more, as it must
/// on Linux too).
const IO_CHUNK: usize = 1 << 20;
/// Largest `iovcnt` (Linux's UIO_MAXIOV).
const IOV_MAX: u64 = 1024;
/// Longest path (Linux's PATH_MAX).
const PATH_MAX: usize = 4096;
/// Highest file descriptor the program may hold open.
const MAX_FDS: i32 = 64;

/// The host services a program may reach, all through the VMM.
pub trait Host {
    /// Reads the program's stdin. `Err(Interrupted)` when the watchdog kicked.
    fn read_stdin(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes to the program's stdout (1) or stderr (2).
    fn write_out(&mut self, fd: i32, data: &[u8]) -> std::io::Result<usize>;
    /// Sleeps (already capped at the time the program has left).
    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
    /// Fills `buf` with random bytes.
    fn random(&mut self, buf: &mut [u8]) {
        fill_random(buf);
    }
    /// `clock_gettime` on the host for `clock`, as (seconds, nanoseconds).
    fn clock(&mut self, clock: i32) -> Option<(i64, i64)> {
        host_clock(clock)
    }
}

/// Fills `buf` from the host's random source (getrandom(2)).
pub fn fill_random(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, a live slice.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n <= 0 {
            continue; // EINTR; getrandom never fails otherwise once the pool is ready
        }
        done += n as usize;
    }
}

/// Reads a host clock.
pub fn host_clock(clock: i32) -> Option<(i64, i64)> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec for the kernel to fill; bad clock ids return EINVAL.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then_some((ts.tv_sec, ts.tv_nsec))
}

/// One system call as the program made it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallArgs {
    /// RAX.
    pub nr: u64,
    /// RDI, RSI, RDX, R10, R8, R9.
    pub args: [u64; 6],
}

/// What the run loop does after a system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Return this value in RAX (negative: -errno).
    Return(i64),
    /// The program exited with this status.
    Exit(i32),
    /// `--strict`: a call outside the policy ends the program.
    Kill,
    /// The watchdog fired while the VMM served the call.
    TimedOut,
}

/// Per-call counters.
#[derive(Clone, Debug, Default)]
pub struct SyscallStats {
    /// Calls by number.
    pub counts: BTreeMap<u64, u64>,
    /// Calls answered ENOSYS or killed by the policy.
    pub denied: u64,
}

/// An open host file (only under `--allow-read`).
#[derive(Debug)]
struct OpenFile {
    file: File,
}

/// Program memory ranges handed out by `mmap`.
#[derive(Clone, Debug, Default)]
struct Mappings {
    /// start → end of each mapping, non-overlapping.
    ranges: BTreeMap<u64, u64>,
}

impl Mappings {
    fn lowest(&self) -> Option<u64> {
        self.ranges.keys().next().copied()
    }

    /// The highest free gap of `len` bytes inside `[floor, ceiling)`.
    fn find(&self, len: u64, floor: u64, ceiling: u64) -> Option<u64> {
        let mut top = ceiling;
        for (&start, &end) in self.ranges.iter().rev() {
            if end <= top && top - end >= len && top - len >= floor {
                return Some(top - len);
            }
            top = top.min(start);
        }
        (top >= floor && top - floor >= len).then(|| top - len)
    }

    fn insert(&mut self, start: u64, end: u64) {
        self.remove(start, end);
        self.ranges.insert(start, end);
    }

    /// Removes `[start, end)` from every mapping (splitting as needed); returns the pieces
    /// that were mapped.
    fn remove(&mut self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let hits: Vec<(u64, u64)> = self
            .ranges
            .range(..end)
            .filter(|(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        let mut removed = Vec::new();
        for (s, e) in hits {
            self.ranges.remove(&s);
            if s < start {
                self.ranges.insert(s, start);
            }
            if e > end {
                self.ranges.insert(end, e);
            }
            removed.push((s.max(start), e.min(end)));
        }
        removed
    }

    fn covers(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        for (&s, &e) in self.ranges.range(..end) {
            if e <= at {
                continue;
            }
            if s > at {
                return false;
            }
            at = e;
            if at >= end {
                return true;
            }
        }
        at >= end
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.ranges.range(..end).any(|(_, &e)| e > start)
    }
}

/// The process the sandbox runs: everything a kernel would keep about it.
#[derive(Debug)]
pub struct Process {
    policy: Policy,
    /// Start and current end of the heap (`brk`).
    brk_start: u64,
    brk: u64,
    /// `[mmap_floor, stack_bottom)` is shared by the heap (growing up) and mmap (top down).
    stack_bottom: u64,
    stack_size: u64,
    mem_size: u64,
    mappings: Mappings,
    files: BTreeMap<i32, OpenFile>,
    std_closed: [bool; 3],
    sigactions: BTreeMap<u64, [u8; 32]>,
    sigmask: u64,
    /// Monotonic time at start, for the CPU-time clocks.
    started: Option<(i64, i64)>,
    /// Counters.
    pub stats: SyscallStats,
}

impl Clone for Process {
    /// A copy for snapshots. Open host files are not copied: a snapshot is only taken with
    /// none open (see [`Process::open_files`]).
    fn clone(&self) -> Self {
        Self {
            policy: self.policy.clone(),
            brk_start: self.brk_start,
            brk: self.brk,
            stack_bottom: self.stack_bottom,
            stack_size: self.stack_size,
            mem_size: self.mem_size,
            mappings: self.mappings.clone(),
            files: BTreeMap::new(),
            std_closed: self.std_closed,
            sigactions: self.sigactions.clone(),
            sigmask: self.sigmask,
            started: self.started,
            stats: self.stats.clone(),
        }
    }
}

fn page_up(x: u64) -> Option<u64> {
    x.checked_add(PAGE_SIZE - 1).map(|v| v & !(PAGE_SIZE - 1))
}

fn errno(e: Errno) -> i64 {
    -i64::from(e.0)
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Next::Return(errno(e)),
        }
    };
}

/// Linux x86-64 system-call numbers the dispatcher knows.
pub mod nr {
    #![allow(missing_docs)]
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const OPEN: u64 = 2;
    pub const CLOSE: u64 = 3;
    pub const STAT: u64 = 4;
    pub const FSTAT: u64 = 5;
    pub const LSTAT: u64 = 6;
    pub const LSEEK: u64 = 8;
    pub const MMAP: u64 = 9;
    pub const MPROTECT: u64 = 10;
    pub const MUNMAP: u64 = 11;
    pub const BRK: u64 = 12;
    pub const RT_SIGACTION: u64 = 13;
    pub const RT_SIGPROCMASK: u64 = 14;
    pub const IOCTL: u64 = 16;
    pub const PREAD64: u64 = 17;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const ACCESS: u64 = 21;
    pub const SCHED_YIELD: u64 = 24;
    pub const MREMAP: u64 = 25;
    pub const MADVISE: u64 = 28;
    pub const NANOSLEEP: u64 = 35;
    pub const GETPID: u64 = 39;
    pub const SOCKET: u64 = 41;
    pub const CLONE: u64 = 56;
    pub const FORK: u64 = 57;
    pub const VFORK: u64 = 58;
    pub const EXECVE: u64 = 59;
    pub const EXIT: u64 = 60;
    pub const KILL: u64 = 62;
    pub const UNAME: u64 = 63;
    pub const FCNTL: u64 = 72;
    pub const GETCWD: u64 = 79;
    pub const READLINK: u64 = 89;
    pub const GETTIMEOFDAY: u64 = 96;
    pub const GETRLIMIT: u64 = 97;
    pub const GETUID: u64 = 102;
    pub const GETGID: u64 = 104;
    pub const GETEUID: u64 = 107;
    pub const GETEGID: u64 = 108;
    pub const GETPPID: u64 = 110;
    pub const SIGALTSTACK: u64 = 131;
    pub const ARCH_PRCTL: u64 = 158;
    pub const GETTID: u64 = 186;
    pub const TIME: u64 = 201;
    pub const FUTEX: u64 = 202;
    pub const SET_TID_ADDRESS: u64 = 218;
    pub const CLOCK_GETTIME: u64 = 228;
    pub const CLOCK_GETRES: u64 = 229;
    pub const CLOCK_NANOSLEEP: u64 = 230;
    pub const EXIT_GROUP: u64 = 231;
    pub const OPENAT: u64 = 257;
    pub const NEWFSTATAT: u64 = 262;
    pub const READLINKAT: u64 = 267;
    pub const FACCESSAT: u64 = 269;
    pub const SET_ROBUST_LIST: u64 = 273;
    pub const PRLIMIT64: u64 = 302;
    pub const GETRANDOM: u64 = 318;
    pub const STATX: u64 = 332;
    pub const RSEQ: u64 = 334;
    pub const CLONE3: u64 = 435;
}

/// The name of system call `n` (for traces and statistics).
pub fn name(n: u64) -> std::borrow::Cow<'static, str> {
    let known = match n {
        0 => "read",
        1 => "write",
        2 => "open",
        3 => "close",
        4 => "stat",
        5 => "fstat",
        6 => "lstat",
        7 => "poll",
        8 => "lseek",
        9 => "mmap",
        10 => "mprotect",
        11 => "munmap",
        12 => "brk",
        13 => "rt_sigaction",
        14 => "rt_sigprocmask",
        16 => "ioctl",
        17 => "pread64",
        19 => "readv",
        20 => "writev",
        21 => "access",
        22 => "pipe",
        24 => "sched_yield",
        25 => "mremap",
        28 => "madvise",
        32 => "dup",
        33 => "dup2",
        35 => "nanosleep",
        39 => "getpid",
        41 => "socket",
        42 => "connect",
        49 => "bind",
        56 => "clone",
        57 => "fork",
        58 => "vfork",
        59 => "execve",
        60 => "exit",
        61 => "wait4",
        62 => "kill",
        63 => "uname",
        72 => "fcntl",
        79 => "getcwd",
        80 => "chdir",
        82 => "rename",
        83 => "mkdir",
        87 => "unlink",
        89 => "readlink",
        96 => "gettimeofday",
        97 => "getrlimit",
        99 => "sysinfo",
        101 => "ptrace",
        102 => "getuid",
        104 => "getgid",
        105 => "setuid",
        107 => "geteuid",
        108 => "getegid",
        110 => "getppid",
        131 => "sigaltstack",
        157 => "prctl",
        158 => "arch_prctl",
        165 => "mount",
        186 => "gettid",
        201 => "time",
        202 => "futex",
        204 => "sched_getaffinity",
        218 => "set_tid_address",
        228 => "clock_gettime",
        229 => "clock_getres",
        230 => "clock_nanosleep",
        231 => "exit_group",
        257 => "openat",
        262 => "newfstatat",
        267 => "readlinkat",
        269 => "faccessat",
        273 => "set_robust_list",
        302 => "prlimit64",
        318 => "getrandom",
        332 => "statx",
        334 => "rseq",
        435 => "clone3",
        _ => return format!("syscall_{n}").into(),
    };
    known.into()
}

/// Everything `dispatch` needs besides the process.
pub struct Context<'a> {
    /// Program memory.
    pub mem: &'a mut UserMemory,
    /// Host services.
    pub host: &'a mut dyn Host,
    /// Time the program has left (caps sleeps); `None` without a time limit.
    pub remaining: Option<Duration>,
    /// Guest FS base to set (arch_prctl(ARCH_SET_FS)); the run loop writes it to the vCPU.
    pub set_fs: &'a mut Option<u64>,
    /// FS base as the vCPU has it (for ARCH_GET_FS).
    pub fs: u64,
}

impl Process {
    /// A process whose image ends at `image_end` in a guest of `mem_size` bytes with a
    /// stack of `stack_size` bytes at the top.
    pub fn new(policy: Policy, image_end: u64, mem_size: u64, stack_size: u64) -> Self {
        let brk_start = page_up(image_end).unwrap_or(mem_size);
        Self {
            policy,
            brk_start,
            brk: brk_start,
            stack_bottom: mem_size - stack_size,
            stack_size,
            mem_size,
            mappings: Mappings::default(),
            files: BTreeMap::new(),
            std_closed: [false; 3],
            sigactions: BTreeMap::new(),
            sigmask: 0,
            started: host_clock(libc::CLOCK_MONOTONIC),
            stats: SyscallStats::default(),
        }
    }

    /// Stack bottom (the stack is `[stack_bottom, mem_size)`).
    pub fn stack_bottom(&self) -> u64 {
        self.stack_bottom
    }

    /// Current program break.
    pub fn brk(&self) -> u64 {
        self.brk
    }

    /// Number of host files the program holds open.
    pub fn open_files(&self) -> usize {
        self.files.len()
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Serves one system call.
    pub fn dispatch(&mut self, call: &SyscallArgs, cx: &mut Context<'_>) -> Next {
        *self.stats.counts.entry(call.nr).or_default() += 1;
        let [a0, a1, a2, a3, a4, _a5] = call.args;
        match call.nr {
            nr::READ => self.read(a0 as i32, a1, a2, cx),
            nr::WRITE => self.write(a0 as i32, a1, a2, cx),
            nr::READV => self.readv(a0 as i32, a1, a2, cx),
            nr::WRITEV => self.writev(a0 as i32, a1, a2, cx),
            nr::PREAD64 => self.pread(a0 as i32, a1, a2, a3, cx),
            nr::OPEN => self.openat(libc::AT_FDCWD, a0, a1, cx),
            nr::OPENAT => self.openat(a0 as i32, a1, a2, cx),
            nr::CLOSE => self.close(a0 as i32),
            nr::FSTAT => self.fstat(a0 as i32, a1, cx),
            nr::STAT | nr::LSTAT => self.stat_path(a0, a1, cx),
            nr::NEWFSTATAT => self.newfstatat(a0 as i32, a1, a2, a3, cx),
            nr::LSEEK => self.lseek(a0 as i32, a1 as i64, a2 as i32),
            nr::IOCTL => self.ioctl(a0 as i32),
            nr::FCNTL => self.fcntl(a0 as i32, a1 as i32),
            nr::ACCESS => self.access(a0, cx),
            nr::FACCESSAT => self.access(a1, cx),
            nr::BRK => Next::Return(self.set_brk(a0, cx) as i64),
            nr::MMAP => self.mmap(a0, a1, a3, a4 as i32, call.args[5], cx),
            nr::MUNMAP => self.munmap(a0, a1, cx),
            nr::MPROTECT => self.mprotect(a0, a1),
            nr::MREMAP => self.mremap(a0, a1, a2, a3, cx),
            nr::MADVISE => self.madvise(a0, a1, a2, cx),
            nr::ARCH_PRCTL => self.arch_prctl(a0, a1, cx),
            nr::SET_TID_ADDRESS | nr::GETTID | nr::GETPID => Next::Return(PID),
            nr::GETPPID => Next::Return(0),
            nr::GETUID | nr::GETGID | nr::GETEUID | nr::GETEGID => Next::Return(UID),
            nr::SET_ROBUST_LIST => Next::Return(0),
            nr::RSEQ => Next::Return(-i64::from(libc::ENOSYS)), // served: "not supported"
            nr::UNAME => self.uname(a0, cx),
            nr::GETCWD => self.getcwd(a0, a1, cx),
            nr::READLINK | nr::READLINKAT => Next::Return(errno(Errno(libc::ENOENT))),
            nr::GETRANDOM => self.getrandom(a0, a1, cx),
            nr::CLOCK_GETTIME => self.clock_gettime(a0 as i32, a1, cx),
            nr::CLOCK_GETRES => self.clock_getres(a1, cx),
            nr::GETTIMEOFDAY => self.gettimeofday(a0, cx),
            nr::TIME => self.time(a0, cx),
            nr::NANOSLEEP => self.nanosleep(a0, a1, cx),
            nr::CLOCK_NANOSLEEP => self.clock_nanosleep(a0 as i32, a1, a2, cx),
            nr::SCHED_YIELD => Next::Return(0),
            nr::GETRLIMIT => self.prlimit(a0, 0, a1, cx),
            nr::PRLIMIT64 => {
                if a0 != 0 && a0 as i64 != PID {
                    Next::Return(errno(Errno(libc::ESRCH)))
                } else {
                    self.prlimit(a1, a2, a3, cx)
                }
            }
            nr::RT_SIGACTION => self.sigaction(a0, a1, a2, cx),
            nr::RT_SIGPROCMASK => self.sigprocmask(a0 as i32, a1, a2, cx),
            nr::SIGALTSTACK => self.sigaltstack(a1, cx),
            nr::FUTEX => self.futex(a0, a1, a2, cx),
            nr::EXIT | nr::EXIT_GROUP => Next::Exit(a0 as i32 & 0xff),
            _ => {
                self.stats.denied += 1;
                if self.policy.strict {
                    Next::Kill
                } else {
                    Next::Return(-i64::from(libc::ENOSYS))
                }
            }
        }
    }

    // ---- files and standard streams ----------------------------------------------------

    fn std_open(&self, fd: i32) -> bool {
        (0..3).contains(&fd) && !self.std_closed[fd as usize]
    }

    fn read(&mut self, fd: i32, buf: u64, count: u64, cx: &mut Context<'_>) -> Next {
        let n = (count as usize).min(IO_CHUNK);
        // Check the destination before consuming input the program could not receive.
        tri!(cx.mem.check(buf, n as u64));
        let mut data = vec![0u8; n];
        let got = match self.read_fd(fd, &mut data, cx) {
            Ok(got) => got,
            Err(next) => return next,
        };
        tri!(cx.mem.write(buf, &data[..got]));
        Next::Return(got as i64)
    }

    /// Reads from `fd` into a host buffer.
    fn read_fd(&mut self, fd: i32, data: &mut [u8], cx: &mut Context<'_>) -> Result<usize, Next> {
        if fd == 0 && self.std_open(0) {
            return match cx.host.read_stdin(data) {
                Ok(n) => Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Err(Next::TimedOut),
                Err(e) => Err(Next::Return(-i64::from(
                    e.raw_os_error().unwrap_or(libc::EIO),
                ))),
            };
        }
        match self.files.get_mut(&fd) {
            Some(f) => f
                .file
                .read(data)
                .map_err(|e| Next::Return(-i64::from(e.raw_os_error().unwrap_or(libc::EIO)))),
            None => Err(Next::Return(errno(Errno::EBADF))),
        }
    }

    fn write(&mut self, fd: i32, buf: u64, count: u64, cx: &mut Context<'_>) -> Next {
        let n = (count as usize).min(IO_CHUNK);
        let mut data = vec![0u8; n];
        tri!(cx.mem.read(buf, &mut data));
        self.write_fd(fd, &data, cx)
    }

    fn write_fd(&mut self, fd: i32, data: &[u8], cx: &mut Context<'_>) -> Next {
        if !(fd == 1 || fd == 2) || !self.std_open(fd) {
            return Next::Return(errno(Errno::EBADF));
        }
        match cx.host.write_out(fd, data) {
            Ok(n) => Next::Return(n as i64),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Next::TimedOut,
            Err(e) => Next::Return(-i64::from(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }

    fn iovecs(&self, iov: u64, count: u64, cx: &Context<'_>) -> Result<Vec<(u64, u64)>, Errno> {
        if count > IOV_MAX {
            return Err(Errno::EINVAL);
        }
        // The whole array in one read: one bounds check for the guest's pointer.
        let mut raw = vec![0u8; count as usize * 16];
        cx.mem.read(iov, &mut raw)?;
        let mut out = Vec::with_capacity(count as usize);
        let mut total = 0u64;
        for entry in raw.chunks_exact(16) {
            let word = |at: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&entry[at..at + 8]);
                u64::from_le_bytes(b)
            };
            let (base, len) = (word(0), word(8));
            total = total.checked_add(len).ok_or(Errno::EINVAL)?;
            if total > isize::MAX as u64 {
                return Err(Errno::EINVAL);
            }
            out.push((base, len));
        }
        Ok(out)
    }

    fn writev(&mut self, fd: i32, iov: u64, count: u64, cx: &mut Context<'_>) -> Next {
        let vecs = tri!(self.iovecs(iov, count, cx));
        let mut data = Vec::new();
        for (base, len) in vecs {
            let take = (len as usize).min(IO_CHUNK.saturating_sub(data.len()));
            let at = data.len();
            data.resize(at + take, 0);
            tri!(cx.mem.read(base, &mut data[at..]));
        }
        self.write_fd(fd, &data, cx)
    }

    fn readv(&mut self, fd: i32, iov: u64, count: u64, cx: &mut Context<'_>) -> Next {
        let vecs = tri!(self.iovecs(iov, count, cx));
        // Check every buffer first, so a bad one does not swallow input.
        for &(base, len) in &vecs {
            tri!(cx.mem.check(base, len));
        }
        let want: u64 = vecs.iter().map(|v| v.1).sum::<u64>().min(IO_CHUNK as u64);
        let mut data = vec![0u8; want as usize];
        let got = match self.read_fd(fd, &mut data, cx) {
            Ok(got) => got,
            Err(next) => return next,
        };
        let mut done = 0usize;
        for (base, len) in vecs {
            if done == got {
                break;
            }
            let n = (len as usize).min(got - done);
            tri!(cx.mem.write(base, &data[done..done + n]));
            done += n;
        }
        Next::Return(got as i64)
    }

    fn pread(&mut self, fd: i32, buf: u64, count: u64, offset: u64, cx: &mut Context<'_>) -> Next {
        let Some(f) = self.files.get(&fd) else {
            return Next::Return(errno(if self.std_open(fd) {
                Errno(libc::ESPIPE)
            } else {
                Errno::EBADF
            }));
        };
        let mut data = vec![0u8; (count as usize).min(IO_CHUNK)];
        let got = match f.file.read_at(&mut data, offset) {
            Ok(n) => n,
            Err(e) => return Next::Return(-i64::from(e.raw_os_error().unwrap_or(libc::EIO))),
        };
        tri!(cx.mem.write(buf, &data[..got]));
        Next::Return(got as i64)
    }

    fn guest_path(&self, addr: u64, cx: &Context<'_>) -> Result<Vec<u8>, Errno> {
        cx.mem.read_cstr(addr, PATH_MAX)
    }

    fn openat(&mut self, dirfd: i32, path: u64, flags: u64, cx: &mut Context<'_>) -> Next {
        let path = tri!(self.guest_path(path, cx));
        if dirfd != libc::AT_FDCWD && !path.starts_with(b"/") {
            return Next::Return(errno(Errno::EBADF));
        }
        let write_flags = (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64;
        let Some(host) = self.policy.check_read(&path) else {
            return Next::Return(errno(Errno(libc::EACCES)));
        };
        if flags & write_flags != 0 {
            return Next::Return(errno(Errno(libc::EROFS)));
        }
        let fd = (3..MAX_FDS).find(|fd| !self.files.contains_key(fd));
        let Some(fd) = fd else {
            return Next::Return(errno(Errno(libc::EMFILE)));
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&host);
        match file {
            Ok(file) if file.metadata().is_ok_and(|m| m.is_file()) => {
                self.files.insert(fd, OpenFile { file });
                Next::Return(i64::from(fd))
            }
            Ok(_) => Next::Return(errno(Errno(libc::EACCES))), // directories, devices
            Err(e) => Next::Return(-i64::from(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }

    fn close(&mut self, fd: i32) -> Next {
        if self.files.remove(&fd).is_some() {
            return Next::Return(0);
        }
        if self.std_open(fd) {
            self.std_closed[fd as usize] = true;
            return Next::Return(0);
        }
        Next::Return(errno(Errno::EBADF))
    }

    fn lseek(&mut self, fd: i32, offset: i64, whence: i32) -> Next {
        let Some(f) = self.files.get_mut(&fd) else {
            return Next::Return(errno(if self.std_open(fd) {
                Errno(libc::ESPIPE)
            } else {
                Errno::EBADF
            }));
        };
        let pos = match whence {
            libc::SEEK_SET if offset >= 0 => SeekFrom::Start(offset as u64),
            libc::SEEK_CUR => SeekFrom::Current(offset),
            libc::SEEK_END => SeekFrom::End(offset),
            _ => return Next::Return(errno(Errno::EINVAL)),
        };
        match f.file.seek(pos) {
            Ok(p) => Next::Return(p as i64),
            Err(e) => Next::Return(-i64::from(e.raw_os_error().unwrap_or(libc::EINVAL))),
        }
    }

    /// A `struct stat` (x86-64 layout, 144 bytes).
    fn stat_bytes(mode: u32, size: u64, mtime: i64, ino: u64) -> [u8; 144] {
        let mut st = [0u8; 144];
        st[0..8].copy_from_slice(&1u64.to_le_bytes()); // st_dev
        st[8..16].copy_from_slice(&ino.to_le_bytes()); // st_ino
        st[16..24].copy_from_slice(&1u64.to_le_bytes()); // st_nlink
        st[24..28].copy_from_slice(&mode.to_le_bytes());
        st[28..32].copy_from_slice(&(UID as u32).to_le_bytes());
        st[32..36].copy_from_slice(&(UID as u32).to_le_bytes());
        st[48..56].copy_from_slice(&size.to_le_bytes());
        st[56..64].copy_from_slice(&4096u64.to_le_bytes()); // st_blksize
        st[64..72].copy_from_slice(&size.div_ceil(512).to_le_bytes());
        for at in [72, 88, 104] {
            st[at..at + 8].copy_from_slice(&mtime.to_le_bytes());
        }
        st
    }

    fn fstat(&mut self, fd: i32, buf: u64, cx: &mut Context<'_>) -> Next {
        let st = if let Some(f) = self.files.get(&fd) {
            match f.file.metadata() {
                Ok(m) => {
                    Self::stat_bytes(libc::S_IFREG | 0o444, m.len(), m.mtime(), 100 + fd as u64)
                }
                Err(_) => return Next::Return(errno(Errno(libc::EIO))),
            }
        } else if self.std_open(fd) {
            // The standard streams look like character devices that are not terminals.
            Self::stat_bytes(libc::S_IFCHR | 0o620, 0, 0, 10 + fd as u64)
        } else {
            return Next::Return(errno(Errno::EBADF));
        };
        tri!(cx.mem.write(buf, &st));
        Next::Return(0)
    }

    fn stat_path(&mut self, path: u64, buf: u64, cx: &mut Context<'_>) -> Next {
        let path = tri!(self.guest_path(path, cx));
        let Some(host) = self.policy.check_read(&path) else {
            return Next::Return(errno(Errno(libc::EACCES)));
        };
        let st = match std::fs::metadata(host) {
            Ok(m) if m.is_dir() => Self::stat_bytes(libc::S_IFDIR | 0o555, 0, m.mtime(), 2),
            Ok(m) => Self::stat_bytes(libc::S_IFREG | 0o444, m.len(), m.mtime(), 3),
            Err(e) => return Next::Return(-i64::from(e.raw_os_error().unwrap_or(libc::EIO))),
        };
        tri!(cx.mem.write(buf, &st));
        Next::Return(0)
    }

    fn newfstatat(
        &mut self,
        dirfd: i32,
        path: u64,
        buf: u64,
        flags: u64,
        cx: &mut Context<'_>,
    ) -> Next {
        let name = tri!(self.guest_path(path, cx));
        if name.is_empty() && flags & libc::AT_EMPTY_PATH as u64 != 0 {
            return self.fstat(dirfd, buf, cx);
        }
        if dirfd != libc::AT_FDCWD && !name.starts_with(b"/") {
            return Next::Return(errno(Errno::EBADF));
        }
        self.stat_path(path, buf, cx)
    }

    fn access(&mut self, path: u64, cx: &mut Context<'_>) -> Next {
        let path = tri!(self.guest_path(path, cx));
        match self.policy.check_read(&path) {
            Some(host) if host.exists() => Next::Return(0),
            _ => Next::Return(errno(Errno(libc::EACCES))),
        }
    }

    fn ioctl(&mut self, fd: i32) -> Next {
        // TCGETS, TIOCGWINSZ...: nothing the program holds is a terminal.
        if self.std_open(fd) || self.files.contains_key(&fd) {
            Next::Return(errno(Errno(libc::ENOTTY)))
        } else {
            Next::Return(errno(Errno::EBADF))
        }
    }

    fn fcntl(&mut self, fd: i32, cmd: i32) -> Next {
        if !self.std_open(fd) && !self.files.contains_key(&fd) {
            return Next::Return(errno(Errno::EBADF));
        }
        match cmd {
            libc::F_GETFD | libc::F_SETFD | libc::F_SETFL => Next::Return(0),
            libc::F_GETFL => Next::Return(i64::from(if fd == 1 || fd == 2 {
                libc::O_WRONLY
            } else {
                libc::O_RDONLY
            })),
            _ => Next::Return(errno(Errno::EINVAL)),
        }
    }

    // ---- memory -------------------------------------------------------------------------

    /// The heap may grow up to the lowest mapping (or the stack).
    fn brk_limit(&self) -> u64 {
        self.mappings
            .lowest()
            .unwrap_or(self.stack_bottom)
            .min(self.stack_bottom)
    }

    fn set_brk(&mut self, want: u64, cx: &mut Context<'_>) -> u64 {
        if want < self.brk_start || want > self.brk_limit() {
            return self.brk; // Linux: the unchanged break means failure
        }
        let (old_top, new_top) = (page_up(self.brk).unwrap_or(0), page_up(want).unwrap_or(0));
        if new_top < old_top {
            // Shrinking: zero what is given back, so growing again starts from zeroes.
            let _ = cx.mem.discard(new_top, old_top - new_top);
        }
        self.brk = want;
        self.brk
    }

    fn mmap(
        &mut self,
        addr: u64,
        len: u64,
        flags: u64,
        fd: i32,
        offset: u64,
        cx: &mut Context<'_>,
    ) -> Next {
        let flags = flags as i32;
        let anonymous = flags & libc::MAP_ANONYMOUS != 0;
        let Some(len) = page_up(len).filter(|l| *l > 0) else {
            return Next::Return(errno(Errno::EINVAL));
        };
        if flags & libc::MAP_SHARED != 0 && !anonymous {
            return Next::Return(errno(Errno(libc::EACCES))); // nothing can be written back
        }
        if !anonymous && (!self.files.contains_key(&fd) || offset % PAGE_SIZE != 0) {
            return Next::Return(errno(if self.files.contains_key(&fd) {
                Errno::EINVAL
            } else {
                Errno::EBADF
            }));
        }
        let floor = page_up(self.brk).unwrap_or(u64::MAX);
        let fixed = flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0;
        let start = if fixed {
            let Some(end) = addr.checked_add(len) else {
                return Next::Return(errno(Errno::ENOMEM));
            };
            if addr % PAGE_SIZE != 0 {
                return Next::Return(errno(Errno::EINVAL));
            }
            // Fixed mappings only inside the mmap area, never over the program, heap or stack.
            if addr < floor || end > self.stack_bottom {
                return Next::Return(errno(Errno::ENOMEM));
            }
            if flags & libc::MAP_FIXED_NOREPLACE != 0 && self.mappings.overlaps(addr, end) {
                return Next::Return(errno(Errno(libc::EEXIST)));
            }
            tri!(cx.mem.discard(addr, len));
            addr
        } else {
            match self.mappings.find(len, floor, self.stack_bottom) {
                Some(a) => a,
                None => return Next::Return(errno(Errno::ENOMEM)),
            }
        };
        self.mappings.insert(start, start + len);
        if !anonymous {
            // A private file mapping: a copy of the file's bytes (never written back).
            let mut data = vec![0u8; len.min(IO_CHUNK as u64 * 64) as usize];
            let got = self.files[&fd].file.read_at(&mut data, offset).unwrap_or(0);
            tri!(cx.mem.write(start, &data[..got]));
        }
        Next::Return(start as i64)
    }

    fn munmap(&mut self, addr: u64, len: u64, cx: &mut Context<'_>) -> Next {
        let Some(len) = page_up(len).filter(|l| *l > 0) else {
            return Next::Return(errno(Errno::EINVAL));
        };
        let Some(end) = addr.checked_add(len) else {
            return Next::Return(errno(Errno::EINVAL));
        };
        if addr % PAGE_SIZE != 0 {
            return Next::Return(errno(Errno::EINVAL));
        }
        for (s, e) in self.mappings.remove(addr, end) {
            let _ = cx.mem.discard(s, e - s);
        }
        Next::Return(0)
    }

    fn mprotect(&mut self, addr: u64, len: u64) -> Next {
        // Recorded as success when the range is program memory: protections inside the
        // program's memory are not enforced (see the layout module).
        let Some(len) = page_up(len) else {
            return Next::Return(errno(Errno::ENOMEM));
        };
        if addr % PAGE_SIZE != 0 {
            return Next::Return(errno(Errno::EINVAL));
        }
        if super::layout::is_user(addr, len, self.mem_size) {
            Next::Return(0)
        } else {
            Next::Return(errno(Errno::ENOMEM))
        }
    }

    fn mremap(
        &mut self,
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: u64,
        cx: &mut Context<'_>,
    ) -> Next {
        let (Some(old_len), Some(new_len)) = (page_up(old_len), page_up(new_len)) else {
            return Next::Return(errno(Errno::EINVAL));
        };
        if old % PAGE_SIZE != 0 || new_len == 0 || flags & !(libc::MREMAP_MAYMOVE as u64) != 0 {
            return Next::Return(errno(Errno::EINVAL));
        }
        let Some(old_end) = old.checked_add(old_len) else {
            return Next::Return(errno(Errno::EFAULT));
        };
        if !self.mappings.covers(old, old_end) {
            return Next::Return(errno(Errno::EFAULT));
        }
        if new_len <= old_len {
            for (s, e) in self.mappings.remove(old + new_len, old_end) {
                let _ = cx.mem.discard(s, e - s);
            }
            return Next::Return(old as i64);
        }
        // Grow in place when the pages above are free.
        let grown_end = old.saturating_add(new_len);
        if grown_end <= self.stack_bottom && !self.mappings.overlaps(old_end, grown_end) {
            self.mappings.insert(old, grown_end);
            return Next::Return(old as i64);
        }
        if flags & libc::MREMAP_MAYMOVE as u64 == 0 {
            return Next::Return(errno(Errno::ENOMEM));
        }
        let floor = page_up(self.brk).unwrap_or(u64::MAX);
        let Some(new) = self.mappings.find(new_len, floor, self.stack_bottom) else {
            return Next::Return(errno(Errno::ENOMEM));
        };
        self.mappings.insert(new, new + new_len);
        tri!(cx.mem.copy(old, new, old_len));
        for (s, e) in self.mappings.remove(old, old_end) {
            let _ = cx.mem.discard(s, e - s);
        }
        Next::Return(new as i64)
    }

    fn madvise(&mut self, addr: u64, len: u64, advice: u64, cx: &mut Context<'_>) -> Next {
        if advice == libc::MADV_DONTNEED as u64 {
            let Some(len) = page_up(len) else {
                return Next::Return(errno(Errno::EINVAL));
            };
            tri!(cx.mem.discard(addr, len));
        }
        Next::Return(0)
    }

    fn arch_prctl(&mut self, code: u64, addr: u64, cx: &mut Context<'_>) -> Next {
        const ARCH_SET_FS: u64 = 0x1002;
        const ARCH_GET_FS: u64 = 0x1003;
        match code {
            ARCH_SET_FS => {
                // Any canonical address: a bad one would only fault the program itself.
                if (addr as i64) << 16 >> 16 != addr as i64 {
                    return Next::Return(errno(Errno::EINVAL));
                }
                *cx.set_fs = Some(addr);
                Next::Return(0)
            }
            ARCH_GET_FS => {
                tri!(cx.mem.write_u64(addr, cx.fs));
                Next::Return(0)
            }
            _ => Next::Return(errno(Errno::EINVAL)),
        }
    }

    // ---- identity, time, randomness ----------------------------------------------------

    fn uname(&mut self, buf: u64, cx: &mut Context<'_>) -> Next {
        let mut uts = [0u8; 65 * 6];
        for (i, field) in UNAME.iter().enumerate() {
            uts[i * 65..i * 65 + field.len()].copy_from_slice(field.as_bytes());
        }
        tri!(cx.mem.write(buf, &uts));
        Next::Return(0)
    }

    fn getcwd(&mut self, buf: u64, size: u64, cx: &mut Context<'_>) -> Next {
        if size < 2 {
            return Next::Return(errno(Errno(libc::ERANGE)));
        }
        tri!(cx.mem.write(buf, b"/\0"));
        Next::Return(2)
    }

    fn getrandom(&mut self, buf: u64, len: u64, cx: &mut Context<'_>) -> Next {
        let mut data = vec![0u8; (len as usize).min(IO_CHUNK)];
        tri!(cx.mem.read(buf, &mut data)); // check before spending entropy
        cx.host.random(&mut data);
        tri!(cx.mem.write(buf, &data));
        Next::Return(data.len() as i64)
    }

    fn now(&mut self, clock: i32, cx: &mut Context<'_>) -> Result<(i64, i64), Errno> {
        match clock {
            libc::CLOCK_PROCESS_CPUTIME_ID | libc::CLOCK_THREAD_CPUTIME_ID => {
                // Time since start stands in for CPU time (the program is the only thread).
                let (s0, n0) = self.started.unwrap_or((0, 0));
                let (s, n) = cx.host.clock(libc::CLOCK_MONOTONIC).ok_or(Errno::EINVAL)?;
                let total = (s - s0) * 1_000_000_000 + (n - n0);
                Ok((total / 1_000_000_000, total % 1_000_000_000))
            }
            libc::CLOCK_REALTIME
            | libc::CLOCK_MONOTONIC
            | libc::CLOCK_MONOTONIC_RAW
            | libc::CLOCK_REALTIME_COARSE
            | libc::CLOCK_MONOTONIC_COARSE
            | libc::CLOCK_BOOTTIME => cx.host.clock(clock).ok_or(Errno::EINVAL),
            _ => Err(Errno::EINVAL),
        }
    }

    fn write_timespec(cx: &mut Context<'_>, addr: u64, (s, n): (i64, i64)) -> Result<(), Errno> {
        cx.mem.write_pair(addr, s as u64, n as u64)
    }

    fn clock_gettime(&mut self, clock: i32, ts: u64, cx: &mut Context<'_>) -> Next {
        let now = tri!(self.now(clock, cx));
        tri!(Self::write_timespec(cx, ts, now));
        Next::Return(0)
    }

    fn clock_getres(&mut self, ts: u64, cx: &mut Context<'_>) -> Next {
        if ts != 0 {
            tri!(Self::write_timespec(cx, ts, (0, 1)));
        }
        Next::Return(0)
    }

    fn gettimeofday(&mut self, tv: u64, cx: &mut Context<'_>) -> Next {
        if tv != 0 {
            let (s, n) = tri!(self.now(libc::CLOCK_REALTIME, cx));
            tri!(Self::write_timespec(cx, tv, (s, n / 1000)));
        }
        Next::Return(0)
    }

    fn time(&mut self, t: u64, cx: &mut Context<'_>) -> Next {
        let (s, _) = tri!(self.now(libc::CLOCK_REALTIME, cx));
        if t != 0 {
            tri!(cx.mem.write_u64(t, s as u64));
        }
        Next::Return(s)
    }

    fn read_timespec(cx: &Context<'_>, addr: u64) -> Result<Duration, Errno> {
        let (s, n) = cx.mem.read_pair(addr)?;
        let (s, n) = (s as i64, n as i64);
        if s < 0 || !(0..1_000_000_000).contains(&n) {
            return Err(Errno::EINVAL);
        }
        Ok(Duration::new(s as u64, n as u32))
    }

    fn sleep(&mut self, d: Duration, cx: &mut Context<'_>) -> Next {
        match cx.remaining {
            Some(left) if d >= left => {
                cx.host.sleep(left);
                Next::TimedOut
            }
            _ => {
                cx.host.sleep(d);
                Next::Return(0)
            }
        }
    }

    fn nanosleep(&mut self, req: u64, _rem: u64, cx: &mut Context<'_>) -> Next {
        let d = tri!(Self::read_timespec(cx, req));
        self.sleep(d, cx)
    }

    fn clock_nanosleep(&mut self, clock: i32, flags: u64, req: u64, cx: &mut Context<'_>) -> Next {
        let d = tri!(Self::read_timespec(cx, req));
        let d = if flags & libc::TIMER_ABSTIME as u64 != 0 {
            let (s, n) = tri!(self.now(clock, cx));
            d.saturating_sub(Duration::new(s.max(0) as u64, n as u32))
        } else {
            tri!(self.now(clock, cx)); // validates the clock id
            d
        };
        self.sleep(d, cx)
    }

    fn prlimit(&mut self, resource: u64, _new: u64, old: u64, cx: &mut Context<'_>) -> Next {
        const INFINITY: u64 = u64::MAX;
        let (cur, max) = match resource as i32 {
            3 => (self.stack_size, self.stack_size), // RLIMIT_STACK
            2 | 9 => (self.mem_size, self.mem_size), // RLIMIT_DATA, RLIMIT_AS
            7 => (MAX_FDS as u64, MAX_FDS as u64),   // RLIMIT_NOFILE
            6 => (1, 1),                             // RLIMIT_NPROC
            r if (0..16).contains(&r) => (INFINITY, INFINITY),
            _ => return Next::Return(errno(Errno::EINVAL)),
        };
        if old != 0 {
            tri!(cx.mem.write_pair(old, cur, max));
        }
        Next::Return(0) // new limits are accepted and ignored: the sandbox's own limits rule
    }

    // ---- signals (recorded; none is ever delivered) ------------------------------------

    fn sigaction(&mut self, sig: u64, act: u64, old: u64, cx: &mut Context<'_>) -> Next {
        if !(1..=64).contains(&sig) || sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            return Next::Return(errno(Errno::EINVAL));
        }
        let previous = self.sigactions.get(&sig).copied().unwrap_or([0; 32]);
        if act != 0 {
            let mut new = [0u8; 32];
            tri!(cx.mem.read(act, &mut new));
            self.sigactions.insert(sig, new);
        }
        if old != 0 {
            tri!(cx.mem.write(old, &previous));
        }
        Next::Return(0)
    }

    fn sigprocmask(&mut self, how: i32, set: u64, old: u64, cx: &mut Context<'_>) -> Next {
        let previous = self.sigmask;
        if set != 0 {
            let s = tri!(cx.mem.read_u64(set));
            self.sigmask = match how {
                libc::SIG_BLOCK => self.sigmask | s,
                libc::SIG_UNBLOCK => self.sigmask & !s,
                libc::SIG_SETMASK => s,
                _ => return Next::Return(errno(Errno::EINVAL)),
            };
        }
        if old != 0 {
            tri!(cx.mem.write_u64(old, previous));
        }
        Next::Return(0)
    }

    fn sigaltstack(&mut self, old: u64, cx: &mut Context<'_>) -> Next {
        if old != 0 {
            let mut ss = [0u8; 24];
            ss[8..12].copy_from_slice(&(libc::SS_DISABLE as u32).to_le_bytes());
            tri!(cx.mem.write(old, &ss));
        }
        Next::Return(0)
    }

    fn futex(&mut self, addr: u64, op: u64, val: u64, cx: &mut Context<'_>) -> Next {
        const FUTEX_WAIT: u64 = 0;
        const FUTEX_WAKE: u64 = 1;
        match op & 0x7f {
            FUTEX_WAKE => Next::Return(0), // nobody else to wake
            FUTEX_WAIT => {
                let mut v = [0u8; 4];
                tri!(cx.mem.read(addr, &mut v));
                if u64::from(u32::from_le_bytes(v)) != val & 0xffff_ffff {
                    Next::Return(errno(Errno(libc::EAGAIN)))
                } else {
                    // The only thread would wait forever.
                    Next::Return(errno(Errno(libc::EDEADLK)))
                }
            }
            _ => Next::Return(-i64::from(libc::ENOSYS)),
        }
    }
}

/// Formats one call strace-style, e.g. `write(1, "hi\n", 3) = 3`.
pub fn trace_line(call: &SyscallArgs, next: &Next, mem: &UserMemory) -> String {
    let a = call.args;
    let text = |addr: u64, len: u64| {
        let mut b = vec![0u8; len.min(32) as usize];
        match mem.read(addr, &mut b) {
            Ok(()) => format!(
                "{:?}{}",
                String::from_utf8_lossy(&b),
                if len > 32 { "..." } else { "" }
            ),
            Err(_) => format!("{addr:#x}"),
        }
    };
    let path = |addr: u64| match mem.read_cstr(addr, PATH_MAX) {
        Ok(p) => format!("{:?}", String::from_utf8_lossy(&p)),
        Err(_) => format!("{addr:#x}"),
    };
    let args = match call.nr {
        nr::WRITE => format!("{}, {}, {}", a[0] as i32, text(a[1], a[2]), a[2]),
        nr::READ => format!("{}, {:#x}, {}", a[0] as i32, a[1], a[2]),
        nr::OPEN | nr::STAT | nr::LSTAT | nr::ACCESS | nr::EXECVE | nr::READLINK => {
            format!("{}, {:#x}", path(a[0]), a[1])
        }
        nr::OPENAT | nr::NEWFSTATAT | nr::FACCESSAT | nr::READLINKAT => {
            let dir = if a[0] as i32 == libc::AT_FDCWD {
                "AT_FDCWD".to_string()
            } else {
                (a[0] as i32).to_string()
            };
            format!("{dir}, {}, {:#x}", path(a[1]), a[2])
        }
        nr::EXIT | nr::EXIT_GROUP | nr::CLOSE => format!("{}", a[0] as i32),
        nr::GETPID
        | nr::GETTID
        | nr::GETUID
        | nr::GETGID
        | nr::GETEUID
        | nr::GETEGID
        | nr::GETPPID
        | nr::SCHED_YIELD => String::new(),
        _ => a[..3]
            .iter()
            .map(|v| format!("{v:#x}"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let result = match next {
        Next::Return(v) if *v < 0 && *v > -4096 => {
            let e = std::io::Error::from_raw_os_error(-*v as i32);
            format!(
                "-1 {} ({})",
                errno_name(-*v as i32),
                e.to_string().split(" (os error").next().unwrap_or("")
            )
        }
        Next::Return(v) if call.nr == nr::MMAP || call.nr == nr::BRK || call.nr == nr::MREMAP => {
            format!("{v:#x}")
        }
        Next::Return(v) => v.to_string(),
        Next::Exit(_) => "?".into(),
        Next::Kill => "? (denied by --strict: program killed)".into(),
        Next::TimedOut => "? (time limit)".into(),
    };
    format!("{}({args}) = {result}", name(call.nr))
}

/// The symbolic name of an errno value.
pub fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::ERANGE => "ERANGE",
        libc::EDEADLK => "EDEADLK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::EPIPE => "EPIPE",
        _ => "E?",
    }
}

/// A [`Host`] with in-memory standard streams: what a library user serving requests wants.
#[derive(Clone, Debug, Default)]
pub struct BufferHost {
    /// The program's stdin.
    pub stdin: Vec<u8>,
    /// How much of `stdin` was read.
    pub stdin_pos: usize,
    /// What the program wrote to stdout.
    pub stdout: Vec<u8>,
    /// What the program wrote to stderr.
    pub stderr: Vec<u8>,
    /// Output limit per stream (writes beyond fail with EFBIG); 0 means 64 MiB.
    pub limit: usize,
    /// Do not really sleep (fuzzing).
    pub no_sleep: bool,
}

impl BufferHost {
    /// A host whose stdin holds `input`.
    pub fn with_input(input: &[u8]) -> Self {
        Self {
            stdin: input.to_vec(),
            ..Self::default()
        }
    }
}

impl Host for BufferHost {
    fn read_stdin(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.stdin[self.stdin_pos.min(self.stdin.len())..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.stdin_pos += n;
        Ok(n)
    }

    fn write_out(&mut self, fd: i32, data: &[u8]) -> std::io::Result<usize> {
        let limit = if self.limit == 0 {
            64 << 20
        } else {
            self.limit
        };
        let out = if fd == 1 {
            &mut self.stdout
        } else {
            &mut self.stderr
        };
        if out.len() + data.len() > limit {
            return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
        }
        out.extend_from_slice(data);
        Ok(data.len())
    }

    fn sleep(&mut self, d: Duration) {
        if !self.no_sleep {
            std::thread::sleep(d);
        }
    }
}

/// A [`Host`] on the VMM's own standard streams (the CLI's `exec`).
#[derive(Clone, Copy, Debug, Default)]
pub struct StdHost;

impl Host for StdHost {
    fn read_stdin(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // A raw read(2): unlike std's Stdin it returns EINTR when the watchdog kicks.
        // SAFETY: reading at most `buf.len()` bytes into a live, exclusively borrowed buffer.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn write_out(&mut self, fd: i32, data: &[u8]) -> std::io::Result<usize> {
        // SAFETY: writing `data`, a live slice, to fd 1 or 2 (checked by the dispatcher).
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::layout::USER_BASE;
    use super::*;

    struct Rig {
        mem: UserMemory,
        host: BufferHost,
        process: Process,
        fs: Option<u64>,
    }

    impl Rig {
        fn new() -> Self {
            let mem = UserMemory::new(16 << 20).unwrap();
            let process = Process::new(Policy::default(), 0x50_0000, 16 << 20, 1 << 20);
            Self {
                mem,
                host: BufferHost {
                    no_sleep: true,
                    ..BufferHost::default()
                },
                process,
                fs: None,
            }
        }

        fn call(&mut self, nr: u64, args: &[u64]) -> Next {
            let mut a = [0u64; 6];
            a[..args.len()].copy_from_slice(args);
            let mut cx = Context {
                mem: &mut self.mem,
                host: &mut self.host,
                remaining: None,
                set_fs: &mut self.fs,
                fs: 0,
            };
            self.process.dispatch(&SyscallArgs { nr, args: a }, &mut cx)
        }

        fn ret(&mut self, nr: u64, args: &[u64]) -> i64 {
            match self.call(nr, args) {
                Next::Return(v) => v,
                other => panic!("{other:?}"),
            }
        }
    }

    const BUF: u64 = USER_BASE + 0x1000;

    #[test]
    fn write_read_and_bad_pointers() {
        let mut r = Rig::new();
        r.mem.write(BUF, b"hello").unwrap();
        assert_eq!(r.ret(nr::WRITE, &[1, BUF, 5]), 5);
        assert_eq!(r.host.stdout, b"hello");
        assert_eq!(
            r.ret(nr::WRITE, &[1, 0x1000, 5]),
            -14,
            "page tables: EFAULT"
        );
        assert_eq!(r.ret(nr::WRITE, &[7, BUF, 5]), -9, "EBADF");
        r.host.stdin = b"abc".to_vec();
        assert_eq!(
            r.ret(nr::READ, &[0, 0x2000, 3]),
            -14,
            "read into the VMM area"
        );
        assert_eq!(r.host.stdin_pos, 0, "nothing consumed by a refused read");
        assert_eq!(r.ret(nr::READ, &[0, BUF, 10]), 3);
        let mut b = [0u8; 3];
        r.mem.read(BUF, &mut b).unwrap();
        assert_eq!(&b, b"abc");
        // writev gathers; a huge iovcnt is refused.
        r.mem.write(BUF + 0x100, b"XY").unwrap();
        let iov = BUF + 0x200;
        for (i, (base, len)) in [(BUF, 2u64), (BUF + 0x100, 2)].iter().enumerate() {
            r.mem.write_u64(iov + i as u64 * 16, *base).unwrap();
            r.mem.write_u64(iov + i as u64 * 16 + 8, *len).unwrap();
        }
        assert_eq!(r.ret(nr::WRITEV, &[2, iov, 2]), 4);
        assert_eq!(r.host.stderr, b"abXY");
        assert_eq!(r.ret(nr::WRITEV, &[2, iov, 5000]), -22);
    }

    #[test]
    fn heap_and_mappings_stay_inside_memory() {
        let mut r = Rig::new();
        let start = r.ret(nr::BRK, &[0]) as u64;
        assert_eq!(start, 0x50_0000);
        assert_eq!(r.ret(nr::BRK, &[start + 0x3000]) as u64, start + 0x3000);
        assert_eq!(r.ret(nr::BRK, &[1 << 40]) as u64, start + 0x3000, "refused");
        let a = r.ret(
            nr::MMAP,
            &[
                0,
                0x10000,
                3,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        );
        assert!(a > 0 && (a as u64) < (15 << 20));
        r.mem.write(a as u64, &[1; 16]).unwrap();
        assert_eq!(r.ret(nr::MUNMAP, &[a as u64, 0x10000]), 0);
        let b = r.ret(
            nr::MMAP,
            &[
                0,
                0x10000,
                3,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        );
        assert_eq!(a, b, "the freed range is reused");
        let mut z = [9u8; 16];
        r.mem.read(b as u64, &mut z).unwrap();
        assert_eq!(z, [0; 16], "and reads zero again");
        // More than the whole guest: ENOMEM, nothing on the host.
        assert_eq!(r.ret(nr::MMAP, &[0, 64 << 20, 3, 0x22, u64::MAX, 0]), -12);
        // Fixed mappings may not cover the program or the stack.
        assert_eq!(
            r.ret(nr::MMAP, &[0x40_0000, 0x1000, 3, 0x32, u64::MAX, 0]),
            -12
        );
        // mremap grows by moving and keeps the contents.
        r.mem.write(b as u64, b"keep").unwrap();
        let c = r.ret(
            nr::MREMAP,
            &[b as u64, 0x10000, 0x40000, libc::MREMAP_MAYMOVE as u64],
        );
        assert!(c > 0);
        let mut k = [0u8; 4];
        r.mem.read(c as u64, &mut k).unwrap();
        assert_eq!(&k, b"keep");
        assert_eq!(
            r.ret(nr::MREMAP, &[0x40_0000, 0x1000, 0x2000, 1]),
            -14,
            "not a mapping"
        );
        let huge = u64::MAX - 0xfff;
        assert_eq!(
            r.ret(nr::MREMAP, &[c as u64, 0x1000, huge, 1]),
            -12,
            "no overflow, ENOMEM"
        );
    }

    #[test]
    fn denied_calls_and_strict_mode() {
        let mut r = Rig::new();
        assert_eq!(r.ret(nr::SOCKET, &[2, 1, 0]), -38);
        assert_eq!(r.ret(nr::EXECVE, &[BUF, 0, 0]), -38);
        assert_eq!(r.ret(nr::FORK, &[]), -38);
        assert_eq!(r.ret(9999, &[]), -38);
        r.mem.write(BUF, b"/etc/passwd\0").unwrap();
        assert_eq!(
            r.ret(nr::OPENAT, &[libc::AT_FDCWD as u64, BUF, 0]),
            -13,
            "EACCES"
        );
        assert_eq!(r.process.stats.denied, 4);
        r.process.policy.strict = true;
        assert_eq!(r.call(nr::SOCKET, &[2, 1, 0]), Next::Kill);
        // Served calls stay served in strict mode: libc start-up must work.
        assert_eq!(r.call(nr::RSEQ, &[]), Next::Return(-38));
        assert_eq!(r.call(nr::READLINK, &[BUF, BUF, 10]), Next::Return(-2));
        assert_eq!(r.call(nr::EXIT_GROUP, &[300]), Next::Exit(300 & 0xff));
    }

    #[test]
    fn identity_time_and_tls() {
        let mut r = Rig::new();
        assert_eq!(r.ret(nr::GETPID, &[]), 1);
        assert_eq!(r.ret(nr::GETUID, &[]), 1000);
        assert_eq!(r.ret(nr::UNAME, &[BUF]), 0);
        assert_eq!(r.mem.read_cstr(BUF + 65, 64).unwrap(), b"rypervisor");
        assert_eq!(
            r.ret(nr::CLOCK_GETTIME, &[libc::CLOCK_REALTIME as u64, BUF]),
            0
        );
        assert!(r.mem.read_u64(BUF).unwrap() > 1_700_000_000);
        assert_eq!(r.ret(nr::CLOCK_GETTIME, &[99, BUF]), -22);
        assert_eq!(r.ret(nr::GETRANDOM, &[BUF, 64, 0]), 64);
        assert_eq!(r.ret(nr::ARCH_PRCTL, &[0x1002, 0x60_0000]), 0);
        assert_eq!(r.fs, Some(0x60_0000));
        assert_eq!(r.ret(nr::ARCH_PRCTL, &[0x1002, 1 << 60]), -22);
        assert_eq!(r.ret(nr::IOCTL, &[1, 0x5401, BUF]), -25, "TCGETS: ENOTTY");
        assert_eq!(r.ret(nr::FSTAT, &[1, BUF]), 0);
        let mut mode = [0u8; 4];
        r.mem.read(BUF + 24, &mut mode).unwrap();
        assert_eq!(u32::from_le_bytes(mode) & libc::S_IFMT, libc::S_IFCHR);
        assert_eq!(r.ret(nr::PRLIMIT64, &[0, 3, 0, BUF]), 0);
        assert_eq!(r.mem.read_u64(BUF).unwrap(), 1 << 20);
    }

    #[test]
    fn allowed_files_read_only() {
        let dir = std::env::temp_dir().join(format!("rypervisor-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data.txt"), b"file contents").unwrap();
        let mut r = Rig::new();
        r.process.policy.allow_read(&dir).unwrap();
        let path = format!("{}/data.txt\0", dir.display());
        r.mem.write(BUF, path.as_bytes()).unwrap();
        let fd = r.ret(
            nr::OPENAT,
            &[libc::AT_FDCWD as u64, BUF, libc::O_RDONLY as u64],
        );
        assert_eq!(fd, 3);
        assert_eq!(
            r.ret(
                nr::OPENAT,
                &[libc::AT_FDCWD as u64, BUF, libc::O_RDWR as u64]
            ),
            -30
        );
        assert_eq!(r.ret(nr::READ, &[3, BUF + 0x800, 100]), 13);
        assert_eq!(r.ret(nr::FSTAT, &[3, BUF + 0x900]), 0);
        assert_eq!(r.mem.read_u64(BUF + 0x900 + 48).unwrap(), 13);
        assert_eq!(r.ret(nr::LSEEK, &[3, 5, 0]), 5);
        assert_eq!(r.ret(nr::CLOSE, &[3]), 0);
        assert_eq!(r.ret(nr::CLOSE, &[3]), -9);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mapping_bookkeeping() {
        let mut m = Mappings::default();
        m.insert(0x1000, 0x5000);
        assert_eq!(m.remove(0x2000, 0x3000), vec![(0x2000, 0x3000)]);
        assert!(m.covers(0x1000, 0x2000));
        assert!(!m.covers(0x1000, 0x4000));
        assert_eq!(m.find(0x1000, 0, 0x5000), Some(0x2000));
        assert_eq!(m.find(0x2000, 0, 0x5000), None, "no gap is big enough");
        assert_eq!(m.find(0x2000, 0, 0x8000), Some(0x6000));
        assert_eq!(m.find(0x10000, 0, 0x5000), None);
    }

    #[test]
    fn random_calls_never_panic_or_write_the_vmm_area() {
        // A deterministic stand-in for the cargo-fuzz target (fuzz/fuzz_targets/syscall.rs)
        // that runs with every `cargo test`.
        let mut r = Rig::new();
        let mut tables = vec![0u8; USER_BASE as usize];
        r.mem.ram().read(0, &mut tables).unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..50_000 {
            let nr = next() % 340;
            if nr == nr::EXIT || nr == nr::EXIT_GROUP {
                continue;
            }
            let mut args = [0u64; 6];
            for a in &mut args {
                *a = match next() % 5 {
                    0 => next(),
                    1 => next() % 64,
                    2 => USER_BASE + next() % (14 << 20),
                    3 => u64::MAX - next() % 64, // pointer arithmetic must not overflow
                    _ => next() % (USER_BASE + 0x1000),
                };
            }
            r.host.stdin = b"x".to_vec();
            r.host.stdin_pos = 0;
            r.host.stdout.clear();
            r.host.stderr.clear();
            let _ = r.call(nr, &args);
        }
        let mut after = vec![0u8; USER_BASE as usize];
        r.mem.ram().read(0, &mut after).unwrap();
        assert!(tables == after, "a system call wrote below USER_BASE");
    }
}
