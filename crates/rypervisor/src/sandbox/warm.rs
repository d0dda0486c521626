//! Snapshots and warm sandboxes. [`Sandbox::snapshot`] returns the whole state as a value
//! (memory, registers, FPU/SSE/AVX state, the process); [`Sandbox::restore`] puts it back,
//! copying only the pages written since (KVM's dirty log ∪ the pages the VMM wrote or
//! discarded) when the snapshot is the last one taken or restored, every page otherwise.
//! [`WarmSandbox`] serves one request per call from a snapshot taken where the program
//! first reads stdin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_xsave};

use super::exit::Exit;
use super::host::BufferHost;
use super::layout;
use super::linux::Process;
use super::run::Sandbox;
use super::SandboxError;
use crate::kvm::ioctl;
use crate::memory::PAGE_SIZE;
use crate::vm::VmError;

/// What a reset did.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResetStats {
    /// Pages copied back from the snapshot.
    pub pages: u64,
    /// Time the reset took.
    pub time: Duration,
}

/// Everything needed to put a sandbox back where it was.
pub struct Snapshot {
    /// Which snapshot this is (the dirty logs are relative to the last one taken/restored).
    id: u64,
    /// The sandbox it belongs to.
    owner: u64,
    memory: Vec<u8>,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: Box<kvm_xsave>,
    process: Process,
    paused: bool,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("id", &self.id)
            .field("memory", &self.memory.len())
            .finish_non_exhaustive()
    }
}

/// Snapshot ids, unique in the process.
static NEXT_SNAPSHOT: AtomicU64 = AtomicU64::new(1);

impl Sandbox {
    /// Snapshots the whole sandbox: memory, registers, FPU state and process state.
    pub fn snapshot(&mut self) -> Result<Snapshot, SandboxError> {
        if self.process.open_files() > 0 {
            return Err(SandboxError::FilesOpen(self.process.open_files()));
        }
        // Flush pending synced registers so the ioctls below see them.
        self.vcpu.flush_sync_regs()?;
        let (regs, sregs) = self.vcpu.state()?;
        let xsave = Box::new(self.vcpu.fd().get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?);
        let mut memory = vec![0u8; self.mem.size() as usize];
        self.mem.ram().read(0, &mut memory)?;
        // Start both dirty logs afresh from this point.
        self.take_dirty()?;
        let id = NEXT_SNAPSHOT.fetch_add(1, Ordering::Relaxed);
        self.baseline = Some(id);
        self.sregs_touched = false;
        Ok(Snapshot {
            id,
            owner: self.id,
            memory,
            regs,
            sregs,
            xsave,
            process: self.process.clone(),
            paused: self.paused,
        })
    }

    /// Pages written since the last call, by the guest (KVM's log) or the VMM.
    fn take_dirty(&mut self) -> Result<Vec<u64>, SandboxError> {
        let mut dirty = self.mem.take_vmm_dirty();
        let guest = self
            .vm
            .get_dirty_log(0, self.mem.size() as usize)
            .map_err(VmError::DirtyLog)?;
        for (d, g) in dirty.iter_mut().zip(guest) {
            *d |= g;
        }
        Ok(dirty)
    }

    /// Puts the sandbox back to `snap`: dirtied pages, registers, FPU/SSE/AVX state, FS base
    /// and the process state (heap, mappings, signals).
    pub fn restore(&mut self, snap: &Snapshot) -> Result<ResetStats, SandboxError> {
        let started = Instant::now();
        if snap.owner != self.id {
            return Err(SandboxError::ForeignSnapshot);
        }
        let dirty = self.take_dirty()?;
        let pages = if self.baseline == Some(snap.id) {
            self.copy_pages(snap, &dirty)?
        } else {
            // Written since another snapshot: the log does not cover this one's changes.
            self.mem.ram().write(0, &snap.memory)?;
            self.mem.size() / PAGE_SIZE
        };
        self.baseline = Some(snap.id);
        self.write_time_page()?;
        self.fpu_saved.clear();
        // Through kvm_run's synced copy when there is one, which must not keep the last exit's
        // registers: the next system call reads its arguments from there.
        self.vcpu.set_regs(&snap.regs)?;
        if self.sregs_touched {
            self.vcpu.set_sregs(&snap.sregs)?;
        }
        self.sregs_touched = false;
        // SAFETY: the buffer came from KVM_GET_XSAVE on this vCPU, so it has the layout and
        // size (the 4 KiB legacy area; the sandbox never enables dynamic XSTATE features such
        // as AMX, which would need KVM_GET_XSAVE2) that KVM_SET_XSAVE reads.
        unsafe { self.vcpu.fd().set_xsave(&snap.xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
        if self.process.fs_base() != snap.process.fs_base() {
            let base = snap.process.fs_base();
            self.vcpu.set_msrs(&[(layout::msr::FS_BASE, base)])?;
        }
        self.process = snap.process.clone();
        self.paused = snap.paused;
        Ok(ResetStats {
            pages,
            time: started.elapsed(),
        })
    }

    /// Copies back the pages set in `dirty`; returns how many.
    fn copy_pages(&self, snap: &Snapshot, dirty: &[u64]) -> Result<u64, SandboxError> {
        let mut pages = 0;
        for (w, word) in dirty.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let bit = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let addr = (w as u64 * 64 + bit) * PAGE_SIZE;
                let at = addr as usize;
                let page = &snap.memory[at..at + PAGE_SIZE as usize];
                self.mem.ram().write(addr, page)?;
                pages += 1;
            }
        }
        Ok(pages)
    }
}

/// The reply to one request.
#[derive(Clone, Debug)]
pub struct Reply {
    /// How the program ended.
    pub exit: Exit,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
    /// The reset after the request.
    pub reset: ResetStats,
}

/// A sandbox snapshotted at the program's first read of stdin, serving one request per call.
#[derive(Debug)]
pub struct WarmSandbox {
    sandbox: Sandbox,
    snapshot: Snapshot,
    startup_output: BufferHost,
}

impl WarmSandbox {
    pub(super) fn new(sandbox: Sandbox, snapshot: Snapshot, startup_output: BufferHost) -> Self {
        Self {
            sandbox,
            snapshot,
            startup_output,
        }
    }

    /// What the program wrote before the snapshot (start-up output).
    pub fn startup_output(&self) -> (&[u8], &[u8]) {
        (&self.startup_output.stdout, &self.startup_output.stderr)
    }

    /// Serves one request: `input` is the program's stdin; then resets to the snapshot.
    pub fn call(&mut self, input: &[u8]) -> Result<Reply, SandboxError> {
        let mut host = BufferHost::with_input(input);
        let exit = self.sandbox.run(&mut host)?;
        let reset = self.sandbox.restore(&self.snapshot)?;
        Ok(Reply {
            exit,
            stdout: host.stdout,
            stderr: host.stderr,
            reset,
        })
    }

    /// The sandbox underneath (statistics of the last call).
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }
}
