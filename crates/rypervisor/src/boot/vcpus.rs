//! The vCPUs at the kernel's entry: the boot CPU tables (through `arch`'s writers), and per
//! vCPU its CPUID (from the CPU template), MSRs, local APIC, FPU, and for the boot vCPU the
//! registers the boot protocol asks for.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs, CpuId};
use kvm_ioctls::VmFd;

use super::{layout, BootError, KernelFormat};
use crate::arch::paging::{pte, IdentityMap, Pde};
use crate::arch::segments::{flat_segments, load_segments, write_gdt};
use crate::arch::tss::{write_tss, IoPorts};
use crate::arch::{cr0, cr4, efer, interrupts, msr, rflags};
use crate::cpu_template::{self, CpuTemplate};
use crate::kvm::ioctl;
use crate::memory::GuestRam;
use crate::vcpu::Vcpu;

/// The boot page tables: an identity map of 4 GiB with 2 MiB pages (only the 64-bit entry
/// uses them; PVH starts with paging off).
const PAGE_TABLES: IdentityMap = IdentityMap {
    pml4: layout::PML4,
    gib: 4,
};

/// Writes the boot GDT, TSS, empty IDT and page tables, and points `sregs` at them.
pub fn write_boot_tables(ram: &GuestRam, sregs: &mut kvm_sregs) -> Result<(), BootError> {
    let tss = write_tss(ram, layout::TSS, 0, IoPorts::None)?;
    write_gdt(ram, layout::GDT, &tss, sregs)?;
    interrupts::write_empty_idt(ram, layout::IDT, sregs)?;
    PAGE_TABLES.write(ram, pte::WRITABLE, |_| Pde::Huge(pte::WRITABLE))?;
    Ok(())
}

/// Creates vCPU `id` of `count` and configures it: CPUID through `template`, MSRs, LAPIC, FPU.
pub fn create_vcpu(
    vm: &VmFd,
    supported: &CpuId,
    template: CpuTemplate,
    id: u8,
    count: u8,
) -> Result<Vcpu, BootError> {
    let fd = vm
        .create_vcpu(u64::from(id))
        .map_err(ioctl("KVM_CREATE_VCPU"))?;
    let mut cpuid = supported.clone();
    cpu_template::apply(template, &mut cpuid, id, count);
    fd.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
    let vcpu = Vcpu::new(fd, u64::from(id));
    setup_msrs(&vcpu)?;
    setup_lapic(&vcpu)?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.fd().set_fpu(&fpu).map_err(ioctl("KVM_SET_FPU"))?;
    Ok(vcpu)
}

/// The MSRs Linux expects zeroed at entry, and fast strings enabled.
fn setup_msrs(vcpu: &Vcpu) -> Result<(), BootError> {
    let zeroed = [
        msr::SYSENTER_CS,
        msr::SYSENTER_ESP,
        msr::SYSENTER_EIP,
        msr::STAR,
        msr::LSTAR,
        msr::CSTAR,
        msr::SFMASK,
        msr::KERNEL_GS_BASE,
        msr::TSC,
    ];
    let mut entries: Vec<(u32, u64)> = zeroed.iter().map(|&m| (m, 0)).collect();
    entries.push((msr::MISC_ENABLE, msr::MISC_ENABLE_FAST_STRING));
    Ok(vcpu.set_msrs(&entries)?)
}

/// LINT0 as ExtINT (the PIC's interrupts) and LINT1 as NMI, as a PC's firmware leaves them.
fn setup_lapic(vcpu: &Vcpu) -> Result<(), BootError> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const DELIVERY_MODE: u32 = 0x700;
    const EXTINT: u32 = 7 << 8;
    const NMI: u32 = 4 << 8;
    let mut lapic = vcpu.fd().get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    for (offset, mode) in [(LVT_LINT0, EXTINT), (LVT_LINT1, NMI)] {
        let mut raw = [0u8; 4];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = lapic.regs[offset + i] as u8;
        }
        let value = (u32::from_le_bytes(raw) & !DELIVERY_MODE) | mode;
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as _;
        }
    }
    vcpu.fd()
        .set_lapic(&lapic)
        .map_err(ioctl("KVM_SET_LAPIC"))?;
    Ok(())
}

/// Registers of the boot vCPU at the kernel's entry; `tables` are the special registers
/// [`write_boot_tables`] prepared.
pub fn setup_boot_cpu(
    vcpu: &Vcpu,
    tables: &kvm_sregs,
    format: KernelFormat,
    entry: u64,
) -> Result<(), BootError> {
    let mut sregs = vcpu.fd().get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    (sregs.gdt, sregs.idt, sregs.tr) = (tables.gdt, tables.idt, tables.tr);
    let mut regs = kvm_regs {
        rflags: rflags::FIXED,
        rip: entry,
        ..Default::default()
    };
    let (cs, ds) = flat_segments(!format.is_pvh(), false);
    load_segments(&mut sregs, cs, ds);
    if format.is_pvh() {
        // PVH: 32-bit protected mode, paging off, flat segments, EBX = start info.
        sregs.cr0 = cr0::PE | cr0::ET;
        sregs.cr4 = 0;
        sregs.efer = 0;
        regs.rbx = layout::PVH_INFO;
    } else {
        // The 64-bit boot protocol: long mode, identity-mapped, RSI = zero page.
        sregs.cr0 = cr0::PE | cr0::PG | cr0::ET;
        sregs.cr3 = PAGE_TABLES.pml4;
        sregs.cr4 = cr4::PAE;
        sregs.efer = efer::LME | efer::LMA;
        regs.rsp = layout::BOOT_STACK;
        regs.rbp = layout::BOOT_STACK;
        regs.rsi = layout::ZERO_PAGE;
    }
    vcpu.fd()
        .set_sregs(&sregs)
        .map_err(ioctl("KVM_SET_SREGS"))?;
    vcpu.fd().set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_tables_fit_below_the_start_info_and_map_4g() {
        let ram = GuestRam::new(0, 16 << 20).unwrap();
        let mut sregs = kvm_sregs::default();
        write_boot_tables(&ram, &mut sregs).unwrap();
        assert_eq!(sregs.gdt.base, layout::GDT);
        assert!(layout::GDT + u64::from(sregs.gdt.limit) < layout::IDT);
        assert!(layout::IDT + u64::from(sregs.idt.limit) < layout::TSS);
        assert!(layout::TSS + u64::from(sregs.tr.limit) < layout::PVH_INFO);
        assert_eq!(PAGE_TABLES.end(), layout::PD + 4 * 0x1000);
        let va = 0xfec0_0000;
        let walked = crate::arch::paging::walk(&ram, layout::PML4, va);
        assert_eq!(walked, Some((va, false, true)));
    }
}
