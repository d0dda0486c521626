//! x86 CPU state for a freshly created vCPU: real, protected or long mode.
//!
//! A vCPU starts like a PC after reset: real mode, `CS:IP = f000:fff0`. To start a guest in
//! protected or long mode the VMM does what a boot loader would: it writes a GDT, an IDT,
//! a TSS and (for long mode) identity page tables into guest memory, and loads segment and
//! control registers that point at them (`KVM_SET_SREGS`).
//!
//! The tables live in the *system area*, [`SYSTEM_AREA_SIZE`] bytes at the top of guest RAM
//! (below 4 GiB); the guest stack grows down from just below it:
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

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use serde::Serialize;

use crate::memory::{GuestRam, MemoryError};

/// The CPU mode a guest starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuMode {
    /// 16-bit real mode, as after reset.
    Real,
    /// 32-bit protected mode, flat segments, no paging.
    Protected,
    /// 64-bit long mode, identity-mapped low 4 GiB.
    Long,
}

impl CpuMode {
    /// The code width in bits.
    pub fn bitness(self) -> u32 {
        match self {
            CpuMode::Real => 16,
            CpuMode::Protected => 32,
            CpuMode::Long => 64,
        }
    }
}

impl std::str::FromStr for CpuMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "real" | "16" => Ok(CpuMode::Real),
            "protected" | "32" => Ok(CpuMode::Protected),
            "long" | "64" => Ok(CpuMode::Long),
            _ => Err(format!("unknown mode '{s}' (use real, protected or long)")),
        }
    }
}

/// The privilege level guest code starts at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Privilege {
    /// Ring 0 (supervisor).
    #[default]
    Kernel,
    /// Ring 3 (user pages, DPL3 segments); long mode only.
    User,
}

/// General-purpose registers a caller may preset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Gpr {
    Rax,
    Rbx,
    Rcx,
    Rdx,
    Rsi,
    Rdi,
    Rbp,
    R8,
    R9,
}

impl Gpr {
    /// Sets this register in `regs`.
    pub fn set(self, regs: &mut kvm_regs, value: u64) {
        *match self {
            Gpr::Rax => &mut regs.rax,
            Gpr::Rbx => &mut regs.rbx,
            Gpr::Rcx => &mut regs.rcx,
            Gpr::Rdx => &mut regs.rdx,
            Gpr::Rsi => &mut regs.rsi,
            Gpr::Rdi => &mut regs.rdi,
            Gpr::Rbp => &mut regs.rbp,
            Gpr::R8 => &mut regs.r8,
            Gpr::R9 => &mut regs.r9,
        } = value;
    }
}

impl std::str::FromStr for Gpr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "rax" => Gpr::Rax,
            "rbx" => Gpr::Rbx,
            "rcx" => Gpr::Rcx,
            "rdx" => Gpr::Rdx,
            "rsi" => Gpr::Rsi,
            "rdi" => Gpr::Rdi,
            "rbp" => Gpr::Rbp,
            "r8" => Gpr::R8,
            "r9" => Gpr::R9,
            _ => {
                return Err(format!(
                    "unknown register '{s}' (rax rbx rcx rdx rsi rdi rbp r8 r9)"
                ))
            }
        })
    }
}

/// Size of the system area at the top of RAM (protected and long mode).
pub const SYSTEM_AREA_SIZE: u64 = 0xc000;
const PML4: u64 = 0x0000;
const PDPT: u64 = 0x1000;
const PD: u64 = 0x2000;
const GDT: u64 = 0x6000;
/// Offset of the exception stubs in the system area.
pub const STUBS: u64 = 0x6100;
const IDT: u64 = 0x7000;
const TSS: u64 = 0x8000;
const EXCEPTION_STACK_TOP: u64 = 0xc000;
/// 104-byte TSS + 8 KiB I/O bitmap (65536 ports) + the terminating 0xff byte.
const TSS_LIMIT: u32 = 104 + 8192;
const IO_BITMAP_OFFSET: u16 = 104;
/// Highest guest-physical address the VMM's tables can reach (identity map of 0–4 GiB).
pub const FOUR_GIB: u64 = 1 << 32;

