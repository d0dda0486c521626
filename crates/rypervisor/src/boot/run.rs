//! Running a prepared Linux VM: one thread per vCPU, each a `Vcpu::run` → `handle_exit` loop,
//! and a supervisor (the caller's thread) that decides when the guest has ended: a vCPU's
//! own end (reset, crash), the console ("System halted", "Kernel panic"), the stop signal
//! (i8042 reset, Ctrl-A x) or the deadline. Then it raises a flag and kicks every vCPU (see
//! [`crate::vcpu::kick`]: one kick each suffices) and joins the threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::console::ConsoleEvents;
use super::{BootConfig, BootError, BootReport, Ending, KernelFormat, SIGNALLED, USER_QUIT};
use crate::bus::Bus;
use crate::cpu_template::{self, CpuTemplate, Workaround};
use crate::devices::misc::BootMarker;
use crate::devices::output::GiveUp;
use crate::devices::serial::EventFdTrigger;
use crate::devices::{SerialDevice, StopSignal};
use crate::kvm::{ioctl, KvmSystem};
use crate::memory::GuestRam;
use crate::seccomp::boot::BootFilters;
use crate::vcpu::{
    handle_exit, kick, report, ExitAction, ExitStats, Kicker, Stop, Vcpu, VcpuError,
};
use crate::virtio::event_loop::EventLoop;
use crate::virtio::VirtioDevice;
use crate::vm::Vm;
use crate::watchdog::join_by;
use seccompiler::BpfProgram;

/// How often the supervisor looks at the console, the stop signal and the clock.
const POLL: Duration = Duration::from_millis(10);
/// How long console output still buffered at the end may take to reach stdout.
const DRAIN: Duration = Duration::from_secs(2);
/// The same after the time limit: a moment, so the last lines of a hung guest still show
/// (unless stdout itself is stuck).
const GRACE: Duration = Duration::from_millis(200);
/// How long the vCPU threads and the device event loop get to stop once asked. One that has
/// not (a vCPU waiting for a device whose handler is still busy: a huge request, an image on
/// a hung network file system) is left behind, and said so: the VM's end, and `--timeout`,
/// hold whatever a device is doing.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// The devices a booted guest has, and the handles the supervisor watches.
pub struct Devices {
    /// Port I/O devices.
    pub bus: Arc<Bus>,
    /// Raised by the i8042 (reset) and by Ctrl-A x.
    pub stop: Arc<StopSignal>,
    /// What the console showed.
    pub events: Arc<ConsoleEvents>,
    /// The UART (console input is pushed into it).
    pub serial: Arc<Mutex<SerialDevice<EventFdTrigger>>>,
    /// The boot-marker port.
    pub marker: BootMarker,
    /// When console output stops waiting for a stdout that does not drain.
    pub give_up: Arc<GiveUp>,
    /// The virtio devices, for the event loop.
    pub virtio: Vec<Arc<Mutex<dyn VirtioDevice>>>,
}

/// A prepared Linux VM.
pub struct LinuxVm {
    /// The seccomp filters of the VMM's threads (none with `--no-seccomp`).
    pub(super) filters: Option<BootFilters>,
    vcpus: Vec<Vcpu>,
    devices: Devices,
    report: BootReport,
    config: BootConfig,
    // Kept alive for the VM's lifetime; dropped after the vCPUs (field order).
    _vm: Vm,
    _kvm: KvmSystem,
    ram: GuestRam,
}

