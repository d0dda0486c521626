//! `rypervisor`: the command line over the rypervisor library.
//!
//! Subcommands: `info` (what this host's KVM offers), `demo` (the LWN "Using the KVM API"
//! program, optionally narrated), `run` (a flat binary or ELF guest in real, protected
//! or long mode), `exec` (a static Linux program in a sandbox micro-VM) and `boot` (a Linux
//! kernel with an initrd and a serial console). Exit status: the
//! guest's own status, 124 on timeout, 2 on a triple fault, 3 on other guest faults, 1 on bad
//! input or a VMM error; `exec` reports program crashes the way a shell does (139, 132, 136).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use rypervisor::explain::{Format, Narrator, Observer, Silent};
use rypervisor::loader::FlatOptions;
use rypervisor::machine::{Machine, RunReport};
use rypervisor::{builder, info, memory, CpuMode, Gpr, Image, MachineConfig, Privilege};

/// The 12 bytes of the LWN article's guest.
const LWN_PROGRAM: [u8; 12] = [
    0xba, 0xf8, 0x03, 0x00, 0xd8, 0x04, b'0', 0xee, 0xb0, b'\n', 0xee, 0xf4,
];

#[derive(Parser)]
#[command(
    name = "rypervisor",
    version,
    args_override_self = true,
    about = "A small virtual machine monitor on Linux KVM that explains what it does",
    long_about = "A small virtual machine monitor on Linux KVM that explains what it does.\n\n\
        Start with `rypervisor demo --explain`: it runs the program from the LWN article \
        \"Using the KVM API\" and narrates every ioctl, register and VM exit.",
    after_help = "Exit status — run/demo: the guest's own (exit device at port 0xf4), 0 when it halts, \
        124 on --timeout, 2 on a triple fault, 3 on other guest faults; exec: the program's own, \
        139/132/136 when it crashes, 159 when --strict ends it, 124 on --timeout; boot: 0 when \
        the guest powers off or reboots, 1 after a kernel panic, 124 on --timeout, 3 when the VM \
        cannot continue. Bad input: 1.\n\
        Logging: RUST_LOG=debug for more detail."
)]
struct Cli {
    /// KVM device node.
    #[arg(long, global = true, default_value = rypervisor::kvm::DEFAULT_DEVICE, value_name = "PATH")]
    kvm_device: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what this host's KVM offers: API version, capabilities, CPUID, ring-0 speed.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the LWN "Using the KVM API" program: 2 + 2 in real mode, printed on the serial port.
    #[command(
        long_about = "Run the LWN \"Using the KVM API\" program: 12 bytes of real-mode code \
        (mov dx,0x3f8; add al,bl; add al,'0'; out dx,al; mov al,'\\n'; out dx,al; hlt) with rax=rbx=2. \
        It prints 4 on stdout.\n\nWith --explain every step is narrated on stderr: each ioctl with its \
        file descriptor, argument and result, the memory map, register tables before and after, and each \
        VM exit decoded with the instruction at RIP."
    )]
    Demo {
        #[command(flatten)]
        narration: Narration,
    },
    /// Run a guest program (flat binary or ELF) with a serial port and an exit device.
    #[command(
        long_about = "Run a guest program: a flat binary or an ELF executable (32-bit: protected \
        mode; 64-bit: long mode), detected by content.\n\n\
        Devices: an 8250 UART at port 0x3f8 (COM1) on stdout/stdin, and an exit device at port 0xf4: \
        writing a byte there ends the VM with that byte as exit status. `hlt` ends it with status 0 \
        (there are no interrupts to wake a halted vCPU).\n\n\
        Protected and long mode are set up by rypervisor: flat segments, an IDT that turns CPU \
        exceptions into a report, and in long mode page tables identity-mapping the low 4 GiB. The \
        stack starts below the top 48 KiB of RAM."
    )]
    Run(RunArgs),
    /// Run a static x86-64 Linux program in a sandbox micro-VM: every system call goes
    /// through a policy.
    #[command(
        long_about = "Run a static x86-64 Linux program (built with `gcc -static` or \
        `musl-gcc -static`) in its own KVM micro-VM, with no guest kernel. The program runs at \
        CPL3; each system call it makes exits to rypervisor, which serves it under a policy:\n\n\
        - served: read/write on stdin/stdout/stderr, exit, brk, anonymous mmap/munmap/mremap, \
        mprotect (recorded), arch_prctl, clocks, nanosleep, getrandom, uname (a fixed identity: pid 1, \
        uid 1000, host 'rypervisor'), signal calls (recorded, never delivered), and read-only \
        open/read/fstat/lseek/close of files under --allow-read;\n\
        - everything else (files, sockets, processes...) fails with ENOSYS, or with --strict ends \
        the program with status 159 (like SIGSYS).\n\n\
        --mem is the whole guest: an allocation beyond it fails inside the program (ENOMEM). \
        A fault ends the program like a signal: 139 (SIGSEGV), 132 (SIGILL), 136 (SIGFPE), with a \
        one-line report. Once the VM is built, rypervisor confines itself with a seccomp filter.",
        after_help = "Example: rypervisor exec --mem 32M --timeout 5 -- ./hello world"
    )]
    Exec(ExecArgs),
    /// Boot a Linux kernel (bzImage or vmlinux) with an initrd, a serial console and N vCPUs.
    #[command(
        long_about = "Boot a Linux kernel in a micro-VM: bzImage (64-bit boot protocol) or ELF \
        vmlinux (PVH entry when it has the Xen PVH note, else its 64-bit entry), detected by \
        content. The guest gets --mem of RAM (e820), an in-kernel irqchip and PIT, an MP table \
        for --cpus vCPUs (each on its own thread), an 8250 UART on stdin/stdout (IRQ 4), an \
        i8042 for reset, a CMOS clock, and a boot-marker port (write 123 to port 0x3f0).\n\n\
        The console is raw while the guest runs; type Ctrl-A x to quit (Ctrl-A Ctrl-A sends \
        Ctrl-A). The guest's poweroff, halt or reboot ends rypervisor with status 0; a kernel \
        panic (with the default panic=1) with status 1; --timeout with 124; a VM that cannot \
        continue (e.g. an instruction the host's KVM cannot emulate) with 3 and a report.\n\n\
        Default command line: console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux \
        i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1; --cmdline appends to it. \
        A small kernel and initramfs for trying this: guest/build-kernel.sh and \
        guest/build-initramfs.sh.",
        after_help = "Example: rypervisor boot --kernel vmlinux --initrd initramfs.cpio --cpus 2 --mem 256M"
    )]
    Boot(BootArgs),
}

