//! `rypervisor boot` against real /dev/kvm: the repository's guest kernel recipe
//! (guest/build-kernel.sh, cached after the first build) with its initramfs on 2 vCPUs, as a
//! vmlinux without PVH and as a bzImage; Debian's stock cloud kernel as a bzImage; a
//! panicking guest; the console; and bad input. The one-vCPU boot that also checks the
//! virtio devices and seccomp is in devices.rs.
//!
//! Boots are serialised (one guest at a time): on a nested host guest ring 0 is emulated and
//! CPU-bound, so parallel boots would only slow each other down.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::guest::{guest_kernel, initramfs, one_at_a_time, script};
use common::{require_kvm, rypervisor, Run};

fn boot(args: &[&str]) -> Run {
    require_kvm();
    let mut all = vec!["boot"];
    all.extend_from_slice(args);
    rypervisor(&all, b"")
}

fn boot_recipe(cpus: &str, extra: &[&str]) -> Run {
    boot_with(&guest_kernel().join("vmlinux"), cpus, extra)
}

/// Boots `kernel` with the recipe initramfs, 128M, `cpus` vCPUs and --stats.
fn boot_with(kernel: &Path, cpus: &str, extra: &[&str]) -> Run {
    let initrd = initramfs();
    let _one = one_at_a_time();
    let mut args = vec![
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cpus",
        cpus,
        "--mem",
        "128M",
        "--timeout",
        "240",
        "--stats",
    ];
    args.extend_from_slice(extra);
    boot(&args)
}

