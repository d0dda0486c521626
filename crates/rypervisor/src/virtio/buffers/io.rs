//! System calls straight between guest-memory buffers and host descriptors: `read`/`readv`,
//! `write`/`writev` and `sendmsg` over a chain's slices as `iovec`s (vm-memory's volatile I/O
//! has no vectored form), and one `recvmsg` spread over several RX buffers' payload areas.

use std::io::ErrorKind;
use std::os::fd::RawFd;

use vm_memory::volatile_memory::PtrGuardMut;

use super::Buffers;

/// Part of a device-writable buffer list: `len` bytes after its first `skip` (an RX buffer's
/// payload area, after the header the device writes last).
#[derive(Clone, Copy, Debug)]
pub struct Window<'a, 'm> {
    /// The buffers.
    pub buffers: &'a Buffers<'m>,
    /// Bytes left out at the front.
    pub skip: usize,
    /// Bytes after them (at most what the buffers hold).
    pub len: usize,
}

impl<'a, 'm> Window<'a, 'm> {
    /// All of `buffers`.
    pub fn whole(buffers: &'a Buffers<'m>) -> Self {
        Self {
            buffers,
            skip: 0,
            len: buffers.len(),
        }
    }
}

/// At most this many slices go into one [`recv_windows`] (16 RX buffers of up to 4 slices
/// each), so its iovecs live on the stack.
pub const MAX_READ_SLICES: usize = 64;

/// What one [`recv_windows`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamRead {
    /// Bytes read (those beyond `offered` are in the spill); 0 is the end of the stream.
    pub read: usize,
    /// Bytes of guest buffers offered.
    pub offered: usize,
    /// The read consumed a message that carried descriptors (SCM_RIGHTS), which the kernel
    /// then closed; a Unix stream read stops there, so a short read does not mean drained.
    pub cut_at_descriptors: bool,
}

/// One `recvmsg` from the stream socket `fd` into `windows` in order, at most `max` bytes and
/// [`MAX_READ_SLICES`] slices (one less with a `spill`), then into `spill` (host memory; may
/// be empty): a stream's bytes spread over several guest buffers in one call. A few bytes of
/// `spill` tell in the same call whether the socket had more than the guest's buffers took
/// (a read that exactly fills them cannot, and would cost one more read or one more buffer).
/// `WouldBlock` is an error of that kind.
///
/// `recvmsg` rather than `readv` for its flags: a Unix stream read stops right after a
/// message that passed descriptors, and with no room for control data the kernel closes them
/// (none is ever installed in the VMM) and says so with `MSG_CTRUNC`.
pub fn recv_windows(
    fd: RawFd,
    windows: &[Window<'_, '_>],
    max: usize,
    spill: &mut [u8],
) -> std::io::Result<StreamRead> {
    // A few slices (a packet or two, the common case) need smaller arrays to set up.
    const FEW: usize = 8;
    let slices: usize = windows.iter().map(|w| w.buffers.slice_count()).sum();
    match slices + usize::from(!spill.is_empty()) {
        0..=FEW => recv_windows_in::<FEW>(fd, windows, max, spill),
        _ => recv_windows_in::<MAX_READ_SLICES>(fd, windows, max, spill),
    }
}

