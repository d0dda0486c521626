//! Waiting for descriptors: `poll`, `ppoll`, `select`, `pselect6`, and `ioctl(FIONREAD)`.
//!
//! The standard streams are asked of the host
//! ([`Host::poll_streams`](crate::sandbox::host::Host::poll_streams)); a pipe is ready as
//! its buffer says, and another process changing it ends the wait; files, directories and
//! the built-in devices are always ready, as regular files are on Linux. A wait is capped at
//! the time the program has left, and reaching that cap ends the program like any other
//! wait past the time limit.

use std::time::Duration;

use super::abi::{Pollfd, Timeval};
use super::fdtable::{OpenFile, MAX_FDS};
use super::time::read_timespec;
use super::{Context, Errno, Process, SysError, SysResult};
use crate::sandbox::exit::Exit;

/// What "ready" means for a descriptor that is always ready.
const ALWAYS: i16 = libc::POLLIN | libc::POLLOUT | libc::POLLRDNORM | libc::POLLWRNORM;

impl Process {
    /// Fills `revents` of everything but the standard streams; returns how many are ready,
    /// the standard streams asked for (index in `fds`, the host's pollfd) and whether a pipe is
    /// among them.
    fn scan(&self, fds: &mut [libc::pollfd]) -> (usize, Vec<(usize, libc::pollfd)>, bool) {
        let mut ready = 0;
        let mut streams = Vec::new();
        let mut pipes = false;
        for (i, p) in fds.iter_mut().enumerate() {
            p.revents = 0;
            if p.fd < 0 {
                continue;
            }
            match self.file(p.fd).as_ref() {
                Err(_) => p.revents = libc::POLLNVAL,
                Ok(OpenFile::Std(n)) => streams.push((
                    i,
                    libc::pollfd {
                        fd: *n,
                        events: p.events,
                        revents: 0,
                    },
                )),
                Ok(OpenFile::Pipe(end)) => {
                    pipes = true;
                    p.revents = self.pipe_events(end, p.events);
                }
                Ok(_) => p.revents = p.events & ALWAYS,
            }
            ready += usize::from(p.revents != 0);
        }
        (ready, streams, pipes)
    }