#[derive(Args)]
struct BootArgs {
    /// Kernel image: bzImage or ELF vmlinux.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initial ramdisk (e.g. a cpio initramfs).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Appended to the default kernel command line.
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Guest RAM.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    mem: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u32,
    /// CPU template: host (everything KVM supports) or nested-safe (hides what a nested KVM's
    /// emulator cannot run). Default: nested-safe where KVM emulates guest ring 0, else host.
    #[arg(long, value_name = "NAME")]
    cpu_template: Option<rypervisor::cpu_template::CpuTemplate>,
    /// Stop the guest after SECS seconds (exit status 124).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// Print boot times (kernel entry, boot marker, end) and exit counts (on stderr).
    #[arg(long)]
    stats: bool,
}

#[derive(Args)]
struct ExecArgs {
    /// Guest memory: the program, its heap, mappings and stack.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    mem: u64,
    /// Stop the program after SECS seconds (exit status 124).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// Let the program open this host file, or files under this directory, read-only
    /// (repeatable).
    #[arg(long = "allow-read", value_name = "PATH")]
    allow_read: Vec<PathBuf>,
    /// Pass an environment variable NAME=VALUE to the program (none by default; repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// End the program (status 159) at a system call outside the policy instead of
    /// returning ENOSYS.
    #[arg(long)]
    strict: bool,
    /// Print each system call and its result on stderr, strace-style.
    #[arg(long)]
    trace_syscalls: bool,
    /// Print system-call counts and time in guest vs VMM at the end (on stderr).
    #[arg(long)]
    stats: bool,
    /// Do not confine rypervisor with seccomp (for debugging the VMM).
    #[arg(long, hide = true)]
    no_seccomp: bool,
    /// The program and its arguments (argv[0] is PROGRAM as given).
    #[arg(
        required = true,
        trailing_var_arg = true,
        value_name = "PROGRAM [ARGS]"
    )]
    command: Vec<String>,
}