impl std::fmt::Debug for LinuxVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxVm")
            .field("format", &self.report.format)
            .field("cpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

/// What every vCPU thread shares.
struct Shared {
    mem: GuestMemoryMmap,
    bus: Arc<Bus>,
    stop: Arc<StopSignal>,
    /// Set before the supervisor kicks: the vCPU threads return.
    stopping: AtomicBool,
    template: CpuTemplate,
    origin: Instant,
    entered: Mutex<Option<Duration>>,
    workarounds: AtomicU64,
}

impl LinuxVm {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        vcpus: Vec<Vcpu>,
        devices: Devices,
        format: KernelFormat,
        cmdline: String,
        config: BootConfig,
        vm: Vm,
        kvm: KvmSystem,
        ram: GuestRam,
    ) -> Self {
        let report = BootReport {
            ending: Ending::TimedOut,
            format,
            template: config.template,
            cmdline,
            kernel_entry: None,
            marker: None,
            ended: Duration::ZERO,
            exits: Vec::new(),
            workarounds: 0,
            last_places: Vec::new(),
        };
        Self {
            filters: None,
            vcpus,
            devices,
            report,
            config,
            _vm: vm,
            _kvm: kvm,
            ram,
        }
    }

    /// The report so far (format, template, command line).
    pub fn report(&self) -> &BootReport {
        &self.report
    }

    /// The serial device, to push console input into (`push_input`).
    pub fn serial(&self) -> Arc<Mutex<SerialDevice<EventFdTrigger>>> {
        self.devices.serial.clone()
    }

    /// The console input thread's seccomp filter, for [`console_input`](super::console_input).
    pub fn console_input_filter(&self) -> Option<BpfProgram> {
        self.filters.as_ref().map(|f| f.console_input.clone())
    }

    /// A handle that ends the VM (status 0) when requested, e.g. on Ctrl-A x.
    pub fn stop_handle(&self) -> Arc<StopSignal> {
        self.devices.stop.clone()
    }

    /// Runs every vCPU on its own thread until the guest ends.
    pub fn run(mut self) -> Result<BootReport, BootError> {
        kick::install_handler()?;
        let shared = Arc::new(Shared {
            mem: self.ram.guest_memory().clone(),
            bus: self.devices.bus.clone(),
            stop: self.devices.stop.clone(),
            stopping: AtomicBool::new(false),
            template: self.config.template,
            origin: self.config.origin,
            entered: Mutex::new(None),
            workarounds: AtomicU64::new(0),
        });
        // The device event loop first: the guest may kick a queue as soon as it runs.
        let filters = self.filters.take();
        let event_loop = match self.devices.virtio.is_empty() {
            true => None,
            false => {
                let filter = filters.as_ref().map(|f| f.devices.clone());
                let confine = move || crate::seccomp::confine_role("devices", filter);
                Some(EventLoop::start(self.devices.virtio.clone(), confine)?)
            }
        };
        let (tx, rx) = mpsc::channel::<Ending>();
        let mut threads: Vec<(Kicker, JoinHandle<(ExitStats, String)>)> = Vec::new();
        for (index, mut vcpu) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let (shared, tx) = (shared.clone(), tx.clone());
            let kicker = vcpu.kicker();
            let filter = filters.as_ref().map(|f| f.vcpu.clone());
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    crate::seccomp::confine_role("vcpu", filter);
                    let mut stats = ExitStats::default();
                    if let Some(ending) = vcpu_loop(index, &mut vcpu, &shared, &mut stats) {
                        let _ = tx.send(ending);
                    }
                    vcpu.finish(&mut stats);
                    (stats, where_is(index, &vcpu, &shared.mem))
                })
                .map_err(BootError::Thread)?;
            threads.push((kicker, handle));
        }
        drop(tx);
        if let Some(f) = &filters {
            crate::seccomp::confine_thread(&f.supervisor)?;
        }
        let deadline = self.config.timeout.map(|t| Instant::now() + t);
        if let Some(deadline) = deadline {
            self.devices.give_up.at(deadline);
        }
        let ending = self.supervise(&rx, deadline);
        // What is still buffered for the console gets a moment to drain, unless time is up.
        let drain = match ending {
            Ending::TimedOut => GRACE,
            _ => DRAIN,
        };
        self.devices.give_up.at(Instant::now() + drain);
        // Stop every vCPU: raise the flag, then kick each once (immediate_exit makes the kick
        // stick even when it lands between two KVM_RUNs).
        shared.stopping.store(true, Ordering::Release);
        for (kicker, handle) in &threads {
            kicker.kick(handle);
        }
        let stop_by = Instant::now() + STOP_WAIT;
        let (mut exits, mut places) = (Vec::new(), Vec::new());
        for (index, (_, handle)) in threads.into_iter().enumerate() {
            let (stats, place) = match join_by(handle, stop_by) {
                Some(ended) => ended.unwrap_or_default(),
                None => {
                    let what = format!(
                        "vCPU {index}: did not stop within {STOP_WAIT:?}: left running \
                         (waiting for a busy device?)"
                    );
                    tracing::warn!("{what}");
                    (ExitStats::default(), what)
                }
            };
            exits.push(stats);
            places.push(place);
        }
        if let Some(event_loop) = event_loop {
            if !event_loop.stop_by(Instant::now() + STOP_WAIT) {
                let what = format!(
                    "the device event loop did not stop within {STOP_WAIT:?}: left running \
                     (a device handler is still busy)"
                );
                tracing::warn!("{what}");
                places.push(what);
            }
        }
        self.devices
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush();
        let mut report = self.report.clone();
        report.ending = ending;
        report.exits = exits;
        report.kernel_entry = *shared.entered.lock().unwrap_or_else(|p| p.into_inner());
        report.marker = self.devices.marker.seen();
        report.ended = self.config.origin.elapsed();
        report.workarounds = shared.workarounds.load(Ordering::Relaxed);
        report.last_places = places;
        Ok(report)
    }

    /// Waits for the guest's end: a vCPU's report, the console, the stop signal, the clock.
    fn supervise(&self, rx: &mpsc::Receiver<Ending>, deadline: Option<Instant>) -> Ending {
        loop {
            let message = rx.recv_timeout(POLL);
            match message {
                Ok(Ending::Reset) => return self.reset_ending(),
                Ok(ending) => return ending,
                Err(_) => {}
            }
            if self.devices.events.halted.load(Ordering::Acquire) {
                return Ending::PoweredOff;
            }
            if let Some(status) = self.devices.stop.requested() {
                return match status {
                    USER_QUIT => Ending::UserQuit,
                    s if s & SIGNALLED != 0 => Ending::Signal(i32::from(s & !SIGNALLED)),
                    _ => self.reset_ending(),
                };
            }
            if message == Err(mpsc::RecvTimeoutError::Disconnected) {
                return self.reset_ending(); // every vCPU ended on its own
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ending::TimedOut;
            }
        }
    }

    /// A reset is the guest's own request only after "reboot: Restarting system" (or the
    /// reboot a panic ends in); any other reset — a triple fault at entry, a kernel that
    /// cannot run — is a crash.
    fn reset_ending(&self) -> Ending {
        let events = &self.devices.events;
        if events.panic.load(Ordering::Acquire) {
            Ending::Panic
        } else if events.restarting.load(Ordering::Acquire) {
            Ending::Reset
        } else {
            Ending::Crashed(
                "the guest reset the machine without asking for it (no \"reboot: Restarting \
                 system\" on the console): a triple fault, a kernel that cannot run here, or \
                 a reboot with its console messages suppressed"
                    .into(),
            )
        }
    }
}

