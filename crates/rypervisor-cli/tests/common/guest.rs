//! The repository's guest recipes for boot tests: the kernel (guest/build-kernel.sh, cached
//! after the first build) and the initramfs with guest/init.c, built once per test binary;
//! and a lock so that boots run one at a time (on a nested host guest ring 0 is emulated and
//! CPU-bound: parallel boots only slow each other down).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn script(name: &str, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo().join("guest").join(name))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run guest/{name}: {e}"));
    assert!(out.status.success(), "guest/{name} failed ({})", out.status);
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .to_string()
}

/// The recipe kernel's directory (vmlinux, bzImage), built once per machine.
pub fn guest_kernel() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| PathBuf::from(script("build-kernel.sh", &[])))
}

pub fn initramfs() -> &'static Path {
    static FILE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &FILE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("initramfs.cpio");
            script("build-initramfs.sh", &[path.to_str().unwrap()]);
            (dir, path)
        })
        .1
}

pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
