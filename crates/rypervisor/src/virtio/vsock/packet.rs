//! The virtio-vsock packet header (virtio 1.2, 5.10.6), little-endian, 44 bytes, packed; and
//! its operations and flags. virtio-bindings 0.2.7 does not carry it.

use vm_memory::ByteValued;

/// `struct virtio_vsock_hdr`.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload bytes that follow the header.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub kind: u16,
    /// Operation (`OP_*`).
    pub op: u16,
    /// Operation flags (`SHUTDOWN_*` for [`OP_SHUTDOWN`]).
    pub flags: u32,
    /// The sender's receive buffer size (credit).
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

// SAFETY: `repr(C, packed)` integers only, no padding: every byte pattern is a valid value.
unsafe impl ByteValued for Header {}

/// Bytes of [`Header`].
pub const HEADER_SIZE: usize = 44;
const _: () = assert!(std::mem::size_of::<Header>() == HEADER_SIZE);

/// Stream sockets, the only kind served.
pub const TYPE_STREAM: u16 = 1;
/// Connection request.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection refused or torn down.
pub const OP_RST: u16 = 3;
/// The sender will receive and/or send no more.
pub const OP_SHUTDOWN: u16 = 4;
/// Payload.
pub const OP_RW: u16 = 5;
/// Fresh credit numbers, unasked.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// A request for [`OP_CREDIT_UPDATE`].
pub const OP_CREDIT_REQUEST: u16 = 7;
/// SHUTDOWN flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;
/// Largest payload accepted in one packet (as Linux and Firecracker use).
pub const MAX_PAYLOAD: u32 = 64 << 10;

impl Header {
    /// The operation's name, for logs.
    pub fn op_name(&self) -> &'static str {
        match self.op {
            OP_REQUEST => "REQUEST",
            OP_RESPONSE => "RESPONSE",
            OP_RST => "RST",
            OP_SHUTDOWN => "SHUTDOWN",
            OP_RW => "RW",
            OP_CREDIT_UPDATE => "CREDIT_UPDATE",
            OP_CREDIT_REQUEST => "CREDIT_REQUEST",
            _ => "unknown",
        }
    }

    /// A reply header from `local` (host side) to the peer of `self`, with `op`.
    pub fn reply(&self, op: u16) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            len: 0,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }
}

/// Why a packet from the guest is not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not to the host's CID: dropped.
    NotForHost,
    /// Not from the guest's CID: dropped.
    Spoofed,
    /// Not a stream socket: answered with RST.
    NotStream,
    /// A payload longer than the maximum, or than the buffers hold: dropped.
    BadLength,
}

/// Checks a header the guest sent: addressed to the host, from the guest, a stream, with a
/// payload that is not too long and fits the `available` bytes after the header.
pub fn check(header: &Header, guest_cid: u64, available: usize) -> Result<(), Refusal> {
    let (dst, src, kind, len) = (header.dst_cid, header.src_cid, header.kind, header.len);
    if dst != super::HOST_CID {
        return Err(Refusal::NotForHost);
    }
    if src != guest_cid {
        return Err(Refusal::Spoofed);
    }
    if kind != TYPE_STREAM {
        return Err(Refusal::NotStream);
    }
    if len > MAX_PAYLOAD || len as usize > available {
        return Err(Refusal::BadLength);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_guest(op: u16, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1000,
            dst_port: 52,
            len,
            kind: TYPE_STREAM,
            op,
            ..Header::default()
        }
    }

    #[test]
    fn the_layout_is_the_specs() {
        let h = from_guest(OP_RW, 7);
        let bytes = h.as_slice();
        assert_eq!(bytes.len(), 44);
        assert_eq!(
            u64::from_le_bytes(bytes[0..8].try_into().unwrap()),
            3,
            "src_cid"
        );
        assert_eq!(
            u32::from_le_bytes(bytes[24..28].try_into().unwrap()),
            7,
            "len"
        );
        assert_eq!(
            u16::from_le_bytes(bytes[30..32].try_into().unwrap()),
            OP_RW,
            "op"
        );
        let r = h.reply(OP_RESPONSE);
        let (rs, rd, rsp, rdp) = (r.src_cid, r.dst_cid, r.src_port, r.dst_port);
        assert_eq!((rs, rd, rsp, rdp), (2, 3, 52, 1000));
        assert_eq!(r.op_name(), "RESPONSE");
    }

    #[test]
    fn packets_the_host_does_not_serve_are_named() {
        assert_eq!(check(&from_guest(OP_RW, 10), 3, 10), Ok(()));
        let mut h = from_guest(OP_RW, 10);
        h.dst_cid = 7;
        assert_eq!(check(&h, 3, 10), Err(Refusal::NotForHost));
        h = from_guest(OP_RW, 10);
        h.src_cid = 9;
        assert_eq!(check(&h, 3, 10), Err(Refusal::Spoofed));
        h = from_guest(OP_REQUEST, 0);
        h.kind = 2; // SEQPACKET
        assert_eq!(check(&h, 3, 0), Err(Refusal::NotStream));
        assert_eq!(
            check(&from_guest(OP_RW, 11), 3, 10),
            Err(Refusal::BadLength)
        );
        let huge = from_guest(OP_RW, u32::MAX);
        assert_eq!(check(&huge, 3, usize::MAX), Err(Refusal::BadLength));
    }
}
