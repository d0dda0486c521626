//! The sandbox's address space and CPU tables: one guest process at CPL3, no guest kernel.
//!
//! Guest-virtual addresses equal guest-physical ones. The first 2 MiB belong to the VMM and
//! are mapped with 4 KiB pages, almost all of them *supervisor only*, so the program can
//! neither read nor write its own page tables, GDT, IDT or TSS:
//!
//! | guest address       | what                                   | program's access |
//! |---------------------|----------------------------------------|------------------|
//! | `0x0000`            | null page                              | none (faults)    |
//! | `0x6000`            | the page table of the first 2 MiB      | none (not mapped)|
//! | `0x7000`            | GDT, then 256 one-byte `hlt` stubs     | none             |
//! | `0x8000`            | IDT (every vector → its stub)          | none             |
//! | `0x9000`–`0xb068`   | TSS + I/O permission bitmap            | none             |
//! | `0xc000`–`0xffff`   | exception stack (TSS.RSP0)             | none             |
//! | `0x10000`           | syscall stub (`LSTAR`)                 | read + execute   |
//! | `0x11000`           | the vDSO's time page ([`vdso::VVAR`])   | read             |
//! | `0x12000`–`0x13fff` | the vDSO ([`vdso::VDSO_BASE`])          | read + execute   |
//! | `0x14000`–`1 MiB`   | unused                                 | none             |
//! | `1 MiB`–`2 MiB`     | PML4, PDPT, a page directory per GiB   | none (not mapped)|
//! | `2 MiB`–`--mem`     | the program: ELF, heap, mmap, stack    | read/write/exec  |
//!
//! The program's part is mapped with 2 MiB pages; memory protection inside it is the
//! program's own business (the VM is the isolation boundary), so `mprotect` is recorded by
//! the VMM but does not change page tables.
//!
//! ## The system-call path
//! `LSTAR` points at a user-readable stub, `out SYSCALL_PORT, al; sysretq`. The TSS I/O
//! bitmap allows that one port and no other. What happens next depends on the host:
//! - hardware KVM: `syscall` enters CPL0 at the stub, `out` exits to the VMM (KVM_EXIT_IO),
//!   the VMM puts the result in RAX, and on re-entry the stub's `sysretq` returns to CPL3 at
//!   RCX with RFLAGS from R11: one exit per system call.
//! - a nested host whose `syscall` does not switch to CPL0 (RIP becomes LSTAR but CS stays at
//!   CPL3; see `NESTED-KVM.md`): the same `out` at CPL3 exits the same way thanks to the I/O
//!   bitmap; `sysretq` would fault at CPL3, so the VMM completes the return itself (RIP ←
//!   RCX, RFLAGS ← R11) through `kvm_run`'s synced registers: still one exit, no extra ioctl.
//!
//! The VMM tells the two apart once, at the first system call, by the CPL in CS.
//!
//! ## Exceptions
//! Every IDT vector points at its own `hlt` stub, so a fault at CPL3 switches to the
//! exception stack and halts; the halt's RIP names the vector and the stack holds the frame
//! (error code, RIP, CS, RFLAGS, RSP, SS).

use kvm_bindings::kvm_sregs;

use crate::arch::interrupts::{self, write_idt};
use crate::arch::paging::{pte, write_page_table, IdentityMap, Pde, HUGE_PAGE};
use crate::arch::segments::{flat_segments, load_segments, selector, write_gdt};
use crate::arch::tss::{write_tss, IoPorts};
use crate::arch::{cr0, cr4, efer, rflags};
use crate::memory::{GuestRam, MemoryError};
use crate::sandbox::vdso;

pub use crate::arch::msr;

/// Where the page tables start: the PML4, then the PDPT, then one page directory per GiB of
/// guest memory, up to the end of the VMM's 2 MiB.
const PML4: u64 = 0x10_0000;

/// The page tables for a guest of `mem_size` bytes.
fn page_tables(mem_size: u64) -> IdentityMap {
    IdentityMap {
        pml4: PML4,
        gib: mem_size.div_ceil(1 << 30),
    }
}
/// The 4 KiB page table for the VMM's first 2 MiB, right after the page directories.
const PT_LOW: u64 = 0x6000;
const GDT: u64 = 0x7000;
/// Guest address of the exception stubs (one `hlt` per vector).
pub const STUBS: u64 = 0x7100;
const IDT: u64 = 0x8000;
const TSS: u64 = 0x9000;
const EXCEPTION_STACK: u64 = 0xc000;
/// Top of the exception stack (TSS.RSP0).
pub const EXCEPTION_STACK_TOP: u64 = 0x10000;
/// Guest address of the system-call stub (`LSTAR`).
pub const SYSCALL_STUB: u64 = 0x10000;
/// The one I/O port the program may use: the system-call stub's `out`.
pub const SYSCALL_PORT: u16 = 0xf5;
/// First address of the program's memory.
pub const USER_BASE: u64 = 2 << 20;
/// Granularity of guest memory sizes (one large page).
pub const MEM_ALIGN: u64 = HUGE_PAGE;
/// Smallest guest: the VMM's 2 MiB and 2 MiB for the program.
pub const MIN_MEM: u64 = 4 << 20;
/// Largest guest the page tables map: as many GiB as page directories fit between the PDPT
/// and 2 MiB (254 GiB); the host's RAM is the real bound, checked when memory is made.
pub const MAX_MEM: u64 = ((USER_BASE - PML4) / 0x1000 - 2) << 30;

