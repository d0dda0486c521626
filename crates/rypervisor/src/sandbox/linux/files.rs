//! Files: the standard streams (through the [`Host`](super::Host)) and read-only host files
//! under `--allow-read`, in one descriptor table; `read`/`write` and their vector and
//! positioned forms, `openat`, `lseek`, the `stat` family, `access`, `ioctl` — on the
//! descriptors of [`super::fdtable`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

use super::abi::{Iovec, Stat};
use super::{Context, Errno, Process, SysError, SysResult, IO_CHUNK, UID};
use crate::sandbox::exit::Exit;

/// Largest `iovcnt` (Linux's UIO_MAXIOV).
const IOV_MAX: u64 = 1024;
/// Longest path (Linux's PATH_MAX).
pub(crate) const PATH_MAX: usize = 4096;
/// The table's standard-stream and host-file kinds.
use super::fdtable::{Device, OpenFile};

/// A `struct stat` from a host file's metadata, as it is (type, permissions, links, size,
/// blocks, times to the nanosecond, device and inode: `cmp`, `ls -l`, `find -newer` and
/// `stat` see the truth), owned by the sandbox's identity.
fn host_stat(m: &std::fs::Metadata) -> Stat {
    let mut st = Stat::default();
    let s = &mut st.0;
    s.st_dev = m.dev();
    s.st_ino = m.ino();
    s.st_nlink = m.nlink();
    s.st_mode = m.mode();
    s.st_uid = UID as u32;
    s.st_gid = UID as u32;
    s.st_rdev = m.rdev();
    s.st_size = m.size() as i64;
    s.st_blksize = m.blksize() as i64;
    s.st_blocks = m.blocks() as i64;
    (s.st_atime, s.st_atime_nsec) = (m.atime(), m.atime_nsec());
    (s.st_mtime, s.st_mtime_nsec) = (m.mtime(), m.mtime_nsec());
    (s.st_ctime, s.st_ctime_nsec) = (m.ctime(), m.ctime_nsec());
    st
}

impl Process {
    /// The host file behind `fd`; a standard stream is not seekable (ESPIPE).
    fn seekable(&self, fd: i32) -> Result<&File, Errno> {
        match self.files.get(fd)? {
            OpenFile::Host(f) => Ok(f),
            OpenFile::Std(_) | OpenFile::Device(_) => Err(Errno::ESPIPE),
        }
    }

    pub(super) fn lseek(
        &mut self,
        fd: i32,
        offset: i64,
        whence: i32,
        cx: &mut Context<'_>,
    ) -> SysResult {
        match self.files.get(fd)? {
            OpenFile::Device(_) => return Ok(0), // as Linux's null and zero: always 0
            OpenFile::Std(0) => {
                return cx
                    .host
                    .seek_stdin(offset, whence)
                    .map_err(|e| Errno::from_io(&e).into())
            }
            _ => {}
        }
        let pos = match whence {
            libc::SEEK_SET if offset >= 0 => SeekFrom::Start(offset as u64),
            libc::SEEK_CUR => SeekFrom::Current(offset),
            libc::SEEK_END => SeekFrom::End(offset),
            _ => {
                self.seekable(fd)?;
                return Err(Errno::EINVAL.into());
            }
        };
        let mut file = self.seekable(fd)?;
        match file.seek(pos) {
            Ok(p) => Ok(p as i64),
            Err(e) => Err(Errno(e.raw_os_error().unwrap_or(libc::EINVAL)).into()),
        }
    }

    /// Terminal queries on a standard stream that is a terminal are the host's answers;
    /// nothing else the program holds is a terminal.
    pub(super) fn ioctl(&self, fd: i32, request: u64, arg: u64, cx: &mut Context<'_>) -> SysResult {
        let OpenFile::Std(n) = self.files.get(fd)? else {
            return Err(Errno::ENOTTY.into());
        };
        let size = match request {
            libc::TCGETS => std::mem::size_of::<libc::termios>(),
            libc::TIOCGWINSZ => std::mem::size_of::<libc::winsize>(),
            _ => return Err(Errno::ENOTTY.into()),
        };
        cx.mem.check(arg, size as u64)?;
        let mut out = vec![0u8; size];
        (cx.host.terminal_query(*n, request, &mut out)).map_err(|e| Errno::from_io(&e))?;
        cx.mem.write(arg, &out)?;
        Ok(0)
    }
}

