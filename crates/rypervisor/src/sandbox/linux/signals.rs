//! Signals inside the process: dispositions (`rt_sigaction`), the blocked mask
//! (`rt_sigprocmask`), the alternate stack (`sigaltstack`), what is pending
//! (`rt_sigpending`), the signals the program sends itself (`kill`, `tkill`, `tgkill`, so
//! `raise` and `abort`), and SIGALRM from `alarm`/`setitimer(ITIMER_REAL)`; their delivery is
//! [`super::deliver`].

use std::collections::BTreeMap;

use super::abi::{KernelSigaction, SignalStack};
use super::{Context, Errno, Process, SysResult};

/// Dispositions, the blocked mask, what is pending, the alternate stack and the alarm.
#[derive(Clone, Debug)]
pub struct SignalState {
    actions: super::shared::Shared<BTreeMap<u64, KernelSigaction>>,
    pub(super) mask: u64,
    /// Bit `n - 1`: signal `n` is pending.
    pub(super) pending: u64,
    /// `sigaltstack`: sp, flags, size.
    pub(super) altstack: (u64, u64, u64),
    /// SIGALRM's deadline and period (`setitimer`'s interval), in host monotonic ns.
    pub(super) alarm: Option<(u64, u64)>,
    /// Per signal, the `si_code` it was sent with (`SI_USER` for `kill`, `SI_TKILL`...).
    pub(super) codes: [i32; 64],
    /// The mask `rt_sigsuspend` replaced, to put back once a handler returns (Linux's
    /// `saved_sigmask`).
    pub(super) saved_mask: Option<u64>,
}

impl Default for SignalState {
    fn default() -> Self {
        Self {
            actions: Default::default(),
            mask: 0,
            pending: 0,
            altstack: (0, libc::SS_DISABLE as u64, 0),
            alarm: None,
            codes: [0; 64],
            saved_mask: None,
        }
    }
}

/// The bit of signal `sig` in a mask.
pub(super) fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

/// `si_code`s: sent by `kill`, by `tkill`/`tgkill`, by the kernel (the alarm).
pub(super) const SI_USER: i32 = 0;
pub(super) const SI_TKILL: i32 = -6;
pub(super) const SI_KERNEL: i32 = 0x80;

/// Signals that can be neither blocked nor caught.
const UNBLOCKABLE: u64 = (1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1));

/// Host monotonic time in nanoseconds.
pub(super) fn now_ns(cx: &mut Context<'_>) -> u64 {
    let (s, n) = cx.host.clock(libc::CLOCK_MONOTONIC).unwrap_or((0, 0));
    (s as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(n as u64)
}

impl SignalState {
    pub(super) fn sigaction(
        &mut self,
        sig: u64,
        act: u64,
        old: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let fixed = sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64;
        if !(1..=64).contains(&sig) || (fixed && act != 0) {
            return Err(Errno::EINVAL.into()); // SIGKILL and SIGSTOP may be asked, not set
        }
        let previous = self.action(sig as i32);
        if act != 0 {
            let new: KernelSigaction = cx.mem.read_obj(act)?;
            self.actions.lock().insert(sig, new);
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
            } & !UNBLOCKABLE;
        }
        if old != 0 {
            cx.mem.write_obj(old, &previous)?;
        }
        Ok(0)
    }
}

impl SignalState {
    /// The disposition of `sig` (SIG_DFL when never set).
    pub(super) fn action(&self, sig: i32) -> KernelSigaction {
        (self.actions.lock().get(&(sig as u64)).copied()).unwrap_or_default()
    }

    /// Back to SIG_DFL (`SA_RESETHAND`).
    pub(super) fn reset(&mut self, sig: i32) {
        self.actions.lock().remove(&(sig as u64));
    }

    /// `sigaltstack(new, old)`.
    pub(super) fn sigaltstack(&mut self, new: u64, old: u64, cx: &mut Context<'_>) -> SysResult {
        if old != 0 {
            let mut ss = SignalStack::default();
            let (sp, flags, size) = self.altstack;
            ss.0.ss_sp = sp as *mut libc::c_void;
            ss.0.ss_flags = flags as i32;
            ss.0.ss_size = size as usize;
            cx.mem
                .check(old, std::mem::size_of::<SignalStack>() as u64)?;
            if new == 0 {
                cx.mem.write_obj(old, &ss)?;
                return Ok(0);
            }
            let next = self.read_altstack(new, cx)?;
            cx.mem.write_obj(old, &ss)?;
            self.altstack = next;
            return Ok(0);
        }
        if new != 0 {
            self.altstack = self.read_altstack(new, cx)?;
        }
        Ok(0)
    }