/// `out 0xf5, al; sysretq` (REX.W 0F 07).
const STUB_CODE: [u8; 5] = [0xe6, SYSCALL_PORT as u8, 0x48, 0x0f, 0x07];
/// The stub's `sysretq`: a vCPU stopped here (at CPL0) has had its call served.
pub const STUB_SYSRET: u64 = SYSCALL_STUB + 2;

/// Checks a guest memory size for the sandbox.
pub fn check_mem(size: u64) -> Result<(), MemoryError> {
    if size < MIN_MEM {
        return Err(MemoryError::TooSmall {
            size,
            why: format!(
                "a sandbox needs at least {} (2 MiB for the VMM's tables, the rest for the program)",
                crate::memory::human_size(MIN_MEM)
            ),
        });
    }
    if size > MAX_MEM {
        return Err(MemoryError::TooLarge {
            size,
            why: format!(
                "a sandbox's page tables map at most {}",
                crate::memory::human_size(MAX_MEM)
            ),
        });
    }
    if !size.is_multiple_of(MEM_ALIGN) {
        return Err(MemoryError::TooSmall {
            size,
            why: "a sandbox's memory is a multiple of 2 MiB".into(),
        });
    }
    Ok(())
}

/// Whether `[addr, addr+len)` is program memory: the only range a system call may touch.
pub fn is_user(addr: u64, len: u64, mem_size: u64) -> bool {
    addr >= USER_BASE && addr.checked_add(len).is_some_and(|end| end <= mem_size)
}

/// If `rip` is just past an exception stub's `hlt`, the vector it stands for.
pub fn vector_at(rip: u64) -> Option<u8> {
    interrupts::vector_at(STUBS, rip)
}

/// Writes the page tables, GDT, IDT, TSS and stubs for a guest of `mem_size` bytes, and
/// points `sregs` at them.
pub fn write_tables(
    ram: &GuestRam,
    mem_size: u64,
    sregs: &mut kvm_sregs,
) -> Result<(), MemoryError> {
    // Upper levels allow everything; the leaves decide. 2 MiB user pages for the program, the
    // VMM's 2 MiB through a 4 KiB table.
    let table = pte::WRITABLE | pte::USER;
    let tables = page_tables(mem_size);
    debug_assert!(tables.end() <= USER_BASE);
    tables.write(ram, table, |addr| match addr {
        0 => Pde::Table(PT_LOW),
        a if a >= USER_BASE && a < mem_size => Pde::Huge(pte::WRITABLE | pte::USER),
        _ => Pde::Absent,
    })?;
    // Supervisor pages for the CPU tables and exception stack, user read-only pages for the
    // syscall stub, the time page and the vDSO, nothing else.
    write_page_table(ram, PT_LOW, 0, |page| match page {
        SYSCALL_STUB | vdso::VVAR => Some(pte::USER),
        p if (vdso::VDSO_BASE..vdso::VDSO_BASE + vdso::VDSO_MAX).contains(&p) => Some(pte::USER),
        p if (GDT..EXCEPTION_STACK_TOP).contains(&p) => Some(pte::WRITABLE),
        _ => None,
    })?;
    // RSP0, and a bitmap that denies every port but SYSCALL_PORT.
    let tss = write_tss(
        ram,
        TSS,
        EXCEPTION_STACK_TOP,
        IoPorts::Only(&[SYSCALL_PORT]),
    )?;
    write_gdt(ram, GDT, &tss, sregs)?;
    write_idt(ram, IDT, STUBS, true, sregs)?;
    ram.zero(EXCEPTION_STACK, EXCEPTION_STACK_TOP - EXCEPTION_STACK)?;
    ram.write(SYSCALL_STUB, &STUB_CODE)
}

/// Sets `sregs` for a 64-bit CPL3 process: user segments, paging, syscall enabled (the
/// descriptor tables are set by [`write_tables`]).
pub fn setup_sregs(sregs: &mut kvm_sregs, xsave: bool) {
    let (cs, ds) = flat_segments(true, true);
    load_segments(sregs, cs, ds);
    sregs.cr0 = cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::PG;
    sregs.cr3 = PML4;
    sregs.cr4 = cr4::PAE | cr4::OSFXSR | cr4::OSXMMEXCPT | if xsave { cr4::OSXSAVE } else { 0 };
    sregs.efer = efer::LME | efer::LMA | efer::SCE;
}

/// Puts `sregs` back at CPL3 as `sysret` would: the user CS and SS only (for returning to
/// the program from the system-call stub without `sysret`). FS and GS, whose bases hold the
/// program's TLS, stay as they are.
pub fn user_segments(sregs: &mut kvm_sregs) {
    let (cs, ss) = flat_segments(true, true);
    (sregs.cs, sregs.ss) = (cs, ss);
}

