//! `rypervisor exec`: static C programs (built here with gcc -static and musl-gcc -static)
//! in the sandbox, against real /dev/kvm.

mod common;
#[path = "../../rypervisor/tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_kvm, rypervisor, Run};
use support::{program, Libc};

fn exec(flags: &[&str], name: &str, libc: Libc, args: &[&str], stdin: &[u8]) -> Run {
    require_kvm();
    let path = program(name, libc);
    let path = path.to_str().unwrap();
    let mut all = vec!["exec"];
    all.extend_from_slice(flags);
    all.push("--");
    all.push(path);
    all.extend_from_slice(args);
    rypervisor(&all, stdin)
}

#[test]
fn hello_world_with_both_c_libraries() {
    for libc in support::libcs() {
        let r = exec(&[], "hello", libc, &[], b"");
        assert_eq!(r.status, 0, "{libc:?}: {}", r.stderr);
        assert_eq!(r.stdout, "hello from the sandbox\n", "{libc:?}");
        assert_eq!(r.stderr, "", "{libc:?}");
    }
}

#[test]
fn a_static_pie_runs_too() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let pie = dir.path().join("args-pie");
    support::compile("args", "gcc", &["-static-pie"], &pie);
    let r = rypervisor(&["exec", "--", pie.to_str().unwrap(), "x"], b"");
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("argv[1]=x\n") && r.stdout.contains("tls=42"),
        "{}",
        r.stdout
    );
}

#[test]
fn the_program_sees_a_linux_process_start() {
    for libc in support::libcs() {
        let r = exec(
            &["--env", "GREETING=hi there", "--env", "N=2"],
            "args",
            libc,
            &["one", "two words"],
            b"",
        );
        assert_eq!(r.status, 0, "{libc:?}: {}", r.stderr);
        let path = program("args", libc);
        for line in [
            "argc=3".to_string(),
            format!("argv[0]={}", path.display()),
            "argv[1]=one".into(),
            "argv[2]=two words".into(),
            "env=GREETING=hi there".into(),
            "env=N=2".into(),
            "envc=2".into(),
            "pagesz=4096".into(),
            "entry_ok=1".into(),
            "random_ok=1".into(),
            "hwcap_ok=1".into(),
            "uname=Linux rypervisor 6.1.0-rypervisor x86_64".into(),
            "pid=1 uid=1000".into(),
            "tls=42".into(),
        ] {
            assert!(
                r.stdout.lines().any(|l| l == line),
                "{libc:?}: no line {line:?} in\n{}",
                r.stdout
            );
        }
    }
    // No environment unless asked for.
    let r = exec(&[], "args", Libc::Glibc, &[], b"");
    assert!(r.stdout.contains("envc=0\n"), "{}", r.stdout);
}

#[test]
fn large_allocations_work_and_the_memory_limit_is_enomem_inside() {
    for libc in support::libcs() {
        let r = exec(&["--mem", "64M"], "alloc", libc, &["over", "80"], b"");
        assert_eq!(r.status, 0, "{libc:?}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stdout.contains("large blocks ok"),
            "{libc:?}: {}",
            r.stdout
        );
        assert!(
            r.stdout.contains("malloc(80 MiB): failed errno=ENOMEM"),
            "{libc:?}: {}",
            r.stdout
        );
    }
    // With more memory the same request succeeds: the limit is --mem, nothing else.
    let r = exec(
        &["--mem", "128M"],
        "alloc",
        Libc::Glibc,
        &["over", "80"],
        b"",
    );
    assert!(
        r.stdout.contains("malloc(80 MiB): succeeded"),
        "{}",
        r.stdout
    );
    assert_eq!(r.status, 1);
    // Past 4 GiB: memory is mapped lazily, so a large guest costs the host what it touches.
    let r = exec(
        &["--mem", "6G"],
        "alloc",
        Libc::Glibc,
        &["high", "5000"],
        b"",
    );
    assert_eq!(r.status, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("high: last byte past 4 GiB, reads 42"),
        "{}",
        r.stdout
    );
}

#[test]
fn computation_matches_the_native_run() {
    let path = program("compute", Libc::Glibc);
    let native = Command::new(&path).arg("300000").output().unwrap();
    let r = exec(&[], "compute", Libc::Glibc, &["300000"], b"");
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert_eq!(r.stdout, String::from_utf8_lossy(&native.stdout));
}

