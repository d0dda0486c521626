//! Where `rypervisor run` puts a guest's CPU tables: the *system area*, [`SYSTEM_AREA_SIZE`]
//! bytes at the top of guest RAM (below 4 GiB); the guest stack grows down from just below it.
//!
//! | offset | contents |
//! |---|---|
//! | `0x0000` | PML4 (long mode) |
//! | `0x1000` | PDPT: four entries, one per GiB |
//! | `0x2000..0x6000` | four page directories of 2 MiB pages: identity map of 0–4 GiB |
//! | `0x6000` | GDT |
//! | `0x6100` | 256 exception stubs, one `hlt` byte per vector |
//! | `0x7000` | IDT: every vector points at its stub |
//! | `0x8000` | 64-bit TSS with an I/O permission bitmap allowing every port |
//! | `0xb000..0xc000` | stack for exceptions taken at CPL3 (TSS.RSP0) |
//!
//! An exception therefore ends in a `hlt` whose address names the vector: the VMM sees a
//! `KVM_EXIT_HLT` at `stubs + vector + 1` and reports the fault with its exception frame
//! instead of letting the guest triple-fault.

use kvm_bindings::kvm_sregs;
use serde::Serialize;

use super::interrupts::{self, write_idt};
use super::paging::{pte, IdentityMap, Pde};
use super::segments::{flat_segments, load_segments, write_gdt};
use super::tss::{write_tss, IoPorts};
use super::{cr0, cr4, efer, ArchError, CpuMode, Privilege};
use crate::memory::{GuestRam, MemoryError};

/// Size of the system area at the top of RAM (protected and long mode).
pub const SYSTEM_AREA_SIZE: u64 = 0xc000;
const PML4: u64 = 0x0000;
const GDT: u64 = 0x6000;
/// Offset of the exception stubs in the system area.
pub const STUBS: u64 = 0x6100;
const IDT: u64 = 0x7000;
const TSS: u64 = 0x8000;
const EXCEPTION_STACK_TOP: u64 = 0xc000;
/// Highest guest-physical address the VMM's tables can reach (identity map of 0–4 GiB).
pub const FOUR_GIB: u64 = 1 << 32;

/// Where the VMM put the CPU tables for one guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SystemArea {
    /// Guest-physical base of the area (0 in real mode, where there is none).
    pub base: u64,
    /// Whether the area exists (protected and long mode).
    pub present: bool,
}

impl SystemArea {
    /// The system area for a guest with RAM `[ram_base, ram_end)`, or none for real mode.
    pub fn for_mode(mode: CpuMode, ram_base: u64, ram_end: u64) -> Result<Self, MemoryError> {
        if mode == CpuMode::Real {
            return Ok(Self {
                base: 0,
                present: false,
            });
        }
        let top = ram_end.min(FOUR_GIB);
        let size = ram_end - ram_base;
        if top < ram_base + SYSTEM_AREA_SIZE + 0x1000 {
            return Err(MemoryError::TooSmall {
                size,
                why: format!(
                    "{} mode needs {} at the top of RAM for the GDT, IDT, TSS and page tables, plus room for code",
                    if mode == CpuMode::Long { "long" } else { "protected" },
                    crate::memory::human_size(SYSTEM_AREA_SIZE)
                ),
            });
        }
        Ok(Self {
            base: top - SYSTEM_AREA_SIZE,
            present: true,
        })
    }

    /// Guest-physical address of the exception stubs.
    pub fn stubs(&self) -> u64 {
        self.base + STUBS
    }

    /// If `rip` is just past an exception stub's `hlt`, the vector it stands for.
    pub fn vector_at(&self, rip: u64) -> Option<u8> {
        self.present
            .then(|| interrupts::vector_at(self.stubs(), rip))
            .flatten()
    }

    /// Initial stack pointer for guest code: just below the area.
    pub fn stack_top(&self) -> u64 {
        self.base
    }
}

