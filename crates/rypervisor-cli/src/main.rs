//! `rypervisor`: the command line over the rypervisor library.
//!
//! Subcommands: `info` (what this host's KVM offers), `demo` (the LWN "Using the KVM API"
//! program, optionally narrated), `run` (a flat binary or ELF guest in real, protected
//! or long mode), `exec` (a static Linux program in a sandbox micro-VM) and `boot` (a Linux
//! kernel with an initrd and a serial console). Exit status: the
//! guest's own status, 124 on timeout, 2 on a triple fault, 3 on other guest faults, 1 on bad
//! input or a VMM error; `exec` reports program crashes the way a shell does (139, 132, 136).

// The doc comments on the argument structs are the `--help` text clap prints: written for a
// terminal (`argv[0]`, `CONNECT <port>`), not as rustdoc markup, where escapes would show.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod boot;
mod exec;
mod info;
mod run;
mod terminal;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rypervisor::loader::FlatOptions;
use rypervisor::{memory, CpuMode, Gpr, Image, MachineConfig, Privilege};

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
        cannot continue, killed by the same signal after SIGTERM, SIGINT, SIGHUP or SIGQUIT \
        (the VM stopped first). Bad input: 1.\n\
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
        #[command(flatten)]
        confinement: Confinement,
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
    /// Run an x86-64 Linux program (static, or dynamic with --allow-read /usr) in a sandbox
    /// micro-VM: every system call goes through a policy.
    #[command(
        long_about = "Run an x86-64 Linux program in its own KVM micro-VM, with no guest \
        kernel: a static one (`gcc -static`, `musl-gcc -static`), or a dynamically linked one \
        whose interpreter and libraries lie under --allow-read (Debian's: --allow-read /usr). \
        The program runs at CPL3; each system call it makes exits to rypervisor, which serves \
        it under a policy (a vDSO serves the clocks without an exit):\n\n\
        - served: read/write on stdin/stdout/stderr, exit, brk, anonymous mmap/munmap/mremap, \
        mprotect (recorded), arch_prctl, clocks, nanosleep, getrandom, uname (a fixed identity: pid 1, \
        uid 1000, host 'rypervisor'; umask, getgroups, process group and session ids, times, \
        getrusage, sysinfo, common prctl options), signals the program sends itself and SIGALRM (alarm/setitimer), delivered to its handlers, and read-only \
        open/read/stat/lseek of files and directories under --allow-read (getdents64, \
        chdir/fchdir/getcwd with a working directory that relative paths start from; \
        metadata as the host has it, owned by uid 1000; readlink), built-in /dev/null, \
        /dev/zero and /dev/urandom, poll/select (stdin waited for on the host), pipes inside \
        the process, and descriptors with Linux's rules (dup/dup2/dup3/fcntl F_DUPFD, lowest \
        free fd, close);\n\
        - refused as Linux refuses an unprivileged process: writes (EROFS), paths outside \
        --allow-read (EACCES; /proc, /sys and the rest of /dev do not exist: ENOENT), sockets \
        (EACCES), ids other than its own (EPERM);\n\
        - everything else (processes, signals delivered, ptrace...) fails with ENOSYS, or with \
        --strict ends the program with status 159 (like SIGSYS).\n\n\
        --mem is the whole guest: an allocation beyond it fails inside the program (ENOMEM). \
        A fault ends the program like a signal: 139 (SIGSEGV), 132 (SIGILL), 136 (SIGFPE), with a \
        one-line report. Once the VM is built, rypervisor confines itself with a seccomp filter.",
        after_help = "Examples:\n  rypervisor exec --mem 32M --timeout 5 -- ./hello world\n  \
        rypervisor exec --allow-read /usr --allow-read . -- /usr/bin/ls -l\n  \
        rypervisor exec --mem 512M --allow-read /usr -- /usr/bin/python3 -c 'print(6*7)'"
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
        continue (e.g. an instruction the host's KVM cannot emulate) with 3 and a report. \
        SIGTERM, SIGINT, SIGHUP or SIGQUIT stops the VM as its own end would (devices \
        stopped, the vsock socket file removed, the terminal restored); then rypervisor dies \
        by that signal (a second signal meanwhile ends it at once).\n\n\
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
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size, allow_hyphen_values = true)]
    mem: u64,
    /// Number of vCPUs (1 to 32).
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_cpus, allow_hyphen_values = true)]
    cpus: u32,
    /// CPU template: host (everything KVM supports) or nested-safe (hides what a nested KVM's
    /// emulator cannot run). Default: nested-safe where KVM emulates guest ring 0, else host.
    #[arg(long, value_name = "NAME")]
    cpu_template: Option<rypervisor::cpu_template::CpuTemplate>,
    /// Stop the guest after SECS seconds (exit status 124).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout, allow_hyphen_values = true)]
    timeout: Option<Duration>,
    /// Add a virtio-rng device fed from the host's getrandom (/dev/hwrng in the guest).
    #[arg(long)]
    rng: bool,
    /// Add a virtio-vsock device, host side as Firecracker's: the guest has CID N (≥ 3); a
    /// host program connects to the Unix socket PATH and writes "CONNECT <port>\n" to reach
    /// a guest port (answer: "OK <host_port>\n"); a guest connect() to CID 2 port P reaches
    /// the Unix socket PATH_P. See docs/devices.md.
    #[arg(long, value_name = "cid=N,uds=PATH")]
    vsock: Option<String>,
    /// Add a disk (repeatable: /dev/vda, /dev/vdb... in order): a raw image file whose size
    /// is whole 512-byte sectors. ro: read-only; serial=ID: its serial (/sys/block/vdX/serial);
    /// root: boot from it (root=/dev/vdX on the command line); cache=writeback: offer FLUSH
    /// and make every flush reach the disk (default: writes reach the host's page cache).
    #[arg(
        long = "drive",
        value_name = "path=FILE[,ro][,serial=ID][,root][,cache=writeback]"
    )]
    drives: Vec<String>,
    /// Add a network interface on an existing tap device (repeatable: eth0, eth1...), e.g.
    /// `ip tuntap add tap0 mode tap user $USER; ip link set tap0 up`. mac=: the guest's
    /// address (default: a stable one derived from the tap's name).
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    nets: Vec<String>,
    /// Do not confine rypervisor's threads with seccomp (for debugging the VMM).
    #[arg(long, hide = true)]
    no_seccomp: bool,
    /// Print boot times (kernel entry, boot marker, end) and exit counts (on stderr).
    #[arg(long)]
    stats: bool,
}

