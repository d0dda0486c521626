//! Memory: the heap (`brk`) and the mappings (`mmap`, `munmap`, `mremap`, `mprotect`,
//! `madvise`) inside the program's part of guest memory. `[mmap floor, stack bottom)` is
//! shared by the heap growing up and mappings placed top down; nothing is ever placed over
//! the program, the heap or the stack, and nothing is allocated on the host: memory beyond
//! `--mem` is ENOMEM inside the program.

use std::collections::BTreeMap;

use super::{Context, Errno, Process, SysResult, IO_CHUNK};
use crate::memory::PAGE_SIZE;
use crate::sandbox::layout;

fn page_up(x: u64) -> Option<u64> {
    x.checked_add(PAGE_SIZE - 1).map(|v| v & !(PAGE_SIZE - 1))
}

/// Program memory ranges handed out by `mmap`.
#[derive(Clone, Debug, Default)]
pub struct Mappings {
    /// start → end of each mapping, non-overlapping.
    ranges: BTreeMap<u64, u64>,
}

impl Mappings {
    fn lowest(&self) -> Option<u64> {
        self.ranges.keys().next().copied()
    }

    /// The highest free gap of `len` bytes inside `[floor, ceiling)`.
    fn find(&self, len: u64, floor: u64, ceiling: u64) -> Option<u64> {
        let mut top = ceiling;
        for (&start, &end) in self.ranges.iter().rev() {
            if end <= top && top - end >= len && top - len >= floor {
                return Some(top - len);
            }
            top = top.min(start);
        }
        (top >= floor && top - floor >= len).then(|| top - len)
    }

    fn insert(&mut self, start: u64, end: u64) {
        self.remove(start, end);
        self.ranges.insert(start, end);
    }

    /// Removes `[start, end)` from every mapping (splitting as needed); returns the pieces
    /// that were mapped.
    fn remove(&mut self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let hits: Vec<(u64, u64)> = self
            .ranges
            .range(..end)
            .filter(|(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        let mut removed = Vec::new();
        for (s, e) in hits {
            self.ranges.remove(&s);
            if s < start {
                self.ranges.insert(s, start);
            }
            if e > end {
                self.ranges.insert(end, e);
            }
            removed.push((s.max(start), e.min(end)));
        }
        removed
    }

    fn covers(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        for (&s, &e) in self.ranges.range(..end) {
            if e <= at {
                continue;
            }
            if s > at {
                return false;
            }
            at = e;
            if at >= end {
                return true;
            }
        }
        at >= end
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.ranges.range(..end).any(|(_, &e)| e > start)
    }
}

/// The program's address space as the kernel tracks it.
#[derive(Clone, Debug)]
pub struct MemoryState {
    /// Start and current end of the heap (`brk`).
    brk_start: u64,
    brk: u64,
    stack_bottom: u64,
    stack_size: u64,
    mem_size: u64,
    mappings: Mappings,
}

impl MemoryState {
    /// The address space of a program whose image ends at `image_end`, with a stack of
    /// `stack_size` bytes at the top of `mem_size`.
    pub fn new(image_end: u64, mem_size: u64, stack_size: u64) -> Self {
        let brk_start = page_up(image_end).unwrap_or(mem_size);
        Self {
            brk_start,
            brk: brk_start,
            stack_bottom: mem_size - stack_size,
            stack_size,
            mem_size,
            mappings: Mappings::default(),
        }
    }

    /// Records `[start, end)` as a mapping made before the program started.
    pub fn reserve(&mut self, start: u64, end: u64) {
        if let (Some(s), Some(e)) = (Some(start & !(PAGE_SIZE - 1)), page_up(end)) {
            self.mappings.insert(s, e);
        }
    }

    /// Stack bottom.
    pub fn stack_bottom(&self) -> u64 {
        self.stack_bottom
    }

    /// Stack size.
    pub fn stack_size(&self) -> u64 {
        self.stack_size
    }

    /// Guest memory size.
    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    /// Current program break.
    pub fn brk(&self) -> u64 {
        self.brk
    }

    /// The heap may grow up to the lowest mapping (or the stack).
    fn brk_limit(&self) -> u64 {
        self.mappings
            .lowest()
            .unwrap_or(self.stack_bottom)
            .min(self.stack_bottom)
    }

    /// Lowest address a mapping may start at: just above the heap.
    fn floor(&self) -> u64 {
        page_up(self.brk).unwrap_or(u64::MAX)
    }

    pub(super) fn set_brk(&mut self, want: u64, cx: &mut Context<'_>) -> u64 {
        if want < self.brk_start || want > self.brk_limit() {
            return self.brk; // Linux: the unchanged break means failure
        }
        let (old_top, new_top) = (page_up(self.brk).unwrap_or(0), page_up(want).unwrap_or(0));
        if new_top < old_top {
            // Shrinking: zero what is given back, so growing again starts from zeroes.
            let _ = cx.mem.discard(new_top, old_top - new_top);
        }
        self.brk = want;
        self.brk
    }

    /// Chooses (or checks, for MAP_FIXED) where a mapping of `len` bytes goes, and records it.
    fn place(
        &mut self,
        addr: u64,
        len: u64,
        flags: i32,
        cx: &mut Context<'_>,
    ) -> Result<u64, Errno> {
        let floor = self.floor();
        let start = if flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0 {
            let end = addr.checked_add(len).ok_or(Errno::ENOMEM)?;
            if !addr.is_multiple_of(PAGE_SIZE) {
                return Err(Errno::EINVAL);
            }
            // Fixed mappings only inside the mmap area, never over the program, heap or stack.
            if addr < floor || end > self.stack_bottom {
                return Err(Errno::ENOMEM);
            }
            if flags & libc::MAP_FIXED_NOREPLACE != 0 && self.mappings.overlaps(addr, end) {
                return Err(Errno::EEXIST);
            }
            cx.mem.discard(addr, len)?;
            addr
        } else {
            self.mappings
                .find(len, floor, self.stack_bottom)
                .ok_or(Errno::ENOMEM)?
        };
        self.mappings.insert(start, start + len);
        Ok(start)
    }

    pub(super) fn munmap(&mut self, addr: u64, len: u64, cx: &mut Context<'_>) -> SysResult {
        let len = page_up(len).filter(|l| *l > 0).ok_or(Errno::EINVAL)?;
        let end = addr.checked_add(len).ok_or(Errno::EINVAL)?;
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL.into());
        }
        for (s, e) in self.mappings.remove(addr, end) {
            let _ = cx.mem.discard(s, e - s);
        }
        Ok(0)
    }

