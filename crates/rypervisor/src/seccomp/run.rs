//! The seccomp filters of `rypervisor run` and `demo`, one per thread role, each applied by
//! its thread once the VM is built: the vCPU (the caller's thread: `KVM_RUN`, the register
//! ioctls, narration and reports on stderr), the console input thread (reads stdin once the
//! guest reads the UART), the console output thread (writes stdout), the watchdog (`--timeout`:
//! waits, then kicks the vCPU). Everything else kills the process with SIGSYS.

use seccompiler::{BpfProgram, SeccompCmpOp};

use super::boot::{base, boot_vcpu_ioctls};
use super::SeccompError;

/// One filter per thread role.
#[derive(Clone, Debug)]
pub struct RunFilters {
    /// The vCPU: the thread that calls `Machine::run` (it stays confined afterwards).
    pub vcpu: BpfProgram,
    /// The UART's input reader.
    pub console_input: BpfProgram,
    /// The UART's output writer.
    pub console_output: BpfProgram,
    /// The `--timeout` watchdog.
    pub watchdog: BpfProgram,
}

/// Builds the four filters.
pub fn run_filters() -> Result<RunFilters, SeccompError> {
    let mut vcpu = base()?;
    for nr in boot_vcpu_ioctls() {
        vcpu.allow_when(libc::SYS_ioctl, 1, SeccompCmpOp::Eq, nr)?;
    }
    Ok(RunFilters {
        vcpu: vcpu.compile()?,
        console_input: base()?.compile()?,
        console_output: base()?.compile()?,
        watchdog: base()?.compile()?,
    })
}

/// A hook that confines the thread it runs on with `filter` (none: unconfined).
pub fn confine_hook(role: &'static str, filter: Option<BpfProgram>) -> Box<dyn FnOnce() + Send> {
    Box::new(move || super::confine_role(role, filter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_roles_allow_their_work_and_kill_a_socket() {
        let f = run_filters().unwrap();
        for (role, filter) in [
            ("vcpu", &f.vcpu),
            ("console input", &f.console_input),
            ("console output", &f.console_output),
            ("watchdog", &f.watchdog),
        ] {
            // No socket at all: AF_UNIX is refused too.
            crate::seccomp::tests::assert_role(role, filter, libc::AF_UNIX);
            crate::seccomp::tests::assert_role(role, filter, libc::AF_INET);
        }
    }
}
