//! The file system a program sees: metadata, links, directories, paths relative to the
//! working directory and to directory descriptors, and the ways out of the roots.

use super::*;

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
pub(super) fn put_path(r: &mut Rig, at: u64, text: &str) -> u64 {
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

#[test]
fn proc_s_magic_links_are_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    std::os::unix::fs::symlink("/proc/self/cwd", root.join("magic")).unwrap();
    std::os::unix::fs::symlink("/proc/self", root.join("me")).unwrap();
    let mut r = Rig::new();
    // Even a root that holds the VMM's own working directory: /proc/self/cwd leads there.
    r.process.policy_mut().allow_read(&root).unwrap();
    r.process
        .policy_mut()
        .allow_read(&std::env::current_dir().unwrap())
        .unwrap();
    for path in [
        "/proc/self/cwd".to_string(),
        "/proc/self/exe".into(),
        "/proc/1/root/etc/passwd".into(),
        format!("{}/magic", root.display()),
        format!("{}/magic/Cargo.toml", root.display()),
        format!("{}/me/exe", root.display()),
    ] {
        let p = put_path(&mut r, BUF, &path);
        let fd = r.ret(nr::OPEN, &[p, 0]);
        assert!(fd < 0, "{path}: opened ({fd})");
        assert!(r.ret(nr::STAT, &[p, BUF + 0x1000]) < 0, "{path}: stat");
        assert!(r.ret(nr::CHDIR, &[p]) < 0, "{path}: chdir");
    }
    // The link itself may be read: its text is inside the root.
    let p = put_path(&mut r, BUF, &format!("{}/magic", root.display()));
    assert_eq!(r.ret(nr::READLINK, &[p, BUF + 0x1000, 64]), 14);
}
