//! virtio-vsock, host side as Firecracker's "hybrid vsock": the building blocks so far.
//!
//! - [`packet`]: the 44-byte `virtio_vsock_hdr` (virtio-bindings has none) and its constants;
//! - [`connect`]: the `CONNECT <port>\n` line a host program writes to the Unix socket
//!   before its stream is joined to a guest port, read without ever consuming a byte past
//!   the newline and bounded in length;
//! - [`credit`]: the credit-based flow control of one connection (what we advertise, what the
//!   guest may still send us, what we may still send it, when to send a CREDIT_UPDATE).
//!
//! The device itself (queues, the connection table, the host sockets on the event loop) is
//! the next step; see docs/linux-boot.md for what it will offer.

pub mod connect;
pub mod credit;
pub mod packet;

/// The host's CID: guests connect to it.
pub const HOST_CID: u64 = 2;
/// Smallest CID a guest may have (0, 1, 2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;