/// The program's end when the watchdog interrupted a blocking host call, else its errno.
fn io_error(e: &std::io::Error) -> SysError {
    if e.kind() == std::io::ErrorKind::Interrupted {
        SysError::End(Exit::TimedOut)
    } else {
        Errno::from_io(e).into()
    }
}

/// A `struct stat` for a file of `mode` and `size` with inode `ino`, owned by the sandbox's
/// identity.
fn stat(mode: u32, size: u64, mtime: i64, ino: u64) -> Stat {
    let mut st = Stat::default();
    let s = &mut st.0;
    s.st_dev = 1;
    s.st_ino = ino;
    s.st_nlink = 1;
    s.st_mode = mode;
    s.st_uid = UID as u32;
    s.st_gid = UID as u32;
    s.st_size = size as i64;
    s.st_blksize = 4096;
    s.st_blocks = size.div_ceil(512) as i64;
    (s.st_atime, s.st_mtime, s.st_ctime) = (mtime, mtime, mtime);
    st
}

impl Process {
    pub(super) fn read(
        &mut self,
        fd: i32,
        buf: u64,
        count: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let n = (count as usize).min(IO_CHUNK);
        // Check the destination before consuming input the program could not receive.
        cx.mem.check(buf, n as u64)?;
        let mut data = vec![0u8; n];
        let got = self.read_fd(fd, &mut data, cx)?;
        cx.mem.write(buf, &data[..got])?;
        Ok(got as i64)
    }

    /// Reads from `fd` into a host buffer.
    fn read_fd(
        &mut self,
        fd: i32,
        data: &mut [u8],
        cx: &mut Context<'_>,
    ) -> Result<usize, SysError> {
        match self.files.get(fd)? {
            OpenFile::Std(0) => cx.host.read_stdin(data).map_err(|e| io_error(&e)),
            OpenFile::Std(_) => Err(Errno::EBADF.into()),
            OpenFile::Host(f) => (&**f).read(data).map_err(|e| Errno::from_io(&e).into()),
            OpenFile::Device(Device::Null) => Ok(0),
            OpenFile::Device(Device::Zero) => {
                data.fill(0);
                Ok(data.len())
            }
            OpenFile::Device(Device::Urandom) => {
                cx.host.random(data);
                Ok(data.len())
            }
        }
    }

    pub(super) fn write(
        &mut self,
        fd: i32,
        buf: u64,
        count: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let mut data = vec![0u8; (count as usize).min(IO_CHUNK)];
        cx.mem.read(buf, &mut data)?;
        self.write_fd(fd, &data, cx)
    }

    fn write_fd(&mut self, fd: i32, data: &[u8], cx: &mut Context<'_>) -> SysResult {
        // Host files are read-only; stdin is not for writing.
        let stream = match self.files.get(fd)? {
            OpenFile::Std(n @ (1 | 2)) => *n,
            OpenFile::Device(_) => return Ok(data.len() as i64), // taken, and gone
            _ => return Err(Errno::EBADF.into()),
        };
        match cx.host.write_out(stream, data) {
            Ok(n) => Ok(n as i64),
            Err(e) => Err(io_error(&e)),
        }
    }

