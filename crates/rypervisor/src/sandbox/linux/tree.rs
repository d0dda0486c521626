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
pub(super) struct Member {
    /// The thread group (the process) it belongs to: its own pid for a process's first
    /// thread.
    pub(super) tgid: i32,
    pub(super) ppid: i32,
    pub(super) pgid: i32,
    pub(super) sid: i32,
    /// The wait status once it has ended, until its parent reaps it.
    pub(super) zombie: Option<i32>,
    /// Signals sent by other processes, not yet taken by the process (bit `n - 1`).
    pub(super) incoming: u64,
    /// The signal its parent gets when it ends (`SIGCHLD` for `fork`).
    pub(super) exit_signal: i32,
    /// It is a `vfork` child that has neither exec'd nor ended: its parent waits.
    pub(super) vfork: bool,
    /// Its SIGCHLD is ignored (or `SA_NOCLDWAIT`): its children are reaped as they end.
    pub(super) reaps: bool,
    /// Its thread group is ending (`exit_group`, a fatal signal): it is to stop.
    pub(super) doomed: bool,
    /// A process's first thread that left by `exit` while others run: signals for the
    /// process go to one of them.
    pub(super) left: bool,
    /// On a group's first thread: the group's wait status once a thread ended it all.
    pub(super) group_status: Option<i32>,
    pub(super) waker: Option<Waker>,
}

impl Member {
    pub(super) fn new(tgid: i32, ppid: i32, pgid: i32, sid: i32) -> Self {
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
            left: false,
            group_status: None,
            waker: None,
        }
    }

    /// A process (a thread group's first thread), not one of its other threads.
    pub(super) fn leads(&self, pid: i32) -> bool {
        self.tgid == pid
    }
}

pub(super) struct State {
    /// Moves on every change a waiter may care about.
    pub(super) generation: u64,
    pub(super) next_pid: i32,
    pub(super) members: BTreeMap<i32, Member>,
    /// The whole tree is ending (the first program ended, or the time limit).
    pub(super) killed: bool,
    /// The VMM threads of the processes after the first.
    pub(super) threads: Vec<JoinHandle<()>>,
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
    pub(super) changed: Condvar,
    pub(super) max: usize,
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

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
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
    pub(super) fn free_pid(s: &mut State) -> i32 {
        let mut pid = s.next_pid;
        while s.members.contains_key(&pid) {
            pid = if pid >= PID_MAX { INIT + 1 } else { pid + 1 };
        }
        s.next_pid = if pid >= PID_MAX { INIT + 1 } else { pid + 1 };
        pid
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
        let mut wake = None;
        if let Some(parent) = s.members.get_mut(&ppid) {
            if (1..=64).contains(&signal) {
                parent.incoming |= 1 << (signal - 1);
                wake = parent.waker.clone();
            }
        }
        s.generation += 1;
        drop(s);
        if let Some(w) = wake {
            w(); // outside the tree's lock (a waker takes its own)
        }
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
        let mut named = Vec::new();
        for (pid, m) in s.members.iter().filter(|(_, m)| m.zombie.is_none()) {
            let hit = match target {
                Target::Pid(p) => *pid == p,
                Target::Group(g) => m.pgid == g && m.leads(*pid),
                // kill(-1): everyone but init and the caller.
                Target::All => m.leads(*pid) && *pid != INIT && *pid != from,
            };
            if hit {
                // A first thread gone by `exit`: one of its process's others takes it.
                let to = match m.left {
                    true => (s.members.iter())
                        .find(|(t, o)| {
                            o.tgid == m.tgid && !o.left && o.zombie.is_none() && **t != *pid
                        })
                        .map_or(*pid, |(t, _)| *t),
                    false => *pid,
                };
                named.push((*pid, to));
            }
        }
        for (pid, to) in named {
            hit = true;
            if pid == from {
                me = true;
            } else if let Some(m) = s.members.get_mut(&to).filter(|_| sig > 0) {
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

    /// Live (not ended) processes.
    pub fn running(&self) -> usize {
        let s = self.lock();
        (s.members.iter())
            .filter(|(pid, m)| m.zombie.is_none() && m.leads(**pid))
            .count()
    }
}
