//! Processes and their relations: `fork`, `vfork` and `clone` (without `CLONE_VM`: threads
//! come later), `wait4`/`waitid`, `kill`/`tgkill` across the tree, and the ids (`getppid`,
//! process groups, sessions). The tree itself is [`super::tree`]; the new micro-VM is the
//! run loop's work, asked for with a [`Spawn`].

use std::sync::Arc;

use super::block::Restart;
use super::shared::Shared;
use super::sigframe::SigInfo;
use super::signals::{SI_TKILL, SI_USER};
use super::tree::{Target, Tree};
use super::{Context, Errno, Process, SysError, SysResult, VmRequest};

/// `clone` flags (`linux/sched.h`).
mod flag {
    pub const CSIGNAL: u64 = 0xff;
    pub const VM: u64 = 0x100;
    pub const FS: u64 = 0x200;
    pub const VFORK: u64 = 0x4000;
    pub const SETTLS: u64 = 0x8_0000;
    pub const PARENT_SETTID: u64 = 0x10_0000;
    pub const CHILD_CLEARTID: u64 = 0x20_0000;
    pub const DETACHED: u64 = 0x40_0000;
    pub const CHILD_SETTID: u64 = 0x100_0000;
    pub const SYSVSEM: u64 = 0x4_0000;
    pub const IO: u64 = 0x8000_0000;
    pub const SIGHAND: u64 = 0x800;
    pub const FILES: u64 = 0x400;
    pub const THREAD: u64 = 0x1_0000;
    /// What Linux requires with CLONE_THREAD (and what every C library passes).
    pub const THREAD_NEEDS: u64 = VM | SIGHAND | THREAD;
}

/// A new process for the run loop to start: its pid and kernel state, and how its VM starts.
#[derive(Clone, Debug)]
pub struct Spawn {
    /// The child's pid, or the new thread's tid (already in the tree).
    pub pid: i32,
    /// A thread of this process (a vCPU in the same VM), not a process.
    pub thread: bool,
    /// The child's kernel state.
    pub child: Box<Process>,
    /// The parent waits until the child execs or ends (`CLONE_VFORK`).
    pub vfork: bool,
    /// The child runs on the parent's memory (`CLONE_VM` with `CLONE_VFORK`).
    pub share_mem: bool,
    /// The child's stack pointer (0: the parent's).
    pub stack: u64,
    /// The child's FS base (`CLONE_SETTLS`).
    pub tls: Option<u64>,
    /// Where the child's memory gets its tid (`CLONE_CHILD_SETTID`).
    pub child_tid: Option<u64>,
}

/// `waitid`'s `si_code`s.
const CLD_EXITED: i32 = 1;
const CLD_KILLED: i32 = 2;

impl Process {
    /// This thread's id (the process's pid for its first thread).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The process's pid (its thread group's).
    pub fn tgid(&self) -> i32 {
        self.tgid
    }

    /// The address `set_tid_address` or `CLONE_CHILD_CLEARTID` gave: zeroed and woken when
    /// the thread ends.
    pub fn clear_tid(&self) -> u64 {
        self.clear_tid
    }

    /// Whether the thread ended by `exit` alone (its process goes on while others run).
    pub fn thread_exited(&self) -> bool {
        self.thread_exit
    }

    /// The thread's end: its `clear_tid` word zeroed and one waiter there woken, as Linux
    /// does for `pthread_join`.
    pub fn clear_child_tid(&mut self, cx: &mut Context<'_>) {
        let at = std::mem::take(&mut self.clear_tid);
        if at != 0 && cx.mem.write_obj(at, &0u32).is_ok() {
            let wake = [at, 1, 1, 0, 0, 0]; // FUTEX_WAKE one
            let _ = self.futex(wake, cx);
        }
    }

    /// The tree this process belongs to.
    pub fn tree(&self) -> &Arc<Tree> {
        &self.tree
    }

    /// A fresh tree of at most `n` processes (before the program starts).
    pub fn set_max_procs(&mut self, n: usize) {
        self.tree = Tree::new(n);
    }

    /// The child's kernel state: a copy of this one sharing the open files, with nothing
    /// pending and no alarm.
    pub fn fork_child(&self, pid: i32) -> Process {
        let mut child = self.clone();
        child.files = Shared::new(self.files.lock().share());
        child.memory = self.memory.clone();
        child.cwd = self.cwd.clone();
        child.futexes = Default::default();
        child.signals = self.signals.for_child();
        child.pid = pid;
        child.tgid = pid;
        child.clear_tid = 0;
        child.fs_changed = false;
        child.started = super::host::host_clock(libc::CLOCK_MONOTONIC);
        child.stats = Default::default();
        child
    }