#[derive(Args)]
struct Narration {
    /// Narrate each step: ioctls, memory map, registers, VM exits (on stderr).
    #[arg(long)]
    explain: bool,
    /// With --explain: emit the narration as JSON lines (on stderr).
    #[arg(long)]
    json: bool,
    /// Print VM exit counts and time in guest vs VMM at the end (on stderr).
    #[arg(long)]
    stats: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Guest image: flat binary or ELF.
    image: PathBuf,
    /// CPU mode for flat binaries (ELF files say their own): real, protected or long.
    #[arg(long, value_name = "MODE")]
    mode: Option<CpuMode>,
    /// Guest-physical load address of a flat binary.
    #[arg(long, value_name = "ADDR", value_parser = parse_u64, default_value = "0x1000")]
    load: u64,
    /// Entry point of a flat binary (default: the load address).
    #[arg(long, value_name = "ADDR", value_parser = parse_u64)]
    entry: Option<u64>,
    /// Run at CPL3 (user mode; long mode only; implies --mode long for flat binaries).
    #[arg(long)]
    user: bool,
    /// Guest RAM, e.g. 64K, 2M, 1G.
    #[arg(long, value_name = "SIZE", default_value = "2M", value_parser = parse_size)]
    mem: u64,
    /// Stop the guest after SECS seconds (exit status 124).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// Preset a register, e.g. --reg rax=2 (repeatable).
    #[arg(long = "reg", value_name = "NAME=VALUE", value_parser = parse_reg)]
    registers: Vec<(Gpr, u64)>,
    #[command(flatten)]
    narration: Narration,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => t.replace('_', "").parse(),
    };
    r.map_err(|_| format!("'{s}' is not a number (decimal or 0x-prefixed hex)"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    memory::parse_size(s).map_err(|e| e.to_string())
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v < 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("'{s}' is not a positive number of seconds")),
    }
}

fn parse_reg(s: &str) -> Result<(Gpr, u64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}': use NAME=VALUE, e.g. rax=2"))?;
    Ok((name.parse()?, parse_u64(value)?))
}

fn main() -> ExitCode {
    PROCESS_START.get_or_init(std::time::Instant::now);
    let cli = Cli::parse();
    let logger = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .with_writer(std::io::stderr);
    // EnvFilter compiles its directives into matchers, which costs a measurable share of a
    // 12-instruction demo's run time: only pay for it when RUST_LOG asks for something.
    match tracing_subscriber::EnvFilter::try_from_env("RUST_LOG") {
        Ok(filter) => logger.with_env_filter(filter).init(),
        Err(_) => logger.with_max_level(tracing::Level::WARN).init(),
    }
    let status = match dispatch(cli) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("rypervisor: error: {e:#}");
            1
        }
    };
    let _ = std::io::stdout().flush();
    ExitCode::from(status)
}

fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Info { json } => cmd_info(&cli.kvm_device, json),
        Command::Demo { narration } => {
            let image = Image::flat(LWN_PROGRAM.to_vec(), 0x1000, None, CpuMode::Real)?;
            let config = MachineConfig {
                ram_base: 0x1000,
                ram_size: 0x1000,
                registers: vec![(Gpr::Rax, 2), (Gpr::Rbx, 2)],
                kvm_device: cli.kvm_device,
                ..MachineConfig::default()
            };
            run_guest(&config, &image, &narration, false)
        }
        Command::Run(args) => {
            let mode = match (args.mode, args.user) {
                (None, true) => Some(CpuMode::Long),
                (m, _) => m,
            };
            let opts = FlatOptions {
                mode,
                load: Some(args.load),
                entry: args.entry,
            };
            let image = Image::from_file(&args.image, opts)?;
            let config = MachineConfig {
                ram_base: 0,
                ram_size: args.mem,
                privilege: if args.user {
                    Privilege::User
                } else {
                    Privilege::Kernel
                },
                registers: args.registers,
                timeout: args.timeout,
                kvm_device: cli.kvm_device,
            };
            run_guest(&config, &image, &args.narration, true)
        }
        Command::Exec(args) => cmd_exec(args, &cli.kvm_device),
        Command::Boot(args) => cmd_boot(args, &cli.kvm_device),
    }
}

fn cmd_boot(args: BootArgs, device: &std::path::Path) -> Result<u8> {
    use rypervisor::boot::{self, BootConfig, Ending};
    use rypervisor::cpu_template::CpuTemplate;
    let origin = *PROCESS_START.get().unwrap_or(&std::time::Instant::now());
    let mut config = BootConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        mem: args.mem,
        cpus: args.cpus,
        template: CpuTemplate::Host,
        timeout: args.timeout,
        kvm_device: device.to_path_buf(),
        origin,
    };
    config.check()?;
    config.template = match args.cpu_template {
        Some(t) => t,
        None => {
            let probe = info::ring0_probe(device).context("probing whether KVM emulates ring 0")?;
            if probe.emulated {
                eprintln!(
                    "rypervisor: KVM emulates guest ring 0 on this host ({:.0}x slower than user mode): \
                     using --cpu-template nested-safe",
                    probe.ratio
                );
                CpuTemplate::NestedSafe
            } else {
                CpuTemplate::Host
            }
        }
    };
    let vm = boot::prepare(config, Box::new(std::io::stdout()))?;
    let raw = terminal::RawMode::enable_if_tty();
    boot::console_input(Box::new(std::io::stdin()), vm.serial(), vm.stop_handle())
        .context("starting the console input thread")?;
    let report = vm.run();
    drop(raw);
    let report = report?;
    let _ = std::io::stdout().flush();
    match &report.ending {
        Ending::PoweredOff | Ending::Reset => {}
        Ending::UserQuit => eprintln!("rypervisor: stopped (Ctrl-A x)"),
        Ending::Panic => eprintln!("rypervisor: the guest kernel panicked (see the console above)"),
        Ending::TimedOut => {
            eprintln!("rypervisor: guest stopped: time limit expired");
            for place in &report.last_places {
                eprintln!("  {place}");
            }
        }
        Ending::Crashed(why) => eprintln!("rypervisor: the VM cannot continue: {why}"),
    }
    if args.stats {
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.3} s", d.as_secs_f64()))
        };
        eprintln!(
            "boot statistics ({}, cpu template {})",
            report.format, report.template
        );
        eprintln!("  kernel entry      {}", ms(report.kernel_entry));
        eprintln!("  boot marker       {}", ms(report.marker));
        eprintln!("  end               {}", ms(Some(report.ended)));
        eprintln!("  emulation steps   {}", report.workarounds);
        for (i, e) in report.exits.iter().enumerate() {
            eprintln!("vCPU {i} {e}");
        }
    }
    Ok(report.ending.status() as u8)
}

/// The console's terminal mode while a guest runs.
mod terminal {
    use std::sync::OnceLock;

