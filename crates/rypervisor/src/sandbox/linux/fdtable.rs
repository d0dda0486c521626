//! The program's file descriptor table, with Linux's rules: a new descriptor is the lowest
//! free one (`open` after `close(0)` gives 0); `dup`, `dup2`, `dup3` and `fcntl(F_DUPFD…)`
//! make descriptors that share one open file (and so its offset); close-on-exec is recorded
//! per descriptor (for `execve` to honour). Descriptors 0–2 start as the host's standard
//! streams.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use super::pipe::PipeEnd;
use super::Errno;

/// Highest descriptor number + 1 (Linux's default `RLIMIT_NOFILE`): bash keeps a script on
/// fd 255, shells move fds to 10 and up.
pub(crate) const MAX_FDS: i32 = 1024;
/// Host files open at once (distinct `open`s; duplicates share theirs).
pub(crate) const MAX_HOST_FILES: usize = 256;

/// What a descriptor refers to.
#[derive(Clone, Debug)]
pub enum OpenFile {
    /// The host's standard stream 0, 1 or 2.
    Std(i32),
    /// A host file opened read-only under `--allow-read`, shared by its duplicates.
    Host(Arc<File>),
    /// One of the built-in devices: `/dev/null`, `/dev/zero`, `/dev/urandom` (`/dev/random`).
    Device(Device),
    /// A directory under `--allow-read`, for `getdents64`, `fchdir` and `openat(fd, ...)`.
    Dir(Arc<Directory>),
    /// One end of a pipe (an open file description: duplicates and children share it).
    Pipe(Arc<PipeEnd>),
    /// An epoll instance.
    Epoll(Arc<super::epoll::Epoll>),
}

/// An open directory: the host's descriptor (its listing position is the kernel's) and its
/// canonical path, which is also the program's path for it (relative paths from it and
/// `fchdir` start there).
#[derive(Debug)]
pub struct Directory {
    /// Opened read-only with `O_DIRECTORY`.
    pub file: File,
    /// Canonical, under an allowed root.
    pub path: PathBuf,
}

impl OpenFile {
    /// Which open file this is (the same for its duplicates; another after `close` and a new
    /// `open` reuse the number), for epoll's interest list.
    pub fn identity(&self) -> usize {
        match self {
            OpenFile::Std(n) => *n as usize + 1,
            OpenFile::Device(d) => *d as usize + 16,
            _ => self.host_object().map_or(0, |p| p as usize),
        }
    }

    /// The host object behind the descriptor, if any: duplicates share it (for counting).
    fn host_object(&self) -> Option<*const ()> {
        match self {
            OpenFile::Host(f) => Some(Arc::as_ptr(f).cast()),
            OpenFile::Dir(d) => Some(Arc::as_ptr(d).cast()),
            OpenFile::Pipe(p) => Some(Arc::as_ptr(&p.pipe).cast()),
            OpenFile::Epoll(e) => Some(Arc::as_ptr(e).cast()),
            OpenFile::Std(_) | OpenFile::Device(_) => None,
        }
    }
}

/// The descriptor a `/dev/stdin`, `/dev/stdout`, `/dev/stderr` or `/dev/fd/N` path names.
pub fn own_descriptor(path: &[u8]) -> Option<i32> {
    match path {
        b"/dev/stdin" => Some(0),
        b"/dev/stdout" => Some(1),
        b"/dev/stderr" => Some(2),
        _ => {
            let n = path.strip_prefix(b"/dev/fd/")?;
            let text = std::str::from_utf8(n).ok()?;
            text.parse().ok().filter(|fd| (0..MAX_FDS).contains(fd))
        }
    }
}

/// The devices every program may open, served by the VMM (no host file behind them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// Reads end at once; writes vanish.
    Null,
    /// Reads give zeros; writes vanish.
    Zero,
    /// Reads give random bytes; writes are taken (and ignored).
    Urandom,
}

impl Device {
    /// The device at `path`, if it is one of them.
    pub fn at(path: &[u8]) -> Option<Self> {
        match path {
            b"/dev/null" => Some(Self::Null),
            b"/dev/zero" => Some(Self::Zero),
            b"/dev/urandom" | b"/dev/random" => Some(Self::Urandom),
            _ => None,
        }
    }

