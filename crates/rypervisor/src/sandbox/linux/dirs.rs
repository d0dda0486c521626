//! Directories and paths: how a path the program names becomes a host path (absolute, or
//! relative to the working directory or to a directory descriptor, then confined to the
//! `--allow-read` roots by the [`Policy`](crate::sandbox::Policy)); the working directory
//! (`chdir`, `fchdir`, `getcwd`); and listing (`getdents64`, `getdents`).
//!
//! The working directory is kept as a canonical host path, so `getcwd` is the truth and a
//! relative path cannot start outside the roots: `openat(dirfd, "../..")` from a directory
//! inside a root is resolved like any other path and refused once it leaves the roots.
//! Listings come from the host kernel on the directory's own descriptor, so record layout,
//! `d_off` cookies, inode numbers and types are Linux's own.

use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::fdtable::OpenFile;
use super::files::PATH_MAX;
use super::{Context, Errno, Process, SysResult, IO_CHUNK};

impl Process {
    /// The absolute path the program means by `path` relative to `dirfd` (`AT_FDCWD`: the
    /// working directory); not yet resolved or checked.
    pub(super) fn absolute(&self, dirfd: i32, path: &[u8]) -> Result<Vec<u8>, Errno> {
        if path.is_empty() {
            return Err(Errno::ENOENT);
        }
        if path.starts_with(b"/") {
            return Ok(path.to_vec());
        }
        let base: PathBuf = if dirfd == libc::AT_FDCWD {
            self.cwd.lock().clone()
        } else {
            match self.file(dirfd)? {
                OpenFile::Dir(d) => d.path.clone(),
                _ => return Err(Errno::ENOTDIR),
            }
        };
        let mut abs = base.as_os_str().as_bytes().to_vec();
        if !abs.ends_with(b"/") {
            abs.push(b'/');
        }
        abs.extend_from_slice(path);
        if abs.len() >= PATH_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(abs)
    }

    /// The absolute path the program passed at `path`, relative to `dirfd`.
    pub(super) fn path_arg(
        &self,
        dirfd: i32,
        path: u64,
        cx: &Context<'_>,
    ) -> Result<Vec<u8>, Errno> {
        let name = cx.mem.read_cstr(path, PATH_MAX)?;
        self.absolute(dirfd, &name)
    }

    /// The host path of `abs` (symlinks followed) if the policy lets the program read it:
    /// `ENOENT` when it is simply missing from a readable directory, `EACCES` otherwise.
    pub(super) fn host_path(&self, abs: &[u8]) -> Result<PathBuf, Errno> {
        self.policy.check_read(abs).ok_or_else(|| self.refusal(abs))
    }

    /// The errno for a path the policy refused: `ENOENT` for what is missing from a readable
    /// directory and for the host's `/proc`, `/sys` and `/dev` (the sandbox has none: its
    /// devices are built in), `EACCES` for the rest.
    pub(super) fn refusal(&self, abs: &[u8]) -> Errno {
        if self.policy.in_pseudo(abs) || self.policy.missing(abs) {
            Errno::ENOENT
        } else {
            Errno::EACCES
        }
    }

    /// `chdir`: into a readable directory, or one on the way to a root (`/` for a root
    /// `/usr`: the program may stand there, not list it).
    pub(super) fn chdir(&mut self, path: u64, cx: &mut Context<'_>) -> SysResult {
        let abs = self.path_arg(libc::AT_FDCWD, path, cx)?;
        let host = match self.host_path(&abs) {
            Ok(host) => host,
            Err(e) => self.policy.on_the_way(&abs).ok_or(e)?,
        };
        if !host.is_dir() {
            return Err(Errno::ENOTDIR.into());
        }
        *self.cwd.lock() = host;
        Ok(0)
    }

    /// `fchdir`: into an open directory.
    pub(super) fn fchdir(&mut self, fd: i32) -> SysResult {
        match self.file(fd)? {
            OpenFile::Dir(d) => {
                *self.cwd.lock() = d.path.clone();
                Ok(0)
            }
            _ => Err(Errno::ENOTDIR.into()),
        }
    }

    /// `getcwd`: the working directory, NUL-terminated; its length with the NUL.
    pub(super) fn getcwd(&self, buf: u64, size: u64, cx: &mut Context<'_>) -> SysResult {
        let mut text = self.cwd.lock().as_os_str().as_bytes().to_vec();
        text.push(0);
        if (size as usize) < text.len() {
            return Err(Errno::ERANGE.into());
        }
        cx.mem.write(buf, &text)?;
        Ok(text.len() as i64)
    }

    /// `getdents64` (`nr` = SYS_getdents64) and the older `getdents`: the host kernel's
    /// records for the directory, at most `count` bytes (capped at 1 MiB a call).
    pub(super) fn getdents(
        &mut self,
        nr: i64,
        fd: i32,
        buf: u64,
        count: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let dir = match self.file(fd)? {
            OpenFile::Dir(d) => d,
            _ => return Err(Errno::ENOTDIR.into()),
        };
        let n = (count as usize).min(IO_CHUNK);
        cx.mem.check(buf, n as u64)?;
        let mut data = vec![0u8; n];
        // SAFETY: the kernel writes at most `data.len()` bytes of records into `data`, a live
        // buffer, for `dir.file`, an open directory; the result is checked.
        let got = unsafe {
            libc::syscall(
                nr,
                dir.file.as_raw_fd(),
                data.as_mut_ptr(),
                data.len() as libc::c_uint,
            )
        };
        if got < 0 {
            return Err(Errno::from_io(&std::io::Error::last_os_error()).into());
        }
        cx.mem.write(buf, &data[..got as usize])?;
        Ok(got as i64)
    }
}
