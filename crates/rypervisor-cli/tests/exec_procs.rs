//! `rypervisor exec` running process trees: every process its own micro-VM. The C program
//! `procs` (glibc and musl) is compared with the same program run natively, mode by mode;
//! shells run pipelines, command substitution, background jobs, traps and scripts, compared
//! with the same shell natively; threads; CPU exceptions to handlers; a fork bomb meets
//! `--max-procs`; `--timeout` ends a tree.

mod common;
#[path = "../../rypervisor/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{path_str, require_kvm, rypervisor};
use support::{program, Libc};

/// The roots dynamic programs and busybox's applets need.
const SYSTEM: [&str; 8] = [
    "--allow-read",
    "/bin",
    "--allow-read",
    "/usr",
    "--allow-read",
    "/lib",
    "--allow-read",
    "/lib64",
];

fn native(prog: &str, args: &[&str], dir: &Path) -> (String, i32) {
    // Output to a file, not a pipe, and a deadline: a native run that hangs (its children
    // holding a pipe open) fails the test instead of stalling the suite.
    let out = tempfile::tempfile().unwrap();
    let mut child = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .stdout(out.try_clone().unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the native run of {prog} {args:?} did not end in 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut text = String::new();
    use std::io::{Read, Seek};
    let mut out = out;
    out.rewind().unwrap();
    out.read_to_string(&mut text).unwrap();
    // Killed by a signal: the status a shell shows (and rypervisor exits with).
    use std::os::unix::process::ExitStatusExt;
    let status = (status.code()).unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    (text, status)
}

fn sandboxed(flags: &[&str], prog: &str, args: &[&str]) -> (String, i32, String) {
    require_kvm();
    let mut all = vec!["exec", "--timeout", "60"];
    all.extend_from_slice(flags);
    all.push("--");
    all.push(prog);
    all.extend_from_slice(args);
    let r = rypervisor(&all, b"");
    (r.stdout, r.status, r.stderr)
}

#[test]
fn process_calls_behave_as_natively() {
    for libc in support::libcs() {
        let prog = program("procs", libc);
        let dir = prog.parent().unwrap();
        let p = path_str(&prog);
        for mode in ["basic", "exec", "signals", "pipes", "epoll", "leader"] {
            let (want, want_status) = native(p, &[mode], dir);
            let allow = ["--allow-read", path_str(dir), "--cwd", path_str(dir)];
            let (got, status, stderr) = sandboxed(&allow, p, &[mode]);
            assert_eq!(got, want, "{libc:?} {mode}: {stderr}");
            assert_eq!(status, want_status, "{libc:?} {mode}");
            assert!(stderr.is_empty(), "{libc:?} {mode}: {stderr}");
        }
        // The runs covered what they claim (a native run that printed nothing compares too).
        let (out, _) = native(p, &["exec"], dir);
        for line in [
            "report: argc=2 argv1=report fd3 closed fd4 open",
            "exec'd child: exited 42",
            "spawned child: exited 42",
            "vfork child wrote the parent's memory: 1",
        ] {
            assert!(out.contains(line), "{libc:?}: {line} in {out}");
        }
        let (out, _) = native(p, &["signals"], dir);
        for line in [
            "spinning child: killed by Terminated",
            "read across SIGCHLD (SA_RESTART): 4 late, handler ran: 1",
            "read across SIGCHLD (no SA_RESTART): -1 Interrupted system call",
        ] {
            assert!(out.contains(line), "{libc:?}: {line} in {out}");
        }
        let (out, _) = native(p, &["pipes"], dir);
        assert!(out.contains("records whole 256 torn 0"), "{libc:?}: {out}");
        let (out, _) = native(p, &["epoll"], dir);
        for line in [
            "ready: 1 events 0x1 data 42",
            "oneshot: 1 then 0",
            "a file: -1 Operation",
        ] {
            assert!(out.contains(line), "{libc:?}: {line} in {out}");
        }
    }
}

#[test]
fn threads_are_vcpus_of_one_vm() {
    // 8 pthreads: mutex-guarded counting, a condition variable passing a token round, TLS,
    // joins; then a thread's exit(3) ends the process. 8 MiB stacks each: --mem 256M.
    for libc in support::libcs() {
        let prog = program("threads", libc);
        let p = path_str(&prog);
        let dir = prog.parent().unwrap();
        let (want, want_status) = native(p, &[], dir);
        assert_eq!(
            want,
            "threads 8 counter 160000 thread-local sum 160000 turns 400 distinct tids 1\n"
        );
        for _ in 0..3 {
            let (got, status, stderr) = sandboxed(&["--mem", "256M"], p, &[]);
            assert_eq!(
                (got.as_str(), status),
                (want.as_str(), want_status),
                "{libc:?}: {stderr}"
            );
        }
        // Threads count against --max-procs: the fifth pthread_create fails.
        let (got, status, _) = sandboxed(&["--mem", "256M", "--max-procs", "4"], p, &["8"]);
        assert_eq!(
            (got.as_str(), status),
            ("pthread_create failed\n", 1),
            "{libc:?}"
        );
    }
}

#[test]
fn cpu_exceptions_reach_the_program_s_handlers() {
    for libc in support::libcs() {
        let prog = program("faults", libc);
        let p = path_str(&prog);
        let (want, want_status) = native(p, &[], prog.parent().unwrap());
        for line in [
            // (musl names SIGFPE "Arithmetic exception")
            "page fault: Segmentation fault code 1 (SEGV_MAPERR 1) addr 0x10 1 trapno 14",
            " exception code 1 (FPE_INTDIV 1) trapno 0",
            "ud2: Illegal instruction code 2 (ILL_ILLOPN 2) trapno 6",
        ] {
            assert!(want.contains(line), "{libc:?}: {line} in {want}");
        }
        let (got, status, stderr) = sandboxed(&[], p, &[]);
        assert_eq!(
            (got.as_str(), status),
            (want.as_str(), want_status),
            "{libc:?}: {stderr}"
        );
        assert_eq!(status, 139, "blocked, the last fault ends it");
        assert!(stderr.contains("killed by SIGSEGV"), "{stderr}");
    }
}

#[test]
fn a_fork_bomb_meets_max_procs() {
    let prog = program("procs", Libc::Glibc);
    let started = Instant::now();
    let (out, status, stderr) = sandboxed(&["--max-procs", "16"], path_str(&prog), &["bomb"]);
    assert_eq!(
        out, "children 15, then Resource temporarily unavailable\n",
        "{stderr}"
    );
    // It ends by kill(0, SIGTERM), itself included: 128 + 15.
    assert_eq!(status, 143, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // A shell's recursive fork bomb ends too, and the VMM with it.
    let bomb = "f() { f | f & }; f; sleep 1; echo survived";
    let (out, status, stderr) = sandboxed(
        &["--max-procs", "16", "--allow-read", "/bin"],
        "/bin/busybox",
        &["sh", "-c", bomb],
    );
    assert_eq!((out.as_str(), status), ("survived\n", 0), "{stderr}");
}

#[test]
fn every_vmm_thread_of_a_tree_is_confined() {
    // Two children sleeping and a program with threads: while they run, every thread of the
    // VMM (each process's, each vCPU's, the watchdog) shows Seccomp: 2.
    require_kvm();
    let threads_prog = program("threads", Libc::Glibc);
    let script = format!(
        "sleep 3 & sleep 3 & {} 2 >/dev/null; wait",
        path_str(&threads_prog)
    );
    let mut args = vec!["exec", "--timeout", "30", "--mem", "256M"];
    args.extend_from_slice(&SYSTEM);
    let dir = path_str(threads_prog.parent().unwrap());
    args.extend([
        "--allow-read",
        dir,
        "--",
        "/bin/busybox",
        "sh",
        "-c",
        &script,
    ]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_rypervisor"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let seen = common::threads(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let named = |p: &str| seen.iter().filter(|(n, _)| n.starts_with(p)).count();
    assert!(
        named("pid ") >= 2,
        "the sleeping children's threads: {seen:?}"
    );
    for (name, mode) in &seen {
        assert!(mode.ends_with('2'), "{name}: {mode}");
    }
}

#[test]
fn a_time_limit_ends_the_whole_tree() {
    let started = Instant::now();
    let mut all = vec!["exec", "--timeout", "1"];
    all.extend_from_slice(&SYSTEM);
    all.extend(["--", "/bin/busybox", "sh", "-c"]);
    all.push("sleep 100 & sleep 100 & (sleep 100; echo never) & wait; echo never");
    require_kvm();
    let r = rypervisor(&all, b"");
    assert_eq!(r.status, 124, "{}", r.stderr);
    assert!(r.stderr.contains("time limit"), "{}", r.stderr);
    assert!(!r.stdout.contains("never"));
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A script exercising the shell's process features, run by `shell` natively and sandboxed.
const SCRIPT: &str = r#"echo start
trap 'echo trapped USR1' USR1
kill -USR1 $$
cat <<END | wc -l
one
two
three
END
for i in 3 1 2; do echo $i; done | sort | head -2
x=$(echo outer $(echo inner)); echo "$x"
( exit 5 ); echo "subshell=$?"
sleep 0.1 & a=$!; false & b=$!
wait $a; echo "a=$?"; wait $b; echo "b=$?"
sleep 5 & k=$!; kill $k; wait $k; echo "killed=$?"
seq 2000 | sort -rn | tail -1
echo end
"#;

#[test]
fn shells_run_pipelines_jobs_and_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(dir.path()).unwrap();
    let script = dir.join("script.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    let d = path_str(&dir);
    let mut flags = SYSTEM.to_vec();
    flags.extend(["--allow-read", d, "--cwd", d]);
    let cases: [(&str, &[&str]); 4] = [
        ("/bin/busybox", &["sh", "script.sh"]),
        ("/bin/bash-static", &["script.sh"]),
        (
            "/bin/zsh-static",
            &["-c", "print -l c a b | sort | head -2; echo $(echo sub)"],
        ),
        (
            "/bin/bash-static",
            &["-c", "echo x y z | tr ' ' '\\n' | sort -r | head -1"],
        ),
    ];
    for (shell, args) in cases {
        let (want, want_status) = native(shell, args, &dir);
        let (got, status, stderr) = sandboxed(&flags, shell, args);
        assert_eq!(got, want, "{shell} {args:?}: {stderr}");
        assert_eq!(status, want_status, "{shell} {args:?}");
    }
    let (out, _) = native("/bin/busybox", &["sh", "script.sh"], &dir);
    for line in [
        "trapped USR1",
        "3\n",
        "outer inner",
        "subshell=5",
        "b=1",
        "killed=143",
        "\n1\nend",
    ] {
        assert!(out.contains(line), "{line} in {out}");
    }
}

#[test]
fn exec_refuses_what_the_policy_refuses() {
    // A shell may find its commands only under --allow-read: elsewhere, as on Linux when a
    // file cannot be executed, "permission denied" (or "not found") and status 126/127.
    let (out, status, stderr) = sandboxed(
        &["--allow-read", "/bin/busybox"],
        "/bin/busybox",
        &["sh", "-c", "/usr/bin/env true; echo status=$?"],
    );
    assert_eq!(out, "status=126\n", "{stderr}");
    assert_eq!(status, 0);
    assert!(stderr.contains("Permission denied"), "{stderr}");
}