/// The MSRs of the system-call path, with FS/GS bases cleared.
pub fn msrs() -> [(u32, u64); 6] {
    // sysret: CS = STAR[63:48]+16 (USER_CODE64), SS = STAR[63:48]+8 (USER_DATA), RPL 3.
    // syscall: CS = STAR[47:32] (CODE64), SS = +8.
    let base = u64::from(selector::CODE64);
    let star = (base << 48) | (base << 32);
    // Cleared on entry: TF, DF, NT, AC (the stub needs none of them; R11 keeps the originals).
    let sfmask = rflags::TF | rflags::DF | rflags::NT | rflags::AC;
    [
        (msr::STAR, star),
        (msr::LSTAR, SYSCALL_STUB),
        (msr::SFMASK, sfmask),
        (msr::FS_BASE, 0),
        (msr::GS_BASE, 0),
        (msr::KERNEL_GS_BASE, 0),
    ]
}

/// Whether `cs` (from sregs) is at CPL0: the hardware syscall path.
pub fn is_kernel_cs(sregs: &kvm_sregs) -> bool {
    sregs.cs.selector & 3 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(ram: &GuestRam, va: u64) -> Option<(u64, bool, bool)> {
        crate::arch::paging::walk(ram, PML4, va)
    }

    fn tables(size: u64) -> GuestRam {
        let ram = GuestRam::new(0, size).unwrap();
        write_tables(&ram, size, &mut kvm_sregs::default()).unwrap();
        ram
    }

    #[test]
    fn the_program_cannot_reach_the_vmm_tables() {
        let ram = tables(8 << 20);
        assert_eq!(walk(&ram, 0), None, "null page");
        let map = page_tables(8 << 20);
        for table in [map.pml4, map.pdpt(), map.pd(0), PT_LOW] {
            assert_eq!(walk(&ram, table), None, "page tables are not mapped");
        }
        for sys in [GDT, IDT, TSS, EXCEPTION_STACK] {
            let (pa, user, _) = walk(&ram, sys).unwrap();
            assert_eq!(pa, sys);
            assert!(!user, "{sys:#x} must be supervisor only");
        }
        assert_eq!(walk(&ram, SYSCALL_STUB), Some((SYSCALL_STUB, true, false)));
        for page in [vdso::VVAR, vdso::VDSO_BASE, vdso::VDSO_BASE + 0x1000] {
            assert_eq!(
                walk(&ram, page),
                Some((page, true, false)),
                "{page:#x}: read-only"
            );
        }
        assert_eq!(walk(&ram, vdso::VDSO_BASE + vdso::VDSO_MAX), None);
        assert_eq!(walk(&ram, USER_BASE), Some((USER_BASE, true, true)));
        assert_eq!(walk(&ram, (8 << 20) - 1), Some(((8 << 20) - 1, true, true)));
        assert_eq!(walk(&ram, 8 << 20), None, "nothing past the end of memory");
    }

    #[test]
    fn returning_to_cpl3_keeps_the_tls_bases() {
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mut sregs, false);
        let user_cs = sregs.cs;
        sregs.fs.base = 0x7f00_1000;
        sregs.gs.base = 0x1234;
        sregs.cs.selector = selector::CODE64; // as in the stub, at CPL0
        user_segments(&mut sregs);
        assert_eq!(sregs.cs, user_cs);
        assert_eq!(sregs.ss.selector & 3, 3);
        assert_eq!((sregs.fs.base, sregs.gs.base), (0x7f00_1000, 0x1234));
    }

    #[test]
    fn only_the_syscall_port_is_open() {
        let ram = tables(4 << 20);
        let mut bitmap = vec![0u8; 8193];
        ram.read(TSS + 104, &mut bitmap).unwrap();
        let open: Vec<usize> = (0..65536)
            .filter(|p| bitmap[p / 8] & (1 << (p % 8)) == 0)
            .collect();
        assert_eq!(open, vec![usize::from(SYSCALL_PORT)]);
    }

    #[test]
    fn memory_sizes_and_user_ranges() {
        assert!(check_mem(64 << 20).is_ok());
        assert!(check_mem(2 << 20).is_err());
        assert!(check_mem(5 << 20).is_err());
        assert!(check_mem(4 << 30).is_ok(), "past 4 GiB");
        assert!(check_mem(MAX_MEM + (2 << 20)).is_err());
        assert_eq!(MAX_MEM, 254 << 30);
        assert!(page_tables(MAX_MEM).end() <= USER_BASE);
        assert!(is_user(USER_BASE, 16, 8 << 20));
        assert!(!is_user(SYSCALL_STUB, 1, 8 << 20));
        assert!(!is_user(PML4, 8, 8 << 20));
        assert!(!is_user((8 << 20) - 4, 8, 8 << 20));
        assert!(!is_user(u64::MAX - 2, 8, 8 << 20));
        assert_eq!(vector_at(STUBS + 15), Some(14));
        assert_eq!(vector_at(STUBS), None);
    }
}