    /// A new thread's kernel state: the same files, memory map, handlers, working directory
    /// and futexes as this thread's; its own tid, mask (copied) and nothing pending.
    fn thread_child(&self, tid: i32, clear_tid: u64) -> Process {
        let mut t = self.clone();
        t.files = self.files.share();
        t.memory = self.memory.share();
        t.cwd = self.cwd.share();
        t.signals = self.signals.for_thread();
        t.futexes = self.futexes.clone();
        t.pid = tid;
        t.clear_tid = clear_tid;
        t.thread_exit = false;
        t.fs_changed = false;
        t.stats = Default::default();
        t
    }

    /// A new thread: `CLONE_VM` with `CLONE_THREAD` and `CLONE_SIGHAND`.
    fn clone_thread(
        &mut self,
        [flags, stack, ptid, ctid, tls]: [u64; 5],
        cx: &mut Context<'_>,
    ) -> SysResult {
        use flag::*;
        if flags & THREAD_NEEDS != THREAD_NEEDS || flags & CSIGNAL != 0 {
            return Err(Errno::EINVAL.into());
        }
        if flags & PARENT_SETTID != 0 {
            cx.mem.check(ptid, 4)?;
        }
        let tid = self.tree.add_thread(self.tgid)?;
        if flags & PARENT_SETTID != 0 {
            cx.mem.write_obj(ptid, &(tid as u32))?;
        }
        let clear = if flags & CHILD_CLEARTID != 0 { ctid } else { 0 };
        let spawn = Spawn {
            pid: tid,
            child: Box::new(self.thread_child(tid, clear)),
            vfork: false,
            share_mem: true,
            thread: true,
            stack,
            tls: (flags & SETTLS != 0).then_some(tls),
            child_tid: (flags & CHILD_SETTID != 0).then_some(ctid),
        };
        Err(SysError::Vm(VmRequest::Fork(Box::new(spawn))))
    }

    /// `clone(flags, stack, parent_tid, child_tid, tls)`; `fork` and `vfork` are its cases.
    pub(super) fn clone_process(
        &mut self,
        nr: u64,
        [flags, stack, ptid, ctid, tls]: [u64; 5],
        cx: &mut Context<'_>,
    ) -> SysResult {
        use flag::*;
        let known = CSIGNAL | VM | FS | VFORK | SETTLS | PARENT_SETTID | CHILD_CLEARTID;
        let known = known | DETACHED | CHILD_SETTID | SYSVSEM | IO;
        if flags & THREAD != 0 && flags & !(known | THREAD | SIGHAND | FILES) == 0 {
            return self.clone_thread([flags, stack, ptid, ctid, tls], cx);
        }
        // CLONE_VM without a thread or vfork, shared tables without a thread: not served.
        if flags & !known != 0 || (flags & VM != 0 && flags & VFORK == 0) {
            return self.unserved(nr);
        }
        if flags & PARENT_SETTID != 0 {
            cx.mem.check(ptid, 4)?;
        }
        let vfork = flags & VFORK != 0;
        let exit_signal = (flags & CSIGNAL) as i32;
        let pid = self.tree.add_child(self.tgid, exit_signal, vfork)?;
        if flags & PARENT_SETTID != 0 {
            cx.mem.write_obj(ptid, &(pid as u32))?;
        }
        let spawn = Spawn {
            pid,
            child: Box::new(self.fork_child(pid)),
            vfork,
            share_mem: flags & VM != 0,
            thread: false,
            stack,
            tls: (flags & SETTLS != 0).then_some(tls),
            child_tid: (flags & CHILD_SETTID != 0).then_some(ctid),
        };
        Err(SysError::Vm(VmRequest::Fork(Box::new(spawn))))
    }

    /// A `vfork` parent's wait until its child execs or ends.
    pub fn wait_vfork(&mut self, child: i32, cx: &mut Context<'_>) -> Result<(), SysError> {
        let tree = self.tree.clone();
        let done = |_: &mut Self, _: &mut Context<'_>| Ok((!tree.in_vfork(child)).then_some(()));
        // Signals wait until the child lets go (Linux: the parent sleeps uninterruptibly).
        let all_but_kill = !super::signals::bit(libc::SIGKILL);
        let mask = std::mem::replace(&mut self.signals.mask, all_but_kill);
        let r = self.block(None, Restart::Never, cx, done);
        self.signals.mask = mask;
        r.map(|_| ())
    }

    /// `wait4(pid, status, options, rusage)`.
    pub(super) fn wait4(
        &mut self,
        pid: u64,
        status: u64,
        options: u64,
        rusage: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let known = libc::WNOHANG | libc::WUNTRACED | libc::WCONTINUED | libc::__WALL;
        let known = known | libc::__WCLONE | libc::__WNOTHREAD;
        if options & !u64::from(known as u32) != 0 {
            return Err(Errno::EINVAL.into());
        }
        if status != 0 {
            cx.mem.check(status, 4)?;
        }
        let nohang = options & libc::WNOHANG as u64 != 0;
        let target = Target::from_arg(pid as i32, self.tree.pgid(self.tgid)?);
        let Some((child, st)) = self.reap(target, nohang, false, cx)? else {
            return Ok(0);
        };
        if status != 0 {
            cx.mem.write_obj(status, &st)?;
        }
        if rusage != 0 {
            cx.mem.write_obj(rusage, &super::abi::Rusage::default())?;
        }
        Ok(i64::from(child))
    }

