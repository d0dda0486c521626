//! Signals, recorded but never delivered (a single-process sandbox has nobody to send one):
//! `rt_sigaction`, `rt_sigprocmask`, `sigaltstack`; and `futex`, where the only thread can
//! never be woken by another.

use std::collections::BTreeMap;

use super::abi::{KernelSigaction, SignalStack};
use super::{Context, Errno, SysResult};

/// Dispositions and the blocked mask.
#[derive(Clone, Debug, Default)]
pub struct SignalState {
    actions: BTreeMap<u64, KernelSigaction>,
    mask: u64,
}

impl SignalState {
    pub(super) fn sigaction(
        &mut self,
        sig: u64,
        act: u64,
        old: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        if !(1..=64).contains(&sig) || sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            return Err(Errno::EINVAL.into());
        }
        let previous = self.actions.get(&sig).copied().unwrap_or_default();
        if act != 0 {
            let new: KernelSigaction = cx.mem.read_obj(act)?;
            self.actions.insert(sig, new);
        }
        if old != 0 {
            cx.mem.write_obj(old, &previous)?;
        }
        Ok(0)
    }

    pub(super) fn sigprocmask(
        &mut self,
        how: i32,
        set: u64,
        old: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let previous = self.mask;
        if set != 0 {
            let s: u64 = cx.mem.read_obj(set)?;
            self.mask = match how {
                libc::SIG_BLOCK => self.mask | s,
                libc::SIG_UNBLOCK => self.mask & !s,
                libc::SIG_SETMASK => s,
                _ => return Err(Errno::EINVAL.into()),
            };
        }
        if old != 0 {
            cx.mem.write_obj(old, &previous)?;
        }
        Ok(0)
    }
}

/// No alternate stack is ever in use.
pub(super) fn sigaltstack(old: u64, cx: &mut Context<'_>) -> SysResult {
    if old != 0 {
        let mut ss = SignalStack::default();
        ss.0.ss_flags = libc::SS_DISABLE;
        cx.mem.write_obj(old, &ss)?;
    }
    Ok(0)
}

/// `futex` operations (`linux/futex.h`; libc exports them only for some targets).
const FUTEX_WAIT: u64 = 0;
const FUTEX_WAKE: u64 = 1;
/// The operation without FUTEX_PRIVATE_FLAG / FUTEX_CLOCK_REALTIME.
const FUTEX_CMD_MASK: u64 = 0x7f;

pub(super) fn futex(addr: u64, op: u64, val: u64, cx: &mut Context<'_>) -> SysResult {
    match op & FUTEX_CMD_MASK {
        FUTEX_WAKE => Ok(0), // nobody else to wake
        FUTEX_WAIT => {
            let v: u32 = cx.mem.read_obj(addr)?;
            if u64::from(v) != val & 0xffff_ffff {
                Err(Errno::EAGAIN.into())
            } else {
                // The only thread would wait forever.
                Err(Errno::EDEADLK.into())
            }
        }
        _ => Err(Errno::ENOSYS.into()),
    }
}
