//! The sandbox: one static Linux program in its own KVM micro-VM, with no guest kernel.
//!
//! The program runs at CPL3 in long mode. Each system call it makes leaves the VM (see
//! [`layout`] for the path) and is served by [`linux::Process::dispatch`] under a
//! [`Policy`]; everything else the program does runs natively on the CPU.
//!
//! The types follow the life of a micro-VM, one file each:
//! - [`SandboxBuilder`] (`builder.rs`): program, arguments, environment, memory size, time
//!   limit, policy;
//! - [`Sandbox`] (`run.rs`): built and ready at the program's entry point; [`Sandbox::run`]
//!   runs it to its end and returns an [`Exit`] (`exit.rs`);
//! - [`Snapshot`] and [`WarmSandbox`] (`warm.rs`): [`Sandbox::snapshot`] returns the state as
//!   a value and [`Sandbox::restore`] puts it back, restoring only the pages the program or
//!   the VMM dirtied, the registers and the FPU state; a warm sandbox is snapshotted where
//!   the program first reads stdin and serves one request per [`WarmSandbox::call`];
//! - the host side (`host.rs`): the program's standard streams, clock and randomness.
//!
//! Beside them: [`linux`] (the system calls), [`layout`] (address space and CPU tables),
//! [`program`] (ELF checks and the process start), [`policy`], [`usermem`].
//!
//! ```no_run
//! use rypervisor::sandbox::SandboxBuilder;
//! let sandbox = SandboxBuilder::from_file("./hello".as_ref())?.args(["hello"]).build()?;
//! let mut warm = sandbox.into_warm()?;
//! let reply = warm.call(b"request 1\n")?;
//! println!("{} → {:?}", reply.exit.status(), String::from_utf8_lossy(&reply.stdout));
//! # Ok::<(), rypervisor::sandbox::SandboxError>(())
//! ```

pub mod builder;
pub mod exit;
pub mod handlers;
pub mod host;
pub mod layout;
pub mod linux;
pub mod machine;
pub mod policy;
pub mod program;
pub mod resolve;
pub mod run;
pub mod spawn;
pub mod usermem;
pub mod vdso;
pub mod warm;

pub use builder::SandboxBuilder;
pub use exit::{fault_status, Exit, Fault};
pub use host::{BufferHost, Host, StdHost};
pub use linux::SyscallArgs;
pub use policy::{Policy, PolicyError, STRICT_STATUS};
pub use program::{Program, ProgramError};
pub use run::{RunStats, Sandbox};
pub use warm::{Reply, ResetStats, Snapshot, WarmSandbox};

use crate::hostfile::HostFileError;
use crate::kvm::{IoctlError, KvmError};
use crate::memory::MemoryError;
use crate::vcpu::VcpuError;
use crate::vm::VmError;
use crate::watchdog::WatchdogError;

/// Default guest memory: the whole sandbox, program and heap included.
pub const DEFAULT_MEM: u64 = 64 << 20;
/// Largest stack the program gets (less when memory is small: an eighth of it).
pub const MAX_STACK: u64 = 8 << 20;

/// Errors building or running a sandbox (not the program's own failures: those are
/// [`Exit`]s).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Opening /dev/kvm failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Creating the VM or its memory failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A guest memory problem.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The program cannot run here.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// The program file cannot be read, is not a regular file, or is larger than memory.
    #[error(transparent)]
    File(#[from] HostFileError),
    /// An ioctl failed.
    #[error(transparent)]
    Ioctl(#[from] IoctlError),
    /// A vCPU ioctl failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The watchdog could not start.
    #[error(transparent)]
    Watchdog(#[from] WatchdogError),
    /// The vDSO image could not be built.
    #[error(transparent)]
    Vdso(#[from] vdso::VdsoError),
    /// A snapshot was asked for while the program holds host files open.
    #[error("cannot snapshot: the program holds {0} host file(s) open")]
    FilesOpen(usize),
    /// The program ended before the point a warm sandbox snapshots at.
    #[error("the program ended ({0}) before it read stdin, so there is nothing to snapshot")]
    EndedBeforeSnapshot(String),
    /// The kick signal's handler could not be installed.
    #[error(transparent)]
    Kick(#[from] crate::vcpu::kick::KickError),
    /// The host's streams cannot be shared with a child process (an in-memory host).
    #[error("this host's streams cannot be shared with a child process")]
    NoChildHost,
    /// A process's VMM thread could not start.
    #[error("cannot start a VMM thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A snapshot of another sandbox.
    #[error("the snapshot belongs to another sandbox")]
    ForeignSnapshot,
}
