//! virtio-vsock, host side exactly as Firecracker's "hybrid vsock": a host program connects
//! to the Unix socket `PATH` and writes `CONNECT <port>\n` to reach a guest port (and reads
//! `OK <host_port>\n` once the guest accepts); a guest that connects to the host (CID 2)
//! port `P` reaches whoever listens on the Unix socket `PATH_P`.
//!
//! - [`device`]: the virtio device (RX/TX/event queues, the guest's CID);
//! - [`muxer`]: the host side: listener, CONNECT lines, the connection table, deadlines;
//! - [`conn`]: one connection's state machine, credit and held bytes;
//! - [`packet`]: the 44-byte `virtio_vsock_hdr` (virtio-bindings has none) and its checks;
//! - [`connect`]: the `CONNECT <port>\n` line, bounded, never read past its newline;
//! - [`credit`]: the credit-based flow control arithmetic;
//! - [`unix`]: binding `PATH` with clear errors, and a connect that never waits;
//! - [`model`]: a guest driver modelled on guest memory, for tests, benchmarks and fuzzing.
//!
//! docs/devices.md walks through a connection packet by packet.

pub mod conn;
pub mod connect;
pub mod credit;
pub mod device;
pub mod model;
pub mod muxer;
pub mod packet;
pub mod unix;

use std::path::PathBuf;

pub use device::Vsock;

/// The host's CID: guests connect to it.
pub const HOST_CID: u64 = 2;
/// Smallest CID a guest may have (0, 1, 2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;
/// The virtio device ID.
pub const VIRTIO_ID_VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;

/// `--vsock cid=N,uds=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID (≥ 3).
    pub cid: u64,
    /// The Unix socket host programs connect to; guest connections to port P go to `PATH_P`.
    pub uds: PathBuf,
}

impl std::str::FromStr for VsockConfig {
    type Err = VsockError;

    /// `cid=N,uds=PATH`, in any order, each key once.
    fn from_str(spec: &str) -> Result<Self, VsockError> {
        let bad = |why: &'static str| VsockError::Spec {
            spec: spec.to_string(),
            why,
        };
        let (mut cid, mut uds) = (None, None);
        for part in spec.split(',') {
            let (key, value) = part.split_once('=').ok_or(bad("expected KEY=VALUE"))?;
            match key {
                "cid" if cid.is_none() => {
                    let n: u64 = value.parse().map_err(|_| bad("cid must be a number"))?;
                    if n < MIN_GUEST_CID || n > u64::from(u32::MAX) {
                        return Err(VsockError::Cid(n));
                    }
                    cid = Some(n);
                }
                "uds" if uds.is_none() && !value.is_empty() => uds = Some(PathBuf::from(value)),
                "uds" => return Err(bad("uds needs a path, once")),
                "cid" => return Err(bad("cid given twice")),
                _ => return Err(bad("unknown key (the keys are cid and uds)")),
            }
        }
        Ok(Self {
            cid: cid.ok_or(bad("cid=N is missing"))?,
            uds: uds.ok_or(bad("uds=PATH is missing"))?,
        })
    }
}

/// Errors setting the device up.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// `--vsock` that cannot be parsed.
    #[error("--vsock {spec:?}: {why} (expected cid=N,uds=PATH)")]
    Spec {
        /// What was given.
        spec: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A CID that is reserved or too large.
    #[error("vsock: guest CID {0} is not allowed (0, 1 and 2 are reserved; at most 4294967295)")]
    Cid(u64),
    /// The socket's directory does not exist.
    #[error("vsock: cannot listen in {}: no such directory", .0.display())]
    NoDirectory(PathBuf),
    /// A program listens on the path already.
    #[error("vsock: {} is in use by another program (is another VM running?)", .0.display())]
    InUse(PathBuf),
    /// The path is a file that is not a socket.
    #[error("vsock: {} exists and is not a socket; choose another path", .0.display())]
    NotASocket(PathBuf),
    /// Binding failed for another reason.
    #[error("vsock: cannot listen on {}: {source}", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The muxer's epoll could not be made or used.
    #[error("vsock: epoll: {0}")]
    Epoll(#[source] std::io::Error),
    /// The muxer's timer could not be made.
    #[error("vsock: timerfd: {0}")]
    Timer(#[source] std::io::Error),
    /// The device's eventfds could not be made.
    #[error(transparent)]
    Virtio(#[from] super::VirtioError),
}

#[cfg(test)]
mod tests;
