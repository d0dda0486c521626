//! [`SandboxBuilder`]: what to run and under which limits, then [`SandboxBuilder::build`],
//! which checks the program before touching KVM ([`Image::prepare`]) and builds the micro-VM
//! in steps ([`Machine::load`]): the VM and its memory, the vCPU (CPUID, CPU tables, the
//! system-call MSRs), the program and its stack.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::linux::tree::DEFAULT_MAX_PROCS;
use super::linux::Process;
use super::machine::{Image, Kvm, Machine, Start};
use super::run::Sandbox;
use super::{Policy, SandboxError, DEFAULT_MEM};
use crate::hostfile::read_regular;
use crate::kvm::DEFAULT_DEVICE;
use crate::watchdog::Watchdog;

/// Configuration of a sandbox, built up with chained calls.
#[derive(Clone, Debug)]
pub struct SandboxBuilder {
    name: String,
    program: Source,
    args: Vec<String>,
    env: Vec<String>,
    mem: u64,
    timeout: Option<Duration>,
    policy: Policy,
    trace: Option<crate::sandbox::linux::trace::TraceSink>,
    kvm_device: PathBuf,
    tsc_clock: bool,
    max_procs: usize,
}

impl SandboxBuilder {
    /// A sandbox for the program in `bytes`, called `name` in messages and `argv[0]`.
    pub fn new(name: &str, bytes: Vec<u8>) -> Self {
        Self::with_source(name, Source::Bytes(bytes))
    }

    fn with_source(name: &str, program: Source) -> Self {
        Self {
            name: name.into(),
            program,
            args: vec![name.into()],
            env: Vec::new(),
            mem: DEFAULT_MEM,
            timeout: None,
            policy: Policy::default(),
            trace: None,
            kvm_device: PathBuf::from(DEFAULT_DEVICE),
            tsc_clock: true,
            max_procs: DEFAULT_MAX_PROCS,
        }
    }

    /// A sandbox for the program file at `path`. The file is read by [`build`](Self::build),
    /// once the memory size is known: it must be a regular file no larger than that.
    pub fn from_file(path: &Path) -> Result<Self, SandboxError> {
        Ok(Self::with_source(
            &path.display().to_string(),
            Source::File(path.to_path_buf()),
        ))
    }

    /// The whole argv, `argv[0]` included.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// The environment (`NAME=value` strings); empty by default.
    pub fn env<I: IntoIterator<Item = S>, S: Into<String>>(mut self, env: I) -> Self {
        self.env = env.into_iter().map(Into::into).collect();
        self
    }

    /// Guest memory size: everything the program can ever use.
    pub fn mem(mut self, bytes: u64) -> Self {
        self.mem = bytes;
        self
    }

    /// Wall-clock limit for each run.
    pub fn timeout(mut self, limit: Option<Duration>) -> Self {
        self.timeout = limit;
        self
    }

    /// The system-call policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Print each system call strace-style on stderr.
    pub fn trace(mut self, on: bool) -> Self {
        use crate::sandbox::linux::trace::TraceSink;
        self.trace = on.then_some(TraceSink::Stderr);
        self
    }

    /// Write the system-call trace to `file` instead of stderr.
    pub fn trace_to(mut self, file: std::fs::File) -> Self {
        self.trace = Some(crate::sandbox::linux::trace::TraceSink::File(file.into()));
        self
    }

    /// Whether the vDSO reads the clocks from the TSC where the TSC can be trusted (the
    /// default); `false` sends every vDSO call to the VMM as a system call, as on a host
    /// without an invariant TSC.
    pub fn tsc_clock(mut self, on: bool) -> Self {
        self.tsc_clock = on;
        self
    }

    /// The KVM device to open.
    pub fn kvm_device(mut self, path: &Path) -> Self {
        self.kvm_device = path.into();
        self
    }

    /// At most `n` processes at once (`--max-procs`): beyond it `fork` fails with `EAGAIN`.
    pub fn max_procs(mut self, n: usize) -> Self {
        self.max_procs = n;
        self
    }

    /// Checks the program, creates the VM, loads the program and prepares the process start.
    pub fn build(mut self) -> Result<Sandbox, SandboxError> {
        let started = Instant::now();
        // Cheap checks first: a bad program or size fails before any KVM work.
        let (bytes, exe) = match std::mem::replace(&mut self.program, Source::Bytes(Vec::new())) {
            Source::Bytes(bytes) => (bytes, None),
            Source::File(path) => {
                let bytes = read_regular("program", &path, self.mem, "guest memory (--mem)")?;
                (bytes, std::fs::canonicalize(&path).ok())
            }
        };
        let image = Image::prepare(&self.name, bytes, self.mem, &self.policy)?;
        let kvm = Arc::new(Kvm::open(&self.kvm_device)?);
        let args: Vec<Vec<u8>> = self.args.iter().map(|a| a.clone().into_bytes()).collect();
        let env: Vec<Vec<u8>> = self.env.iter().map(|e| e.clone().into_bytes()).collect();
        let start = Start {
            args: &args,
            env: &env,
            execfn: None,
            tsc_clock: self.tsc_clock,
        };
        let machine = Machine::load(&kvm, &image, &start)?;
        // The kick signal's handler, before any seccomp filter (children are kicked by it).
        crate::vcpu::kick::install_handler()?;
        // Only a sandbox with a time limit needs the watchdog thread.
        let watchdog = match self.timeout {
            Some(_) => Some(Arc::new(Watchdog::new()?)),
            None => None,
        };
        let mut process = Process::new(self.policy, image.program.end, self.mem, image.stack_size);
        process.set_max_procs(self.max_procs);
        process.set_exe(exe);
        if let Some(i) = &image.interp {
            process.reserve(i.start, i.end);
        }
        Ok(Sandbox::new(
            self.name,
            (kvm, machine, self.tsc_clock),
            process,
            (watchdog, self.timeout),
            self.trace,
            started.elapsed(),
        ))
    }
}

/// Where the program comes from.
#[derive(Clone, Debug)]
enum Source {
    /// Its bytes.
    Bytes(Vec<u8>),
    /// A file, read at build time.
    File(PathBuf),
}
