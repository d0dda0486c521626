//! Fuzzes the dispatcher's file-system side under a policy that allows one directory: paths
//! (absolute, relative to the working directory or to directory descriptors, with `..` and
//! symlinks in and out of the root), directories, metadata, pipes and descriptors. Beside the
//! root lies a secret file (and a symlink in the root points at it, another at its
//! directory): whatever the calls, its content never reaches the program's memory or output,
//! nothing panics, and the VMM's tables are never written.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rypervisor::sandbox::host::BufferHost;
use rypervisor::sandbox::layout::{MIN_MEM, USER_BASE};
use rypervisor::sandbox::linux::{sysno, Context, Next, Process, SyscallArgs};
use rypervisor::sandbox::usermem::UserMemory;
use rypervisor::sandbox::Policy;

const SECRET: &[u8] = b"top-secret-5f0c9a71e2";

/// The fixture, made once: `top/root` (allowed) and `top/outside/secret`.
fn fixture() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let top = std::env::temp_dir().join(format!("rypervisor-fuzz-fs-{}", std::process::id()));
        let root = top.join("root");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(top.join("outside")).unwrap();
        std::fs::write(top.join("outside/secret"), SECRET).unwrap();
        std::fs::write(root.join("a"), b"alpha").unwrap();
        std::fs::write(root.join("sub/b"), b"beta").unwrap();
        let _ = std::os::unix::fs::symlink("../outside/secret", root.join("leak"));
        let _ = std::os::unix::fs::symlink("../outside", root.join("door"));
        let _ = std::os::unix::fs::symlink("a", root.join("inner"));
        std::fs::canonicalize(root).unwrap()
    })
}

/// The calls worth fuzzing here (others are the `syscall` target's).
const CALLS: [u64; 40] = [
    sysno::OPEN,
    sysno::OPENAT,
    sysno::READ,
    sysno::PREAD64,
    sysno::READV,
    sysno::WRITE,
    sysno::CLOSE,
    sysno::DUP,
    sysno::DUP2,
    sysno::DUP3,
    sysno::FCNTL,
    sysno::LSEEK,
    sysno::FSTAT,
    sysno::STAT,
    sysno::LSTAT,
    sysno::NEWFSTATAT,
    sysno::STATX,
    sysno::STATFS,
    sysno::FSTATFS,
    sysno::ACCESS,
    sysno::FACCESSAT,
    sysno::READLINK,
    sysno::READLINKAT,
    sysno::GETDENTS64,
    sysno::GETDENTS,
    sysno::CHDIR,
    sysno::FCHDIR,
    sysno::GETCWD,
    sysno::GETXATTR,
    sysno::LGETXATTR,
    sysno::LISTXATTR,
    sysno::PIPE2,
    sysno::POLL,
    sysno::SELECT,
    sysno::IOCTL,
    sysno::MMAP,
    sysno::MUNMAP,
    sysno::FSYNC,
    sysno::MINCORE,
    sysno::FADVISE64,
];

/// Paths placed in program memory, for pointers to land on.
fn paths(root: &str) -> Vec<String> {
    vec![
        root.to_string(),
        format!("{root}/a"),
        format!("{root}/sub"),
        format!("{root}/../outside/secret"),
        "a".into(),
        "sub/b".into(),
        "..".into(),
        "../outside/secret".into(),
        "../../../../../../etc/passwd".into(),
        "leak".into(),
        "door/secret".into(),
        "inner".into(),
        "sub/../../root/a".into(),
        "/proc/self/mem".into(),
        "/dev/zero".into(),
        ".".into(),
    ]
}

/// A digest of guest memory `[from, to)` (hashing, not comparing, 2 MiB keeps the fuzzer's
/// comparison hooks out of the way).
fn digest(mem: &UserMemory, from: u64, to: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut bytes = vec![0u8; (to - from) as usize];
    mem.ram().read(from, &mut bytes).unwrap();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Whether `needle` occurs in `hay` (libc's memmem: one call, not a comparison per byte).
fn find(hay: &[u8], needle: &[u8]) -> bool {
    // SAFETY: both pointers and lengths describe live slices; memmem only reads them.
    !unsafe {
        libc::memmem(
            hay.as_ptr().cast(),
            hay.len(),
            needle.as_ptr().cast(),
            needle.len(),
        )
    }
    .is_null()
}

fuzz_target!(|data: &[u8]| {
    if find(data, SECRET) {
        return;
    }
    let root = fixture();
    let mut mem = UserMemory::new(MIN_MEM).unwrap();
    let slots = paths(root.to_str().unwrap());
    for (i, p) in slots.iter().enumerate() {
        mem.write(USER_BASE + i as u64 * 0x200, format!("{p}\0").as_bytes())
            .unwrap();
    }
    let scratch = USER_BASE + 0x10000;
    let mut policy = Policy::default();
    policy.allow_read(root).unwrap();
    let mut process = Process::new(policy, USER_BASE + 0x20000, MIN_MEM, 1 << 20);
    let mut host = BufferHost {
        stdin: b"in".to_vec(),
        no_sleep: true,
        limit: 1 << 20,
        ..BufferHost::default()
    };
    let tables = digest(&mem, 0, USER_BASE);
    // A few dozen calls per input: deep enough for open-then-use sequences, short enough
    // for many inputs a second.
    for chunk in data.chunks_exact(8).take(48) {
        let b = |i: usize| u64::from(chunk[i]);
        // An argument: a path slot, the scratch area, a small number or a descriptor.
        let arg = |v: u64| match v % 4 {
            0 => USER_BASE + (v / 4 % slots.len() as u64) * 0x200,
            1 => scratch + (v / 4) * 64,
            2 => v / 4 % 16,
            _ => (v / 4).wrapping_sub(100), // AT_FDCWD is -100
        };
        let call = SyscallArgs {
            nr: CALLS[chunk[0] as usize % CALLS.len()],
            args: [
                arg(b(1)),
                arg(b(2)),
                arg(b(3)).wrapping_mul(17),
                arg(b(4)),
                b(5),
                b(6) << 8 | b(7),
            ],
        };
        let mut cx = Context {
            mem: &mut mem,
            host: &mut host,
            remaining: Some(std::time::Duration::from_millis(1)),
            vdso_clock: None,
            interrupt: None,
        };
        if let Next::End(_) = process.dispatch(&call, &mut cx) {
            break;
        }
    }
    assert!(
        tables == digest(&mem, 0, USER_BASE),
        "a system call wrote below USER_BASE"
    );
    let mut user = vec![0u8; (MIN_MEM - USER_BASE) as usize];
    mem.ram().read(USER_BASE, &mut user).unwrap();
    let leaked = |b: &[u8]| find(b, SECRET);
    assert!(
        !leaked(&user),
        "the secret outside the root reached program memory"
    );
    assert!(
        !leaked(&host.stdout) && !leaked(&host.stderr),
        "the secret reached the output"
    );
});