#[test]
fn the_recipe_kernel_brings_up_two_cpus() {
    let r = boot_recipe("2", &[]);
    assert_eq!(r.status, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("smp: Brought up 1 node, 2 CPUs"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("rypervisor-init: cpus=2"), "{}", r.stdout);
    assert!(
        r.stderr.contains("vCPU 1 exits"),
        "both vCPUs ran on their threads: {}",
        r.stderr
    );
}

#[test]
fn a_vmlinux_without_the_pvh_note_boots_at_its_64_bit_entry() {
    // A copy of the recipe's vmlinux whose Xen PVH entry note (name "Xen", type 18,
    // XEN_ELFNOTE_PHYS32_ENTRY) is renamed, so the loader finds no PVH entry.
    let mut elf = std::fs::read(guest_kernel().join("vmlinux")).unwrap();
    // Note header: namesz (4), descsz (any), type (18), then the name.
    let tail = [18u8, 0, 0, 0, b'X', b'e', b'n', 0];
    let at = elf
        .windows(16)
        .position(|w| w[..4] == [4, 0, 0, 0] && w[8..] == tail)
        .expect("the PVH note");
    elf[at + 8] = 0x7f;
    let dir = tempfile::tempdir().unwrap();
    let vmlinux = dir.path().join("vmlinux-no-pvh");
    std::fs::write(&vmlinux, elf).unwrap();
    let r = boot_with(&vmlinux, "1", &[]);
    assert_eq!(r.status, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("ELF vmlinux (64-bit entry)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.contains("rypervisor-init: hello from /init"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_guest_panic_ends_with_status_1() {
    let r = boot_recipe("1", &["--cmdline", "rypervisor.panic"]);
    assert!(
        r.stdout.contains("Kernel panic - not syncing"),
        "{}",
        r.stdout
    );
    assert_eq!(r.status, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("the guest kernel panicked"),
        "{}",
        r.stderr
    );
}

/// What a boot log must show for `--mem 128M` and our command line.
fn assert_boot_parameters(console: &str, stderr: &str, extra_cmdline: &str) {
    assert!(
        console.contains("Linux version 6.1"),
        "banner missing:\n{console}\n{stderr}"
    );
    let expected_cmdline = format!(
        "Command line: console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux \
         i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1{}{extra_cmdline}",
        if stderr.contains("nested-safe") {
            " noxsave clearcpuid=308,151,137 nofsgsbase"
        } else {
            ""
        }
    );
    assert!(
        console.contains(&expected_cmdline),
        "{expected_cmdline:?} not in\n{console}"
    );
    for e820 in [
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x000000000009fc00-",
        "BIOS-e820: [mem 0x0000000000100000-0x0000000007ffffff] usable",
    ] {
        assert!(console.contains(e820), "{e820} not in\n{console}");
    }
    // "Memory: 114276K/130680K available": the total is the e820 RAM in KiB (less the
    // first page, which Linux keeps for itself).
    let memory = console
        .lines()
        .find(|l| l.contains("Memory: "))
        .expect("a Memory: line");
    let total: u64 = memory
        .split('/')
        .nth(1)
        .and_then(|s| s.split('K').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {memory}"));
    let e820_kib = ((128u64 << 20) - 0x60400) / 1024;
    assert!(
        total <= e820_kib && total > e820_kib - 1024,
        "{memory}: expected about {e820_kib}K"
    );
}

#[test]
fn the_recipe_bzimage_boots_with_our_parameters() {
    let r = boot_with(
        &guest_kernel().join("bzImage"),
        "1",
        &["--cmdline", "loglevel=7"],
    );
    assert_eq!(r.status, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("bzImage (64-bit boot protocol)"),
        "{}",
        r.stderr
    );
    assert_boot_parameters(&r.stdout, &r.stderr, " loglevel=7");
    assert!(
        r.stdout.contains("rypervisor-init: hello from /init"),
        "{}",
        r.stdout
    );
}

/// Boots with `args`, reads the console until a line contains `pattern`, then types
/// `keys` (Ctrl-A x...) and waits. Returns the console lines read and the process output.
fn boot_until_then_type(
    args: &[&str],
    pattern: &str,
    keys: &[u8],
) -> (Vec<String>, std::process::Output) {
    require_kvm();
    let _one = one_at_a_time();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rypervisor"))
        .arg("boot")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let done = line.contains(pattern);
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = stdin.write_all(keys);
    drop(stdin);
    (lines, child.wait_with_output().unwrap())
}

#[test]
#[ignore = "Debian's XZ-compressed bzImage spends many minutes in its decompressor where KVM emulates \
            guest ring 0 (nested hosts); seconds on hardware KVM: run with --ignored there"]
fn debian_s_stock_kernel_boots_as_a_bzimage() {
    let bzimage = script("fetch-stock-kernel.sh", &[]);
    let args = ["--kernel", &bzimage, "--mem", "128M", "--timeout", "1800"];
    let (lines, out) = boot_until_then_type(&args, "Memory: ", &[0x01, b'x']);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_boot_parameters(&lines.join("\n"), &stderr, "");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopped (Ctrl-A x)"), "{stderr}");
}

#[test]
fn ctrl_a_x_quits() {
    let vmlinux = guest_kernel().join("vmlinux");
    let started = Instant::now();
    // Ctrl-A Ctrl-A goes to the guest as one Ctrl-A; then Ctrl-A x quits.
    let args = [
        "--kernel",
        vmlinux.to_str().unwrap(),
        "--mem",
        "64M",
        "--timeout",
        "120",
    ];
    let (lines, out) = boot_until_then_type(&args, "Linux version", &[0x01, 0x01, 0x01, b'x']);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!lines.is_empty());
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopped (Ctrl-A x)"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "quit promptly, not at the timeout"
    );
}

#[test]
fn the_terminal_is_raw_during_the_boot_and_restored_after() {
    // `script` gives rypervisor a pseudo-terminal as stdin; Ctrl-A x ends the VM once the
    // guest prints; `stty -a` afterwards shows the terminal's mode.
    let vmlinux = guest_kernel().join("vmlinux");
    require_kvm();
    let _one = one_at_a_time();
    let inner = format!(
        "{} boot --kernel {} --mem 64M --timeout 60 --cpu-template nested-safe > /dev/null; \
         echo status=$?; stty -a",
        env!("CARGO_BIN_EXE_rypervisor"),
        vmlinux.display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    stdin.write_all(&[0x01, b'x']).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("stopped (Ctrl-A x)"), "{text}");
    assert!(text.contains("status=0"), "{text}");
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(
        words.contains(&"icanon") && words.contains(&"echo"),
        "terminal not restored: {text}"
    );
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a kernel\n").unwrap();
    let mut fake_bz = vec![0u8; 0x1000];
    fake_bz[0x1f1] = 4; // setup_sects
    fake_bz[0x1fe] = 0x55;
    fake_bz[0x1ff] = 0xaa;
    fake_bz[0x202..0x206].copy_from_slice(b"HdrS");
    fake_bz[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
    fake_bz[0x211] = 1; // loadflags: LOADED_HIGH
    let truncated = dir.path().join("bzImage");
    std::fs::write(&truncated, &fake_bz).unwrap();
    let big = dir.path().join("big.cpio");
    std::fs::write(&big, vec![0u8; 20 << 20]).unwrap();
    let long = "x".repeat(3000);
    let t = text.to_str().unwrap();
    let b = truncated.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--kernel", t], "is not a Linux kernel"),
        (vec!["--kernel", b], "cannot load kernel"),
        (
            vec!["--kernel", "/no/such/kernel"],
            "cannot read kernel /no/such/kernel",
        ),
        (
            vec!["--kernel", t, "--cpus", "0"],
            "--cpus must be between 1",
        ),
        (
            vec![
                "--kernel",
                t,
                "--mem",
                "16M",
                "--initrd",
                big.to_str().unwrap(),
            ],
            "does not fit in guest memory",
        ),
        (vec!["--kernel", t, "--cmdline", &long], "command line is"),
        (
            vec!["--kernel", t, "--cpu-template", "fast"],
            "unknown CPU template",
        ),
    ];
    for (args, message) in cases {
        let mut all = args.clone();
        all.extend_from_slice(&["--cpu-template", "host"]);
        if args.contains(&"--cpu-template") {
            all.truncate(args.len());
        }
        let r = boot(&all);
        assert_eq!(
            r.status,
            if message.contains("template") { 2 } else { 1 },
            "{args:?}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains(message),
            "{args:?}: expected {message:?} in {}",
            r.stderr
        );
    }
}

#[test]
fn endless_console_input_costs_little_and_the_timeout_holds() {
    require_kvm();
    let kernel = guest_kernel().join("vmlinux");
    let _one = one_at_a_time();
    let zero = Stdio::from(std::fs::File::open("/dev/zero").unwrap());
    let args = [
        "boot",
        "--kernel",
        kernel.to_str().unwrap(),
        "--mem",
        "64M",
        "--timeout",
        "8",
    ];
    let r = common::measured(&args, zero, Stdio::null());
    assert_eq!(r.status, 124, "{}", r.stderr);
    assert!(r.took < Duration::from_secs(20), "took {:?}", r.took);
    assert!(
        r.peak_mib < 64 + 48,
        "peak RSS {} MiB with --mem 64M",
        r.peak_mib
    );
}