/// One vCPU thread: runs until the supervisor stops it (`None`) or the guest ends the VM from
/// this vCPU (reset, a crash to report).
fn vcpu_loop(
    index: usize,
    vcpu: &mut Vcpu,
    shared: &Shared,
    stats: &mut ExitStats,
) -> Option<Ending> {
    if index == 0 {
        *shared.entered.lock().unwrap_or_else(|p| p.into_inner()) = Some(shared.origin.elapsed());
    }
    while !shared.stopping.load(Ordering::Acquire) {
        let exit = match vcpu.run(stats) {
            Ok(exit) => exit,
            Err(e) => return Some(Ending::Crashed(format!("vCPU {index}: {e}"))),
        };
        match handle_exit(exit, &shared.bus, &shared.stop, stats) {
            // With an in-kernel irqchip a HLT waits in KVM; one that reaches us is harmless.
            ExitAction::Continue | ExitAction::Kicked | ExitAction::Stop(Stop::Halted) => {}
            // A device asked to end the VM: the supervisor sees the stop signal.
            ExitAction::Stop(Stop::Requested(_)) => return None,
            ExitAction::Stop(Stop::TripleFault) => return Some(Ending::Reset),
            ExitAction::Stop(Stop::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN))
            | ExitAction::Stop(Stop::SystemEvent(KVM_SYSTEM_EVENT_RESET)) => {
                return Some(Ending::Reset)
            }
            ExitAction::Stop(Stop::SystemEvent(other)) => {
                return Some(Ending::Crashed(format!(
                    "vCPU {index}: system event {other}"
                )))
            }
            ExitAction::Stop(Stop::InternalError) => match internal_error(index, vcpu, shared) {
                Ok(None) => {}
                Ok(Some(report)) => return Some(Ending::Crashed(report)),
                Err(e) => return Some(Ending::Crashed(format!("vCPU {index}: {e}"))),
            },
            ExitAction::Syscall | ExitAction::Stop(_) => {
                let what = stats.last.map_or("?", |k| k.kvm_name());
                return Some(Ending::Crashed(format!(
                    "vCPU {index}: unexpected exit {what}"
                )));
            }
        }
    }
    None
}

