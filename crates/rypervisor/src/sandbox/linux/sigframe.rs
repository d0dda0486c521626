//! The signal frame, as the x86-64 kernel builds it (`struct rt_sigframe`): the return
//! address (`sa_restorer`, which calls `rt_sigreturn`), a `ucontext` holding the interrupted
//! registers and the blocked mask, then the `siginfo`, below the red zone of the stack (or on
//! the alternate stack) and aligned as after a `call`. Handlers and debuggers read it by the
//! kernel's layout, so the structures below are the kernel's (`asm/sigcontext.h`,
//! `asm-generic/ucontext.h`): libc's `ucontext_t` is glibc's larger user-space view.

use vm_memory::ByteValued;

use super::Errno;
use crate::sandbox::usermem::UserMemory;

/// The general registers a signal interrupts and `rt_sigreturn` restores (the program's view:
/// after its system call returned).
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rsp: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// The kernel's `struct sigcontext` (256 bytes).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct SigContext {
    /// r8 … rflags in the kernel's order (the same as `UserRegs`).
    regs: [u64; 18],
    /// cs, gs, fs, ss (16 bits each).
    segments: [u16; 4],
    err: u64,
    trapno: u64,
    oldmask: u64,
    cr2: u64,
    /// Address of the saved FPU state (`struct _fpstate`, the FXSAVE image).
    fpstate: u64,
    reserved: [u64; 8],
}

/// The kernel's `struct ucontext` (304 bytes), its mask the kernel's 64-bit one.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct UContext {
    flags: u64,
    link: u64,
    /// `stack_t`: sp, flags (+ 4 bytes of padding), size.
    stack_sp: u64,
    stack_flags: u64,
    stack_size: u64,
    mcontext: SigContext,
    sigmask: u64,
}

/// `siginfo_t` (128 bytes): number, errno, code, then (for `kill`) the sender's pid and uid,
/// (for SIGCHLD) the child's status next; also what `waitid` and `rt_sigtimedwait` fill.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct SigInfo {
    signo: i32,
    errno: i32,
    code: i32,
    pad: i32,
    pid: i32,
    uid: u32,
    rest: [u64; 13],
}

impl SigInfo {
    /// Signal `signo` with `code`, from `pid`/`uid`, and (SIGCHLD) `status` (`si_status`).
    pub fn new(signo: i32, code: i32, (pid, uid): (i32, u32), status: i32) -> Self {
        let mut rest = [0; 13];
        rest[0] = u64::from(status as u32);
        Self {
            signo,
            code,
            pid,
            uid,
            rest,
            ..Self::default()
        }
    }
}

/// `struct rt_sigframe` without its trailing FPU area.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct RtSigFrame {
    pretcode: u64,
    uc: UContext,
    info: SigInfo,
}

// SAFETY: `repr(C)` structs of integers whose fields leave no implicit padding (each is
// sized and ordered so that every field is naturally aligned and the totals are multiples of
// 8, checked in the tests): every byte pattern is a valid value.
unsafe impl ByteValued for SigContext {}
// SAFETY: as above.
unsafe impl ByteValued for UContext {}
// SAFETY: as above.
unsafe impl ByteValued for SigInfo {}
// SAFETY: as above.
unsafe impl ByteValued for RtSigFrame {}

/// The FXSAVE image's size (the legacy part of the XSAVE area, what `fpstate` points at).
pub const FPSTATE_SIZE: u64 = 512;

/// Flags a signal handler's RFLAGS start from: DF, TF and RF cleared, as the kernel does.
const HANDLER_CLEARS: u64 = (1 << 10) | (1 << 8) | (1 << 16);
/// RFLAGS bits `rt_sigreturn` takes from the frame (the kernel's FIX_EFLAGS: the arithmetic
/// flags, TF, DF, OF, AC, RF); the rest stay the CPU's.
const SIGRETURN_FLAGS: u64 = 0x40dd5 | (1 << 16);

/// An alternate signal stack: sp, flags, size (`stack_t`).
pub type AltStack = (u64, u64, u64);

/// Whether `addr` is canonical (bits 63:47 all equal).
fn canonical(addr: u64) -> bool {
    ((addr as i64) << 16 >> 16) as u64 == addr
}