/// Writes the system area and sets `sregs` for `mode`/`privilege`. Returns the initial stack
/// pointer for the guest.
pub fn setup_sregs(
    ram: &GuestRam,
    area: &SystemArea,
    mode: CpuMode,
    privilege: Privilege,
    entry: u64,
    sregs: &mut kvm_sregs,
) -> Result<u64, ArchError> {
    if privilege == Privilege::User && mode != CpuMode::Long {
        return Err(ArchError::UserNeedsLongMode);
    }
    if mode == CpuMode::Real {
        return real_mode(ram, entry, sregs);
    }
    let long = mode == CpuMode::Long;
    let user = privilege == Privilege::User;
    let base = area.base;
    let tss = write_tss(ram, base + TSS, base + EXCEPTION_STACK_TOP, IoPorts::All)?;
    write_gdt(ram, base + GDT, &tss, sregs)?;
    write_idt(ram, base + IDT, base + STUBS, long, sregs)?;
    let (cs, ds) = flat_segments(long, user);
    load_segments(sregs, cs, ds);
    sregs.cr0 = cr0::PE | cr0::MP | cr0::ET | cr0::NE;
    sregs.cr4 = cr4::OSFXSR | cr4::OSXMMEXCPT;
    if long {
        let map = IdentityMap {
            pml4: base + PML4,
            gib: 4,
        };
        let flags = pte::WRITABLE | if user { pte::USER } else { 0 };
        map.write(ram, flags, |_| Pde::Huge(flags))?;
        sregs.cr0 |= cr0::PG | cr0::WP;
        sregs.cr3 = map.pml4;
        sregs.cr4 |= cr4::PAE;
        sregs.efer |= efer::LME | efer::LMA;
    }
    Ok(area.stack_top())
}

/// The LWN setup: CS at segment 0 (or the 64 KiB holding the entry), so IP is the offset.
fn real_mode(ram: &GuestRam, entry: u64, sregs: &mut kvm_sregs) -> Result<u64, ArchError> {
    if entry >= 0x10_0000 {
        return Err(ArchError::RealModeEntry(entry));
    }
    let cs_base = if entry > 0xffff { entry & !0xffff } else { 0 };
    sregs.cs.base = cs_base;
    sregs.cs.selector = (cs_base >> 4) as u16;
    for s in [&mut sregs.ds, &mut sregs.es, &mut sregs.ss] {
        s.base = 0;
        s.selector = 0;
    }
    Ok(ram.end().min(0x10000).saturating_sub(0x10))
}

#[cfg(test)]
mod tests {
    use super::super::paging::walk;
    use super::*;

    #[test]
    fn system_area_sits_at_the_top_of_ram_below_4g() {
        let a = SystemArea::for_mode(CpuMode::Long, 0, 2 << 20).unwrap();
        assert_eq!(a.base, (2 << 20) - SYSTEM_AREA_SIZE);
        assert_eq!(a.vector_at(a.stubs() + 14), Some(13));
        assert_eq!(a.vector_at(a.stubs()), None);
        let big = SystemArea::for_mode(CpuMode::Protected, 0, 5 << 30).unwrap();
        assert_eq!(big.base, FOUR_GIB - SYSTEM_AREA_SIZE);
        assert!(SystemArea::for_mode(CpuMode::Long, 0, 0x8000).is_err());
        let real = SystemArea::for_mode(CpuMode::Real, 0, 0x1000).unwrap();
        assert!(!real.present);
        assert_eq!(real.vector_at(STUBS + 1), None);
    }

    #[test]
    fn long_mode_tables_identity_map_4g() {
        let ram = GuestRam::new(0, 1 << 20).unwrap();
        let area = SystemArea::for_mode(CpuMode::Long, 0, ram.end()).unwrap();
        let mut sregs = kvm_sregs::default();
        let sp = setup_sregs(
            &ram,
            &area,
            CpuMode::Long,
            Privilege::User,
            0x1000,
            &mut sregs,
        )
        .unwrap();
        assert_eq!(sp, area.base);
        assert_eq!(sregs.cr3, area.base);
        assert_eq!(sregs.cs.dpl, 3);
        assert_eq!(sregs.efer & (efer::LME | efer::LMA), efer::LME | efer::LMA);
        assert_eq!(sregs.tr.base, area.base + TSS);
        // A high address maps to itself, user-accessible and writable.
        let va: u64 = 0xfee0_1234;
        assert_eq!(walk(&ram, sregs.cr3, va), Some((va, true, true)));
    }

    #[test]
    fn user_mode_needs_long_mode() {
        let ram = GuestRam::new(0, 1 << 20).unwrap();
        let area = SystemArea::for_mode(CpuMode::Protected, 0, ram.end()).unwrap();
        let mut s = kvm_sregs::default();
        let r = setup_sregs(
            &ram,
            &area,
            CpuMode::Protected,
            Privilege::User,
            0x1000,
            &mut s,
        );
        assert!(matches!(r, Err(ArchError::UserNeedsLongMode)));
    }
}
