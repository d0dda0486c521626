//! `rypervisor exec` and the file system a program sees: directories, the working
//! directory, metadata, each compared with the same program run natively, and the ways out
//! of the allowed roots, each refused.

mod common;
#[path = "../../rypervisor/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{require_kvm, rypervisor};
use support::{program, Libc};

/// A tree to look at: files, a subdirectory, a link inside, a link out of the root.
fn tree() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap().join("root");
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("sub/a.txt"), "alpha").unwrap();
    std::fs::write(root.join("sub/b.txt"), "beta").unwrap();
    std::fs::write(root.join("sub/deeper/c.txt"), "c\n").unwrap();
    std::fs::write(root.join("x.dat"), "x\n").unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("sub/link")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
    (dir, root)
}

fn native(prog: &Path, args: &[&str]) -> String {
    let out = Command::new(prog).args(args).output().unwrap();
    assert!(out.status.success(), "native {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn sandboxed(flags: &[&str], prog: &Path, args: &[&str]) -> String {
    require_kvm();
    let mut all = vec!["exec"];
    all.extend_from_slice(flags);
    all.push("--");
    all.push(prog.to_str().unwrap());
    all.extend_from_slice(args);
    let r = rypervisor(&all, b"");
    assert_eq!(r.status, 0, "{all:?}: {}", r.stderr);
    r.stdout
}

#[test]
fn directories_look_as_they_do_natively() {
    let (_dir, root) = tree();
    let root_s = root.to_str().unwrap();
    for libc in support::libcs() {
        let prog = program("dirs", libc);
        let want = native(&prog, &["walk", root_s]);
        let got = sandboxed(&["--allow-read", root_s], &prog, &["walk", root_s]);
        assert_eq!(got, want, "{libc:?}");
        // The walk really covered what it says (a native run that printed nothing would
        // compare equal too).
        for line in [
            "entry sub type=4",
            "walk ./sub/deeper/c.txt f mode=100644 nlink=1 size=2",
            "glob sub/b.txt",
            "relative: 5 'alpha'",
            "openat: 4 'beta'",
            &format!("after fchdir cwd={root_s}/sub"),
            "stat link: file, lstat link: link",
            "listed 6 then 6",
        ] {
            assert!(got.contains(line), "{libc:?}: no {line:?} in\n{got}");
        }
    }
}

#[test]
fn readlink_and_realpath_work_inside_allowed_roots() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::write(root.join("file"), "x").unwrap();
    std::os::unix::fs::symlink("file", root.join("link")).unwrap();
    let link = root.join("link");
    for libc in support::libcs() {
        let prog = program("links", libc);
        let out = sandboxed(
            &["--allow-read", root.to_str().unwrap()],
            &prog,
            &[link.to_str().unwrap()],
        );
        assert!(out.contains("readlink=file\n"), "{libc:?}: {out}");
        let real = format!("realpath={}\n", root.join("file").display());
        assert!(out.contains(&real), "{libc:?}: {out}");
    }
}

#[test]
fn the_ways_out_of_a_root_are_refused() {
    let (_dir, root) = tree();
    let root_s = root.to_str().unwrap();
    let parent = root.parent().unwrap().to_str().unwrap();
    for libc in support::libcs() {
        let prog = program("dirs", libc);
        let got = sandboxed(&["--allow-read", root_s], &prog, &["escape", root_s]);
        let denied = "Permission denied"; // strerror(EACCES) in both C libraries
        for line in [
            format!("openat ../..: {denied}"),
            format!("absolute: {denied}"),
            "access W_OK: Read-only file system".into(),
            "access R_OK: ok".into(),
            // Standing on the way to a root is allowed; looking around there is not.
            "chdir ..: ok".into(),
            format!("cwd={parent}"),
            format!("list ..: {denied}"),
            format!("via escape link: {denied}"),
            format!("chdir escape link: {denied}"),
        ] {
            assert!(got.contains(&line), "{libc:?}: no {line:?} in\n{got}");
        }
    }
}

#[test]
fn the_working_directory_starts_where_it_is_told() {
    require_kvm();
    let (_dir, root) = tree();
    let root_s = root.to_str().unwrap();
    let prog = program("dirs", Libc::Glibc);
    let sub = root.join("sub");
    let run = |cwd: &Path, flags: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_rypervisor"))
            .arg("exec")
            .args(flags)
            .args(["--", prog.to_str().unwrap(), "pwd", "a.txt"])
            .current_dir(cwd)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), text, err)
    };
    // The host's working directory, where an allowed root holds it, as a native run.
    let (code, out, err) = run(&sub, &["--allow-read", root_s]);
    assert_eq!(code, Some(0), "{err}");
    let want = format!("cwd={}\na.txt: 5 'alpha'\n", sub.display());
    assert_eq!(out, want);
    // --cwd says otherwise.
    let (code, out, err) = run(&sub, &["--allow-read", root_s, "--cwd", root_s]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        format!("cwd={root_s}\na.txt: No such file or directory\n")
    );
    // Outside the roots: /, where nothing is readable.
    let (code, out, _) = run(Path::new("/"), &["--allow-read", root_s]);
    assert_eq!(code, Some(0));
    assert_eq!(out, "cwd=/\na.txt: Permission denied\n");
    // A --cwd outside the roots, or not a directory: one clear error.
    for bad in ["/", root.join("x.dat").to_str().unwrap()] {
        let (code, _, err) = run(&sub, &["--allow-read", root_s, "--cwd", bad]);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("--cwd") && err.lines().count() == 1, "{err}");
    }
}

