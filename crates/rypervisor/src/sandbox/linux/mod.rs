//! The Linux ABI the sandbox speaks: the sandbox's whole "kernel".
//!
//! [`Process::dispatch`] takes the registers of one system call (RAX = number, RDI, RSI,
//! RDX, R10, R8, R9 = arguments), serves it from the process state, the program's memory
//! ([`UserMemory`], which checks every pointer) and the [`Host`] (stdin/stdout/stderr, clock,
//! randomness), and says what to do next. It needs no KVM, so unit tests and the fuzz target
//! feed it arbitrary registers and memory.
//!
//! The layer is split the way the kernel's is: [`sysno`] (numbers and names), [`errno`],
//! [`abi`] (the structures), the descriptor table [`fdtable`], then handlers by area: [`files`],
//! [`stat`] (metadata), [`dirs`] (paths, the working directory, listings), [`poll`], [`memory`],
//! [`time`],
//! [`signals`] (with `futex`), [`identity`], [`process`] (the small calls about the process
//! itself), and [`trace`] for `--trace-syscalls`; the
//! process start (argv, envp, auxv) is [`start`].
//!
//! The identity the program sees is fixed: pid 1, uid/gid 1000, host name `rypervisor`,
//! kernel `Linux 6.1.0-rypervisor x86_64`; the working directory starts where the policy says
//! (`/` unless set).

pub mod abi;
pub mod block;
pub mod children;
pub mod deliver;
pub mod dirs;
pub mod epoll;
pub mod errno;
pub mod exec;
pub mod fdtable;
pub mod files;
pub mod futex;
pub mod groups;
pub mod identity;
pub mod memory;
pub mod pipe;
pub mod poll;
pub mod process;
pub mod shared;
pub mod sigframe;
pub mod signals;
pub mod start;
pub mod stat;
pub mod sysno;
pub mod time;
pub mod trace;
pub mod tree;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use errno::Errno;
pub use identity::{UID, UNAME};

use super::exit::Exit;
use super::host::{self, Host};
use super::policy::Policy;
use super::usermem::UserMemory;
use fdtable::FdTable;
use memory::MemoryState;
use shared::Shared;
use signals::SignalState;
use tree::Tree;

pub use children::Spawn;
pub use exec::ExecRequest;

/// Largest single read or write served in one call (the program loops for more, as it must
/// on Linux too).
pub(crate) const IO_CHUNK: usize = 1 << 20;

/// One system call as the program made it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallArgs {
    /// RAX.
    pub nr: u64,
    /// RDI, RSI, RDX, R10, R8, R9.
    pub args: [u64; 6],
}

/// What the run loop does after a system call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Return this value in RAX (negative: -errno).
    Return(i64),
    /// The program has ended (exit, `--strict`, the time limit while the VMM served it).
    End(Exit),
    /// `rt_sigreturn`: the run loop resumes the state [`Process::sigreturn`] reads from the
    /// signal frame at the program's stack.
    SigReturn,
    /// Work for the run loop: a new micro-VM (`fork`) or a new image (`execve`).
    Vm(VmRequest),
}

/// What only the run loop can do, as the system call asked for it.
#[derive(Clone, Debug)]
pub enum VmRequest {
    /// Start a child process in a micro-VM of its own.
    Fork(Box<Spawn>),
    /// Replace the process's micro-VM with one running a new program.
    Exec(Box<ExecRequest>),
}

impl PartialEq for VmRequest {
    /// The same request: the same child pid, or the same program path.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (VmRequest::Fork(a), VmRequest::Fork(b)) => a.pid == b.pid,
            (VmRequest::Exec(a), VmRequest::Exec(b)) => a.path == b.path,
            _ => false,
        }
    }
}

impl Eq for VmRequest {}

/// Why a handler did not return a value: an error for the program, or the program's end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SysError {
    /// `-errno` for the program.
    Errno(Errno),
    /// The program ends.
    End(Exit),
    /// The run loop takes over.
    Vm(VmRequest),
}

impl From<Errno> for SysError {
    fn from(e: Errno) -> Self {
        SysError::Errno(e)
    }
}

/// What a handler returns.
pub type SysResult = Result<i64, SysError>;

/// Per-call counters.
#[derive(Clone, Debug, Default)]
pub struct SyscallStats {
    /// Calls by number.
    pub counts: BTreeMap<u64, u64>,
    /// Calls answered ENOSYS or killed by the policy.
    pub denied: u64,
}