    /// The (base, length) pairs of an iovec array, read with one bounds check.
    fn iovecs(&self, iov: u64, count: u64, cx: &Context<'_>) -> Result<Vec<(u64, u64)>, Errno> {
        if count > IOV_MAX {
            return Err(Errno::EINVAL);
        }
        let vecs: Vec<Iovec> = cx.mem.read_array(iov, count as usize)?;
        let mut total = 0u64;
        let mut out = Vec::with_capacity(vecs.len());
        for v in vecs {
            let (base, len) = (v.0.iov_base as u64, v.0.iov_len as u64);
            total = total.checked_add(len).ok_or(Errno::EINVAL)?;
            if total > isize::MAX as u64 {
                return Err(Errno::EINVAL);
            }
            out.push((base, len));
        }
        Ok(out)
    }

    pub(super) fn writev(
        &mut self,
        fd: i32,
        iov: u64,
        count: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let mut data = Vec::new();
        for (base, len) in self.iovecs(iov, count, cx)? {
            let take = (len as usize).min(IO_CHUNK.saturating_sub(data.len()));
            let at = data.len();
            data.resize(at + take, 0);
            cx.mem.read(base, &mut data[at..])?;
        }
        self.write_fd(fd, &data, cx)
    }

    pub(super) fn readv(
        &mut self,
        fd: i32,
        iov: u64,
        count: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let vecs = self.iovecs(iov, count, cx)?;
        // Check every buffer first, so a bad one does not swallow input.
        for &(base, len) in &vecs {
            cx.mem.check(base, len)?;
        }
        let want: u64 = vecs.iter().map(|v| v.1).sum::<u64>().min(IO_CHUNK as u64);
        let mut data = vec![0u8; want as usize];
        let got = self.read_fd(fd, &mut data, cx)?;
        let mut done = 0usize;
        for (base, len) in vecs {
            if done == got {
                break;
            }
            let n = (len as usize).min(got - done);
            cx.mem.write(base, &data[done..done + n])?;
            done += n;
        }
        Ok(got as i64)
    }

    pub(super) fn pread(
        &mut self,
        fd: i32,
        buf: u64,
        count: u64,
        offset: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let file = self.seekable(fd)?;
        let mut data = vec![0u8; (count as usize).min(IO_CHUNK)];
        let got = file
            .read_at(&mut data, offset)
            .map_err(|e| Errno::from_io(&e))?;
        cx.mem.write(buf, &data[..got])?;
        Ok(got as i64)
    }

    pub(super) fn openat(
        &mut self,
        dirfd: i32,
        path: u64,
        flags: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let path = cx.mem.read_cstr(path, PATH_MAX)?;
        if dirfd != libc::AT_FDCWD && !path.starts_with(b"/") {
            return Err(Errno::EBADF.into());
        }
        let cloexec = flags & libc::O_CLOEXEC as u64 != 0;
        if let Some(device) = Device::at(&path) {
            return Ok(i64::from(self.files.install_device(device, cloexec)?));
        }
        let write_flags = (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64;
        let host = self.policy.check_read(&path).ok_or(Errno::EACCES)?;
        if flags & write_flags != 0 {
            return Err(Errno::EROFS.into());
        }
        // Non-blocking, so a FIFO cannot hang the VMM in open(2); only regular files are
        // kept (for those, O_NONBLOCK changes nothing).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&host)
            .map_err(|e| Errno::from_io(&e))?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(Errno::EACCES.into()); // directories, devices, FIFOs
        }
        Ok(i64::from(self.files.install(file, cloexec)?))
    }

    pub(super) fn fstat(&mut self, fd: i32, buf: u64, cx: &mut Context<'_>) -> SysResult {
        let st = match self.files.get(fd)? {
            OpenFile::Host(f) => {
                let m = f.metadata().map_err(|_| Errno::EIO)?;
                host_stat(&m)
            }
            // The standard streams as the host has them (a file, a pipe, a terminal); a
            // host that cannot say makes them character devices that are not terminals.
            OpenFile::Std(n) => match cx.host.stream_stat(*n) {
                Some(h) => {
                    let kind = h.st_mode & libc::S_IFMT;
                    let mut st = stat(
                        kind | (h.st_mode & 0o777),
                        h.st_size as u64,
                        h.st_mtime,
                        h.st_ino,
                    );
                    st.0.st_rdev = h.st_rdev;
                    st.0.st_dev = h.st_dev;
                    st.0.st_blksize = h.st_blksize;
                    st
                }
                None => stat(libc::S_IFCHR | 0o620, 0, 0, 10 + *n as u64),
            },
            OpenFile::Device(d) => {
                let mut st = stat(libc::S_IFCHR | 0o666, 0, 0, 20 + d.numbers().1 as u64);
                st.0.st_rdev = libc::makedev(d.numbers().0, d.numbers().1);
                st
            }
        };
        cx.mem.write_obj(buf, &st)?;
        Ok(0)
    }

