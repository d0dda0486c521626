//! Hostile and careless input from the host side, one test per root cause: FIFOs and devices
//! given as files, files larger than they could ever fit, endless stdin, a stdout nobody
//! reads, corrupt kernel headers, a kernel that resets at entry, and the messages a user
//! reads. Each run is bounded, and where memory is the point, the VMM's peak RSS is measured
//! (`wait4`'s rusage).

mod common;
#[path = "../../rypervisor/tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{assemble, measured, path_str, require_kvm, Files, Measured};
use iced_x86::code_asm::*;
use support::{program, Libc};

fn quiet(args: &[&str]) -> Measured {
    measured(args, Stdio::null(), Stdio::null())
}

fn fifo(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let c = std::ffi::CString::new(path_str(&path)).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    path
}

/// A pipe whose read end we keep open and never read: stdout that fills and stays full.
fn unread_pipe() -> (OwnedFd, Stdio) {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just returned by pipe(2) and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (read, Stdio::from(write))
}

#[test]
fn fifos_given_as_files_end_at_once_with_a_clear_error() {
    require_kvm();
    let files = Files::new();
    let f = fifo(files.dir.path(), "pipe");
    let text = files.write("notes.txt", b"not a kernel\n");
    let (f, t) = (path_str(&f), path_str(&text));
    let cases: [Vec<&str>; 4] = [
        vec!["run", "--timeout", "5", f],
        vec!["exec", "--timeout", "5", "--", f],
        vec![
            "boot",
            "--cpu-template",
            "host",
            "--timeout",
            "5",
            "--kernel",
            f,
        ],
        vec![
            "boot",
            "--cpu-template",
            "host",
            "--timeout",
            "5",
            "--kernel",
            t,
            "--initrd",
            f,
        ],
    ];
    for args in cases {
        let r = quiet(&args);
        assert_eq!(r.status, 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr
                .contains("is a FIFO (named pipe), not a regular file"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(
            r.took < Duration::from_secs(4),
            "{args:?} took {:?}",
            r.took
        );
    }
}

#[test]
fn a_fifo_under_allow_read_does_not_block_the_vmm() {
    require_kvm();
    let files = Files::new();
    let f = fifo(files.dir.path(), "pipe");
    let prog = program("files", Libc::Glibc);
    let dir = path_str(files.dir.path());
    let args = [
        "exec",
        "--allow-read",
        dir,
        "--timeout",
        "5",
        "--",
        path_str(&prog),
        path_str(&f),
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_rypervisor"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("{}: error Permission denied", path_str(&f))),
        "{stdout}"
    );
}

#[test]
fn devices_and_huge_files_are_refused_before_they_are_read() {
    require_kvm();
    let files = Files::new();
    let sparse = files.dir.path().join("sparse.img");
    File::create(&sparse).unwrap().set_len(1 << 30).unwrap();
    let text = files.write("notes.txt", b"not a kernel\n");
    let (s, t) = (path_str(&sparse), path_str(&text));
    let host = ["--cpu-template", "host"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "/dev/zero"], "is a character device"),
        (vec!["exec", "--", "/dev/zero"], "is a character device"),
        (
            vec!["boot", host[0], host[1], "--kernel", "/dev/zero"],
            "is a character device",
        ),
        (
            vec![
                "boot",
                host[0],
                host[1],
                "--kernel",
                t,
                "--initrd",
                "/dev/zero",
            ],
            "is a character device",
        ),
        (
            vec!["run", "--mem", "2M", s],
            "larger than guest memory (--mem)",
        ),
        (
            vec!["exec", "--mem", "64M", "--", s],
            "larger than guest memory (--mem)",
        ),
        (
            vec![
                "boot", host[0], host[1], "--mem", "64M", "--kernel", t, "--initrd", s,
            ],
            "does not fit in guest memory",
        ),
        (
            vec!["boot", host[0], host[1], "--kernel", s],
            "is not a Linux kernel",
        ),
    ];
    for (args, message) in cases {
        let r = quiet(&args);
        assert_eq!(r.status, 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(message),
            "{args:?}: expected {message:?} in {}",
            r.stderr
        );
        assert!(r.peak_mib < 48, "{args:?}: peak RSS {} MiB", r.peak_mib);
    }
}

