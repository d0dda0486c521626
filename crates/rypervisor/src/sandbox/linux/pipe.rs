//! Pipes inside one process (`pipe`, `pipe2`): a bounded buffer in the VMM with a read end
//! and a write end in the descriptor table, as shells and event loops use them for
//! themselves (zsh makes one at start-up; the self-pipe trick). Linux's rules: reads take
//! what is there, or see end-of-file once no write end is open; writes to a pipe nobody can
//! read fail with `EPIPE`; a full or empty pipe is `EAGAIN` with `O_NONBLOCK`. Without it, the
//! program would wait for itself forever, as it would natively: the wait lasts until the time
//! limit. Pipes between processes come with processes (the next issue).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fdtable::OpenFile;
use super::time::sleep;
use super::{Context, Errno, Process, SysError, SysResult};

/// A pipe's capacity (Linux's default).
pub const PIPE_CAPACITY: usize = 64 * 1024;

/// The buffer both ends share.
pub type PipeBuffer = Arc<Mutex<VecDeque<u8>>>;

/// One end of a pipe.
#[derive(Clone, Debug)]
pub struct PipeEnd {
    /// The shared buffer.
    pub buffer: PipeBuffer,
    /// The write end (else the read end).
    pub write: bool,
    /// `O_NONBLOCK`.
    pub nonblock: bool,
}

impl PipeEnd {
    /// Bytes waiting.
    pub fn pending(&self) -> usize {
        self.buffer.lock().map_or(0, |b| b.len())
    }
}

/// A wait only the program itself could end: it lasts until the time limit (without one,
/// as long as the program would hang natively).
fn wait_forever(cx: &mut Context<'_>) -> SysError {
    match sleep(Duration::MAX, cx) {
        Err(e) => e,
        Ok(_) => SysError::End(crate::sandbox::exit::Exit::TimedOut), // a host that never sleeps
    }
}

impl Process {
    /// `pipe` (`flags` 0) and `pipe2`: two descriptors written to `fds`.
    pub(super) fn pipe(&mut self, fds: u64, flags: u64, cx: &mut Context<'_>) -> SysResult {
        let known = (libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_DIRECT) as u64;
        if flags & !known != 0 {
            return Err(Errno::EINVAL.into());
        }
        cx.mem.check(fds, 8)?;
        let buffer: PipeBuffer = Arc::default();
        let cloexec = flags & libc::O_CLOEXEC as u64 != 0;
        let nonblock = flags & libc::O_NONBLOCK as u64 != 0;
        let end = |write| {
            OpenFile::Pipe(PipeEnd {
                buffer: buffer.clone(),
                write,
                nonblock,
            })
        };
        let read = self.files.install_open(end(false), cloexec)?;
        let write = match self.files.install_open(end(true), cloexec) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = self.files.close(read);
                return Err(e.into());
            }
        };
        let mut both = [0u8; 8];
        both[..4].copy_from_slice(&read.to_le_bytes());
        both[4..].copy_from_slice(&write.to_le_bytes());
        cx.mem.write(fds, &both)?;
        Ok(0)
    }

    /// A read from the read end `end`.
    pub(super) fn pipe_read(
        &self,
        end: &PipeEnd,
        data: &mut [u8],
        cx: &mut Context<'_>,
    ) -> Result<usize, SysError> {
        if end.write {
            return Err(Errno::EBADF.into());
        }
        {
            let mut buf = end.buffer.lock().map_err(|_| Errno::EIO)?;
            if !buf.is_empty() || data.is_empty() {
                let n = data.len().min(buf.len());
                for (d, s) in data.iter_mut().zip(buf.drain(..n)) {
                    *d = s;
                }
                return Ok(n);
            }
        }
        if !self.files.pipe_has(&end.buffer, true) {
            return Ok(0); // no write end: end of file
        }
        if end.nonblock {
            return Err(Errno::EAGAIN.into());
        }
        Err(wait_forever(cx))
    }

    /// A write to the write end `end`.
    pub(super) fn pipe_write(&self, end: &PipeEnd, data: &[u8], cx: &mut Context<'_>) -> SysResult {
        if !end.write {
            return Err(Errno::EBADF.into());
        }
        if !self.files.pipe_has(&end.buffer, false) {
            return Err(Errno::EPIPE.into()); // SIGPIPE is not delivered: the error is
        }
        {
            let mut buf = end.buffer.lock().map_err(|_| Errno::EIO)?;
            let room = PIPE_CAPACITY - buf.len();
            if room > 0 || data.is_empty() {
                let n = room.min(data.len());
                buf.extend(&data[..n]);
                return Ok(n as i64);
            }
        }
        if end.nonblock {
            return Err(Errno::EAGAIN.into());
        }
        Err(wait_forever(cx))
    }

    /// `poll`'s answer for a pipe end.
    pub(super) fn pipe_events(&self, end: &PipeEnd, events: i16) -> i16 {
        let pending = end.pending();
        let mut ready = 0;
        if end.write {
            if !self.files.pipe_has(&end.buffer, false) {
                ready |= libc::POLLERR;
            } else if pending < PIPE_CAPACITY {
                ready |= events & (libc::POLLOUT | libc::POLLWRNORM);
            }
        } else {
            if pending > 0 {
                ready |= events & (libc::POLLIN | libc::POLLRDNORM);
            }
            if !self.files.pipe_has(&end.buffer, true) {
                ready |= libc::POLLHUP;
            }
        }
        ready
    }
}
