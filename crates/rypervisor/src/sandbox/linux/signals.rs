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
const FUTEX_WAIT_BITSET: u64 = 9;
const FUTEX_WAKE_BITSET: u64 = 10;
/// The operation without FUTEX_PRIVATE_FLAG / FUTEX_CLOCK_REALTIME.
const FUTEX_CMD_MASK: u64 = 0x7f;
const FUTEX_CLOCK_REALTIME: u64 = 256;

/// `futex(addr, op, val, timeout)`. The program is the only thread: a wake finds nobody, and
/// a wait whose value matches can only end by its timeout (ETIMEDOUT after sleeping it: a
/// relative one for WAIT, an absolute one for WAIT_BITSET) — without one it would wait
/// forever, which is answered EDEADLK instead of hanging until the time limit.
pub(super) fn futex(addr: u64, op: u64, val: u64, timeout: u64, cx: &mut Context<'_>) -> SysResult {
    let cmd = op & FUTEX_CMD_MASK;
    match cmd {
        FUTEX_WAKE | FUTEX_WAKE_BITSET => Ok(0),
        FUTEX_WAIT | FUTEX_WAIT_BITSET => {
            let v: u32 = cx.mem.read_obj(addr)?;
            if u64::from(v) != val & 0xffff_ffff {
                return Err(Errno::EAGAIN.into());
            }
            if timeout == 0 {
                return Err(Errno::EDEADLK.into());
            }
            let t = super::time::read_timespec(cx, timeout)?;
            let wait = match cmd {
                FUTEX_WAIT => t,
                _ => {
                    let clock = match op & FUTEX_CLOCK_REALTIME {
                        0 => libc::CLOCK_MONOTONIC,
                        _ => libc::CLOCK_REALTIME,
                    };
                    let (s, n) = cx.host.clock(clock).ok_or(Errno::EINVAL)?;
                    t.saturating_sub(std::time::Duration::new(s.max(0) as u64, n as u32))
                }
            };
            super::time::sleep(wait, cx)?;
            Err(Errno::ETIMEDOUT.into())
        }
        _ => Err(Errno::ENOSYS.into()),
    }
}
