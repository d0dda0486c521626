//! Interrupts and exceptions: the IDT of one-byte `hlt` stubs that turns every CPU exception
//! a guest takes into a `KVM_EXIT_HLT` whose RIP names the vector, and the decoding of the
//! exception frame the CPU pushed (the one place both `run` and the sandbox read it).

use kvm_bindings::kvm_sregs;

use super::segments::selector;
use crate::memory::{GuestRam, MemoryError};

/// Bytes of the 256 exception stubs.
pub const STUBS_BYTES: u64 = 256;
/// `hlt`.
const HLT: u8 = 0xf4;
/// Page-fault vector (CR2 holds the address).
pub const PAGE_FAULT: u8 = 14;

/// An IDT whose gate for vector v points at `stubs + v` (one `hlt` each), so the halt's RIP
/// names the vector. Interrupt gates at DPL0, so `int n` from CPL3 is a #GP, except #BP and
/// #OF at DPL3, as operating systems have them, so `int3`/`into` arrive as themselves.
pub fn idt_to_stubs(stubs: u64, long: bool) -> Vec<u8> {
    const INTERRUPT_GATE_DPL0: u64 = 0x8e;
    const INTERRUPT_GATE_DPL3: u64 = 0xee;
    let mut idt = Vec::with_capacity(256 * 16);
    for v in 0..256u64 {
        let handler = stubs + v;
        let access = if v == 3 || v == 4 {
            INTERRUPT_GATE_DPL3
        } else {
            INTERRUPT_GATE_DPL0
        };
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

/// Writes the stubs at `stubs` and the IDT at `idt`, and points `sregs.idt` at it.
pub fn write_idt(
    ram: &GuestRam,
    idt: u64,
    stubs: u64,
    long: bool,
    sregs: &mut kvm_sregs,
) -> Result<(), MemoryError> {
    ram.write(stubs, &[HLT; STUBS_BYTES as usize])?;
    let table = idt_to_stubs(stubs, long);
    ram.write(idt, &table)?;
    sregs.idt.base = idt;
    sregs.idt.limit = (table.len() - 1) as u16;
    Ok(())
}

/// An empty IDT at `at` (for a kernel that installs its own before it enables interrupts).
pub fn write_empty_idt(ram: &GuestRam, at: u64, sregs: &mut kvm_sregs) -> Result<(), MemoryError> {
    ram.write(at, &[0u8; 8])?;
    sregs.idt.base = at;
    sregs.idt.limit = 7;
    Ok(())
}

/// If `rip` is just past the `hlt` of one of the stubs at `stubs`, the vector it stands for.
pub fn vector_at(stubs: u64, rip: u64) -> Option<u8> {
    (rip > stubs && rip <= stubs + STUBS_BYTES).then(|| (rip - stubs - 1) as u8)
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

/// A CPU exception the guest took, read from the frame the CPU pushed before jumping to a
/// stub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExceptionFrame {
    /// Vector number.
    pub vector: u8,
    /// Error code, for vectors that push one.
    pub error_code: Option<u64>,
    /// Address of the faulting instruction.
    pub rip: u64,
    /// Code segment selector at the fault (its low bits are the privilege level).
    pub cs: u64,
    /// RFLAGS at the fault.
    pub rflags: u64,
    /// Stack pointer at the fault.
    pub rsp: u64,
    /// CR2 (the faulting address) for page faults.
    pub cr2: Option<u64>,
}

impl ExceptionFrame {
    /// Decodes the frame at `rsp` (the stack pointer in the stub) for `vector`, in `long`
    /// (64-bit, 8-byte words) or protected mode (4-byte words). `word(addr)` reads a stack
    /// word; an unreadable one should read as all ones.
    pub fn decode(
        vector: u8,
        long: bool,
        rsp: u64,
        sregs: &kvm_sregs,
        word: impl Fn(u64) -> u64,
    ) -> Self {
        let width = if long { 8 } else { 4 };
        let at = |i: u64| {
            let v = word(rsp.wrapping_add(i * width));
            if long {
                v
            } else {
                v & 0xffff_ffff
            }
        };
        let (error_code, first) = if has_error_code(vector) {
            (Some(at(0)), 1)
        } else {
            (None, 0)
        };
        // 64-bit frames always hold RSP; 32-bit ones only on a privilege change (never here:
        // protected-mode guests run at CPL0), so the old stack is just above the frame.
        let old_rsp = if long {
            at(first + 3)
        } else {
            rsp.wrapping_add((first + 3) * width)
        };
        Self {
            vector,
            error_code,
            rip: at(first),
            cs: at(first + 1) & 0xffff,
            rflags: at(first + 2),
            rsp: old_rsp,
            cr2: (vector == PAGE_FAULT).then_some(sregs.cr2),
        }
    }

    /// The exception's name (`#PF page fault`...).
    pub fn name(&self) -> &'static str {
        exception_name(self.vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_addresses_name_vectors() {
        assert_eq!(vector_at(0x7100, 0x7100 + 15), Some(14));
        assert_eq!(vector_at(0x7100, 0x7100), None);
        assert_eq!(vector_at(0x7100, 0x7100 + 257), None);
        assert!(has_error_code(14) && !has_error_code(6));
    }

    #[test]
    fn frames_decode_with_and_without_error_codes() {
        let sregs = kvm_sregs {
            cr2: 0xdead,
            ..Default::default()
        };
        // #PF: error code, rip, cs, rflags, rsp, ss.
        let stack = [4u64, 0x40_1000, 0x2b, 0x202, 0x7fff_0000, 0x23];
        let word = |addr: u64| {
            stack
                .get(((addr - 0x1000) / 8) as usize)
                .copied()
                .unwrap_or(!0)
        };
        let f = ExceptionFrame::decode(14, true, 0x1000, &sregs, word);
        assert_eq!(
            (f.error_code, f.rip, f.cs & 3, f.rsp, f.cr2),
            (Some(4), 0x40_1000, 3, 0x7fff_0000, Some(0xdead))
        );
        // #UD in protected mode: no error code, no stack switch.
        let f = ExceptionFrame::decode(6, false, 0x1000, &sregs, |a| 0x1_0000_0000 | (a - 0x1000));
        assert_eq!((f.error_code, f.rip, f.rsp, f.cr2), (None, 0, 0x100c, None));
    }

    #[test]
    fn the_idt_points_every_vector_at_its_stub() {
        let idt = idt_to_stubs(0x1_0000, true);
        assert_eq!(idt.len(), 256 * 16);
        let gate = |v: usize| u64::from_le_bytes(idt[v * 16..v * 16 + 8].try_into().unwrap());
        assert_eq!(gate(14) & 0xffff, 0x000e, "offset low of stubs + 14");
        assert_eq!((gate(14) >> 40) & 0xff, 0x8e);
        assert_eq!((gate(3) >> 40) & 0xff, 0xee, "int3 allowed from CPL3");
    }
}
