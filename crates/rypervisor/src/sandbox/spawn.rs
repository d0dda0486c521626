//! Processes at the VM level: a `fork` child as a micro-VM of its own on a VMM thread of its
//! own (`Sandbox::spawn`), `execve` as a new micro-VM in the process's place
//! (`Sandbox::exec`), and the life of a child's thread (`Sandbox::run_child`). The
//! kernel side of both (the child's pid, descriptors and signals; the checked new program)
//! was done by the [`linux`](super::linux) layer, which asked for this with a
//! [`VmRequest`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kvm_bindings::{kvm_regs, kvm_sregs};

use super::exit::Exit;
use super::host::Host;
use super::layout;
use super::linux::tree::{exited_status, signaled_status, Tree, Waker};
use super::linux::{Errno, ExecRequest, Spawn, VmRequest};
use super::machine::{Machine, Start};
use super::run::{Paused, Sandbox};
use super::SandboxError;
use crate::vcpu::kick::ThisThread;
use crate::vcpu::Kicker;

/// The kick of one process's vCPU and thread, shared with the tree as its [`Waker`]. Kicks go
/// through the lock, and the thread disarms it before it ends, so no kick ever signals a
/// thread that is gone.
pub(super) struct ThreadWaker {
    target: Arc<Mutex<Option<(Kicker, ThisThread)>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ThreadWaker {
    /// Registers the calling thread, running the vCPU `kicker` kicks, as `pid`'s in `tree`.
    pub(super) fn register(tree: &Tree, pid: i32, kicker: Kicker) -> Result<Self, SandboxError> {
        crate::vcpu::kick::install_handler()?;
        let target = Arc::new(Mutex::new(Some((kicker, ThisThread::get()))));
        let theirs = target.clone();
        let waker: Waker = Arc::new(move || {
            if let Some((kicker, thread)) = &*lock(&theirs) {
                kicker.kick(thread);
            }
        });
        tree.set_waker(pid, Some(waker.clone()));
        // A signal sent before the waker was there kicked nobody: kick now.
        if tree.has_incoming(pid) {
            waker();
        }
        Ok(Self { target })
    }

    /// After `execve`: the new vCPU (kicked at once if a signal came meanwhile).
    pub(super) fn set_kicker(&self, kicker: Kicker, tree: &Tree, pid: i32) {
        // The tree's lock before this one's, never inside it (the tree calls wakers, which
        // take this lock, while it holds its own).
        let kick = tree.has_incoming(pid);
        if let Some(t) = lock(&self.target).as_mut() {
            t.0 = kicker;
            if kick {
                t.0.kick(&t.1);
            }
        }
    }
}

impl Drop for ThreadWaker {
    fn drop(&mut self) {
        *lock(&self.target) = None;
    }
}

/// A failed start of a child is the parent's `EAGAIN` (as when Linux runs out of memory for
/// one), with the reason on stderr.
fn spawn_failed(pid: i32, why: &dyn std::fmt::Display) -> i64 {
    eprintln!("rypervisor: cannot start process {pid}: {why}");
    Errno::EAGAIN.ret()
}

impl Sandbox {
    /// Serves what the linux layer asked for: `Some(value)` to return to the program (a
    /// `fork`'s child pid or an errno), `None` when the registers are already set (a new
    /// image starts at its entry point).
    pub(super) fn vm_request(
        &mut self,
        request: VmRequest,
        (regs, sregs): (&kvm_regs, &kvm_sregs),
        host: &mut dyn Host,
    ) -> Result<Option<i64>, SandboxError> {
        match request {
            VmRequest::Fork(spawn) => {
                let (pid, vfork) = (spawn.pid, spawn.vfork);
                let value = match self.spawn(*spawn, (regs, sregs), host) {
                    Ok(()) => i64::from(pid),
                    Err(e) => {
                        self.process.tree().forget(pid);
                        return Ok(Some(spawn_failed(pid, &e)));
                    }
                };
                if vfork {
                    let exit = self.with_context(host, |p, cx| p.wait_vfork(pid, cx));
                    if let Err(super::linux::SysError::End(exit)) = exit {
                        self.pending_end = Some(exit);
                    }
                }
                Ok(Some(value))
            }
            VmRequest::Exec(request) => match self.exec(*request) {
                Ok(()) => Ok(None),
                Err(e) => {
                    eprintln!("rypervisor: execve: cannot start the new program: {e}");
                    Ok(Some(Errno::ENOMEM.ret()))
                }
            },
        }
    }