/// A real-mode guest that reads the UART for as long as there is input.
fn uart_reader() -> Vec<u8> {
    assemble(16, 0x1000, |a| {
        let mut again = a.create_label();
        let mut wait = a.create_label();
        a.set_label(&mut again)?;
        a.mov(dx, 0x3fdu32)?;
        a.set_label(&mut wait)?;
        a.in_(al, dx)?;
        a.test(al, 1u32)?;
        a.jz(wait)?;
        a.mov(dx, 0x3f8u32)?;
        a.in_(al, dx)?;
        a.jmp(again)
    })
}

#[test]
fn endless_stdin_into_a_guest_that_reads_costs_little_and_the_timeout_holds() {
    require_kvm();
    let files = Files::new();
    let guest = files.write("reader.bin", &uart_reader());
    let zero = Stdio::from(File::open("/dev/zero").unwrap());
    let r = measured(
        &["run", "--timeout", "2", path_str(&guest)],
        zero,
        Stdio::null(),
    );
    assert_eq!(r.status, 124, "{}", r.stderr);
    assert!(r.took < Duration::from_secs(6), "took {:?}", r.took);
    assert!(r.peak_mib < 48, "peak RSS {} MiB", r.peak_mib);
}

#[test]
fn a_stdout_nobody_reads_does_not_stop_the_clock() {
    require_kvm();
    let files = Files::new();
    let writer = assemble(16, 0x1000, |a| {
        let mut again = a.create_label();
        a.mov(dx, 0x3f8u32)?;
        a.mov(al, b'x' as u32)?;
        a.set_label(&mut again)?;
        a.out(dx, al)?;
        a.jmp(again)
    });
    let guest = files.write("writer.bin", &writer);
    let (_keep, stdout) = unread_pipe();
    let r = measured(
        &["run", "--timeout", "2", path_str(&guest)],
        Stdio::null(),
        stdout,
    );
    assert_eq!(r.status, 124, "{}", r.stderr);
    assert!(r.took < Duration::from_secs(6), "took {:?}", r.took);
}

