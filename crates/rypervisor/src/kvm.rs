//! The KVM system object: opening `/dev/kvm` and checking what it offers.
//!
//! Everything starts with a file descriptor on `/dev/kvm` (LWN step 1). The errors here are
//! the first a new user meets, so each one says what to do about it.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm};

/// The only KVM API version that has ever shipped (and the one this VMM speaks).
pub const KVM_API_VERSION: i32 = 12;

/// The default KVM device node.
pub const DEFAULT_DEVICE: &str = "/dev/kvm";

/// Errors while opening and checking the KVM device.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// The device node does not exist.
    #[error("{0} does not exist: KVM is not available (load the kvm_intel or kvm_amd module, or enable virtualization in the firmware)")]
    Missing(PathBuf),
    /// The device node exists but cannot be opened read-write by this user.
    #[error("cannot open {0}: permission denied (add your user to the 'kvm' group, e.g. `sudo usermod -aG kvm $USER`, then log in again)")]
    PermissionDenied(PathBuf),
    /// Another error while opening.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The device path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path exists, but opening it reaches no device.
    #[error("{0} exists but is not the KVM device (opening it reaches no device): give --kvm-device /dev/kvm")]
    NotADevice(PathBuf),
    /// The file opened but does not answer KVM ioctls.
    #[error("{0} is not a KVM device (KVM_GET_API_VERSION failed: {1})")]
    NotKvm(PathBuf, vmm_sys_util::errno::Error),
    /// The kernel speaks another KVM API version.
    #[error("{path} reports KVM API version {found}; rypervisor needs version {KVM_API_VERSION}")]
    ApiVersion {
        /// The device path.
        path: PathBuf,
        /// The version the kernel reported.
        found: i32,
    },
    /// A capability this VMM needs is missing.
    #[error("KVM lacks a capability rypervisor needs: {0}")]
    MissingCapability(&'static str),
}

/// A KVM ioctl that failed, by name: the one ioctl error type of the crate (VM, vCPU, boot
/// and sandbox errors wrap it).
#[derive(Debug, thiserror::Error)]
#[error("{name} failed: {source}")]
pub struct IoctlError {
    /// The ioctl, as `<linux/kvm.h>` names it.
    pub name: &'static str,
    /// What KVM returned.
    #[source]
    pub source: kvm_ioctls::Error,
}

/// `map_err(ioctl("KVM_..."))`: names a failed kvm-ioctls call.
pub fn ioctl(name: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> IoctlError {
    move |source| IoctlError { name, source }
}

/// An open, checked KVM system file descriptor.
#[derive(Debug)]
pub struct KvmSystem {
    /// The kvm-ioctls handle.
    pub kvm: Kvm,
    /// The path that was opened.
    pub path: PathBuf,
    /// The API version it reported (always [`KVM_API_VERSION`] once open succeeded).
    pub api_version: i32,
}

impl KvmSystem {
    /// Opens `path` (usually `/dev/kvm`) read-write, close-on-exec, and checks the API version
    /// and the `KVM_CAP_USER_MEMORY` capability, as LWN step 1 does.
    pub fn open(path: &Path) -> Result<Self, KvmError> {
        let c_path =
            CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| KvmError::Open {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?;
        let kvm = Kvm::new_with_path(&c_path).map_err(|e| open_error(path, e.errno()))?;
        let api_version = kvm.get_api_version();
        if api_version < 0 {
            return Err(KvmError::NotKvm(
                path.to_owned(),
                vmm_sys_util::errno::Error::last(),
            ));
        }
        if api_version != KVM_API_VERSION {
            return Err(KvmError::ApiVersion {
                path: path.to_owned(),
                found: api_version,
            });
        }
        if !kvm.check_extension(Cap::UserMemory) {
            return Err(KvmError::MissingCapability("KVM_CAP_USER_MEMORY"));
        }
        Ok(Self {
            kvm,
            path: path.to_owned(),
            api_version,
        })
    }

    /// The raw file descriptor number (for narration).
    pub fn fd(&self) -> i32 {
        self.kvm.as_raw_fd()
    }
}

/// Maps an `open(2)` errno on the KVM device to an error that tells the user what to do.
pub fn open_error(path: &Path, errno: i32) -> KvmError {
    match errno {
        // A device node whose driver is not there: not KVM, if the node itself exists.
        libc::ENODEV | libc::ENXIO if path.exists() => KvmError::NotADevice(path.to_owned()),
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::Missing(path.to_owned()),
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied(path.to_owned()),
        e => KvmError::Open {
            path: path.to_owned(),
            source: std::io::Error::from_raw_os_error(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_errors_say_what_to_do() {
        let p = Path::new("/dev/kvm");
        assert!(open_error(p, libc::ENOENT)
            .to_string()
            .contains("kvm_intel"));
        assert!(open_error(p, libc::EACCES).to_string().contains("group"));
        assert!(matches!(open_error(p, libc::EIO), KvmError::Open { .. }));
        // /dev/tty without a controlling terminal: ENXIO on a node that exists.
        let tty = open_error(Path::new("/dev/tty"), libc::ENXIO);
        assert!(matches!(tty, KvmError::NotADevice(_)), "{tty}");
        assert!(open_error(Path::new("/no/kvm"), libc::ENXIO)
            .to_string()
            .contains("does not exist"));
    }

    #[test]
    fn missing_device_is_reported_as_missing() {
        let err = KvmSystem::open(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(matches!(err, KvmError::Missing(_)), "{err}");
    }

    #[test]
    fn a_file_that_is_not_kvm_is_refused() {
        let err = KvmSystem::open(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, KvmError::NotKvm(..)), "{err}");
    }
}
