//! Builds the C test programs in `tests/programs/` with a static C toolchain, once per test
//! process, into a temporary directory.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// A C compiler that links static programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Libc {
    /// `gcc -static` (glibc).
    Glibc,
    /// `musl-gcc -static`.
    Musl,
}

impl Libc {
    fn compiler(self) -> &'static str {
        match self {
            Libc::Glibc => "gcc",
            Libc::Musl => "musl-gcc",
        }
    }
}

/// Fails loudly without KVM: these tests run real micro-VMs.
pub fn require_kvm() {
    let kvm = Path::new("/dev/kvm");
    assert!(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(kvm)
            .is_ok(),
        "these tests need read-write access to /dev/kvm (they run real guests); \
         on Debian: add yourself to the 'kvm' group"
    );
}

/// The C libraries to test with: glibc always; musl when `musl-gcc` is installed (`.ci/run`
/// installs it). Without it the musl variants are skipped with a note on stderr.
pub fn libcs() -> Vec<Libc> {
    let musl = Command::new("musl-gcc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if musl {
        vec![Libc::Glibc, Libc::Musl]
    } else {
        eprintln!("note: musl-gcc not found, musl variants skipped (apt-get install musl-tools)");
        vec![Libc::Glibc]
    }
}

fn out_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temporary directory"))
        .path()
}

/// The source directory of the test programs (this file is shared by both crates' tests,
/// which sit side by side under `crates/`).
pub fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rypervisor/tests/programs")
}

/// Compiles `tests/programs/<name>.c` with `cc FLAGS -O2` into `out`; panics with the
/// compiler's message if that fails.
pub fn compile(name: &str, cc: &str, flags: &[&str], out: &Path) {
    let src = sources().join(format!("{name}.c"));
    let result = Command::new(cc)
        .args(flags)
        .args(["-O2", "-o"])
        .arg(out)
        .arg(&src)
        .output();
    match result {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "{cc} {} failed for {}:\n{}",
            flags.join(" "),
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "cannot run {cc} ({e}): the sandbox tests build their guest programs with it; \
             install it (Debian: apt-get install gcc musl-tools)"
        ),
    }
}

/// Compiles `tests/programs/<name>.c` statically with `libc` and returns the program's path.
pub fn program(name: &str, libc: Libc) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<(String, Libc), PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = built.get(&(name.to_string(), libc)) {
        return p.clone();
    }
    let out = out_dir().join(format!("{name}-{libc:?}"));
    compile(name, libc.compiler(), &["-static", "-pthread"], &out);
    built.insert((name.to_string(), libc), out.clone());
    out
}
