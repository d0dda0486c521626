//! Delivering signals, at the point Linux delivers them to a process that is in the
//! kernel: on the way back from a system call. A pending, unblocked signal is ignored, ends
//! the process (its default action: status 128 + signal), or runs its handler on a
//! [signal frame](super::sigframe) on the stack or the alternate stack; `rt_sigreturn` puts
//! the interrupted state back. The run loop saves and restores the FPU state around the
//! handler. A program that computes without system calls gets its SIGALRM at its next call;
//! a CPU exception it causes goes to its handler through [`Process::deliver_fault`].

use super::sigframe::{self, FaultInfo, HandlerEntry, Info, UserRegs};
use super::signals::{bit, now_ns, SI_KERNEL};
use super::{Context, Process, UID};
use crate::sandbox::exit::Exit;

/// `SA_RESTORER` (`asm/signal.h`; libc does not export it for x86-64).
const SA_RESTORER: u64 = 0x0400_0000;

/// What a signal does by default when it is not caught.
pub(super) fn default_ignores(sig: i32) -> bool {
    // Ignored by default; the stop signals too, as there is no job control to stop for.
    matches!(
        sig,
        libc::SIGCHLD
            | libc::SIGURG
            | libc::SIGWINCH
            | libc::SIGCONT
            | libc::SIGSTOP
            | libc::SIGTSTP
            | libc::SIGTTIN
            | libc::SIGTTOU
    )
}

impl Process {
    /// Whether a signal waits to be delivered now (the alarm's deadline checked too).
    pub fn signal_pending(&mut self, cx: &mut Context<'_>) -> bool {
        self.take_incoming();
        if self.signals.alarm.is_some() {
            let now = now_ns(cx);
            self.signals.check_alarm(now);
        }
        self.signals.pending & !self.signals.mask != 0
    }

    /// Delivers what is pending and unblocked to a program whose registers (after its
    /// system call returned) are `regs`: `Ok(Some(entry))` to run a handler there, `Ok(None)`
    /// to carry on, or the process's end by a signal's default action.
    pub fn deliver(
        &mut self,
        regs: &UserRegs,
        cx: &mut Context<'_>,
    ) -> Result<Option<HandlerEntry>, Exit> {
        self.take_incoming();
        loop {
            if self.signals.alarm.is_some() {
                let now = now_ns(cx);
                self.signals.check_alarm(now);
            }
            let ready = self.signals.pending & !self.signals.mask;
            if ready == 0 {
                // No handler ran: `rt_sigsuspend`'s mask gives way to the one it replaced.
                if let Some(mask) = self.signals.saved_mask.take() {
                    self.signals.mask = mask;
                }
                return Ok(None);
            }
            let sig = ready.trailing_zeros() as i32 + 1;
            self.signals.pending &= !bit(sig);
            let action = self.signals.action(sig);
            match action.handler {
                0 if default_ignores(sig) => continue,
                0 => return Err(Exit::Signaled(sig)),
                1 => continue, // SIG_IGN
                handler => return self.run_handler(sig, handler, regs, cx).map(Some),
            }
        }
    }

    /// A CPU exception the program caused (`sig`, `code`: SIGSEGV with SEGV_MAPERR...): its
    /// handler runs on a frame (as Linux forces it, whatever the mask), or, with none, the
    /// caller's `Err` ends the program as before. A blocked or ignored fault signal cannot be
    /// put off: the default action, as on Linux.
    pub fn deliver_fault(
        &mut self,
        sig: i32,
        code: i32,
        fault: FaultInfo,
        regs: &UserRegs,
        cx: &mut Context<'_>,
    ) -> Option<Result<HandlerEntry, Exit>> {
        let action = self.signals.action(sig);
        if action.handler <= 1 || self.signals.mask & bit(sig) != 0 {
            return None;
        }
        self.signals.codes[sig as usize - 1] = code;
        Some(self.run_handler_with(sig, action.handler, regs, Some(fault), cx))
    }

    fn run_handler(
        &mut self,
        sig: i32,
        handler: u64,
        regs: &UserRegs,
        cx: &mut Context<'_>,
    ) -> Result<HandlerEntry, Exit> {
        self.run_handler_with(sig, handler, regs, None, cx)
    }

    fn run_handler_with(
        &mut self,
        sig: i32,
        handler: u64,
        regs: &UserRegs,
        fault: Option<FaultInfo>,
        cx: &mut Context<'_>,
    ) -> Result<HandlerEntry, Exit> {
        let action = self.signals.action(sig);
        let (alt_sp, alt_flags, alt_size) = self.signals.altstack;
        let on_alt = alt_flags == 0 && regs.rsp.wrapping_sub(alt_sp) < alt_size;
        let use_alt = action.flags & libc::SA_ONSTACK as u64 != 0 && alt_flags == 0 && !on_alt;
        let top = if use_alt {
            alt_sp.wrapping_add(alt_size)
        } else {
            regs.rsp.wrapping_sub(128) // the red zone
        };
        let saved_alt = (
            alt_sp,
            if on_alt {
                libc::SS_ONSTACK as u64
            } else {
                alt_flags
            },
            alt_size,
        );
        let code = self.signals.codes[sig as usize - 1];
        let info = Info {
            signo: sig,
            code,
            pid: if code == SI_KERNEL { 0 } else { 1 },
            uid: if code == SI_KERNEL { 0 } else { UID as u32 },
            fault,
        };
        let restorer = action.restorer;
        let entry = sigframe::push(
            cx.mem,
            top,
            regs,
            self.signals.saved_mask.unwrap_or(self.signals.mask),
            saved_alt,
            (handler, restorer),
            info,
        );
        let Ok(entry) = entry else {
            // No room for the frame: the kernel's answer is SIGSEGV, uncatchable here.
            return Err(Exit::Signaled(libc::SIGSEGV));
        };
        if action.flags & SA_RESTORER == 0 || restorer == 0 {
            // Without a restorer the handler's return has nowhere to go (every C library
            // sets one); Linux x86-64 would fault there.
            return Err(Exit::Signaled(libc::SIGSEGV));
        }
        // The frame keeps the mask to return to (`rt_sigsuspend`'s caller's, if it waited).
        self.signals.saved_mask = None;
        let mut blocked = self.signals.mask | action.mask;
        if action.flags & libc::SA_NODEFER as u64 == 0 {
            blocked |= bit(sig);
        }
        self.signals.mask = blocked & !((1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1)));
        if action.flags & libc::SA_RESETHAND as u64 != 0 {
            self.signals.reset(sig);
        }
        Ok(entry)
    }

    /// `rt_sigreturn`, RSP at the frame's `ucontext`: the registers to resume with; the
    /// blocked mask and the alternate stack come back from the frame.
    pub fn sigreturn(
        &mut self,
        rsp: u64,
        rflags: u64,
        cx: &mut Context<'_>,
    ) -> Result<UserRegs, Exit> {
        let Ok((regs, mask, (sp, flags, size))) = sigframe::pop(cx.mem, rsp, rflags) else {
            return Err(Exit::Signaled(libc::SIGSEGV));
        };
        self.signals.mask = mask & !((1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1)));
        // The alternate stack as it was, unless the frame's copy is not one (EINVAL-worthy:
        // the kernel ignores it then too).
        if flags & !(libc::SS_ONSTACK as u64) == 0 {
            self.signals.altstack = (sp, 0, size);
        } else if flags & libc::SS_DISABLE as u64 != 0 {
            self.signals.altstack = (0, libc::SS_DISABLE as u64, 0);
        }
        Ok(regs)
    }
}
