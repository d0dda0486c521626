//! Files the user names — `run`'s image, `exec`'s program, `boot`'s kernel and initrd — opened
//! the one careful way: without blocking (a FIFO or a terminal would otherwise block in
//! `open` before any time limit starts), refused unless they are regular files, and their size
//! checked against the limit that applies *before* a byte is read; then exactly that many
//! bytes are read. So `/dev/zero`, a FIFO or a sparse 1 TB file costs nothing but an error.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::memory::human_size;

/// Errors opening or reading a user-named file.
#[derive(Debug, thiserror::Error)]
pub enum HostFileError {
    /// The file cannot be opened.
    #[error("cannot read {what} {}: {}", shown(path), os_text(source))]
    Open {
        /// What the file is for ("kernel", "program"...).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a regular file.
    #[error("{what} {} is {kind}, not a regular file: give a file (a pipe, device or directory cannot be loaded)", shown(path))]
    NotRegular {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// Larger than what it must fit in.
    #[error("{what} {} is {}, larger than {why} ({})", shown(path), human_size(*size), human_size(*limit))]
    TooLarge {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
        /// What the limit is ("guest memory (--mem)").
        why: &'static str,
    },
    /// Reading failed.
    #[error("cannot read {what} {}: {}", shown(path), os_text(source))]
    Read {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A path for messages: quoted when empty, so "" does not print as nothing.
pub fn shown(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "\"\" (an empty path)".into()
    } else {
        path.display().to_string()
    }
}

/// An OS error's text without Rust's " (os error N)" suffix.
pub fn os_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// What a file type is, for messages.
fn kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Opens `path` (a `what`) read-only without blocking and checks it is a regular file of at
/// most `limit` bytes (`why` names the limit). Returns the file and its size.
///
/// `O_NONBLOCK` only matters for the open itself (FIFOs, terminals); reads of a regular file
/// ignore it, so it stays set.
pub fn open_regular(
    what: &'static str,
    path: &Path,
    limit: u64,
    why: &'static str,
) -> Result<(File, u64), HostFileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| HostFileError::Open {
            what,
            path: path.into(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| HostFileError::Read {
        what,
        path: path.into(),
        source,
    })?;
    if !meta.is_file() {
        return Err(HostFileError::NotRegular {
            what,
            path: path.into(),
            kind: kind(meta.file_type()),
        });
    }
    if meta.len() > limit {
        return Err(HostFileError::TooLarge {
            what,
            path: path.into(),
            size: meta.len(),
            limit,
            why,
        });
    }
    Ok((file, meta.len()))
}

/// [`open_regular`], then reads the whole file (at most its size at open: a file that grows
/// meanwhile is cut there).
pub fn read_regular(
    what: &'static str,
    path: &Path,
    limit: u64,
    why: &'static str,
) -> Result<Vec<u8>, HostFileError> {
    let (file, size) = open_regular(what, path, limit, why)?;
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(size)
        .read_to_end(&mut bytes)
        .map_err(|source| HostFileError::Read {
            what,
            path: path.into(),
            source,
        })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_regular("image", &file, 5, "RAM").unwrap(), b"12345");
        let err = read_regular("image", &file, 4, "guest memory (--mem)").unwrap_err();
        assert!(
            matches!(err, HostFileError::TooLarge { size: 5, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("larger than guest memory (--mem)"));
        let err = read_regular("kernel", Path::new("/dev/zero"), 1 << 30, "RAM").unwrap_err();
        assert!(err.to_string().contains("a character device"), "{err}");
        let err = read_regular("kernel", dir.path(), 1 << 30, "RAM").unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        let missing = read_regular("initrd", &dir.path().join("no"), 1, "RAM").unwrap_err();
        assert_eq!(
            missing.to_string(),
            format!(
                "cannot read initrd {}/no: No such file or directory",
                dir.path().display()
            )
        );
        let empty = read_regular("program", Path::new(""), 1, "RAM").unwrap_err();
        assert!(
            empty.to_string().contains("\"\" (an empty path)"),
            "{empty}"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_regular("kernel", &fifo, 1 << 20, "RAM").unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
    }
}
