//! The host's Unix sockets: the listener at the user's `PATH` (bound when the VM is built, so
//! a bad path is an error before the boot, not a surprise during it) and the non-blocking
//! connect to `PATH_<port>` a guest-initiated connection makes.
//!
//! The connect is hand-written on `libc`: `std`'s `UnixStream::connect` blocks when the
//! listener's backlog is full, and the event loop must never wait for a host program.

use std::io::ErrorKind;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::VsockError;

/// Listens on `path`, non-blocking. A socket file left by an earlier run (nothing accepts on
/// it any more) is replaced; a socket someone still listens on, or any other file, is an
/// error naming it, as is a directory that does not exist.
pub fn listen(path: &Path) -> Result<UnixListener, VsockError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(VsockError::NoDirectory(parent.to_path_buf()));
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(VsockError::NotASocket(path.to_path_buf()));
        }
        match UnixStream::connect(path) {
            Ok(_) => return Err(VsockError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                tracing::info!("vsock: replacing the stale socket {}", path.display());
                let _ = std::fs::remove_file(path);
            }
            Err(source) => return Err(listen_error(path, source)),
        }
    }
    let listener = UnixListener::bind(path).map_err(|e| listen_error(path, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| listen_error(path, e))?;
    Ok(listener)
}

fn listen_error(path: &Path, source: std::io::Error) -> VsockError {
    match source.kind() {
        ErrorKind::AddrInUse => VsockError::InUse(path.to_path_buf()),
        _ => VsockError::Listen {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// The socket a guest connection to host port `port` reaches: `PATH_<port>`.
pub fn port_path(base: &Path, port: u32) -> PathBuf {
    let mut p = base.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Connects to `path` without ever waiting: a listener that is there and has room in its
/// backlog gives a stream at once (Unix sockets connect synchronously); anything else —
/// no such socket, nobody listening, a full backlog (`EAGAIN`) — is an error. The stream
/// keeps out-of-band bytes inline ([`oob_inline`]).
pub fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: a plain system call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes; the result is checked.
    let r = unsafe {
        use std::os::fd::AsRawFd;
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let stream = UnixStream::from(fd);
    oob_inline(&stream)?;
    Ok(stream)
}

/// Keeps a host program's out-of-band bytes (`send(..., MSG_OOB)`) in the stream, in order
/// (SO_OOBINLINE): vsock has no urgent data, and without it the kernel leaves them out of
/// every ordinary read. (std and vmm-sys-util have no call for this socket option.)
pub fn oob_inline(stream: &UnixStream) -> std::io::Result<()> {
    switch_on(stream, libc::SOL_SOCKET, libc::SO_OOBINLINE)
}

/// Sets the int socket option `name` at `level` to 1.
pub(crate) fn switch_on(stream: &UnixStream, level: i32, name: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: `on` is a c_int that outlives the call, and its size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_cannot_be_listened_on_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope/v.sock");
        assert!(matches!(listen(&missing), Err(VsockError::NoDirectory(_))));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(listen(&file), Err(VsockError::NotASocket(_))));
        let path = dir.path().join("v.sock");
        let first = listen(&path).unwrap();
        assert!(matches!(listen(&path), Err(VsockError::InUse(_))));
        drop(first); // the file stays, nobody listens: stale, replaced
        let _again = listen(&path).unwrap();
    }

    #[test]
    fn a_connect_never_waits() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("v.sock");
        let path = port_path(&base, 52);
        assert!(path.to_str().unwrap().ends_with("v.sock_52"));
        let err = connect_nonblocking(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let listener = UnixListener::bind(&path).unwrap();
        let stream = connect_nonblocking(&path).unwrap();
        let (_peer, _) = listener.accept().unwrap();
        drop(stream);
        // A listener whose backlog is full (shrunk to one): EAGAIN, not a wait.
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on a live listener.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 1) }, 0);
        let mut held = Vec::new();
        let refused = (0..100).find_map(|_| match connect_nonblocking(&path) {
            Ok(s) => {
                held.push(s);
                None
            }
            Err(e) => Some(e),
        });
        assert_eq!(refused.map(|e| e.kind()), Some(ErrorKind::WouldBlock));
    }
}