#[derive(Args)]
struct ExecArgs {
    /// Guest memory: the program, its heap, mappings and stack.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size, allow_hyphen_values = true)]
    mem: u64,
    /// Stop the program after SECS seconds (exit status 124), with every process it started.
    #[arg(long, value_name = "SECS", value_parser = parse_timeout, allow_hyphen_values = true)]
    timeout: Option<Duration>,
    /// At most N processes at once, the program included (each is a micro-VM of its own, with
    /// --mem of memory at most); beyond it fork fails with EAGAIN.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    max_procs: u16,
    /// Let the program open this host file, or files under this directory, read-only
    /// (repeatable).
    #[arg(long = "allow-read", value_name = "PATH")]
    allow_read: Vec<PathBuf>,
    /// Start the program in DIR, a directory under an --allow-read root [default: the
    /// current directory when an --allow-read root holds it, else /].
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Pass an environment variable NAME=VALUE to the program (none by default; repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// End the program (status 159) at a system call outside the policy instead of
    /// returning ENOSYS.
    #[arg(long)]
    strict: bool,
    /// Print each system call and its result, strace-style: on stderr, or with
    /// --trace-syscalls=FILE into FILE (created or truncated), apart from the program's output.
    #[arg(long, value_name = "FILE", num_args = 0..=1, require_equals = true)]
    trace_syscalls: Option<Option<PathBuf>>,
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
struct Confinement {
    /// Do not confine rypervisor's threads with seccomp (for debugging the VMM).
    #[arg(long, hide = true)]
    no_seccomp: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Guest image: flat binary or ELF.
    image: PathBuf,
    /// CPU mode for flat binaries (ELF files say their own): real, protected or long.
    #[arg(long, value_name = "MODE")]
    mode: Option<CpuMode>,
    /// Guest-physical load address of a flat binary.
    #[arg(long, value_name = "ADDR", value_parser = parse_u64, default_value = "0x1000", allow_hyphen_values = true)]
    load: u64,
    /// Entry point of a flat binary (default: the load address).
    #[arg(long, value_name = "ADDR", value_parser = parse_u64, allow_hyphen_values = true)]
    entry: Option<u64>,
    /// Run at CPL3 (user mode; long mode only; implies --mode long for flat binaries).
    #[arg(long)]
    user: bool,
    /// Guest RAM, e.g. 64K, 2M, 1G.
    #[arg(long, value_name = "SIZE", default_value = "2M", value_parser = parse_size, allow_hyphen_values = true)]
    mem: u64,
    /// Stop the guest after SECS seconds (exit status 124).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout, allow_hyphen_values = true)]
    timeout: Option<Duration>,
    /// Preset a register, e.g. --reg rax=2 (repeatable).
    #[arg(long = "reg", value_name = "NAME=VALUE", value_parser = parse_reg)]
    registers: Vec<(Gpr, u64)>,
    #[command(flatten)]
    narration: Narration,
    #[command(flatten)]
    confinement: Confinement,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => t.replace('_', "").parse(),
    };
    r.map_err(|_| format!("'{s}' is not a number (decimal or 0x-prefixed hex)"))
}

fn parse_cpus(s: &str) -> Result<u32, String> {
    let max = rypervisor::boot::MAX_CPUS;
    // The range itself is checked with the rest of the configuration (BootConfig::check).
    match s.trim().parse::<u64>() {
        Ok(n) if n <= u64::from(u32::MAX) => Ok(n as u32),
        _ => Err(format!("'{s}' is not a vCPU count: give 1 to {max}")),
    }
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
            eprintln!("rypervisor: error: {}", error_text(&e));
            1
        }
    };
    let _ = std::io::stdout().flush();
    ExitCode::from(status)
}

