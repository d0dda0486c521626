//! The VM object: a KVM virtual machine file descriptor and its memory slots.

use std::os::fd::AsRawFd;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

use crate::kvm::KvmSystem;
use crate::memory::GuestRam;

/// Errors creating or configuring a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM_CREATE_VM failed.
    #[error("KVM_CREATE_VM failed: {0}")]
    Create(#[source] kvm_ioctls::Error),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM_SET_USER_MEMORY_REGION (slot {slot}) failed: {source}")]
    SetMemory {
        /// Slot number.
        slot: u32,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// KVM_GET_DIRTY_LOG failed.
    #[error("KVM_GET_DIRTY_LOG failed: {0}")]
    DirtyLog(#[source] kvm_ioctls::Error),
}

/// A KVM virtual machine.
#[derive(Debug)]
pub struct Vm {
    /// The kvm-ioctls handle.
    pub fd: VmFd,
}

impl Vm {
    /// `KVM_CREATE_VM` with the default machine type.
    pub fn create(kvm: &KvmSystem) -> Result<Self, VmError> {
        Ok(Self {
            fd: kvm.kvm.create_vm().map_err(VmError::Create)?,
        })
    }

    /// The raw file descriptor number (for narration).
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Maps every region of `ram` into the guest, one memory slot each, starting at `first_slot`.
    /// Returns the region descriptions handed to KVM.
    pub fn register_ram(
        &self,
        ram: &GuestRam,
        first_slot: u32,
    ) -> Result<Vec<kvm_userspace_memory_region>, VmError> {
        self.register_ram_with(ram, first_slot, false)
    }

    /// Like [`Vm::register_ram`]; with `log_dirty` KVM records every page the guest writes
    /// (`KVM_MEM_LOG_DIRTY_PAGES`), read back with [`Vm::take_dirty_log`].
    pub fn register_ram_with(
        &self,
        ram: &GuestRam,
        first_slot: u32,
        log_dirty: bool,
    ) -> Result<Vec<kvm_userspace_memory_region>, VmError> {
        let mut done = Vec::new();
        for (slot, (guest, host, size)) in (first_slot..).zip(ram.regions()) {
            let region = kvm_userspace_memory_region {
                slot,
                flags: if log_dirty {
                    kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
                guest_phys_addr: guest,
                memory_size: size,
                userspace_addr: host,
            };
            // SAFETY: `host..host+size` is a live anonymous mapping owned by `ram`'s
            // GuestMemoryMmap, which the Machine keeps alive for as long as this VM fd exists
            // (both are dropped together; the VM is dropped first by field order).
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(|source| VmError::SetMemory { slot, source })?;
            done.push(region);
        }
        Ok(done)
    }

    /// `KVM_GET_DIRTY_LOG`: one bit per 4 KiB page of `slot` written by the guest since the
    /// last call (the call clears the log).
    pub fn take_dirty_log(&self, slot: u32, size: u64) -> Result<Vec<u64>, VmError> {
        self.fd
            .get_dirty_log(slot, size as usize)
            .map_err(VmError::DirtyLog)
    }
}
