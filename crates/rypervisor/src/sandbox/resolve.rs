//! Resolving a program's path on the host, as `realpath` does but one step at a time, so the
//! policy sees every place the walk goes: a step into the host's pseudo file systems
//! (`/proc`, `/sys`, `/dev`) ends it, wherever it comes from — the path itself, or a symlink
//! met on the way (`root/x -> /proc/self/cwd`) — so `/proc`'s magic links (`/proc/N/cwd`,
//! `/proc/self/exe`, `/proc/N/fd/M`), which `realpath` would follow to wherever they point,
//! are never followed. The result is then checked against the roots by the policy, and its
//! file system against the pseudo file systems' types, for a `proc` or `sysfs` mounted
//! somewhere else (a chroot's `/proc`).
//!
//! Hand-written because std's `canonicalize` is `realpath(3)`, which follows magic links, and
//! `openat2(RESOLVE_NO_MAGICLINKS)` would make every resolution depend on a kernel ≥ 5.6 and a
//! wider seccomp filter; a race with another host user who swaps a directory for a link
//! between this walk and the open remains (the program itself cannot write to the host).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// The host's pseudo file systems: never readable, even under an allowed root such as `/`.
pub const PSEUDO_ROOTS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Symlinks followed in one resolution at most (Linux's limit: ELOOP after 40).
const MAX_LINKS: usize = 40;

/// The pseudo file system `path` lies in, if any (by name).
pub fn pseudo_root(path: &Path) -> Option<&'static str> {
    PSEUDO_ROOTS.into_iter().find(|root| path.starts_with(root))
}

/// File system types that are the kernel's state, not files: proc, sysfs, devpts, debugfs,
/// tracefs, cgroup (1 and 2), securityfs, bpf, configfs, efivarfs, and autofs (whose mount
/// points make the host mount something).
const PSEUDO_TYPES: [i64; 12] = [
    0x9fa0,      // PROC_SUPER_MAGIC
    0x6265_6572, // SYSFS_MAGIC
    0x1cd1,      // DEVPTS_SUPER_MAGIC
    0x6462_6720, // DEBUGFS_MAGIC
    0x7472_6163, // TRACEFS_MAGIC
    0x0027_e0eb, // CGROUP_SUPER_MAGIC
    0x6367_7270, // CGROUP2_SUPER_MAGIC
    0x7363_6673, // SECURITYFS_MAGIC
    0xcafe_4a11, // BPF_FS_MAGIC
    0x6265_6570, // CONFIGFS_MAGIC
    0xde5e_81e4, // EFIVARFS_MAGIC
    0x0187,      // AUTOFS_SUPER_MAGIC
];

/// `statfs(2)` of a host path (std has no wrapper).
pub fn host_statfs(path: &Path) -> io::Result<libc::statfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: all-zero is a valid statfs for the kernel to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a live statfs; the result is checked.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Whether `path` (resolved) lies on one of the kernel's pseudo file systems (a path that is
/// gone is not: the caller's own lookup reports it).
pub fn on_pseudo_fs(path: &Path) -> bool {
    match host_statfs(path) {
        Ok(st) => PSEUDO_TYPES.contains(&st.f_type),
        Err(e) => e.raw_os_error() == Some(libc::EINVAL),
    }
}

/// Resolves `normal` (absolute and lexically normal) on the host, following symlinks (the
/// last component's only with `follow_last`), refusing every step into a pseudo root.
/// Errors: `NotFound` (a component is missing), `PermissionDenied` (a pseudo root, too many
/// links), or the host's own (`ENOTDIR`...).
pub fn resolve(normal: &Path, follow_last: bool) -> io::Result<PathBuf> {
    let denied = || io::Error::from(io::ErrorKind::PermissionDenied);
    let mut pending: VecDeque<OsString> = parts(normal).into();
    let mut at = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            at.pop(); // `at` holds no links: this is the physical parent
            continue;
        }
        let next = at.join(&part);
        if pseudo_root(&next).is_some() {
            return Err(denied());
        }
        let meta = std::fs::symlink_metadata(&next)?;
        let last = pending.is_empty();
        if meta.file_type().is_symlink() && (follow_last || !last) {
            links += 1;
            if links > MAX_LINKS {
                return Err(denied());
            }
            let target = std::fs::read_link(&next)?;
            if target.is_absolute() {
                at = PathBuf::from("/");
            }
            for p in parts(&target).into_iter().rev() {
                pending.push_front(p);
            }
        } else {
            if !last && !meta.is_dir() {
                return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
            }
            at = next;
        }
    }
    Ok(at)
}

/// A path's components as names and `..` (root and `.` dropped).
fn parts(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_as_realpath_except_into_the_pseudo_roots() {
        let dir = tempfile::tempdir().unwrap();
        let top = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(top.join("a/b")).unwrap();
        std::fs::write(top.join("a/b/f"), "x").unwrap();
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(target, top.join(name)).unwrap();
        };
        link("a/b", "rel");
        link(top.join("a").to_str().unwrap(), "abs");
        link("rel/../b/f", "chain");
        link("/proc/self/cwd", "magic");
        link("/proc", "procdir");
        link("loop2", "loop1");
        link("loop1", "loop2");
        for (path, want) in [("rel/f", "a/b/f"), ("abs/b/f", "a/b/f"), ("chain", "a/b/f")] {
            let got = resolve(&top.join(path), true).unwrap();
            assert_eq!(got, top.join(want), "{path}");
            assert_eq!(
                got,
                std::fs::canonicalize(top.join(path)).unwrap(),
                "as realpath"
            );
        }
        // realpath follows /proc/self/cwd to this process's directory; the walk refuses.
        assert!(std::fs::canonicalize(top.join("magic")).is_ok());
        for path in ["magic", "procdir/self/exe", "magic/x"] {
            let e = resolve(&top.join(path), true).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{path}");
        }
        assert!(resolve(Path::new("/proc/self/exe"), true).is_err());
        assert!(resolve(Path::new("/sys/kernel"), true).is_err());
        assert_eq!(
            resolve(&top.join("loop1"), true).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        // The last link itself, not followed.
        assert_eq!(
            resolve(&top.join("magic"), false).unwrap(),
            top.join("magic")
        );
        assert_eq!(
            resolve(&top.join("none"), true).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let e = resolve(&top.join("a/b/f/x"), true).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
        assert!(on_pseudo_fs(Path::new("/proc/self")));
        assert!(!on_pseudo_fs(&top));
    }
}
