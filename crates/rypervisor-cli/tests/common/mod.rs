//! Helpers for the CLI tests: assemble guests with iced-x86, write them to temporary files,
//! build ELF files with `object`, and run the `rypervisor` binary.

#![allow(dead_code)]

pub mod guest;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;
use object::write::elf::{FileHeader, ProgramHeader, Writer};
use object::Endianness;

/// What a run of the binary produced.
#[derive(Debug)]
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Fails loudly if /dev/kvm cannot be used: these tests exercise a real KVM.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("these tests need a usable /dev/kvm (load kvm_intel/kvm_amd and check permissions): {e}");
    }
}

/// Runs `rypervisor ARGS` with `stdin`, bounded by a host-side timeout.
pub fn rypervisor(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rypervisor"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rypervisor");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait for rypervisor");
    writer.join().unwrap();
    Run {
        status: out
            .status
            .code()
            .unwrap_or_else(|| panic!("rypervisor died by a signal: {:?}", out.status)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A temporary directory kept alive with the files in it.
pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Assembles a guest: `body` emits instructions; `ip` is the load address.
pub fn assemble(
    bitness: u32,
    ip: u64,
    body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Vec<u8> {
    let mut a = CodeAssembler::new(bitness).unwrap();
    body(&mut a).unwrap();
    a.assemble(ip).unwrap()
}

/// Emits `mov dx,0x3f8` and one `mov al,c; out dx,al` per byte: a few instructions per
/// character, which matters where ring 0 is emulated.
pub fn print(a: &mut CodeAssembler, text: &[u8]) -> Result<(), IcedError> {
    a.mov(dx, 0x3f8)?;
    for &c in text {
        a.mov(al, c as u32)?;
        a.out(dx, al)?;
    }
    Ok(())
}

/// Emits `mov al,status; out 0xf4,al`.
pub fn exit(a: &mut CodeAssembler, status: u8) -> Result<(), IcedError> {
    a.mov(al, status as u32)?;
    a.out(0xf4u32, al)?;
    a.hlt()
}

/// A minimal ELF executable with one PT_LOAD segment holding `code` at `addr`.
pub fn elf(is_64: bool, machine: u16, addr: u64, code: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = Writer::new(Endianness::Little, is_64, &mut buf);
    w.reserve_file_header();
    w.reserve_program_headers(1);
    let offset = w.reserve(code.len(), 16);
    w.write_file_header(&FileHeader {
        os_abi: 0,
        abi_version: 0,
        e_type: object::elf::ET_EXEC,
        e_machine: machine,
        e_entry: addr,
        e_flags: 0,
    })
    .unwrap();
    w.write_align_program_headers();
    w.write_program_header(&ProgramHeader {
        p_type: object::elf::PT_LOAD,
        p_flags: object::elf::PF_R | object::elf::PF_X,
        p_offset: offset as u64,
        p_vaddr: addr,
        p_paddr: addr,
        p_filesz: code.len() as u64,
        p_memsz: code.len() as u64 + 0x100,
        p_align: 0x1000,
    });
    w.pad_until(offset);
    w.write(code);
    buf
}

/// How a measured run ended.
#[derive(Debug)]
pub struct Measured {
    pub status: i32,
    pub stderr: String,
    /// Peak resident set of the VMM process, in MiB.
    pub peak_mib: u64,
    pub took: Duration,
}

/// Runs `rypervisor ARGS` with the given stdin and stdout, and measures it.
pub fn measured(args: &[&str], stdin: Stdio, stdout: Stdio) -> Measured {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rypervisor"))
        .args(args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rypervisor");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let (mut status, mut usage) = (0, unsafe_zeroed_rusage());
    // SAFETY: waiting for our own child with live out-parameters; the Child is not waited
    // for again (it is dropped below without wait).
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    std::mem::forget(child);
    assert!(
        libc::WIFEXITED(status),
        "rypervisor died by signal {}",
        libc::WTERMSIG(status)
    );
    Measured {
        status: libc::WEXITSTATUS(status),
        stderr: reader.join().unwrap(),
        peak_mib: usage.ru_maxrss as u64 / 1024,
        took: started.elapsed(),
    }
}

fn unsafe_zeroed_rusage() -> libc::rusage {
    // SAFETY: rusage is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Every thread of `pid`: (name, Seccomp mode).
pub fn threads(pid: u32) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|t| {
            let t = t.ok()?.path();
            let name = std::fs::read_to_string(t.join("comm")).ok()?;
            let status = std::fs::read_to_string(t.join("status")).ok()?;
            let mode = status.lines().find(|l| l.starts_with("Seccomp:"))?;
            Some((name.trim().to_string(), mode.to_string()))
        })
        .collect()
}