    /// (major, minor) as on Linux, for `fstat`.
    pub fn numbers(self) -> (u32, u32) {
        match self {
            Self::Null => (1, 3),
            Self::Zero => (1, 5),
            Self::Urandom => (1, 9),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    file: OpenFile,
    cloexec: bool,
}

/// The table.
#[derive(Debug)]
pub struct FdTable {
    entries: BTreeMap<i32, Entry>,
}

impl Default for FdTable {
    /// 0, 1, 2: the host's standard streams.
    fn default() -> Self {
        let std = |n| {
            let e = Entry {
                file: OpenFile::Std(n),
                cloexec: false,
            };
            (n, e)
        };
        Self {
            entries: (0..3).map(std).collect(),
        }
    }
}

impl Clone for FdTable {
    /// A copy for snapshots: the standard streams' and devices' descriptors. Host files are
    /// not copied: a snapshot is only taken with none open (see [`FdTable::host_files`]).
    fn clone(&self) -> Self {
        let entries = (self.entries.iter())
            .filter(|(_, e)| e.file.host_object().is_none())
            .map(|(fd, e)| (*fd, e.clone()))
            .collect();
        Self { entries }
    }
}

impl FdTable {
    /// Distinct host files and directories open.
    pub fn host_files(&self) -> usize {
        let mut seen: Vec<*const ()> = Vec::new();
        for p in self.entries.values().filter_map(|e| e.file.host_object()) {
            if !seen.contains(&p) {
                seen.push(p);
            }
        }
        seen.len()
    }

    /// What `fd` refers to.
    pub fn get(&self, fd: i32) -> Result<&OpenFile, Errno> {
        self.entries.get(&fd).map(|e| &e.file).ok_or(Errno::EBADF)
    }

    /// The host file behind `fd`, if it is one.
    pub fn host_file(&self, fd: i32) -> Option<Arc<File>> {
        match self.entries.get(&fd).map(|e| &e.file) {
            Some(OpenFile::Host(f)) => Some(f.clone()),
            _ => None,
        }
    }

    /// The lowest free descriptor at or above `min`.
    fn lowest_free(&self, min: i32) -> Result<i32, Errno> {
        (min.max(0)..MAX_FDS)
            .find(|fd| !self.entries.contains_key(fd))
            .ok_or(Errno::EMFILE)
    }

    /// Installs a newly opened host file at the lowest free descriptor.
    pub fn install(&mut self, file: File, cloexec: bool) -> Result<i32, Errno> {
        self.install_open(OpenFile::Host(Arc::new(file)), cloexec)
    }

    /// Installs a newly opened directory at the lowest free descriptor.
    pub fn install_dir(&mut self, dir: Directory, cloexec: bool) -> Result<i32, Errno> {
        self.install_open(OpenFile::Dir(Arc::new(dir)), cloexec)
    }

    /// Installs an open file holding a host object (a file, directory or pipe end) at the
    /// lowest free descriptor, within `MAX_HOST_FILES`.
    pub fn install_open(&mut self, file: OpenFile, cloexec: bool) -> Result<i32, Errno> {
        if self.host_files() >= MAX_HOST_FILES {
            return Err(Errno::EMFILE);
        }
        let fd = self.lowest_free(0)?;
        self.entries.insert(fd, Entry { file, cloexec });
        Ok(fd)
    }

    /// Installs a built-in device at the lowest free descriptor.
    pub fn install_device(&mut self, device: Device, cloexec: bool) -> Result<i32, Errno> {
        let fd = self.lowest_free(0)?;
        let file = OpenFile::Device(device);
        self.entries.insert(fd, Entry { file, cloexec });
        Ok(fd)
    }

    /// `close`.
    pub fn close(&mut self, fd: i32) -> Result<i64, Errno> {
        self.entries.remove(&fd).map(|_| 0).ok_or(Errno::EBADF)
    }

    /// `close_range(first, last, flags)`: closes (or, with `CLOSE_RANGE_CLOEXEC`, marks
    /// close-on-exec) every descriptor in `[first, last]`; `CLOSE_RANGE_UNSHARE` changes
    /// nothing, as the table is never shared.
    pub fn close_range(&mut self, first: u64, last: u64, flags: u64) -> Result<i64, Errno> {
        const UNSHARE: u64 = 1 << 1;
        const CLOEXEC: u64 = 1 << 2;
        if flags & !(UNSHARE | CLOEXEC) != 0 || first > last {
            return Err(Errno::EINVAL);
        }
        let (first, last) = (
            first.min(MAX_FDS as u64) as i32,
            last.min(MAX_FDS as u64) as i32,
        );
        if flags & CLOEXEC != 0 {
            for (_, e) in self.entries.range_mut(first..=last) {
                e.cloexec = true;
            }
        } else {
            self.entries.retain(|fd, _| !(first..=last).contains(fd));
        }
        Ok(0)
    }

    /// `dup` and `fcntl(F_DUPFD[_CLOEXEC], min)`: a copy at the lowest free fd ≥ `min`.
    pub fn dup(&mut self, fd: i32, min: i32, cloexec: bool) -> Result<i64, Errno> {
        if !(0..MAX_FDS).contains(&min) {
            return Err(Errno::EINVAL);
        }
        let file = self.get(fd)?.clone();
        let new = self.lowest_free(min)?;
        self.entries.insert(new, Entry { file, cloexec });
        Ok(i64::from(new))
    }

    /// `dup2` (`flags` None) and `dup3` (`O_CLOEXEC` or 0): `new` becomes a copy of `old`,
    /// closing what it was.
    pub fn dup_to(&mut self, old: i32, new: i32, flags: Option<i32>) -> Result<i64, Errno> {
        let file = self.get(old)?.clone();
        if !(0..MAX_FDS).contains(&new) {
            return Err(Errno::EBADF);
        }
        let cloexec = match flags {
            None if old == new => return Ok(i64::from(new)),
            None => false,
            Some(_) if old == new => return Err(Errno::EINVAL),
            Some(f) if f & !libc::O_CLOEXEC != 0 => return Err(Errno::EINVAL),
            Some(f) => f & libc::O_CLOEXEC != 0,
        };
        self.entries.insert(new, Entry { file, cloexec });
        Ok(i64::from(new))
    }

    /// `fcntl`: duplication, the close-on-exec flag, the status flags.
    pub fn fcntl(&mut self, fd: i32, cmd: i32, arg: u64) -> Result<i64, Errno> {
        match cmd {
            libc::F_DUPFD => return self.dup(fd, arg as i32, false),
            libc::F_DUPFD_CLOEXEC => return self.dup(fd, arg as i32, true),
            _ => {}
        }
        let entry = self.entries.get_mut(&fd).ok_or(Errno::EBADF)?;
        match cmd {
            libc::F_GETFD => Ok(i64::from(entry.cloexec) * i64::from(libc::FD_CLOEXEC)),
            libc::F_SETFD => {
                entry.cloexec = arg as i32 & libc::FD_CLOEXEC != 0;
                Ok(0)
            }
            libc::F_GETFL => Ok(i64::from(match &entry.file {
                OpenFile::Pipe(p) => {
                    let mode = if p.write {
                        libc::O_WRONLY
                    } else {
                        libc::O_RDONLY
                    };
                    mode | if p.nonblock() { libc::O_NONBLOCK } else { 0 }
                }
                OpenFile::Std(1) | OpenFile::Std(2) => libc::O_WRONLY,
                OpenFile::Device(_) | OpenFile::Epoll(_) => libc::O_RDWR,
                OpenFile::Dir(_) => libc::O_RDONLY | libc::O_DIRECTORY,
                _ => libc::O_RDONLY,
            })),
            libc::F_SETFL => {
                // Only a pipe can block; nothing here appends.
                if let OpenFile::Pipe(p) = &entry.file {
                    p.set_nonblock(arg as i32 & libc::O_NONBLOCK != 0);
                }
                Ok(0)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// The table a child gets from `fork`: every descriptor, sharing its open file.
    pub fn share(&self) -> FdTable {
        FdTable {
            entries: self.entries.clone(),
        }
    }

    /// `execve`: descriptors marked close-on-exec are closed.
    pub fn close_on_exec(&mut self) {
        self.entries.retain(|_, e| !e.cloexec);
    }

    /// Whether `fd` is marked close-on-exec.
    pub fn cloexec(&self, fd: i32) -> Option<bool> {
        self.entries.get(&fd).map(|e| e.cloexec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> File {
        tempfile::tempfile().unwrap()
    }

    #[test]
    fn new_descriptors_are_the_lowest_free_ones() {
        let mut t = FdTable::default();
        assert_eq!(t.install(file(), false), Ok(3));
        assert_eq!(t.close(0), Ok(0));
        assert_eq!(t.install(file(), false), Ok(0), "close(0); open() gives 0");
        assert_eq!(t.close(7), Err(Errno::EBADF));
        assert_eq!(t.host_files(), 2);
    }

    #[test]
    fn duplicates_share_the_file_and_keep_their_own_cloexec() {
        let mut t = FdTable::default();
        let fd = t.install(file(), true).unwrap();
        assert_eq!(t.fcntl(fd, libc::F_GETFD, 0), Ok(1));
        assert_eq!(t.dup(fd, 0, false), Ok(4));
        assert_eq!(
            t.fcntl(4, libc::F_GETFD, 0),
            Ok(0),
            "dup clears close-on-exec"
        );
        assert_eq!(
            t.fcntl(fd, libc::F_DUPFD, 10),
            Ok(10),
            "shells move fds to 10+"
        );
        assert_eq!(t.fcntl(fd, libc::F_DUPFD_CLOEXEC, 10), Ok(11));
        assert_eq!(t.cloexec(11), Some(true));
        assert_eq!(t.host_files(), 1, "one open file, four descriptors");
        let (a, b) = (t.host_file(fd).unwrap(), t.host_file(10).unwrap());
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(t.fcntl(fd, libc::F_DUPFD, u64::MAX), Err(Errno::EINVAL));
        assert_eq!(t.fcntl(fd, libc::F_DUPFD, 1024), Err(Errno::EINVAL));
        t.fcntl(4, libc::F_SETFD, libc::FD_CLOEXEC as u64).unwrap();
        assert_eq!(t.cloexec(4), Some(true));
    }

    #[test]
    fn dup2_and_dup3_follow_linux() {
        let mut t = FdTable::default();
        let fd = t.install(file(), false).unwrap();
        assert_eq!(t.dup_to(fd, 0, None), Ok(0), "the file becomes stdin");
        assert!(t.host_file(0).is_some());
        assert_eq!(t.dup_to(1, 1, None), Ok(1), "dup2 onto itself: a no-op");
        assert_eq!(
            t.dup_to(1, 1, Some(0)),
            Err(Errno::EINVAL),
            "dup3 onto itself"
        );
        assert_eq!(t.dup_to(1, 255, Some(libc::O_CLOEXEC)), Ok(255));
        assert_eq!(t.cloexec(255), Some(true));
        assert!(matches!(t.get(255), Ok(OpenFile::Std(1))));
        assert_eq!(t.dup_to(1, 9, Some(libc::O_NONBLOCK)), Err(Errno::EINVAL));
        assert_eq!(t.dup_to(50, 9, None), Err(Errno::EBADF));
        assert_eq!(t.dup_to(1, 5000, None), Err(Errno::EBADF));
        assert_eq!(
            t.fcntl(255, libc::F_GETFL, 0),
            Ok(i64::from(libc::O_WRONLY))
        );
    }

    #[test]
    fn close_range_closes_or_marks_a_range() {
        let mut t = FdTable::default();
        for _ in 0..5 {
            t.install(file(), false).unwrap();
        }
        assert_eq!(t.close_range(5, 6, 1 << 2), Ok(0));
        assert_eq!(
            (t.cloexec(5), t.cloexec(6), t.cloexec(7)),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(t.close_range(3, u64::from(u32::MAX), 0), Ok(0));
        assert_eq!(
            (t.get(2).is_ok(), t.get(3).is_ok(), t.get(7).is_ok()),
            (true, false, false)
        );
        assert_eq!(t.close_range(4, 3, 0), Err(Errno::EINVAL));
        assert_eq!(t.close_range(0, 1, 1 << 5), Err(Errno::EINVAL));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = FdTable::default();
        for _ in 3..MAX_FDS {
            t.dup(1, 0, false).unwrap();
        }
        assert_eq!(t.dup(1, 0, false), Err(Errno::EMFILE));
        let mut t = FdTable::default();
        for _ in 0..MAX_HOST_FILES {
            t.install(file(), false).unwrap();
        }
        assert_eq!(t.install(file(), false), Err(Errno::EMFILE));
    }

    #[test]
    fn snapshots_copy_the_standard_streams_only() {
        let mut t = FdTable::default();
        t.dup_to(2, 9, None).unwrap();
        t.install(file(), false).unwrap();
        let c = t.clone();
        assert!(matches!(c.get(9), Ok(OpenFile::Std(2))));
        assert_eq!(c.host_files(), 0);
    }
}
