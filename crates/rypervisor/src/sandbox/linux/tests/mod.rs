//! Tests of the dispatcher as a whole, through `Process::dispatch` with real memory and an
//! in-memory host: what each area serves, refuses, and never touches.

use super::*;
use crate::sandbox::host::BufferHost;
use crate::sandbox::layout::USER_BASE;
use crate::sandbox::Exit;
use sysno as nr;

struct Rig {
    mem: UserMemory,
    host: BufferHost,
    process: Process,
    /// The time the program has left (None: no limit).
    remaining: Option<Duration>,
}

impl Rig {
    fn new() -> Self {
        let mem = UserMemory::new(16 << 20).unwrap();
        let process = Process::new(Policy::default(), 0x50_0000, 16 << 20, 1 << 20);
        Self {
            mem,
            host: BufferHost {
                no_sleep: true,
                ..BufferHost::default()
            },
            process,
            remaining: None,
        }
    }

    fn call(&mut self, nr: u64, args: &[u64]) -> Next {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        let mut cx = Context {
            mem: &mut self.mem,
            host: &mut self.host,
            remaining: self.remaining,
            vdso_clock: None,
            interrupt: None,
        };
        self.process.dispatch(&SyscallArgs { nr, args: a }, &mut cx)
    }

    fn ret(&mut self, nr: u64, args: &[u64]) -> i64 {
        match self.call(nr, args) {
            Next::Return(v) => v,
            other => panic!("{other:?}"),
        }
    }
}

const BUF: u64 = USER_BASE + 0x1000;

#[test]
fn write_read_and_bad_pointers() {
    let mut r = Rig::new();
    r.mem.write(BUF, b"hello").unwrap();
    assert_eq!(r.ret(nr::WRITE, &[1, BUF, 5]), 5);
    assert_eq!(r.host.stdout, b"hello");
    assert_eq!(
        r.ret(nr::WRITE, &[1, 0x1000, 5]),
        -14,
        "page tables: EFAULT"
    );
    assert_eq!(r.ret(nr::WRITE, &[7, BUF, 5]), -9, "EBADF");
    r.host.stdin = b"abc".to_vec();
    assert_eq!(
        r.ret(nr::READ, &[0, 0x2000, 3]),
        -14,
        "read into the VMM area"
    );
    assert_eq!(r.host.stdin_pos, 0, "nothing consumed by a refused read");
    assert_eq!(r.ret(nr::READ, &[0, BUF, 10]), 3);
    let mut b = [0u8; 3];
    r.mem.read(BUF, &mut b).unwrap();
    assert_eq!(&b, b"abc");
    // writev gathers; a huge iovcnt is refused.
    r.mem.write(BUF + 0x100, b"XY").unwrap();
    let iov = BUF + 0x200;
    for (i, (base, len)) in [(BUF, 2u64), (BUF + 0x100, 2)].iter().enumerate() {
        r.mem.write_u64(iov + i as u64 * 16, *base).unwrap();
        r.mem.write_u64(iov + i as u64 * 16 + 8, *len).unwrap();
    }
    assert_eq!(r.ret(nr::WRITEV, &[2, iov, 2]), 4);
    assert_eq!(r.host.stderr, b"abXY");
    assert_eq!(r.ret(nr::WRITEV, &[2, iov, 5000]), -22);
}

