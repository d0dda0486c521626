//! Guest physical memory: anonymous host memory that KVM maps into the guest.
//!
//! All guest memory access goes through `vm-memory`'s [`GuestMemoryMmap`], which checks
//! every guest address and length against the mapped regions.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Guest page size used for layout checks.
pub const PAGE_SIZE: u64 = 4096;

/// Errors about guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A size string could not be parsed.
    #[error("invalid size '{0}': use a number with an optional K, M or G suffix, e.g. 2M")]
    BadSize(String),
    /// Zero bytes of memory were asked for.
    #[error("guest memory size must be greater than zero")]
    Zero,
    /// The size is not page aligned.
    #[error("guest memory size {0:#x} is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// More memory than the limit for this kind of guest.
    #[error("guest memory size {} is too large: {why}", human_size(*size))]
    TooLarge {
        /// The size asked for.
        size: u64,
        /// Which limit it crossed.
        why: String,
    },
    /// Less memory than the guest layout needs.
    #[error("guest memory size {} is too small: {why}", human_size(*size))]
    TooSmall {
        /// The size asked for.
        size: u64,
        /// What needs more.
        why: String,
    },
    /// The host could not map the memory.
    #[error("cannot allocate {} of guest memory: {source}", human_size(*size))]
    Allocate {
        /// The size asked for.
        size: u64,
        /// The vm-memory error.
        source: vm_memory::mmap::FromRangesError,
    },
    /// A guest access fell outside guest memory.
    #[error("guest memory access at {addr:#x} (+{len:#x}) is outside guest memory")]
    OutOfRange {
        /// Guest physical address.
        addr: u64,
        /// Length of the access.
        len: usize,
    },
}

/// Parses a memory size such as `4096`, `64K`, `2M`, `1G` (binary units, case-insensitive,
/// an optional trailing `B` or `iB` accepted).
pub fn parse_size(text: &str) -> Result<u64, MemoryError> {
    let bad = || MemoryError::BadSize(text.to_owned());
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("ib"))
        .or_else(|| t.strip_suffix(['B', 'b']))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad()),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Formats a byte count the way users type it (e.g. `2 MiB`, `4 KiB`, `1536 B`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} B")
}

/// The physical memory installed on this host, in bytes (0 if unknown).
pub fn host_memory() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions; it only reads system information.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        0
    } else {
        (pages as u64).saturating_mul(page as u64)
    }
}

/// One contiguous block of guest RAM.
#[derive(Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    base: u64,
    size: u64,
}

