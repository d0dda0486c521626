//! The sandbox's address space and CPU tables: one guest process at CPL3, no guest kernel.
//!
//! Guest-virtual addresses equal guest-physical ones. The first 2 MiB belong to the VMM and
//! are mapped with 4 KiB pages, almost all of them *supervisor only*, so the program can
//! neither read nor write its own page tables, GDT, IDT or TSS:
//!
//! | guest address       | what                                   | program's access |
//! |---------------------|----------------------------------------|------------------|
//! | `0x0000`            | null page                              | none (faults)    |
//! | `0x1000`–`0x6fff`   | PML4, PDPT, 3 page directories, 1 PT   | none (not mapped)|
//! | `0x7000`            | GDT, then 256 one-byte `hlt` stubs     | none             |
//! | `0x8000`            | IDT (every vector → its stub)          | none             |
//! | `0x9000`–`0xb068`   | TSS + I/O permission bitmap            | none             |
//! | `0xc000`–`0xffff`   | exception stack (TSS.RSP0)             | none             |
//! | `0x10000`           | syscall stub (`LSTAR`)                 | read + execute   |
//! | `0x11000`–`2 MiB`   | unused                                 | none             |
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

use crate::arch::{self, cr0, cr4, efer, pte, segment, selector};
use crate::memory::{GuestRam, MemoryError};

/// Guest address of the PML4.
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
/// Three page directories: guest memory up to 3 GiB.
const PD: u64 = 0x3000;
const PD_COUNT: u64 = 3;
/// The page table for the first 2 MiB.
const PT_LOW: u64 = 0x6000;
const GDT: u64 = 0x7000;
/// Guest address of the exception stubs (one `hlt` per vector).
pub const STUBS: u64 = 0x7100;
const IDT: u64 = 0x8000;
const TSS: u64 = 0x9000;
const TSS_LIMIT: u64 = 104 + 8192;
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
pub const MEM_ALIGN: u64 = 2 << 20;
/// Smallest guest: the VMM's 2 MiB and 2 MiB for the program.
pub const MIN_MEM: u64 = 4 << 20;
/// Largest guest the page tables map.
pub const MAX_MEM: u64 = PD_COUNT << 30;

/// `out 0xf5, al; sysretq` (REX.W 0F 07).
const STUB_CODE: [u8; 5] = [0xe6, SYSCALL_PORT as u8, 0x48, 0x0f, 0x07];

