//! What `--explain` says while a machine runs: the devices on the bus, the `KVM_RUN` ioctl,
//! each VM exit with the instruction at RIP, and the registers before and after.

use kvm_bindings::{kvm_regs, kvm_sregs};

use super::{Machine, MachineError};
use crate::explain::{self, Event, Observer};
use crate::vcpu::{ExitAction, Stop};

impl Machine {
    /// The devices and the first `KVM_RUN`; returns the registers before it.
    pub(super) fn narrate_start(
        &self,
        obs: &mut dyn Observer,
    ) -> Result<(kvm_regs, kvm_sregs), MachineError> {
        let devices: Vec<String> = self
            .bus
            .ranges()
            .iter()
            .map(|r| {
                let last = r.base + r.len - 1;
                format!("{} {:#x}..{last:#x}: {}", r.space, r.base, r.name)
            })
            .collect();
        let listed = if devices.is_empty() {
            "none".to_string()
        } else {
            devices.join("; ")
        };
        obs.event(Event::Note {
            text: format!(
                "Devices on the bus (an access to anything else is counted and ignored): {listed}."
            ),
        });
        let (regs, sregs) = self.vcpu.state()?;
        obs.event(Event::Ioctl {
            name: "KVM_RUN",
            fd: self.vcpu.raw_fd(),
            arg: "0".into(),
            result: "0 on each VM exit; kvm_run.exit_reason says why (the loop below)".into(),
        });
        Ok((regs, sregs))
    }

    /// One exit: its reason, details, the instruction at RIP and what the VMM does next.
    pub(super) fn narrate_exit(
        &mut self,
        obs: &mut dyn Observer,
        number: u64,
        reason: &'static str,
        detail: String,
        action: &ExitAction,
    ) {
        let instruction = self
            .vcpu
            .state()
            .ok()
            .and_then(|(r, s)| self.decode_at(r.rip, &s));
        let action = match action {
            ExitAction::Continue | ExitAction::Kicked | ExitAction::Syscall => {
                "handled; KVM_RUN again".to_string()
            }
            ExitAction::Stop(Stop::Requested(v)) => {
                format!("exit device: the VM ends with status {v}")
            }
            ExitAction::Stop(Stop::Halted) => {
                "the guest halted; with no interrupt to wake it, the VM ends".into()
            }
            ExitAction::Stop(s) => format!("the VM ends: {s:?}"),
        };
        // On hardware KVM, RIP still points at an `in`/`out` when its exit reaches the VMM (KVM
        // skips it on the next KVM_RUN); when KVM emulated the instruction, RIP is already past it.
        let exiting = instruction.as_ref().is_some_and(|i| {
            reason == "KVM_EXIT_IO" && (i.text.starts_with("in") || i.text.starts_with("out"))
        });
        let rip_is = if exiting {
            "the exiting instruction"
        } else {
            "the next instruction"
        };
        obs.event(Event::Exit {
            number,
            reason,
            detail,
            instruction,
            rip_is,
            action,
        });
    }
}

/// The register tables from the first `KVM_RUN` to the end, changes marked.
pub(super) fn end(
    obs: &mut dyn Observer,
    (regs, sregs): (&kvm_regs, &kvm_sregs),
    (end_regs, end_sregs): (&kvm_regs, &kvm_sregs),
) {
    obs.event(Event::Registers {
        title: "registers: at the first KVM_RUN → at the end".into(),
        rows: explain::diff(&explain::regs_fields(regs), &explain::regs_fields(end_regs)),
    });
    let srows = explain::diff(
        &explain::sregs_fields(sregs),
        &explain::sregs_fields(end_sregs),
    );
    if srows.iter().any(|r| r.changed) {
        obs.event(Event::Registers {
            title: "special registers: at the first KVM_RUN → at the end".into(),
            rows: srows,
        });
    }
}
