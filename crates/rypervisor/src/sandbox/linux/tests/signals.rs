//! Signals the process sends itself, their dispositions, delivery onto a frame and back, and
//! the alarm.

use super::*;
use crate::sandbox::linux::abi::KernelSigaction;
use crate::sandbox::linux::sigframe::{self, UserRegs};

/// Runs `f` with the process and a context over the rig's memory and host.
fn with<T>(r: &mut Rig, f: impl FnOnce(&mut Process, &mut Context<'_>) -> T) -> T {
    let mut cx = Context {
        mem: &mut r.mem,
        host: &mut r.host,
        remaining: None,
        vdso_clock: None,
        interrupt: None,
    };
    f(&mut r.process, &mut cx)
}

fn deliver(r: &mut Rig, regs: &UserRegs) -> Result<Option<sigframe::HandlerEntry>, Exit> {
    with(r, |p, cx| p.deliver(regs, cx))
}

fn set_action(r: &mut Rig, sig: i32, handler: u64, flags: u64, mask: u64) {
    let act = KernelSigaction {
        handler,
        flags,
        restorer: 0x40_0500,
        mask,
    };
    r.mem.write_obj(BUF, &act).unwrap();
    assert_eq!(r.ret(nr::RT_SIGACTION, &[sig as u64, BUF, 0, 8]), 0);
}

#[test]
fn kill_reaches_only_the_process_itself() {
    let mut r = Rig::new();
    let e = |n: i32| -i64::from(n);
    assert_eq!(r.ret(nr::KILL, &[2, 15]), e(libc::ESRCH), "nobody else");
    assert_eq!(r.ret(nr::KILL, &[1, 0]), 0, "signal 0: it exists");
    assert_eq!(r.ret(nr::KILL, &[1, 65]), e(libc::EINVAL));
    assert_eq!(r.ret(nr::TGKILL, &[1, 2, 10]), e(libc::ESRCH));
    assert_eq!(r.ret(nr::TKILL, &[1, 10]), 0);
    assert_eq!(r.ret(nr::RT_SIGPENDING, &[BUF]), 0);
    assert_eq!(r.mem.read_u64(BUF).unwrap(), 1 << 9, "SIGUSR1 pending");
    assert_eq!(
        r.ret(nr::SETITIMER, &[libc::ITIMER_PROF as u64, 0, 0]),
        e(libc::EINVAL)
    );
}

#[test]
fn delivery_follows_the_disposition_and_sigreturn_undoes_it() {
    let mut r = Rig::new();
    let regs = UserRegs {
        rip: 0x40_1000,
        rsp: USER_BASE + 0x20_0000,
        rflags: 0x202,
        rax: 42,
        ..UserRegs::default()
    };
    // Ignored, then a handler with SA_RESTORER and a mask, then the default action.
    set_action(&mut r, libc::SIGUSR1, 1, 0, 0);
    r.ret(nr::KILL, &[1, libc::SIGUSR1 as u64]);
    assert_eq!(deliver(&mut r, &regs), Ok(None));
    let restorer = 0x0400_0000;
    set_action(
        &mut r,
        libc::SIGUSR1,
        0x40_2000,
        restorer | libc::SA_RESETHAND as u64,
        1 << 11,
    );
    r.ret(nr::KILL, &[1, libc::SIGUSR1 as u64]);
    let entry = deliver(&mut r, &regs).unwrap().unwrap();
    assert_eq!(entry.rip, 0x40_2000);
    assert_eq!(entry.args[0], libc::SIGUSR1 as u64);
    assert!(entry.rsp < regs.rsp - 128, "below the red zone");
    assert_eq!(r.ret(nr::RT_SIGPROCMASK, &[0, 0, BUF, 8]), 0);
    assert_eq!(
        r.mem.read_u64(BUF).unwrap(),
        (1 << 11) | (1 << 9),
        "sa_mask and itself"
    );
    // Back: the registers and the mask as they were.
    let back = with(&mut r, |p, cx| p.sigreturn(entry.rsp + 8, 0x202, cx)).unwrap();
    assert_eq!(back, regs);
    assert_eq!(r.ret(nr::RT_SIGPROCMASK, &[0, 0, BUF, 8]), 0);
    assert_eq!(r.mem.read_u64(BUF).unwrap(), 0);
    // SA_RESETHAND made it SIG_DFL: now it ends the process.
    r.ret(nr::KILL, &[1, libc::SIGUSR1 as u64]);
    assert_eq!(deliver(&mut r, &regs), Err(Exit::Signaled(libc::SIGUSR1)));
    // SIGCHLD is ignored by default; a handler without a restorer cannot return.
    r.ret(nr::KILL, &[1, libc::SIGCHLD as u64]);
    assert_eq!(deliver(&mut r, &regs), Ok(None));
    set_action(&mut r, libc::SIGUSR2, 0x40_2000, 0, 0);
    r.ret(nr::KILL, &[1, libc::SIGUSR2 as u64]);
    assert_eq!(deliver(&mut r, &regs), Err(Exit::Signaled(libc::SIGSEGV)));
    // A stack that leaves program memory: SIGSEGV too.
    set_action(&mut r, libc::SIGUSR2, 0x40_2000, restorer, 0);
    r.ret(nr::KILL, &[1, libc::SIGUSR2 as u64]);
    let low = UserRegs {
        rsp: USER_BASE + 64,
        ..regs
    };
    assert_eq!(deliver(&mut r, &low), Err(Exit::Signaled(libc::SIGSEGV)));
}

#[test]
fn the_alarm_interrupts_a_sleep_and_becomes_pending() {
    let mut r = Rig::new();
    r.host.no_sleep = true;
    assert_eq!(r.ret(nr::ALARM, &[5]), 0, "no alarm before");
    assert_eq!(r.ret(nr::ALARM, &[0]), 5, "the seconds left, rounded up");
    // An alarm due now: a sleep is interrupted and SIGALRM is pending at the way back.
    let it = BUF + 0x100;
    r.mem.write_u64(it, 0).unwrap();
    r.mem.write_u64(it + 8, 0).unwrap();
    r.mem.write_u64(it + 16, 0).unwrap();
    r.mem.write_u64(it + 24, 1).unwrap(); // 1 µs
    assert_eq!(r.ret(nr::SETITIMER, &[0, it, 0]), 0);
    std::thread::sleep(std::time::Duration::from_millis(2));
    let ts = BUF + 0x200;
    r.mem.write_u64(ts, 10).unwrap();
    r.mem.write_u64(ts + 8, 0).unwrap();
    // Blocked, SIGALRM interrupts nothing.
    r.mem
        .write_u64(BUF + 0x300, 1 << (libc::SIGALRM - 1))
        .unwrap();
    assert_eq!(r.ret(nr::RT_SIGPROCMASK, &[0, BUF + 0x300, 0, 8]), 0);
    assert_eq!(r.ret(nr::NANOSLEEP, &[ts, 0]), 0, "blocked: no EINTR");
    assert_eq!(r.ret(nr::RT_SIGPROCMASK, &[1, BUF + 0x300, 0, 8]), 0);
    let rem = BUF + 0x400;
    assert_eq!(r.ret(nr::NANOSLEEP, &[ts, rem]), -i64::from(libc::EINTR));
    assert!(r.mem.read_u64(rem).unwrap() >= 9, "the time left in rem");
    assert!(with(&mut r, |p, cx| p.signal_pending(cx)));
    assert_eq!(
        deliver(&mut r, &UserRegs::default()),
        Err(Exit::Signaled(libc::SIGALRM)),
        "SIGALRM's default action"
    );
}
