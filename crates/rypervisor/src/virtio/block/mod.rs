//! virtio-blk: a disk image file as `/dev/vdX` in the guest.
//!
//! - [`DriveConfig`] (here): `--drive path=FILE[,ro][,serial=ID][,root][,cache=writeback]`,
//!   and opening the file with clear errors (missing, a directory, not writable without
//!   `ro`, a size that is not whole sectors, the same file twice, another process using it);
//! - [`disk`]: the image: positioned I/O straight into guest memory, flush, holes, zeroes;
//! - [`request`]: one request parsed from its chain, checked and executed;
//! - [`device`]: the virtio device (one queue, features, configuration space).

pub mod device;
pub mod disk;
pub mod request;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use device::Block;
pub use disk::Disk;

/// Longest serial GET_ID answers (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_SERIAL: usize = 20;

/// One `--drive`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveConfig {
    /// The image file.
    pub path: PathBuf,
    /// Attach read-only (VIRTIO_BLK_F_RO; writes complete with IOERR).
    pub read_only: bool,
    /// What GET_ID answers (`/sys/block/vdX/serial`).
    pub serial: Option<String>,
    /// Boot from it: `root=/dev/vdX` on the kernel command line.
    pub root: bool,
    /// Offer FLUSH, and make each flush reach the disk (`fdatasync`).
    pub writeback: bool,
}

impl std::str::FromStr for DriveConfig {
    type Err = BlockError;

    /// `path=FILE[,ro][,serial=ID][,root][,cache=writeback|unsafe]`.
    fn from_str(spec: &str) -> Result<Self, BlockError> {
        let bad = |why: &'static str| BlockError::Spec {
            spec: spec.to_string(),
            why,
        };
        let mut d = DriveConfig {
            path: PathBuf::new(),
            read_only: false,
            serial: None,
            root: false,
            writeback: false,
        };
        for part in super::option_parts(spec).map_err(bad)? {
            match part {
                ("path", Some("")) => return Err(bad("path=FILE: the file name is empty")),
                ("path", Some(p)) => d.path = PathBuf::from(p),
                ("serial", Some(s)) => {
                    let printable = s.bytes().all(|b| b.is_ascii_graphic());
                    if s.len() > MAX_SERIAL || !printable {
                        return Err(bad("serial: at most 20 printable ASCII characters"));
                    }
                    d.serial = Some(s.to_string());
                }
                ("cache", Some("writeback")) => d.writeback = true,
                ("cache", Some("unsafe")) => d.writeback = false,
                ("cache", Some(_)) => return Err(bad("cache is writeback or unsafe")),
                ("ro", None) => d.read_only = true,
                ("root", None) => d.root = true,
                _ => return Err(bad("unknown key (path=, ro, serial=, root, cache=)")),
            }
        }
        if d.path.as_os_str().is_empty() {
            return Err(bad("path=FILE is missing"));
        }
        Ok(d)
    }
}

/// Errors attaching a drive.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// `--drive` that cannot be parsed.
    #[error("--drive {spec:?}: {why}")]
    Spec {
        /// What was given.
        spec: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The file cannot be opened as asked.
    #[error("--drive {}: {}{hint}", path.display(), crate::hostfile::os_text(source))]
    Open {
        /// The image.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// Not a regular file.
    #[error("--drive {}: not a regular file (a disk image is a file)", .0.display())]
    NotAFile(PathBuf),
    /// A size that is not whole sectors.
    #[error("--drive {}: its size, {} bytes, is not a multiple of 512", .0.display(), .1)]
    Size(PathBuf, u64),
    /// The same file twice, at least once writable.
    #[error("--drive {}: the same file is attached twice (and writable at least once)", .0.display())]
    Twice(PathBuf),
    /// Another process holds the file.
    #[error("--drive {}: in use by another process (another VM?)", .0.display())]
    Locked(PathBuf),
    /// More than one root drive.
    #[error("--drive: only one drive can be the root")]
    TwoRoots,
    /// The device's eventfds could not be made.
    #[error(transparent)]
    Virtio(#[from] super::VirtioError),
}

/// Opens every drive's image, refusing the same file twice where one is writable.
pub fn open_all(drives: &[DriveConfig]) -> Result<Vec<(Disk, &DriveConfig)>, BlockError> {
    if drives.iter().filter(|d| d.root).count() > 1 {
        return Err(BlockError::TwoRoots);
    }
    let mut seen: Vec<(u64, u64, bool)> = Vec::new();
    let mut out = Vec::new();
    for d in drives {
        let (file, size, dev, ino) = open(d)?;
        if seen
            .iter()
            .any(|&(sd, si, ro)| sd == dev && si == ino && !(ro && d.read_only))
        {
            return Err(BlockError::Twice(d.path.clone()));
        }
        seen.push((dev, ino, d.read_only));
        lock(&file, d.read_only, &d.path)?;
        out.push((Disk::new(file, size, d.read_only, d.writeback), d));
    }
    Ok(out)
}

/// Opens one image: a regular file of whole sectors; its size, device and inode.
fn open(d: &DriveConfig) -> Result<(File, u64, u64, u64), BlockError> {
    let open_error = |source: std::io::Error| {
        let hint = match source.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EROFS) if !d.read_only => {
                " (add ,ro to attach it read-only)"
            }
            Some(libc::EISDIR) => " (a disk image is a file)",
            _ => "",
        };
        BlockError::Open {
            path: d.path.clone(),
            source,
            hint,
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(!d.read_only)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&d.path)
        .map_err(open_error)?;
    let meta = file.metadata().map_err(open_error)?;
    if !meta.is_file() {
        return Err(BlockError::NotAFile(d.path.clone()));
    }
    if !meta.len().is_multiple_of(disk::SECTOR) {
        return Err(BlockError::Size(d.path.clone(), meta.len()));
    }
    Ok((file, meta.len(), meta.dev(), meta.ino()))
}

/// An advisory lock, as other VMMs take: exclusive for a writable image, shared otherwise.
fn lock(file: &File, read_only: bool, path: &Path) -> Result<(), BlockError> {
    let how = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: a plain system call on a descriptor we own; the result is checked.
    if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(BlockError::Locked(path.to_path_buf()));
        }
        return Err(BlockError::Open {
            path: path.to_path_buf(),
            source: e,
            hint: " (cannot lock the image)",
        });
    }
    // Opened non-blocking so that a FIFO named by mistake cannot hang us; a regular file
    // needs no such flag (some network file systems would honour it).
    // SAFETY: plain fcntl calls on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
