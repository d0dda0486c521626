//! The vCPU object and the one place that enters the guest.
//!
//! `KVM_RUN` returns whenever the guest does something the kernel wants userspace to handle:
//! port I/O, an access to guest-physical memory with no RAM (MMIO), `hlt`, a triple fault...
//! [`Vcpu::run`] is the only caller of `KVM_RUN` in the library: it retries nothing and hides
//! nothing, but turns `EINTR`/`EAGAIN` and `immediate_exit` into [`VmExit::Kicked`], accounts
//! the time inside and outside the guest, and decodes the exit into one [`VmExit`].
//! [`handle_exit`] then dispatches it (see [`exit`]); every face (`run`, `exec`, `boot`) is a
//! loop of `run` → `handle_exit` → its own reaction to the few exits that end or pause it.
//!
//! Another thread stops a running vCPU with a [`Kicker`] (see [`kick`]).

pub mod exit;
pub mod kick;
pub mod report;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};

pub use exit::{handle_exit, ExitAction, ExitKind, ExitStats, Stop, VmExit};
pub use kick::Kicker;
pub use report::{register_dump, InternalErrorInfo};

use crate::kvm::{ioctl, IoctlError};
use kick::ImmediateExit;

/// Errors from vCPU ioctls.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// An ioctl failed.
    #[error(transparent)]
    Ioctl(#[from] IoctlError),
}

/// A virtual CPU.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    id: u64,
    /// An `out` to this port is a system call ([`VmExit::Syscall`]).
    syscall_port: Option<u16>,
    /// Registers travel through `kvm_run` (`KVM_CAP_SYNC_REGS`) instead of ioctls.
    sync_regs: bool,
    immediate_exit: Arc<ImmediateExit>,
    /// When the last `KVM_RUN` returned (the VMM's time runs from there).
    last_exit: Option<Instant>,
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        // Before the `kvm_run` mapping goes (with `fd`, after this body): no kick may write it.
        self.immediate_exit.forget();
    }
}

impl Vcpu {
    /// Wraps a vCPU that kvm-ioctls created with id `id`.
    pub fn new(mut fd: VcpuFd, id: u64) -> Self {
        let byte: *mut u8 = &mut fd.get_kvm_run().immediate_exit;
        Self {
            immediate_exit: ImmediateExit::new(byte),
            fd,
            id,
            syscall_port: None,
            sync_regs: false,
            last_exit: None,
        }
    }

    /// Names the port whose `out` is a system call (the sandbox's stub).
    pub fn set_syscall_port(&mut self, port: u16) {
        self.syscall_port = Some(port);
    }

    /// Exchanges registers and special registers through `kvm_run` on every exit
    /// (`KVM_CAP_SYNC_REGS`): [`Vcpu::exit_state`] then costs no ioctl.
    pub fn enable_sync_regs(&mut self) {
        self.fd.set_sync_valid_reg(SyncReg::Register);
        self.fd.set_sync_valid_reg(SyncReg::SystemRegister);
        self.sync_regs = true;
    }

    /// The kvm-ioctls handle, for the setup ioctls (it cannot run the vCPU: that needs
    /// `&mut`, which only [`Vcpu::run`] takes).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The vCPU id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The raw file descriptor number (for narration).
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// A handle other threads use to kick this vCPU out of `KVM_RUN`.
    pub fn kicker(&self) -> Kicker {
        Kicker::new(self.immediate_exit.clone())
    }

    /// Enters the guest until its next exit: the only `KVM_RUN` in the library.
    ///
    /// Time from the previous exit to this entry is counted as the VMM's, time inside as the
    /// guest's. A kick (a signal, or `immediate_exit` set by a [`Kicker`]) returns
    /// [`VmExit::Kicked`] with `immediate_exit` cleared, so the caller can check why.
    pub fn run(&mut self, stats: &mut ExitStats) -> Result<VmExit<'_>, VcpuError> {
        let entered = Instant::now();
        if let Some(exited) = self.last_exit {
            stats.vmm_time += entered - exited;
        }
        let result = self.fd.run();
        let exited = Instant::now();
        stats.guest_time += exited - entered;
        self.last_exit = Some(exited);
        match result {
            Ok(exit) => Ok(decode(exit, self.syscall_port)),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.immediate_exit.swap(0);
                Ok(VmExit::Kicked)
            }
            Err(e) => Err(ioctl("KVM_RUN")(e).into()),
        }
    }

    /// Ends a run's accounting: the time since the last exit goes to the VMM.
    pub fn finish(&mut self, stats: &mut ExitStats) {
        if let Some(exited) = self.last_exit.take() {
            stats.vmm_time += exited.elapsed();
        }
    }

    /// The details of the `KVM_EXIT_INTERNAL_ERROR` the last `run` returned.
    pub fn internal_error(&mut self) -> InternalErrorInfo {
        InternalErrorInfo::from_run(self.fd.get_kvm_run())
    }

    /// `KVM_GET_REGS` and `KVM_GET_SREGS`.
    pub fn state(&self) -> Result<(kvm_regs, kvm_sregs), VcpuError> {
        let regs = self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        let sregs = self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        Ok((regs, sregs))
    }

    /// The registers at the last exit: one copy out of `kvm_run` with sync regs enabled,
    /// else two ioctls.
    pub fn exit_state(&self) -> Result<(kvm_regs, kvm_sregs), VcpuError> {
        if self.sync_regs {
            let sync = self.fd.sync_regs();
            Ok((sync.regs, sync.sregs))
        } else {
            self.state()
        }
    }

    /// Sets the registers for the next entry: through `kvm_run` with sync regs enabled.
    pub fn set_regs(&mut self, regs: &kvm_regs) -> Result<(), VcpuError> {
        if self.sync_regs {
            self.fd.sync_regs_mut().regs = *regs;
            self.fd.set_sync_dirty_reg(SyncReg::Register);
            Ok(())
        } else {
            Ok(self.fd.set_regs(regs).map_err(ioctl("KVM_SET_REGS"))?)
        }
    }

    /// Sets the special registers for the next entry (through `kvm_run` with sync regs).
    pub fn set_sregs(&mut self, sregs: &kvm_sregs) -> Result<(), VcpuError> {
        if self.sync_regs {
            self.fd.sync_regs_mut().sregs = *sregs;
            self.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
            Ok(())
        } else {
            Ok(self.fd.set_sregs(sregs).map_err(ioctl("KVM_SET_SREGS"))?)
        }
    }

    /// Writes registers pending in `kvm_run` to the vCPU now (before ioctls that read them,
    /// such as a snapshot's `KVM_GET_SREGS`).
    pub fn flush_sync_regs(&mut self) -> Result<(), VcpuError> {
        if self.sync_regs {
            let regs = self.fd.sync_regs().regs;
            self.fd.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
            self.fd.clear_sync_dirty_reg(SyncReg::Register);
        }
        Ok(())
    }

    /// `KVM_GET_MSRS` for one MSR.
    pub fn get_msr(&self, index: u32) -> Result<u64, VcpuError> {
        let entry = kvm_bindings::kvm_msr_entry {
            index,
            ..Default::default()
        };
        let mut msrs = kvm_bindings::Msrs::from_entries(&[entry])
            .map_err(|_| ioctl("KVM_GET_MSRS")(kvm_ioctls::Error::new(libc::E2BIG)))?;
        match self.fd.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))? {
            1 => Ok(msrs.as_slice()[0].data),
            _ => Err(ioctl("KVM_GET_MSRS")(kvm_ioctls::Error::new(libc::EINVAL)).into()),
        }
    }

    /// `KVM_SET_MSRS` for `(index, value)` pairs.
    pub fn set_msrs(&self, entries: &[(u32, u64)]) -> Result<(), VcpuError> {
        Ok(set_msrs(&self.fd, entries).map_err(ioctl("KVM_SET_MSRS"))?)
    }
}

