//! CPU templates: what CPU a Linux guest is shown, and the workarounds a host needs.
//!
//! - [`CpuTemplate::Host`]: everything `KVM_GET_SUPPORTED_CPUID` reports, nothing else.
//!   On hardware KVM this is the right choice and nothing below runs.
//! - [`CpuTemplate::NestedSafe`]: for hosts where KVM *emulates* guest ring 0 (nested KVM
//!   such as `kvm_pvm`; `rypervisor info` says "EMULATED"). KVM's instruction emulator cannot
//!   run some instructions a kernel uses, so the template hides the features that lead to
//!   them, adds kernel options for the features CPUID cannot hide there, and steps over two
//!   instructions when the emulator gives up. Every item is listed in [`NESTED_SAFE`] with the
//!   failure it avoids (measured on a `kvm_pvm` host, see `NESTED-KVM.md`).
//!
//! All of it lives in this one module so the cost of supporting nested hosts stays visible.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// A CPU template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum CpuTemplate {
    /// Everything KVM supports.
    Host,
    /// Host minus what KVM's emulator cannot run (nested hosts).
    NestedSafe,
}

impl std::str::FromStr for CpuTemplate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host" => Ok(Self::Host),
            "nested-safe" => Ok(Self::NestedSafe),
            _ => Err(format!("unknown CPU template '{s}' (host, nested-safe)")),
        }
    }
}

impl std::fmt::Display for CpuTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Host => "host",
            Self::NestedSafe => "nested-safe",
        })
    }
}

/// One adjustment of the nested-safe template and why it exists.
#[derive(Clone, Copy, Debug)]
pub struct Adjustment {
    /// What is changed.
    pub what: &'static str,
    /// The failure it avoids.
    pub avoids: &'static str,
}

/// Everything [`CpuTemplate::NestedSafe`] changes, in the order a stock kernel meets it.
pub const NESTED_SAFE: &[Adjustment] = &[
    Adjustment {
        what: "CPUID.1:ECX.CX16 (bit 13) cleared",
        avoids: "`lock cmpxchg16b` in SLUB: KVM_EXIT_INTERNAL_ERROR (emulation failure)",
    },
    Adjustment {
        what: "KVM PV features PV_UNHALT (7), PV_SEND_IPI (11), PV_SCHED_YIELD (13) cleared in CPUID 0x40000001",
        avoids: "their `vmcall` hypercalls never return under kvm_pvm: the guest hangs",
    },
    Adjustment {
        what: "kernel option `noxsave`",
        avoids: "`xrstor64`: emulation failure (the host forces CPUID.XSAVE on, so CPUID cannot hide it)",
    },
    Adjustment {
        what: "kernel option `clearcpuid=308,151,137` (SMAP, POPCNT, SSSE3)",
        avoids: "`clac`/`stac` and `popcnt`: emulation failures (forced on in CPUID by the host)",
    },
    Adjustment {
        what: "kernel option `nofsgsbase`",
        avoids: "`rdfsbase`/`wrgsbase` family, forced on by the host",
    },
    Adjustment {
        what: "on an emulation failure at `int3` (cc): RIP += 1 and inject #BP",
        avoids: "the kernel's int3 self-test stopping the VM",
    },
    Adjustment {
        what: "on an emulation failure at `fwait` (9b): RIP += 1",
        avoids: "fwait in the FPU state switch of an exiting process stopping the VM",
    },
];

/// Kernel command-line options the template adds.
pub fn kernel_options(template: CpuTemplate) -> &'static str {
    match template {
        CpuTemplate::Host => "",
        CpuTemplate::NestedSafe => "noxsave clearcpuid=308,151,137 nofsgsbase",
    }
}

const CPUID_1_ECX_CX16: u32 = 1 << 13;
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
const KVM_FEATURE_PV_UNHALT: u32 = 1 << 7;
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;
const KVM_FEATURE_PV_SCHED_YIELD: u32 = 1 << 13;

fn leaf_mut(
    entries: &mut [kvm_cpuid_entry2],
    function: u32,
) -> impl Iterator<Item = &mut kvm_cpuid_entry2> {
    entries.iter_mut().filter(move |e| e.function == function)
}

