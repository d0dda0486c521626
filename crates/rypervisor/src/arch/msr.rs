//! Model-specific registers the VMM sets, by the names the Intel SDM and `msr-index.h` give
//! them (kvm-bindings has no such list).

/// IA32_TIME_STAMP_COUNTER.
pub const TSC: u32 = 0x10;
/// IA32_SYSENTER_CS.
pub const SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const MISC_ENABLE: u32 = 0x1a0;
/// IA32_MISC_ENABLE bit 0: fast string operations.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// Extended feature enables.
pub const EFER: u32 = 0xc000_0080;
/// Segment selectors for syscall/sysret.
pub const STAR: u32 = 0xc000_0081;
/// 64-bit syscall entry point.
pub const LSTAR: u32 = 0xc000_0082;
/// Compatibility-mode syscall entry point.
pub const CSTAR: u32 = 0xc000_0083;
/// RFLAGS bits cleared on syscall.
pub const SFMASK: u32 = 0xc000_0084;
/// FS base (TLS).
pub const FS_BASE: u32 = 0xc000_0100;
/// GS base.
pub const GS_BASE: u32 = 0xc000_0101;
/// Kernel GS base (swapgs).
pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
