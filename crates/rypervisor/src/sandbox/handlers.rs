//! Signal handlers at the VM level: entering one (the FPU state kept, the handler's
//! registers, back to CPL3 by hand where the system call entered CPL0), a signal from another
//! process delivered where a kicked vCPU stopped, a CPU exception delivered to the program's
//! handler, and the registers `rt_sigreturn` or a restarted call resume with. What the frame
//! holds and which signal goes is the [`linux`](super::linux) layer's.

use kvm_bindings::{kvm_regs, kvm_sregs};

use super::exit::Exit;
use super::host::Host;
use super::layout;
use super::linux::sigframe::{self, FaultInfo, HandlerEntry, UserRegs};
use super::run::Sandbox;
use super::SandboxError;
use crate::arch::ExceptionFrame;
use crate::kvm::ioctl;

/// Signal handlers running at once whose FPU state is kept (deeper: the oldest is dropped).
const MAX_NESTED_HANDLERS: usize = 64;

/// The program's registers as the vCPU has them.
fn regs_now(r: &kvm_regs) -> UserRegs {
    UserRegs {
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rdi: r.rdi,
        rsi: r.rsi,
        rbp: r.rbp,
        rbx: r.rbx,
        rdx: r.rdx,
        rax: r.rax,
        rcx: r.rcx,
        rsp: r.rsp,
        rip: r.rip,
        rflags: r.rflags,
    }
}

/// The program's registers after its system call returned `value` (what `sysret` gives it).
pub(super) fn user_regs(r: &kvm_regs, value: i64) -> UserRegs {
    UserRegs {
        rax: value as u64,
        rip: r.rcx,
        rflags: (r.r11 & SYSRET_RFLAGS) | crate::arch::rflags::FIXED,
        ..regs_now(r)
    }
}

/// RFLAGS bits `sysret` restores from R11 (it clears RF and VM, and bit 1 is always set).
pub(super) const SYSRET_RFLAGS: u64 = 0x3c_7fd7;

impl Sandbox {
    /// A signal another process sent arrived while the program ran (its vCPU was kicked):
    /// delivered at the instruction it stopped at, as Linux delivers on an interrupt. In the
    /// CPL0 system-call stub (hardware) it waits for the call's return instead.
    pub(super) fn deliver_async(
        &mut self,
        host: &mut dyn Host,
    ) -> Result<Option<Exit>, SandboxError> {
        let (regs, sregs) = self.vcpu.state()?;
        let kernel = layout::is_kernel_cs(&sregs);
        // In the CPL0 stub before its `out`: the call's exit comes next and delivers.
        if kernel && regs.rip != layout::STUB_SYSRET {
            return Ok(None);
        }
        let r = &regs;
        let mut now = regs_now(r);
        if kernel {
            // At the stub's `sysretq`: where it would return to, then deliver there.
            now.rip = r.rcx;
            now.rflags = (r.r11 & SYSRET_RFLAGS) | crate::arch::rflags::FIXED;
        }
        match self.with_context(host, |p, cx| p.deliver(&now, cx)) {
            Ok(None) if kernel => {
                self.resume(&now, regs, &sregs)?;
                Ok(None)
            }
            Ok(None) => Ok(None),
            Ok(Some(e)) => self.enter_handler(&e, &now, regs, &sregs),
            Err(exit) => Ok(Some(exit)),
        }
    }

