//! How a `rypervisor run` guest ended ([`Outcome`]) and the report a person reads about it.

use std::fmt::Write as _;

use kvm_bindings::{kvm_regs, kvm_sregs};

use crate::arch::ExceptionFrame;
use crate::disasm::Decoded;
use crate::vcpu::{register_dump, ExitStats, InternalErrorInfo};

/// A CPU exception the guest took, caught by the VMM's IDT stubs.
pub type ExceptionInfo = ExceptionFrame;

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote this status to the exit device.
    Exited(u8),
    /// The guest executed `hlt` (nothing can wake it: there are no interrupts).
    Halted,
    /// The timeout expired.
    TimedOut,
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault,
    /// The guest took a CPU exception.
    Exception(ExceptionInfo),
    /// The hardware refused to enter the guest.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// Host CPU.
        cpu: u32,
    },
    /// KVM could not handle something the guest did.
    InternalError(InternalErrorInfo),
    /// An exit this VMM does not handle.
    UnexpectedExit(&'static str),
}

impl Outcome {
    /// The process exit status `rypervisor run` uses: the guest's own status, 0 for `hlt`,
    /// 124 for a timeout (like `timeout(1)`), 2 for a triple fault, 3 for other faults.
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::Exited(v) => i32::from(*v),
            Outcome::Halted => 0,
            Outcome::TimedOut => 124,
            Outcome::TripleFault => 2,
            _ => 3,
        }
    }

    /// Whether this is a guest failure worth a register report.
    pub fn is_fault(&self) -> bool {
        !matches!(self, Outcome::Exited(_) | Outcome::Halted)
    }

    /// The first lines of the report: what happened.
    fn headline(&self) -> String {
        match self {
            Outcome::TimedOut => "guest stopped: timeout expired\n".into(),
            Outcome::TripleFault => "guest triple fault (KVM_EXIT_SHUTDOWN): an exception occurred that \
                the guest could not handle, not even as a double fault\n"
                .into(),
            Outcome::Exception(e) => {
                let mut s = format!(
                    "guest exception {} (vector {}) at rip {:#x}, cpl {}",
                    e.name(),
                    e.vector,
                    e.rip,
                    e.cs & 3
                );
                if let Some(code) = e.error_code {
                    let _ = write!(s, ", error code {code:#x}");
                }
                if let Some(cr2) = e.cr2 {
                    let _ = write!(s, ", address {cr2:#x}");
                }
                s + "\n  (rip, rsp and rflags below are from the exception frame)\n"
            }
            Outcome::FailEntry { reason, cpu } => format!(
                "KVM_EXIT_FAIL_ENTRY: the CPU refused to enter the guest (hardware reason {reason:#x}, \
                 host cpu {cpu}); the guest state is invalid\n"
            ),
            Outcome::InternalError(e) => e.details(),
            Outcome::UnexpectedExit(name) => {
                format!("unexpected VM exit {name}: rypervisor does not handle it\n")
            }
            Outcome::Exited(v) => format!("guest exited with status {v}\n"),
            Outcome::Halted => "guest halted\n".into(),
        }
    }
}

/// The result of [`Machine::run`](super::Machine::run).
#[derive(Clone, Debug)]
pub struct RunReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Exit counts and timing.
    pub stats: ExitStats,
    /// Registers at the end.
    pub regs: kvm_regs,
    /// Special registers at the end.
    pub sregs: kvm_sregs,
    /// The instruction that caused the end (at the faulting RIP for exceptions).
    pub instruction: Option<Decoded>,
}

impl RunReport {
    /// A multi-line, human-readable account of a fault: what happened, where, the
    /// instruction, and the registers.
    pub fn fault_report(&self) -> String {
        let mut s = self.outcome.headline();
        if let Some(i) = &self.instruction {
            let _ = writeln!(s, "  instruction: {i}");
        }
        s + &register_dump(&self.regs, &self.sregs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_say_what_and_where() {
        let e = ExceptionFrame {
            vector: 14,
            error_code: Some(2),
            rip: 0x1234,
            cs: 0x2b,
            rflags: 2,
            rsp: 0x8000,
            cr2: Some(0xdead_0000),
        };
        let report = RunReport {
            outcome: Outcome::Exception(e),
            stats: ExitStats::default(),
            regs: kvm_regs::default(),
            sregs: kvm_sregs::default(),
            instruction: None,
        };
        let text = report.fault_report();
        assert!(text.starts_with(
            "guest exception #PF page fault (vector 14) at rip 0x1234, cpl 3, error code 0x2, \
             address 0xdead0000"
        ));
        assert!(text.contains("cr0=0x0"));
        assert_eq!(report.outcome.exit_status(), 3);
        assert_eq!(Outcome::TripleFault.exit_status(), 2);
        assert!(!Outcome::Halted.is_fault());
    }
}
