//! A descriptor chain's buffers as guest-memory slices, so a device moves bytes straight
//! between a host descriptor (a socket, a file) and guest memory with one system call and no
//! copy in between (`vm-memory`'s `ReadVolatile`/`WriteVolatile`). virtio-queue's
//! `Reader`/`Writer` only copy through `std::io` buffers, which costs a memcpy per packet.
//! The system calls over the slices are in `buffers/io.rs`.

use std::collections::VecDeque;
use std::io::ErrorKind;

use smallvec::{smallvec, SmallVec};

mod io;
pub(crate) use io::syscall;
pub use io::{recv_windows, StreamRead, Window, MAX_READ_SLICES};

use virtio_queue::DescriptorChain;
use vm_memory::{
    ByteValued, GuestMemory, GuestMemoryBackend, GuestMemoryMmap, Permissions, VolatileMemoryError,
    VolatileSlice, WriteVolatile,
};

/// One slice of guest memory.
pub type Slice<'m> = VolatileSlice<'m, ()>;

/// Why a chain's buffers cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// A descriptor points outside guest memory.
    #[error("a buffer lies outside guest memory")]
    OutsideMemory,
    /// The lengths add up past what can be addressed.
    #[error("the buffers' lengths overflow")]
    Overflow,
    /// Fewer bytes than needed.
    #[error("shorter than {0} bytes")]
    Short(usize),
    /// More descriptors than any of our queues holds (virtio forbids a chain longer than
    /// the queue; only an indirect table, which we never offer, could make one).
    #[error("a chain of more than {MAX_CHAIN} descriptors")]
    TooLong,
    /// The chain stops at a descriptor that says another follows: it loops, points past
    /// the table, or passes 4 GiB in all (virtio-queue ends such a walk without a word).
    #[error("a chain that loops or runs past its table")]
    Cut,
}

/// Descriptors in a chain at most: the largest queue our devices offer.
pub const MAX_CHAIN: usize = 256;

/// Walks `chain`, giving `f` each descriptor, and checks how it ended: bounded by
/// [`MAX_CHAIN`] descriptors, and a chain cut short (see [`BufferError::Cut`]) is an error.
pub fn walk<M>(
    chain: DescriptorChain<M>,
    mut f: impl FnMut(virtio_queue::desc::split::Descriptor) -> Result<(), BufferError>,
) -> Result<(), BufferError>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let mut more = false;
    for (i, d) in chain.enumerate() {
        if i == MAX_CHAIN {
            return Err(BufferError::TooLong);
        }
        more = d.has_next();
        f(d)?;
    }
    match more {
        true => Err(BufferError::Cut),
        false => Ok(()),
    }
}

/// Slices kept inline: a packet, frame or request is a header and a payload or two (more
/// spill to the heap). Serving one costs no allocation.
const INLINE_SLICES: usize = 4;

/// The buffers of one direction of a chain, consumed from the front.
#[derive(Clone, Debug, Default)]
pub struct Buffers<'m> {
    slices: SmallVec<[Slice<'m>; INLINE_SLICES]>,
    len: usize,
}

impl<'m> Buffers<'m> {
    /// The driver-readable (`writable == false`) or device-writable buffers of `chain`.
    pub fn of(
        chain: DescriptorChain<&'m GuestMemoryMmap>,
        mem: &'m GuestMemoryMmap,
        writable: bool,
    ) -> Result<Self, BufferError> {
        let mut b = Self::default();
        walk(chain, |d| {
            // Zero-length descriptors carry nothing (and would only count against IOV_MAX).
            if d.is_write_only() == writable && d.len() > 0 {
                b.push(mem, d.addr(), d.len() as usize, writable)?;
            }
            Ok(())
        })?;
        Ok(b)
    }

    /// Both directions of `chain` in one walk: (driver-readable, device-writable).
    pub fn split(
        chain: DescriptorChain<&'m GuestMemoryMmap>,
        mem: &'m GuestMemoryMmap,
    ) -> Result<(Self, Self), BufferError> {
        let (mut r, mut w) = (Self::default(), Self::default());
        walk(chain, |d| {
            let (b, writable) = match d.is_write_only() {
                true => (&mut w, true),
                false => (&mut r, false),
            };
            if d.len() > 0 {
                b.push(mem, d.addr(), d.len() as usize, writable)?;
            }
            Ok(())
        })?;
        Ok((r, w))
    }

