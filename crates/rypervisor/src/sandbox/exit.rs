//! How a sandboxed program ended ([`Exit`]), and the one-line report a shell user expects
//! (a CPU exception is reported as the signal Linux would have sent).

use super::linux::sysno;
use super::policy::STRICT_STATUS;

/// How the program ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// exit/exit_group with this status.
    Exited(i32),
    /// `--strict` ended it at a system call outside the policy.
    Denied {
        /// The call's number.
        nr: u64,
    },
    /// A CPU exception at CPL3.
    Fault(Fault),
    /// A signal whose default action ends the process (from the program itself: `kill`,
    /// `raise`, `alarm`, or a signal frame it could not take).
    Signaled(i32),
    /// The time limit expired.
    TimedOut,
    /// The VM stopped for a reason that is not the program's doing (emulation failure,
    /// triple fault, unexpected exit).
    Crashed(String),
}

/// Exit status for a CPU exception, as a shell reports a signal (128 + signal).
pub fn fault_status(vector: u8) -> i32 {
    128 + match vector {
        0 | 16 | 19 => libc::SIGFPE,
        1 | 3 => libc::SIGTRAP,
        6 => libc::SIGILL,
        17 => libc::SIGBUS,
        _ => libc::SIGSEGV,
    }
}

impl Exit {
    /// The process exit status a shell would show.
    pub fn status(&self) -> i32 {
        match self {
            Exit::Exited(s) => *s,
            Exit::Denied { .. } => STRICT_STATUS,
            Exit::Fault(f) => fault_status(f.vector),
            Exit::Signaled(sig) => 128 + sig,
            Exit::TimedOut => 124,
            Exit::Crashed(_) => 1,
        }
    }

    /// A one-line report for stderr, or `None` for a normal exit.
    pub fn report(&self) -> Option<String> {
        match self {
            Exit::Exited(_) => None,
            Exit::Denied { nr } => Some(format!(
                "program killed: system call {} ({nr}) is not allowed (--strict)",
                sysno::name(*nr)
            )),
            Exit::Fault(f) => Some(f.to_string()),
            Exit::Signaled(sig) => Some(format!("program killed by {}", signal_name(*sig))),
            Exit::TimedOut => Some("program stopped: time limit expired".into()),
            Exit::Crashed(why) => Some(format!("sandbox VM stopped: {why}")),
        }
    }
}

/// A signal's name (`SIGTERM`), or its number.
pub fn signal_name(sig: i32) -> String {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match usize::try_from(sig - 1).ok().and_then(|i| NAMES.get(i)) {
        Some(name) => (*name).to_string(),
        None => format!("signal {sig}"),
    }
}

/// A CPU exception the program caused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Vector.
    pub vector: u8,
    /// Error code, if the vector has one.
    pub error_code: Option<u64>,
    /// Faulting instruction.
    pub rip: u64,
    /// Stack pointer at the fault.
    pub rsp: u64,
    /// Faulting address (page faults).
    pub address: Option<u64>,
    /// The instruction, disassembled (empty if unreadable).
    pub instruction: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let signal = match fault_status(self.vector) - 128 {
            libc::SIGFPE => "SIGFPE",
            libc::SIGILL => "SIGILL",
            libc::SIGTRAP => "SIGTRAP",
            libc::SIGBUS => "SIGBUS",
            _ => "SIGSEGV",
        };
        write!(
            f,
            "program killed by {signal}: {} at rip {:#x}",
            crate::arch::exception_name(self.vector),
            self.rip
        )?;
        if !self.instruction.is_empty() {
            write!(f, " ({})", self.instruction)?;
        }
        if let Some(a) = self.address {
            write!(f, ", address {a:#x}")?;
        }
        if let Some(c) = self.error_code {
            write!(f, ", error code {c:#x}")?;
        }
        Ok(())
    }
}