    pub(super) fn mprotect(&mut self, addr: u64, len: u64) -> SysResult {
        // Recorded as success when the range is program memory: protections inside the
        // program's memory are not enforced (see the layout module).
        let len = page_up(len).ok_or(Errno::ENOMEM)?;
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL.into());
        }
        if layout::is_user(addr, len, self.mem_size) {
            Ok(0)
        } else {
            Err(Errno::ENOMEM.into())
        }
    }

    pub(super) fn mremap(
        &mut self,
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let (Some(old_len), Some(new_len)) = (page_up(old_len), page_up(new_len)) else {
            return Err(Errno::EINVAL.into());
        };
        if !old.is_multiple_of(PAGE_SIZE)
            || new_len == 0
            || flags & !(libc::MREMAP_MAYMOVE as u64) != 0
        {
            return Err(Errno::EINVAL.into());
        }
        let old_end = old.checked_add(old_len).ok_or(Errno::EFAULT)?;
        if !self.mappings.covers(old, old_end) {
            return Err(Errno::EFAULT.into());
        }
        if new_len <= old_len {
            for (s, e) in self.mappings.remove(old + new_len, old_end) {
                let _ = cx.mem.discard(s, e - s);
            }
            return Ok(old as i64);
        }
        // Grow in place when the pages above are free.
        let grown_end = old.saturating_add(new_len);
        if grown_end <= self.stack_bottom && !self.mappings.overlaps(old_end, grown_end) {
            self.mappings.insert(old, grown_end);
            return Ok(old as i64);
        }
        if flags & libc::MREMAP_MAYMOVE as u64 == 0 {
            return Err(Errno::ENOMEM.into());
        }
        let new = self
            .mappings
            .find(new_len, self.floor(), self.stack_bottom)
            .ok_or(Errno::ENOMEM)?;
        self.mappings.insert(new, new + new_len);
        cx.mem.copy(old, new, old_len)?;
        for (s, e) in self.mappings.remove(old, old_end) {
            let _ = cx.mem.discard(s, e - s);
        }
        Ok(new as i64)
    }

    /// `mincore`: every page of program memory is resident (guest memory is the VM's);
    /// outside it, `ENOMEM`.
    pub(super) fn mincore(&self, addr: u64, len: u64, vec: u64, cx: &mut Context<'_>) -> SysResult {
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL.into());
        }
        let len = page_up(len).ok_or(Errno::ENOMEM)?;
        if !layout::is_user(addr, len, self.mem_size) {
            return Err(Errno::ENOMEM.into());
        }
        let pages = (len / PAGE_SIZE) as usize;
        cx.mem.write(vec, &vec![1u8; pages.min(IO_CHUNK)])?;
        Ok(0)
    }

    pub(super) fn madvise(
        &mut self,
        addr: u64,
        len: u64,
        advice: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        if advice == libc::MADV_DONTNEED as u64 {
            let len = page_up(len).ok_or(Errno::EINVAL)?;
            cx.mem.discard(addr, len)?;
        }
        Ok(0)
    }
}

impl Process {
    pub(super) fn mmap(
        &mut self,
        addr: u64,
        len: u64,
        flags: u64,
        fd: i32,
        offset: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let flags = flags as i32;
        let anonymous = flags & libc::MAP_ANONYMOUS != 0;
        let len = page_up(len).filter(|l| *l > 0).ok_or(Errno::EINVAL)?;
        if flags & libc::MAP_SHARED != 0 && !anonymous {
            return Err(Errno::EACCES.into()); // nothing can be written back
        }
        let file = if anonymous {
            None
        } else {
            let file = self.files.lock().host_file(fd).ok_or(Errno::EBADF)?;
            if !offset.is_multiple_of(PAGE_SIZE) {
                return Err(Errno::EINVAL.into());
            }
            Some(file)
        };
        let start = self.memory.lock().place(addr, len, flags, cx)?;
        if let Some(file) = file {
            // A private file mapping: a copy of the file's bytes (never written back), read
            // straight into the program's memory.
            let size = file.metadata().map_or(0, |m| m.len());
            let have = size.saturating_sub(offset).min(len);
            cx.mem.fill_from_file(start, have, &file, offset)?;
        }
        Ok(start as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_bookkeeping() {
        let mut m = Mappings::default();
        m.insert(0x1000, 0x5000);
        assert_eq!(m.remove(0x2000, 0x3000), vec![(0x2000, 0x3000)]);
        assert!(m.covers(0x1000, 0x2000));
        assert!(!m.covers(0x1000, 0x4000));
        assert_eq!(m.find(0x1000, 0, 0x5000), Some(0x2000));
        assert_eq!(m.find(0x2000, 0, 0x5000), None, "no gap is big enough");
        assert_eq!(m.find(0x2000, 0, 0x8000), Some(0x6000));
        assert_eq!(m.find(0x10000, 0, 0x5000), None);
    }
}