/// Everything `dispatch` needs besides the process.
pub struct Context<'a> {
    /// Program memory.
    pub mem: &'a mut UserMemory,
    /// Host services.
    pub host: &'a mut dyn Host,
    /// Time the program has left (caps sleeps); `None` without a time limit.
    pub remaining: Option<Duration>,
    /// The vDSO's clocks as the program would read them now (`None` for a clock the time
    /// page does not carry), so a system call and the vDSO never disagree.
    pub vdso_clock: Option<&'a dyn Fn(i32) -> Option<(i64, i64)>>,
    /// How long until a signal (the alarm) interrupts a wait (`EINTR`); set by `dispatch`.
    pub interrupt: Option<Duration>,
}

/// The process the sandbox runs: everything a kernel would keep about it.
#[derive(Clone, Debug)]
pub struct Process {
    policy: Policy,
    memory: Shared<MemoryState>,
    files: Shared<FdTable>,
    signals: SignalState,
    /// FS base (TLS), as `arch_prctl` set it.
    fs_base: u64,
    /// The FS base changed since the run loop last wrote it to the vCPU.
    fs_changed: bool,
    /// Monotonic time at start, for the CPU-time clocks.
    started: Option<(i64, i64)>,
    /// umask, the name, prctl flags.
    process: process::ProcessState,
    /// The working directory (canonical).
    cwd: Shared<PathBuf>,
    /// Its thread id (its process's pid for the first thread).
    pid: i32,
    /// Its process's pid.
    tgid: i32,
    /// `set_tid_address`'s (or `CLONE_CHILD_CLEARTID`'s) word, cleared at the thread's end.
    clear_tid: u64,
    /// It ended by `exit` while other threads of its process ran.
    thread_exit: bool,
    /// The futex wait queues its threads share.
    futexes: Arc<futex::Futexes>,
    /// The program file it runs (`execve("/proc/self/exe")` runs it again).
    exe: Option<PathBuf>,
    /// Every process of the sandbox.
    tree: Arc<Tree>,
    /// Counters.
    pub stats: SyscallStats,
}

impl Process {
    /// A process whose image ends at `image_end` in a guest of `mem_size` bytes with a
    /// stack of `stack_size` bytes at the top.
    pub fn new(policy: Policy, image_end: u64, mem_size: u64, stack_size: u64) -> Self {
        Self {
            cwd: Shared::new(policy.cwd().to_path_buf()),
            policy,
            memory: Shared::new(MemoryState::new(image_end, mem_size, stack_size)),
            files: Shared::new(FdTable::default()),
            signals: SignalState::default(),
            fs_base: 0,
            fs_changed: false,
            started: host::host_clock(libc::CLOCK_MONOTONIC),
            process: process::ProcessState::default(),
            pid: tree::INIT,
            tgid: tree::INIT,
            clear_tid: 0,
            thread_exit: false,
            exe: None,
            futexes: Arc::default(),
            tree: Tree::new(tree::DEFAULT_MAX_PROCS),
            stats: SyscallStats::default(),
        }
    }

    /// After `execve`: the new image's memory layout (it ends at `image_end`, its stack is
    /// `stack_size` at the top, the interpreter at `interp`), descriptors marked close-on-exec
    /// closed, handled signals back to their defaults, no TLS; the pid, the other
    /// descriptors, the mask, the working directory and the tree stay.
    pub fn exec_into(
        &mut self,
        image_end: u64,
        stack_size: u64,
        interp: Option<(u64, u64)>,
        name: &[u8],
    ) {
        let mut memory = MemoryState::new(image_end, self.mem_size(), stack_size);
        if let Some((start, end)) = interp {
            memory.reserve(start, end);
        }
        self.memory = Shared::new(memory);
        self.files.lock().close_on_exec();
        self.signals.exec_reset();
        let chld = self.signals.action(libc::SIGCHLD);
        self.tree.set_reaps(self.tgid, chld.handler == 1); // SA_NOCLDWAIT went with the handler
        self.fs_base = 0;
        self.fs_changed = false;
        self.process.set_name(name);
    }

    /// Marks `[start, end)` as mapped (the interpreter the loader placed there).
    pub fn reserve(&mut self, start: u64, end: u64) {
        self.memory.lock().reserve(start, end);
    }

    /// Stack bottom (the stack is `[stack_bottom, mem_size)`).
    pub fn stack_bottom(&self) -> u64 {
        self.memory.lock().stack_bottom()
    }

    /// Current program break.
    pub fn brk(&self) -> u64 {
        self.memory.lock().brk()
    }

