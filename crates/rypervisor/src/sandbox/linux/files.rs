//! Files: the standard streams (through the [`Host`](super::Host)) and read-only host files
//! under `--allow-read`, in one descriptor table; `read`/`write` and their vector and
//! positioned forms, `openat` (files and directories), `lseek`, `ioctl` — on the descriptors
//! of [`super::fdtable`]. Metadata is [`super::stat`]; paths and listings [`super::dirs`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use super::abi::Iovec;
use super::fdtable::{self, Directory};
use super::{Context, Errno, Process, SysError, SysResult, IO_CHUNK};

/// Largest `iovcnt` (Linux's UIO_MAXIOV).
const IOV_MAX: u64 = 1024;
/// Longest path (Linux's PATH_MAX).
pub(crate) const PATH_MAX: usize = 4096;
/// The table's standard-stream and host-file kinds.
use super::fdtable::{Device, OpenFile};

/// Opens the resolved host path `host` read-only. Only regular files and directories are
/// opened at all: a device's driver (a node outside /dev) never runs for the program.
/// Non-blocking besides, so a FIFO swapped in meanwhile cannot hang the VMM in open(2) (for
/// files, O_NONBLOCK changes nothing); the caller checks the type of what it got.
pub(super) fn open_host(host: &std::path::Path) -> Result<File, Errno> {
    let kind = std::fs::symlink_metadata(host).map_err(|e| Errno::from_io(&e))?;
    if !kind.is_file() && !kind.is_dir() {
        return Err(Errno::EACCES);
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(host)
        .map_err(|e| Errno::from_io(&e))
}

/// A host file or directory behind a descriptor, taken out of the table.
enum HostFile {
    File(std::sync::Arc<File>),
    Dir(std::sync::Arc<super::fdtable::Directory>),
}

impl std::ops::Deref for HostFile {
    type Target = File;
    fn deref(&self) -> &File {
        match self {
            HostFile::File(f) => f,
            HostFile::Dir(d) => &d.file,
        }
    }
}

impl Process {
    /// The host file behind `fd` (a directory for `lseek` only); a standard stream is not
    /// seekable (ESPIPE).
    fn seekable(&self, fd: i32, dirs: bool) -> Result<HostFile, Errno> {
        match self.file(fd)? {
            OpenFile::Host(f) => Ok(HostFile::File(f)),
            OpenFile::Dir(d) if dirs => Ok(HostFile::Dir(d)),
            OpenFile::Dir(_) => Err(Errno::EISDIR),
            OpenFile::Std(_) | OpenFile::Device(_) | OpenFile::Pipe(_) | OpenFile::Epoll(_) => {
                Err(Errno::ESPIPE)
            }
        }
    }

    pub(super) fn lseek(
        &mut self,
        fd: i32,
        offset: i64,
        whence: i32,
        cx: &mut Context<'_>,
    ) -> SysResult {
        match self.file(fd)? {
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
                self.seekable(fd, true)?;
                return Err(Errno::EINVAL.into());
            }
        };
        let file = self.seekable(fd, true)?;
        match (&*file).seek(pos) {
            Ok(p) => Ok(p as i64),
            Err(e) => Err(Errno(e.raw_os_error().unwrap_or(libc::EINVAL)).into()),
        }
    }

    /// `getpeername`/`getsockname`: nothing the program holds is a socket.
    pub(super) fn not_a_socket(&self, fd: i32) -> SysResult {
        self.file(fd)?;
        Err(Errno::ENOTSOCK.into())
    }

    /// Terminal queries on a standard stream that is a terminal are the host's answers;
    /// nothing else the program holds is a terminal.
    pub(super) fn ioctl(&self, fd: i32, request: u64, arg: u64, cx: &mut Context<'_>) -> SysResult {
        if request == libc::FIONREAD {
            return self.fionread(fd, arg, cx);
        }
        let OpenFile::Std(n) = self.file(fd)? else {
            return Err(Errno::ENOTTY.into());
        };
        let size = match request {
            libc::TCGETS => std::mem::size_of::<libc::termios>(),
            libc::TIOCGWINSZ => std::mem::size_of::<libc::winsize>(),
            _ => return Err(Errno::ENOTTY.into()),
        };
        cx.mem.check(arg, size as u64)?;
        let mut out = vec![0u8; size];
        (cx.host.terminal_query(n, request, &mut out)).map_err(|e| Errno::from_io(&e))?;
        cx.mem.write(arg, &out)?;
        Ok(0)
    }
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
        match self.file(fd)? {
            OpenFile::Std(0) => loop {
                match cx.host.read_stdin(data) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                        if let Some(end) = self.interrupted() {
                            return Err(end);
                        }
                    }
                    Err(e) => return Err(Errno::from_io(&e).into()),
                }
            },
            OpenFile::Std(_) => Err(Errno::EBADF.into()),
            OpenFile::Host(f) => (&*f).read(data).map_err(|e| Errno::from_io(&e).into()),
            OpenFile::Dir(_) => Err(Errno::EISDIR.into()),
            OpenFile::Epoll(_) => Err(Errno::EINVAL.into()),
            OpenFile::Pipe(end) => self.pipe_read(&end.clone(), data, cx),
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
        let stream = match self.file(fd)? {
            OpenFile::Std(n @ (1 | 2)) => n,
            OpenFile::Device(_) => return Ok(data.len() as i64), // taken, and gone
            OpenFile::Pipe(end) => return self.pipe_write(&end, data, cx),
            _ => return Err(Errno::EBADF.into()),
        };
        loop {
            match cx.host.write_out(stream, data) {
                Ok(n) => return Ok(n as i64),
                // Kicked while the host's pipe or terminal was full: a signal, the tree's
                // end or the time limit; or nothing that concerns this call.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    if let Some(end) = self.interrupted() {
                        return Err(end);
                    }
                }
                Err(e) => return Err(Errno::from_io(&e).into()),
            }
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
        let file = self.seekable(fd, false)?;
        let mut data = vec![0u8; (count as usize).min(IO_CHUNK)];
        let got = file
            .read_at(&mut data, offset)
            .map_err(|e| Errno::from_io(&e))?;
        cx.mem.write(buf, &data[..got])?;
        Ok(got as i64)
    }

    /// `sendfile(out, in, offset, count)`: up to `count` bytes (one chunk) read from `in` —
    /// at `*offset` without moving its position when `offset` is given (a host file only) —
    /// and written to `out`.
    pub(super) fn sendfile(
        &mut self,
        out: i32,
        input: i32,
        offset: u64,
        count: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        self.file(out)?;
        let mut data = vec![0u8; (count as usize).min(IO_CHUNK)];
        let got = if offset != 0 {
            let at: u64 = cx.mem.read_obj(offset)?;
            let file = self.seekable(input, false)?;
            let n = file
                .read_at(&mut data, at)
                .map_err(|e| Errno::from_io(&e))?;
            cx.mem.write_obj(offset, &(at + n as u64))?;
            n
        } else {
            self.read_fd(input, &mut data, cx)?
        };
        // All of what was read goes out (a short write would lose the rest of it).
        let mut sent = 0;
        while sent < got {
            match self.write_fd(out, &data[sent..got], cx) {
                Ok(n) if n > 0 => sent += n as usize,
                Ok(_) => break,
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent as i64)
    }

    /// `open`/`openat`: a built-in device, or a host file or directory the policy lets the
    /// program read; anything that asks to write is refused as on a read-only file system.
    pub(super) fn openat(
        &mut self,
        dirfd: i32,
        path: u64,
        flags: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let abs = self.path_arg(dirfd, path, cx)?;
        let cloexec = flags & libc::O_CLOEXEC as u64 != 0;
        if let Some(device) = Device::at(&abs) {
            return Ok(i64::from(
                self.files.lock().install_device(device, cloexec)?,
            ));
        }
        // /dev/stdin, /dev/stdout, /dev/stderr, /dev/fd/N: the program's own descriptors
        // (Linux reopens them through /proc/self/fd; a duplicate is what that gives here).
        if let Some(own) = fdtable::own_descriptor(&abs) {
            return Ok(self.files.lock().dup(own, 0, cloexec)?);
        }
        let write_flags = (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64;
        let host = self.host_path(&abs)?;
        if flags & write_flags != 0 {
            return Err(Errno::EROFS.into());
        }
        let file = open_host(&host)?;
        let kind = file.metadata().map_err(|e| Errno::from_io(&e))?.file_type();
        let fd = if kind.is_dir() {
            let dir = Directory { file, path: host };
            self.files.lock().install_dir(dir, cloexec)?
        } else if flags & libc::O_DIRECTORY as u64 != 0 {
            return Err(Errno::ENOTDIR.into());
        } else if kind.is_file() {
            self.files.lock().install(file, cloexec)?
        } else {
            return Err(Errno::EACCES.into()); // devices, FIFOs, sockets
        };
        Ok(i64::from(fd))
    }
}