/// `KVM_SET_MSRS` for `(index, value)` pairs. KVM returns how many it set; fewer than
/// asked is an error here (EINVAL), naming nothing silently lost.
pub fn set_msrs(vcpu: &VcpuFd, entries: &[(u32, u64)]) -> Result<(), kvm_ioctls::Error> {
    let entries: Vec<kvm_bindings::kvm_msr_entry> = entries
        .iter()
        .map(|&(index, data)| kvm_bindings::kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = kvm_bindings::Msrs::from_entries(&entries)
        .map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
    match vcpu.set_msrs(&msrs)? {
        n if n == entries.len() => Ok(()),
        _ => Err(kvm_ioctls::Error::new(libc::EINVAL)),
    }
}

/// Decodes kvm-ioctls' exit into ours: the system-call port named, everything we do not
/// handle reduced to its KVM name.
fn decode(exit: VcpuExit<'_>, syscall_port: Option<u16>) -> VmExit<'_> {
    match exit {
        VcpuExit::IoOut(port, _) if Some(port) == syscall_port => VmExit::Syscall,
        VcpuExit::IoOut(port, data) => VmExit::IoOut(port, data),
        VcpuExit::IoIn(port, data) => VmExit::IoIn(port, data),
        VcpuExit::MmioRead(addr, data) => VmExit::MmioRead(addr, data),
        VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite(addr, data),
        VcpuExit::Hlt => VmExit::Hlt,
        VcpuExit::Shutdown => VmExit::Shutdown,
        VcpuExit::SystemEvent(kind, _) => VmExit::SystemEvent(kind),
        VcpuExit::FailEntry(reason, cpu) => VmExit::FailEntry { reason, cpu },
        VcpuExit::InternalError => VmExit::InternalError,
        VcpuExit::Intr => VmExit::Kicked,
        other => VmExit::Other(other_name(&other)),
    }
}

fn other_name(exit: &VcpuExit<'_>) -> &'static str {
    match exit {
        VcpuExit::Unknown => "KVM_EXIT_UNKNOWN",
        VcpuExit::Exception => "KVM_EXIT_EXCEPTION",
        VcpuExit::Hypercall(_) => "KVM_EXIT_HYPERCALL",
        VcpuExit::Debug(_) => "KVM_EXIT_DEBUG",
        VcpuExit::IrqWindowOpen => "KVM_EXIT_IRQ_WINDOW_OPEN",
        VcpuExit::X86Rdmsr(_) => "KVM_EXIT_X86_RDMSR",
        VcpuExit::X86Wrmsr(_) => "KVM_EXIT_X86_WRMSR",
        VcpuExit::MemoryFault { .. } => "KVM_EXIT_MEMORY_FAULT",
        VcpuExit::Unsupported(_) => "unsupported exit",
        _ => "KVM_EXIT_(other)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_syscall_port_is_named_and_others_pass_through() {
        let data = [7u8];
        assert!(matches!(
            decode(VcpuExit::IoOut(0xf5, &data), Some(0xf5)),
            VmExit::Syscall
        ));
        assert!(matches!(
            decode(VcpuExit::IoOut(0xf5, &data), None),
            VmExit::IoOut(0xf5, [7])
        ));
        assert!(matches!(
            decode(VcpuExit::Unknown, None),
            VmExit::Other("KVM_EXIT_UNKNOWN")
        ));
        assert!(matches!(decode(VcpuExit::Intr, None), VmExit::Kicked));
    }
}