    /// Appends the guest buffer `[addr, addr+len)`, which may span regions.
    fn push(
        &mut self,
        mem: &'m GuestMemoryMmap,
        addr: vm_memory::GuestAddress,
        len: usize,
        writable: bool,
    ) -> Result<(), BufferError> {
        self.len = self.len.checked_add(len).ok_or(BufferError::Overflow)?;
        // The common case first: the buffer lies in one region (one lookup, no iterator).
        if let Ok(slice) = GuestMemoryBackend::get_slice(mem, addr, len) {
            self.slices.push(slice);
            return Ok(());
        }
        let access = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let slices = GuestMemory::get_slices(mem, addr, len, access)
            .map_err(|_| BufferError::OutsideMemory)?;
        let mut covered = 0;
        for s in slices {
            let s = s.map_err(|_| BufferError::OutsideMemory)?;
            covered += s.len();
            self.slices.push(s);
        }
        if covered != len {
            return Err(BufferError::OutsideMemory);
        }
        Ok(())
    }

    /// Takes the last byte off the end, as a slice of its own (a virtio-blk status byte).
    pub fn pop_last_byte(&mut self) -> Option<Slice<'m>> {
        while self.slices.last().is_some_and(|s| s.is_empty()) {
            self.slices.pop(); // (empty slices are never pushed; kept safe anyway)
        }
        let last = self.slices.last_mut()?;
        let at = last.len().checked_sub(1)?;
        let byte = last.subslice(at, 1).ok()?;
        if at == 0 {
            self.slices.pop();
        } else {
            *last = last.subslice(0, at).ok()?;
        }
        self.len -= 1;
        Some(byte)
    }

    /// Buffers over host memory (for tests).
    pub fn from_bytes(bytes: &'m mut [u8]) -> Self {
        let len = bytes.len();
        Self {
            slices: smallvec![VolatileSlice::from(bytes)],
            len,
        }
    }

    /// Bytes left.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no bytes are left.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many slices (a frame or request over more than `IOV_MAX` cannot move in one
    /// call).
    pub fn slice_count(&self) -> usize {
        self.slices.len()
    }

    /// The slices, in order.
    pub fn slices(&self) -> impl Iterator<Item = &Slice<'m>> {
        self.slices.iter()
    }

    /// Drops the first `n` bytes.
    pub fn skip(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        // The slices wholly consumed go in one drain; the next one is cut.
        let mut gone = 0;
        for s in self.slices.iter_mut() {
            if n == 0 {
                break;
            }
            if s.len() > n {
                *s = s.offset(n).unwrap_or(*s);
                break;
            }
            n -= s.len();
            gone += 1;
        }
        self.slices.drain(..gone);
    }

    /// Appends `other`'s slices after ours.
    pub fn append(&mut self, other: Buffers<'m>) {
        self.len = self.len.saturating_add(other.len);
        self.slices.extend(other.slices);
    }

    /// Keeps the first `n` bytes (at most what is left), dropping the rest.
    pub fn truncate(&mut self, n: usize) {
        let mut left = n.min(self.len);
        self.len = left;
        let mut keep = 0;
        for s in self.slices.iter_mut() {
            if left == 0 {
                break;
            }
            if s.len() > left {
                *s = s.subslice(0, left).unwrap_or(*s);
            }
            left -= s.len();
            keep += 1;
        }
        self.slices.truncate(keep);
    }

    /// Copies out an object from the front and consumes it.
    pub fn read_obj<T: ByteValued + Default>(&mut self) -> Result<T, BufferError> {
        let mut obj = T::default();
        let size = std::mem::size_of::<T>();
        if self.copy_out(obj.as_mut_slice()) < size {
            return Err(BufferError::Short(size));
        }
        self.skip(size);
        Ok(obj)
    }

    /// Copies `bytes` in at the front and consumes them.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), BufferError> {
        if self.len < bytes.len() {
            return Err(BufferError::Short(bytes.len()));
        }
        let mut done = 0;
        for s in &self.slices {
            if done == bytes.len() {
                break;
            }
            let n = s.len().min(bytes.len() - done);
            s.copy_from(&bytes[done..done + n]);
            done += n;
        }
        self.skip(bytes.len());
        Ok(())
    }

    /// Writes `bytes` at `offset` from the front, consuming nothing (a field of a header the
    /// device filled by a read).
    pub fn write_at(&self, offset: usize, bytes: &[u8]) -> Result<(), BufferError> {
        let end = offset
            .checked_add(bytes.len())
            .ok_or(BufferError::Overflow)?;
        if end > self.len {
            return Err(BufferError::Short(end));
        }
        let (mut skip, mut done) = (offset, 0);
        for s in &self.slices {
            if done == bytes.len() {
                break;
            }
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            let n = (s.len() - skip).min(bytes.len() - done);
            if let Ok(part) = s.subslice(skip, n) {
                part.copy_from(&bytes[done..done + n]);
            }
            skip = 0;
            done += n;
        }
        Ok(())
    }

    /// Copies the front into `out` (as much as fits), consuming nothing; how many bytes.
    pub fn peek(&self, out: &mut [u8]) -> usize {
        self.copy_out(out)
    }

    /// Copies the front into `out` (as much as fits); how many bytes.
    fn copy_out(&self, out: &mut [u8]) -> usize {
        let mut done = 0;
        for s in &self.slices {
            if done == out.len() {
                break;
            }
            done += s.copy_to(&mut out[done..]);
        }
        done
    }

    /// Appends everything left to `out`.
    pub fn append_to(&self, out: &mut VecDeque<u8>) {
        if self.is_empty() {
            return; // (the bounce chunk below costs a 4 KiB memset)
        }
        let mut chunk = [0u8; 4096];
        for s in &self.slices {
            let mut at = 0;
            while at < s.len() {
                let part = s.subslice(at, (s.len() - at).min(chunk.len()));
                let Ok(part) = part else { break };
                let n = part.copy_to(&mut chunk[..]);
                out.extend(&chunk[..n]);
                at += n;
            }
        }
    }

    /// Writes from the front into `w` until it takes less than offered; how many bytes
    /// (`WouldBlock` after some bytes is a short count, not an error). Consumes nothing.
    pub fn write_to(&self, w: &mut impl WriteVolatile) -> std::io::Result<usize> {
        let mut done = 0;
        for s in &self.slices {
            match retry(|| w.write_volatile(s)) {
                Ok(n) => {
                    done += n;
                    if n < s.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock && done > 0 => break,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// Retries on EINTR; gives the OS error back as `std::io::Error`.
fn retry(mut f: impl FnMut() -> Result<usize, VolatileMemoryError>) -> std::io::Result<usize> {
    loop {
        match f() {
            Ok(n) => return Ok(n),
            Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::Interrupted => {}
            Err(VolatileMemoryError::IOError(e)) => return Err(e),
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::driver::{Buffer, DriverQueue};
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn chains_split_by_direction_and_move_bytes_without_copies() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut d = DriverQueue::new(&mem, 8, 0x1000);
        let mut q = d.device_queue(false);
        mem.write_slice(b"head", GuestAddress(0x8000)).unwrap();
        mem.write_slice(b"er+payload", GuestAddress(0x9000))
            .unwrap();
        let b = |addr, len, writable| Buffer {
            addr,
            len,
            writable,
        };
        d.offer(&[
            b(0x8000, 4, false),
            b(0x9000, 10, false),
            b(0xa000, 16, true),
        ])
        .unwrap();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        let mut r = Buffers::of(chain.clone(), &mem, false).unwrap();
        assert_eq!(r.len(), 14);
        let head: [u8; 7] = r.read_obj().unwrap();
        assert_eq!(&head, b"header+");
        let (mut a, mut z) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut three = r.clone();
        three.truncate(3);
        assert_eq!(three.write_to(&mut a).unwrap(), 3);
        let mut got = [0u8; 3];
        std::io::Read::read_exact(&mut z, &mut got).unwrap();
        assert_eq!(&got, b"pay");
        let w = Buffers::of(chain, &mem, true).unwrap();
        assert_eq!(w.len(), 16);
        std::io::Write::write_all(&mut z, b"into the guest").unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(
            recv_windows(a.as_raw_fd(), &[Window::whole(&w)], 16, &mut []).unwrap(),
            StreamRead {
                read: 14,
                offered: 16,
                cut_at_descriptors: false
            }
        );
        let mut back = [0u8; 14];
        mem.read_slice(&mut back, GuestAddress(0xa000)).unwrap();
        assert_eq!(&back, b"into the guest");
    }

    #[test]
    fn one_walk_splits_both_directions_and_the_last_byte_comes_off() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut d = DriverQueue::new(&mem, 8, 0x1000);
        let mut q = d.device_queue(false);
        let b = |addr, len, writable| Buffer {
            addr,
            len,
            writable,
        };
        d.offer(&[
            b(0x8000, 16, false),
            b(0x9000, 0, true), // empty: skipped
            b(0xa000, 8, true),
            b(0xb000, 1, true),
        ])
        .unwrap();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        let (r, mut w) = Buffers::split(chain, &mem).unwrap();
        assert_eq!((r.len(), r.slice_count()), (16, 1));
        assert_eq!((w.len(), w.slice_count()), (9, 2));
        w.pop_last_byte().unwrap().copy_from(&[0xeeu8]);
        assert_eq!((w.len(), w.slice_count()), (8, 1));
        w.pop_last_byte().unwrap().copy_from(&[0xddu8]);
        assert_eq!((w.len(), w.slice_count()), (7, 1));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0xb000)).unwrap(), 0xee);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0xa007)).unwrap(), 0xdd);
        for _ in 0..7 {
            w.pop_last_byte().unwrap();
        }
        assert!(w.is_empty() && w.pop_last_byte().is_none());
    }

    #[test]
    fn chains_that_loop_or_run_past_the_queues_length_are_refused() {
        use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut d = DriverQueue::new(&mem, 8, 0x1000);
        let mut q = d.device_queue(false);
        let (table, _, _) = d.rings();
        let desc = |at: u64, addr: u64, len: u32, flags: u32, next: u16| {
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&(flags as u16).to_le_bytes());
            raw[14..].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&raw, GuestAddress(at)).unwrap();
        };
        let one = Buffer {
            addr: 0x8000,
            len: 4,
            writable: false,
        };
        // A descriptor whose next is itself.
        let head = d.offer(&[one]).unwrap();
        let at = table + 16 * u64::from(head);
        desc(at, 0x8000, 4, VRING_DESC_F_NEXT, head);
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        assert!(matches!(
            Buffers::of(chain, &mem, false),
            Err(BufferError::Cut)
        ));
        // Indirect tables (never offered, but virtio-queue follows them): up to MAX_CHAIN
        // descriptors are a chain like any other; more are refused, unread.
        for (n, ok) in [(MAX_CHAIN, true), (MAX_CHAIN + 1, false), (4096, false)] {
            let at = 0x2_0000;
            for i in 0..n as u64 {
                let flags = if i + 1 < n as u64 {
                    VRING_DESC_F_NEXT
                } else {
                    0
                };
                desc(at + 16 * i, 0x8000, 1, flags, i as u16 + 1);
            }
            let head = d.offer(&[one]).unwrap();
            let entry = table + 16 * u64::from(head);
            desc(entry, at, 16 * n as u32, VRING_DESC_F_INDIRECT, 0);
            let chain = q.pop_descriptor_chain(&mem).unwrap();
            match Buffers::split(chain, &mem) {
                Ok((r, _)) => assert!(ok && r.len() == n, "{n} descriptors"),
                Err(e) => assert!(!ok && matches!(e, BufferError::TooLong), "{n}: {e}"),
            }
            q.add_used(&mem, head, 0).unwrap();
            d.take_used().unwrap();
        }
    }

    #[test]
    fn writes_at_an_offset_cross_slices_and_peeks_consume_nothing() {
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        let mut buf = Buffers::from_bytes(&mut a);
        buf.append(Buffers::from_bytes(&mut b));
        buf.write_at(2, &[1, 2, 3, 4]).unwrap();
        assert!(matches!(
            buf.write_at(6, &[0; 3]),
            Err(BufferError::Short(9))
        ));
        let mut out = [0u8; 8];
        assert_eq!(buf.peek(&mut out), 8);
        assert_eq!(out, [0, 0, 1, 2, 3, 4, 0, 0]);
        assert_eq!(buf.len(), 8);
        buf.truncate(5);
        assert_eq!((buf.len(), buf.slice_count()), (5, 2));
        assert_eq!(buf.peek(&mut out), 5);
    }

    #[test]
    fn buffers_outside_memory_are_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut d = DriverQueue::new(&mem, 8, 0x1000);
        let mut q = d.device_queue(false);
        let far = Buffer {
            addr: 0xf_0000,
            len: 0x2_0000, // runs past the end
            writable: false,
        };
        d.offer(&[far]).unwrap();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        assert!(matches!(
            Buffers::of(chain, &mem, false),
            Err(BufferError::OutsideMemory)
        ));
    }
}