    /// The shared part: `fds` in, their `revents` out; `timeout` None waits without end.
    pub(super) fn wait_ready(
        &mut self,
        fds: &mut [libc::pollfd],
        timeout: Option<Duration>,
        cx: &mut Context<'_>,
    ) -> Result<usize, SysError> {
        let began = std::time::Instant::now();
        let mut first = true;
        loop {
            let (mut ready, streams, pipes) = self.scan(fds);
            // The first look counts from the call itself (exact caps, as tests expect).
            let spent = if first {
                Duration::ZERO
            } else {
                began.elapsed()
            };
            first = false;
            let left = timeout.map(|t| t.saturating_sub(spent));
            if streams.is_empty() {
                if ready > 0 || left == Some(Duration::ZERO) {
                    return Ok(ready);
                }
                // Only another process can make a pipe ready (and alone, a wait runs its
                // course): wait for the tree to change, then look again.
                let mut probe: Vec<libc::pollfd> = fds.to_vec();
                let changed = |p: &mut Self, _: &mut Context<'_>| {
                    Ok((p.scan(&mut probe).0 > 0).then_some(()))
                };
                match self.block(left, super::block::Restart::Never, cx, changed)? {
                    Some(()) => continue,
                    None => return Ok(0),
                }
            }
            // Something is ready already: only look at the streams, do not wait. A pipe that
            // another process may fill is looked at again every few milliseconds.
            let limit = cx.remaining.map(|r| r.saturating_sub(spent));
            let slice = (pipes && self.tree.len() > 1).then_some(Duration::from_millis(10));
            let capped = match ready {
                0 => [left, limit, slice].into_iter().flatten().min(),
                _ => Some(Duration::ZERO),
            };
            let mut host: Vec<libc::pollfd> = streams.iter().map(|s| s.1).collect();
            let n = match cx.host.poll_streams(&mut host, capped) {
                Ok(n) => n,
                // Kicked: the time limit, the tree's end, or a signal (poll is never restarted).
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => match self.interrupted() {
                    None => continue,
                    Some(SysError::Errno(super::block::ERESTARTSYS)) => {
                        return Err(Errno::EINTR.into())
                    }
                    Some(end) => return Err(end),
                },
                Err(e) => return Err(Errno::from_io(&e).into()),
            };
            for ((i, _), h) in streams.iter().zip(&host) {
                fds[*i].revents = h.revents;
                ready += usize::from(h.revents != 0);
            }
            if ready > 0 || n > 0 {
                return Ok(ready);
            }
            if limit.is_some() && capped == limit {
                return Err(SysError::End(Exit::TimedOut));
            }
            if capped == left {
                return Ok(0);
            }
        }
    }

    /// `poll` (`timeout_ms`, negative: none) and `ppoll` (a timespec, 0: none; the signal
    /// mask is ignored: no signal is ever delivered).
    pub(super) fn poll(
        &mut self,
        addr: u64,
        nfds: u64,
        timeout: Option<Duration>,
        cx: &mut Context<'_>,
    ) -> SysResult {
        if nfds > MAX_FDS as u64 {
            return Err(Errno::EINVAL.into());
        }
        let mut fds: Vec<Pollfd> = cx.mem.read_array(addr, nfds as usize)?;
        let mut raw: Vec<libc::pollfd> = fds.iter().map(|p| p.0).collect();
        let ready = self.wait_ready(&mut raw, timeout, cx)?;
        for (p, r) in fds.iter_mut().zip(raw) {
            p.0.revents = r.revents;
        }
        let bytes: Vec<u8> = fds
            .iter()
            .flat_map(|p| vm_memory::ByteValued::as_slice(p).to_vec())
            .collect();
        cx.mem.write(addr, &bytes)?;
        Ok(ready as i64)
    }

    /// `select` and `pselect6`: three descriptor sets of `nfds` bits, rewritten to the ready
    /// ones.
    pub(super) fn select(
        &mut self,
        nfds: u64,
        sets: [u64; 3],
        timeout: Option<Duration>,
        cx: &mut Context<'_>,
    ) -> SysResult {
        if nfds > MAX_FDS as u64 {
            return Err(Errno::EINVAL.into());
        }
        let words = (nfds as usize).div_ceil(64);
        let mut bits = [vec![0u64; words], vec![0u64; words], vec![0u64; words]];
        for (set, &addr) in bits.iter_mut().zip(&sets) {
            if addr != 0 {
                *set = cx.mem.read_array(addr, words)?;
            }
        }
        let has = |set: &[u64], fd: usize| set[fd / 64] >> (fd % 64) & 1 != 0;
        let mut fds = Vec::new();
        for fd in 0..nfds as usize {
            let mut events = 0;
            if has(&bits[0], fd) {
                events |= libc::POLLIN;
            }
            if has(&bits[1], fd) {
                events |= libc::POLLOUT;
            }
            if has(&bits[2], fd) {
                events |= libc::POLLPRI;
            }
            if events != 0 {
                fds.push(libc::pollfd {
                    fd: fd as i32,
                    events,
                    revents: 0,
                });
            }
        }
        self.wait_ready(&mut fds, timeout, cx)?;
        if fds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
            return Err(Errno::EBADF.into());
        }
        let mut out = [vec![0u64; words], vec![0u64; words], vec![0u64; words]];
        let mut count = 0;
        let masks = [
            libc::POLLIN | libc::POLLHUP | libc::POLLERR,
            libc::POLLOUT | libc::POLLERR,
            libc::POLLPRI,
        ];
        for p in &fds {
            for (k, mask) in masks.iter().enumerate() {
                let asked = has(&bits[k], p.fd as usize);
                if asked && p.revents & mask != 0 {
                    out[k][p.fd as usize / 64] |= 1 << (p.fd % 64);
                    count += 1;
                }
            }
        }
        for (set, &addr) in out.iter().zip(&sets) {
            if addr != 0 {
                let bytes: Vec<u8> = set.iter().flat_map(|w| w.to_le_bytes()).collect();
                cx.mem.write(addr, &bytes)?;
            }
        }
        Ok(count)
    }

    /// `ioctl(FIONREAD)`: bytes waiting on stdin, or left in a file.
    pub(super) fn fionread(&self, fd: i32, arg: u64, cx: &mut Context<'_>) -> SysResult {
        cx.mem.check(arg, 4)?;
        let n = match self.file(fd)? {
            OpenFile::Std(0) => cx.host.stdin_pending().map_err(|e| Errno::from_io(&e))?,
            OpenFile::Pipe(end) if !end.write => end.pending(),
            OpenFile::Host(f) => {
                use std::io::Seek;
                let size = f.metadata().map_err(|_| Errno::EIO)?.len();
                let pos = (&*f).stream_position().map_err(|_| Errno::EIO)?;
                size.saturating_sub(pos).min(i32::MAX as u64) as usize
            }
            _ => return Err(Errno::ENOTTY.into()),
        };
        cx.mem.write(arg, &(n as i32).to_le_bytes())?;
        Ok(0)
    }
}

/// `poll`'s timeout: milliseconds, negative for none.
pub(super) fn poll_timeout(ms: u64) -> Option<Duration> {
    let ms = ms as i32;
    (ms >= 0).then(|| Duration::from_millis(ms as u64))
}

/// `ppoll`/`pselect6`'s timeout: a timespec, or none at address 0.
pub(super) fn timespec_timeout(addr: u64, cx: &Context<'_>) -> Result<Option<Duration>, Errno> {
    (addr != 0).then(|| read_timespec(cx, addr)).transpose()
}

/// `select`'s timeout: a timeval, or none at address 0.
pub(super) fn timeval_timeout(addr: u64, cx: &Context<'_>) -> Result<Option<Duration>, Errno> {
    if addr == 0 {
        return Ok(None);
    }
    let tv: Timeval = cx.mem.read_obj(addr)?;
    let (s, us) = (tv.0.tv_sec, tv.0.tv_usec);
    if s < 0 || !(0..1_000_000).contains(&us) {
        return Err(Errno::EINVAL);
    }
    Ok(Some(Duration::new(s as u64, us as u32 * 1000)))
}