    /// The settings to restore, readable from a signal handler.
    static SAVED: OnceLock<libc::termios> = OnceLock::new();

    /// Puts the terminal on stdin in raw mode and restores it when dropped, and on SIGTERM,
    /// SIGHUP and SIGQUIT (raw mode turns Ctrl-C into a byte for the guest, so SIGINT only
    /// comes from outside and is handled the same way).
    pub struct RawMode(bool);

    extern "C" fn restore_and_die(sig: libc::c_int) {
        if let Some(saved) = SAVED.get() {
            // SAFETY: tcsetattr, signal and raise are async-signal-safe; `saved` is a
            // fully initialised termios that is never written again.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, saved);
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
        }
    }

    impl RawMode {
        /// Raw mode if stdin is a terminal; otherwise nothing.
        pub fn enable_if_tty() -> Self {
            // SAFETY: isatty and tcgetattr/tcsetattr only read or write the termios struct
            // passed, a live local; fd 0 is the process's stdin. The handlers installed
            // only restore the terminal and re-raise the signal.
            unsafe {
                if libc::isatty(0) != 1 {
                    return Self(false);
                }
                let mut saved: libc::termios = std::mem::zeroed();
                if libc::tcgetattr(0, &mut saved) != 0 {
                    return Self(false);
                }
                let saved = *SAVED.get_or_init(|| saved);
                for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGINT] {
                    libc::signal(sig, restore_and_die as *const () as libc::sighandler_t);
                }
                let mut raw = saved;
                libc::cfmakeraw(&mut raw);
                raw.c_oflag |= libc::OPOST | libc::ONLCR; // keep "\n" → "\r\n" for our own messages
                libc::tcsetattr(0, libc::TCSANOW, &raw);
                Self(true)
            }
        }
    }

    impl Drop for RawMode {
        fn drop(&mut self) {
            if let (true, Some(saved)) = (self.0, SAVED.get()) {
                // SAFETY: restores the settings read in enable_if_tty on the same fd.
                unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
            }
        }
    }
}

/// When the process started (for boot times).
static PROCESS_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn cmd_exec(args: ExecArgs, device: &std::path::Path) -> Result<u8> {
    use rypervisor::sandbox::{self, Policy, SandboxBuilder, StdHost};
    let mut policy = Policy::default();
    policy.strict = args.strict;
    for path in &args.allow_read {
        policy.allow_read(path)?;
    }
    for e in &args.env {
        if !e.contains('=') {
            bail!("--env {e}: use NAME=VALUE");
        }
    }
    let program = PathBuf::from(&args.command[0]);
    let mut sandbox = SandboxBuilder::from_file(&program)?
        .args(args.command.iter().cloned())
        .env(args.env.iter().cloned())
        .mem(args.mem)
        .timeout(args.timeout)
        .policy(policy)
        .trace(args.trace_syscalls)
        .kvm_device(device)
        .build()?;
    if !args.no_seccomp {
        let filter = rypervisor::seccomp::sandbox_filter(sandbox.policy().any_files())?;
        rypervisor::seccomp::confine_process(&filter)?;
    }
    let exit = sandbox.run(&mut StdHost)?;
    if let Some(report) = exit.report() {
        eprintln!("rypervisor: {report}");
    }
    if args.stats {
        let st = sandbox.stats();
        let calls = sandbox.syscall_stats();
        eprintln!("sandbox statistics");
        eprintln!(
            "  build (VM, memory, load)  {:>10.3} ms",
            sandbox.build_time().as_secs_f64() * 1e3
        );
        eprintln!(
            "  in guest (KVM_RUN)        {:>10.3} ms",
            st.guest_time.as_secs_f64() * 1e3
        );
        eprintln!(
            "  in VMM (serving calls)    {:>10.3} ms",
            st.vmm_time.as_secs_f64() * 1e3
        );
        eprintln!("  VM exits                  {:>10}", st.exits);
        if let Some(entry) = st.syscall_entry {
            eprintln!("  syscall entry             {entry:>10}");
        }
        eprintln!(
            "  system calls              {:>10} ({} denied)",
            st.syscalls, calls.denied
        );
        let mut by_count: Vec<_> = calls.counts.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (nr, n) in by_count {
            eprintln!("    {:<22}{n:>10}", sandbox::syscalls::name(*nr));
        }
    }
    let _ = std::io::stdout().flush();
    Ok((exit.status() & 0xff) as u8)
}