/// [`recv_windows`] with room for `N` (at most [`MAX_READ_SLICES`]) guest iovecs.
fn recv_windows_in<const N: usize>(
    fd: RawFd,
    windows: &[Window<'_, '_>],
    max: usize,
    spill: &mut [u8],
) -> std::io::Result<StreamRead> {
    let mut guards: [Option<PtrGuardMut>; N] = std::array::from_fn(|_| None);
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iov = [empty; N];
    // (The last iovec is `spill`'s, if any.)
    let guest_max = N - usize::from(!spill.is_empty());
    let (mut count, mut offered) = (0, 0);
    'all: for w in windows {
        let (mut skip, mut len) = (w.skip, w.len.min(w.buffers.len().saturating_sub(w.skip)));
        for s in w.buffers.slices() {
            if offered == max || count == guest_max {
                break 'all;
            }
            if len == 0 {
                break;
            }
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            let n = (s.len() - skip).min(len).min(max - offered);
            let Ok(part) = s.subslice(skip, n) else {
                break 'all;
            };
            let guard = part.ptr_guard_mut();
            iov[count] = libc::iovec {
                iov_base: guard.as_ptr().cast(),
                iov_len: n,
            };
            guards[count] = Some(guard);
            (skip, len, offered, count) = (0, len - n, offered + n, count + 1);
        }
    }
    let mut total = count;
    if !spill.is_empty() {
        iov[count] = libc::iovec {
            iov_base: spill.as_mut_ptr().cast(),
            iov_len: spill.len(),
        };
        total += 1;
    }
    // SAFETY: a zeroed msghdr is valid (no name, no control buffer); `msg` points at `iov`,
    // which outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = total;
    // SAFETY: each of the first `count` iovecs describes a live guest-memory slice whose
    // guard is held in `guards` for the call, and the one after (if any) `spill`, borrowed
    // mutably for it; the kernel writes at most their lengths, and the flags into `msg`.
    let read = syscall(|| unsafe { libc::recvmsg(fd, &mut msg, 0) })?;
    Ok(StreamRead {
        read,
        offered,
        cut_at_descriptors: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

impl Buffers<'_> {
    /// Runs `f` with the slices as `iovec`s (at most `IOV_MAX`), their pointers kept valid
    /// for the call.
    pub fn with_iovecs<T>(&self, f: impl FnOnce(&[libc::iovec]) -> T) -> T {
        const IOV_MAX: usize = 1024;
        // One slice (most packets, frames and requests): no allocation.
        if let [one] = &self.slices[..] {
            let guard = one.ptr_guard_mut();
            let iov = libc::iovec {
                iov_base: guard.as_ptr().cast(),
                iov_len: one.len(),
            };
            return f(std::slice::from_ref(&iov));
        }
        let guards: Vec<_> = (self.slices.iter().take(IOV_MAX))
            .map(|s| (s.ptr_guard_mut(), s.len()))
            .collect();
        let iov: Vec<libc::iovec> = (guards.iter())
            .map(|(g, len)| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: *len,
            })
            .collect();
        f(&iov)
    }

    /// One `readv` of a frame from `fd` (a tap) into the buffers, with one byte of the
    /// VMM's behind them: a tap cuts a frame to the room it is given and returns only what
    /// it copied (Linux's `tun_chr_read_iter` clamps the frame's length to the iovecs'), so
    /// a frame that reaches that byte did not fit. The bytes the buffers got, and whether
    /// the frame was longer (`tap_tests.rs` shows both on a real tap).
    pub fn read_frame_from(&self, fd: RawFd) -> std::io::Result<(usize, bool)> {
        // The guest's slices and the spill byte in one call (`IOV_MAX` iovecs at most); the
        // tap is not read at all for a buffer in more slices.
        if self.slice_count() >= 1024 {
            let why = "an RX buffer in over 1023 slices";
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
        }
        let mut spill = 0u8;
        let spill_iov = libc::iovec {
            iov_base: (&mut spill as *mut u8).cast(),
            iov_len: 1,
        };
        let n = self.with_iovecs(|guest| {
            // SAFETY: the guest iovecs describe live guest memory (see `with_iovecs`), the
            // last one `spill`, which outlives the call; the kernel writes at most their
            // lengths.
            syscall(|| unsafe {
                match guest {
                    [one] => libc::readv(fd, [*one, spill_iov].as_ptr(), 2),
                    _ => {
                        let iov: Vec<_> = guest.iter().copied().chain([spill_iov]).collect();
                        libc::readv(fd, iov.as_ptr(), iov.len() as i32)
                    }
                }
            })
        })?;
        Ok((n.min(self.len()), n > self.len()))
    }

    /// One `writev` of the buffers to `fd` (a whole frame in one call; one slice by `write`).
    pub fn writev_to(&self, fd: RawFd) -> std::io::Result<usize> {
        self.with_iovecs(|iov| {
            // SAFETY: the iovecs describe live guest memory (see `with_iovecs`); the kernel
            // only reads it.
            syscall(|| unsafe {
                match iov {
                    [one] => libc::write(fd, one.iov_base, one.iov_len),
                    _ => libc::writev(fd, iov.as_ptr(), iov.len() as i32),
                }
            })
        })
    }

    /// One `sendmsg` of the buffers to the stream socket `fd` (one slice by `send`, which
    /// copies in no iovec array), without waiting and with `MSG_NOSIGNAL`: a peer that has
    /// gone gives `EPIPE`, never a SIGPIPE to the VMM (whatever the process's disposition
    /// of SIGPIPE).
    pub fn send_to(&self, fd: RawFd) -> std::io::Result<usize> {
        let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
        self.with_iovecs(|iov| {
            // SAFETY: a zeroed msghdr is valid (no name, no control data); its iovecs
            // describe live guest memory (see `with_iovecs`) that the kernel only reads.
            syscall(|| unsafe {
                if let [one] = iov {
                    return libc::send(fd, one.iov_base, one.iov_len, flags);
                }
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_ptr().cast_mut();
                msg.msg_iovlen = iov.len();
                libc::sendmsg(fd, &msg, flags)
            })
        })
    }
}

/// Runs a system call that returns a count or -1 until it is not interrupted (EINTR): the
/// count, or the OS error.
pub(crate) fn syscall(mut call: impl FnMut() -> isize) -> std::io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