    /// What `fd` refers to (taken out of the table: the lock is not held while it is used).
    pub(crate) fn file(&self, fd: i32) -> Result<fdtable::OpenFile, Errno> {
        self.files.lock().get(fd).cloned()
    }

    /// Guest memory size.
    pub(crate) fn mem_size(&self) -> u64 {
        self.memory.lock().mem_size()
    }

    /// Number of host files the program holds open.
    pub fn open_files(&self) -> usize {
        self.files.lock().host_files()
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The policy, to change (tests).
    pub fn policy_mut(&mut self) -> &mut Policy {
        &mut self.policy
    }

    /// The FS base the program set.
    pub fn fs_base(&self) -> u64 {
        self.fs_base
    }

    /// The program file the process runs (host path).
    pub fn set_exe(&mut self, exe: Option<PathBuf>) {
        self.exe = exe;
    }

    /// Sets the FS base (a child's `CLONE_SETTLS`; the run loop writes the vCPU's).
    pub fn set_fs_base(&mut self, base: u64) {
        self.fs_base = base;
    }

    /// The FS base if it changed since the last call (the run loop writes it to the vCPU).
    pub fn take_fs_change(&mut self) -> Option<u64> {
        std::mem::take(&mut self.fs_changed).then_some(self.fs_base)
    }

    /// Serves one system call.
    pub fn dispatch(&mut self, call: &SyscallArgs, cx: &mut Context<'_>) -> Next {
        *self.stats.counts.entry(call.nr).or_default() += 1;
        if call.nr == sysno::RT_SIGRETURN {
            return Next::SigReturn;
        }
        self.take_incoming();
        if self.signals.alarm.is_some() {
            let now = signals::now_ns(cx);
            cx.interrupt = self.alarm_in(now);
        }
        match self.serve(call, cx) {
            Ok(value) => Next::Return(value),
            Err(SysError::Errno(e)) => Next::Return(e.ret()),
            Err(SysError::End(exit)) => Next::End(exit),
            Err(SysError::Vm(request)) => Next::Vm(request),
        }
    }

    /// The whole table: one arm per call, grouped by area.
    fn serve(&mut self, call: &SyscallArgs, cx: &mut Context<'_>) -> SysResult {
        use sysno::*;
        let [a0, a1, a2, a3, a4, a5] = call.args;
        let fd = a0 as i32;
        const NOFOLLOW: u64 = libc::AT_SYMLINK_NOFOLLOW as u64;
        match call.nr {
            // Files and the standard streams.
            READ => self.read(fd, a1, a2, cx),
            WRITE => self.write(fd, a1, a2, cx),
            READV => self.readv(fd, a1, a2, cx),
            WRITEV => self.writev(fd, a1, a2, cx),
            PREAD64 => self.pread(fd, a1, a2, a3, cx),
            SENDFILE => self.sendfile(fd, a1 as i32, a2, a3, cx),
            OPEN => self.openat(libc::AT_FDCWD, a0, a1, cx),
            OPENAT => self.openat(fd, a1, a2, cx),
            CLOSE => Ok(self.files.lock().close(fd)?),
            CLOSE_RANGE => Ok(self.files.lock().close_range(a0, a1, a2)?),
            DUP => Ok(self.files.lock().dup(fd, 0, false)?),
            DUP2 => Ok(self.files.lock().dup_to(fd, a1 as i32, None)?),
            DUP3 => Ok(self.files.lock().dup_to(fd, a1 as i32, Some(a2 as i32))?),
            FSTAT => self.fstat(fd, a1, cx),
            STAT => self.newfstatat(libc::AT_FDCWD, a0, a1, 0, cx),
            LSTAT => self.newfstatat(libc::AT_FDCWD, a0, a1, NOFOLLOW, cx),
            NEWFSTATAT => self.newfstatat(fd, a1, a2, a3, cx),
            STATX => self.statx(fd, a1, a2, a4, cx),
            STATFS => self.statfs(-1, Some(a0), a1, cx),
            FSTATFS => self.statfs(fd, None, a1, cx),
            LSEEK => self.lseek(fd, a1 as i64, a2 as i32, cx),
            IOCTL => self.ioctl(fd, a1, a2, cx),
            FCNTL => Ok(self.files.lock().fcntl(fd, a1 as i32, a2)?),
            PIPE => self.pipe(a0, 0, cx),
            PIPE2 => self.pipe(a0, a1, cx),
            POLL => self.poll(a0, a1, poll::poll_timeout(a2), cx),
            EPOLL_CREATE if a0 as i32 > 0 => self.epoll_create(0),
            EPOLL_CREATE => Err(Errno::EINVAL.into()),
            EPOLL_CREATE1 => self.epoll_create(a0),
            EPOLL_CTL => self.epoll_ctl(fd, a1, a2 as i32, a3, cx),
            EPOLL_WAIT | EPOLL_PWAIT => self.epoll_wait(fd, a1, a2, poll::poll_timeout(a3), cx),
            EPOLL_PWAIT2 => self.epoll_wait(fd, a1, a2, poll::timespec_timeout(a3, cx)?, cx),
            PPOLL => self.poll(a0, a1, poll::timespec_timeout(a2, cx)?, cx),
            SELECT => self.select(a0, [a1, a2, a3], poll::timeval_timeout(a4, cx)?, cx),
            PSELECT6 => self.select(a0, [a1, a2, a3], poll::timespec_timeout(a4, cx)?, cx),
            ACCESS => self.access(libc::AT_FDCWD, a0, a1, cx),
            FACCESSAT | FACCESSAT2 => self.access(fd, a1, a2, cx),
            READLINK => self.readlink(libc::AT_FDCWD, a0, a1, a2, cx),
            READLINKAT => self.readlink(fd, a1, a2, a3, cx),
            GETXATTR => self.xattr(Some(a0), -1, false, true, cx),
            LGETXATTR => self.xattr(Some(a0), -1, false, false, cx),
            FGETXATTR => self.xattr(None, fd, false, true, cx),
            LISTXATTR => self.xattr(Some(a0), -1, true, true, cx),
            LLISTXATTR => self.xattr(Some(a0), -1, true, false, cx),
            FLISTXATTR => self.xattr(None, fd, true, true, cx),
            // Nothing is ever written back, so there is nothing to sync; advice is taken.
            FSYNC | FDATASYNC | FADVISE64 => self.file(fd).map(|_| 0).map_err(Into::into),
            // Sockets: the program has none (bash asks whether stdin is one) and may make
            // none (glibc's name service probes nscd's socket at start-up).
            GETPEERNAME | GETSOCKNAME => self.not_a_socket(fd),
            SOCKET | SOCKETPAIR => Err(Errno::EACCES.into()),
            // Directories.
            GETDENTS64 => self.getdents(libc::SYS_getdents64, fd, a1, a2, cx),
            GETDENTS => self.getdents(libc::SYS_getdents, fd, a1, a2, cx),
            CHDIR => self.chdir(a0, cx),
            FCHDIR => self.fchdir(fd),
            GETCWD => self.getcwd(a0, a1, cx),
            // Memory.
            BRK => Ok(self.memory.lock().set_brk(a0, cx) as i64),
            MMAP => self.mmap(a0, a1, a3, a4 as i32, a5, cx),
            MUNMAP => self.memory.lock().munmap(a0, a1, cx),
            MPROTECT => self.memory.lock().mprotect(a0, a1),
            MREMAP => self.memory.lock().mremap(a0, a1, a2, a3, cx),
            MADVISE => self.memory.lock().madvise(a0, a1, a2, cx),
            MINCORE => self.memory.lock().mincore(a0, a1, a2, cx),
            // Locking pages in RAM: taken (guest memory is the VMM's; nothing pages it out
            // but the host itself).
            MLOCK | MUNLOCK | MLOCK2 => cx.mem.check(a0, a1).map(|_| 0).map_err(Into::into),
            MLOCKALL | MUNLOCKALL => Ok(0),
            // Identity, limits, randomness, TLS.
            ARCH_PRCTL => self.arch_prctl(a0, a1, cx),
            SET_TID_ADDRESS => {
                self.clear_tid = a0;
                Ok(i64::from(self.pid))
            }
            GETTID => Ok(i64::from(self.pid)),
            GETPID => Ok(i64::from(self.tgid)),
            GETPPID => Ok(i64::from(self.tree.ppid(self.tgid))),
            GETUID | GETGID | GETEUID | GETEGID => Ok(UID),
            SET_ROBUST_LIST => Ok(0),
            SETUID | SETGID => identity::set_ids(&[a0]),
            SETREUID | SETREGID => identity::set_ids(&[a0, a1]),
            SETRESUID | SETRESGID => identity::set_ids(&[a0, a1, a2]),
            GETRESUID | GETRESGID => identity::get_res_ids([a0, a1, a2], cx),
            SETFSUID | SETFSGID => Ok(UID), // the previous id, unchanged unless it is the same
            SETGROUPS => Err(Errno::EPERM.into()),
            GETPGRP => self.group_of(0, false),
            GETPGID => self.group_of(a0, false),
            GETSID => self.group_of(a0, true),
            SETPGID => self.setpgid(a0, a1),
            SETSID => Ok(i64::from(self.tree.setsid(self.tgid)?)),
            GETGROUPS => Process::getgroups(a0, a1, cx),
            UMASK => self.umask(a0),
            PRCTL => self.prctl(a0, a1, cx),
            TIMES => self.times(a0, cx),
            GETRUSAGE => self.getrusage(a0, a1, cx),
            SYSINFO => self.sysinfo(a0, cx),
            RSEQ => Err(Errno::ENOSYS.into()), // served: "not supported"
            UNAME => identity::uname(a0, cx),
            GETRANDOM => identity::getrandom(a0, a1, cx),
            GETRLIMIT => self.prlimit(a0, a1, cx),
            PRLIMIT64 if a0 != 0 && a0 as i32 != self.tgid => Err(Errno::ESRCH.into()),
            PRLIMIT64 => self.prlimit(a1, a3, cx),
            // Time.
            CLOCK_GETTIME => self.clock_gettime(a0 as i32, a1, cx),
            CLOCK_GETRES => time::clock_getres(a1, cx),
            GETTIMEOFDAY => self.gettimeofday(a0, cx),
            TIME => self.time(a0, cx),
            NANOSLEEP => self.nanosleep(a0, a1, cx),
            CLOCK_NANOSLEEP => self.clock_nanosleep(a0 as i32, a1, a2, cx),
            SCHED_YIELD => Ok(0),
            SCHED_GETAFFINITY => self.getaffinity(a0, a1, a2, cx),
            SCHED_SETAFFINITY => self.setaffinity(a0, a1, a2, cx),
            GETCPU => Process::getcpu(a0, a1, cx),
            // Signals (delivered on the way back from a call: see `deliver`) and futexes.
            RT_SIGACTION => self.sigaction(a0, a1, a2, cx),
            RT_SIGPROCMASK => self.signals.sigprocmask(a0 as i32, a1, a2, cx),
            SIGALTSTACK => self.signals.sigaltstack(a0, a1, cx),
            RT_SIGPENDING => self.sigpending(a0, cx),
            KILL => self.kill(a0, a1),
            TKILL => self.tgkill(None, a0, a1),
            TGKILL => self.tgkill(Some(a0), a1, a2),
            ALARM => self.alarm(a0, cx),
            SETITIMER => self.itimer(a0, a1, a2, cx),
            GETITIMER => self.itimer(a0, 0, a1, cx),
            PAUSE => self.pause(cx),
            RT_SIGSUSPEND => self.sigsuspend(a0, a1, cx),
            RT_SIGTIMEDWAIT => self.sigtimedwait(a0, a1, a2, a3, cx),
            FUTEX => self.futex(call.args, cx),
            // Processes.
            FORK => self.clone_process(call.nr, [libc::SIGCHLD as u64, 0, 0, 0, 0], cx),
            VFORK => {
                let flags = (libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD) as u64;
                self.clone_process(call.nr, [flags, 0, 0, 0, 0], cx)
            }
            CLONE => self.clone_process(call.nr, [a0, a1, a2, a3, a4], cx),
            // glibc and musl fall back to clone when clone3 is not there.
            CLONE3 => Err(Errno::ENOSYS.into()),
            EXECVE => self.execve(libc::AT_FDCWD, (a0, a1, a2), 0, cx),
            EXECVEAT => self.execve(fd, (a1, a2, a3), a4, cx),
            WAIT4 => self.wait4(a0, a1, a2, a3, cx),
            WAITID => self.waitid(a0, a1, a2, a3, cx),
            // The end.
            EXIT if self.tree.group_size(self.tgid) > 1 => {
                self.thread_exit = true; // this thread alone
                Err(SysError::End(Exit::Exited(a0 as i32 & 0xff)))
            }
            EXIT | EXIT_GROUP => {
                if self.tree.group_size(self.tgid) > 1 {
                    let status = tree::exited_status(a0 as i32 & 0xff);
                    self.tree.exit_group(self.tgid, status);
                }
                Err(SysError::End(Exit::Exited(a0 as i32 & 0xff)))
            }
            _ => self.unserved(call.nr),
        }
    }

    /// A call outside the policy: ENOSYS, or the end of the program under `--strict`.
    pub(super) fn unserved(&mut self, nr: u64) -> SysResult {
        self.stats.denied += 1;
        if self.policy.strict {
            Err(SysError::End(Exit::Denied { nr }))
        } else {
            Err(Errno::ENOSYS.into())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
