//! The VMM confines itself: a seccomp filter (built with `seccompiler`) applied once the
//! sandbox VM exists, allowing only what running the vCPU and serving the policy need.
//!
//! If a bug in the system-call dispatcher ever let a program steer the VMM, the VMM still
//! could not open sockets, start processes or write files: any system call outside this list
//! kills the whole VMM process with SIGSYS.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Errors building or applying the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter did not compile.
    #[error("cannot build the seccomp filter: {0}")]
    Build(String),
    /// The kernel refused the filter.
    #[error("cannot apply the seccomp filter: {0}")]
    Apply(String),
}

/// The KVM ioctls a running sandbox issues.
fn kvm_ioctls() -> Vec<u64> {
    use kvm_bindings::*;
    // _IO/_IOR/_IOW numbers, computed the way <linux/kvm.h> does (kvm-ioctls keeps its own
    // copies private).
    const fn io(nr: u64) -> u64 {
        (0xae << 8) | nr
    }
    const fn iorw(dir: u64, nr: u64, size: usize) -> u64 {
        (dir << 30) | ((size as u64) << 16) | (0xae << 8) | nr
    }
    const W: u64 = 1;
    const R: u64 = 2;
    vec![
        io(0x80),                                            // KVM_RUN
        iorw(R, 0x81, std::mem::size_of::<kvm_regs>()),      // KVM_GET_REGS
        iorw(W, 0x82, std::mem::size_of::<kvm_regs>()),      // KVM_SET_REGS
        iorw(R, 0x83, std::mem::size_of::<kvm_sregs>()),     // KVM_GET_SREGS
        iorw(W, 0x84, std::mem::size_of::<kvm_sregs>()),     // KVM_SET_SREGS
        iorw(W, 0x89, std::mem::size_of::<kvm_msrs>()),      // KVM_SET_MSRS
        iorw(W, 0x42, std::mem::size_of::<kvm_dirty_log>()), // KVM_GET_DIRTY_LOG
        iorw(R, 0xa4, std::mem::size_of::<kvm_xsave>()),     // KVM_GET_XSAVE
        iorw(W, 0xa5, std::mem::size_of::<kvm_xsave>()),     // KVM_SET_XSAVE
    ]
}

/// The filter for a sandbox VMM. `files`: the policy lets the program open host files
/// (read-only opens and the path resolution they need are allowed).
pub fn sandbox_filter(files: bool) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let cond = |arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(arg, len, op, value).map_err(|e| SeccompError::Build(e.to_string()))
    };
    let rule = |conds: Vec<SeccompCondition>| {
        SeccompRule::new(conds).map_err(|e| SeccompError::Build(e.to_string()))
    };
    let mut ioctl_rules = Vec::new();
    for nr in kvm_ioctls() {
        ioctl_rules.push(rule(vec![cond(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            nr,
        )?])?);
    }
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    // mmap/mprotect for the VMM's own heap, never executable.
    let no_exec = || -> Result<Vec<SeccompRule>, SeccompError> {
        Ok(vec![rule(vec![cond(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?])
    };
    rules.insert(libc::SYS_mmap, no_exec()?);
    // Debug builds of std check a descriptor with fcntl(F_GETFD) before closing it.
    rules.insert(
        libc::SYS_fcntl,
        vec![rule(vec![cond(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::F_GETFD as u64,
        )?])?],
    );
    rules.insert(libc::SYS_mprotect, no_exec()?);
    for nr in [
        libc::SYS_read,  // stdin for the program
        libc::SYS_write, // stdout/stderr, traces
        libc::SYS_writev,
        libc::SYS_munmap, // the VMM's heap
        libc::SYS_mremap,
        libc::SYS_madvise, // giving back guest pages the program unmapped
        libc::SYS_brk,
        libc::SYS_futex, // the watchdog's mutex and condition variable
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep, // nanosleep served for the program
        libc::SYS_nanosleep,
        libc::SYS_getrandom, // AT_RANDOM, getrandom served for the program
        libc::SYS_getpid,    // pthread_kill, by the watchdog
        libc::SYS_gettid,
        libc::SYS_tgkill,
        libc::SYS_rt_sigreturn, // the kick signal's handler returning
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity, // glibc sizing malloc arenas for a new thread
        libc::SYS_close,
        libc::SYS_rseq, // the C library's per-thread registration
        libc::SYS_exit, // threads ending
        libc::SYS_exit_group,
    ] {
        rules.insert(nr, vec![]);
    }
    if files {
        // Read-only opens of files the policy allows (checked by the dispatcher first), and
        // what canonicalising a path and reading a file need.
        let read_only = (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64;
        rules.insert(
            libc::SYS_openat,
            vec![rule(vec![cond(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(read_only),
                0,
            )?])?],
        );
        for nr in [
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_lstat,
            libc::SYS_stat,
            libc::SYS_readlink,
            libc::SYS_readlinkat,
            libc::SYS_getcwd,
            libc::SYS_lseek,
            libc::SYS_pread64,
        ] {
            rules.insert(nr, vec![]);
        }
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(e.to_string()))
}

/// Applies `filter` to every thread of this process (the vCPU thread and the watchdog).
pub fn confine_process(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter_all_threads(filter).map_err(|e| SeccompError::Apply(e.to_string()))
}

/// Applies `filter` to the calling thread only.
pub fn confine_thread(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(|e| SeccompError::Apply(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child and returns how the child ended (wait status).
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: fork in a test: the child only runs `f` (async-signal-safe system calls on
        // pre-built data) and then _exit, never returning into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = f();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    #[test]
    fn the_filter_kills_a_forbidden_call_and_allows_the_vmm_s_own() {
        let filter = sandbox_filter(false).unwrap();
        let status = in_child(|| {
            if confine_thread(&filter).is_err() {
                return 10;
            }
            // Allowed: writing to stderr (zero bytes), reading the clock.
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: plain system calls on live locals.
            let ok = unsafe {
                libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) == 0
                    && libc::write(2, [].as_ptr(), 0) == 0
            };
            if !ok {
                return 11;
            }
            // Forbidden: a socket. The filter kills the process here.
            // SAFETY: a plain system call.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            12
        });
        assert!(
            libc::WIFSIGNALED(status),
            "child exited with {} instead of being killed",
            libc::WEXITSTATUS(status)
        );
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);

        // Without file access in the policy, even a read-only open is fatal.
        let status = in_child(|| {
            if confine_thread(&filter).is_err() {
                return 10;
            }
            // SAFETY: a plain system call with a static NUL-terminated path.
            unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
            12
        });
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);

        // With files allowed, read-only opens pass but opening for writing kills.
        let filter = sandbox_filter(true).unwrap();
        let status = in_child(|| {
            if confine_thread(&filter).is_err() {
                return 10;
            }
            // SAFETY: plain system calls with a static NUL-terminated path.
            let fd = unsafe {
                libc::openat(
                    libc::AT_FDCWD,
                    c"/proc/self/status".as_ptr(),
                    libc::O_RDONLY,
                )
            };
            if fd < 0 {
                return 11;
            }
            // SAFETY: as above.
            unsafe {
                libc::openat(
                    libc::AT_FDCWD,
                    c"/tmp/x".as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT,
                    0o600,
                )
            };
            12
        });
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
