//! `rypervisor exec`: a sandboxed program on the VMM's own streams, confined by seccomp, with
//! `--stats` on stderr.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use rypervisor::sandbox::{self, Policy, Sandbox, SandboxBuilder, StdHost};

use crate::ExecArgs;

pub(crate) fn cmd_exec(args: ExecArgs, device: &std::path::Path) -> Result<u8> {
    let mut policy = Policy::default();
    policy.strict = args.strict;
    for path in &args.allow_read {
        policy.allow_read(path)?;
    }
    match &args.cwd {
        Some(dir) => policy.set_cwd(dir)?,
        // Like a native run, where an allowed root holds the current directory.
        None => {
            if let Ok(here) = std::env::current_dir() {
                let _ = policy.set_cwd(&here);
            }
        }
    }
    for e in &args.env {
        if !e.contains('=') {
            bail!("--env {e}: use NAME=VALUE");
        }
    }
    let program = PathBuf::from(&args.command[0]);
    let mut builder = SandboxBuilder::from_file(&program)?
        .args(args.command.iter().cloned())
        .env(args.env.iter().cloned())
        .mem(args.mem)
        .timeout(args.timeout)
        .max_procs(usize::from(args.max_procs))
        .policy(policy)
        .kvm_device(device);
    builder = match &args.trace_syscalls {
        None => builder,
        Some(None) => builder.trace(true),
        Some(Some(path)) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("--trace-syscalls={}", path.display()))?;
            builder.trace_to(file)
        }
    };
    let mut sandbox = builder.build()?;
    if !args.no_seccomp {
        if args.max_procs > 1 {
            rypervisor::seccomp::prepare_for_threads();
        }
        let filter =
            rypervisor::seccomp::sandbox_filter(sandbox.policy().any_files(), args.max_procs > 1)?;
        rypervisor::seccomp::confine_process(&filter)?;
    }
    let exit = sandbox.run(&mut StdHost)?;
    if let Some(report) = exit.report() {
        eprintln!("rypervisor: {report}");
    }
    if args.stats {
        print_stats(&sandbox);
    }
    let _ = std::io::stdout().flush();
    Ok((exit.status() & 0xff) as u8)
}

/// `--stats`: where the time went and the calls by count.
fn print_stats(sandbox: &Sandbox) {
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
        eprintln!("    {:<22}{n:>10}", sandbox::linux::sysno::name(*nr));
    }
}
