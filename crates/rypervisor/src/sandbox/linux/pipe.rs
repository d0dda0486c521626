//! Pipes (`pipe`, `pipe2`): a bounded buffer in the VMM shared by every process holding one of
//! its ends. Each end is an open file description (an `Arc` in the descriptor tables: `dup`
//! and `fork` share it, with its `O_NONBLOCK`); the pipe counts the descriptions of each end,
//! so it knows when the last reader or writer has gone, wherever it was.
//!
//! Linux's rules: reads take what is there, or see end-of-file once no write end is open;
//! writes of at most `PIPE_BUF` bytes are atomic; a write to a pipe nobody can read fails with
//! `EPIPE` and raises SIGPIPE; a full or empty pipe is `EAGAIN` with `O_NONBLOCK`, and
//! otherwise waits (see [`super::block`]) for another process, a signal or the time limit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::block::Restart;
use super::fdtable::OpenFile;
use super::signals::{bit, SI_USER};
use super::tree::Tree;
use super::{Context, Errno, Process, SysError, SysResult};

/// A pipe's capacity (Linux's default).
pub const PIPE_CAPACITY: usize = 64 * 1024;
/// Writes up to this size are never interleaved with others (`PIPE_BUF`).
pub const PIPE_BUF: usize = 4096;

#[derive(Debug, Default)]
struct PipeState {
    data: VecDeque<u8>,
    readers: usize,
    writers: usize,
}

/// The buffer both ends share.
#[derive(Debug)]
pub struct Pipe {
    state: Mutex<PipeState>,
    /// Woken when the pipe changes.
    tree: Arc<Tree>,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One end of a pipe: an open file description.
#[derive(Debug)]
pub struct PipeEnd {
    /// The shared buffer.
    pub pipe: Arc<Pipe>,
    /// The write end (else the read end).
    pub write: bool,
    nonblock: AtomicBool,
}

impl PipeEnd {
    fn new(pipe: &Arc<Pipe>, write: bool, nonblock: bool) -> Arc<Self> {
        {
            let mut s = pipe.lock();
            if write {
                s.writers += 1;
            } else {
                s.readers += 1;
            }
        }
        Arc::new(Self {
            pipe: pipe.clone(),
            write,
            nonblock: AtomicBool::new(nonblock),
        })
    }

    /// Bytes waiting.
    pub fn pending(&self) -> usize {
        self.pipe.lock().data.len()
    }

    /// `O_NONBLOCK`.
    pub fn nonblock(&self) -> bool {
        self.nonblock.load(Ordering::Relaxed)
    }

    /// Sets `O_NONBLOCK` (for every descriptor sharing this end, as on Linux).
    pub fn set_nonblock(&self, on: bool) {
        self.nonblock.store(on, Ordering::Relaxed);
    }