    /// Starts the child `s` describes: its machine (a copy of this one, or this one's memory
    /// for `vfork`), its registers (the call returns 0 there, on its own stack and TLS if
    /// asked), and its thread.
    fn spawn(
        &mut self,
        s: Spawn,
        (regs, sregs): (&kvm_regs, &kvm_sregs),
        host: &mut dyn Host,
    ) -> Result<(), SandboxError> {
        let Some(child_host) = host.fork() else {
            return Err(SandboxError::NoChildHost);
        };
        let mut child = if s.thread {
            let spare = lock(&self.spare_vcpus).pop();
            let vcpu = match spare {
                Some(mut vcpu) => {
                    Machine::reuse_vcpu(&self.kvm, &mut vcpu, &self.vcpu, (regs, sregs))?;
                    vcpu
                }
                None => {
                    let id = self
                        .next_vcpu
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Machine::thread_vcpu(&self.kvm, &self.vm, id, &self.vcpu, (regs, sregs))?
                }
            };
            self.thread(vcpu, *s.child)
        } else {
            let machine = Machine::fork(
                &self.kvm,
                &self.vcpu,
                &self.mem,
                s.share_mem,
                &self.clock.lock(),
                (regs, sregs),
            )?;
            let mut child = self.child(machine, *s.child);
            child.keeps_time = !s.share_mem; // a vfork child leaves its parent's page alone
            child
        };
        let mut r = *regs;
        if s.stack != 0 {
            r.rsp = s.stack;
        }
        child.complete(0, r, sregs)?;
        if let Some(tls) = s.tls {
            child.vcpu.set_msrs(&[(layout::msr::FS_BASE, tls)])?;
            child.process.set_fs_base(tls);
        }
        if let Some(at) = s.child_tid {
            let _ = child.mem.write_obj(at, &(s.pid as u32));
        }
        let tree = self.process.tree().clone();
        let name = format!("{} {}", if s.thread { "tid" } else { "pid" }, s.pid);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || child.run_child(child_host))
            .map_err(SandboxError::Thread)?;
        tree.keep_thread(thread);
        Ok(())
    }

    /// Replaces the process's machine with one running `request`'s program (its other
    /// threads end first, as on Linux).
    fn exec(&mut self, request: ExecRequest) -> Result<(), SandboxError> {
        let (tree, pid) = (self.process.tree().clone(), self.process.pid());
        if tree.group_size(self.process.tgid()) > 1 {
            tree.doom_others(self.process.tgid(), pid);
            self.await_threads();
        }
        let start = Start {
            args: &request.args,
            env: &request.env,
            execfn: Some(&request.path),
            tsc_clock: self.tsc_clock,
        };
        let image = &request.image;
        let machine = Machine::load(&self.kvm, image, &start)?;
        let interp = image.interp.as_ref().map(|i| (i.start, i.end));
        let (end, stack) = (image.program.end, image.stack_size);
        self.process.exec_into(end, stack, interp, &request.path);
        self.process.set_exe(Some(request.exe.clone()));
        self.name = String::from_utf8_lossy(&request.path).into_owned();
        self.replace_machine(machine);
        if let Some(w) = &self.waker {
            w.set_kicker(self.vcpu.kicker(), &tree, pid);
        }
        tree.release_vfork(pid);
        Ok(())
    }

