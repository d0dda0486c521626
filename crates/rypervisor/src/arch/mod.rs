//! x86 CPU state for a freshly created vCPU: real, protected or long mode.
//!
//! A vCPU starts like a PC after reset: real mode, `CS:IP = f000:fff0`. To start a guest in
//! protected or long mode the VMM does what a boot loader would: it writes a GDT, an IDT,
//! a TSS and (for long mode) identity page tables into guest memory, and loads segment and
//! control registers that point at them (`KVM_SET_SREGS`). This module is the one writer of
//! those tables for every face, each choosing only *where* they go:
//!
//! - [`segments`]: the GDT and its selectors, shared by all;
//! - [`interrupts`]: the IDT of `hlt` stubs that turns exceptions into reports, and the
//!   decoding of the exception frame;
//! - [`tss`]: `RSP0` and the I/O permission bitmap;
//! - [`paging`]: identity page tables;
//! - [`msr`]: the model-specific registers by name;
//! - [`system_area`]: where `rypervisor run` puts all of it (the top of guest RAM).
//!
//! The sandbox (`sandbox/layout.rs`) and Linux boot (`boot/layout.rs`) place the same tables
//! elsewhere.

pub mod interrupts;
pub mod msr;
pub mod paging;
pub mod segments;
pub mod system_area;
pub mod tss;

use kvm_bindings::{kvm_regs, kvm_sregs};
use serde::Serialize;

use crate::memory::MemoryError;

pub use interrupts::{exception_name, has_error_code, ExceptionFrame};
pub use paging::pte;
pub use segments::{descriptor, load_segments, segment, selector};
pub use system_area::{setup_sregs, SystemArea, FOUR_GIB, SYSTEM_AREA_SIZE};

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
    /// XSAVE and XGETBV enabled (AVX needs it).
    pub const OSXSAVE: u64 = 1 << 18;
}

/// EFER bits.
pub mod efer {
    /// syscall/sysret enabled.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
}

/// RFLAGS bits.
pub mod rflags {
    /// Bit 1 is always set.
    pub const FIXED: u64 = 1 << 1;
    /// Trap flag.
    pub const TF: u64 = 1 << 8;
    /// Interrupts enabled.
    pub const IF: u64 = 1 << 9;
    /// Direction flag.
    pub const DF: u64 = 1 << 10;
    /// Nested task.
    pub const NT: u64 = 1 << 14;
    /// Alignment check.
    pub const AC: u64 = 1 << 18;
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
