//! `execve` and `execveat`: the new program is found, checked and read here (under the
//! policy, as `open` would, and with a `#!` line's interpreter in its place), so every error
//! is the program's `errno` and its old image stays intact. What comes back to the run loop
//! is an [`ExecRequest`]: a checked [`Image`] and its arguments, for a new micro-VM that
//! takes the process's place (its pid, descriptors but the close-on-exec ones, ignored
//! signals, mask, working directory).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;

use super::files::PATH_MAX;
use super::{Context, Errno, Process, SysError, SysResult, VmRequest};
use crate::sandbox::machine::Image;
use crate::sandbox::program::ProgramError;
use crate::sandbox::SandboxError;

/// Most argv + envp strings (Linux's bound is the stack; the sandbox's stack is smaller).
const MAX_STRINGS: usize = 1 << 16;
/// Most bytes of argv + envp strings (Linux's `ARG_MAX` with an 8 MiB stack limit).
const MAX_ARG_BYTES: usize = 2 << 20;
/// `#!` lines are read this far (Linux's `BINPRM_BUF_SIZE`).
const SHEBANG_MAX: usize = 256;
/// Interpreters of interpreters followed (Linux allows 4 levels, then `ELOOP`).
const MAX_SHEBANGS: usize = 4;

/// A new program for the process.
#[derive(Clone, Debug)]
pub struct ExecRequest {
    /// The path as the program gave it (messages, `AT_EXECFN`).
    pub path: Vec<u8>,
    /// The checked program.
    pub image: Image,
    /// argv.
    pub args: Vec<Vec<u8>>,
    /// envp.
    pub env: Vec<Vec<u8>>,
    /// The program's file on the host (`/proc/self/exe` from then on).
    pub exe: std::path::PathBuf,
}

/// What a checked program error means to `execve`'s caller.
fn exec_errno(e: &SandboxError) -> Errno {
    match e {
        SandboxError::Program(ProgramError::InterpreterNotAllowed { .. }) => Errno::EACCES,
        SandboxError::Program(ProgramError::DoesNotFit { .. }) => Errno::ENOMEM,
        SandboxError::Program(ProgramError::ArgsTooLong(..)) => Errno::E2BIG,
        SandboxError::File(_) => Errno::EACCES,
        SandboxError::Memory(_) => Errno::ENOMEM,
        _ => Errno::ENOEXEC,
    }
}

/// A `#!` line: the interpreter and its one optional argument (Linux's reading: split at the
/// first blank, the rest kept whole).
fn shebang(head: &[u8]) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    let line = head.strip_prefix(b"#!")?;
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let line = &line[..end];
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = line.iter().position(|b| !blank(b))?;
    let line = &line[start..];
    let cut = line.iter().position(blank).unwrap_or(line.len());
    let interp = line[..cut].to_vec();
    let rest = &line[cut..];
    let arg = rest.iter().position(|b| !blank(b)).map(|s| {
        let r = &rest[s..];
        let e = r.iter().rposition(|b| !blank(b)).map_or(0, |e| e + 1);
        r[..e].to_vec()
    });
    Some((interp, arg))
}

impl Process {
    /// Reads a NULL-terminated array of strings (argv, envp), bounded in count and bytes.
    fn read_strings(
        &self,
        at: u64,
        total: &mut usize,
        cx: &Context<'_>,
    ) -> Result<Vec<Vec<u8>>, Errno> {
        let mut out = Vec::new();
        if at == 0 {
            return Ok(out); // Linux takes a NULL argv or envp as empty
        }
        for i in 0.. {
            if out.len() >= MAX_STRINGS {
                return Err(Errno::E2BIG);
            }
            let ptr = cx
                .mem
                .read_u64(at.checked_add(i * 8).ok_or(Errno::EFAULT)?)?;
            if ptr == 0 {
                break;
            }
            let s = cx.mem.read_cstr(ptr, MAX_ARG_BYTES).map_err(|e| match e {
                Errno::ENAMETOOLONG => Errno::E2BIG,
                e => e,
            })?;
            *total += s.len() + 1;
            if *total > MAX_ARG_BYTES {
                return Err(Errno::E2BIG);
            }
            out.push(s);
        }
        Ok(out)
    }