fn run_guest(
    config: &MachineConfig,
    image: &Image,
    narration: &Narration,
    exit_device: bool,
) -> Result<u8> {
    if narration.json && !narration.explain {
        bail!("--json formats the --explain narration: add --explain");
    }
    let mut narrator;
    let obs: &mut dyn Observer = if narration.explain {
        let format = if narration.json {
            Format::Json
        } else {
            Format::Text
        };
        narrator = Narrator::new(std::io::stderr(), format);
        &mut narrator
    } else {
        &mut Silent
    };
    let mut machine: Machine = builder::build(config, image, obs)?;
    machine.add_serial(
        Box::new(std::io::stdout()),
        Some(Box::new(std::io::stdin())),
    )?;
    if exit_device {
        machine.add_exit_device()?;
    }
    let report = machine.run(obs)?;
    finish(&report, narration.stats)
}

fn finish(report: &RunReport, stats: bool) -> Result<u8> {
    let _ = std::io::stdout().flush();
    if report.outcome.is_fault() {
        let text = report.fault_report();
        let mut lines = text.lines();
        if let Some(first) = lines.next() {
            eprintln!("rypervisor: {first}");
        }
        for l in lines {
            eprintln!("{l}");
        }
    }
    if stats {
        eprintln!("{}", report.stats);
    }
    let status = report.outcome.exit_status();
    Ok(u8::try_from(status).unwrap_or(3))
}

fn cmd_info(device: &std::path::Path, json: bool) -> Result<u8> {
    let host = info::probe(device).context("probing KVM")?;
    if json {
        println!("{}", serde_json_string(&host)?);
        return Ok(0);
    }
    println!("KVM device          {}", host.device);
    println!("API version         {}", host.api_version);
    println!("Capabilities");
    for c in &host.capabilities {
        let v = match c.value {
            0 => "no".to_string(),
            1 if !c.name.starts_with("KVM_CAP_NR") && !c.name.starts_with("KVM_CAP_MAX") => {
                "yes".to_string()
            }
            n => n.to_string(),
        };
        println!("  {:<30} {:<6} {}", c.name, v, c.purpose);
    }
    let cpu = &host.cpuid;
    println!(
        "Supported CPUID     {} entries, vendor {}, max leaf {:#x}, max extended leaf {:#x}",
        cpu.entries, cpu.vendor, cpu.max_leaf, cpu.max_extended_leaf
    );
    println!("  features          {}", cpu.features.join(" "));
    let r = &host.ring0;
    println!(
        "Guest ring 0        {}: a {}-iteration loop took {:.3} ms at CPL0 vs {:.3} ms at CPL3 ({:.0}x)",
        if r.emulated { "EMULATED" } else { "native" },
        r.iterations,
        r.cpl0.as_secs_f64() * 1e3,
        r.cpl3.as_secs_f64() * 1e3,
        r.ratio
    );
    if let Some(m) = &host.nested_module {
        println!("  nested KVM module {m} is loaded");
    }
    if r.emulated {
        println!(
            "  KVM interprets ring-0 and real/protected-mode guest code instruction by instruction here \
             (~1 µs each); user-mode (CPL3) code runs at native speed. Keep ring-0 guests short."
        );
    }
    Ok(0)
}

fn serde_json_string(host: &info::HostInfo) -> Result<String> {
    Ok(rypervisor::explain::to_json(host)?)
}
