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
        }
    }

    fn call(&mut self, nr: u64, args: &[u64]) -> Next {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        let mut cx = Context {
            mem: &mut self.mem,
            host: &mut self.host,
            remaining: None,
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
    assert_eq!(r.ret(nr::SOCKET, &[2, 1, 0]), -38);
    assert_eq!(r.ret(nr::EXECVE, &[BUF, 0, 0]), -38);
    assert_eq!(r.ret(nr::FORK, &[]), -38);
    assert_eq!(r.ret(9999, &[]), -38);
    r.mem.write(BUF, b"/etc/passwd\0").unwrap();
    assert_eq!(
        r.ret(nr::OPENAT, &[libc::AT_FDCWD as u64, BUF, 0]),
        -13,
        "EACCES"
    );
    assert_eq!(r.process.stats.denied, 4);
    r.process.policy_mut().strict = true;
    assert_eq!(
        r.call(nr::SOCKET, &[2, 1, 0]),
        Next::End(Exit::Denied { nr: nr::SOCKET })
    );
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
    assert_eq!(r.ret(nr::GETPGRP, &[]), identity::PID);
    assert_eq!(r.ret(nr::GETPGID, &[0]), identity::PID);
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
    // Other paths under /dev stay refused.
    assert_eq!(
        open(&mut r, b"/dev/sda\0", libc::O_RDONLY),
        -i64::from(libc::EACCES)
    );
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
        r.ret(nr::FUTEX, &[BUF, 9, 5, ts]),
        e(libc::ETIMEDOUT),
        "an absolute deadline past"
    );
    assert_eq!(r.ret(nr::FUTEX, &[BUF, 10, 1, 0]), 0);
}

#[test]
fn metadata_is_the_files_own() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, b"same").unwrap();
    std::fs::write(&b, b"same").unwrap();
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut r = Rig::new();
    r.process.policy_mut().allow_read(dir.path()).unwrap();
    let mut stat_of = |path: &std::path::Path| {
        let p = format!("{}\0", path.display());
        r.mem.write(BUF, p.as_bytes()).unwrap();
        assert_eq!(r.ret(nr::STAT, &[BUF, BUF + 0x800]), 0);
        let mut st = abi::Stat::default();
        (r.mem)
            .read(BUF + 0x800, vm_memory::ByteValued::as_mut_slice(&mut st))
            .unwrap();
        st.0
    };
    let (sa, sb, sd) = (stat_of(&a), stat_of(&b), stat_of(dir.path()));
    let host = std::fs::metadata(&a).unwrap();
    assert_ne!(
        sa.st_ino, sb.st_ino,
        "two files, two inodes: cmp can tell them apart"
    );
    assert_eq!((sa.st_ino, sa.st_dev), (host.ino(), host.dev()));
    assert_eq!(sa.st_mode, libc::S_IFREG | 0o640, "the real permissions");
    assert_eq!((sa.st_size, sa.st_nlink), (4, 1));
    assert_eq!(
        (sa.st_mtime, sa.st_mtime_nsec),
        (host.mtime(), host.mtime_nsec())
    );
    assert_eq!(sa.st_uid, 1000, "owned by the sandbox's identity");
    assert_eq!(sd.st_mode & libc::S_IFMT, libc::S_IFDIR);
    assert!(sd.st_nlink >= 2);
}

#[test]
fn readlink_reads_links_inside_the_roots_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("file"), b"x").unwrap();
    std::os::unix::fs::symlink("file", root.join("link")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("outside")).unwrap();
    let mut r = Rig::new();
    r.process.policy_mut().allow_read(&root).unwrap();
    let mut readlink = |p: &std::path::Path, size: u64| {
        let text = format!("{}\0", p.display());
        r.mem.write(BUF, text.as_bytes()).unwrap();
        let n = r.ret(nr::READLINK, &[BUF, BUF + 0x800, size]);
        let mut out = vec![0u8; n.max(0) as usize];
        r.mem.read(BUF + 0x800, &mut out).unwrap();
        (n, String::from_utf8_lossy(&out).into_owned())
    };
    assert_eq!(readlink(&root.join("link"), 100), (4, "file".into()));
    assert_eq!(
        readlink(&root.join("link"), 2),
        (2, "fi".into()),
        "cut to the buffer"
    );
    assert_eq!(
        readlink(&root.join("file"), 100).0,
        -i64::from(libc::EINVAL),
        "not a link"
    );
    assert_eq!(
        readlink(&root.join("none"), 100).0,
        -i64::from(libc::ENOENT)
    );
    let outside = dir.path().join("outside");
    assert_eq!(
        readlink(&outside, 100).0,
        -i64::from(libc::ENOENT),
        "outside the roots"
    );
    assert_eq!(
        readlink(dir.path(), 100).0,
        -i64::from(libc::EINVAL),
        "on the way to a root"
    );
    assert_eq!(
        readlink(std::path::Path::new("/"), 100).0,
        -i64::from(libc::EINVAL)
    );
    let via_dotdot = root.join("../outside");
    assert_eq!(readlink(&via_dotdot, 100).0, -i64::from(libc::ENOENT));
}