    fn read_altstack(&self, at: u64, cx: &mut Context<'_>) -> Result<(u64, u64, u64), Errno> {
        let ss: SignalStack = cx.mem.read_obj(at)?;
        let flags = ss.0.ss_flags;
        if flags & libc::SS_DISABLE != 0 {
            return Ok((0, libc::SS_DISABLE as u64, 0));
        }
        if flags & !libc::SS_ONSTACK != 0 {
            return Err(Errno::EINVAL);
        }
        if (ss.0.ss_size as u64) < libc::MINSIGSTKSZ as u64 {
            return Err(Errno::ENOMEM);
        }
        Ok((ss.0.ss_sp as u64, 0, ss.0.ss_size as u64))
    }

    /// A `fork` child's: the same dispositions, mask and alternate stack; nothing pending,
    /// no alarm.
    pub(super) fn for_child(&self) -> Self {
        Self {
            pending: 0,
            alarm: None,
            codes: [0; 64],
            ..self.clone()
        }
    }

    /// A new thread's: the same handlers (shared), mask and nothing else.
    pub(super) fn for_thread(&self) -> Self {
        Self {
            actions: self.actions.share(),
            mask: self.mask,
            ..Self::default()
        }
    }

    /// After `execve`: handled signals go back to their default (ignored ones stay
    /// ignored), no alternate stack; the mask, what is pending and the alarm stay.
    pub(super) fn exec_reset(&mut self) {
        // A shared table (other threads, which exec ends) is left to them.
        self.actions = self.actions.clone(); // a copy of its own
        self.actions.lock().retain(|_, a| a.handler == 1);
        self.altstack = (0, libc::SS_DISABLE as u64, 0);
    }

    /// SIGALRM becomes pending when its deadline has passed (and is re-armed by its period).
    pub(super) fn check_alarm(&mut self, now: u64) {
        if let Some((at, period)) = self.alarm {
            if now >= at {
                self.pending |= bit(libc::SIGALRM);
                self.codes[libc::SIGALRM as usize - 1] = SI_KERNEL;
                self.alarm = (period > 0).then(|| (now.saturating_add(period), period));
            }
        }
    }
}

impl Process {
    /// Makes `sig` pending for this process, sent with `code`.
    pub(super) fn send(&mut self, sig: u64, code: i32) -> SysResult {
        match sig {
            0 => Ok(0),
            1..=64 => {
                self.signals.pending |= bit(sig as i32);
                self.signals.codes[sig as usize - 1] = code;
                Ok(0)
            }
            _ => Err(Errno::EINVAL.into()),
        }
    }

    /// `rt_sigpending`: the pending signals.
    pub(super) fn sigpending(&self, set: u64, cx: &mut Context<'_>) -> SysResult {
        cx.mem.write_obj(set, &self.signals.pending)?;
        Ok(0)
    }

    /// `alarm(secs)`: SIGALRM in `secs` seconds (0: none); the seconds the last one had left.
    pub(super) fn alarm(&mut self, secs: u64, cx: &mut Context<'_>) -> SysResult {
        let now = now_ns(cx);
        let left = self
            .signals
            .alarm
            .map_or(0, |(at, _)| at.saturating_sub(now));
        let secs = secs as u32; // the kernel takes an unsigned int
        let at = now.saturating_add(u64::from(secs) * 1_000_000_000);
        self.signals.alarm = (secs > 0).then_some((at, 0));
        Ok(left.div_ceil(1_000_000_000) as i64)
    }

    /// `setitimer(ITIMER_REAL, new, old)` and `getitimer` (`new` 0); the CPU-time timers are
    /// not kept (`EINVAL`).
    pub(super) fn itimer(
        &mut self,
        which: u64,
        new: u64,
        old: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        if which != libc::ITIMER_REAL as u64 {
            return Err(Errno::EINVAL.into());
        }
        let now = now_ns(cx);
        let us = |ns: u64| libc::timeval {
            tv_sec: (ns / 1_000_000_000) as i64,
            tv_usec: (ns % 1_000_000_000 / 1000) as i64,
        };
        let (left, period) = self
            .signals
            .alarm
            .map_or((0, 0), |(at, p)| (at.saturating_sub(now), p));
        let current = [us(period), us(left)];
        if new != 0 {
            let v: [super::abi::Timeval; 2] = [cx.mem.read_obj(new)?, cx.mem.read_obj(new + 16)?];
            let ns = |t: &super::abi::Timeval| -> Result<u64, Errno> {
                if t.0.tv_sec < 0 || !(0..1_000_000).contains(&t.0.tv_usec) {
                    return Err(Errno::EINVAL);
                }
                let ns = (t.0.tv_sec as u64).saturating_mul(1_000_000_000);
                Ok(ns.saturating_add(t.0.tv_usec as u64 * 1000))
            };
            let (interval, value) = (ns(&v[0])?, ns(&v[1])?);
            if old != 0 {
                cx.mem.write_obj(old, &super::abi::Timeval(current[0]))?;
                cx.mem
                    .write_obj(old + 16, &super::abi::Timeval(current[1]))?;
            }
            self.signals.alarm = (value > 0).then(|| (now.saturating_add(value), interval));
            return Ok(0);
        }
        if old != 0 {
            cx.mem.write_obj(old, &super::abi::Timeval(current[0]))?;
            cx.mem
                .write_obj(old + 16, &super::abi::Timeval(current[1]))?;
        }
        Ok(0)
    }

