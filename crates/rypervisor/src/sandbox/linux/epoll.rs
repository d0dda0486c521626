//! `epoll`: an interest list (descriptor → events and the caller's data) kept in an open file
//! of its own; `epoll_wait` asks the same question `poll` does (see [`super::poll`]) of the
//! descriptors in it, and reports what is ready as `epoll_event`s. Readiness is level-
//! triggered (`EPOLLET` is taken and reported level: a waiter wakes more often, never less);
//! `EPOLLONESHOT` disables an entry once it fired. Regular files and directories are always
//! ready, so Linux refuses them (`EPERM`), as here; the Go runtime, which puts every file it
//! opens into its poller, then reads them directly.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::fdtable::{OpenFile, MAX_FDS};
use super::{Context, Errno, Process, SysResult};

const EPOLL_CTL_ADD: u64 = 1;
const EPOLL_CTL_DEL: u64 = 2;
const EPOLL_CTL_MOD: u64 = 3;
const EPOLLONESHOT: u32 = 1 << 30;
/// `struct epoll_event` is packed on x86-64: a u32 and a u64.
const EVENT_SIZE: u64 = 12;

/// One entry of the interest list.
#[derive(Clone, Copy, Debug)]
struct Entry {
    events: u32,
    data: u64,
    /// The open file it was added for: an entry whose descriptor now names another (it was
    /// closed, and the number reused) is dropped, as Linux drops it with its file.
    file: usize,
    /// `EPOLLONESHOT` fired: nothing is reported until `EPOLL_CTL_MOD`.
    disabled: bool,
    /// Bumped by every `EPOLL_CTL_MOD`, so a wait never disables what was re-armed meanwhile.
    version: u64,
}

/// One epoll instance.
#[derive(Debug, Default)]
pub struct Epoll {
    interest: Mutex<BTreeMap<i32, Entry>>,
}

impl Epoll {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<i32, Entry>> {
        self.interest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Most events one wait reports (its buffer is checked for this many at most).
const MAX_EVENTS: usize = MAX_FDS as usize;

impl Process {
    /// `epoll_create1(flags)` (`epoll_create(size)` is flags 0, with a positive size).
    pub(super) fn epoll_create(&mut self, flags: u64) -> SysResult {
        if flags & !(libc::EPOLL_CLOEXEC as u64) != 0 {
            return Err(Errno::EINVAL.into());
        }
        let cloexec = flags != 0;
        let file = OpenFile::Epoll(Arc::default());
        Ok(i64::from(self.files.lock().install_open(file, cloexec)?))
    }

    fn epoll_of(&self, epfd: i32) -> Result<Arc<Epoll>, Errno> {
        match self.file(epfd)? {
            OpenFile::Epoll(e) => Ok(e),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `epoll_ctl(epfd, op, fd, event)`.
    pub(super) fn epoll_ctl(
        &mut self,
        epfd: i32,
        op: u64,
        fd: i32,
        event: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let ep = self.epoll_of(epfd)?;
        let target = self.file(fd)?;
        match &target {
            _ if fd == epfd => return Err(Errno::EINVAL.into()),
            OpenFile::Host(_) | OpenFile::Dir(_) | OpenFile::Device(_) => {
                return Err(Errno::EPERM.into()); // always ready: not pollable on Linux
            }
            OpenFile::Epoll(_) => return Err(Errno::EINVAL.into()), // nesting: not served
            OpenFile::Std(_) | OpenFile::Pipe(_) => {}
        }
        let mut interest = ep.lock();
        match op {
            EPOLL_CTL_DEL => interest.remove(&fd).map(|_| 0).ok_or(Errno::ENOENT.into()),
            EPOLL_CTL_ADD | EPOLL_CTL_MOD => {
                let mut raw = [0u8; EVENT_SIZE as usize];
                cx.mem.read(event, &mut raw)?;
                let events = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
                let mut data = [0u8; 8];
                data.copy_from_slice(&raw[4..]);
                let version = interest.get(&fd).map_or(0, |e| e.version + 1);
                let entry = Entry {
                    events,
                    data: u64::from_le_bytes(data),
                    file: target.identity(),
                    disabled: false,
                    version,
                };
                let present = interest.contains_key(&fd);
                match (op, present) {
                    (EPOLL_CTL_ADD, true) => return Err(Errno::EEXIST.into()),
                    (EPOLL_CTL_MOD, false) => return Err(Errno::ENOENT.into()),
                    _ if !present && interest.len() >= MAX_FDS as usize => {
                        return Err(Errno::ENOSPC.into())
                    }
                    _ => {}
                }
                interest.insert(fd, entry);
                Ok(0)
            }
            _ => Err(Errno::EINVAL.into()),
        }
    }

    /// `epoll_wait`/`epoll_pwait`/`epoll_pwait2` (the signal mask is not applied).
    pub(super) fn epoll_wait(
        &mut self,
        epfd: i32,
        events: u64,
        max: u64,
        timeout: Option<Duration>,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let ep = self.epoll_of(epfd)?;
        let max = max as i32;
        if max <= 0 || max as u64 > i32::MAX as u64 / EVENT_SIZE {
            return Err(Errno::EINVAL.into());
        }
        let max = (max as usize).min(MAX_EVENTS);
        cx.mem.check(events, max as u64 * EVENT_SIZE)?;
        let entries: Vec<(i32, Entry)> = (ep.lock().iter()).map(|(fd, e)| (*fd, *e)).collect();
        let mut fds: Vec<libc::pollfd> = (entries.iter())
            .map(|(fd, e)| libc::pollfd {
                fd: if e.disabled { -1 } else { *fd },
                // EPOLLIN/PRI/OUT/ERR/HUP/RDNORM... have poll's values; ERR and HUP come
                // whatever was asked.
                events: e.events as i16,
                revents: 0,
            })
            .collect();
        self.wait_ready(&mut fds, timeout, cx)?;
        let mut out = Vec::new();
        let mut interest = ep.lock();
        for (p, (fd, e)) in fds.iter().zip(&entries) {
            let now = self.file(*fd).ok().map(|f| f.identity());
            if now != Some(e.file) {
                interest.remove(fd); // closed (or the number reused): gone with its file
                continue;
            }
            if p.revents == 0 || out.len() >= max * EVENT_SIZE as usize {
                continue;
            }
            let current = interest.get_mut(fd);
            let Some(current) = current.filter(|c| c.version == e.version && !c.disabled) else {
                continue; // re-armed or fired meanwhile (another waiter)
            };
            out.extend_from_slice(&(p.revents as u16 as u32).to_le_bytes());
            out.extend_from_slice(&e.data.to_le_bytes());
            if e.events & EPOLLONESHOT != 0 {
                current.disabled = true; // until EPOLL_CTL_MOD
            }
        }
        drop(interest);
        cx.mem.write(events, &out)?;
        Ok((out.len() as u64 / EVENT_SIZE) as i64)
    }
}
