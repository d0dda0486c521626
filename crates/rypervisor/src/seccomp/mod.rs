//! The VMM confines itself: a seccomp filter (built with `seccompiler`) applied once the
//! sandbox VM exists, allowing only what running the vCPU and serving the policy need.
//!
//! If a bug in the system-call dispatcher ever let a program steer the VMM, the VMM still
//! could not open sockets, start processes or write files: any system call outside this list
//! kills the whole VMM process with SIGSYS. [`boot`] has the filters of `rypervisor boot`'s
//! threads, one per role.

pub mod boot;
pub mod run;

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
    Build(#[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot apply the seccomp filter: {0}")]
    Apply(#[source] seccompiler::Error),
}

/// The rules of one filter, by system call: an empty list allows the call whatever its
/// arguments, otherwise any one matching rule does.
#[derive(Default)]
pub(crate) struct Rules(BTreeMap<i64, Vec<SeccompRule>>);

impl Rules {
    /// Allows `calls` with any arguments.
    pub(crate) fn allow(&mut self, calls: &[i64]) {
        for &nr in calls {
            self.0.insert(nr, Vec::new());
        }
    }

    /// Allows `nr` when argument `arg` (32-bit) compares to `value` by `op`.
    pub(crate) fn allow_when(
        &mut self,
        nr: i64,
        arg: u8,
        op: SeccompCmpOp,
        value: u64,
    ) -> Result<(), SeccompError> {
        self.allow_when_all(nr, &[(arg, op, value)])
    }

    /// Allows `nr` when every argument `arg` (32-bit) compares to its `value` by its `op`.
    pub(crate) fn allow_when_all(
        &mut self,
        nr: i64,
        args: &[(u8, SeccompCmpOp, u64)],
    ) -> Result<(), SeccompError> {
        let conds = (args.iter().cloned())
            .map(|(arg, op, value)| SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SeccompError::Build)?;
        let rule = SeccompRule::new(conds).map_err(SeccompError::Build)?;
        self.0.entry(nr).or_default().push(rule);
        Ok(())
    }

    /// Kills the process on anything else.
    pub(crate) fn compile(self) -> Result<BpfProgram, SeccompError> {
        let filter = SeccompFilter::new(
            self.0,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .map_err(SeccompError::Build)?;
        filter.try_into().map_err(SeccompError::Build)
    }
}

/// The KVM ioctls a running sandbox issues.
pub(crate) fn kvm_ioctls() -> Vec<u64> {
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
        iorw(R | W, 0x88, std::mem::size_of::<kvm_msrs>()),  // KVM_GET_MSRS (the TSC)
        iorw(W, 0x89, std::mem::size_of::<kvm_msrs>()),      // KVM_SET_MSRS
        iorw(W, 0x42, std::mem::size_of::<kvm_dirty_log>()), // KVM_GET_DIRTY_LOG
        iorw(R, 0xa4, std::mem::size_of::<kvm_xsave>()),     // KVM_GET_XSAVE
        iorw(W, 0xa5, std::mem::size_of::<kvm_xsave>()),     // KVM_SET_XSAVE
    ]
}

/// What every VMM thread needs: its own memory, the standard streams, time, the kick signal.
pub(crate) const VMM_BASICS: [i64; 25] = [
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
    // A timed wait (futex, nanosleep) a stop and continue interrupted (SIGSTOP/SIGCONT,
    // Ctrl-Z, a debugger) is resumed by the kernel through this call.
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity, // glibc sizing malloc arenas for a new thread
    libc::SYS_close,
    libc::SYS_rseq, // the C library's per-thread registration
    libc::SYS_exit, // threads ending
    libc::SYS_exit_group,
];

/// What canonicalising a path, reading an allowed file and listing an allowed directory
/// need (besides `openat`).
const FILE_READS: [i64; 14] = [
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
    libc::SYS_getdents64,
    libc::SYS_getdents,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
];

/// What starting a process's micro-VM and its VMM thread needs besides the running
/// sandbox's calls: KVM's creation ioctls (on the already open `/dev/kvm`), `mincore` to copy
/// only the pages a parent has, and a new thread's own set-up (its stack's guard page comes
/// from `mprotect` without `PROT_EXEC`, allowed anyway).
fn process_rules(rules: &mut Rules) -> Result<(), SeccompError> {
    use kvm_bindings::*;
    const fn io(nr: u64) -> u64 {
        (0xae << 8) | nr
    }
    const fn iow(nr: u64, size: usize) -> u64 {
        (1 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
    }
    for nr in [
        io(0x01),                                                      // KVM_CREATE_VM
        io(0x03),                                                      // KVM_CHECK_EXTENSION
        io(0x04),                                                      // KVM_GET_VCPU_MMAP_SIZE
        io(0x41),                                                      // KVM_CREATE_VCPU
        iow(0x46, std::mem::size_of::<kvm_userspace_memory_region>()), // KVM_SET_USER_MEMORY_REGION
        iow(0x90, std::mem::size_of::<kvm_cpuid2>()),                  // KVM_SET_CPUID2
        iow(0xa7, std::mem::size_of::<kvm_xcrs>()),                    // KVM_SET_XCRS
        io(0xa3),                                                      // KVM_GET_TSC_KHZ
    ] {
        rules.allow_when(libc::SYS_ioctl, 1, SeccompCmpOp::Eq, nr)?;
    }
    // A thread only: clone with CLONE_THREAD. clone3's flags are behind a pointer, which
    // seccomp cannot read, and a refusal here kills, so clone3 is allowed too: whatever it
    // starts stays under this same filter, which allows no execve, socket or write open.
    let thread = libc::CLONE_THREAD as u64;
    rules.allow_when(libc::SYS_clone, 0, SeccompCmpOp::MaskedEq(thread), thread)?;
    // pread64: the pagemap a fork reads; sysinfo: the host RAM check of new guest memory; rt_sigaction: the C library sets up
    // its internal signals at the first pthread_create.
    rules.allow(&[
        libc::SYS_clone3,
        libc::SYS_mincore,
        libc::SYS_set_robust_list,
        libc::SYS_sysinfo,
        libc::SYS_rt_sigaction,
        libc::SYS_pread64,
    ]);
    let name = libc::PR_SET_NAME as u64; // the thread's name
    rules.allow_when(libc::SYS_prctl, 0, SeccompCmpOp::Eq, name)?;
    Ok(())
}

/// The filter for a sandbox VMM. `files`: the policy lets the program open host files
/// (read-only opens and the path resolution they need are allowed); `processes`: the program
/// may start processes (each a micro-VM on a VMM thread of its own).
pub fn sandbox_filter(files: bool, processes: bool) -> Result<BpfProgram, SeccompError> {
    let mut rules = Rules::default();
    for nr in kvm_ioctls() {
        rules.allow_when(libc::SYS_ioctl, 1, SeccompCmpOp::Eq, nr)?;
    }
    if processes {
        process_rules(&mut rules)?;
    }
    // mmap/mprotect for the VMM's own heap, never executable.
    let exec = SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64);
    rules.allow_when(libc::SYS_mmap, 2, exec.clone(), 0)?;
    rules.allow_when(libc::SYS_mprotect, 2, exec, 0)?;
    // Debug builds of std check a descriptor with fcntl(F_GETFD) before closing it.
    rules.allow_when(libc::SYS_fcntl, 1, SeccompCmpOp::Eq, libc::F_GETFD as u64)?;
    rules.allow(&VMM_BASICS);
    // The standard streams as they really are: their metadata, terminal queries (read-only),
    // seeking stdin when it is a regular file.
    rules.allow(&[libc::SYS_fstat]);
    for request in [libc::TCGETS, libc::TIOCGWINSZ, libc::FIONREAD] {
        rules.allow_when(libc::SYS_ioctl, 1, SeccompCmpOp::Eq, request)?;
    }
    rules.allow_when(libc::SYS_lseek, 0, SeccompCmpOp::Eq, 0)?;
    // Waiting for the standard streams (poll/select served for the program).
    rules.allow(&[libc::SYS_ppoll]);
    if files {
        // Read-only opens of files the policy allows (checked by the dispatcher first).
        let writes = (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64;
        rules.allow_when(libc::SYS_openat, 2, SeccompCmpOp::MaskedEq(writes), 0)?;
        rules.allow(&FILE_READS);
    }
    rules.compile()
}

/// Prepares the VMM for starting threads once confined: glibc's malloc sizes a new thread's
/// arena from `/sys/devices/system/cpu/online`, an `open` the filter forbids when the policy
/// opens no files; with one arena for all threads it never looks.
pub fn prepare_for_threads() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a malloc tunable; M_ARENA_MAX with 1 is a valid setting.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Applies `filter` to every thread of this process (the vCPU thread and the watchdog).
pub fn confine_process(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter_all_threads(filter).map_err(SeccompError::Apply)
}

/// Applies `filter` to the calling thread only.
pub fn confine_thread(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(SeccompError::Apply)
}

/// Applies a thread's seccomp filter (if any) to the calling thread. A filter that cannot be
/// applied ends the process: running unconfined when confinement was asked for is worse.
pub(crate) fn confine_role(role: &str, filter: Option<BpfProgram>) {
    if let Some(filter) = filter {
        if let Err(e) = crate::seccomp::confine_thread(&filter) {
            eprintln!("rypervisor: cannot confine the {role} thread: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs `f` in a forked child and returns how the child ended (wait status).
    pub(super) fn in_child(f: impl FnOnce() -> i32) -> i32 {
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

    /// What every role does: read the clock, write (zero bytes) to stderr. 0 if it worked.
    fn own_work() -> i32 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: plain system calls on live locals.
        let ok = unsafe {
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) == 0
                && libc::write(2, [].as_ptr(), 0) == 0
        };
        if ok {
            0
        } else {
            11
        }
    }

    /// Checks that a thread confined by `filter` does its own work and is killed with SIGSYS
    /// by a `socket(domain, ...)` call.
    pub(super) fn assert_role(role: &str, filter: &BpfProgram, domain: i32) {
        let status = in_child(|| match confine_thread(filter) {
            Ok(()) => own_work(),
            Err(_) => 10,
        });
        let done = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        assert!(done, "{role}: its own work failed ({status:#x})");
        let status = in_child(|| {
            if confine_thread(filter).is_err() {
                return 10;
            }
            // SAFETY: a plain system call; the filter kills the process here.
            unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
            12
        });
        assert!(
            libc::WIFSIGNALED(status),
            "{role}: socket() was allowed (exit {})",
            libc::WEXITSTATUS(status)
        );
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS, "{role}");
    }

    #[test]
    fn the_filter_kills_a_forbidden_call_and_allows_the_vmm_s_own() {
        assert_role(
            "sandbox",
            &sandbox_filter(false, false).unwrap(),
            libc::AF_INET,
        );
    }

    #[test]
    fn without_files_in_the_policy_even_a_read_only_open_kills() {
        let filter = sandbox_filter(false, false).unwrap();
        let status = in_child(|| {
            if confine_thread(&filter).is_err() {
                return 10;
            }
            // SAFETY: a plain system call with a static NUL-terminated path.
            unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
            12
        });
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    fn with_files_allowed_read_only_opens_pass_and_writes_kill() {
        let filter = sandbox_filter(true, false).unwrap();
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