    /// Whether the other end is still open somewhere.
    fn peer_open(&self) -> bool {
        let s = self.pipe.lock();
        if self.write {
            s.readers > 0
        } else {
            s.writers > 0
        }
    }
}

impl Drop for PipeEnd {
    /// The last descriptor of this end closed (in any process): waiters see EOF or EPIPE.
    fn drop(&mut self) {
        {
            let mut s = self.pipe.lock();
            if self.write {
                s.writers -= 1;
            } else {
                s.readers -= 1;
            }
        }
        self.pipe.tree.notify();
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
        let pipe = Arc::new(Pipe {
            state: Mutex::default(),
            tree: self.tree.clone(),
        });
        let cloexec = flags & libc::O_CLOEXEC as u64 != 0;
        let nonblock = flags & libc::O_NONBLOCK as u64 != 0;
        let end = |write| OpenFile::Pipe(PipeEnd::new(&pipe, write, nonblock));
        let mut files = self.files.lock();
        let read = files.install_open(end(false), cloexec)?;
        let write = match files.install_open(end(true), cloexec) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = files.close(read);
                return Err(e.into());
            }
        };
        drop(files);
        let mut both = [0u8; 8];
        both[..4].copy_from_slice(&read.to_le_bytes());
        both[4..].copy_from_slice(&write.to_le_bytes());
        cx.mem.write(fds, &both)?;
        Ok(0)
    }

    /// A read from the read end `end`.
    pub(super) fn pipe_read(
        &mut self,
        end: &PipeEnd,
        data: &mut [u8],
        cx: &mut Context<'_>,
    ) -> Result<usize, SysError> {
        if end.write {
            return Err(Errno::EBADF.into());
        }
        let mut take = |_: &mut Self, _: &mut Context<'_>| -> Result<Option<usize>, SysError> {
            let mut s = end.pipe.lock();
            if !s.data.is_empty() || data.is_empty() {
                let n = data.len().min(s.data.len());
                for (d, b) in data.iter_mut().zip(s.data.drain(..n)) {
                    *d = b;
                }
                drop(s);
                end.pipe.tree.notify(); // room for writers
                return Ok(Some(n));
            }
            if s.writers == 0 {
                return Ok(Some(0)); // no write end: end of file
            }
            if end.nonblock() {
                return Err(Errno::EAGAIN.into());
            }
            Ok(None)
        };
        match self.block(None, Restart::WithSaRestart, cx, &mut take)? {
            Some(n) => Ok(n),
            None => Err(SysError::End(crate::sandbox::exit::Exit::TimedOut)), // never ends
        }
    }

    /// A write to the write end `end`: all of it (atomically when it is at most `PIPE_BUF`),
    /// waiting for room as needed, unless `O_NONBLOCK` or a signal cuts it short.
    pub(super) fn pipe_write(
        &mut self,
        end: &PipeEnd,
        data: &[u8],
        cx: &mut Context<'_>,
    ) -> SysResult {
        if !end.write {
            return Err(Errno::EBADF.into());
        }
        let mut done = 0usize;
        let mut put = |p: &mut Self, _: &mut Context<'_>| -> Result<Option<()>, SysError> {
            let mut s = end.pipe.lock();
            if s.readers == 0 {
                drop(s);
                // SIGPIPE for the writer (its default ends it), and EPIPE if it survives.
                p.signals.pending |= bit(libc::SIGPIPE);
                p.signals.codes[libc::SIGPIPE as usize - 1] = SI_USER;
                return Err(Errno::EPIPE.into());
            }
            let room = PIPE_CAPACITY - s.data.len();
            let rest = data.len() - done;
            // An atomic write waits until it fits whole; a larger one takes what fits.
            let n = if rest <= PIPE_BUF && room < rest {
                0
            } else {
                room.min(rest)
            };
            if n > 0 {
                s.data.extend(&data[done..done + n]);
                done += n;
                drop(s);
                end.pipe.tree.notify(); // data for readers
            }
            if done == data.len() {
                return Ok(Some(()));
            }
            if end.nonblock() {
                return match done {
                    0 => Err(Errno::EAGAIN.into()),
                    _ => Ok(Some(())),
                };
            }
            Ok(None)
        };
        let result = self.block(None, Restart::WithSaRestart, cx, &mut put);
        match result {
            Ok(Some(())) => Ok(done as i64),
            // Interrupted after some bytes went in: the count, as Linux returns.
            Err(SysError::Errno(_)) if done > 0 => Ok(done as i64),
            Err(e) => Err(e),
            Ok(None) => Err(SysError::End(crate::sandbox::exit::Exit::TimedOut)),
        }
    }

    /// `poll`'s answer for a pipe end.
    pub(super) fn pipe_events(&self, end: &PipeEnd, events: i16) -> i16 {
        let pending = end.pending();
        let mut ready = 0;
        if end.write {
            if !end.peer_open() {
                ready |= libc::POLLERR;
            } else if PIPE_CAPACITY - pending >= PIPE_BUF {
                // Room for an atomic write, as Linux reports it (not a byte at a time).
                ready |= events & (libc::POLLOUT | libc::POLLWRNORM);
            }
        } else {
            if pending > 0 {
                ready |= events & (libc::POLLIN | libc::POLLRDNORM);
            }
            if !end.peer_open() {
                ready |= libc::POLLHUP;
            }
        }
        ready
    }
}
