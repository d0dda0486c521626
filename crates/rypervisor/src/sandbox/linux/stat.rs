//! Metadata: the `stat` family (`fstat`, `stat`, `lstat`, `newfstatat`, `statx`),
//! `statfs`/`fstatfs`, `access`/`faccessat`, `readlink`/`readlinkat`. Host files and
//! directories show their own metadata (type, permissions, links, size, times to the
//! nanosecond, device and inode), owned by the sandbox's identity; the standard streams are
//! what the host has; the built-in devices are character devices with Linux's numbers.

use std::fs::Metadata;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use super::abi::{Stat, Statfs, Statx};
use super::fdtable::{Device, OpenFile};
use super::files::PATH_MAX;
use super::{Context, Errno, Process, SysResult, UID};
use crate::sandbox::resolve::host_statfs;

/// A `struct stat` from a host file's metadata, owned by the sandbox's identity.
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

/// A `struct stat` for a file of `mode` and `size` with inode `ino`, owned by the sandbox's
/// identity.
fn made_stat(mode: u32, size: u64, mtime: i64, ino: u64) -> Stat {
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

/// A built-in device's metadata.
fn device_stat(d: Device) -> Stat {
    let (major, minor) = d.numbers();
    let mut st = made_stat(libc::S_IFCHR | 0o666, 0, 0, 20 + u64::from(minor));
    st.0.st_rdev = libc::makedev(major, minor);
    st
}

/// The `statx` answer for what `stat` said (the basic fields, all of them valid), with the
/// birth time where the host's file system keeps one.
fn statx_of(st: &Stat, meta: Option<&Metadata>) -> Statx {
    let s = &st.0;
    let mut x = Statx::default();
    let t = |ts: &mut libc::statx_timestamp, sec: i64, nsec: i64| {
        (ts.tv_sec, ts.tv_nsec) = (sec, nsec as u32);
    };
    x.0.stx_mask = libc::STATX_BASIC_STATS;
    x.0.stx_blksize = s.st_blksize as u32;
    x.0.stx_nlink = s.st_nlink as u32;
    x.0.stx_uid = s.st_uid;
    x.0.stx_gid = s.st_gid;
    x.0.stx_mode = s.st_mode as u16;
    x.0.stx_ino = s.st_ino;
    x.0.stx_size = s.st_size as u64;
    x.0.stx_blocks = s.st_blocks as u64;
    t(&mut x.0.stx_atime, s.st_atime, s.st_atime_nsec);
    t(&mut x.0.stx_mtime, s.st_mtime, s.st_mtime_nsec);
    t(&mut x.0.stx_ctime, s.st_ctime, s.st_ctime_nsec);
    (x.0.stx_rdev_major, x.0.stx_rdev_minor) = (libc::major(s.st_rdev), libc::minor(s.st_rdev));
    (x.0.stx_dev_major, x.0.stx_dev_minor) = (libc::major(s.st_dev), libc::minor(s.st_dev));
    let born = meta.and_then(|m| m.created().ok());
    if let Some(d) = born.and_then(|b| b.duration_since(std::time::UNIX_EPOCH).ok()) {
        t(
            &mut x.0.stx_btime,
            d.as_secs() as i64,
            i64::from(d.subsec_nanos()),
        );
        x.0.stx_mask |= libc::STATX_BTIME;
    }
    x
}

impl Process {
    /// What `fstat(fd)` says, with the host's metadata where there is a host file.
    fn stat_fd(&self, fd: i32, cx: &mut Context<'_>) -> Result<(Stat, Option<Metadata>), Errno> {
        let host = |meta: std::io::Result<Metadata>| {
            let m = meta.map_err(|_| Errno::EIO)?;
            Ok((host_stat(&m), Some(m)))
        };
        let st = match self.file(fd)? {
            OpenFile::Host(f) => return host(f.metadata()),
            OpenFile::Dir(d) => return host(d.file.metadata()),
            // The standard streams as the host has them (a file, a pipe, a terminal); a
            // host that cannot say makes them character devices that are not terminals.
            OpenFile::Std(n) => match cx.host.stream_stat(n) {
                Some(h) => {
                    let kind = h.st_mode & libc::S_IFMT;
                    let mode = kind | (h.st_mode & 0o777);
                    let mut st = made_stat(mode, h.st_size as u64, h.st_mtime, h.st_ino);
                    st.0.st_rdev = h.st_rdev;
                    st.0.st_dev = h.st_dev;
                    st.0.st_blksize = h.st_blksize;
                    st
                }
                None => made_stat(libc::S_IFCHR | 0o620, 0, 0, 10 + n as u64),
            },
            OpenFile::Device(d) => device_stat(d),
            // An epoll instance: an anonymous inode (device 0:14 on Linux).
            OpenFile::Epoll(e) => {
                let ino = std::sync::Arc::as_ptr(&e) as u64 >> 4;
                let mut st = made_stat(0o600, 0, 0, ino);
                st.0.st_dev = libc::makedev(0, 14);
                st
            }
            // A pipe: a FIFO on the pipe file system (device 0:13 on Linux), its inode its
            // buffer's identity.
            OpenFile::Pipe(p) => {
                let ino = std::sync::Arc::as_ptr(&p.pipe) as u64 >> 4;
                let mut st = made_stat(libc::S_IFIFO | 0o600, p.pending() as u64, 0, ino);
                st.0.st_dev = libc::makedev(0, 13);
                st
            }
        };
        Ok((st, None))
    }

    /// What `fstatat(dirfd, name, flags)` says (`AT_EMPTY_PATH`: the descriptor itself;
    /// `AT_SYMLINK_NOFOLLOW`: a final symlink itself).
    fn stat_at(
        &self,
        dirfd: i32,
        name: &[u8],
        flags: u64,
        cx: &mut Context<'_>,
    ) -> Result<(Stat, Option<Metadata>), Errno> {
        if name.is_empty() && flags & libc::AT_EMPTY_PATH as u64 != 0 {
            return self.stat_fd(dirfd, cx);
        }
        let abs = self.absolute(dirfd, name)?;
        if let Some(d) = Device::at(&abs) {
            return Ok((device_stat(d), None));
        }
        if let Some(own) = super::fdtable::own_descriptor(&abs) {
            return self.stat_fd(own, cx);
        }
        // The directories on the way to a root show their metadata (`ls -la` in a root
        // asks about `..`), as they are already known to be there; they cannot be listed.
        let with_stat = |m: Metadata| (host_stat(&m), Some(m));
        if let Some(dir) = self.policy.on_the_way(&abs) {
            return std::fs::metadata(dir)
                .map(with_stat)
                .map_err(|e| Errno::from_io(&e));
        }
        let meta = if flags & libc::AT_SYMLINK_NOFOLLOW as u64 != 0 {
            let host = self
                .policy
                .check_link(&abs)
                .ok_or_else(|| self.refusal(&abs))?;
            std::fs::symlink_metadata(host)
        } else {
            std::fs::metadata(self.host_path(&abs)?)
        };
        meta.map(with_stat).map_err(|e| Errno::from_io(&e))
    }

    pub(super) fn fstat(&mut self, fd: i32, buf: u64, cx: &mut Context<'_>) -> SysResult {
        let (st, _) = self.stat_fd(fd, cx)?;
        cx.mem.write_obj(buf, &st)?;
        Ok(0)
    }

    /// `stat`, `lstat` (`flags` = AT_SYMLINK_NOFOLLOW) and `newfstatat`.
    pub(super) fn newfstatat(
        &mut self,
        dirfd: i32,
        path: u64,
        buf: u64,
        flags: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let name = cx.mem.read_cstr(path, PATH_MAX)?;
        let (st, _) = self.stat_at(dirfd, &name, flags, cx)?;
        cx.mem.write_obj(buf, &st)?;
        Ok(0)
    }

    /// `statx`: the basic fields whatever `mask` asks (the kernel may give more or fewer;
    /// `stx_mask` says which).
    pub(super) fn statx(
        &mut self,
        dirfd: i32,
        path: u64,
        flags: u64,
        buf: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let name = cx.mem.read_cstr(path, PATH_MAX)?;
        let (st, meta) = self.stat_at(dirfd, &name, flags, cx)?;
        cx.mem.write_obj(buf, &statx_of(&st, meta.as_ref()))?;
        Ok(0)
    }

    /// `fstatfs` (`path` None) and `statfs`: the host file system's figures for a file or
    /// directory the program holds or may read.
    pub(super) fn statfs(
        &mut self,
        fd: i32,
        path: Option<u64>,
        buf: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let mut out = Statfs::default();
        let rc = match path {
            Some(path) => {
                let abs = self.path_arg(libc::AT_FDCWD, path, cx)?;
                let host = self.host_path(&abs)?;
                out.0 = host_statfs(&host).map_err(|e| Errno::from_io(&e))?;
                0
            }
            None => {
                let raw = match self.file(fd)? {
                    OpenFile::Host(f) => f.as_raw_fd(),
                    OpenFile::Dir(d) => d.file.as_raw_fd(),
                    OpenFile::Std(_)
                    | OpenFile::Device(_)
                    | OpenFile::Pipe(_)
                    | OpenFile::Epoll(_) => return Err(Errno::ENOSYS.into()),
                };
                // SAFETY: an open descriptor of ours and a live statfs for the kernel to fill.
                unsafe { libc::fstatfs(raw, &mut out.0) }
            }
        };
        if rc != 0 {
            return Err(Errno::from_io(&std::io::Error::last_os_error()).into());
        }
        cx.mem.write_obj(buf, &out)?;
        Ok(0)
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
        let abs = self.path_arg(dirfd, path, cx)?;
        if (size as i64) <= 0 {
            return Err(Errno::EINVAL.into());
        }
        // The directories leading to a root are not links (realpath() asks about each);
        // outside the roots there is nothing to read (start-ups probe /proc/self/exe,
        // which the sandbox does not have).
        if self.policy.leads_to_root(&abs) {
            return Err(Errno::EINVAL.into());
        }
        let host = self.policy.check_link(&abs).ok_or(Errno::ENOENT)?;
        let meta = std::fs::symlink_metadata(&host).map_err(|e| Errno::from_io(&e))?;
        if !meta.file_type().is_symlink() {
            return Err(Errno::EINVAL.into());
        }
        let target = std::fs::read_link(&host).map_err(|e| Errno::from_io(&e))?;
        let bytes = target.as_os_str().as_bytes();
        let n = bytes.len().min(size as usize).min(PATH_MAX);
        cx.mem.write(buf, &bytes[..n])?;
        Ok(n as i64)
    }

    /// The extended-attribute calls: the sandbox shows none (`getxattr` family: `ENODATA`;
    /// `listxattr` family: an empty list) on what the program may see, and the usual refusal
    /// elsewhere. `path` None: the `f*` forms on a descriptor.
    pub(super) fn xattr(
        &mut self,
        path: Option<u64>,
        fd: i32,
        list: bool,
        follow: bool,
        cx: &mut Context<'_>,
    ) -> SysResult {
        match path {
            None => {
                self.file(fd)?;
            }
            Some(path) => {
                let name = cx.mem.read_cstr(path, PATH_MAX)?;
                let flags = if follow {
                    0
                } else {
                    libc::AT_SYMLINK_NOFOLLOW as u64
                };
                self.stat_at(libc::AT_FDCWD, &name, flags, cx)?;
            }
        }
        if list {
            Ok(0)
        } else {
            Err(Errno::ENODATA.into())
        }
    }

    /// `access`/`faccessat`: existence and reading are as the policy says; writing is
    /// refused as on a read-only file system; execution needs an execute bit.
    pub(super) fn access(
        &mut self,
        dirfd: i32,
        path: u64,
        mode: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let abs = self.path_arg(dirfd, path, cx)?;
        if Device::at(&abs).is_some() {
            return Ok(0);
        }
        let meta = std::fs::metadata(self.host_path(&abs)?).map_err(|e| Errno::from_io(&e))?;
        if mode & libc::W_OK as u64 != 0 {
            return Err(Errno::EROFS.into());
        }
        if mode & libc::X_OK as u64 != 0 && meta.mode() & 0o111 == 0 {
            return Err(Errno::EACCES.into());
        }
        Ok(0)
    }
}