    /// Waits until this thread is the last of its process (the others were doomed, or end
    /// by themselves).
    fn await_threads(&self) {
        let (tree, tgid) = (self.process.tree(), self.process.tgid());
        loop {
            let seen = tree.generation();
            if tree.group_size(tgid) <= 1 {
                return;
            }
            // The time limit holds here too; doomed threads are kicked again (a kick just
            // before a blocking host call is missed).
            if tree.remaining().is_some_and(|left| left.is_zero()) || tree.killed() {
                tree.exit_group(tgid, signaled_status(libc::SIGKILL));
            }
            tree.kick_doomed(tgid, self.process.pid());
            tree.wait(seen, Some(Duration::from_millis(20)));
        }
    }

    /// The end of a process's first thread with `exit`: the other threads end too (they run
    /// on: they are doomed unless this thread left by `exit` alone) and are waited for; the
    /// process's end is whatever ended it first.
    pub(super) fn end_of_process(&mut self, exit: Exit) -> Exit {
        let (tree, tgid) = (self.process.tree().clone(), self.process.tgid());
        if tree.group_size(tgid) > 1 {
            if self.process.thread_exited() {
                tree.leader_left(tgid);
            } else {
                tree.exit_group(tgid, wait_status(&exit));
            }
            self.await_threads();
        }
        match tree.group_status(tgid) {
            Some(status) if status != wait_status(&exit) => exit_of(status),
            _ => exit,
        }
    }

    /// A child's thread: runs the program to its end, frees its machine and descriptors,
    /// then tells the tree (its parent is woken with its status).
    pub(super) fn run_child(mut self, mut host: Box<dyn Host + Send>) {
        let (tree, pid) = (self.process.tree().clone(), self.process.pid());
        let thread = pid != self.process.tgid();
        let exit = match ThreadWaker::register(&tree, pid, self.vcpu.kicker()) {
            Ok(waker) => {
                self.waker = Some(waker);
                self.run_loop(&mut *host, false)
            }
            Err(e) => Err(e),
        };
        let exit = match exit {
            Ok(Paused::Ended(exit)) => exit,
            Ok(Paused::AtStdinRead) => Exit::Crashed("internal: a child paused".into()),
            Err(e) => Exit::Crashed(e.to_string()),
        };
        // The VMM's own trouble is reported; a child's fault is its parent's to see (as its
        // status), but a thread's fault ends a process whose status hides which thread.
        let report = matches!(exit, Exit::Crashed(_)) || (thread && matches!(exit, Exit::Fault(_)));
        if let Some(text) = exit.report().filter(|_| report) {
            let what = if thread { "thread" } else { "process" };
            eprintln!("rypervisor: {what} {pid}: {text}");
        }
        self.waker = None;
        if thread {
            // A thread's end: alone (`exit`), or its whole process's (anything else).
            if !self.process.thread_exited() && !tree.killed_for(pid) {
                tree.exit_group(self.process.tgid(), wait_status(&exit));
            }
            self.with_context(&mut *host, |p, cx| p.clear_child_tid(cx));
            // Its vCPU goes to the next thread; the rest of it goes now.
            let spare = self.spare_vcpus.clone();
            let Sandbox { vcpu, .. } = self;
            lock(&spare).push(vcpu);
            tree.thread_exit(pid);
            return;
        }
        let exit = self.end_of_process(exit);
        drop(self); // the VM, its memory and the descriptors go before the parent hears
        tree.exit(pid, wait_status(&exit));
    }
}

/// The `Exit` a wait status stands for.
fn exit_of(status: i32) -> Exit {
    match status & 0x7f {
        0 => Exit::Exited((status >> 8) & 0xff),
        sig => Exit::Signaled(sig),
    }
}

/// The wait status a parent sees for a child that ended with `exit`.
pub fn wait_status(exit: &Exit) -> i32 {
    match exit {
        Exit::Exited(code) => exited_status(*code),
        Exit::Signaled(sig) => signaled_status(*sig),
        Exit::Fault(_) => signaled_status(exit.status() - 128),
        Exit::Denied { .. } => signaled_status(libc::SIGSYS),
        Exit::TimedOut | Exit::Crashed(_) => signaled_status(libc::SIGKILL),
    }
}
