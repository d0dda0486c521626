//! The program's memory as the system-call handlers see it: every guest pointer is checked
//! against program memory (never the VMM's tables) before vm-memory touches it, and every
//! page the VMM writes or discards is remembered, so a reset can restore it.

use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::layout::{self, USER_BASE};
use super::linux::Errno;
use crate::memory::{GuestRam, MemoryError, PAGE_SIZE};

/// Guest memory with checked, dirty-tracked access for system calls.
#[derive(Debug)]
pub struct UserMemory {
    ram: GuestRam,
    /// One bit per page written or discarded by the VMM since the last `take_vmm_dirty`.
    vmm_dirty: Vec<u64>,
}

impl UserMemory {
    /// Allocates `size` bytes of guest memory (checked with [`layout::check_mem`]).
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        layout::check_mem(size)?;
        let ram = GuestRam::new(0, size)?;
        let pages = size / PAGE_SIZE;
        Ok(Self {
            ram,
            vmm_dirty: vec![0; pages.div_ceil(64) as usize],
        })
    }

    /// The same memory under a second handle (a `vfork` child's, until it execs or ends).
    pub fn share(&self) -> Self {
        Self {
            ram: self.ram.share(),
            vmm_dirty: vec![0; self.vmm_dirty.len()],
        }
    }

    /// New memory holding a copy of `parent`'s (a `fork` child's); the bytes copied
    /// (`pagemap`: see [`GuestRam::copy_resident`](crate::memory::GuestRam::copy_resident)).
    pub fn copy_of(
        parent: &UserMemory,
        pagemap: Option<&std::fs::File>,
    ) -> Result<(Self, u64), MemoryError> {
        let child = Self::new(parent.size())?;
        let copied = child.ram.copy_resident(&parent.ram, pagemap)?;
        Ok((child, copied))
    }

    /// The whole guest memory (for loading and KVM registration).
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Guest memory size.
    pub fn size(&self) -> u64 {
        self.ram.size()
    }

    /// Checks that `[addr, addr+len)` is program memory (EFAULT otherwise).
    /// An empty range is always fine (Linux ignores the pointer of a zero-length buffer).
    pub fn check(&self, addr: u64, len: u64) -> Result<(), Errno> {
        if len == 0 || layout::is_user(addr, len, self.size()) {
            Ok(())
        } else {
            Err(Errno::EFAULT)
        }
    }

    fn mark(&mut self, addr: u64, len: u64) {
        if len == 0 {
            return;
        }
        for page in addr / PAGE_SIZE..=(addr + len - 1) / PAGE_SIZE {
            self.vmm_dirty[(page / 64) as usize] |= 1 << (page % 64);
        }
    }

    /// Reads program memory.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.check(addr, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.ram.read(addr, buf).map_err(|_| Errno::EFAULT)
    }

    /// Writes program memory.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        self.check(addr, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.mark(addr, data.len() as u64);
        self.ram.write(addr, data).map_err(|_| Errno::EFAULT)
    }

    /// Fills `[addr, addr+len)` from `file` at `offset` (a private file mapping) straight into
    /// guest memory, without moving the file's offset; returns the bytes the file had (the
    /// rest of the range is left as it is, zero for a fresh mapping).
    pub fn fill_from_file(
        &mut self,
        addr: u64,
        len: u64,
        file: &std::fs::File,
        offset: u64,
    ) -> Result<usize, Errno> {
        use std::os::fd::AsRawFd;
        use vm_memory::GuestMemoryBackend;
        self.check(addr, len)?;
        if len == 0 {
            return Ok(0);
        }
        self.mark(addr, len);
        let mem = self.ram.guest_memory();
        let slice = GuestMemoryBackend::get_slice(mem, GuestAddress(addr), len as usize)
            .map_err(|_| Errno::EFAULT)?;
        let guard = slice.ptr_guard_mut();
        let mut done = 0usize;
        while done < slice.len() {
            let at = i64::try_from(offset + done as u64).map_err(|_| Errno::EINVAL)?;
            // SAFETY: `guard` keeps the slice of guest memory mapped; the kernel writes at most
            // `slice.len() - done` bytes from `done` on, inside it. Guest memory is plain
            // bytes (the vCPU is stopped while the VMM serves a call), so any content is valid.
            let n = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    guard.as_ptr().add(done).cast(),
                    slice.len() - done,
                    at,
                )
            };
            match n {
                0 => break,
                n if n < 0 => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(Errno::from_io(&e));
                }
                n => done += n as usize,
            }
        }
        Ok(done)
    }

    /// Reads one kernel structure (or integer) at `addr`, with one bounds check.
    pub fn read_obj<T: ByteValued>(&self, addr: u64) -> Result<T, Errno> {
        self.check(addr, std::mem::size_of::<T>() as u64)?;
        self.ram
            .guest_memory()
            .read_obj(GuestAddress(addr))
            .map_err(|_| Errno::EFAULT)
    }

    /// Writes one kernel structure (or integer) at `addr`, with one bounds check.
    pub fn write_obj<T: ByteValued>(&mut self, addr: u64, value: &T) -> Result<(), Errno> {
        self.write(addr, value.as_slice())
    }

    /// Reads `count` structures at `addr` (an iovec array...) with one bounds check for the
    /// whole array, so no address arithmetic on the guest's pointer can overflow.
    pub fn read_array<T: ByteValued + Default>(
        &self,
        addr: u64,
        count: usize,
    ) -> Result<Vec<T>, Errno> {
        let size = std::mem::size_of::<T>();
        let len = count.checked_mul(size).ok_or(Errno::EINVAL)?;
        let mut bytes = vec![0u8; len];
        self.read(addr, &mut bytes)?;
        Ok(bytes
            .chunks_exact(size.max(1))
            .map(|chunk| {
                let mut item = T::default();
                item.as_mut_slice().copy_from_slice(chunk);
                item
            })
            .collect())
    }

    /// Reads a little-endian u64.
    pub fn read_u64(&self, addr: u64) -> Result<u64, Errno> {
        self.read_obj(addr)
    }

    /// Writes a little-endian u64.
    pub fn write_u64(&mut self, addr: u64, value: u64) -> Result<(), Errno> {
        self.write_obj(addr, &value)
    }

    /// Reads a NUL-terminated string of at most `max` bytes (without the NUL).
    pub fn read_cstr(&self, addr: u64, max: usize) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 256];
        let mut at = addr;
        loop {
            // Never read past the end of memory: shorten the last chunk.
            let room = self.size().saturating_sub(at).min(chunk.len() as u64) as usize;
            if room == 0 {
                return Err(Errno::EFAULT);
            }
            self.read(at, &mut chunk[..room])?;
            if let Some(nul) = chunk[..room].iter().position(|b| *b == 0) {
                out.extend_from_slice(&chunk[..nul]);
                return if out.len() > max {
                    Err(Errno::ENAMETOOLONG)
                } else {
                    Ok(out)
                };
            }
            out.extend_from_slice(&chunk[..room]);
            if out.len() > max {
                return Err(Errno::ENAMETOOLONG);
            }
            at += room as u64;
        }
    }

    /// Zeroes page-aligned program memory and gives it back to the host.
    pub fn discard(&mut self, addr: u64, len: u64) -> Result<(), Errno> {
        self.check(addr, len)?;
        if !addr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        self.mark(addr, len);
        self.ram.discard(addr, len).map_err(|_| Errno::EFAULT)
    }

    /// Copies `len` bytes from `src` to `dst` inside program memory (ranges may not overlap).
    pub fn copy(&mut self, src: u64, dst: u64, len: u64) -> Result<(), Errno> {
        self.check(src, len)?;
        self.check(dst, len)?;
        if len == 0 {
            return Ok(());
        }
        let mut buf = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            self.read(src + done, &mut buf[..n])?;
            self.write(dst + done, &buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// The pages the VMM wrote or discarded since the last call, as a bitmap (one bit per
    /// page, like KVM's dirty log), clearing it.
    pub fn take_vmm_dirty(&mut self) -> Vec<u64> {
        let fresh = vec![0; self.vmm_dirty.len()];
        std::mem::replace(&mut self.vmm_dirty, fresh)
    }

    /// First address of program memory.
    pub fn user_base(&self) -> u64 {
        USER_BASE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_into_the_vmm_area_are_refused() {
        let mut m = UserMemory::new(4 << 20).unwrap();
        assert_eq!(m.write(0x1000, &[0]), Err(Errno::EFAULT), "page tables");
        assert_eq!(m.write(layout::SYSCALL_STUB, &[0]), Err(Errno::EFAULT));
        assert_eq!(m.read(0, &mut [0]), Err(Errno::EFAULT));
        assert_eq!(m.write((4 << 20) - 1, &[0, 0]), Err(Errno::EFAULT));
        assert_eq!(m.write(u64::MAX, &[0]), Err(Errno::EFAULT));
        assert_eq!(m.write(0, &[]), Ok(()), "empty buffers are never touched");
        m.write(USER_BASE + 4096 * 3 + 5, b"hi\0").unwrap();
        assert_eq!(m.read_cstr(USER_BASE + 4096 * 3 + 5, 10).unwrap(), b"hi");
        assert_eq!(
            m.read_cstr(USER_BASE + 4096 * 3 + 5, 1),
            Err(Errno::ENAMETOOLONG)
        );
        // A string running into the end of memory.
        m.write((4 << 20) - 2, b"ab").unwrap();
        assert_eq!(m.read_cstr((4 << 20) - 2, 100), Err(Errno::EFAULT));
        let dirty = m.take_vmm_dirty();
        let page = (USER_BASE / 4096 + 3) as usize;
        assert_ne!(dirty[page / 64] & (1 << (page % 64)), 0);
        assert!(m.take_vmm_dirty().iter().all(|w| *w == 0));
    }

    #[test]
    fn discarded_pages_read_zero() {
        let mut m = UserMemory::new(4 << 20).unwrap();
        m.write(USER_BASE, &[1; 8192]).unwrap();
        m.discard(USER_BASE, 4096).unwrap();
        let mut b = [9u8; 2];
        m.read(USER_BASE + 4095, &mut b).unwrap();
        assert_eq!(b, [0, 1]);
        assert_eq!(m.discard(USER_BASE + 1, 4096), Err(Errno::EINVAL));
    }
}