/// Model-specific registers.
pub mod msr {
    /// Extended feature enables.
    pub const EFER: u32 = 0xc000_0080;
    /// Segment selectors for syscall/sysret.
    pub const STAR: u32 = 0xc000_0081;
    /// 64-bit syscall entry point.
    pub const LSTAR: u32 = 0xc000_0082;
    /// RFLAGS bits cleared on syscall.
    pub const SFMASK: u32 = 0xc000_0084;
    /// FS base (TLS).
    pub const FS_BASE: u32 = 0xc000_0100;
    /// GS base.
    pub const GS_BASE: u32 = 0xc000_0101;
    /// Kernel GS base (swapgs).
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// EFER.SCE: syscall/sysret enabled.
const EFER_SCE: u64 = 1;
/// CR4.OSXSAVE: XSAVE and XGETBV enabled (AVX needs it).
pub const CR4_OSXSAVE: u64 = 1 << 18;

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
    if size % MEM_ALIGN != 0 {
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
    (rip > STUBS && rip <= STUBS + 256).then(|| (rip - STUBS - 1) as u8)
}

/// Writes the page tables, GDT, IDT, TSS and stubs for a guest of `mem_size` bytes.
pub fn write_tables(ram: &GuestRam, mem_size: u64) -> Result<(), MemoryError> {
    let table = pte::PRESENT | pte::WRITABLE | pte::USER; // leaves decide the access
    ram.write(PML4, &(PDPT | table).to_le_bytes())?;
    let pdpt: Vec<u8> = (0..PD_COUNT)
        .flat_map(|i| ((PD + i * 0x1000) | table).to_le_bytes())
        .collect();
    ram.write(PDPT, &pdpt)?;

    // 2 MiB pages for the program; the first entry points at the 4 KiB table of the VMM's 2 MiB.
    let mut pds = vec![0u8; (PD_COUNT * 0x1000) as usize];
    pds[..8].copy_from_slice(&(PT_LOW | table).to_le_bytes());
    let user_leaf = pte::PRESENT | pte::WRITABLE | pte::USER | pte::HUGE;
    for page in (USER_BASE..mem_size).step_by(MEM_ALIGN as usize) {
        let i = (page / MEM_ALIGN) as usize * 8;
        pds[i..i + 8].copy_from_slice(&(page | user_leaf).to_le_bytes());
    }
    ram.write(PD, &pds)?;

    // The VMM's 2 MiB: supervisor pages for the CPU tables and exception stack, one user
    // read-only page for the syscall stub, nothing else.
    let mut pt = vec![0u8; 4096];
    for page in (GDT..EXCEPTION_STACK_TOP).step_by(4096) {
        let i = (page / 4096) as usize * 8;
        pt[i..i + 8].copy_from_slice(&(page | pte::PRESENT | pte::WRITABLE).to_le_bytes());
    }
    let i = (SYSCALL_STUB / 4096) as usize * 8;
    pt[i..i + 8].copy_from_slice(&(SYSCALL_STUB | pte::PRESENT | pte::USER).to_le_bytes());
    ram.write(PT_LOW, &pt)?;

    ram.write(GDT, &arch::gdt_bytes(&tss_segment()))?;
    ram.write(STUBS, &[0xf4; 256])?;
    ram.write(IDT, &arch::idt_to_stubs(STUBS, true))?;

    // TSS: RSP0, the I/O map base, and a bitmap that denies every port but SYSCALL_PORT.
    let mut tss_bytes = vec![0u8; TSS_LIMIT as usize + 1];
    tss_bytes[4..12].copy_from_slice(&EXCEPTION_STACK_TOP.to_le_bytes());
    tss_bytes[102..104].copy_from_slice(&104u16.to_le_bytes());
    tss_bytes[104..].fill(0xff);
    let port = usize::from(SYSCALL_PORT);
    tss_bytes[104 + port / 8] &= !(1 << (port % 8));
    ram.write(TSS, &tss_bytes)?;

    ram.zero(EXCEPTION_STACK, EXCEPTION_STACK_TOP - EXCEPTION_STACK)?;
    ram.write(SYSCALL_STUB, &STUB_CODE)
}

fn tss_segment() -> kvm_bindings::kvm_segment {
    kvm_bindings::kvm_segment {
        base: TSS,
        limit: TSS_LIMIT as u32,
        selector: selector::TSS,
        type_: 0xb, // busy 64-bit TSS
        present: 1,
        ..Default::default()
    }
}

/// Sets `sregs` for a 64-bit CPL3 process: user segments, paging, syscall enabled.
pub fn setup_sregs(sregs: &mut kvm_sregs, xsave: bool) {
    arch::load_segments(
        sregs,
        segment(selector::USER_CODE64, true, true),
        segment(selector::USER_DATA, false, true),
    );
    sregs.gdt.base = GDT;
    sregs.gdt.limit = selector::GDT_BYTES - 1;
    sregs.idt.base = IDT;
    sregs.idt.limit = 256 * 16 - 1;
    sregs.tr = tss_segment();
    sregs.cr0 = cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::PG;
    sregs.cr3 = PML4;
    sregs.cr4 = cr4::PAE | cr4::OSFXSR | cr4::OSXMMEXCPT | if xsave { CR4_OSXSAVE } else { 0 };
    sregs.efer = efer::LME | efer::LMA | EFER_SCE;
}

/// The MSRs of the system-call path, with FS/GS bases cleared.
pub fn msrs() -> [(u32, u64); 6] {
    // sysret: CS = STAR[63:48]+16 (USER_CODE64), SS = STAR[63:48]+8 (USER_DATA), RPL 3.
    // syscall: CS = STAR[47:32] (CODE64), SS = +8.
    let base = u64::from(selector::CODE64);
    let star = (base << 48) | (base << 32);
    // Cleared on entry: TF, DF, NT, AC (the stub needs none of them; R11 keeps the originals).
    let sfmask = (1 << 8) | (1 << 10) | (1 << 14) | (1 << 18);
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

/// The name of the exception with `vector`.
pub fn exception_name(vector: u8) -> &'static str {
    arch::exception_name(vector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(ram: &GuestRam, va: u64) -> Option<(u64, bool, bool)> {
        // A minimal 4-level walk: (physical, user, writable) or None when not present.
        let mut table = PML4;
        let mut user = true;
        let mut writable = true;
        for level in (0..4).rev() {
            let index = (va >> (12 + 9 * level)) & 0x1ff;
            let entry = ram.read_u64(table + index * 8).unwrap();
            if entry & pte::PRESENT == 0 {
                return None;
            }
            user &= entry & pte::USER != 0;
            writable &= entry & pte::WRITABLE != 0;
            let frame = entry & 0x000f_ffff_ffff_f000;
            if level == 1 && entry & pte::HUGE != 0 {
                return Some((frame + (va & 0x1f_ffff), user, writable));
            }
            if level == 0 {
                return Some((frame + (va & 0xfff), user, writable));
            }
            table = frame;
        }
        None
    }

    #[test]
    fn the_program_cannot_reach_the_vmm_tables() {
        let ram = GuestRam::new(0, 8 << 20).unwrap();
        write_tables(&ram, 8 << 20).unwrap();
        assert_eq!(walk(&ram, 0), None, "null page");
        for table in [PML4, PDPT, PD, PT_LOW] {
            assert_eq!(walk(&ram, table), None, "page tables are not mapped");
        }
        for sys in [GDT, IDT, TSS, EXCEPTION_STACK] {
            let (pa, user, _) = walk(&ram, sys).unwrap();
            assert_eq!(pa, sys);
            assert!(!user, "{sys:#x} must be supervisor only");
        }
        assert_eq!(walk(&ram, SYSCALL_STUB), Some((SYSCALL_STUB, true, false)));
        assert_eq!(walk(&ram, SYSCALL_STUB + 0x1000), None);
        assert_eq!(walk(&ram, USER_BASE), Some((USER_BASE, true, true)));
        assert_eq!(walk(&ram, (8 << 20) - 1), Some(((8 << 20) - 1, true, true)));
        assert_eq!(walk(&ram, 8 << 20), None, "nothing past the end of memory");
    }

    #[test]
    fn only_the_syscall_port_is_open() {
        let ram = GuestRam::new(0, 4 << 20).unwrap();
        write_tables(&ram, 4 << 20).unwrap();
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
        assert!(check_mem(4 << 30).is_err());
        assert!(is_user(USER_BASE, 16, 8 << 20));
        assert!(!is_user(SYSCALL_STUB, 1, 8 << 20));
        assert!(!is_user(PML4, 8, 8 << 20));
        assert!(!is_user((8 << 20) - 4, 8, 8 << 20));
        assert!(!is_user(u64::MAX - 2, 8, 8 << 20));
        assert_eq!(vector_at(STUBS + 15), Some(14));
        assert_eq!(vector_at(STUBS), None);
    }
}
