//! What this host's KVM offers: API version, capabilities, CPUID, and whether guest ring 0
//! runs natively or is emulated (as on nested hosts such as those with `kvm_pvm`).

use std::path::Path;
use std::time::Duration;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Cap;
use serde::Serialize;

use crate::arch::{CpuMode, Privilege};
use crate::builder::{self, BuildError};
use crate::explain::Silent;
use crate::kvm::{KvmError, KvmSystem};
use crate::loader::Image;
use crate::machine::{MachineConfig, MachineError, Outcome};

/// Errors while probing the host.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    /// Opening KVM.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Building a probe VM.
    #[error("building the ring-0 probe VM failed: {0}")]
    Build(#[from] BuildError),
    /// Running a probe VM.
    #[error("running the ring-0 probe VM failed: {0}")]
    Run(#[from] MachineError),
    /// A probe ended unexpectedly.
    #[error("the ring-0 probe guest ended unexpectedly: {0}")]
    Probe(String),
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    Cpuid(kvm_ioctls::Error),
}

/// One capability and its value (0 = absent).
#[derive(Clone, Debug, Serialize)]
pub struct Capability {
    /// `KVM_CAP_*` name.
    pub name: &'static str,
    /// What a VMM uses it for.
    pub purpose: &'static str,
    /// `KVM_CHECK_EXTENSION` result.
    pub value: i32,
}

/// A summary of `KVM_GET_SUPPORTED_CPUID`.
#[derive(Clone, Debug, Serialize)]
pub struct CpuidSummary {
    /// Entries returned.
    pub entries: usize,
    /// CPU vendor string (leaf 0).
    pub vendor: String,
    /// Highest basic leaf.
    pub max_leaf: u32,
    /// Highest extended leaf.
    pub max_extended_leaf: u32,
    /// Notable features KVM can expose.
    pub features: Vec<&'static str>,
}

/// How fast guest ring 0 runs compared with ring 3.
#[derive(Clone, Debug, Serialize)]
pub struct Ring0Probe {
    /// Loop iterations per run.
    pub iterations: u32,
    /// Time in KVM_RUN for the loop at CPL0.
    pub cpl0: Duration,
    /// Time in KVM_RUN for the loop at CPL3.
    pub cpl3: Duration,
    /// cpl0 / cpl3.
    pub ratio: f64,
    /// Whether ring 0 looks emulated (ratio above [`EMULATED_RATIO`]).
    pub emulated: bool,
}

/// A CPL0/CPL3 time ratio above this means KVM emulates guest ring 0 instruction by instruction.
pub const EMULATED_RATIO: f64 = 10.0;

/// Everything `rypervisor info` prints.
#[derive(Clone, Debug, Serialize)]
pub struct HostInfo {
    /// Device path.
    pub device: String,
    /// API version.
    pub api_version: i32,
    /// Capabilities a VMM cares about.
    pub capabilities: Vec<Capability>,
    /// CPUID summary.
    pub cpuid: CpuidSummary,
    /// Loaded nested-KVM module, if any (e.g. `kvm_pvm`).
    pub nested_module: Option<String>,
    /// Ring-0 speed probe.
    pub ring0: Ring0Probe,
}

/// The capabilities `info` reports, with what each is for.
const CAPABILITIES: [(Cap, &str, &str); 13] = [
    (
        Cap::Irqchip,
        "KVM_CAP_IRQCHIP",
        "in-kernel PIC/IOAPIC/LAPIC",
    ),
    (Cap::Pit2, "KVM_CAP_PIT2", "in-kernel i8254 timer"),
    (
        Cap::Irqfd,
        "KVM_CAP_IRQFD",
        "inject interrupts through an eventfd",
    ),
    (
        Cap::Ioeventfd,
        "KVM_CAP_IOEVENTFD",
        "device doorbells without a VM exit to the VMM",
    ),
    (
        Cap::ImmediateExit,
        "KVM_CAP_IMMEDIATE_EXIT",
        "kick a vCPU out of KVM_RUN race-free",
    ),
    (
        Cap::SyncRegs,
        "KVM_CAP_SYNC_REGS",
        "registers in kvm_run, no GET/SET_REGS ioctl",
    ),
    (
        Cap::SetTssAddr,
        "KVM_CAP_SET_TSS_ADDR",
        "Intel real-mode support area",
    ),
    (
        Cap::SetIdentityMapAddr,
        "KVM_CAP_SET_IDENTITY_MAP_ADDR",
        "Intel identity page table address",
    ),
    (
        Cap::ExtCpuid,
        "KVM_CAP_EXT_CPUID",
        "KVM_GET_SUPPORTED_CPUID / KVM_SET_CPUID2",
    ),
    (
        Cap::TscDeadlineTimer,
        "KVM_CAP_TSC_DEADLINE_TIMER",
        "LAPIC TSC-deadline timer",
    ),
    (Cap::NrVcpus, "KVM_CAP_NR_VCPUS", "recommended vCPUs per VM"),
    (Cap::MaxVcpus, "KVM_CAP_MAX_VCPUS", "maximum vCPUs per VM"),
    (
        Cap::NrMemslots,
        "KVM_CAP_NR_MEMSLOTS",
        "memory slots per VM",
    ),
];

/// Probes the host.
pub fn probe(device: &Path) -> Result<HostInfo, InfoError> {
    let kvm = KvmSystem::open(device)?;
    let capabilities = CAPABILITIES
        .into_iter()
        .map(|(cap, name, purpose)| Capability {
            name,
            purpose,
            value: kvm.kvm.check_extension_int(cap),
        })
        .collect();
    let cpuid = cpuid_summary(&kvm)?;
    let nested_module = ["kvm_pvm"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists())
        .map(String::from);
    let ring0 = ring0_probe(device)?;
    Ok(HostInfo {
        device: device.display().to_string(),
        api_version: kvm.api_version,
        capabilities,
        cpuid,
        nested_module,
        ring0,
    })
}

fn cpuid_summary(kvm: &KvmSystem) -> Result<CpuidSummary, InfoError> {
    let cpuid = kvm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(InfoError::Cpuid)?;
    let entries = cpuid.as_slice();
    let leaf = |f: u32, i: u32| entries.iter().find(|e| e.function == f && e.index == i);
    let mut vendor = String::new();
    let mut max_leaf = 0;
    if let Some(e) = leaf(0, 0) {
        max_leaf = e.eax;
        for r in [e.ebx, e.edx, e.ecx] {
            vendor.extend(r.to_le_bytes().iter().map(|&b| b as char));
        }
    }
    let max_extended_leaf = leaf(0x8000_0000, 0).map_or(0, |e| e.eax);
    // (name, leaf, register index: 0=ecx 1=edx 2=ebx, bit)
    const FEATURES: [(&str, u32, u8, u32); 16] = [
        ("sse3", 1, 0, 0),
        ("ssse3", 1, 0, 9),
        ("cx16", 1, 0, 13),
        ("sse4.2", 1, 0, 20),
        ("x2apic", 1, 0, 21),
        ("popcnt", 1, 0, 23),
        ("xsave", 1, 0, 26),
        ("avx", 1, 0, 28),
        ("hypervisor", 1, 0, 31),
        ("sse2", 1, 1, 26),
        ("fsgsbase", 7, 2, 0),
        ("avx2", 7, 2, 5),
        ("smep", 7, 2, 7),
        ("smap", 7, 2, 20),
        ("pdpe1gb", 0x8000_0001, 1, 26),
        ("lm", 0x8000_0001, 1, 29),
    ];
    let features = FEATURES
        .iter()
        .filter(|(_, f, reg, bit)| {
            leaf(*f, 0).is_some_and(|e| {
                let r = match reg {
                    0 => e.ecx,
                    1 => e.edx,
                    _ => e.ebx,
                };
                r & (1 << bit) != 0
            })
        })
        .map(|(n, ..)| *n)
        .collect();
    Ok(CpuidSummary {
        entries: entries.len(),
        vendor,
        max_leaf,
        max_extended_leaf,
        features,
    })
}

/// Iterations of the probe loop: about 1 ms of emulated ring 0 per 1000 on nested hosts,
/// a few microseconds on hardware.
pub const PROBE_ITERATIONS: u32 = 20_000;

/// The probe guest: `mov ecx, N; l: dec ecx; jnz l; mov al, 0; out 0xf4, al` (64-bit).
pub fn probe_loop_code(iterations: u32) -> Vec<u8> {
    let mut code = vec![0xb9];
    code.extend_from_slice(&iterations.to_le_bytes());
    code.extend_from_slice(&[0xff, 0xc9, 0x75, 0xfc, 0xb0, 0x00, 0xe6, 0xf4]);
    code
}

/// Times the same loop at CPL0 and CPL3.
pub fn ring0_probe(device: &Path) -> Result<Ring0Probe, InfoError> {
    let time = |privilege| -> Result<Duration, InfoError> {
        let image = Image::flat(
            probe_loop_code(PROBE_ITERATIONS),
            0x1000,
            None,
            CpuMode::Long,
        )
        .map_err(|e| InfoError::Probe(e.to_string()))?;
        let config = MachineConfig {
            privilege,
            ram_size: 1 << 20,
            timeout: Some(Duration::from_secs(10)),
            kvm_device: device.to_owned(),
            ..MachineConfig::default()
        };
        let mut m = builder::build(&config, &image, &mut Silent)?;
        m.add_exit_device()?;
        let report = m.run(&mut Silent)?;
        match report.outcome {
            Outcome::Exited(0) => Ok(report.stats.guest_time),
            other => Err(InfoError::Probe(format!("{other:?}"))),
        }
    };
    // Warm up once so both measurements see the same page-table and cache state.
    time(Privilege::User)?;
    let cpl3 = time(Privilege::User)?;
    let cpl0 = time(Privilege::Kernel)?;
    let ratio = cpl0.as_secs_f64() / cpl3.as_secs_f64().max(1e-9);
    Ok(Ring0Probe {
        iterations: PROBE_ITERATIONS,
        cpl0,
        cpl3,
        ratio,
        emulated: ratio > EMULATED_RATIO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_code_is_the_loop_we_say() {
        let text: Vec<String> = crate::disasm::decode_all(&probe_loop_code(5), 64, 0)
            .into_iter()
            .map(|d| d.text)
            .collect();
        assert_eq!(
            text,
            [
                "mov ecx,5",
                "dec ecx",
                "jne short 5",
                "mov al,0",
                "out 0F4h,al"
            ]
        );
    }
}
