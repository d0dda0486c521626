//! Time: the host's clocks (`clock_gettime`, `gettimeofday`, `time`, `clock_getres`) — or,
//! for the clocks the vDSO carries, the vDSO's reading, so the two never disagree — and
//! sleeps, which never outlast the program's time limit.

use std::time::Duration;

use super::abi::{Timespec, Timeval};
use super::{Context, Errno, Process, SysError, SysResult};
use crate::sandbox::exit::Exit;

impl Process {
    /// `clock` now, as (seconds, nanoseconds).
    fn now(&self, clock: i32, cx: &mut Context<'_>) -> Result<(i64, i64), Errno> {
        match clock {
            libc::CLOCK_PROCESS_CPUTIME_ID | libc::CLOCK_THREAD_CPUTIME_ID => {
                // Time since start stands in for CPU time (the program is the only thread).
                let (s0, n0) = self.started.unwrap_or((0, 0));
                let (s, n) = cx.host.clock(libc::CLOCK_MONOTONIC).ok_or(Errno::EINVAL)?;
                let total = (s - s0) * 1_000_000_000 + (n - n0);
                Ok((total / 1_000_000_000, total % 1_000_000_000))
            }
            libc::CLOCK_REALTIME
            | libc::CLOCK_MONOTONIC
            | libc::CLOCK_MONOTONIC_RAW
            | libc::CLOCK_REALTIME_COARSE
            | libc::CLOCK_MONOTONIC_COARSE
            | libc::CLOCK_BOOTTIME => match cx.vdso_clock.and_then(|vdso| vdso(clock)) {
                Some(now) => Ok(now),
                None => cx.host.clock(clock).ok_or(Errno::EINVAL),
            },
            _ => Err(Errno::EINVAL),
        }
    }

    pub(super) fn clock_gettime(&mut self, clock: i32, ts: u64, cx: &mut Context<'_>) -> SysResult {
        let now = self.now(clock, cx)?;
        cx.mem.write_obj(ts, &Timespec::new(now))?;
        Ok(0)
    }

    pub(super) fn gettimeofday(&mut self, tv: u64, cx: &mut Context<'_>) -> SysResult {
        if tv != 0 {
            let (s, n) = self.now(libc::CLOCK_REALTIME, cx)?;
            let value = Timeval(libc::timeval {
                tv_sec: s,
                tv_usec: n / 1000,
            });
            cx.mem.write_obj(tv, &value)?;
        }
        Ok(0)
    }

    pub(super) fn time(&mut self, t: u64, cx: &mut Context<'_>) -> SysResult {
        let (s, _) = self.now(libc::CLOCK_REALTIME, cx)?;
        if t != 0 {
            cx.mem.write_obj(t, &(s as u64))?;
        }
        Ok(s)
    }

    pub(super) fn clock_nanosleep(
        &mut self,
        clock: i32,
        flags: u64,
        req: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let d = read_timespec(cx, req)?;
        let (s, n) = self.now(clock, cx)?; // validates the clock id
        let d = if flags & libc::TIMER_ABSTIME as u64 != 0 {
            d.saturating_sub(Duration::new(s.max(0) as u64, n as u32))
        } else {
            d
        };
        self.sleep(d, cx)
    }

    /// `nanosleep(req, rem)`: interrupted by a signal, the time left goes to `rem`.
    pub(super) fn nanosleep(&mut self, req: u64, rem: u64, cx: &mut Context<'_>) -> SysResult {
        let d = read_timespec(cx, req)?;
        let began = std::time::Instant::now();
        let result = self.sleep(d, cx);
        if let (Err(SysError::Errno(Errno::EINTR)), true) = (&result, rem != 0) {
            // The alarm's time when the sleep was cut short by it, else the time spent.
            let slept = match cx.interrupt {
                Some(at) if self.tree.len() <= 1 => at,
                _ => began.elapsed(),
            };
            let left = d.saturating_sub(slept);
            let ts = Timespec::new((left.as_secs() as i64, i64::from(left.subsec_nanos())));
            cx.mem.write_obj(rem, &ts)?;
        }
        result
    }
}

pub(super) fn clock_getres(ts: u64, cx: &mut Context<'_>) -> SysResult {
    if ts != 0 {
        cx.mem.write_obj(ts, &Timespec::new((0, 1)))?;
    }
    Ok(0)
}

/// A valid timespec from the program, as a duration.
pub(super) fn read_timespec(cx: &Context<'_>, addr: u64) -> Result<Duration, Errno> {
    let ts: Timespec = cx.mem.read_obj(addr)?;
    let (s, n) = (ts.0.tv_sec, ts.0.tv_nsec);
    if s < 0 || !(0..1_000_000_000).contains(&n) {
        return Err(Errno::EINVAL);
    }
    Ok(Duration::new(s as u64, n as u32))
}

/// Sleeps `d`, or until the time limit, which ends the program, or until the alarm, which
/// interrupts the sleep (`EINTR`; the signal is delivered on the way back).
pub(super) fn sleep(d: Duration, cx: &mut Context<'_>) -> SysResult {
    if let Some(alarm) = cx.interrupt {
        if alarm < d && cx.remaining.is_none_or(|left| alarm < left) {
            cx.host.sleep(alarm);
            return Err(Errno::EINTR.into());
        }
    }
    match cx.remaining {
        Some(left) if d >= left => {
            cx.host.sleep(left);
            Err(SysError::End(Exit::TimedOut))
        }
        _ => {
            cx.host.sleep(d);
            Ok(0)
        }
    }
}