    /// `execveat(dirfd, path, argv, envp, flags)` (`execve` is `AT_FDCWD`, 0).
    pub(super) fn execve(
        &mut self,
        dirfd: i32,
        (path, argv, envp): (u64, u64, u64),
        flags: u64,
        cx: &mut Context<'_>,
    ) -> SysResult {
        // From a thread other than the first of a process with others: Linux makes it the
        // first; not served yet (the first thread's VMM thread holds the process's end).
        if self.pid != self.tgid && self.tree.group_size(self.tgid) > 1 {
            return self.unserved(super::sysno::EXECVEAT);
        }
        let known = (libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW) as u64;
        if flags & !known != 0 {
            return Err(Errno::EINVAL.into());
        }
        let given = cx.mem.read_cstr(path, PATH_MAX)?;
        if given.is_empty() {
            return Err(Errno::ENOENT.into());
        }
        let mut total = 0;
        let mut args = self.read_strings(argv, &mut total, cx)?;
        let env = self.read_strings(envp, &mut total, cx)?;
        let mut file_path = given.clone();
        for _ in 0..=MAX_SHEBANGS {
            let abs = self.absolute(dirfd, &file_path)?;
            // The program itself again (busybox runs its applets so): no path to check.
            let host = match (&*abs, &self.exe) {
                (b"/proc/self/exe", Some(exe)) => exe.clone(),
                _ => self.host_path(&abs)?,
            };
            let bytes = self.read_program(&host, self.mem_size())?;
            if let Some((interp, arg)) = shebang(&bytes[..bytes.len().min(SHEBANG_MAX)]) {
                if interp.is_empty() {
                    return Err(Errno::ENOEXEC.into());
                }
                // argv becomes: interpreter, its argument, the script's path, the rest.
                let mut new_args = vec![interp.clone()];
                new_args.extend(arg);
                new_args.push(file_path.clone());
                new_args.extend(args.into_iter().skip(1));
                args = new_args;
                file_path = interp;
                continue;
            }
            let name = String::from_utf8_lossy(&file_path).into_owned();
            let mem = self.mem_size();
            let image =
                Image::prepare(&name, bytes, mem, &self.policy).map_err(|e| exec_errno(&e))?;
            let request = ExecRequest {
                exe: host,
                path: given,
                image,
                args,
                env,
            };
            return Err(SysError::Vm(VmRequest::Exec(Box::new(request))));
        }
        Err(Errno::ELOOP.into())
    }

    /// The file at `host` if it is a regular file with an execute bit, no larger than memory.
    fn read_program(&self, host: &std::path::Path, mem: u64) -> Result<Vec<u8>, Errno> {
        let file = super::files::open_host(host)?; // never a FIFO's or device's open
        let meta = file.metadata().map_err(|e| Errno::from_io(&e))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(Errno::EACCES);
        }
        if meta.len() > mem {
            return Err(Errno::ENOMEM);
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        (&file)
            .take(mem)
            .read_to_end(&mut bytes)
            .map_err(|e| Errno::from_io(&e))?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::shebang;

    #[test]
    fn shebang_lines_split_like_linux() {
        let one = |s: &[u8]| shebang(s).map(|(i, a)| (i, a.unwrap_or_default()));
        assert_eq!(one(b"#!/bin/sh\necho"), Some((b"/bin/sh".to_vec(), vec![])));
        assert_eq!(
            one(b"#! /usr/bin/env  python3 -u \n"),
            Some((b"/usr/bin/env".to_vec(), b"python3 -u".to_vec())),
            "one argument: the rest of the line, trimmed"
        );
        assert_eq!(shebang(b"#!"), None, "no interpreter");
        assert_eq!(shebang(b"\x7fELF"), None);
    }
}