/// GDT selectors (index * 8), shared by protected and long mode.
pub mod selector {
    /// 32-bit code, DPL0.
    pub const CODE32: u16 = 0x08;
    /// Flat data, DPL0.
    pub const DATA: u16 = 0x10;
    /// 64-bit code, DPL0.
    pub const CODE64: u16 = 0x18;
    /// Flat data, DPL3 (RPL 3).
    pub const USER_DATA: u16 = 0x20 | 3;
    /// 64-bit code, DPL3 (RPL 3).
    pub const USER_CODE64: u16 = 0x28 | 3;
    /// The 16-byte TSS descriptor.
    pub const TSS: u16 = 0x30;
    /// Bytes in the GDT (8 entries: TSS takes two).
    pub const GDT_BYTES: u16 = 0x40;
}

/// CR0 bits.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Monitor coprocessor.
    pub const MP: u64 = 1 << 1;
    /// Extension type (always 1 on modern CPUs).
    pub const ET: u64 = 1 << 4;
    /// Native FPU error reporting.
    pub const NE: u64 = 1 << 5;
    /// Write protect in supervisor mode.
    pub const WP: u64 = 1 << 16;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits.
pub mod cr4 {
    /// Physical address extension (required for long mode).
    pub const PAE: u64 = 1 << 5;
    /// OS supports FXSAVE/FXRSTOR (enables SSE).
    pub const OSFXSR: u64 = 1 << 9;
    /// OS handles SIMD exceptions.
    pub const OSXMMEXCPT: u64 = 1 << 10;
}

/// EFER bits.
pub mod efer {
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
}

/// Page-table entry bits.
pub(crate) mod pte {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITABLE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    pub const HUGE: u64 = 1 << 7;
}

/// Errors while preparing CPU state.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// CPL3 was asked for outside long mode.
    #[error("user mode (CPL3) needs long mode: add --mode long or use a 64-bit ELF")]
    UserNeedsLongMode,
    /// The entry point is not reachable in real mode.
    #[error("real-mode entry point {0:#x} is above 1 MiB and cannot be reached")]
    RealModeEntry(u64),
    /// Writing the tables failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

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
        let stubs = self.stubs();
        (self.present && rip > stubs && rip <= stubs + 256).then(|| (rip - stubs - 1) as u8)
    }

    /// Initial stack pointer for guest code: just below the area.
    pub fn stack_top(&self) -> u64 {
        self.base
    }
}

/// A flat code or data segment as KVM wants it in `kvm_sregs`.
pub(crate) fn segment(selector: u16, code: bool, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 }, // execute/read accessed, or read/write accessed
        present: 1,
        dpl: (selector & 3) as u8,
        db: u8::from(!long || !code),
        s: 1,
        l: u8::from(long && code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Loads `code` into CS and `data` into every data segment register (DS, ES, FS, GS, SS).
pub fn load_segments(sregs: &mut kvm_sregs, code: kvm_segment, data: kvm_segment) {
    sregs.cs = code;
    for s in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *s = data;
    }
}