/// Writes `text` NUL-terminated at `at`.
fn put_path(r: &mut Rig, at: u64, text: &str) -> u64 {
    r.mem.write(at, format!("{text}\0").as_bytes()).unwrap();
    at
}

#[test]
fn directories_list_and_relative_paths_resolve_inside_the_roots_only() {
    let dir = tempfile::tempdir().unwrap();
    let top = std::fs::canonicalize(dir.path()).unwrap();
    let root = top.join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/a"), b"alpha").unwrap();
    std::fs::write(top.join("secret"), b"s").unwrap();
    std::os::unix::fs::symlink(top.join("secret"), root.join("out")).unwrap();
    let mut r = Rig::new();
    r.process.policy_mut().allow_read(&root).unwrap();
    let e = |n: i32| -i64::from(n);
    let p = put_path(&mut r, BUF, root.to_str().unwrap());
    let o_dir = (libc::O_RDONLY | libc::O_DIRECTORY) as u64;
    let fd = r.ret(nr::OPENAT, &[libc::AT_FDCWD as u64, p, o_dir]);
    assert_eq!(fd, 3);

    // getdents64: records with the layout of libc::dirent64, the names of the directory.
    let out = BUF + 0x1000;
    let n = r.ret(nr::GETDENTS64, &[fd as u64, out, 4096]);
    assert!(n > 0, "{n}");
    let mut bytes = vec![0u8; n as usize];
    r.mem.read(out, &mut bytes).unwrap();
    let (mut names, mut at) = (Vec::new(), 0usize);
    let name_at = std::mem::offset_of!(libc::dirent64, d_name);
    let reclen_at = std::mem::offset_of!(libc::dirent64, d_reclen);
    let type_at = std::mem::offset_of!(libc::dirent64, d_type);
    while at < bytes.len() {
        let reclen = u16::from_ne_bytes([bytes[at + reclen_at], bytes[at + reclen_at + 1]]);
        let name = &bytes[at + name_at..at + reclen as usize];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap()];
        let name = String::from_utf8(name.to_vec()).unwrap();
        if name == "sub" {
            assert_eq!(bytes[at + type_at], libc::DT_DIR);
        }
        names.push(name);
        at += reclen as usize;
    }
    names.sort();
    assert_eq!(names, [".", "..", "out", "sub"]);
    assert_eq!(r.ret(nr::GETDENTS64, &[fd as u64, out, 4096]), 0, "the end");
    assert_eq!(r.ret(nr::LSEEK, &[fd as u64, 0, 0]), 0, "rewinddir");
    assert_eq!(r.ret(nr::GETDENTS64, &[fd as u64, out, 4096]), n);
    assert_eq!(r.ret(nr::GETDENTS64, &[1, out, 4096]), e(libc::ENOTDIR));
    assert_eq!(r.ret(nr::READ, &[fd as u64, out, 16]), e(libc::EISDIR));

    // Relative to the directory descriptor: inside works, "../.." and escaping links do not.
    let rel = |r: &mut Rig, path: &str| {
        let p = put_path(r, BUF, path);
        r.ret(nr::OPENAT, &[fd as u64, p, 0])
    };
    assert_eq!(rel(&mut r, "sub/a"), 4);
    assert_eq!(rel(&mut r, "../secret"), e(libc::EACCES));
    assert_eq!(rel(&mut r, "sub/../../secret"), e(libc::EACCES));
    assert_eq!(
        rel(&mut r, "out"),
        e(libc::EACCES),
        "a link out of the root"
    );
    assert_eq!(
        rel(&mut r, "none"),
        e(libc::ENOENT),
        "missing inside a root"
    );
    assert_eq!(
        rel(&mut r, "../none"),
        e(libc::EACCES),
        "nothing said outside"
    );
    assert_eq!(rel(&mut r, "sub/a/x"), e(libc::EACCES));
    let p = put_path(&mut r, BUF, "sub/a");
    assert_eq!(r.ret(nr::OPENAT, &[1, p, 0]), e(libc::ENOTDIR), "a stream");
    assert_eq!(r.ret(nr::OPENAT, &[77, p, 0]), e(libc::EBADF));
    assert_eq!(r.ret(nr::OPENAT, &[fd as u64, p, o_dir]), e(libc::ENOTDIR));

    // The working directory: chdir, relative opens, getcwd, fchdir, and the way to a root.
    let cwd = |r: &mut Rig| {
        let n = r.ret(nr::GETCWD, &[out, 4096]);
        let mut b = vec![0u8; n.max(1) as usize - 1];
        r.mem.read(out, &mut b).unwrap();
        String::from_utf8(b).unwrap()
    };
    assert_eq!(cwd(&mut r), "/");
    let p = put_path(&mut r, BUF, root.join("sub").to_str().unwrap());
    assert_eq!(r.ret(nr::CHDIR, &[p]), 0);
    assert_eq!(cwd(&mut r), root.join("sub").to_str().unwrap());
    let p = put_path(&mut r, BUF, "a");
    assert_eq!(
        r.ret(nr::OPEN, &[p, 0]),
        5,
        "relative to the working directory"
    );
    assert_eq!(r.ret(nr::GETCWD, &[out, 3]), e(libc::ERANGE));
    assert_eq!(r.ret(nr::CHDIR, &[p]), e(libc::ENOTDIR));
    assert_eq!(r.ret(nr::FCHDIR, &[fd as u64]), 0);
    assert_eq!(cwd(&mut r), root.to_str().unwrap());
    assert_eq!(r.ret(nr::FCHDIR, &[4]), e(libc::ENOTDIR));
    let p = put_path(&mut r, BUF, "..");
    assert_eq!(r.ret(nr::CHDIR, &[p]), 0, "standing on the way to a root");
    assert_eq!(cwd(&mut r), top.to_str().unwrap());
    assert_eq!(
        r.ret(nr::OPENAT, &[libc::AT_FDCWD as u64, p, o_dir]),
        e(libc::EACCES)
    );
    let p = put_path(&mut r, BUF, "secret");
    assert_eq!(
        r.ret(nr::OPEN, &[p, 0]),
        e(libc::EACCES),
        "but not reading there"
    );
    assert_eq!(r.ret(nr::STAT, &[p, out]), e(libc::EACCES));
    let p = put_path(&mut r, BUF, ".");
    assert_eq!(r.ret(nr::STAT, &[p, out]), 0, "its metadata is shown");
    let p = put_path(&mut r, BUF, "root/out");
    assert_eq!(r.ret(nr::CHDIR, &[p]), e(libc::EACCES));
    assert_eq!(
        r.ret(nr::LSTAT, &[p, out]),
        0,
        "the link itself lies inside"
    );
    assert_eq!(
        r.ret(nr::STAT, &[p, out]),
        e(libc::EACCES),
        "its target not"
    );
    assert_eq!(r.process.open_files(), 3);
}

