//! Waiting inside a system call for something another process does (a child's end, a pipe,
//! a signal), through the tree's event count (see [`super::tree`]). A wait ends with its
//! condition, its own timeout, `EINTR` when a signal arrives that would act (or, for a call
//! Linux restarts under `SA_RESTART`, the restart marker), `SIGKILL` when the tree ends, or the
//! program's end at the time limit.
//!
//! A process alone in its tree can be woken by nothing but its own alarm: it sleeps as before
//! (through the host, which a fuzzer's host does not really do).

use std::time::{Duration, Instant};

use super::deliver::default_ignores;
use super::signals::{bit, SI_USER};
use super::{Context, Errno, Process, SysError};
use crate::sandbox::exit::Exit;

/// `ERESTARTSYS`: the kernel's internal "restart after the handler" (never seen by the
/// program: the run loop re-executes the `syscall`).
pub const ERESTARTSYS: Errno = Errno(512);

/// How a call that waits may be interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Restart {
    /// Restarted after a handler with `SA_RESTART` (`read`, `write`, `wait4`, `futex`).
    WithSaRestart,
    /// Always `EINTR` (sleeps, `poll`, `select`, `pause`).
    Never,
}

impl Process {
    /// Takes the signals other processes sent (SIGKILL when the tree is ending).
    pub(super) fn take_incoming(&mut self) {
        let bits = self.tree.take_incoming(self.pid);
        if bits == 0 {
            return;
        }
        self.signals.pending |= bits;
        for sig in 1..=64 {
            if bits & bit(sig) != 0 {
                self.signals.codes[sig as usize - 1] = match sig {
                    libc::SIGCHLD => CLD_EXITED,
                    _ => SI_USER,
                };
            }
        }
    }

    /// Whether a pending, unblocked signal would do something (not ignored); `Some(true)` if
    /// every such signal has a handler with `SA_RESTART`.
    pub(super) fn acting_signal(&self) -> Option<bool> {
        let ready = self.signals.pending & !self.signals.mask;
        let mut restart = true;
        let mut any = false;
        for sig in (1..=64).filter(|&s| ready & bit(s) != 0) {
            let action = self.signals.action(sig);
            match action.handler {
                0 if default_ignores(sig) => continue,
                1 => continue,
                0 => restart = false,
                _ => restart &= action.flags & libc::SA_RESTART as u64 != 0,
            }
            any = true;
        }
        any.then_some(restart)
    }

    /// Waits until `ready` gives a value (`Ok(Some)`), or `timeout` passes (`Ok(None)`).
    pub(super) fn block<T>(
        &mut self,
        timeout: Option<Duration>,
        restart: Restart,
        cx: &mut Context<'_>,
        mut ready: impl FnMut(&mut Self, &mut Context<'_>) -> Result<Option<T>, SysError>,
    ) -> Result<Option<T>, SysError> {
        if let Some(v) = ready(self, cx)? {
            return Ok(Some(v));
        }
        if self.tree.len() <= 1 {
            // Nobody else can change anything: the wait runs its course.
            super::time::sleep(timeout.unwrap_or(Duration::MAX), cx)?;
            return Ok(None);
        }
        let start = Instant::now();
        loop {
            let seen = self.tree.generation();
            if let Some(v) = ready(self, cx)? {
                return Ok(Some(v));
            }
            self.take_incoming();
            if self.tree.killed_for(self.pid) {
                return Err(SysError::End(Exit::Signaled(libc::SIGKILL)));
            }
            if let Some(all_restart) = self.acting_signal() {
                return Err(match (restart, all_restart) {
                    (Restart::WithSaRestart, true) => ERESTARTSYS.into(),
                    _ => Errno::EINTR.into(),
                });
            }
            let spent = start.elapsed();
            let own = timeout.map(|t| t.saturating_sub(spent));
            if own == Some(Duration::ZERO) {
                return Ok(None);
            }
            let limit = cx.remaining.map(|r| r.saturating_sub(spent));
            if limit == Some(Duration::ZERO) {
                return Err(SysError::End(Exit::TimedOut));
            }
            let alarm = cx.interrupt.map(|a| a.saturating_sub(spent));
            if alarm == Some(Duration::ZERO) {
                return Err(Errno::EINTR.into()); // delivered on the way back
            }
            let wait = [own, limit, alarm].into_iter().flatten().min();
            self.tree.wait(seen, wait);
        }
    }

    /// A blocking host call (stdin, a wait for the standard streams) returned `EINTR`: the
    /// thread was kicked. `None` to try again (a signal that does nothing), else why the call
    /// ends: the tree's end, a signal that acts, or the time limit.
    pub(super) fn interrupted(&mut self) -> Option<SysError> {
        self.take_incoming();
        if self.tree.killed_for(self.pid) {
            return Some(SysError::End(Exit::Signaled(libc::SIGKILL)));
        }
        if let Some(restart) = self.acting_signal() {
            return Some(if restart { ERESTARTSYS } else { Errno::EINTR }.into());
        }
        match self.tree.remaining() {
            // The time limit is up (the watchdog's kick); any other kick was a signal that
            // does nothing here: the call goes on.
            Some(left) if left.is_zero() => Some(SysError::End(Exit::TimedOut)),
            _ => None,
        }
    }

    /// Sleeps `d` (`Duration::MAX`: until a signal), interruptible by the alarm and by signals
    /// from other processes (`EINTR`).
    pub(super) fn sleep(&mut self, d: Duration, cx: &mut Context<'_>) -> Result<i64, SysError> {
        if self.tree.len() <= 1 {
            return super::time::sleep(d, cx);
        }
        let never = |_: &mut Self, _: &mut Context<'_>| Ok(None::<()>);
        let timeout = (d != Duration::MAX).then_some(d);
        self.block(timeout, Restart::Never, cx, never).map(|_| 0)
    }
}

/// `si_code` of SIGCHLD for a child that exited.
const CLD_EXITED: i32 = 1;
