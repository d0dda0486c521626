//! Segments: the one GDT every protected- and long-mode guest of this VMM gets (`run`'s
//! guests, the sandbox, and Linux at its boot entry), its selectors, and the encoding of a
//! `kvm_segment` as a descriptor.

use kvm_bindings::{kvm_segment, kvm_sregs};

use crate::memory::{GuestRam, MemoryError};

/// GDT selectors (index * 8).
pub mod selector {
    /// 32-bit code, DPL0 (protected mode; Linux's PVH entry).
    pub const CODE32: u16 = 0x08;
    /// Flat data, DPL0.
    pub const DATA: u16 = 0x10;
    /// 64-bit code, DPL0 (long mode; Linux's 64-bit entry; the sandbox's `syscall` target).
    pub const CODE64: u16 = 0x18;
    /// Flat data, DPL3 (RPL 3).
    pub const USER_DATA: u16 = 0x20 | 3;
    /// 64-bit code, DPL3 (RPL 3).
    pub const USER_CODE64: u16 = 0x28 | 3;
    /// The 16-byte TSS descriptor.
    pub const TSS: u16 = 0x30;
    /// Bytes in the GDT (8 entries: the TSS takes two).
    pub const GDT_BYTES: u16 = 0x40;
}

/// Segment descriptor types (the low four bits of the access byte).
mod kind {
    /// Code: execute/read, accessed.
    pub const CODE: u8 = 0xb;
    /// Data: read/write, accessed.
    pub const DATA: u8 = 0x3;
    /// A busy 64-bit (or 32-bit) TSS.
    pub const BUSY_TSS: u8 = 0xb;
}

/// A flat 4 GiB code or data segment for `selector` (its RPL is the segment's DPL).
pub fn segment(selector: u16, code: bool, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { kind::CODE } else { kind::DATA },
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

/// The task register's segment: a busy TSS at `base` spanning `limit + 1` bytes.
pub fn tss_segment(base: u64, limit: u32) -> kvm_segment {
    kvm_segment {
        base,
        limit,
        selector: selector::TSS,
        type_: kind::BUSY_TSS,
        present: 1,
        ..Default::default()
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

/// The code and data segments for a mode: 32-bit or 64-bit, kernel or user.
pub fn flat_segments(long: bool, user: bool) -> (kvm_segment, kvm_segment) {
    match (long, user) {
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

/// The GDT (entries as in [`selector`]), with `tss` as its 16-byte system descriptor.
pub fn gdt_bytes(tss: &kvm_segment) -> Vec<u8> {
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

/// Writes the GDT at `at` and points `sregs.gdt` at it.
pub fn write_gdt(
    ram: &GuestRam,
    at: u64,
    tss: &kvm_segment,
    sregs: &mut kvm_sregs,
) -> Result<(), MemoryError> {
    ram.write(at, &gdt_bytes(tss))?;
    sregs.gdt.base = at;
    sregs.gdt.limit = selector::GDT_BYTES - 1;
    sregs.tr = *tss;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_well_known_encodings() {
        // The classic flat descriptors every boot loader writes.
        let cases = [
            (
                segment(selector::CODE32, true, false),
                0x00cf_9b00_0000_ffff,
            ),
            (segment(selector::DATA, false, false), 0x00cf_9300_0000_ffff),
            (segment(selector::CODE64, true, true), 0x00af_9b00_0000_ffff),
            (
                segment(selector::USER_DATA, false, true),
                0x00cf_f300_0000_ffff,
            ),
            (
                segment(selector::USER_CODE64, true, true),
                0x00af_fb00_0000_ffff,
            ),
        ];
        for (seg, want) in cases {
            assert_eq!(descriptor(&seg), want, "selector {:#x}", seg.selector);
        }
    }

    #[test]
    fn the_gdt_holds_every_selector_and_a_16_byte_tss() {
        let tss = tss_segment(0x1_2345_6000, 0x67);
        let gdt = gdt_bytes(&tss);
        assert_eq!(gdt.len(), usize::from(selector::GDT_BYTES));
        let word = |sel: u16| {
            let at = usize::from(sel & !7);
            u64::from_le_bytes(gdt[at..at + 8].try_into().unwrap())
        };
        assert_eq!(word(selector::CODE64), 0x00af_9b00_0000_ffff);
        assert_eq!((word(selector::TSS) >> 40) & 0xf, 0xb, "busy TSS");
        assert_eq!(word(selector::TSS + 8), 1, "high half of the base");
    }
}