#[test]
fn stdin_passes_through() {
    for libc in support::libcs() {
        let r = exec(&[], "echo", libc, &[], b"hello\nsandbox");
        assert_eq!(r.status, 0, "{libc:?}: {}", r.stderr);
        assert_eq!(r.stdout, "HELLO\nSANDBOX", "{libc:?}");
        assert_eq!(r.stderr, "echoed 13 bytes\n", "{libc:?}");
    }
}

#[test]
fn only_allowed_paths_can_be_read_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::write(allowed.join("data.txt"), "visible line\nsecond\n").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), allowed.join("link")).unwrap();
    let a = allowed.join("data.txt");
    let outside = dir.path().join("secret.txt");
    let dotdot = format!("{}/../secret.txt", allowed.display());
    let link = allowed.join("link");
    let allow = allowed.to_str().unwrap();
    let args = [
        a.to_str().unwrap(),
        outside.to_str().unwrap(),
        &dotdot,
        link.to_str().unwrap(),
        "/etc/passwd",
    ];
    let r = exec(&["--allow-read", allow], "files", Libc::Glibc, &args, b"");
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains(&format!("{}: read \"visible line\"", a.display())),
        "{}",
        r.stdout
    );
    for denied in [
        outside.display().to_string(),
        dotdot.clone(),
        link.display().to_string(),
        "/etc/passwd".into(),
    ] {
        assert!(
            r.stdout
                .contains(&format!("{denied}: error Permission denied")),
            "{denied} in\n{}",
            r.stdout
        );
    }
    assert!(
        r.stdout.contains("open for writing: Permission denied"),
        "{}",
        r.stdout
    );
    assert!(!std::path::Path::new("/tmp/rypervisor-sandbox-write-test").exists());
    // Without --allow-read nothing is readable.
    let r = exec(&[], "files", Libc::Glibc, &[a.to_str().unwrap()], b"");
    assert!(r.stdout.contains("error Permission denied"), "{}", r.stdout);
}

#[test]
fn sockets_processes_and_programs_are_denied() {
    let r = exec(&[], "deny", Libc::Glibc, &[], b"");
    assert_eq!(r.status, 0, "{}", r.stderr);
    for line in [
        "socket: Permission denied",
        "ptrace: Function not implemented",
        "fork: succeeded",
        "execve: Permission denied",
        "still here",
    ] {
        assert!(r.stdout.contains(line), "{line} in\n{}", r.stdout);
    }
    // One process at most: no child.
    let r = exec(&["--max-procs", "1"], "deny", Libc::Glibc, &[], b"");
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("fork: Resource temporarily unavailable"),
        "{}",
        r.stdout
    );
    let r = exec(&["--strict"], "deny", Libc::Glibc, &[], b"");
    assert_eq!(r.status, 159, "{}", r.stderr);
    assert!(
        r.stdout.is_empty(),
        "ended at the first denied call: {}",
        r.stdout
    );
    assert!(
        r.stderr
            .contains("program killed: system call ptrace (101) is not allowed (--strict)"),
        "{}",
        r.stderr
    );
    // --strict still lets a normal program start and finish.
    let r = exec(&["--strict"], "hello", Libc::Glibc, &[], b"");
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (0, "hello from the sandbox\n"),
        "{}",
        r.stderr
    );
}