    /// `rt_sigsuspend(set, size)`: waits, with `set` as the mask, for a signal that acts;
    /// always `EINTR`, and the old mask comes back after the handler.
    pub(super) fn sigsuspend(&mut self, set: u64, size: u64, cx: &mut Context<'_>) -> SysResult {
        if size != 8 {
            return Err(Errno::EINVAL.into());
        }
        let new: u64 = cx.mem.read_obj(set)?;
        let old = self.signals.mask;
        self.signals.mask = new & !UNBLOCKABLE;
        self.signals.saved_mask = Some(old);
        if let Some(now) = (self.signals.alarm.is_some()).then(|| now_ns(cx)) {
            cx.interrupt = self.alarm_in(now); // with the new mask
        }
        if self.acting_signal().is_none() {
            self.sleep(std::time::Duration::MAX, cx)?;
        }
        Err(Errno::EINTR.into())
    }

    /// `rt_sigtimedwait(set, info, timeout, size)`: takes a pending signal of `set` (waiting
    /// for one, at most `timeout`: then `EAGAIN`); its number, and its `siginfo` in `info`.
    pub(super) fn sigtimedwait(
        &mut self,
        set: u64,
        info: u64,
        timeout: u64,
        size: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        if size != 8 {
            return Err(Errno::EINVAL.into());
        }
        let wanted: u64 = cx.mem.read_obj::<u64>(set)? & !UNBLOCKABLE;
        let timeout = match timeout {
            0 => None,
            t => Some(super::time::read_timespec(cx, t)?),
        };
        if info != 0 {
            cx.mem.check(info, 128)?;
        }
        let take = |p: &mut Self, _: &mut Context<'_>| {
            p.take_incoming();
            let ready = p.signals.pending & wanted;
            if ready == 0 {
                return Ok(None);
            }
            let sig = ready.trailing_zeros() as i32 + 1;
            p.signals.pending &= !bit(sig);
            Ok(Some(sig))
        };
        let Some(sig) = self.block(timeout, super::block::Restart::Never, cx, take)? else {
            return Err(Errno::EAGAIN.into());
        };
        if info != 0 {
            let code = self.signals.codes[sig as usize - 1];
            let si = super::sigframe::SigInfo::new(sig, code, (0, 0), 0);
            cx.mem.write_obj(info, &si)?;
        }
        Ok(i64::from(sig))
    }

    /// `pause`: waits for a signal (the alarm, or one another process sends).
    pub(super) fn pause(&mut self, cx: &mut Context<'_>) -> SysResult {
        self.sleep(std::time::Duration::MAX, cx)?;
        Err(Errno::EINTR.into())
    }

    /// `rt_sigaction`; the tree learns whether SIGCHLD is ignored (children reaped at once).
    pub(super) fn sigaction(
        &mut self,
        sig: u64,
        act: u64,
        old: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let r = self.signals.sigaction(sig, act, old, cx)?;
        if sig == libc::SIGCHLD as u64 && act != 0 {
            let a = self.signals.action(libc::SIGCHLD);
            let reaps = a.handler == 1 || a.flags & libc::SA_NOCLDWAIT as u64 != 0;
            self.tree.set_reaps(self.tgid, reaps);
        }
        Ok(r)
    }

    /// How long until the alarm, for sleeps to end early (`EINTR`) — only when SIGALRM
    /// would do something (not blocked, not ignored).
    pub(super) fn alarm_in(&self, now: u64) -> Option<std::time::Duration> {
        let sig = libc::SIGALRM;
        if self.signals.mask & bit(sig) != 0 || self.signals.action(sig).handler == 1 {
            return None;
        }
        self.signals
            .alarm
            .map(|(at, _)| std::time::Duration::from_nanos(at.saturating_sub(now)))
    }
}
