//! The host side of a sandboxed program: its standard streams, clock, sleeps and randomness,
//! behind the [`Host`] trait, with two implementations: [`StdHost`] (the VMM's own streams,
//! for the CLI's `exec`) and [`BufferHost`] (in memory, for a library serving requests).

use std::time::Duration;

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
    /// What standard stream `fd` (0–2) really is (`fstat`), if the host can say.
    fn stream_stat(&mut self, _fd: i32) -> Option<libc::stat> {
        None
    }
    /// A terminal query (`TCGETS`, `TIOCGWINSZ`) on standard stream `fd`, its answer in
    /// `out`; `ENOTTY` when the stream is not a terminal.
    fn terminal_query(&mut self, _fd: i32, _request: u64, _out: &mut [u8]) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::ENOTTY))
    }
    /// `lseek` on stdin (a regular file redirected to it is seekable); `ESPIPE` otherwise.
    fn seek_stdin(&mut self, _offset: i64, _whence: i32) -> std::io::Result<i64> {
        Err(std::io::Error::from_raw_os_error(libc::ESPIPE))
    }
    /// Waits until one of the standard streams in `fds` (fd 0–2, `poll`'s events) is ready,
    /// at most `timeout` (None: no end); fills `revents`, returns how many are ready.
    /// `Err(Interrupted)` when the watchdog kicked. By default every stream is ready.
    fn poll_streams(
        &mut self,
        fds: &mut [libc::pollfd],
        _timeout: Option<Duration>,
    ) -> std::io::Result<usize> {
        const READY: i16 = libc::POLLIN | libc::POLLOUT | libc::POLLRDNORM | libc::POLLWRNORM;
        for p in fds.iter_mut() {
            p.revents = p.events & READY;
        }
        Ok(fds.iter().filter(|p| p.revents != 0).count())
    }
    /// Bytes waiting on stdin (`FIONREAD`).
    fn stdin_pending(&mut self) -> std::io::Result<usize> {
        Ok(0)
    }
    /// The same streams for a child process on another thread (`fork`); `None` when they
    /// cannot be shared (an in-memory host: its program cannot fork).
    fn fork(&self) -> Option<Box<dyn Host + Send>> {
        None
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

    fn stdin_pending(&mut self) -> std::io::Result<usize> {
        Ok(self.stdin.len().saturating_sub(self.stdin_pos))
    }
}

/// A [`Host`] on the VMM's own standard streams (the CLI's `exec`).
#[derive(Clone, Copy, Debug, Default)]
pub struct StdHost;

impl Host for StdHost {
    fn fork(&self) -> Option<Box<dyn Host + Send>> {
        Some(Box::new(StdHost))
    }

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

    fn stream_stat(&mut self, fd: i32) -> Option<libc::stat> {
        // SAFETY: all-zero is a valid stat; fstat fills it for one of our own descriptors.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // The raw fstat(2): glibc's fstat() is newfstatat(), which the VMM's seccomp filter
        // keeps for allowed paths only.
        // SAFETY: as above; the kernel writes one stat; the result is checked.
        (unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) } == 0)
            .then_some(st)
    }

    fn terminal_query(&mut self, fd: i32, request: u64, out: &mut [u8]) -> std::io::Result<()> {
        let size = match request {
            libc::TCGETS => std::mem::size_of::<libc::termios>(),
            libc::TIOCGWINSZ => std::mem::size_of::<libc::winsize>(),
            _ => return Err(std::io::Error::from_raw_os_error(libc::ENOTTY)),
        };
        if out.len() < size {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: the request writes at most `size` bytes, which `out` holds; checked.
        if unsafe { libc::ioctl(fd, request, out.as_mut_ptr()) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn poll_streams(
        &mut self,
        fds: &mut [libc::pollfd],
        timeout: Option<Duration>,
    ) -> std::io::Result<usize> {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // The raw ppoll(2), the one the seccomp filter allows; no signal mask.
        // SAFETY: `fds` is a live array of `fds.len()` pollfds for the kernel to update and
        // `tsp` null or a live timespec; the result is checked.
        let n = unsafe {
            libc::syscall(
                libc::SYS_ppoll,
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                tsp,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn stdin_pending(&mut self) -> std::io::Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int, `n`, live; the result is checked.
        if unsafe { libc::ioctl(0, libc::FIONREAD, &mut n) } == 0 {
            Ok(n.max(0) as usize)
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn seek_stdin(&mut self, offset: i64, whence: i32) -> std::io::Result<i64> {
        // SAFETY: a plain system call on our own stdin; the result is checked.
        let r = unsafe { libc::lseek(0, offset, whence) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }
}
