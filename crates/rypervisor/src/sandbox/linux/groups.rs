//! The tree's groups: the threads of one process (a thread group: `clone(CLONE_THREAD)`,
//! `exit` of one thread against `exit_group` of all, the doom that stops them), and the
//! process groups and sessions shells use (`getpgid`, `setpgid`, `getsid`, `setsid`).

use super::tree::{Member, Tree, INIT};
use super::Errno;

impl Tree {
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
        self.doom(tgid, None, Some(status));
    }

    /// Every thread of process `tgid` but `keep` is to stop (`execve`).
    pub fn doom_others(&self, tgid: i32, keep: i32) {
        self.doom(tgid, Some(keep), None);
    }

    fn doom(&self, tgid: i32, keep: Option<i32>, status: Option<i32>) {
        let mut s = self.lock();
        if let (Some(leader), Some(status)) = (s.members.get_mut(&tgid), status) {
            leader.group_status.get_or_insert(status);
        }
        let mut wake = Vec::new();
        for (pid, m) in s.members.iter_mut().filter(|(_, m)| m.tgid == tgid) {
            if Some(*pid) != keep {
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

    /// Process `tgid`'s first thread left by `exit`; the others run on and take its signals.
    pub fn leader_left(&self, tgid: i32) {
        if let Some(m) = self.lock().members.get_mut(&tgid) {
            m.left = true;
        }
    }

    /// Kicks the doomed threads of process `tgid` but `me` again.
    pub fn kick_doomed(&self, tgid: i32, me: i32) {
        let s = self.lock();
        let wakers: Vec<_> = (s.members.iter())
            .filter(|(pid, m)| m.tgid == tgid && m.doomed && **pid != me)
            .filter_map(|(_, m)| m.waker.clone())
            .collect();
        drop(s);
        for w in wakers {
            w();
        }
    }

    /// The process a thread belongs to (`ESRCH`: none).
    pub fn tgid_of(&self, tid: i32) -> Result<i32, Errno> {
        self.lock()
            .members
            .get(&tid)
            .map(|m| m.tgid)
            .ok_or(Errno::ESRCH)
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
}