/// Adapts the supported CPUID for vCPU `id` of `count` and the template.
pub fn apply(template: CpuTemplate, cpuid: &mut CpuId, id: u8, count: u8) {
    let entries = cpuid.as_mut_slice();
    for e in leaf_mut(entries, 1) {
        // Initial APIC id and logical processor count, so the guest sees distinct CPUs.
        e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
        e.ecx |= CPUID_1_ECX_HYPERVISOR;
        if template == CpuTemplate::NestedSafe {
            e.ecx &= !CPUID_1_ECX_CX16;
        }
    }
    for e in leaf_mut(entries, 0xb) {
        e.edx = u32::from(id); // x2APIC id
    }
    if template == CpuTemplate::NestedSafe {
        for e in leaf_mut(entries, KVM_CPUID_FEATURES) {
            e.eax &=
                !(KVM_FEATURE_PV_UNHALT | KVM_FEATURE_PV_SEND_IPI | KVM_FEATURE_PV_SCHED_YIELD);
        }
    }
}

/// What to do about an instruction KVM's emulator could not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workaround {
    /// `int3`: advance RIP past it and inject #BP, as the CPU would.
    StepOverInt3,
    /// `fwait`: advance RIP past it (there are no pending x87 exceptions to raise).
    SkipFwait,
}

impl Workaround {
    /// Bytes to advance RIP.
    pub fn length(self) -> u64 {
        1
    }
}

/// The workaround for an emulation failure at `insn` (the bytes KVM reported), if the
/// template has one.
pub fn emulation_workaround(template: CpuTemplate, insn: &[u8]) -> Option<Workaround> {
    if template != CpuTemplate::NestedSafe {
        return None;
    }
    match insn.first()? {
        0xcc => Some(Workaround::StepOverInt3),
        0x9b => Some(Workaround::SkipFwait),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpuid() -> CpuId {
        let mut c = CpuId::new(3).unwrap();
        let e = c.as_mut_slice();
        e[0].function = 1;
        e[0].ecx = CPUID_1_ECX_CX16 | 1;
        e[0].ebx = 0x0000_0800;
        e[1].function = KVM_CPUID_FEATURES;
        e[1].eax = 0xffff;
        e[2].function = 0xb;
        c
    }

    #[test]
    fn host_keeps_features_and_numbers_the_cpu() {
        let mut c = cpuid();
        apply(CpuTemplate::Host, &mut c, 1, 2);
        let e = c.as_slice();
        assert_eq!(e[0].ecx & CPUID_1_ECX_CX16, CPUID_1_ECX_CX16);
        assert_eq!(e[0].ecx & CPUID_1_ECX_HYPERVISOR, CPUID_1_ECX_HYPERVISOR);
        assert_eq!(e[0].ebx >> 24, 1);
        assert_eq!((e[0].ebx >> 16) & 0xff, 2);
        assert_eq!(e[0].ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_eq!(e[1].eax, 0xffff);
        assert_eq!(e[2].edx, 1);
        assert_eq!(kernel_options(CpuTemplate::Host), "");
        assert_eq!(emulation_workaround(CpuTemplate::Host, &[0xcc]), None);
    }

    #[test]
    fn nested_safe_hides_what_the_emulator_cannot_run() {
        let mut c = cpuid();
        apply(CpuTemplate::NestedSafe, &mut c, 0, 1);
        let e = c.as_slice();
        assert_eq!(e[0].ecx & CPUID_1_ECX_CX16, 0);
        assert_eq!(e[0].ecx & 1, 1, "other features kept");
        assert_eq!(e[1].eax & ((1 << 7) | (1 << 11) | (1 << 13)), 0);
        assert_eq!(e[1].eax & 1, 1, "the PV clock stays");
        assert!(kernel_options(CpuTemplate::NestedSafe).contains("noxsave"));
        assert_eq!(
            emulation_workaround(CpuTemplate::NestedSafe, &[0xcc]),
            Some(Workaround::StepOverInt3)
        );
        assert_eq!(
            emulation_workaround(CpuTemplate::NestedSafe, &[0x9b, 0x90]),
            Some(Workaround::SkipFwait)
        );
        assert_eq!(
            emulation_workaround(CpuTemplate::NestedSafe, &[0x0f, 0xc7]),
            None
        );
        assert_eq!(NESTED_SAFE.len(), 7);
        assert_eq!(
            "nested-safe".parse::<CpuTemplate>(),
            Ok(CpuTemplate::NestedSafe)
        );
        assert!("bogus".parse::<CpuTemplate>().is_err());
    }
}
