//! What a sandboxed program may do beyond computing: which host paths it may read, and what
//! happens to a system call the sandbox does not serve.

use std::path::{Component, Path, PathBuf};

/// Errors building a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// An `--allow-read` path inside the host's pseudo file systems.
    #[error("--allow-read {path}: {root} is the host's live kernel state, not files (/proc/self would be rypervisor itself): it cannot be allowed")]
    Pseudo {
        /// The path given.
        path: PathBuf,
        /// The pseudo file system it resolves into.
        root: &'static str,
    },
    /// An `--allow-read` path does not exist or cannot be resolved.
    #[error("--allow-read {path}: {source}")]
    BadPath {
        /// The path given.
        path: PathBuf,
        /// Why it cannot be resolved.
        source: std::io::Error,
    },
}

/// The sandbox's policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Host files and directory trees the program may open read-only (canonical paths).
    allow_read: Vec<PathBuf>,
    /// End the program (status 159, like SIGSYS) on a system call outside the policy,
    /// instead of returning ENOSYS.
    pub strict: bool,
}

/// The host's pseudo file systems: never readable, even under an allowed root such as `/`.
const PSEUDO_ROOTS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// The pseudo file system `path` (canonical) lies in, if any.
fn pseudo_root(path: &Path) -> Option<&'static str> {
    PSEUDO_ROOTS.into_iter().find(|root| path.starts_with(root))
}

/// Exit status of a program ended by `--strict` (128 + SIGSYS).
pub const STRICT_STATUS: i32 = 128 + 31;

impl Policy {
    /// Allows reading `path` (a file, or every file under a directory). The path is resolved
    /// now (symlinks included), so later changes to links do not widen the policy.
    pub fn allow_read(&mut self, path: &Path) -> Result<(), PolicyError> {
        let canonical = std::fs::canonicalize(path).map_err(|source| PolicyError::BadPath {
            path: path.to_path_buf(),
            source,
        })?;
        // The VMM's own /proc/<pid>/mem, device nodes and sysfs knobs are not data.
        if let Some(root) = pseudo_root(&canonical) {
            return Err(PolicyError::Pseudo {
                path: path.to_path_buf(),
                root,
            });
        }
        self.allow_read.push(canonical);
        Ok(())
    }

    /// The allowed roots.
    pub fn readable(&self) -> &[PathBuf] {
        &self.allow_read
    }

    /// Whether the policy lets the program open any host file.
    pub fn any_files(&self) -> bool {
        !self.allow_read.is_empty()
    }

    /// Resolves a path the program asked for (relative paths start at `/`, the program's
    /// working directory) and returns the host path if the policy allows reading it.
    ///
    /// The path is normalised lexically, then resolved on the host (following symlinks),
    /// and the *resolved* path must lie under an allowed root: a symlink inside an allowed
    /// directory that points outside it is refused.
    pub fn check_read(&self, guest_path: &[u8]) -> Option<PathBuf> {
        let normal = self.normalise(guest_path)?;
        let resolved = std::fs::canonicalize(&normal).ok()?;
        self.allowed(resolved)
    }

    /// As [`Policy::check_read`], but the last component is not followed: the host path of
    /// a symlink itself (for `readlink`), if its directory resolves under an allowed root.
    pub fn check_link(&self, guest_path: &[u8]) -> Option<PathBuf> {
        let normal = self.normalise(guest_path)?;
        let name = normal.file_name()?.to_owned();
        let parent = std::fs::canonicalize(normal.parent()?).ok()?;
        self.allowed(parent.join(name))
    }

    /// Whether the path is an allowed root or a directory on the way to one (`/`, `/usr` for
    /// a root `/usr/lib`): real directories, as the roots are canonical, so not links.
    pub fn leads_to_root(&self, guest_path: &[u8]) -> bool {
        match self.normalise(guest_path) {
            Some(p) => self.allow_read.iter().any(|root| root.starts_with(&p)),
            None => false,
        }
    }

    /// The path made absolute (relative paths start at `/`) and lexically normal.
    fn normalise(&self, guest_path: &[u8]) -> Option<PathBuf> {
        if self.allow_read.is_empty() || guest_path.is_empty() {
            return None;
        }
        let text = std::str::from_utf8(guest_path).ok()?;
        let mut normal = PathBuf::from("/");
        for part in Path::new(text).components() {
            match part {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    normal.pop();
                }
                Component::Normal(p) => normal.push(p),
            }
        }
        Some(normal)
    }

    /// `host` if it lies under an allowed root (and is no pseudo file system).
    fn allowed(&self, host: PathBuf) -> Option<PathBuf> {
        let inside = self.allow_read.iter().any(|root| host.starts_with(root));
        (inside && pseudo_root(&host).is_none()).then_some(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_allowed_roots_resolve() {
        let dir = std::env::temp_dir().join(format!("rypervisor-policy-{}", std::process::id()));
        let inside = dir.join("inside");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::write(inside.join("a.txt"), "a").unwrap();
        std::fs::write(dir.join("secret.txt"), "s").unwrap();
        let link = inside.join("escape");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(dir.join("secret.txt"), &link).unwrap();

        let mut policy = Policy::default();
        assert_eq!(
            policy.check_read(b"/etc/passwd"),
            None,
            "nothing by default"
        );
        policy.allow_read(&inside).unwrap();
        let a = inside.join("a.txt");
        assert!(policy.check_read(a.to_str().unwrap().as_bytes()).is_some());
        let dotdot = format!("{}/../secret.txt", inside.display());
        assert_eq!(policy.check_read(dotdot.as_bytes()), None);
        assert_eq!(policy.check_read(link.to_str().unwrap().as_bytes()), None);
        // The link itself may be read (readlink): it lies inside; what it names does not.
        assert_eq!(
            policy.check_link(link.to_str().unwrap().as_bytes()),
            Some(link.clone())
        );
        let outside_link = format!("{}/../secret.txt", inside.display());
        assert_eq!(policy.check_link(outside_link.as_bytes()), None);
        assert_eq!(policy.check_read(b"/etc/passwd"), None);
        assert_eq!(policy.check_read(b"\xff\xfe"), None);
        assert!(policy.allow_read(Path::new("/no/such/dir")).is_err());
        let err = policy.allow_read(Path::new("/proc/self")).unwrap_err();
        assert!(
            matches!(err, PolicyError::Pseudo { root: "/proc", .. }),
            "{err}"
        );
        let mut everything = Policy::default();
        everything.allow_read(Path::new("/")).unwrap();
        assert!(everything
            .check_read(a.to_str().unwrap().as_bytes())
            .is_some());
        assert_eq!(everything.check_read(b"/proc/self/mem"), None);
        assert_eq!(everything.check_read(b"/dev/zero"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
