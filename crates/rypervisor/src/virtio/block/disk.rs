//! A disk image file: positioned reads and writes straight between the file and guest memory
//! (`pread`/`pwrite`, or `preadv`/`pwritev` for a request in several buffers, over its
//! guest-memory slices: vm-memory's volatile I/O has no positioned form, and a bounce buffer
//! would cost a copy per request), `fdatasync` for FLUSH, and hole punching / zeroing for
//! DISCARD and WRITE_ZEROES.
//!
//! I/O is synchronous, on the device event loop: on a file in the host's page cache a read
//! is a memory copy, and the benchmark (benches/block.rs, docs/PERFORMANCE.md) measured the
//! device, interrupt included, at 0.6× the `pread` floor for single 4 KiB reads (0.8× the
//! floor plus one eventfd write), 0.8× at queue depth 32 and 0.85–0.95× for writes. A worker
//! thread would add a hand-off (a wake-up and a switch) per request. io_uring would save no system call at queue depth 1: the interrupt may only
//! follow the used entry, which follows the read's completion, so a request would still cost
//! one call for the read and one eventfd write. Either would win only on cold, slow storage.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::virtio::buffers::{syscall, Buffers};

/// Bytes per sector (virtio-blk's unit, whatever the image's).
pub const SECTOR: u64 = 512;

/// An open disk image.
#[derive(Debug)]
pub struct Disk {
    file: File,
    size: u64,
    read_only: bool,
    writeback: bool,
}

/// Which way a transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// File → guest memory.
    Read,
    /// Guest memory → file.
    Write,
}

impl Disk {
    /// A disk over `file` of `size` bytes (a multiple of [`SECTOR`]).
    pub fn new(file: File, size: u64, read_only: bool, writeback: bool) -> Self {
        Self {
            file,
            size,
            read_only,
            writeback,
        }
    }

    /// Bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Sectors.
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR
    }

    /// Opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// FLUSH is offered (and reaches the disk).
    pub fn writeback(&self) -> bool {
        self.writeback
    }

    /// Moves all of `data` between the file at `offset` and guest memory.
    pub fn transfer(&self, dir: Direction, offset: u64, data: &Buffers<'_>) -> std::io::Result<()> {
        // Mostly one call moves it all; only a short transfer needs a copy of the list.
        let mut n = vectored(&self.file, dir, offset, data)?;
        if n == data.len() {
            return Ok(());
        }
        let (mut rest, mut at) = (data.clone(), offset);
        loop {
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            rest.skip(n);
            at += n as u64;
            if rest.is_empty() {
                return Ok(());
            }
            n = vectored(&self.file, dir, at, &rest)?;
        }
    }

    /// Makes written data durable.
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates `[offset, offset+len)` (reads return zeros afterwards).
    pub fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        fallocate(&self.file, mode, offset, len)
    }

    /// Zeroes `[offset, offset+len)`, writing zeros where the file system cannot.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        match fallocate(&self.file, mode, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                use std::os::unix::fs::FileExt;
                let zeros = vec![0u8; 64 << 10];
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(zeros.len() as u64) as usize;
                    self.file.write_all_at(&zeros[..n], offset + done)?;
                    done += n as u64;
                }
                Ok(())
            }
            other => other,
        }
    }
}

fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: a plain system call on a descriptor we own; the result is checked.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One `preadv`/`pwritev` over the buffers' slices (at most IOV_MAX of them; `pread`/`pwrite`
/// for one).
fn vectored(
    file: &File,
    dir: Direction,
    offset: u64,
    data: &Buffers<'_>,
) -> std::io::Result<usize> {
    let (fd, off) = (file.as_raw_fd(), offset as libc::off_t);
    data.with_iovecs(|iov| {
        // One buffer (the common request) goes by `pread`/`pwrite`, which skip the kernel's
        // copy-in of the iovec array (measured: about a fifth of a 4 KiB `preadv`).
        // SAFETY: each iovec describes a live guest-memory slice (kept valid by
        // `with_iovecs` for the call); the kernel reads or writes at most those bytes.
        syscall(|| unsafe {
            match (dir, iov) {
                (Direction::Read, [one]) => libc::pread(fd, one.iov_base, one.iov_len, off),
                (Direction::Write, [one]) => libc::pwrite(fd, one.iov_base, one.iov_len, off),
                (Direction::Read, _) => libc::preadv(fd, iov.as_ptr(), iov.len() as i32, off),
                (Direction::Write, _) => libc::pwritev(fd, iov.as_ptr(), iov.len() as i32, off),
            }
        })
    })
}
