//! A process tree through the library, alone in its test binary so that the VMM's own
//! threads and descriptors can be counted: after the first program ends, nothing of its
//! children (their micro-VMs, VMM threads, pipes) is left.

mod support;

use std::time::Duration;

use rypervisor::sandbox::{Exit, Policy, SandboxBuilder, StdHost};
use support::{program, require_kvm};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn a_process_tree_leaves_no_threads_or_descriptors_behind() {
    require_kvm();
    let run = |libc| {
        let prog = program("procs", libc);
        let mut policy = Policy::default();
        policy.allow_read(prog.parent().unwrap()).unwrap();
        let mut sandbox = SandboxBuilder::from_file(&prog)
            .unwrap()
            .args([prog.to_str().unwrap(), "quiet"])
            .timeout(Some(Duration::from_secs(60)))
            .policy(policy)
            .build()
            .unwrap();
        let exit = sandbox.run(&mut StdHost).unwrap();
        assert_eq!(exit, Exit::Exited(0), "{libc:?}");
        assert!(sandbox.syscall_stats().counts.len() > 5);
    };
    // Once first: the kick handler, the C library's lazy set-up of threads.
    run(support::Libc::Glibc);
    let before = (count("/proc/self/task"), count("/proc/self/fd"));
    for libc in support::libcs() {
        run(libc);
    }
    // A joined thread can still be listed for a moment (the kernel wakes the joiner before
    // it has unlinked the task): counts that stay above for 2 s are what is left behind.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut after = (count("/proc/self/task"), count("/proc/self/fd"));
    while after != before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        after = (count("/proc/self/task"), count("/proc/self/fd"));
    }
    assert_eq!(after, before, "(threads, descriptors) before and after");
}
