//! `rypervisor boot`: the ring-0 probe that picks the CPU template, the raw console, and the
//! report of how the guest ended.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rypervisor::boot::{self, BootConfig, BootReport, Ending};
use rypervisor::cpu_template::CpuTemplate;
use rypervisor::info;

use crate::{BootArgs, PROCESS_START};

/// `eprintln!` that never panics: after SIGHUP the terminal is gone and writes to it fail
/// (EIO), and the process must still end by the signal, not by a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub(crate) fn cmd_boot(args: BootArgs, device: &Path) -> Result<u8> {
    let mut config = BootConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        mem: args.mem,
        cpus: args.cpus,
        template: CpuTemplate::Host,
        timeout: args.timeout,
        kvm_device: device.to_path_buf(),
        origin: *PROCESS_START.get().unwrap_or(&Instant::now()),
        rng: args.rng,
        vsock: args.vsock.as_deref().map(str::parse).transpose()?,
        drives: (args.drives.iter())
            .map(|d| d.parse())
            .collect::<Result<_, _>>()?,
        nets: (args.nets.iter())
            .map(|n| n.parse())
            .collect::<Result<_, _>>()?,
        seccomp: !args.no_seccomp,
    };
    config.check()?;
    let notice;
    (config.template, notice) = match args.cpu_template {
        Some(t) => (t, None),
        None => probe_template(device)?,
    };
    let vm = boot::prepare(config, crate::guest_stdout()?)?;
    // Said only now, when the VM is about to run: an error above has nothing to do with it.
    if let Some(notice) = notice {
        say!("{notice}");
    }
    crate::terminal::stop_on_signals(vm.stop_handle());
    let raw = crate::terminal::RawMode::enable_if_tty();
    let filter = vm.console_input_filter();
    boot::console_input(
        Box::new(std::io::stdin()),
        vm.serial(),
        vm.stop_handle(),
        filter,
    )
    .context("starting the console input thread")?;
    let report = vm.run();
    drop(raw);
    let report = report?;
    let _ = std::io::stdout().flush();
    print_ending(&report);
    if args.stats {
        print_stats(&report);
    }
    if let Ending::Signal(sig) = report.ending {
        crate::terminal::die_by(sig);
    }
    Ok(report.ending.status() as u8)
}

/// nested-safe where KVM emulates guest ring 0 (with a notice saying so), else host.
fn probe_template(device: &Path) -> Result<(CpuTemplate, Option<String>)> {
    let probe = info::ring0_probe(device).context("probing whether KVM emulates ring 0")?;
    if !probe.emulated {
        return Ok((CpuTemplate::Host, None));
    }
    let notice = format!(
        "rypervisor: KVM emulates guest ring 0 on this host ({:.0}x slower than user mode): \
         using --cpu-template nested-safe",
        probe.ratio
    );
    Ok((CpuTemplate::NestedSafe, Some(notice)))
}

fn print_ending(report: &BootReport) {
    match &report.ending {
        Ending::PoweredOff | Ending::Reset => {}
        Ending::UserQuit => say!("rypervisor: stopped (Ctrl-A x)"),
        Ending::Signal(sig) => say!(
            "rypervisor: stopped by {}",
            crate::terminal::signal_name(*sig)
        ),
        Ending::Panic => say!("rypervisor: the guest kernel panicked (see the console above)"),
        Ending::TimedOut => {
            say!("rypervisor: guest stopped: time limit expired");
            for place in &report.last_places {
                say!("  {place}");
            }
        }
        Ending::Crashed(why) => {
            say!("rypervisor: the VM cannot continue: {why}");
            for place in &report.last_places {
                say!("  {place}");
            }
        }
    }
}

fn print_stats(report: &BootReport) {
    let ms =
        |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.3} s", d.as_secs_f64()));
    say!(
        "boot statistics ({}, cpu template {})",
        report.format,
        report.template
    );
    say!("  kernel entry      {}", ms(report.kernel_entry));
    say!("  boot marker       {}", ms(report.marker));
    say!("  end               {}", ms(Some(report.ended)));
    say!("  emulation steps   {}", report.workarounds);
    for (i, e) in report.exits.iter().enumerate() {
        say!("vCPU {i} {e}");
    }
}
