//! The process tree's bookkeeping, without KVM.

use std::time::{Duration, Instant};

use super::super::tree::*;
use super::super::Errno;

#[test]
fn children_are_reaped_once_with_their_status() {
    let t = Tree::new(4);
    let a = t.add_child(INIT, libc::SIGCHLD, false).unwrap();
    let b = t.add_child(INIT, libc::SIGCHLD, false).unwrap();
    assert_eq!((a, b), (2, 3));
    assert_eq!(t.reap(INIT, Target::All, false), Ok(None), "both still run");
    t.exit(b, exited_status(7));
    assert_eq!(t.take_incoming(INIT), 1 << (libc::SIGCHLD - 1));
    assert_eq!(t.reap(INIT, Target::Pid(a), false), Ok(None));
    assert_eq!(t.reap(INIT, Target::All, true), Ok(Some((b, 7 << 8))));
    assert_eq!(t.reap(INIT, Target::All, false), Ok(Some((b, 7 << 8))));
    assert_eq!(t.reap(INIT, Target::Pid(b), false), Err(Errno::ECHILD));
    assert_eq!(t.reap(a, Target::All, false), Err(Errno::ECHILD));
}

#[test]
fn the_limit_counts_zombies_and_orphans_go_to_init() {
    let t = Tree::new(3);
    let a = t.add_child(INIT, libc::SIGCHLD, false).unwrap();
    let b = t.add_child(a, libc::SIGCHLD, false).unwrap();
    assert_eq!(t.add_child(b, libc::SIGCHLD, false), Err(Errno::EAGAIN));
    t.exit(a, signaled_status(libc::SIGSEGV));
    assert_eq!(t.ppid(b), INIT, "re-parented");
    assert_eq!(
        t.add_child(INIT, 17, false),
        Err(Errno::EAGAIN),
        "a zombie counts"
    );
    assert_eq!(t.reap(INIT, Target::All, false), Ok(Some((a, 11))));
    assert!(t.add_child(INIT, 17, false).is_ok());
}

#[test]
fn signals_reach_groups_and_never_the_sender_twice() {
    let t = Tree::new(8);
    let a = t.add_child(INIT, 17, false).unwrap();
    let b = t.add_child(INIT, 17, false).unwrap();
    t.setpgid(INIT, a, a).unwrap();
    t.setpgid(INIT, b, a).unwrap();
    assert_eq!(t.setpgid(INIT, b, 99), Err(Errno::EPERM), "no such group");
    assert_eq!(t.send(INIT, Target::Group(a), libc::SIGTERM), Ok(false));
    assert_eq!(t.take_incoming(a), 1 << (libc::SIGTERM - 1));
    assert_eq!(t.take_incoming(b), 1 << (libc::SIGTERM - 1));
    assert_eq!(t.send(a, Target::Pid(a), libc::SIGUSR1), Ok(true));
    assert_eq!(t.take_incoming(a), 0, "the caller serves its own");
    assert_eq!(t.send(a, Target::Pid(999), 0), Err(Errno::ESRCH));
    assert_eq!(
        t.send(a, Target::All, libc::SIGHUP),
        Ok(false),
        "not the caller"
    );
    assert_eq!(t.take_incoming(INIT), 0, "kill(-1) spares init");
    assert_eq!(t.take_incoming(b), 1 << (libc::SIGHUP - 1));
    assert_eq!(t.setsid(b), Ok(b));
    assert_eq!(t.setsid(a), Err(Errno::EPERM), "a group leader");
    assert_eq!((t.pgid(b), t.sid(b)), (Ok(b), Ok(b)));
}

#[test]
fn threads_count_against_the_limit_and_end_with_their_group() {
    let t = Tree::new(4);
    let a = t.add_child(INIT, 17, false).unwrap();
    let t1 = t.add_thread(a).unwrap();
    let t2 = t.add_thread(a).unwrap();
    assert_eq!(
        t.add_thread(a),
        Err(Errno::EAGAIN),
        "init, a and two threads"
    );
    assert_eq!(t.group_size(a), 3);
    assert_eq!(t.running(), 2, "threads are not processes");
    assert_eq!(t.ppid(t1), INIT, "a thread's parent is its process's");
    t.thread_exit(t1);
    assert_eq!(t.group_size(a), 2);
    assert!(!t.killed_for(t2));
    t.exit_group(a, signaled_status(libc::SIGSEGV));
    t.exit_group(a, exited_status(0));
    assert!(t.killed_for(t2) && t.killed_for(a));
    assert_eq!(t.group_status(a), Some(11), "the first reason stays");
    assert_ne!(t.take_incoming(t2) & (1 << 8), 0);
    assert!(!t.killed_for(INIT));
    assert_eq!(t.send(INIT, Target::All, libc::SIGTERM), Ok(false));
    assert_eq!(
        t.take_incoming(t2) & (1 << 14),
        0,
        "kill(-1) goes to processes"
    );
}

#[test]
fn a_wait_ends_when_something_changes() {
    let t = Tree::new(4);
    let seen = t.generation();
    let t2 = t.clone();
    let h = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        t2.notify();
    });
    let start = Instant::now();
    t.wait(seen, Some(Duration::from_secs(5)));
    assert!(start.elapsed() < Duration::from_secs(4));
    h.join().unwrap();
    let seen = t.generation();
    t.wait(seen, Some(Duration::from_millis(10)));
    t.kill_all();
    t.wait(seen, None); // returns: the tree is killed
    assert_ne!(t.take_incoming(INIT) & (1 << 8), 0, "SIGKILL for all");
}
