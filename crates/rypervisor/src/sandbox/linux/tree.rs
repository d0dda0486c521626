//! The process tree of one sandbox: what the kernel knows about every process besides its own
//! memory and descriptors — pids, parents, process groups and sessions, exit statuses until
//! they are reaped, the signals processes send each other, and the `--max-procs` limit.
//!
//! Each process is its own micro-VM on its own VMM thread; the tree is the one object they
//! share. It needs no KVM: a process's thread registers a *waker* (which kicks its vCPU out of
//! `KVM_RUN`) and the tree calls it when a signal arrives or the tree is killed.
//!
//! Every blocking wait in the sandbox (a child's exit, a pipe, a sleep another process may
//! interrupt) waits on one event count: [`Tree::generation`] read before checking, then
//! [`Tree::wait`] until it moves. Whoever changes something a process may wait for calls
//! [`Tree::notify`]. With at most `--max-procs` waiters, waking them all is cheap, and no
//! wake-up can be lost between the check and the wait.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Errno;

/// The first program's pid (it adopts orphans, as init does).
pub const INIT: i32 = 1;
/// Default bound on processes (and, later, threads): `--max-procs`.
pub const DEFAULT_MAX_PROCS: usize = 64;
/// Pids wrap here (Linux's default `pid_max`).
const PID_MAX: i32 = 32768;

/// Kicks a process's vCPU out of the guest (and its thread out of a blocking host call).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// One process, or one thread of a process, as the tree sees it.
struct Member {
    /// The thread group (the process) it belongs to: its own pid for a process's first
    /// thread.
    tgid: i32,
    ppid: i32,
    pgid: i32,
    sid: i32,
    /// The wait status once it has ended, until its parent reaps it.
    zombie: Option<i32>,
    /// Signals sent by other processes, not yet taken by the process (bit `n - 1`).
    incoming: u64,
    /// The signal its parent gets when it ends (`SIGCHLD` for `fork`).
    exit_signal: i32,
    /// It is a `vfork` child that has neither exec'd nor ended: its parent waits.
    vfork: bool,
    /// Its SIGCHLD is ignored (or `SA_NOCLDWAIT`): its children are reaped as they end.
    reaps: bool,
    /// Its thread group is ending (`exit_group`, a fatal signal): it is to stop.
    doomed: bool,
    /// On a group's first thread: the group's wait status once a thread ended it all.
    group_status: Option<i32>,
    waker: Option<Waker>,
}

impl Member {
    fn new(tgid: i32, ppid: i32, pgid: i32, sid: i32) -> Self {
        Self {
            tgid,
            ppid,
            pgid,
            sid,
            zombie: None,
            incoming: 0,
            exit_signal: libc::SIGCHLD,
            vfork: false,
            reaps: false,
            doomed: false,
            group_status: None,
            waker: None,
        }
    }

    /// A process (a thread group's first thread), not one of its other threads.
    fn leads(&self, pid: i32) -> bool {
        self.tgid == pid
    }
}

struct State {
    /// Moves on every change a waiter may care about.
    generation: u64,
    next_pid: i32,
    members: BTreeMap<i32, Member>,
    /// The whole tree is ending (the first program ended, or the time limit).
    killed: bool,
    /// The VMM threads of the processes after the first.
    threads: Vec<JoinHandle<()>>,
}

/// Which processes a `kill` or `wait` means (`pid` > 0, 0, -1, < -1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// One process.
    Pid(i32),
    /// A process group (`0`: the caller's).
    Group(i32),
    /// Every process (`-1`: all the caller may signal, or any child).
    All,
}

impl Target {
    /// Linux's reading of a pid argument, for `caller` (whose group `0` means).
    pub fn from_arg(pid: i32, caller_group: i32) -> Self {
        match pid {
            -1 => Target::All,
            0 => Target::Group(caller_group),
            p if p < 0 => Target::Group(p.checked_neg().unwrap_or(i32::MAX)),
            p => Target::Pid(p),
        }
    }
}