#[test]
fn crashes_are_reported_like_signals() {
    for libc in support::libcs() {
        let r = exec(&[], "crash", libc, &["null"], b"");
        assert_eq!(r.status, 139, "{libc:?}: {}", r.stderr);
        assert_eq!(r.stdout, "about to null\n");
        let report = r.stderr.trim();
        assert_eq!(report.lines().count(), 1, "one line: {report}");
        assert!(
            report.starts_with("rypervisor: program killed by SIGSEGV: #PF page fault at rip 0x"),
            "{report}"
        );
        assert!(
            report.contains("mov eax,[0]"),
            "{libc:?} disassembled: {report}"
        );
        assert!(report.contains(", address 0x0"), "{report}");
    }
    let r = exec(&[], "crash", Libc::Glibc, &["ud2"], b"");
    assert_eq!(r.status, 132, "{}", r.stderr);
    assert!(
        r.stderr.contains("SIGILL: #UD invalid opcode") && r.stderr.contains("(ud2 [0f 0b])"),
        "{}",
        r.stderr
    );
    // A jump to the last bytes of the address space: the report must not overflow reading them.
    let r = exec(&[], "crash", Libc::Glibc, &["wild"], b"");
    assert_eq!(r.status, 139, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("#PF page fault at rip 0xfffffffffffffff8"),
        "{}",
        r.stderr
    );
    let r = exec(&[], "crash", Libc::Glibc, &["int3"], b"");
    assert_eq!(r.status, 133, "{}", r.stderr);
    assert!(r.stderr.contains("SIGTRAP: #BP breakpoint"), "{}", r.stderr);
    let r = exec(&[], "crash", Libc::Glibc, &["div"], b"");
    assert_eq!(r.status, 136, "{}", r.stderr);
    assert!(
        r.stderr.contains("SIGFPE: #DE divide error") && r.stderr.contains("idiv"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_runaway_program_is_stopped_by_the_time_limit() {
    let started = Instant::now();
    let r = exec(&["--timeout", "1"], "crash", Libc::Glibc, &["spin"], b"");
    assert_eq!(r.status, 124, "{}", r.stderr);
    assert!(r.stderr.contains("time limit expired"), "{}", r.stderr);
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_program_blocked_on_stdin_is_stopped_by_the_time_limit() {
    require_kvm();
    let path = program("echo", Libc::Glibc);
    // stdin stays open and empty: the program blocks in read until the limit.
    let mut child = Command::new(env!("CARGO_BIN_EXE_rypervisor"))
        .args(["exec", "--timeout", "0.5", "--"])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(
        out.status.code(),
        Some(124),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn trace_and_stats() {
    let r = exec(
        &["--trace-syscalls", "--stats"],
        "hello",
        Libc::Glibc,
        &[],
        b"",
    );
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("write(1, \"hello from the sandbox\\n\", 23) = 23"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("exit_group(0) = ?"), "{}", r.stderr);
    assert!(
        r.stderr.contains("rseq(") && r.stderr.contains("= -1 ENOSYS"),
        "{}",
        r.stderr
    );
    for field in [
        "in guest (KVM_RUN)",
        "in VMM (serving calls)",
        "system calls",
        "syscall entry",
    ] {
        assert!(r.stderr.contains(field), "{field} in {}", r.stderr);
    }
    assert!(
        r.stderr
            .lines()
            .any(|l| l.trim_start().starts_with("write ") && l.trim_end().ends_with(" 1")),
        "{}",
        r.stderr
    );
}

#[test]
fn the_program_s_exit_status_is_ours() {
    let r = exec(&[], "warm", Libc::Glibc, &[], b"abcde\n");
    assert_eq!(r.status, 5, "{}", r.stderr);
    assert!(r.stdout.starts_with("ready\nrequests=1"), "{}", r.stdout);
}

#[test]
fn the_vmm_runs_under_seccomp() {
    require_kvm();
    let path = program("crash", Libc::Glibc);
    let child = Command::new(env!("CARGO_BIN_EXE_rypervisor"))
        .args(["exec", "--timeout", "20", "--"])
        .arg(&path)
        .arg("spin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    while Instant::now() < deadline {
        seen = std::fs::read_to_string(&status_file).unwrap_or_default();
        if seen
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.ends_with('2'))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id() as i32;
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = child.wait_with_output();
    let line = seen
        .lines()
        .find(|l| l.starts_with("Seccomp:"))
        .unwrap_or("none");
    assert_eq!(
        line.split_whitespace().nth(1),
        Some("2"),
        "seccomp mode 2 (filter) expected: {line}"
    );
}

#[test]
fn programs_that_cannot_run_get_a_clear_error() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let dynamic = dir.path().join("dynamic");
    support::compile("hello", "gcc", &[], &dynamic);
    let script = dir.path().join("script.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let mut arm = std::fs::read(program("hello", Libc::Glibc)).unwrap();
    arm[18] = 183; // EM_AARCH64
    let arm_path = dir.path().join("arm");
    std::fs::write(&arm_path, arm).unwrap();
    let hello = program("hello", Libc::Glibc);
    let hello = hello.to_str().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![dynamic.display().to_string()],
            "its interpreter /lib64/ld-linux-x86-64.so.2 is not under an --allow-read root; add --allow-read",
        ),
        (vec![script.display().to_string()], "is a script"),
        (vec![arm_path.display().to_string()], "not x86-64"),
        (
            vec!["/nonexistent/program".into()],
            "cannot read program /nonexistent/program",
        ),
        (
            vec!["--mem".into(), "2M".into(), "--".into(), hello.into()],
            "at least 4 MiB",
        ),
        (
            vec!["--mem".into(), "300G".into(), "--".into(), hello.into()],
            "too large",
        ),
        (
            vec!["--mem".into(), "250G".into(), "--".into(), hello.into()],
            "this host has",
        ),
        (
            vec![
                "--allow-read".into(),
                "/no/such/dir".into(),
                "--".into(),
                hello.into(),
            ],
            "--allow-read /no/such/dir",
        ),
        (
            vec!["--env".into(), "NOEQUALS".into(), "--".into(), hello.into()],
            "use NAME=VALUE",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["exec".to_string()];
        if !args.iter().any(|a| a == "--") {
            all.push("--".into());
        }
        all.extend(args.iter().cloned());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let r = rypervisor(&refs, b"");
        assert_eq!(r.status, 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with("rypervisor: error: "),
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
fn descriptors_follow_linux_rules_for_dup_and_the_lowest_free_fd() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("data.txt");
    std::fs::write(&f, "abcdefgh").unwrap();
    let allow = dir.path().to_str().unwrap();
    for libc in support::libcs() {
        let r = exec(
            &["--allow-read", allow],
            "fds",
            libc,
            &[f.to_str().unwrap()],
            b"",
        );
        assert_eq!(r.status, 0, "{libc:?}: {}", r.stderr);
        for line in [
            "open=3 F_GETFD=1 dupfd=10 F_GETFD=0\n",
            "shared offset: abcd|efgh\n",
            "dup2 onto 0: 0\n",
            "stdin now reads: abcd\n",
            "after close(0), open gives 0\n",
            "written through fd 3\n", // 3 was closed: the lowest free again
            "dup3 onto itself: -1 (Invalid argument)\n",
            "dup2 of a closed fd: -1 (Bad file descriptor)\n",
        ] {
            assert!(
                r.stdout.contains(line),
                "{libc:?}: no {line:?} in\n{}",
                r.stdout
            );
        }
    }
}

#[test]
fn the_trace_can_go_to_a_file_of_its_own_in_whole_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("trace.log");
    let flag = format!("--trace-syscalls={}", log.display());
    let r = exec(&[&flag], "hello", Libc::Glibc, &[], b"");
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "hello from the sandbox\n");
    assert!(
        !r.stderr.contains("[sandbox]"),
        "nothing on stderr: {}",
        r.stderr
    );
    let trace = std::fs::read_to_string(&log).unwrap();
    assert!(
        trace.contains("[sandbox] write(1, \"hello from the sandbox\\n\", 23) = 23\n"),
        "{trace}"
    );
    assert!(
        trace.lines().all(|l| l.starts_with("[sandbox] ")),
        "{trace}"
    );
    assert!(!trace.contains("syscall_"), "every call by name: {trace}");
    let r = exec(
        &["--trace-syscalls=/no/such/dir/t.log"],
        "hello",
        Libc::Glibc,
        &[],
        b"",
    );
    assert_eq!(r.status, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("--trace-syscalls=/no/such/dir/t.log"),
        "{}",
        r.stderr
    );
}

#[test]
fn the_standard_streams_are_what_the_host_made_them() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "hello world\n").unwrap();
    let prog = program("stdio", Libc::Glibc);
    // stdin a regular file, stdout a pipe.
    let out = Command::new(env!("CARGO_BIN_EXE_rypervisor"))
        .args(["exec", "--", prog.to_str().unwrap()])
        .stdin(std::fs::File::open(&input).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("stdin=file stdout=fifo tty=0\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("size=12 first=hello\n"),
        "seekable: {stdout}"
    );
    // stdin a pipe: not seekable, a FIFO.
    let r = exec(&[], "stdio", Libc::Glibc, &[], b"piped");
    assert!(
        r.stdout.contains("stdin=fifo stdout=fifo tty=0\n"),
        "{}",
        r.stdout
    );
}