/// Encodes a `kvm_segment` as a GDT descriptor (the low 8 bytes for a system segment).
pub fn descriptor(seg: &kvm_segment) -> u64 {
    let limit = if seg.g == 1 {
        seg.limit >> 12
    } else {
        seg.limit
    } as u64;
    let base = seg.base;
    let access = (u64::from(seg.present) << 7)
        | (u64::from(seg.dpl & 3) << 5)
        | (u64::from(seg.s) << 4)
        | u64::from(seg.type_ & 0xf);
    let flags = (u64::from(seg.g) << 3)
        | (u64::from(seg.db) << 2)
        | (u64::from(seg.l) << 1)
        | u64::from(seg.avl);
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (access << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (flags << 52)
        | (((base >> 24) & 0xff) << 56)
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
    match mode {
        CpuMode::Real => {
            // The LWN setup: point CS at segment 0 so that IP is the physical address.
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
        CpuMode::Protected | CpuMode::Long => {
            let long = mode == CpuMode::Long;
            let user = privilege == Privilege::User;
            let base = area.base;
            write_gdt_idt_tss(ram, base, long)?;
            if long {
                write_page_tables(ram, base, user)?;
            }
            let (cs, ds) = match (long, user) {
                (false, _) => (
                    segment(selector::CODE32, true, false),
                    segment(selector::DATA, false, false),
                ),
                (true, false) => (
                    segment(selector::CODE64, true, true),
                    segment(selector::DATA, false, true),
                ),
                (true, true) => (
                    segment(selector::USER_CODE64, true, true),
                    segment(selector::USER_DATA, false, true),
                ),
            };
            load_segments(sregs, cs, ds);
            sregs.gdt.base = base + GDT;
            sregs.gdt.limit = selector::GDT_BYTES - 1;
            sregs.idt.base = base + IDT;
            sregs.idt.limit = if long { 256 * 16 - 1 } else { 256 * 8 - 1 };
            sregs.tr = tss_segment(base);
            sregs.cr0 = cr0::PE | cr0::MP | cr0::ET | cr0::NE;
            sregs.cr4 = cr4::OSFXSR | cr4::OSXMMEXCPT;
            if long {
                sregs.cr0 |= cr0::PG | cr0::WP;
                sregs.cr3 = base + PML4;
                sregs.cr4 |= cr4::PAE;
                sregs.efer |= efer::LME | efer::LMA;
            }
            Ok(area.stack_top())
        }
    }
}

fn tss_segment(area_base: u64) -> kvm_segment {
    kvm_segment {
        base: area_base + TSS,
        limit: TSS_LIMIT,
        selector: selector::TSS,
        type_: 0xb, // busy 64-bit (or 32-bit) TSS
        present: 1,
        ..Default::default()
    }
}

/// The GDT every protected/long-mode guest gets (entries as in [`selector`]), with `tss`
/// as its 16-byte system descriptor.
pub(crate) fn gdt_bytes(tss: &kvm_segment) -> Vec<u8> {
    let gdt: [u64; 8] = [
        0,
        descriptor(&segment(selector::CODE32, true, false)),
        descriptor(&segment(selector::DATA, false, false)),
        descriptor(&segment(selector::CODE64, true, true)),
        descriptor(&segment(selector::USER_DATA, false, true)),
        descriptor(&segment(selector::USER_CODE64, true, true)),
        descriptor(tss),
        tss.base >> 32, // high half of the 16-byte system descriptor
    ];
    gdt.iter().flat_map(|d| d.to_le_bytes()).collect()
}

/// An IDT whose gate for vector v points at `stubs + v` (one `hlt` each), so the halt's RIP
/// names the vector. Interrupt gates at DPL0, so `int n` from CPL3 is a #GP, except #BP and
/// #OF at DPL3, as operating systems have them, so `int3`/`into` arrive as themselves.
pub(crate) fn idt_to_stubs(stubs: u64, long: bool) -> Vec<u8> {
    let mut idt = Vec::with_capacity(256 * 16);
    for v in 0..256u64 {
        let handler = stubs + v;
        let access: u64 = if v == 3 || v == 4 { 0xee } else { 0x8e };
        let code = u64::from(if long {
            selector::CODE64
        } else {
            selector::CODE32
        });
        let low =
            (handler & 0xffff) | (code << 16) | (access << 40) | (((handler >> 16) & 0xffff) << 48);
        idt.extend_from_slice(&low.to_le_bytes());
        if long {
            idt.extend_from_slice(&(handler >> 32).to_le_bytes());
        }
    }
    idt
}

fn write_gdt_idt_tss(ram: &GuestRam, base: u64, long: bool) -> Result<(), MemoryError> {
    ram.write(base + GDT, &gdt_bytes(&tss_segment(base)))?;
    ram.write(base + STUBS, &[0xf4; 256])?;
    ram.write(base + IDT, &idt_to_stubs(base + STUBS, long))?;

    // TSS: RSP0 at offset 4; I/O map base at offset 102; the bitmap (all zero: every port
    // allowed) follows at 104, ended by a 0xff byte.
    let mut tss_bytes = vec![0u8; TSS_LIMIT as usize + 1];
    tss_bytes[4..12].copy_from_slice(&(base + EXCEPTION_STACK_TOP).to_le_bytes());
    tss_bytes[102..104].copy_from_slice(&IO_BITMAP_OFFSET.to_le_bytes());
    tss_bytes[TSS_LIMIT as usize] = 0xff;
    ram.write(base + TSS, &tss_bytes)
}

fn write_page_tables(ram: &GuestRam, base: u64, user: bool) -> Result<(), MemoryError> {
    let flags = pte::PRESENT | pte::WRITABLE | if user { pte::USER } else { 0 };
    ram.write(base + PML4, &((base + PDPT) | flags).to_le_bytes())?;
    let pdpt: Vec<u8> = (0..4u64)
        .flat_map(|gib| ((base + PD + gib * 0x1000) | flags).to_le_bytes())
        .collect();
    ram.write(base + PDPT, &pdpt)?;
    let pds: Vec<u8> = (0..4 * 512u64)
        .flat_map(|i| ((i << 21) | flags | pte::HUGE).to_le_bytes())
        .collect();
    ram.write(base + PD, &pds)
}

/// The width of the code the vCPU is executing (16, 32 or 64), from its CS descriptor.
pub fn code_bitness(sregs: &kvm_sregs) -> u32 {
    if sregs.cs.l == 1 {
        64
    } else if sregs.cs.db == 1 {
        32
    } else {
        16
    }
}

/// Vectors that push an error code.
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// The mnemonic of an exception vector (`#GP`, `#PF`...).
pub fn exception_name(vector: u8) -> &'static str {
    const NAMES: [&str; 22] = [
        "#DE divide error",
        "#DB debug",
        "NMI",
        "#BP breakpoint",
        "#OF overflow",
        "#BR bound range",
        "#UD invalid opcode",
        "#NM device not available",
        "#DF double fault",
        "coprocessor segment overrun",
        "#TS invalid TSS",
        "#NP segment not present",
        "#SS stack fault",
        "#GP general protection",
        "#PF page fault",
        "reserved",
        "#MF x87 floating point",
        "#AC alignment check",
        "#MC machine check",
        "#XM SIMD floating point",
        "#VE virtualization",
        "#CP control protection",
    ];
    NAMES
        .get(usize::from(vector))
        .copied()
        .unwrap_or("interrupt")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_well_known_encodings() {
        // The classic flat descriptors every boot loader writes.
        assert_eq!(
            descriptor(&segment(selector::CODE32, true, false)),
            0x00cf_9b00_0000_ffff
        );
        assert_eq!(
            descriptor(&segment(selector::DATA, false, false)),
            0x00cf_9300_0000_ffff
        );
        assert_eq!(
            descriptor(&segment(selector::CODE64, true, true)),
            0x00af_9b00_0000_ffff
        );
        assert_eq!(
            descriptor(&segment(selector::USER_DATA, false, true)),
            0x00cf_f300_0000_ffff
        );
        assert_eq!(
            descriptor(&segment(selector::USER_CODE64, true, true)),
            0x00af_fb00_0000_ffff
        );
    }

    #[test]
    fn system_area_sits_at_the_top_of_ram_below_4g() {
        let a = SystemArea::for_mode(CpuMode::Long, 0, 2 << 20).unwrap();
        assert_eq!(a.base, (2 << 20) - SYSTEM_AREA_SIZE);
        assert_eq!(a.vector_at(a.stubs() + 14), Some(13));
        assert_eq!(a.vector_at(a.stubs()), None);
        let big = SystemArea::for_mode(CpuMode::Protected, 0, 5 << 30).unwrap();
        assert_eq!(big.base, FOUR_GIB - SYSTEM_AREA_SIZE);
        assert!(SystemArea::for_mode(CpuMode::Long, 0, 0x8000).is_err());
        assert!(
            !SystemArea::for_mode(CpuMode::Real, 0, 0x1000)
                .unwrap()
                .present
        );
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
        // Walk the tables for a high address: 0xfee0_0000 must map to itself, user-accessible.
        let va: u64 = 0xfee0_1234;
        let pml4e = ram.read_u64(sregs.cr3).unwrap();
        let pdpte = ram
            .read_u64((pml4e & !0xfff) + ((va >> 30) & 511) * 8)
            .unwrap();
        let pde = ram
            .read_u64((pdpte & !0xfff) + ((va >> 21) & 511) * 8)
            .unwrap();
        assert_eq!(pde & pte::HUGE, pte::HUGE);
        assert_eq!(pde & pte::USER, pte::USER);
        assert_eq!((pde & !0x1f_ffff & !(1 << 63)) | (va & 0x1f_ffff), va);
    }

    #[test]
    fn user_mode_needs_long_mode() {
        let ram = GuestRam::new(0, 1 << 20).unwrap();
        let area = SystemArea::for_mode(CpuMode::Protected, 0, ram.end()).unwrap();
        let mut s = kvm_sregs::default();
        assert!(matches!(
            setup_sregs(
                &ram,
                &area,
                CpuMode::Protected,
                Privilege::User,
                0x1000,
                &mut s
            ),
            Err(ArchError::UserNeedsLongMode)
        ));
    }
}