    pub(super) fn stat_path(&mut self, path: u64, buf: u64, cx: &mut Context<'_>) -> SysResult {
        let path = cx.mem.read_cstr(path, PATH_MAX)?;
        if let Some(d) = Device::at(&path) {
            let (major, minor) = d.numbers();
            let mut st = stat(libc::S_IFCHR | 0o666, 0, 0, 20 + u64::from(minor));
            st.0.st_rdev = libc::makedev(major, minor);
            cx.mem.write_obj(buf, &st)?;
            return Ok(0);
        }
        let host = self.policy.check_read(&path).ok_or(Errno::EACCES)?;
        let st = match std::fs::metadata(host) {
            Ok(m) => host_stat(&m),
            Err(e) => return Err(Errno::from_io(&e).into()),
        };
        cx.mem.write_obj(buf, &st)?;
        Ok(0)
    }

    pub(super) fn newfstatat(
        &mut self,
        dirfd: i32,
        path: u64,
        buf: u64,
        flags: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let name = cx.mem.read_cstr(path, PATH_MAX)?;
        if name.is_empty() && flags & libc::AT_EMPTY_PATH as u64 != 0 {
            return self.fstat(dirfd, buf, cx);
        }
        if dirfd != libc::AT_FDCWD && !name.starts_with(b"/") {
            return Err(Errno::EBADF.into());
        }
        self.stat_path(path, buf, cx)
    }

    /// `readlink`/`readlinkat`: the text of a symlink that lies under an allowed root
    /// (`EINVAL` for anything else that exists there, `ENOENT` outside the roots), not
    /// NUL-terminated, cut to `size`.
    pub(super) fn readlink(
        &mut self,
        dirfd: i32,
        path: u64,
        buf: u64,
        size: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let name = cx.mem.read_cstr(path, PATH_MAX)?;
        if dirfd != libc::AT_FDCWD && !name.starts_with(b"/") {
            return Err(Errno::EBADF.into());
        }
        if (size as i64) <= 0 {
            return Err(Errno::EINVAL.into());
        }
        // The directories leading to a root are not links (realpath() asks about each);
        // outside the roots there is nothing to read (start-ups probe /proc/self/exe,
        // which the sandbox does not have).
        if self.policy.leads_to_root(&name) {
            return Err(Errno::EINVAL.into());
        }
        let host = self.policy.check_link(&name).ok_or(Errno::ENOENT)?;
        let meta = std::fs::symlink_metadata(&host).map_err(|e| Errno::from_io(&e))?;
        if !meta.file_type().is_symlink() {
            return Err(Errno::EINVAL.into());
        }
        let target = std::fs::read_link(&host).map_err(|e| Errno::from_io(&e))?;
        use std::os::unix::ffi::OsStrExt;
        let bytes = target.as_os_str().as_bytes();
        let n = bytes.len().min(size as usize).min(PATH_MAX);
        cx.mem.write(buf, &bytes[..n])?;
        Ok(n as i64)
    }

    pub(super) fn access(&mut self, path: u64, cx: &mut Context<'_>) -> SysResult {
        let path = cx.mem.read_cstr(path, PATH_MAX)?;
        if Device::at(&path).is_some() {
            return Ok(0);
        }
        match self.policy.check_read(&path) {
            Some(host) if host.exists() => Ok(0),
            _ => Err(Errno::EACCES.into()),
        }
    }
}