/// An emulation failure: steps over it if the CPU template knows how (`None`), else returns
/// the report.
fn internal_error(
    index: usize,
    vcpu: &mut Vcpu,
    shared: &Shared,
) -> Result<Option<String>, VcpuError> {
    let info = vcpu.internal_error();
    let (mut regs, sregs) = vcpu.state()?;
    let workaround = info
        .is_emulation_failure()
        .then(|| cpu_template::emulation_workaround(shared.template, &info.insn_bytes))
        .flatten();
    if let Some(w) = workaround {
        let at = regs.rip;
        regs.rip = regs.rip.wrapping_add(w.length());
        vcpu.fd().set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
        if w == Workaround::StepOverInt3 {
            let fd = vcpu.fd();
            let mut events = fd.get_vcpu_events().map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
            events.exception.injected = 1;
            events.exception.nr = 3; // #BP
            events.exception.has_error_code = 0;
            fd.set_vcpu_events(&events)
                .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
        }
        shared.workarounds.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("vCPU {index}: stepped over {w:?} at {at:#x}");
        return Ok(None);
    }
    let mut s = format!("vCPU {index}: {}", info.details());
    if let Some(d) = info.instruction(regs.rip, &sregs) {
        s += &format!("  instruction: {d}\n");
        if shared.template == CpuTemplate::Host {
            s += "  (on a nested host, try --cpu-template nested-safe)\n";
        }
    }
    Ok(Some(s + &report::register_dump(&regs, &sregs)))
}

/// "vCPU n at rip X (mode): instruction [bytes]", read through the vCPU's own page tables.
fn where_is(index: usize, vcpu: &Vcpu, mem: &GuestMemoryMmap) -> String {
    let Ok((regs, sregs)) = vcpu.state() else {
        return format!("vCPU {index}: registers unavailable");
    };
    let linear = sregs.cs.base.wrapping_add(regs.rip);
    let mut bytes = [0u8; 15];
    let code = match vcpu.fd().translate_gva(linear) {
        Ok(t) if t.valid == 1 => mem
            .read_slice(&mut bytes, GuestAddress(t.physical_address))
            .is_ok()
            .then_some(&bytes[..]),
        _ => None,
    };
    format!("vCPU {index} {}", report::place(&regs, &sregs, code))
}