/// What the signal is and who sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    /// The signal.
    pub signo: i32,
    /// `si_code` (`SI_USER`, `SI_TKILL`, `SI_KERNEL`...).
    pub code: i32,
    /// The sender (for `kill`).
    pub pid: i32,
    /// The sender's uid.
    pub uid: u32,
    /// For a CPU exception: `si_addr`, and the frame's `trapno`, `err` and `cr2`.
    pub fault: Option<FaultInfo>,
}

/// What a CPU exception tells its handler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultInfo {
    /// `si_addr`: the faulting address (CR2 for a page fault, else the instruction's).
    pub addr: u64,
    /// The vector (`sigcontext.trapno`).
    pub trapno: u64,
    /// The error code (`sigcontext.err`).
    pub err: u64,
    /// CR2 (`sigcontext.cr2`).
    pub cr2: u64,
}

/// Where a handler starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandlerEntry {
    /// The handler.
    pub rip: u64,
    /// The frame (RSP at entry, where the return address is).
    pub rsp: u64,
    /// First three arguments: the signal, &siginfo, &ucontext.
    pub args: [u64; 3],
    /// RFLAGS at entry.
    pub rflags: u64,
    /// Where the FXSAVE image goes (the run loop writes it).
    pub fpstate: u64,
}

/// Writes a frame for `info` below `stack_top` (the interrupted RSP less the red zone, or
/// the top of the alternate stack), saving `regs`, `mask` and the alternate stack
/// `(sp, flags, size)`; returns where the handler starts. `EFAULT` when the frame does not
/// fit in program memory (the kernel then kills with SIGSEGV).
pub fn push(
    mem: &mut UserMemory,
    stack_top: u64,
    regs: &UserRegs,
    mask: u64,
    altstack: AltStack,
    (handler, restorer): (u64, u64),
    info: Info,
) -> Result<HandlerEntry, Errno> {
    let fpstate = stack_top.checked_sub(FPSTATE_SIZE).ok_or(Errno::EFAULT)? & !63;
    let size = std::mem::size_of::<RtSigFrame>() as u64;
    // Aligned so that RSP + 8 is a multiple of 16 at entry, as after a `call`.
    let frame = (fpstate.checked_sub(size).ok_or(Errno::EFAULT)? & !15)
        .checked_sub(8)
        .ok_or(Errno::EFAULT)?;
    mem.check(frame, fpstate + FPSTATE_SIZE - frame)?;
    if !canonical(handler) {
        return Err(Errno::EFAULT);
    }
    let r = regs;
    let mut f = RtSigFrame {
        pretcode: restorer,
        ..RtSigFrame::default()
    };
    f.uc.mcontext.regs = [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.rflags,
    ];
    f.uc.mcontext.segments = [0x33, 0, 0, 0x2b]; // Linux's user CS and SS selectors
    f.uc.mcontext.oldmask = mask;
    f.uc.mcontext.fpstate = fpstate;
    (f.uc.stack_sp, f.uc.stack_flags, f.uc.stack_size) = altstack;
    f.uc.sigmask = mask;
    f.info = SigInfo {
        signo: info.signo,
        code: info.code,
        pid: info.pid,
        uid: info.uid,
        ..SigInfo::default()
    };
    if let Some(fault) = info.fault {
        // si_addr shares its place (offset 16) with si_pid and si_uid.
        (f.info.pid, f.info.uid) = (fault.addr as u32 as i32, (fault.addr >> 32) as u32);
        (f.uc.mcontext.trapno, f.uc.mcontext.err) = (fault.trapno, fault.err);
        f.uc.mcontext.cr2 = fault.cr2;
    }
    mem.write_obj(frame, &f)?;
    let uc = frame + std::mem::offset_of!(RtSigFrame, uc) as u64;
    let si = frame + std::mem::offset_of!(RtSigFrame, info) as u64;
    Ok(HandlerEntry {
        rip: handler,
        rsp: frame,
        args: [info.signo as u64, si, uc],
        rflags: regs.rflags & !HANDLER_CLEARS,
        fpstate,
    })
}