impl GuestRam {
    /// Allocates `size` bytes of anonymous host memory for guest-physical `[base, base+size)`.
    ///
    /// The size must be non-zero, page aligned and no larger than the host's RAM.
    pub fn new(base: u64, size: u64) -> Result<Self, MemoryError> {
        if size == 0 {
            return Err(MemoryError::Zero);
        }
        if !size.is_multiple_of(PAGE_SIZE) || !base.is_multiple_of(PAGE_SIZE) {
            return Err(MemoryError::Unaligned(size));
        }
        let host = host_memory();
        if host != 0 && size > host {
            return Err(MemoryError::TooLarge {
                size,
                why: format!("this host has {} of RAM", human_size(host)),
            });
        }
        let len = usize::try_from(size).map_err(|_| MemoryError::TooLarge {
            size,
            why: "larger than the address space".into(),
        })?;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(base), len)])
            .map_err(|source| MemoryError::Allocate { size, source })?;
        Ok(Self { mem, base, size })
    }

    /// The vm-memory object, for device models and loaders.
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// First guest-physical address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// One past the last guest-physical address.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    /// The host virtual address where guest-physical `base` is mapped.
    pub fn host_address(&self) -> u64 {
        self.mem
            .iter()
            .next()
            .map(|r| r.as_ptr() as u64)
            .unwrap_or_default()
    }

    /// Whether `[addr, addr+len)` lies inside guest RAM.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.base && addr.checked_add(len).is_some_and(|end| end <= self.end())
    }

    /// Copies `data` into guest memory at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|_| MemoryError::OutOfRange {
                addr,
                len: data.len(),
            })
    }

    /// Reads `buf.len()` bytes from guest memory at `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.mem
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| MemoryError::OutOfRange {
                addr,
                len: buf.len(),
            })
    }

    /// Reads a little-endian u64 at `addr`.
    pub fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Gives `[addr, addr+len)` back to the host (`madvise(MADV_DONTNEED)`): the pages read as
    /// zero afterwards and stop counting towards the VMM's resident memory. Both ends must be
    /// page aligned and inside guest RAM.
    pub fn discard(&self, addr: u64, len: u64) -> Result<(), MemoryError> {
        let out_of_range = || MemoryError::OutOfRange {
            addr,
            len: len as usize,
        };
        if len == 0 {
            return Ok(());
        }
        if !addr.is_multiple_of(PAGE_SIZE)
            || !len.is_multiple_of(PAGE_SIZE)
            || !self.contains(addr, len)
        {
            return Err(out_of_range());
        }
        let host = self.host_address() + (addr - self.base);
        // SAFETY: `[host, host+len)` lies inside the single anonymous mapping owned by
        // `self.mem` (checked just above with `contains`), both ends are page aligned, and
        // MADV_DONTNEED on private anonymous memory only replaces its contents with zero pages;
        // no Rust reference into guest memory exists (vm-memory hands out volatile slices only).
        let rc =
            unsafe { libc::madvise(host as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(out_of_range());
        }
        Ok(())
    }

    /// Writes `len` zero bytes at `addr`.
    pub fn zero(&self, addr: u64, len: u64) -> Result<(), MemoryError> {
        const CHUNK: [u8; 4096] = [0; 4096];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK.len() as u64);
            self.write(addr + done, &CHUNK[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    /// Iterates the (guest address, host address, size) of each region, for KVM registration.
    pub fn regions(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.mem
            .iter()
            .map(|r| (r.start_addr().0, r.as_ptr() as u64, r.len()))
    }

    /// Another handle on the same memory (a `vfork` child runs on its parent's).
    pub fn share(&self) -> Self {
        Self {
            mem: self.mem.clone(),
            base: self.base,
            size: self.size,
        }
    }

    /// Copies the pages of `other` (as large as this) that the host has ever backed (never
    /// touched pages read as zero on both sides, so they are skipped): what a `fork` child
    /// gets. Returns the bytes copied. With `pagemap` (this process's `/proc/self/pagemap`)
    /// a page counts when it is present or swapped out; without it `mincore` decides, which
    /// misses pages swapped out (so a host with swap needs the pagemap).
    pub fn copy_resident(
        &self,
        other: &GuestRam,
        pagemap: Option<&std::fs::File>,
    ) -> Result<u64, MemoryError> {
        const CHUNK: u64 = 1 << 30; // mincore's vector for 1 GiB at a time: 256 KiB
        if other.size != self.size || other.base != self.base {
            let (addr, len) = (other.base, other.size as usize);
            return Err(MemoryError::OutOfRange { addr, len });
        }
        let host = other.host_address();
        let pages_per_chunk = (CHUNK / PAGE_SIZE) as usize;
        let mut vec = vec![0u8; pages_per_chunk.min((self.size / PAGE_SIZE) as usize)];
        let mut copied = 0;
        let mut at = 0;
        while at < self.size {
            let len = CHUNK.min(self.size - at);
            let pages = (len / PAGE_SIZE) as usize;
            let rc = match pagemap {
                Some(map) => backed_pages(map, host + at, &mut vec[..pages]),
                // SAFETY: `host + at .. + len` lies inside `other`'s live anonymous mapping,
                // and `vec` has room for one byte per page of it; mincore only writes `vec`.
                None => unsafe {
                    libc::mincore(
                        (host + at) as *mut libc::c_void,
                        len as usize,
                        vec.as_mut_ptr(),
                    )
                },
            };
            let resident = |i: usize| rc != 0 || vec[i] & 1 != 0; // on error, copy all
            let mut page = 0;
            while page < pages {
                if !resident(page) {
                    page += 1;
                    continue;
                }
                let first = page;
                while page < pages && resident(page) {
                    page += 1;
                }
                let start = self.base + at + first as u64 * PAGE_SIZE;
                let bytes = (page - first) * PAGE_SIZE as usize;
                let out_of_range = |_| MemoryError::OutOfRange {
                    addr: start,
                    len: bytes,
                };
                let at = GuestAddress(start);
                let src = other.mem.get_slice(at, bytes).map_err(out_of_range)?;
                src.copy_to_volatile_slice(self.mem.get_slice(at, bytes).map_err(out_of_range)?);
                copied += bytes as u64;
            }
            at += len;
        }
        Ok(copied)
    }
}

/// One byte per page from `/proc/self/pagemap` for the pages from host address `start`: 1
/// where the page is present or swapped out (bits 63 and 62). 0 on success, -1 if the map
/// could not be read (the caller then copies every page).
fn backed_pages(map: &std::fs::File, start: u64, out: &mut [u8]) -> i32 {
    use std::os::unix::fs::FileExt;
    const PRESENT_OR_SWAPPED: u64 = 3 << 62;
    let mut entries = vec![0u8; out.len() * 8];
    let mut done = 0;
    while done < entries.len() {
        let at = (start / PAGE_SIZE) * 8 + done as u64;
        match map.read_at(&mut entries[done..], at) {
            Ok(0) | Err(_) => return -1,
            Ok(n) => done += n,
        }
    }
    for (page, e) in out.iter_mut().zip(entries.chunks_exact(8)) {
        let word = u64::from_le_bytes(e.try_into().unwrap_or([0xff; 8]));
        *page = u8::from(word & PRESENT_OR_SWAPPED != 0);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("2M").unwrap(), 2 << 20);
        assert_eq!(parse_size("2m").unwrap(), 2 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("0").unwrap(), 0);
        for bad in [
            "",
            "M",
            "2X",
            "-1",
            "1.5M",
            "99999999999999999999G",
            "18446744073709551615K",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(2 << 20), "2 MiB");
        assert_eq!(human_size(4096), "4 KiB");
        assert_eq!(human_size(1536), "1536 B");
        assert_eq!(human_size(3 << 30), "3 GiB");
    }

    #[test]
    fn ram_rejects_bad_sizes() {
        assert!(matches!(GuestRam::new(0, 0), Err(MemoryError::Zero)));
        assert!(matches!(
            GuestRam::new(0, 1000),
            Err(MemoryError::Unaligned(_))
        ));
        assert!(matches!(
            GuestRam::new(0, 1 << 50),
            Err(MemoryError::TooLarge { .. })
        ));
    }

    #[test]
    fn ram_reads_back_and_checks_bounds() {
        let ram = GuestRam::new(0x1000, 0x2000).unwrap();
        ram.write(0x1ff8, &7u64.to_le_bytes()).unwrap();
        assert_eq!(ram.read_u64(0x1ff8).unwrap(), 7);
        assert!(ram.write(0x2ffc, &[0; 8]).is_err());
        assert!(ram.read(0x0, &mut [0; 1]).is_err());
        assert!(ram.contains(0x1000, 0x2000));
        assert!(!ram.contains(0x1000, 0x2001));
        assert!(!ram.contains(u64::MAX, 2));
    }
}
