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
    /// The starting working directory is not a directory under an allowed root.
    #[error("--cwd {path}: {why}")]
    Cwd {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
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
    /// The working directory the program starts in (canonical); `/` when unset.
    cwd: Option<PathBuf>,
}

use super::resolve::{on_pseudo_fs, pseudo_root, resolve};

/// Exit status of a program ended by `--strict` (128 + SIGSYS).
pub const STRICT_STATUS: i32 = 128 + 31;

/// A program's path made absolute (relative paths start at `/`) and lexically normal; `None`
/// for an empty or non-UTF-8 path.
fn lexical(guest_path: &[u8]) -> Option<PathBuf> {
    if guest_path.is_empty() {
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

    /// Starts the program in `path`, a directory under an allowed root (allow it first).
    pub fn set_cwd(&mut self, path: &Path) -> Result<(), PolicyError> {
        let canonical = std::fs::canonicalize(path).map_err(|source| PolicyError::BadPath {
            path: path.to_path_buf(),
            source,
        })?;
        let why = if !canonical.is_dir() {
            "not a directory"
        } else if self.allowed(canonical.clone()).is_none() {
            "not under an --allow-read directory"
        } else {
            self.cwd = Some(canonical);
            return Ok(());
        };
        Err(PolicyError::Cwd {
            path: path.to_path_buf(),
            why,
        })
    }

    /// The working directory the program starts in.
    pub fn cwd(&self) -> &Path {
        self.cwd.as_deref().unwrap_or(Path::new("/"))
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
    /// The path is normalised lexically, then resolved on the host (following symlinks one
    /// at a time, never into `/proc`, `/sys` or `/dev`: see [`super::resolve`]), and the
    /// *resolved* path must lie under an allowed root and not on a pseudo file system: a
    /// symlink inside an allowed directory that points outside it is refused.
    pub fn check_read(&self, guest_path: &[u8]) -> Option<PathBuf> {
        let normal = self.normalise(guest_path)?;
        let resolved = resolve(&normal, true).ok()?;
        self.allowed(resolved)
    }

    /// As [`Policy::check_read`], but the last component is not followed: the host path of
    /// a symlink itself (for `readlink`), if its directory resolves under an allowed root.
    pub fn check_link(&self, guest_path: &[u8]) -> Option<PathBuf> {
        let normal = self.normalise(guest_path)?;
        self.allowed(resolve(&normal, false).ok()?)
    }

    /// Whether a path that [`Policy::check_read`] refused simply does not exist below a
    /// directory the program may read (so `ENOENT` is the truth and tells nothing about the
    /// rest of the host), rather than lying outside the roots (`EACCES`). The deepest part of
    /// the path that exists is resolved on the host and must lie under a root, so a link
    /// out of a root cannot be used to probe what exists beyond it.
    pub fn missing(&self, guest_path: &[u8]) -> bool {
        let Some(normal) = self.normalise(guest_path) else {
            return false;
        };
        let mut at = normal.as_path();
        loop {
            match std::fs::symlink_metadata(at) {
                Ok(_) if at == normal => return false, // it exists
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => return false,
            }
            match at.parent() {
                Some(parent) => at = parent,
                None => return false,
            }
        }
        match resolve(at, true) {
            Ok(found) => found.is_dir() && self.allowed(found).is_some(),
            Err(_) => false,
        }
    }

    /// Whether the path names something in the host's pseudo file systems (`/proc`, `/sys`,
    /// `/dev`), which the sandbox does not have at all.
    pub fn in_pseudo(&self, guest_path: &[u8]) -> bool {
        lexical(guest_path).is_some_and(|p| pseudo_root(&p).is_some())
    }

    /// Whether the path is an allowed root or a directory on the way to one (`/`, `/usr` for
    /// a root `/usr/lib`): real directories, as the roots are canonical, so not links.
    pub fn leads_to_root(&self, guest_path: &[u8]) -> bool {
        self.on_the_way(guest_path).is_some()
    }

    /// The path (lexically normal) if [`Policy::leads_to_root`] holds for it.
    pub fn on_the_way(&self, guest_path: &[u8]) -> Option<PathBuf> {
        let p = self.normalise(guest_path)?;
        self.allow_read
            .iter()
            .any(|root| root.starts_with(&p))
            .then_some(p)
    }

    /// The path made absolute (relative paths start at `/`) and lexically normal.
    fn normalise(&self, guest_path: &[u8]) -> Option<PathBuf> {
        if self.allow_read.is_empty() {
            return None;
        }
        lexical(guest_path)
    }

    /// `host` (resolved) if it lies under an allowed root and on no pseudo file system.
    fn allowed(&self, host: PathBuf) -> Option<PathBuf> {
        let inside = self.allow_read.iter().any(|root| host.starts_with(root));
        (inside && pseudo_root(&host).is_none() && !on_pseudo_fs(&host)).then_some(host)
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

    #[test]
    fn the_start_directory_must_be_an_allowed_directory() {
        let dir = tempfile::tempdir().unwrap();
        let inside = std::fs::canonicalize(dir.path()).unwrap().join("in");
        std::fs::create_dir(&inside).unwrap();
        std::fs::write(inside.join("f"), "x").unwrap();
        let mut policy = Policy::default();
        assert_eq!(policy.cwd(), Path::new("/"));
        let err = policy.set_cwd(&inside).unwrap_err();
        assert!(
            err.to_string().contains("not under an --allow-read"),
            "{err}"
        );
        policy.allow_read(&inside).unwrap();
        let err = policy.set_cwd(&inside.join("f")).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        policy.set_cwd(&inside.join(".")).unwrap();
        assert_eq!(policy.cwd(), inside);
        // ENOENT only where the directory is readable.
        let missing = inside.join("none");
        assert!(policy.missing(missing.to_str().unwrap().as_bytes()));
        assert!(!policy.missing(inside.join("f").to_str().unwrap().as_bytes()));
        let beside = inside.parent().unwrap().join("none");
        assert!(!policy.missing(beside.to_str().unwrap().as_bytes()));
        assert!(policy.on_the_way(b"/").is_some());
        assert!(policy
            .on_the_way(inside.join("f").to_str().unwrap().as_bytes())
            .is_none());
    }
}
