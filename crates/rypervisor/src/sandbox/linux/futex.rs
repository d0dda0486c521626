//! `futex`: wait queues keyed by address, shared by the threads of one process (each thread a
//! vCPU of the same VM, on its own VMM thread). `FUTEX_WAIT` compares the word and queues the
//! caller under one lock, `FUTEX_WAKE` marks waiters woken under the same lock, so no wake-up
//! falls between a check and a wait; the waiting itself is `Process::block` on the tree's
//! event count, so a signal, the time limit or the process's end ends it too.
//!
//! Served: `WAIT`, `WAKE`, `WAIT_BITSET`, `WAKE_BITSET`, `REQUEUE`, `CMP_REQUEUE`, with
//! `FUTEX_PRIVATE_FLAG` and `FUTEX_CLOCK_REALTIME`. A process's futexes are its own: another
//! process (even a `vfork` child on the same memory) cannot wake them.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::block::Restart;
use super::{Context, Errno, Process, SysError, SysResult};

const WAIT: u64 = 0;
const WAKE: u64 = 1;
const REQUEUE: u64 = 3;
const CMP_REQUEUE: u64 = 4;
const WAIT_BITSET: u64 = 9;
const WAKE_BITSET: u64 = 10;
/// The operation without FUTEX_PRIVATE_FLAG / FUTEX_CLOCK_REALTIME.
const CMD_MASK: u64 = 0x7f;
const CLOCK_REALTIME: u64 = 256;
/// Waiters queued at once (a thread waits on one futex at a time: at most `--max-procs`).
const MAX_WAITERS: usize = 4096;

#[derive(Debug)]
struct Waiter {
    id: u64,
    addr: u64,
    bitset: u32,
    woken: bool,
}

#[derive(Debug, Default)]
struct Queues {
    next_id: u64,
    waiters: Vec<Waiter>,
}

/// The wait queues of one process.
#[derive(Debug, Default)]
pub struct Futexes(Mutex<Queues>);

impl Futexes {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn woken(&self, id: u64) -> bool {
        self.lock().waiters.iter().any(|w| w.id == id && w.woken)
    }

    /// Takes waiter `id` off the queue; whether it had been woken.
    fn leave(&self, id: u64) -> bool {
        let mut q = self.lock();
        let at = q.waiters.iter().position(|w| w.id == id);
        at.is_some_and(|i| q.waiters.remove(i).woken)
    }

    /// Wakes up to `n` waiters on `addr` whose bitset meets `bitset`; moves up to `requeue`
    /// more to `to`. Returns (woken, moved).
    fn wake(
        &self,
        addr: u64,
        bitset: u32,
        n: usize,
        requeue: Option<(u64, usize)>,
    ) -> (usize, usize) {
        Self::wake_locked(self.lock(), addr, bitset, n, requeue)
    }

    fn wake_locked(
        mut q: MutexGuard<'_, Queues>,
        addr: u64,
        bitset: u32,
        n: usize,
        requeue: Option<(u64, usize)>,
    ) -> (usize, usize) {
        let (mut woken, mut moved) = (0, 0);
        for w in q.waiters.iter_mut().filter(|w| w.addr == addr && !w.woken) {
            if woken < n && w.bitset & bitset != 0 {
                w.woken = true;
                woken += 1;
            } else if let Some((to, max)) = requeue {
                if moved < max {
                    w.addr = to;
                    moved += 1;
                }
            }
        }
        (woken, moved)
    }
}

