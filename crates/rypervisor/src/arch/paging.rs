//! Identity-mapped 4-level page tables (guest-virtual = guest-physical), as every guest of
//! this VMM starts with: one PML4, one PDPT and one page directory per GiB, laid out
//! contiguously, with 2 MiB pages (or a 4 KiB table where a face needs finer control).

use crate::memory::{GuestRam, MemoryError};

/// Page-table entry bits.
pub mod pte {
    /// Present.
    pub const PRESENT: u64 = 1 << 0;
    /// Writable.
    pub const WRITABLE: u64 = 1 << 1;
    /// Reachable from CPL3.
    pub const USER: u64 = 1 << 2;
    /// A 2 MiB page (in a page directory).
    pub const HUGE: u64 = 1 << 7;
}

/// Bytes one page-directory entry maps.
pub const HUGE_PAGE: u64 = 2 << 20;
const TABLE: u64 = 0x1000;

/// What a page-directory entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pde {
    /// Nothing: the 2 MiB are not mapped.
    Absent,
    /// A 2 MiB page with these flags (PRESENT and HUGE are added).
    Huge(u64),
    /// A 4 KiB page table at this address.
    Table(u64),
}

/// Page tables at `pml4`: the PDPT at `pml4 + 4 KiB`, then one page directory per GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityMap {
    /// Address of the PML4.
    pub pml4: u64,
    /// GiB the page directories cover (at most 512).
    pub gib: u64,
}

impl IdentityMap {
    /// Address of the PDPT.
    pub fn pdpt(&self) -> u64 {
        self.pml4 + TABLE
    }

    /// Address of the page directory for GiB `n`.
    pub fn pd(&self, n: u64) -> u64 {
        self.pml4 + 2 * TABLE + n * TABLE
    }

    /// One past the last table.
    pub fn end(&self) -> u64 {
        self.pd(self.gib)
    }

    /// Writes the tables. Upper levels get `table_flags` (PRESENT is added); each 2 MiB page
    /// of the covered range gets what `entry(address)` says.
    pub fn write(
        &self,
        ram: &GuestRam,
        table_flags: u64,
        entry: impl Fn(u64) -> Pde,
    ) -> Result<(), MemoryError> {
        let flags = table_flags | pte::PRESENT;
        ram.write(self.pml4, &(self.pdpt() | flags).to_le_bytes())?;
        let pdpt: Vec<u8> = (0..self.gib)
            .flat_map(|n| (self.pd(n) | flags).to_le_bytes())
            .collect();
        ram.write(self.pdpt(), &pdpt)?;
        let pds: Vec<u8> = (0..self.gib * 512)
            .flat_map(|i| {
                let value = match entry(i * HUGE_PAGE) {
                    Pde::Absent => 0,
                    Pde::Huge(f) => (i * HUGE_PAGE) | f | pte::PRESENT | pte::HUGE,
                    Pde::Table(at) => at | flags,
                };
                value.to_le_bytes()
            })
            .collect();
        ram.write(self.pd(0), &pds)
    }
}

/// Writes a 4 KiB page table at `at` for the 2 MiB starting at `base`: page `p` gets the
/// flags `page(p)` says (PRESENT added), or is absent.
pub fn write_page_table(
    ram: &GuestRam,
    at: u64,
    base: u64,
    page: impl Fn(u64) -> Option<u64>,
) -> Result<(), MemoryError> {
    let entries: Vec<u8> = (0..512u64)
        .flat_map(|i| {
            let addr = base + i * TABLE;
            page(addr)
                .map_or(0, |f| addr | f | pte::PRESENT)
                .to_le_bytes()
        })
        .collect();
    ram.write(at, &entries)
}

/// A minimal 4-level walk for tests: (physical address, user, writable), or None when a
/// level is not present.
#[cfg(test)]
pub(crate) fn walk(ram: &GuestRam, pml4: u64, va: u64) -> Option<(u64, bool, bool)> {
    let mut table = pml4;
    let (mut user, mut writable) = (true, true);
    for level in (0..4).rev() {
        let entry = ram
            .read_u64(table + ((va >> (12 + 9 * level)) & 0x1ff) * 8)
            .ok()?;
        if entry & pte::PRESENT == 0 {
            return None;
        }
        user &= entry & pte::USER != 0;
        writable &= entry & pte::WRITABLE != 0;
        let frame = entry & 0x000f_ffff_ffff_f000;
        if level == 1 && entry & pte::HUGE != 0 {
            return Some((frame + (va & 0x1f_ffff), user, writable));
        }
        if level == 0 {
            return Some((frame + (va & 0xfff), user, writable));
        }
        table = frame;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_gib_map_to_themselves() {
        let ram = GuestRam::new(0, 1 << 20).unwrap();
        let map = IdentityMap {
            pml4: 0x9000,
            gib: 4,
        };
        map.write(&ram, pte::WRITABLE, |_| Pde::Huge(pte::WRITABLE))
            .unwrap();
        assert_eq!(map.end(), 0xf000);
        assert_eq!(
            walk(&ram, 0x9000, 0xfee0_1234),
            Some((0xfee0_1234, false, true))
        );
        assert_eq!(walk(&ram, 0x9000, 1 << 32), None, "nothing above 4 GiB");
    }

    #[test]
    fn absent_pages_and_small_tables() {
        let ram = GuestRam::new(0, 1 << 20).unwrap();
        let map = IdentityMap {
            pml4: 0x1000,
            gib: 1,
        };
        let user = pte::WRITABLE | pte::USER;
        map.write(&ram, user, |a| match a {
            0 => Pde::Table(0x4000),
            a if a < 8 << 20 => Pde::Huge(user),
            _ => Pde::Absent,
        })
        .unwrap();
        write_page_table(&ram, 0x4000, 0, |p| (p == 0x3000).then_some(pte::USER)).unwrap();
        assert_eq!(walk(&ram, 0x1000, 0x3004), Some((0x3004, true, false)));
        assert_eq!(walk(&ram, 0x1000, 0x2000), None);
        assert_eq!(walk(&ram, 0x1000, 6 << 20), Some((6 << 20, true, true)));
        assert_eq!(walk(&ram, 0x1000, 8 << 20), None);
    }
}