/// A bzImage header (setup sectors, version, flags) that passes every check; `total` bytes.
fn bzimage(total: usize) -> Vec<u8> {
    let mut h = vec![0u8; total];
    h[0x1f1] = 4; // setup_sects
    h[0x1f4..0x1f8].copy_from_slice(&(((total - 5 * 512) / 16) as u32).to_le_bytes());
    h[0x1fe] = 0x55;
    h[0x1ff] = 0xaa;
    h[0x202..0x206].copy_from_slice(b"HdrS");
    h[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
    h[0x211] = 1; // loadflags: LOADED_HIGH
    h[0x236] = 1; // xloadflags: XLF_KERNEL_64
    h[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
    h[0x260..0x264].copy_from_slice(&(4u32 << 20).to_le_bytes());
    h
}

#[test]
fn corrupt_bzimage_headers_are_refused_naming_the_field() {
    require_kvm();
    let files = Files::new();
    let patch = |at: usize, bytes: &[u8]| {
        let mut h = bzimage(64 << 10);
        h[at..at + bytes.len()].copy_from_slice(bytes);
        h
    };
    let truncated = {
        let mut h = bzimage(64 << 10);
        h[0x1f4..0x1f8].copy_from_slice(&(1u32 << 20).to_le_bytes());
        h
    };
    let cases: [(&str, Vec<u8>, &[&str], &str); 5] = [
        (
            "old",
            patch(0x206, &[0x05, 0x02]),
            &[],
            "header field version is 0x205",
        ),
        (
            "nocmdline",
            patch(0x238, &[0, 0, 0, 0]),
            &[],
            "header field cmdline_size is 0x0",
        ),
        (
            "no64",
            patch(0x236, &[0, 0]),
            &[],
            "header field xloadflags is 0x0",
        ),
        ("short", truncated, &[], "bzImage is truncated"),
        (
            "big",
            patch(0x260, &(64u32 << 20).to_le_bytes()),
            &["--mem", "32M"],
            "raise --mem",
        ),
    ];
    for (name, bytes, extra, message) in cases {
        let path = files.write(name, &bytes);
        let mut args = vec![
            "boot",
            "--cpu-template",
            "host",
            "--kernel",
            path_str(&path),
        ];
        args.extend_from_slice(extra);
        let r = quiet(&args);
        assert_eq!(r.status, 1, "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains("cannot load kernel"),
            "{name}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains(message),
            "{name}: expected {message:?} in {}",
            r.stderr
        );
    }
}

/// A "vmlinux": an ELF linked in the kernel half whose 64-bit entry executes `ud2` with no
/// IDT, so the CPU triple-faults at once and the machine resets.
fn resetting_vmlinux() -> Vec<u8> {
    let code = assemble(64, 0x100_0000, |a| a.ud2());
    let mut elf = common::elf(true, object::elf::EM_X86_64, 0x100_0000, &code);
    // Kernel-half virtual address, physical 16 MiB, as a vmlinux has them.
    let phdr = 64;
    elf[phdr + 16..phdr + 24].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
    elf
}

#[test]
fn a_kernel_that_resets_at_entry_is_a_crash_with_a_report() {
    require_kvm();
    let files = Files::new();
    let kernel = files.write("vmlinux", &resetting_vmlinux());
    let r = quiet(&[
        "boot",
        "--cpu-template",
        "host",
        "--timeout",
        "30",
        "--kernel",
        path_str(&kernel),
    ]);
    assert_eq!(r.status, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("reset the machine without asking for it"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("vCPU 0 at rip"), "{}", r.stderr);
}

#[test]
fn messages_say_what_is_wrong_and_what_to_do() {
    require_kvm();
    let files = Files::new();
    let hello = program("hello", Libc::Glibc);
    let h = path_str(&hello);
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["run", "--timeout", "-6", h],
            2,
            "'-6' is not a positive number of seconds",
        ),
        (
            vec!["boot", "--kernel", h, "--cpus", "4294967296"],
            2,
            "give 1 to 32",
        ),
        (
            vec!["boot", "--cpu-template", "host", "--kernel", h],
            1,
            "use `rypervisor exec`",
        ),
        (vec!["run", h], 1, "run it with `rypervisor exec`"),
        (
            vec!["exec", "--", ""],
            1,
            "cannot read program \"\" (an empty path)",
        ),
        (
            vec!["--kvm-device", "/dev/null", "info"],
            1,
            "is not a KVM device",
        ),
        (
            vec!["exec", "--allow-read", "/proc/self", "--", h],
            1,
            "/proc is the host's live kernel state",
        ),
    ];
    for (args, status, message) in cases {
        let r = quiet(&args);
        assert_eq!(r.status, status, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(message),
            "{args:?}: expected {message:?} in {}",
            r.stderr
        );
    }
    // The OS error once, not twice.
    let missing = quiet(&[
        "boot",
        "--cpu-template",
        "host",
        "--kernel",
        "/no/such/kernel",
    ]);
    assert_eq!(
        missing.stderr.matches("No such file or directory").count(),
        1,
        "{}",
        missing.stderr
    );
    // No ring-0 notice before an error that has nothing to do with it.
    let bad = quiet(&["boot", "--kernel", "/no/such/kernel"]);
    assert!(
        !bad.stderr.contains("emulates guest ring 0"),
        "{}",
        bad.stderr
    );
    let _ = files;
}

#[test]
fn a_program_that_uses_the_system_call_port_itself_gets_sigsegv() {
    require_kvm();
    let prog = program("portio", Libc::Glibc);
    let r = quiet(&["exec", "--", path_str(&prog)]);
    assert_eq!(r.status, 139, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("program killed by SIGSEGV: #GP general protection"),
        "{}",
        r.stderr
    );
}

/// Stopped and continued (`kill -STOP`/`-CONT`, a shell's Ctrl-Z and `fg`, a debugger
/// attaching): the kernel resumes the VMM's timed waits with `restart_syscall`, which its
/// seccomp filters must allow, and the run goes on to its timeout.
#[test]
fn a_vmm_stopped_and_continued_goes_on_under_seccomp() {
    require_kvm();
    let files = Files::new();
    let spin = assemble(16, 0x1000, |a| {
        let mut again = a.create_label();
        a.set_label(&mut again)?;
        a.jmp(again)
    });
    let guest = files.write("spin.bin", &spin);
    let child = Command::new(env!("CARGO_BIN_EXE_rypervisor"))
        .args(["run", "--timeout", "3", path_str(&guest)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rypervisor");
    let pid = child.id() as i32;
    std::thread::sleep(Duration::from_millis(800));
    for signal in [libc::SIGSTOP, libc::SIGCONT] {
        // SAFETY: signals to our own child, which has not been waited for.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{:?}: {stderr}", out.status);
}