#[test]
fn heap_and_mappings_stay_inside_memory() {
    let mut r = Rig::new();
    let start = r.ret(nr::BRK, &[0]) as u64;
    assert_eq!(start, 0x50_0000);
    assert_eq!(r.ret(nr::BRK, &[start + 0x3000]) as u64, start + 0x3000);
    assert_eq!(r.ret(nr::BRK, &[1 << 40]) as u64, start + 0x3000, "refused");
    let a = r.ret(
        nr::MMAP,
        &[
            0,
            0x10000,
            3,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    );
    assert!(a > 0 && (a as u64) < (15 << 20));
    r.mem.write(a as u64, &[1; 16]).unwrap();
    assert_eq!(r.ret(nr::MUNMAP, &[a as u64, 0x10000]), 0);
    let b = r.ret(
        nr::MMAP,
        &[
            0,
            0x10000,
            3,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    );
    assert_eq!(a, b, "the freed range is reused");
    let mut z = [9u8; 16];
    r.mem.read(b as u64, &mut z).unwrap();
    assert_eq!(z, [0; 16], "and reads zero again");
    // More than the whole guest: ENOMEM, nothing on the host.
    assert_eq!(r.ret(nr::MMAP, &[0, 64 << 20, 3, 0x22, u64::MAX, 0]), -12);
    // Fixed mappings may not cover the program or the stack.
    assert_eq!(
        r.ret(nr::MMAP, &[0x40_0000, 0x1000, 3, 0x32, u64::MAX, 0]),
        -12
    );
    // mremap grows by moving and keeps the contents.
    r.mem.write(b as u64, b"keep").unwrap();
    let c = r.ret(
        nr::MREMAP,
        &[b as u64, 0x10000, 0x40000, libc::MREMAP_MAYMOVE as u64],
    );
    assert!(c > 0);
    let mut k = [0u8; 4];
    r.mem.read(c as u64, &mut k).unwrap();
    assert_eq!(&k, b"keep");
    assert_eq!(
        r.ret(nr::MREMAP, &[0x40_0000, 0x1000, 0x2000, 1]),
        -14,
        "not a mapping"
    );
    let huge = u64::MAX - 0xfff;
    assert_eq!(
        r.ret(nr::MREMAP, &[c as u64, 0x1000, huge, 1]),
        -12,
        "no overflow, ENOMEM"
    );
}

#[test]
fn denied_calls_and_strict_mode() {
    let mut r = Rig::new();
    assert_eq!(
        r.ret(nr::SOCKET, &[2, 1, 0]),
        -13,
        "sockets: refused, not unknown"
    );
    assert_eq!(r.ret(nr::PTRACE, &[0, 0, 0]), -38);
    assert_eq!(
        r.ret(nr::CLONE3, &[BUF, 88]),
        -38,
        "the C library falls back to clone"
    );
    let shared = libc::CLONE_VM as u64;
    assert_eq!(
        r.ret(nr::CLONE, &[shared, BUF, 0, 0, 0]),
        -38,
        "CLONE_VM alone"
    );
    let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
    assert!(
        matches!(r.call(nr::CLONE, &[thread, BUF, 0, 0, 0]), Next::Vm(VmRequest::Fork(s)) if s.thread),
        "a thread: for the run loop to start"
    );
    assert_eq!(r.ret(9999, &[]), -38);
    r.mem.write(BUF, b"/etc/passwd\0").unwrap();
    assert_eq!(
        r.ret(nr::OPENAT, &[libc::AT_FDCWD as u64, BUF, 0]),
        -13,
        "EACCES"
    );
    assert_eq!(r.process.stats.denied, 3, "ptrace, CLONE_VM alone, 9999");
    r.process.policy_mut().strict = true;
    assert_eq!(
        r.call(nr::PTRACE, &[0, 0, 0]),
        Next::End(Exit::Denied { nr: nr::PTRACE })
    );
    assert_eq!(r.call(nr::SOCKET, &[2, 1, 0]), Next::Return(-13));
    // Served calls stay served in strict mode: libc start-up must work.
    assert_eq!(r.call(nr::RSEQ, &[]), Next::Return(-38));
    assert_eq!(r.call(nr::READLINK, &[BUF, BUF, 10]), Next::Return(-2));
    assert_eq!(
        r.call(nr::EXIT_GROUP, &[300]),
        Next::End(Exit::Exited(300 & 0xff))
    );
}

#[test]
fn identity_time_and_tls() {
    let mut r = Rig::new();
    assert_eq!(r.ret(nr::GETPID, &[]), 1);
    assert_eq!(r.ret(nr::GETUID, &[]), 1000);
    assert_eq!(r.ret(nr::UNAME, &[BUF]), 0);
    assert_eq!(r.mem.read_cstr(BUF + 65, 64).unwrap(), b"rypervisor");
    assert_eq!(
        r.ret(nr::CLOCK_GETTIME, &[libc::CLOCK_REALTIME as u64, BUF]),
        0
    );
    assert!(r.mem.read_u64(BUF).unwrap() > 1_700_000_000);
    assert_eq!(r.ret(nr::CLOCK_GETTIME, &[99, BUF]), -22);
    assert_eq!(r.ret(nr::GETRANDOM, &[BUF, 64, 0]), 64);
    assert_eq!(r.ret(nr::ARCH_PRCTL, &[0x1002, 0x60_0000]), 0);
    assert_eq!(r.process.take_fs_change(), Some(0x60_0000));
    assert_eq!(r.process.take_fs_change(), None, "reported once");
    assert_eq!(r.ret(nr::ARCH_PRCTL, &[0x1002, 1 << 60]), -22);
    assert_eq!(r.ret(nr::IOCTL, &[1, 0x5401, BUF]), -25, "TCGETS: ENOTTY");
    assert_eq!(r.ret(nr::FSTAT, &[1, BUF]), 0);
    let mut mode = [0u8; 4];
    r.mem.read(BUF + 24, &mut mode).unwrap();
    assert_eq!(u32::from_le_bytes(mode) & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(r.ret(nr::PRLIMIT64, &[0, 3, 0, BUF]), 0);
    assert_eq!(r.mem.read_u64(BUF).unwrap(), 1 << 20);
}

#[test]
fn allowed_files_read_only() {
    let dir = std::env::temp_dir().join(format!("rypervisor-sys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("data.txt"), b"file contents").unwrap();
    let mut r = Rig::new();
    r.process.policy_mut().allow_read(&dir).unwrap();
    let path = format!("{}/data.txt\0", dir.display());
    r.mem.write(BUF, path.as_bytes()).unwrap();
    let fd = r.ret(
        nr::OPENAT,
        &[libc::AT_FDCWD as u64, BUF, libc::O_RDONLY as u64],
    );
    assert_eq!(fd, 3);
    assert_eq!(
        r.ret(
            nr::OPENAT,
            &[libc::AT_FDCWD as u64, BUF, libc::O_RDWR as u64]
        ),
        -30
    );
    assert_eq!(r.ret(nr::READ, &[3, BUF + 0x800, 100]), 13);
    assert_eq!(r.ret(nr::FSTAT, &[3, BUF + 0x900]), 0);
    assert_eq!(r.mem.read_u64(BUF + 0x900 + 48).unwrap(), 13);
    assert_eq!(r.ret(nr::LSEEK, &[3, 5, 0]), 5);
    assert_eq!(r.ret(nr::CLOSE, &[3]), 0);
    assert_eq!(r.ret(nr::CLOSE, &[3]), -9);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn random_calls_never_panic_or_write_the_vmm_area() {
    // A deterministic stand-in for the cargo-fuzz target (fuzz/fuzz_targets/syscall.rs)
    // that runs with every `cargo test`.
    let mut r = Rig::new();
    // A wait only the program could end (a read of its own empty pipe) ends at the limit.
    r.remaining = Some(Duration::from_millis(1));
    let mut tables = vec![0u8; USER_BASE as usize];
    r.mem.ram().read(0, &mut tables).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..50_000 {
        let nr = next() % 340;
        if nr == nr::EXIT || nr == nr::EXIT_GROUP {
            continue;
        }
        let mut args = [0u64; 6];
        for a in &mut args {
            *a = match next() % 5 {
                0 => next(),
                1 => next() % 64,
                2 => USER_BASE + next() % (14 << 20),
                3 => u64::MAX - next() % 64, // pointer arithmetic must not overflow
                _ => next() % (USER_BASE + 0x1000),
            };
        }
        r.host.stdin = b"x".to_vec();
        r.host.stdin_pos = 0;
        r.host.stdout.clear();
        r.host.stderr.clear();
        let _ = r.call(nr, &args);
    }
    let mut after = vec![0u8; USER_BASE as usize];
    r.mem.ram().read(0, &mut after).unwrap();
    assert!(tables == after, "a system call wrote below USER_BASE");
}

#[test]
fn small_calls_answer_as_linux_does_for_a_lone_process() {
    let mut r = Rig::new();
    let e = |errno: i32| -i64::from(errno);
    assert_eq!(r.ret(nr::UMASK, &[0o077]), 0o022);
    assert_eq!(r.ret(nr::UMASK, &[0o022]), 0o077);
    assert_eq!(r.ret(nr::GETPGRP, &[]), 1);
    assert_eq!(r.ret(nr::GETPGID, &[0]), 1);
    assert_eq!(r.ret(nr::GETSID, &[7]), e(libc::ESRCH));
    assert_eq!(r.ret(nr::SETPGID, &[0, 0]), 0);
    assert_eq!(r.ret(nr::SETPGID, &[0, 5]), e(libc::EPERM));
    assert_eq!(r.ret(nr::GETGROUPS, &[0, 0]), 1);
    assert_eq!(r.ret(nr::GETGROUPS, &[4, BUF]), 1);
    let mut g = [0u8; 4];
    r.mem.read(BUF, &mut g).unwrap();
    assert_eq!(u32::from_le_bytes(g), 1000);
    let name = b"worker\0";
    r.mem.write(BUF, name).unwrap();
    assert_eq!(r.ret(nr::PRCTL, &[libc::PR_SET_NAME as u64, BUF]), 0);
    assert_eq!(r.ret(nr::PRCTL, &[libc::PR_GET_NAME as u64, BUF + 64]), 0);
    let mut got = [0u8; 16];
    r.mem.read(BUF + 64, &mut got).unwrap();
    assert_eq!(&got[..7], name);
    assert_eq!(
        r.ret(nr::PRCTL, &[libc::PR_SET_CHILD_SUBREAPER as u64, 1]),
        0
    );
    assert_eq!(r.ret(nr::PRCTL, &[libc::PR_GET_DUMPABLE as u64]), 1);
    assert_eq!(r.ret(nr::PRCTL, &[9999]), e(libc::EINVAL));
    assert_eq!(r.ret(nr::GETRUSAGE, &[0, BUF]), 0);
    assert_eq!(r.ret(nr::GETRUSAGE, &[5, BUF]), e(libc::EINVAL));
    assert_eq!(r.ret(nr::SYSINFO, &[BUF]), 0);
    let mut info = abi::Sysinfo::default();
    r.mem
        .read(BUF, vm_memory::ByteValued::as_mut_slice(&mut info))
        .unwrap();
    assert_eq!(
        (info.0.totalram, info.0.procs, info.0.mem_unit),
        (16 << 20, 1, 1)
    );
    assert!(r.ret(nr::TIMES, &[BUF]) > 0);
    assert_eq!(
        r.ret(nr::GETRUSAGE, &[0, 0xdead_0000_0000]),
        e(libc::EFAULT)
    );
}

#[test]
fn dev_null_zero_and_urandom_are_built_in() {
    let mut r = Rig::new();
    let path = BUF + 0x800;
    let open = |r: &mut Rig, name: &[u8], flags: i32| {
        r.mem.write(path, name).unwrap();
        r.ret(nr::OPENAT, &[libc::AT_FDCWD as u64, path, flags as u64])
    };
    let null = open(&mut r, b"/dev/null\0", libc::O_WRONLY);
    assert_eq!(null, 3, "even for writing");
    r.mem.write(BUF, b"gone").unwrap();
    assert_eq!(r.ret(nr::WRITE, &[null as u64, BUF, 4]), 4);
    assert_eq!(r.ret(nr::READ, &[null as u64, BUF, 4]), 0);
    let zero = open(&mut r, b"/dev/zero\0", libc::O_RDONLY);
    r.mem.write(BUF, &[7; 16]).unwrap();
    assert_eq!(r.ret(nr::READ, &[zero as u64, BUF, 16]), 16);
    let mut got = [1u8; 16];
    r.mem.read(BUF, &mut got).unwrap();
    assert_eq!(got, [0; 16]);
    let random = open(&mut r, b"/dev/urandom\0", libc::O_RDONLY);
    assert_eq!(r.ret(nr::READ, &[random as u64, BUF, 16]), 16);
    assert_eq!(r.ret(nr::FSTAT, &[null as u64, BUF]), 0);
    let mut st = abi::Stat::default();
    r.mem
        .read(BUF, vm_memory::ByteValued::as_mut_slice(&mut st))
        .unwrap();
    assert_eq!(st.0.st_mode & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(st.0.st_rdev, libc::makedev(1, 3));
    assert_eq!(
        r.ret(nr::LSEEK, &[zero as u64, 100, 0]),
        0,
        "as Linux: always 0"
    );
    // /dev/stdin, /dev/stdout, /dev/fd/N: the program's own descriptors.
    r.host.stdin = b"via /dev/stdin".to_vec();
    r.host.stdin_pos = 0;
    let fd = open(&mut r, b"/dev/stdin\0", libc::O_RDONLY);
    assert!(fd > 2, "{fd}");
    assert_eq!(r.ret(nr::READ, &[fd as u64, BUF + 0x100, 64]), 14);
    let out = open(&mut r, b"/dev/fd/1\0", libc::O_WRONLY);
    r.mem.write(BUF + 0x200, b"!").unwrap();
    assert_eq!(r.ret(nr::WRITE, &[out as u64, BUF + 0x200, 1]), 1);
    assert!(r.host.stdout.ends_with(b"!"));
    assert_eq!(
        open(&mut r, b"/dev/fd/77\0", libc::O_RDONLY),
        -i64::from(libc::EBADF)
    );
    // Nothing else under /dev exists in the sandbox, nor /proc or /sys.
    for path in [
        &b"/dev/sda\0"[..],
        b"/proc/self/maps\0",
        b"/sys/kernel\0",
        b"/etc/../dev/mem\0",
    ] {
        assert_eq!(open(&mut r, path, libc::O_RDONLY), -i64::from(libc::ENOENT));
    }
}

#[test]
fn a_futex_wait_with_a_timeout_times_out() {
    let mut r = Rig::new();
    r.mem.write(BUF, &5u32.to_le_bytes()).unwrap();
    let ts = BUF + 0x100;
    r.mem.write(ts, &[0u8; 16]).unwrap(); // a zero timeout
    let e = |errno: i32| -i64::from(errno);
    assert_eq!(r.ret(nr::FUTEX, &[BUF, 0, 5, ts]), e(libc::ETIMEDOUT));
    assert_eq!(
        r.ret(nr::FUTEX, &[BUF, 0, 6, ts]),
        e(libc::EAGAIN),
        "the value changed"
    );
    assert_eq!(
        r.ret(nr::FUTEX, &[BUF, 0, 5, 0]),
        e(libc::EDEADLK),
        "no timeout, no waker"
    );
    assert_eq!(
        r.ret(nr::FUTEX, &[BUF, 9, 5, ts, 0, u64::from(u32::MAX)]),
        e(libc::ETIMEDOUT),
        "an absolute deadline past"
    );
    assert_eq!(
        r.ret(nr::FUTEX, &[BUF, 9, 5, ts, 0, 0]),
        e(libc::EINVAL),
        "no bits"
    );
    assert_eq!(
        r.ret(nr::FUTEX, &[BUF, 10, 1, 0, 0, 1]),
        0,
        "nobody to wake"
    );
}

mod fs;
mod signals;
mod tree;
mod wait;