impl Process {
    /// `futex(addr, op, val, timeout, addr2, val3)`.
    pub(super) fn futex(
        &mut self,
        [addr, op, val, timeout, addr2, val3]: [u64; 6],
        cx: &mut Context<'_>,
    ) -> SysResult {
        let cmd = op & CMD_MASK;
        let val32 = val as u32;
        match cmd {
            WAKE | WAKE_BITSET => {
                let bitset = if cmd == WAKE { u32::MAX } else { val3 as u32 };
                if bitset == 0 {
                    return Err(Errno::EINVAL.into());
                }
                cx.mem.check(addr, 4)?;
                let (n, _) = self.futexes.wake(addr, bitset, val32 as usize, None);
                if n > 0 {
                    self.tree.notify();
                }
                Ok(n as i64)
            }
            REQUEUE | CMP_REQUEUE => {
                cx.mem.check(addr2, 4)?;
                // The timeout argument is the number to requeue here; both counts are ints.
                let (wake, requeue) = (val32 as i32, timeout as u32 as i32);
                if wake < 0 || requeue < 0 {
                    return Err(Errno::EINVAL.into());
                }
                let requeue = Some((addr2, requeue as usize));
                // CMP_REQUEUE compares under the queue's lock, as Linux does under its own.
                let futexes = self.futexes.clone();
                let q = futexes.lock();
                if cmd == CMP_REQUEUE {
                    let v: u32 = cx.mem.read_obj(addr)?;
                    if v != val3 as u32 {
                        return Err(Errno::EAGAIN.into());
                    }
                }
                let (n, m) = Futexes::wake_locked(q, addr, u32::MAX, wake as usize, requeue);
                if n > 0 {
                    self.tree.notify();
                }
                Ok((n + m) as i64)
            }
            WAIT | WAIT_BITSET => {
                let bitset = if cmd == WAIT { u32::MAX } else { val3 as u32 };
                if bitset == 0 {
                    return Err(Errno::EINVAL.into());
                }
                let wait = match timeout {
                    0 => None,
                    t => Some(self.futex_timeout(cmd, op, t, cx)?),
                };
                self.futex_wait(addr, val32, bitset, wait, cx)
            }
            _ => Err(Errno::ENOSYS.into()),
        }
    }

    /// How long a wait may last: WAIT's timeout is relative, WAIT_BITSET's absolute (on the
    /// monotonic clock, or the real-time one with FUTEX_CLOCK_REALTIME).
    fn futex_timeout(
        &self,
        cmd: u64,
        op: u64,
        at: u64,
        cx: &mut Context<'_>,
    ) -> Result<Duration, Errno> {
        let t = super::time::read_timespec(cx, at)?;
        if cmd == WAIT {
            return Ok(t);
        }
        let clock = match op & CLOCK_REALTIME {
            0 => libc::CLOCK_MONOTONIC,
            _ => libc::CLOCK_REALTIME,
        };
        let (s, n) = cx.host.clock(clock).ok_or(Errno::EINVAL)?;
        Ok(t.saturating_sub(Duration::new(s.max(0) as u64, n as u32)))
    }

    fn futex_wait(
        &mut self,
        addr: u64,
        val: u32,
        bitset: u32,
        timeout: Option<Duration>,
        cx: &mut Context<'_>,
    ) -> SysResult {
        let futexes: Arc<Futexes> = self.futexes.clone();
        let id = {
            let mut q = futexes.lock();
            let v: u32 = cx.mem.read_obj(addr)?;
            if v != val {
                return Err(Errno::EAGAIN.into());
            }
            if q.waiters.len() >= MAX_WAITERS {
                return Err(Errno::ENOMEM.into());
            }
            q.next_id += 1;
            let id = q.next_id;
            q.waiters.push(Waiter {
                id,
                addr,
                bitset,
                woken: false,
            });
            id
        };
        if timeout.is_none() && !self.futexes_shared() {
            // Nobody else can ever wake it: Linux would hang until the time limit; say so
            // (unless the last other thread woke it on its way out).
            if futexes.leave(id) {
                return Ok(0);
            }
            return Err(Errno::EDEADLK.into());
        }
        let woken = |_: &mut Self, _: &mut Context<'_>| Ok(futexes.woken(id).then_some(()));
        let r = self.block(timeout, Restart::WithSaRestart, cx, woken);
        let was_woken = futexes.leave(id);
        match r {
            _ if was_woken => Ok(0),
            Ok(_) => Err(Errno::ETIMEDOUT.into()),
            Err(SysError::Errno(super::block::ERESTARTSYS)) => Err(Errno::EINTR.into()),
            Err(e) => Err(e),
        }
    }

    /// Whether another thread shares this process's futexes (and so may wake a waiter).
    fn futexes_shared(&self) -> bool {
        self.tree.group_size(self.tgid) > 1
    }
}
