//! Reports about a vCPU for people: `KVM_EXIT_INTERNAL_ERROR` (emulation failures above all,
//! common on nested hosts), register dumps, and where a vCPU was when it stopped. Every face
//! (`run`, `exec`, `boot`) prints these the same way.

use std::fmt::Write as _;

use kvm_bindings::{
    kvm_regs, kvm_run, kvm_sregs, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
};

use crate::arch;
use crate::disasm::{self, Decoded};
use crate::explain;

/// Details of `KVM_EXIT_INTERNAL_ERROR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalErrorInfo {
    /// `KVM_INTERNAL_ERROR_*` suberror.
    pub suberror: u32,
    /// Extra data words from KVM.
    pub data: Vec<u64>,
    /// Instruction bytes KVM reported (emulation failures), if any.
    pub insn_bytes: Vec<u8>,
}

impl InternalErrorInfo {
    /// Decodes the `internal` member of `kvm_run`'s exit union.
    pub(crate) fn from_run(run: &kvm_run) -> Self {
        // SAFETY: called only right after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, for which
        // the kernel fills the `internal` member of the exit union; it is plain integers.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let data = internal.data[..ndata].to_vec();
        // For emulation failures with KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
        // the words after `flags` hold `insn_size` (1 byte) then up to 15 instruction bytes.
        let mut insn_bytes = Vec::new();
        if internal.suberror == KVM_INTERNAL_ERROR_EMULATION
            && ndata >= 3
            && data[0] & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0
        {
            let raw: Vec<u8> = data[1..3].iter().flat_map(|w| w.to_le_bytes()).collect();
            let size = usize::from(raw[0]).min(15);
            insn_bytes = raw[1..1 + size].to_vec();
        }
        Self {
            suberror: internal.suberror,
            data,
            insn_bytes,
        }
    }

    /// What the suberror means.
    pub fn meaning(&self) -> &'static str {
        match self.suberror {
            1 => "emulation failure: KVM's instruction emulator cannot execute this instruction",
            2 => "simultaneous exceptions while delivering an exception",
            3 => "exception during event delivery (e.g. the IDT or stack is unusable)",
            4 => "unexpected hardware exit reason",
            _ => "unknown suberror",
        }
    }

    /// Whether KVM's emulator failed (as opposed to another internal error).
    pub fn is_emulation_failure(&self) -> bool {
        self.suberror == KVM_INTERNAL_ERROR_EMULATION
    }

    /// `KVM_EXIT_INTERNAL_ERROR suberror N: what it means`.
    pub fn headline(&self) -> String {
        format!(
            "KVM_EXIT_INTERNAL_ERROR suberror {}: {}",
            self.suberror,
            self.meaning()
        )
    }

    /// The failing instruction, decoded from the bytes KVM reported, if it reported any.
    pub fn instruction(&self, rip: u64, sregs: &kvm_sregs) -> Option<Decoded> {
        (!self.insn_bytes.is_empty())
            .then(|| disasm::decode(&self.insn_bytes, arch::code_bitness(sregs), rip))
    }

    /// One line: the headline and, when KVM reported it, the instruction.
    pub fn summary(&self, rip: u64, sregs: &kvm_sregs) -> String {
        match self.instruction(rip, sregs) {
            Some(d) => format!(
                "{}; at rip {rip:#x}: {} [{}]",
                self.headline(),
                d.text,
                disasm::hex(&d.bytes)
            ),
            None => format!("{}; at rip {rip:#x}", self.headline()),
        }
    }

    /// Lines for a multi-line report: the headline, KVM's data words and instruction bytes.
    pub fn details(&self) -> String {
        let mut s = self.headline() + "\n";
        if !self.data.is_empty() {
            let words: Vec<String> = self.data.iter().map(|d| format!("{d:#x}")).collect();
            let _ = writeln!(s, "  data: {}", words.join(" "));
        }
        if !self.insn_bytes.is_empty() {
            let bytes = disasm::hex(&self.insn_bytes);
            let _ = writeln!(s, "  instruction bytes reported by KVM: {bytes}");
        }
        s
    }
}

/// Registers as a compact block for fault reports.
pub fn register_dump(r: &kvm_regs, s: &kvm_sregs) -> String {
    let mut out = String::new();
    let f = explain::regs_fields(r);
    for row in f.chunks(4) {
        let line: Vec<String> = row.iter().map(|(n, v)| format!("{n:>6}={v}")).collect();
        let _ = writeln!(out, "  {}", line.join(" "));
    }
    let _ = writeln!(
        out,
        "  cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
        s.cr0, s.cr2, s.cr3, s.cr4, s.efer
    );
    let width = match arch::code_bitness(s) {
        64 => "64-bit",
        32 => "32-bit",
        _ => "16-bit",
    };
    let _ = writeln!(
        out,
        "  cs={:#06x} (base {:#x}, dpl {}, {width}) ss={:#06x}",
        s.cs.selector, s.cs.base, s.cs.dpl, s.ss.selector
    );
    out
}

/// "at rip X (B-bit, cpl N)" and, when `code` holds the bytes there, ": insn \[bytes\]".
pub fn place(regs: &kvm_regs, sregs: &kvm_sregs, code: Option<&[u8]>) -> String {
    let bits = arch::code_bitness(sregs);
    let mut text = format!(
        "at rip {:#x} ({bits}-bit, cpl {})",
        regs.rip,
        sregs.cs.selector & 3
    );
    if let Some(bytes) = code {
        let d = disasm::decode(bytes, bits, regs.rip);
        let _ = write!(text, ": {} [{}]", d.text, disasm::hex(&d.bytes));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulation_failures_name_the_instruction() {
        let info = InternalErrorInfo {
            suberror: 1,
            data: vec![1],
            insn_bytes: vec![0xf3, 0x48, 0x0f, 0xb8, 0xc3],
        };
        let mut sregs = kvm_sregs::default();
        sregs.cs.l = 1;
        let line = info.summary(0x1000, &sregs);
        assert!(line.starts_with("KVM_EXIT_INTERNAL_ERROR suberror 1: emulation failure"));
        assert!(
            line.ends_with("at rip 0x1000: popcnt rax,rbx [f3 48 0f b8 c3]"),
            "{line}"
        );
        assert!(info
            .details()
            .contains("instruction bytes reported by KVM: f3 48 0f b8 c3"));
        assert!(info.is_emulation_failure());
    }

    #[test]
    fn places_say_mode_and_privilege() {
        let regs = kvm_regs {
            rip: 0x10,
            ..Default::default()
        };
        let mut sregs = kvm_sregs::default();
        sregs.cs.selector = 0x2b;
        sregs.cs.l = 1;
        assert_eq!(place(&regs, &sregs, None), "at rip 0x10 (64-bit, cpl 3)");
        assert_eq!(
            place(&regs, &sregs, Some(&[0xf4])),
            "at rip 0x10 (64-bit, cpl 3): hlt [f4]"
        );
    }
}