#[test]
fn statx_and_access_tell_the_truth_of_a_read_only_view() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"12345").unwrap();
    let mut r = Rig::new();
    r.process.policy_mut().allow_read(dir.path()).unwrap();
    let p = put_path(&mut r, BUF, file.to_str().unwrap());
    let out = BUF + 0x1000;
    let flags = libc::AT_SYMLINK_NOFOLLOW as u64;
    let mask = libc::STATX_BASIC_STATS as u64;
    assert_eq!(
        r.ret(nr::STATX, &[libc::AT_FDCWD as u64, p, flags, mask, out]),
        0
    );
    let mut x = abi::Statx::default();
    (r.mem)
        .read(out, vm_memory::ByteValued::as_mut_slice(&mut x))
        .unwrap();
    use std::os::unix::fs::MetadataExt;
    let host = std::fs::metadata(&file).unwrap();
    assert_eq!(x.0.stx_size, 5);
    assert_eq!(x.0.stx_ino, host.ino());
    assert_eq!(u32::from(x.0.stx_mode), host.mode());
    assert_eq!(x.0.stx_uid, 1000);
    assert_eq!(x.0.stx_mtime.tv_sec, host.mtime());
    assert_eq!(
        x.0.stx_mask & libc::STATX_BASIC_STATS,
        libc::STATX_BASIC_STATS
    );
    let access = |r: &mut Rig, mode: i32| r.ret(nr::ACCESS, &[p, mode as u64]);
    assert_eq!(access(&mut r, libc::R_OK), 0);
    assert_eq!(access(&mut r, libc::W_OK), -i64::from(libc::EROFS));
    assert_eq!(access(&mut r, libc::X_OK), -i64::from(libc::EACCES));
    let fd = r.ret(nr::OPEN, &[p, 0]);
    assert_eq!(r.ret(nr::FSTATFS, &[fd as u64, out]), 0);
    assert_eq!(r.ret(nr::STATFS, &[p, out]), 0);
    assert_eq!(r.ret(nr::FSTATFS, &[1, out]), -i64::from(libc::ENOSYS));
}