/// What `rt_sigreturn` restores, read from the frame whose `ucontext` is at `rsp` (the
/// restorer's `ret` popped the return address): the registers (RFLAGS only as far as a
/// program may set them), the blocked mask and the alternate stack `(sp, flags, size)`.
pub fn pop(
    mem: &UserMemory,
    rsp: u64,
    rflags_now: u64,
) -> Result<(UserRegs, u64, AltStack), Errno> {
    let uc: UContext = mem.read_obj(rsp)?;
    let g = uc.mcontext.regs;
    // A return address the CPU cannot enter (VMX refuses a non-canonical RIP): SIGSEGV, as
    // Linux gives.
    if !canonical(g[16]) {
        return Err(Errno::EFAULT);
    }
    let regs = UserRegs {
        r8: g[0],
        r9: g[1],
        r10: g[2],
        r11: g[3],
        r12: g[4],
        r13: g[5],
        r14: g[6],
        r15: g[7],
        rdi: g[8],
        rsi: g[9],
        rbp: g[10],
        rbx: g[11],
        rdx: g[12],
        rax: g[13],
        rcx: g[14],
        rsp: g[15],
        rip: g[16],
        rflags: (rflags_now & !SIGRETURN_FLAGS) | (g[17] & SIGRETURN_FLAGS),
    };
    Ok((
        regs,
        uc.sigmask,
        (uc.stack_sp, uc.stack_flags, uc.stack_size),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::layout::USER_BASE;

    #[test]
    fn the_layout_is_the_kernel_s() {
        assert_eq!(std::mem::size_of::<SigContext>(), 256);
        assert_eq!(std::mem::size_of::<UContext>(), 304);
        assert_eq!(std::mem::size_of::<SigInfo>(), 128);
        assert_eq!(std::mem::size_of::<RtSigFrame>(), 440);
        // glibc's view of the registers: REG_RIP is gregs[16] right after uc_stack.
        assert_eq!(std::mem::offset_of!(UContext, mcontext), 40);
        assert_eq!(
            std::mem::offset_of!(libc::ucontext_t, uc_mcontext),
            std::mem::offset_of!(UContext, mcontext)
        );
        assert_eq!(libc::REG_RIP, 16);
        assert_eq!(std::mem::offset_of!(UContext, sigmask), 296);
    }

    #[test]
    fn a_frame_round_trips_and_is_aligned_as_after_a_call() {
        let mut mem = UserMemory::new(8 << 20).unwrap();
        let regs = UserRegs {
            rax: 7,
            rcx: 0x40_1234,
            rip: 0x40_1234,
            rsp: USER_BASE + 0x10_0000,
            rflags: 0x246 | (1 << 10),
            r15: 15,
            ..UserRegs::default()
        };
        let info = Info {
            signo: libc::SIGUSR1,
            code: 0,
            pid: 1,
            uid: 1000,
            fault: None,
        };
        let e = push(
            &mut mem,
            regs.rsp - 128,
            &regs,
            0b100,
            (0, 2, 0),
            (0x40_2000, 0x40_3000),
            info,
        )
        .unwrap();
        assert_eq!((e.rsp + 8) % 16, 0);
        assert!(e.rsp + 440 <= e.fpstate && e.fpstate + 512 <= regs.rsp - 128);
        assert_eq!(
            mem.read_u64(e.rsp).unwrap(),
            0x40_3000,
            "returns into the restorer"
        );
        assert_eq!(e.args[0], libc::SIGUSR1 as u64);
        assert_eq!(e.rflags & (1 << 10), 0, "DF cleared for the handler");
        let signo: i32 = mem.read_obj(e.args[1]).unwrap();
        assert_eq!(signo, libc::SIGUSR1);
        // The restorer's `ret` popped the return address: rt_sigreturn sees RSP = &uc.
        let (back, mask, alt) = pop(&mem, e.rsp + 8, 0x202).unwrap();
        assert_eq!(back, regs);
        assert_eq!((mask, alt), (0b100, (0, 2, 0)));
        // A handler or return address the CPU cannot enter is refused.
        let bad = (0x8000_0000_0000, 0x40_3000);
        assert_eq!(
            push(&mut mem, regs.rsp - 128, &regs, 0, (0, 2, 0), bad, info),
            Err(Errno::EFAULT)
        );
        // A frame that would leave program memory is refused (also near address 0).
        assert_eq!(
            push(&mut mem, 1100, &regs, 0, (0, 2, 0), (1, 2), info),
            Err(Errno::EFAULT)
        );
        assert_eq!(
            push(&mut mem, USER_BASE + 100, &regs, 0, (0, 2, 0), (1, 2), info),
            Err(Errno::EFAULT)
        );
    }
}