/// The shared process table.
pub struct Tree {
    state: Mutex<State>,
    changed: Condvar,
    max: usize,
    deadline: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// Wait status of a process that exited with `code`.
pub fn exited_status(code: i32) -> i32 {
    (code & 0xff) << 8
}

/// Wait status of a process killed by `sig`.
pub fn signaled_status(sig: i32) -> i32 {
    sig & 0x7f
}

impl Tree {
    /// A tree holding the first program (pid 1, its own group and session), for at most `max`
    /// processes.
    pub fn new(max: usize) -> Arc<Self> {
        let members = BTreeMap::from([(INIT, Member::new(INIT, 0, INIT, INIT))]);
        Arc::new(Self {
            state: Mutex::new(State {
                generation: 0,
                next_pid: INIT + 1,
                members,
                killed: false,
                threads: Vec::new(),
            }),
            changed: Condvar::new(),
            max: max.clamp(1, (PID_MAX - 2) as usize),
            deadline: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The limit on processes.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Processes in the table (zombies included, as Linux counts them against the limit).
    pub fn len(&self) -> usize {
        self.lock().members.len()
    }

    /// Whether the table is empty (never: the first program stays).
    pub fn is_empty(&self) -> bool {
        self.lock().members.is_empty()
    }

    /// The time limit of the whole tree, as an instant.
    pub fn set_deadline(&self, deadline: Option<Instant>) {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = deadline;
    }

    /// Time left before the tree's time limit (`None`: no limit).
    pub fn remaining(&self) -> Option<Duration> {
        let d = *self.deadline.lock().unwrap_or_else(|p| p.into_inner());
        d.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The event count (read before checking a condition, then [`Tree::wait`]).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Something a process may wait for changed: wakes every waiter.
    pub fn notify(&self) {
        self.lock().generation += 1;
        self.changed.notify_all();
    }

    /// Waits until the event count moves past `seen`, at most `timeout` (`None`: no end).
    pub fn wait(&self, seen: u64, timeout: Option<Duration>) {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut state = self.lock();
        while state.generation == seen && !state.killed {
            state = match deadline {
                None => self.changed.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(at) => {
                    let now = Instant::now();
                    if now >= at {
                        return;
                    }
                    (self.changed.wait_timeout(state, at - now))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// A pid for a new child of `parent` (its group, session and exit signal inherited), or
    /// `EAGAIN` at the limit.
    pub fn add_child(&self, parent: i32, exit_signal: i32, vfork: bool) -> Result<i32, Errno> {
        let mut s = self.lock();
        if s.killed || s.members.len() >= self.max {
            return Err(Errno::EAGAIN);
        }
        let (pgid, sid, reaps) =
            (s.members.get(&parent)).map_or((INIT, INIT, false), |m| (m.pgid, m.sid, m.reaps));
        let pid = Self::free_pid(&mut s);
        let mut m = Member::new(pid, parent, pgid, sid);
        m.exit_signal = exit_signal;
        m.vfork = vfork;
        m.reaps = reaps; // the child inherits an ignored SIGCHLD
        s.members.insert(pid, m);
        Ok(pid)
    }

    /// The next pid not in use.
    fn free_pid(s: &mut State) -> i32 {
        let mut pid = s.next_pid;
        while s.members.contains_key(&pid) {
            pid = if pid >= PID_MAX { INIT + 1 } else { pid + 1 };
        }
        s.next_pid = if pid >= PID_MAX { INIT + 1 } else { pid + 1 };
        pid
    }

    /// A tid for a new thread of process `tgid` (counted against the limit), or `EAGAIN`.
    pub fn add_thread(&self, tgid: i32) -> Result<i32, Errno> {
        let mut s = self.lock();
        if s.killed || s.members.len() >= self.max {
            return Err(Errno::EAGAIN);
        }
        let leader = s.members.get(&tgid).ok_or(Errno::ESRCH)?;
        if leader.doomed {
            return Err(Errno::EAGAIN);
        }
        let (ppid, pgid, sid) = (leader.ppid, leader.pgid, leader.sid);
        let tid = Self::free_pid(&mut s);
        s.members.insert(tid, Member::new(tgid, ppid, pgid, sid));
        Ok(tid)
    }

    /// The threads of process `tgid` still running (its first one included, while it runs).
    pub fn group_size(&self, tgid: i32) -> usize {
        let s = self.lock();
        (s.members.values())
            .filter(|m| m.tgid == tgid && m.zombie.is_none())
            .count()
    }

    /// Thread `tid` (not a group's first) ended by itself: it leaves the tree.
    pub fn thread_exit(&self, tid: i32) {
        {
            let mut s = self.lock();
            if s.members.get(&tid).is_some_and(|m| !m.leads(tid)) {
                s.members.remove(&tid);
            }
        }
        self.notify();
    }

    /// Process `tgid` ends as a whole with wait status `status` (unless something ended it
    /// already): every thread is doomed and kicked.
    pub fn exit_group(&self, tgid: i32, status: i32) {
        let mut s = self.lock();
        if let Some(leader) = s.members.get_mut(&tgid) {
            leader.group_status.get_or_insert(status);
        }
        let mut wake = Vec::new();
        for m in s.members.values_mut().filter(|m| m.tgid == tgid) {
            m.doomed = true;
            wake.extend(m.waker.clone());
        }
        s.generation += 1;
        drop(s);
        for w in wake {
            w();
        }
        self.changed.notify_all();
    }

    /// Every thread of process `tgid` but `keep` is to stop (`execve`).
    pub fn doom_others(&self, tgid: i32, keep: i32) {
        let mut s = self.lock();
        let mut wake = Vec::new();
        for (pid, m) in s.members.iter_mut().filter(|(_, m)| m.tgid == tgid) {
            if *pid != keep {
                m.doomed = true;
                wake.extend(m.waker.clone());
            }
        }
        s.generation += 1;
        drop(s);
        for w in wake {
            w();
        }
        self.changed.notify_all();
    }

    /// The wait status a thread gave its whole process, if one did.
    pub fn group_status(&self, tgid: i32) -> Option<i32> {
        self.lock().members.get(&tgid).and_then(|m| m.group_status)
    }

    /// Whether `pid` is to stop: the tree ends, or its thread group does.
    pub fn killed_for(&self, pid: i32) -> bool {
        let s = self.lock();
        s.killed || s.members.get(&pid).is_some_and(|m| m.doomed)
    }

    /// Takes back a pid whose process could not be built.
    pub fn forget(&self, pid: i32) {
        self.lock().members.remove(&pid);
        self.notify();
    }

    /// Registers the waker of `pid`'s thread (after `exec`, the new vCPU's).
    pub fn set_waker(&self, pid: i32, waker: Option<Waker>) {
        if let Some(m) = self.lock().members.get_mut(&pid) {
            m.waker = waker;
        }
    }

    /// Keeps a process's VMM thread, to join when the tree ends; the ones that have ended
    /// are joined now (an unjoined thread keeps its stack mapped).
    pub fn keep_thread(&self, thread: JoinHandle<()>) {
        let mut s = self.lock();
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut s.threads)
            .into_iter()
            .partition(|t| t.is_finished());
        s.threads = running;
        s.threads.push(thread);
        drop(s);
        for t in done {
            let _ = t.join();
        }
    }

    /// Whether `pid`'s SIGCHLD is ignored (its children are reaped as they end).
    pub fn set_reaps(&self, pid: i32, reaps: bool) {
        if let Some(m) = self.lock().members.get_mut(&pid) {
            m.reaps = reaps;
        }
    }

    /// `pid` exec'd or ended: a parent waiting in `vfork` goes on.
    pub fn release_vfork(&self, pid: i32) {
        if let Some(m) = self.lock().members.get_mut(&pid) {
            m.vfork = false;
        }
        self.notify();
    }

    /// Whether `pid` is a `vfork` child its parent still waits for.
    pub fn in_vfork(&self, pid: i32) -> bool {
        self.lock().members.get(&pid).is_some_and(|m| m.vfork)
    }

    /// `pid` ended with wait status `status`: a zombie until reaped (at once if its parent
    /// ignores SIGCHLD); its children go to init; its parent gets its exit signal.
    pub fn exit(&self, pid: i32, status: i32) {
        let mut s = self.lock();
        let Some(m) = s.members.get_mut(&pid) else {
            return;
        };
        m.zombie = Some(status);
        m.vfork = false;
        m.waker = None;
        let (ppid, signal) = (m.ppid, m.exit_signal);
        let orphans: Vec<i32> = (s.members.iter())
            .filter(|(p, c)| c.ppid == pid && c.leads(**p))
            .map(|(p, _)| *p)
            .collect();
        let init_reaps = s.members.get(&INIT).is_some_and(|m| m.reaps);
        for o in orphans {
            let zombie = s.members.get(&o).is_some_and(|c| c.zombie.is_some());
            if zombie && init_reaps {
                s.members.remove(&o);
                continue;
            }
            if let Some(c) = s.members.get_mut(&o) {
                c.ppid = INIT;
            }
            if zombie {
                if let Some(init) = s.members.get_mut(&INIT) {
                    init.incoming |= 1 << (libc::SIGCHLD - 1); // a child of init has ended
                }
            }
        }
        let reaps = s.members.get(&ppid).is_some_and(|p| p.reaps);
        if reaps && pid != INIT {
            s.members.remove(&pid);
        }
        if let Some(parent) = s.members.get_mut(&ppid) {
            if (1..=64).contains(&signal) {
                parent.incoming |= 1 << (signal - 1);
                if let Some(w) = parent.waker.clone() {
                    w();
                }
            }
        }
        s.generation += 1;
        drop(s);
        self.changed.notify_all();
    }

    /// The children of `parent` that `target` names: `Ok(Some((pid, status)))` for one that
    /// has ended (removed from the table unless `keep`), `Ok(None)` when some are still
    /// running, `ECHILD` when there are none.
    pub fn reap(
        &self,
        parent: i32,
        target: Target,
        keep: bool,
    ) -> Result<Option<(i32, i32)>, Errno> {
        let mut s = self.lock();
        let mut any = false;
        let mut found = None;
        let children = (s.members.iter()).filter(|(pid, m)| m.ppid == parent && m.leads(**pid));
        for (pid, m) in children {
            let named = match target {
                Target::All => true,
                Target::Pid(p) => *pid == p,
                Target::Group(g) => m.pgid == g,
            };
            if !named {
                continue;
            }
            any = true;
            if let Some(status) = m.zombie {
                found = Some((*pid, status));
                break;
            }
        }
        match found {
            Some((pid, status)) => {
                if !keep {
                    s.members.remove(&pid);
                }
                Ok(Some((pid, status)))
            }
            None if any => Ok(None),
            None => Err(Errno::ECHILD),
        }
    }

    /// Sends `sig` (0: only check) from `from` to the processes `target` names, except `from`
    /// itself, which the caller serves (its own signals keep their `si_code`). Returns whether
    /// `from` was among them; `ESRCH` if nobody was.
    pub fn send(&self, from: i32, target: Target, sig: i32) -> Result<bool, Errno> {
        let mut s = self.lock();
        let mut hit = false;
        let mut me = false;
        let mut wake = Vec::new();
        for (pid, m) in s.members.iter_mut().filter(|(_, m)| m.zombie.is_none()) {
            let named = match target {
                Target::Pid(p) => *pid == p,
                Target::Group(g) => m.pgid == g && m.leads(*pid),
                // kill(-1): everyone but init and the caller.
                Target::All => m.leads(*pid) && *pid != INIT && *pid != from,
            };
            if !named {
                continue;
            }
            hit = true;
            if *pid == from {
                me = true;
            } else if sig > 0 {
                m.incoming |= 1 << (sig - 1);
                wake.extend(m.waker.clone());
            }
        }
        // A zombie still exists for kill(pid, 0) and kill(pid, sig): nothing happens.
        if !hit && matches!(target, Target::Pid(p) if s.members.contains_key(&p)) {
            return Ok(false);
        }
        if !hit {
            return Err(Errno::ESRCH);
        }
        s.generation += 1;
        drop(s);
        for w in wake {
            w();
        }
        self.changed.notify_all();
        Ok(me)
    }

    /// The signals others sent `pid` since the last call (and SIGKILL once the tree is killed).
    pub fn take_incoming(&self, pid: i32) -> u64 {
        let mut s = self.lock();
        let mut killed = s.killed;
        let m = s.members.get_mut(&pid);
        let bits = m.map_or(0, |m| {
            killed |= m.doomed;
            std::mem::take(&mut m.incoming)
        });
        bits | if killed { 1 << (libc::SIGKILL - 1) } else { 0 }
    }

    /// Whether signals wait for `pid` (without taking them).
    pub fn has_incoming(&self, pid: i32) -> bool {
        let s = self.lock();
        s.killed
            || s.members
                .get(&pid)
                .is_some_and(|m| m.incoming != 0 || m.doomed)
    }

    /// Whether the tree is ending.
    pub fn killed(&self) -> bool {
        self.lock().killed
    }

    /// Ends every process: SIGKILL for all, each kicked.
    pub fn kill_all(&self) {
        let mut s = self.lock();
        s.killed = true;
        s.generation += 1;
        let wakers: Vec<Waker> = s.members.values().filter_map(|m| m.waker.clone()).collect();
        drop(s);
        for w in wakers {
            w();
        }
        self.changed.notify_all();
    }

    /// After the first program ended: kills the others and joins their threads (kicking them
    /// again every few milliseconds, as a kick just before a blocking host call is missed).
    /// The tree is then init alone again (a warm sandbox runs its program again).
    pub fn end(&self) {
        self.kill_all();
        loop {
            let threads = std::mem::take(&mut self.lock().threads);
            if threads.is_empty() {
                let mut s = self.lock();
                s.members.retain(|pid, _| *pid == INIT);
                if let Some(init) = s.members.get_mut(&INIT) {
                    init.incoming = 0;
                }
                s.killed = false;
                return;
            }
            for t in threads {
                while !t.is_finished() {
                    self.kill_all();
                    std::thread::sleep(Duration::from_millis(2));
                }
                let _ = t.join();
            }
        }
    }

    /// `getppid`.
    pub fn ppid(&self, pid: i32) -> i32 {
        self.lock().members.get(&pid).map_or(0, |m| m.ppid)
    }

    /// `getpgid(pid)` (`ESRCH` for no such process).
    pub fn pgid(&self, pid: i32) -> Result<i32, Errno> {
        self.lock()
            .members
            .get(&pid)
            .map(|m| m.pgid)
            .ok_or(Errno::ESRCH)
    }

    /// `getsid(pid)`.
    pub fn sid(&self, pid: i32) -> Result<i32, Errno> {
        self.lock()
            .members
            .get(&pid)
            .map(|m| m.sid)
            .ok_or(Errno::ESRCH)
    }

    /// `setpgid(pid, pgid)` called by `caller` (0s already replaced): itself or a child of its
    /// session, into a group of that session (or a new one named after `pid`).
    pub fn setpgid(&self, caller: i32, pid: i32, pgid: i32) -> Result<(), Errno> {
        let mut s = self.lock();
        let caller_sid = s.members.get(&caller).map_or(INIT, |m| m.sid);
        let m = s.members.get(&pid).ok_or(Errno::ESRCH)?;
        if pid != caller && m.ppid != caller {
            return Err(Errno::ESRCH);
        }
        if m.pgid == pgid {
            return Ok(()); // already there
        }
        if m.sid != caller_sid || m.sid == pid {
            return Err(Errno::EPERM); // another session, or a session leader
        }
        let group_exists = pgid == pid
            || s.members
                .values()
                .any(|o| o.pgid == pgid && o.sid == caller_sid);
        if !group_exists {
            return Err(Errno::EPERM);
        }
        if let Some(m) = s.members.get_mut(&pid) {
            m.pgid = pgid;
        }
        Ok(())
    }

    /// `setsid` for `pid`: a new session and group named after it, unless it leads a group.
    pub fn setsid(&self, pid: i32) -> Result<i32, Errno> {
        let mut s = self.lock();
        if s.members.values().any(|m| m.pgid == pid) {
            return Err(Errno::EPERM);
        }
        let m = s.members.get_mut(&pid).ok_or(Errno::ESRCH)?;
        (m.pgid, m.sid) = (pid, pid);
        Ok(pid)
    }

    /// Live (not ended) processes.
    pub fn running(&self) -> usize {
        let s = self.lock();
        (s.members.iter())
            .filter(|(pid, m)| m.zombie.is_none() && m.leads(**pid))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_reaped_once_with_their_status() {
        let t = Tree::new(4);
        let a = t.add_child(INIT, libc::SIGCHLD, false).unwrap();
        let b = t.add_child(INIT, libc::SIGCHLD, false).unwrap();
        assert_eq!((a, b), (2, 3));
        assert_eq!(t.reap(INIT, Target::All, false), Ok(None), "both still run");
        t.exit(b, exited_status(7));
        assert_eq!(t.take_incoming(INIT), 1 << (libc::SIGCHLD - 1));
        assert_eq!(t.reap(INIT, Target::Pid(a), false), Ok(None));
        assert_eq!(t.reap(INIT, Target::All, true), Ok(Some((b, 7 << 8))));
        assert_eq!(t.reap(INIT, Target::All, false), Ok(Some((b, 7 << 8))));
        assert_eq!(t.reap(INIT, Target::Pid(b), false), Err(Errno::ECHILD));
        assert_eq!(t.reap(a, Target::All, false), Err(Errno::ECHILD));
    }

    #[test]
    fn the_limit_counts_zombies_and_orphans_go_to_init() {
        let t = Tree::new(3);
        let a = t.add_child(INIT, libc::SIGCHLD, false).unwrap();
        let b = t.add_child(a, libc::SIGCHLD, false).unwrap();
        assert_eq!(t.add_child(b, libc::SIGCHLD, false), Err(Errno::EAGAIN));
        t.exit(a, signaled_status(libc::SIGSEGV));
        assert_eq!(t.ppid(b), INIT, "re-parented");
        assert_eq!(
            t.add_child(INIT, 17, false),
            Err(Errno::EAGAIN),
            "a zombie counts"
        );
        assert_eq!(t.reap(INIT, Target::All, false), Ok(Some((a, 11))));
        assert!(t.add_child(INIT, 17, false).is_ok());
    }

    #[test]
    fn signals_reach_groups_and_never_the_sender_twice() {
        let t = Tree::new(8);
        let a = t.add_child(INIT, 17, false).unwrap();
        let b = t.add_child(INIT, 17, false).unwrap();
        t.setpgid(INIT, a, a).unwrap();
        t.setpgid(INIT, b, a).unwrap();
        assert_eq!(t.setpgid(INIT, b, 99), Err(Errno::EPERM), "no such group");
        assert_eq!(t.send(INIT, Target::Group(a), libc::SIGTERM), Ok(false));
        assert_eq!(t.take_incoming(a), 1 << (libc::SIGTERM - 1));
        assert_eq!(t.take_incoming(b), 1 << (libc::SIGTERM - 1));
        assert_eq!(t.send(a, Target::Pid(a), libc::SIGUSR1), Ok(true));
        assert_eq!(t.take_incoming(a), 0, "the caller serves its own");
        assert_eq!(t.send(a, Target::Pid(999), 0), Err(Errno::ESRCH));
        assert_eq!(
            t.send(a, Target::All, libc::SIGHUP),
            Ok(false),
            "not the caller"
        );
        assert_eq!(t.take_incoming(INIT), 0, "kill(-1) spares init");
        assert_eq!(t.take_incoming(b), 1 << (libc::SIGHUP - 1));
        assert_eq!(t.setsid(b), Ok(b));
        assert_eq!(t.setsid(a), Err(Errno::EPERM), "a group leader");
        assert_eq!((t.pgid(b), t.sid(b)), (Ok(b), Ok(b)));
    }

    #[test]
    fn threads_count_against_the_limit_and_end_with_their_group() {
        let t = Tree::new(4);
        let a = t.add_child(INIT, 17, false).unwrap();
        let t1 = t.add_thread(a).unwrap();
        let t2 = t.add_thread(a).unwrap();
        assert_eq!(
            t.add_thread(a),
            Err(Errno::EAGAIN),
            "init, a and two threads"
        );
        assert_eq!(t.group_size(a), 3);
        assert_eq!(t.running(), 2, "threads are not processes");
        assert_eq!(t.ppid(t1), INIT, "a thread's parent is its process's");
        t.thread_exit(t1);
        assert_eq!(t.group_size(a), 2);
        assert!(!t.killed_for(t2));
        t.exit_group(a, signaled_status(libc::SIGSEGV));
        t.exit_group(a, exited_status(0));
        assert!(t.killed_for(t2) && t.killed_for(a));
        assert_eq!(t.group_status(a), Some(11), "the first reason stays");
        assert_ne!(t.take_incoming(t2) & (1 << 8), 0);
        assert!(!t.killed_for(INIT));
        assert_eq!(t.send(INIT, Target::All, libc::SIGTERM), Ok(false));
        assert_eq!(
            t.take_incoming(t2) & (1 << 14),
            0,
            "kill(-1) goes to processes"
        );
    }

    #[test]
    fn a_wait_ends_when_something_changes() {
        let t = Tree::new(4);
        let seen = t.generation();
        let t2 = t.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            t2.notify();
        });
        let start = Instant::now();
        t.wait(seen, Some(Duration::from_secs(5)));
        assert!(start.elapsed() < Duration::from_secs(4));
        h.join().unwrap();
        let seen = t.generation();
        t.wait(seen, Some(Duration::from_millis(10)));
        t.kill_all();
        t.wait(seen, None); // returns: the tree is killed
        assert_ne!(t.take_incoming(INIT) & (1 << 8), 0, "SIGKILL for all");
    }
}