    /// A CPU exception the program caused (a `hlt` at an IDT stub): delivered to its handler
    /// for the signal Linux sends (SIGSEGV with `si_addr` and SEGV_MAPERR/ACCERR for a page
    /// fault, SIGFPE, SIGILL, SIGTRAP, SIGBUS) on a frame with `trapno`, `err` and `cr2`;
    /// `Some(exit)` when it has none (the report of today).
    pub(super) fn fault_to_handler(
        &mut self,
        host: &mut dyn Host,
    ) -> Result<Option<Exit>, SandboxError> {
        self.sregs_touched = true;
        let (regs, sregs) = self.vcpu.state()?;
        let Some(vector) = layout::vector_at(regs.rip) else {
            return Ok(Some(self.exception()?));
        };
        let ram = self.mem.ram();
        let frame = ExceptionFrame::decode(vector, true, regs.rsp, &sregs, |addr| {
            ram.read_u64(addr).unwrap_or(u64::MAX)
        });
        if frame.cs & 3 != 3 {
            return Ok(Some(self.exception()?)); // not the program's own instruction
        }
        let sig = super::exit::fault_status(vector) - 128;
        let (err, cr2) = (frame.error_code.unwrap_or(0), frame.cr2.unwrap_or(0));
        const SI_KERNEL: i32 = 0x80;
        let (code, addr) = match vector {
            14 if err & 1 != 0 => (2, cr2), // SEGV_ACCERR
            14 => (1, cr2),                 // SEGV_MAPERR
            0 => (1, frame.rip),            // FPE_INTDIV
            6 => (2, frame.rip),            // ILL_ILLOPN
            17 => (1, cr2),                 // BUS_ADRALN
            _ => (SI_KERNEL, 0),            // #GP and the rest
        };
        let fault = FaultInfo {
            addr,
            trapno: u64::from(vector),
            err,
            cr2,
        };
        let user = UserRegs {
            rsp: frame.rsp,
            rip: frame.rip,
            rflags: frame.rflags,
            ..regs_now(&regs)
        };
        match self.with_context(host, |p, cx| p.deliver_fault(sig, code, fault, &user, cx)) {
            None => Ok(Some(self.exception()?)),
            Some(Err(exit)) => Ok(Some(exit)),
            Some(Ok(e)) => self.enter_handler(&e, &user, regs, &sregs),
        }
    }

    /// Runs a handler: the FPU state kept (and its FXSAVE image where the frame's `fpstate`
    /// points, for handlers that look), then the handler's registers.
    pub(super) fn enter_handler(
        &mut self,
        e: &HandlerEntry,
        interrupted: &UserRegs,
        regs: kvm_regs,
        sregs: &kvm_sregs,
    ) -> Result<Option<Exit>, SandboxError> {
        let fpu = Box::new(self.vcpu.fd().get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?);
        let image: Vec<u8> = (fpu.region.iter())
            .take(sigframe::FPSTATE_SIZE as usize / 4)
            .flat_map(|w| w.to_le_bytes())
            .collect();
        if self.mem.write(e.fpstate, &image).is_err() {
            // Checked with the frame; a frame the program cannot have is SIGSEGV.
            return Ok(Some(Exit::Signaled(libc::SIGSEGV)));
        }
        if self.fpu_saved.len() >= MAX_NESTED_HANDLERS {
            self.fpu_saved.remove(0);
        }
        self.fpu_saved.push(fpu);
        let handler = UserRegs {
            rip: e.rip,
            rsp: e.rsp,
            rdi: e.args[0],
            rsi: e.args[1],
            rdx: e.args[2],
            rax: 0,
            rflags: e.rflags,
            ..*interrupted
        };
        self.resume(&handler, regs, sregs)?;
        Ok(None)
    }

    /// Resumes the program with the whole register state `user` (a handler's entry, or what
    /// `rt_sigreturn` restores, RCX and R11 included). Where the system call entered CPL0
    /// (hardware), the VMM returns to CPL3 itself instead of through the stub's `sysretq`:
    /// the user CS and SS as `sysret` loads them (FS and GS, the TLS, untouched), then the
    /// registers.
    pub(super) fn resume(
        &mut self,
        user: &UserRegs,
        mut regs: kvm_regs,
        sregs: &kvm_sregs,
    ) -> Result<(), SandboxError> {
        let u = user;
        (
            regs.r8, regs.r9, regs.r10, regs.r12, regs.r13, regs.r14, regs.r15,
        ) = (u.r8, u.r9, u.r10, u.r12, u.r13, u.r14, u.r15);
        (
            regs.rdi, regs.rsi, regs.rbp, regs.rbx, regs.rdx, regs.rax, regs.rsp,
        ) = (u.rdi, u.rsi, u.rbp, u.rbx, u.rdx, u.rax, u.rsp);
        let flags = (u.rflags & SYSRET_RFLAGS) | crate::arch::rflags::FIXED;
        if layout::is_kernel_cs(sregs) {
            let mut user_sregs = *sregs;
            layout::user_segments(&mut user_sregs);
            self.vcpu.set_sregs(&user_sregs)?;
            self.sregs_touched = true;
        }
        (regs.rip, regs.rflags, regs.rcx, regs.r11) = (u.rip, flags, u.rcx, u.r11);
        Ok(self.vcpu.set_regs(&regs)?)
    }
}
