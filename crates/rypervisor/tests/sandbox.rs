//! The sandbox library against real /dev/kvm: static C programs (glibc and musl) built from
//! `tests/programs/`, run once, and served warm from a snapshot request after request.

mod support;

use rypervisor::sandbox::{BufferHost, Exit, SandboxBuilder, SandboxError};
use support::{program, require_kvm, Libc};

fn builder(name: &str, libc: Libc) -> SandboxBuilder {
    require_kvm();
    SandboxBuilder::from_file(&program(name, libc)).unwrap()
}

#[test]
fn a_program_runs_to_its_exit_status() {
    for libc in support::libcs() {
        let mut sandbox = builder("hello", libc).build().unwrap();
        let mut host = BufferHost::default();
        let exit = sandbox.run(&mut host).unwrap();
        assert_eq!(exit, Exit::Exited(0), "{libc:?}");
        assert_eq!(host.stdout, b"hello from the sandbox\n", "{libc:?}");
        assert!(
            sandbox.stats().syscalls >= 3,
            "{libc:?}: at least set-up, write and exit"
        );
    }
}

fn expected(reply: &str, input: &str) -> String {
    reply.replace(&format!("input=\"{input}\""), "input=\"*\"")
}

#[test]
fn a_warm_sandbox_serves_1000_requests_without_leaking_state() {
    for libc in support::libcs() {
        let mut warm = builder("warm", libc)
            .mem(32 << 20)
            .build()
            .unwrap()
            .into_warm()
            .unwrap();
        assert_eq!(
            warm.startup_output().0,
            b"ready\n",
            "{libc:?}: start-up ran before the snapshot"
        );
        let mut first: Option<String> = None;
        let mut restored = Vec::new();
        for i in 0..1000 {
            let input = format!("request-{i}");
            let reply = warm.call(format!("{input}\n").as_bytes()).unwrap();
            assert_eq!(
                reply.exit,
                Exit::Exited(input.len() as i32),
                "{libc:?} request {i}"
            );
            let text = String::from_utf8(reply.stdout).unwrap();
            // The program counts requests, keeps the last input, dirties 256 KiB of heap that
            // start-up zeroed, maps 512 KiB more and leaves a value in xmm7: after a reset
            // none of that may be visible.
            assert!(
                text.starts_with("requests=1 previous=\"\" heap_clean=1 "),
                "{libc:?} request {i} saw state from an earlier request: {text}"
            );
            let shape = expected(&text, &input);
            match &first {
                None => first = Some(shape),
                Some(f) => assert_eq!(&shape, f, "{libc:?} request {i} differs from request 0"),
            }
            restored.push(reply.reset.pages);
        }
        let total_pages = warm.sandbox().mem_size() / 4096;
        let most = *restored.iter().max().unwrap();
        assert!(
            most > 192,
            "{libc:?}: the program dirties over 768 KiB, yet only {most} pages were restored"
        );
        assert!(
            most < total_pages / 2,
            "{libc:?}: reset restored {most} of {total_pages} pages: it should copy only dirtied ones"
        );
    }
}

#[test]
fn a_program_that_never_reads_stdin_cannot_be_warmed() {
    let err = builder("hello", Libc::Glibc)
        .build()
        .unwrap()
        .into_warm()
        .unwrap_err();
    assert!(matches!(err, SandboxError::EndedBeforeSnapshot(_)), "{err}");
    assert!(err.to_string().contains("before it read stdin"));
}

#[test]
fn memory_beyond_the_limit_fails_inside_the_program() {
    let mut sandbox = builder("alloc", Libc::Glibc)
        .mem(48 << 20)
        .args(["alloc", "over", "64"])
        .build()
        .unwrap();
    let mut host = BufferHost::default();
    let exit = sandbox.run(&mut host).unwrap();
    let out = String::from_utf8_lossy(&host.stdout);
    assert_eq!(exit, Exit::Exited(0), "{out}");
    assert!(out.contains("large blocks ok"), "{out}");
    assert!(out.contains("malloc(64 MiB): failed errno=ENOMEM"), "{out}");
}

#[test]
fn bad_programs_and_sizes_are_refused_before_any_vm_exists() {
    let err = |b: SandboxBuilder| b.build().unwrap_err().to_string();
    let hello = program("hello", Libc::Glibc);
    let bytes = std::fs::read(&hello).unwrap();
    assert!(err(SandboxBuilder::new("h", bytes.clone()).mem(3 << 20)).contains("at least 4 MiB"));
    assert!(err(SandboxBuilder::new("h", bytes.clone()).mem(5 << 20)).contains("multiple of 2 MiB"));
    assert!(err(SandboxBuilder::new("h", bytes[..2000].to_vec())).contains("corrupt"));
    assert!(err(SandboxBuilder::new("h", b"#!/bin/sh\n".to_vec())).contains("script"));
}

#[test]
fn without_the_tsc_the_vdso_falls_back_to_system_calls() {
    use rypervisor::sandbox::linux::sysno;
    for libc in support::libcs() {
        for tsc in [true, false] {
            let mut sandbox = builder("clock", libc)
                .args(["clock", "check", "300"])
                .tsc_clock(tsc)
                .build()
                .unwrap();
            let mut host = BufferHost::default();
            assert_eq!(sandbox.run(&mut host).unwrap(), Exit::Exited(0), "{libc:?}");
            let out = String::from_utf8_lossy(&host.stdout);
            assert_eq!(out.matches(": between").count(), 6, "{libc:?} {tsc}: {out}");
            assert!(out.contains("backwards: 0\n"), "{libc:?} {tsc}: {out}");
            assert!(
                out.contains("gettimeofday: ok\ntime: ok\n"),
                "{libc:?} {tsc}: {out}"
            );
            let counts = &sandbox.syscall_stats().counts;
            let clock_calls = counts.get(&sysno::CLOCK_GETTIME).copied().unwrap_or(0);
            if tsc {
                assert!(
                    clock_calls < 50,
                    "{libc:?}: {clock_calls} exits for the clocks"
                );
            } else {
                assert!(
                    clock_calls > 300,
                    "{libc:?}: {clock_calls}: each reading an exit"
                );
                // glibc calls __vdso_gettimeofday (musl builds it on clock_gettime).
                if libc == Libc::Glibc {
                    assert!(counts.contains_key(&sysno::GETTIMEOFDAY));
                }
            }
        }
    }
}