/// Runs `wait MODE` with stdin from `feed`, which may keep it open (and empty) for a while.
fn wait_run(libc: Libc, mode: &str, flags: &[&str], feed: Option<&[u8]>) -> (Option<i32>, String) {
    use std::io::Write;
    require_kvm();
    let prog = program("wait", libc);
    let mut child = Command::new(env!("CARGO_BIN_EXE_rypervisor"))
        .arg("exec")
        .args(flags)
        .args(["--", prog.to_str().unwrap(), mode])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    match feed {
        Some(data) => input.write_all(data).unwrap(),
        // Open and silent until the program is done.
        None => std::mem::forget(input),
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn poll_and_select_wait_for_stdin_as_they_do_natively() {
    for libc in support::libcs() {
        for mode in ["poll", "select"] {
            let (code, out) = wait_run(libc, mode, &[], Some(b"hello"));
            assert_eq!(code, Some(0), "{libc:?} {mode}");
            let ready = format!("{mode}=1");
            assert!(out.contains(&ready), "{libc:?}: {out}");
            assert!(
                out.contains("fionread=5\nread=5 'hello'\n"),
                "{libc:?}: {out}"
            );
            // Nothing written, stdin still open: the wait times out and nothing is read.
            let (code, out) = wait_run(libc, mode, &[], None);
            assert_eq!(code, Some(0), "{libc:?} {mode}");
            assert!(out.starts_with(&format!("{mode}=0 ")), "{libc:?}: {out}");
            assert!(!out.contains("read="), "{libc:?}: {out}");
            let rest = if mode == "poll" {
                "many=3 out=1 nval=1 null=1\n"
            } else {
                "bad fd: -1\n"
            };
            assert!(out.ends_with(rest), "{libc:?}: {out}");
        }
    }
    // A wait without end on a silent stdin is ended by the time limit.
    let (code, out) = wait_run(Libc::Glibc, "block", &["--timeout", "1"], None);
    assert_eq!(code, Some(124), "{out}");
}

#[test]
fn the_vdso_serves_the_clocks_without_a_vm_exit() {
    for libc in support::libcs() {
        require_kvm();
        let prog = program("clock", libc);
        let r = rypervisor(
            &["exec", "--stats", "--", prog.to_str().unwrap(), "check"],
            b"",
        );
        assert_eq!(r.status, 0, "{libc:?}: {}", r.stderr);
        let out = &r.stdout;
        assert!(out.starts_with("vdso=yes\n"), "{libc:?}: {out}");
        assert_eq!(out.matches(": between").count(), 6, "{libc:?}: {out}");
        for line in [
            "gettimeofday: ok",
            "time: ok",
            "getres: 0 1",
            "backwards: 0",
            "cputime: 0",
        ] {
            assert!(out.contains(line), "{libc:?}: no {line:?} in\n{out}");
        }
        // A million and more readings through the C library; the system calls are only the
        // program's own (the checks' syscall(2) pairs, the CPU-time clock).
        let calls: u64 = r
            .stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix("clock_gettime"))
            .map_or(0, |n| n.trim().parse().unwrap());
        assert!(
            (13..=20).contains(&calls),
            "{libc:?}: {calls} clock_gettime exits\n{}",
            r.stderr
        );
    }
}

#[test]
fn dietlibc_reads_the_clocks_through_the_vdso() {
    require_kvm();
    // dietlibc once jumped to the legacy vsyscall page, which the sandbox does not have; it
    // takes the vDSO when AT_SYSINFO_EHDR names one.
    let out = tempfile::tempdir().unwrap();
    let prog = out.path().join("dtime");
    support::compile("dtime", "diet", &["gcc"], &prog);
    let r = rypervisor(
        &["exec", "--stats", "--", prog.to_str().unwrap(), "2000"],
        b"",
    );
    assert_eq!(r.status, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "2000 rounds, 0 out of order\n");
    let calls: u64 = (r.stderr.lines())
        .find_map(|l| l.trim().strip_prefix("system calls"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        calls < 20,
        "8000 clock readings took {calls} system calls\n{}",
        r.stderr
    );
}

#[test]
fn signal_handlers_run_as_they_do_natively() {
    for libc in support::libcs() {
        let prog = program("signals", libc);
        let want = native(&prog, &["handlers"]);
        let got = sandboxed(&[], &prog, &["handlers"]);
        assert_eq!(got, want, "{libc:?}");
        for line in [
            "fpu kept",
            "pending 1",
            "nested: 11",
            "altstack: on it",
            "EINTR, alarms 1",
            "itimer: alarms 4",
        ] {
            assert!(got.contains(line), "{libc:?}: no {line:?} in\n{got}");
        }
    }
    // Default actions end the program as a shell shows it.
    let prog = program("signals", Libc::Glibc);
    for (mode, status, name) in [("term", 143, "SIGTERM"), ("abort", 134, "SIGABRT")] {
        let r = rypervisor(&["exec", "--", prog.to_str().unwrap(), mode], b"");
        assert_eq!(r.status, status, "{mode}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{mode}: {}", r.stdout);
        assert!(
            r.stderr.contains(&format!("program killed by {name}")),
            "{}",
            r.stderr
        );
    }
}
