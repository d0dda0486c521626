//! `--trace-syscalls`: one strace-style line per call, e.g. `write(1, "hi\n", 3) = 3`.

use super::files::PATH_MAX;
use super::sysno::{self, *};
use super::{Errno, Next, SyscallArgs, VmRequest};
use crate::sandbox::exit::Exit;
use crate::sandbox::usermem::UserMemory;

/// Formats one call and its result.
pub fn trace_line(call: &SyscallArgs, next: &Next, mem: &UserMemory) -> String {
    format!(
        "{}({}) = {}",
        sysno::name(call.nr),
        arguments(call, mem),
        result(call.nr, next)
    )
}

fn arguments(call: &SyscallArgs, mem: &UserMemory) -> String {
    let a = call.args;
    let text = |addr: u64, len: u64| {
        let mut b = vec![0u8; len.min(32) as usize];
        match mem.read(addr, &mut b) {
            Ok(()) => {
                let more = if len > 32 { "..." } else { "" };
                format!("{:?}{more}", String::from_utf8_lossy(&b))
            }
            Err(_) => format!("{addr:#x}"),
        }
    };
    let path = |addr: u64| match mem.read_cstr(addr, PATH_MAX) {
        Ok(p) => format!("{:?}", String::from_utf8_lossy(&p)),
        Err(_) => format!("{addr:#x}"),
    };
    match call.nr {
        WRITE => format!("{}, {}, {}", a[0] as i32, text(a[1], a[2]), a[2]),
        READ => format!("{}, {:#x}, {}", a[0] as i32, a[1], a[2]),
        OPEN | STAT | LSTAT | ACCESS | EXECVE | READLINK | STATFS | GETXATTR | LGETXATTR
        | LISTXATTR | LLISTXATTR => format!("{}, {:#x}", path(a[0]), a[1]),
        CHDIR => path(a[0]),
        OPENAT | NEWFSTATAT | FACCESSAT | FACCESSAT2 | READLINKAT | STATX => {
            let dir = if a[0] as i32 == libc::AT_FDCWD {
                "AT_FDCWD".to_string()
            } else {
                (a[0] as i32).to_string()
            };
            format!("{dir}, {}, {:#x}", path(a[1]), a[2])
        }
        EXIT | EXIT_GROUP | CLOSE => format!("{}", a[0] as i32),
        GETPID | GETTID | GETUID | GETGID | GETEUID | GETEGID | GETPPID | SCHED_YIELD => {
            String::new()
        }
        _ => a[..3]
            .iter()
            .map(|v| format!("{v:#x}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn result(nr: u64, next: &Next) -> String {
    match next {
        Next::Return(v) if *v < 0 && *v > -4096 => {
            let e = Errno(-*v as i32);
            format!("-1 {} ({})", e.name(), e.description())
        }
        Next::Return(v) if nr == MMAP || nr == BRK || nr == MREMAP => format!("{v:#x}"),
        Next::Return(v) => v.to_string(),
        Next::End(Exit::Denied { .. }) => "? (denied by --strict: program killed)".into(),
        Next::End(Exit::TimedOut) => "? (time limit)".into(),
        Next::End(_) => "?".into(),
        Next::SigReturn => "? (back from a signal handler)".into(),
        Next::Vm(VmRequest::Fork(s)) => s.pid.to_string(),
        Next::Vm(VmRequest::Exec(_)) => "0 (a new program)".into(),
    }
}

/// Where `--trace-syscalls` lines go.
#[derive(Clone, Debug)]
pub enum TraceSink {
    /// Standard error, each line written whole with one `write` (so it cannot be split by
    /// the program's own output, though the two still alternate line by line).
    Stderr,
    /// A file of its own (opened before the VMM confines itself).
    File(std::sync::Arc<std::fs::File>),
}

impl TraceSink {
    /// Writes one line of process `pid` (named when it is not the first).
    pub fn line(&mut self, pid: i32, text: &str) {
        use std::io::Write;
        let line = match pid {
            super::tree::INIT => format!("[sandbox] {text}\n"),
            pid => format!("[sandbox pid {pid}] {text}\n"),
        };
        let _ = match self {
            Self::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
            Self::File(f) => (&**f).write_all(line.as_bytes()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::layout::USER_BASE;

    #[test]
    fn lines_name_calls_and_errors() {
        let mut mem = UserMemory::new(4 << 20).unwrap();
        mem.write(USER_BASE, b"hi\n").unwrap();
        let write = SyscallArgs {
            nr: WRITE,
            args: [1, USER_BASE, 3, 0, 0, 0],
        };
        assert_eq!(
            trace_line(&write, &Next::Return(3), &mem),
            r#"write(1, "hi\n", 3) = 3"#
        );
        let open = SyscallArgs {
            nr: OPENAT,
            args: [libc::AT_FDCWD as u64, 0x1000, 0, 0, 0, 0],
        };
        assert_eq!(
            trace_line(&open, &Next::Return(-13), &mem),
            "openat(AT_FDCWD, 0x1000, 0x0) = -1 EACCES (Permission denied)"
        );
        mem.write(USER_BASE + 0x100, b"/usr\0").unwrap();
        let statx = SyscallArgs {
            nr: STATX,
            args: [libc::AT_FDCWD as u64, USER_BASE + 0x100, 0x100, 0x7ff, 0, 0],
        };
        assert_eq!(
            trace_line(&statx, &Next::Return(0), &mem),
            r#"statx(AT_FDCWD, "/usr", 0x100) = 0"#
        );
        let pipe2 = SyscallArgs {
            nr: 293,
            ..Default::default()
        };
        let denied = Next::End(Exit::Denied { nr: 293 });
        assert!(trace_line(&pipe2, &denied, &mem).starts_with("pipe2("));
    }
}