    /// Waits for a child `target` names that has ended (`None` with `nohang` and none yet).
    fn reap(
        &mut self,
        target: Target,
        nohang: bool,
        keep: bool,
        cx: &mut Context<'_>,
    ) -> Result<Option<(i32, i32)>, SysError> {
        let ended = |p: &mut Self, _: &mut Context<'_>| match p.tree.reap(p.tgid, target, keep)? {
            Some(found) => Ok(Some(Some(found))),
            None if nohang => Ok(Some(None)),
            None => Ok(None),
        };
        let got = self.block(None, Restart::WithSaRestart, cx, ended)?;
        Ok(got.flatten())
    }

    /// `waitid(idtype, id, infop, options, rusage)`: exits only (no child ever stops).
    pub(super) fn waitid(
        &mut self,
        idtype: u64,
        id: u64,
        info: u64,
        options: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let target = match idtype as u32 {
            libc::P_ALL => Target::All,
            libc::P_PID if id as i32 > 0 => Target::Pid(id as i32),
            libc::P_PGID if id == 0 => Target::Group(self.tree.pgid(self.tgid)?),
            libc::P_PGID if id as i32 > 0 => Target::Group(id as i32),
            _ => return Err(Errno::EINVAL.into()),
        };
        let known = libc::WNOHANG | libc::WEXITED | libc::WSTOPPED | libc::WCONTINUED;
        let known = known | libc::WNOWAIT | libc::__WALL | libc::__WCLONE | libc::__WNOTHREAD;
        if options & !u64::from(known as u32) != 0 || options & libc::WEXITED as u64 == 0 {
            return Err(Errno::EINVAL.into());
        }
        if info != 0 {
            cx.mem.check(info, 128)?;
        }
        let nohang = options & libc::WNOHANG as u64 != 0;
        let keep = options & libc::WNOWAIT as u64 != 0;
        let found = self.reap(target, nohang, keep, cx)?;
        if info != 0 {
            // None yet (WNOHANG): all zeros, as Linux writes.
            let si = found.map_or_else(SigInfo::default, |(pid, st)| {
                let (code, value) = match st & 0x7f {
                    0 => (CLD_EXITED, (st >> 8) & 0xff),
                    sig => (CLD_KILLED, sig),
                };
                SigInfo::new(libc::SIGCHLD, code, (pid, super::UID as u32), value)
            });
            cx.mem.write_obj(info, &si)?;
        }
        Ok(0)
    }

    /// `kill(pid, sig)`: to one process, a group, or everyone (`-1`); signal 0 only checks.
    pub(super) fn kill(&mut self, pid: u64, sig: u64) -> SysResult {
        if sig > 64 {
            return Err(Errno::EINVAL.into());
        }
        let group = self.tree.pgid(self.tgid)?;
        let target = Target::from_arg(pid as i32, group);
        if self.tree.send(self.pid, target, sig as i32)? {
            self.send(sig, SI_USER)?;
        }
        Ok(0)
    }

    /// `tgkill(tgid, tid, sig)` and `tkill(tid, sig)` (`tgid` None): every process has one
    /// thread, whose tid is its pid.
    pub(super) fn tgkill(&mut self, tgid: Option<u64>, tid: u64, sig: u64) -> SysResult {
        let tid = tid as i32;
        if tid <= 0 || tgid.is_some_and(|g| g as i32 <= 0) || sig > 64 {
            return Err(Errno::EINVAL.into());
        }
        if tgid.is_some_and(|g| self.tree.tgid_of(tid) != Ok(g as i32)) {
            return Err(Errno::ESRCH.into()); // no such thread in that process
        }
        if self.tree.send(self.pid, Target::Pid(tid), sig as i32)? {
            self.send(sig, SI_TKILL)?;
        }
        Ok(0)
    }

    /// `getpgid(pid)` and `getsid(pid)` (`session`).
    pub(super) fn group_of(&self, pid: u64, session: bool) -> SysResult {
        let pid = match pid as i32 {
            0 => self.tgid,
            p if p < 0 => return Err(Errno::ESRCH.into()),
            p => p,
        };
        let id = if session {
            self.tree.sid(pid)?
        } else {
            self.tree.pgid(pid)?
        };
        Ok(i64::from(id))
    }

    /// `setpgid(pid, pgid)`.
    pub(super) fn setpgid(&mut self, pid: u64, pgid: u64) -> SysResult {
        let pid = match pid as i32 {
            0 => self.tgid,
            p if p < 0 => return Err(Errno::EINVAL.into()),
            p => p,
        };
        let pgid = match pgid as i32 {
            0 => pid,
            g if g < 0 => return Err(Errno::EINVAL.into()),
            g => g,
        };
        self.tree.setpgid(self.tgid, pid, pgid)?;
        Ok(0)
    }
}