/// The guest's console: a duplicate of stdout, so the thread that writes guest output to it
/// never holds the lock of Rust's `Stdout` (a write blocked on a pipe nobody reads would
/// otherwise block every later `println!` and the final flush).
fn guest_stdout() -> Result<Box<dyn Write + Send>> {
    use std::os::fd::AsFd;
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating stdout for the guest console")?;
    Ok(Box::new(std::fs::File::from(fd)))
}

/// The error and its causes, each said once: a cause whose text the message already holds
/// (as "cannot read X: No such file or directory" holds its OS error) is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let said = cause.to_string();
        let core = said.split(" (os error").next().unwrap_or(&said);
        if !text.contains(core) {
            text = format!("{text}: {said}");
        }
    }
    text
}

fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Info { json } => info::cmd_info(&cli.kvm_device, json),
        Command::Demo {
            narration,
            confinement,
        } => {
            let image = Image::flat(LWN_PROGRAM.to_vec(), 0x1000, None, CpuMode::Real)?;
            let config = MachineConfig {
                ram_base: 0x1000,
                ram_size: 0x1000,
                registers: vec![(Gpr::Rax, 2), (Gpr::Rbx, 2)],
                kvm_device: cli.kvm_device,
                seccomp: !confinement.no_seccomp,
                ..MachineConfig::default()
            };
            run::run_guest(&config, &image, &narration, false)
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
                seccomp: !args.confinement.no_seccomp,
            };
            // The RAM size first: the image is checked against it before it is read.
            rypervisor::builder::check_ram(&config)?;
            let image = Image::from_file(&args.image, opts, args.mem)?;
            run::run_guest(&config, &image, &args.narration, true)
        }
        Command::Exec(args) => exec::cmd_exec(args, &cli.kvm_device),
        Command::Boot(args) => boot::cmd_boot(args, &cli.kvm_device),
    }
}

/// When the process started (for boot times).
static PROCESS_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
