//! Waiting for descriptors: `poll`, `select`, `FIONREAD`, with the in-memory host (whose
//! streams are always ready).

use super::*;

#[test]
fn poll_and_select_answer_for_every_kind_of_descriptor() {
    let mut r = Rig::new();
    r.host.stdin = b"abc".to_vec();
    let e = |n: i32| -i64::from(n);
    // stdin, stdout, a closed descriptor, a negative one (ignored), /dev/null.
    r.mem.write(BUF, b"/dev/null\0").unwrap();
    let null = r.ret(nr::OPEN, &[BUF, 0]);
    let fds = BUF + 0x100;
    let entries: [(i32, i16); 5] = [
        (0, libc::POLLIN),
        (1, libc::POLLOUT),
        (50, libc::POLLIN),
        (-1, libc::POLLIN),
        (null as i32, libc::POLLIN),
    ];
    for (i, (fd, events)) in entries.iter().enumerate() {
        let at = fds + 8 * i as u64;
        r.mem.write(at, &fd.to_ne_bytes()).unwrap();
        r.mem.write(at + 4, &events.to_ne_bytes()).unwrap();
        r.mem.write(at + 6, &[0xff, 0xff]).unwrap(); // revents: overwritten
    }
    assert_eq!(r.ret(nr::POLL, &[fds, 5, 0]), 4);
    let revents = |r: &Rig, i: u64| {
        let mut b = [0u8; 2];
        r.mem.read(fds + 8 * i + 6, &mut b).unwrap();
        i16::from_ne_bytes(b)
    };
    assert_eq!(revents(&r, 0), libc::POLLIN);
    assert_eq!(revents(&r, 1), libc::POLLOUT);
    assert_eq!(revents(&r, 2), libc::POLLNVAL);
    assert_eq!(revents(&r, 3), 0);
    assert_eq!(revents(&r, 4), libc::POLLIN);
    assert_eq!(
        r.ret(nr::POLL, &[fds, 2000, 0]),
        e(libc::EINVAL),
        "nfds over the limit"
    );
    assert_eq!(r.ret(nr::POLL, &[0x1000, 1, 0]), e(libc::EFAULT));

    // select: bits in, ready bits out; a closed descriptor is EBADF.
    let (rd, wr) = (BUF + 0x200, BUF + 0x300);
    r.mem.write_u64(rd, 1 << 0 | 1 << null).unwrap();
    r.mem.write_u64(wr, 1 << 1).unwrap();
    let nfds = null as u64 + 1;
    assert_eq!(r.ret(nr::SELECT, &[nfds, rd, wr, 0, 0]), 3);
    assert_eq!(r.mem.read_u64(rd).unwrap(), 1 << 0 | 1 << null);
    assert_eq!(r.mem.read_u64(wr).unwrap(), 1 << 1);
    r.mem.write_u64(rd, 1 << 9).unwrap();
    assert_eq!(r.ret(nr::SELECT, &[10, rd, 0, 0, 0]), e(libc::EBADF));
    let tv = BUF + 0x400;
    r.mem.write_u64(tv, 0).unwrap();
    r.mem.write_u64(tv + 8, 2_000_000).unwrap();
    assert_eq!(
        r.ret(nr::SELECT, &[1, rd, 0, 0, tv]),
        e(libc::EINVAL),
        "usec ≥ 1 s"
    );

    // FIONREAD: what stdin holds, what a file has left; not a question for a device.
    let n = BUF + 0x500;
    assert_eq!(r.ret(nr::IOCTL, &[0, libc::FIONREAD, n]), 0);
    assert_eq!(r.mem.read_u64(n).unwrap() as u32, 3);
    assert_eq!(
        r.ret(nr::IOCTL, &[null as u64, libc::FIONREAD, n]),
        e(libc::ENOTTY)
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"0123456789").unwrap();
    r.process.policy_mut().allow_read(file.path()).unwrap();
    let p = fs::put_path(&mut r, BUF, file.path().to_str().unwrap());
    let fd = r.ret(nr::OPEN, &[p, 0]) as u64;
    assert_eq!(r.ret(nr::READ, &[fd, BUF + 0x600, 4]), 4);
    assert_eq!(r.ret(nr::IOCTL, &[fd, libc::FIONREAD, n]), 0);
    assert_eq!(r.mem.read_u64(n).unwrap() as u32, 6);
}

#[test]
fn a_wait_without_end_stops_at_the_time_limit() {
    // A host whose stdin is never ready: only the cap can end the wait.
    struct Silent(Duration);
    impl Host for Silent {
        fn read_stdin(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Ok(0)
        }
        fn write_out(&mut self, _: i32, d: &[u8]) -> std::io::Result<usize> {
            Ok(d.len())
        }
        fn poll_streams(
            &mut self,
            fds: &mut [libc::pollfd],
            timeout: Option<Duration>,
        ) -> std::io::Result<usize> {
            self.0 = timeout.expect("capped");
            fds.iter_mut().for_each(|p| p.revents = 0);
            Ok(0)
        }
    }
    let mut r = Rig::new();
    let mut host = Silent(Duration::ZERO);
    let fds = BUF;
    r.mem.write(fds, &[0, 0, 0, 0, 1, 0, 0, 0]).unwrap(); // fd 0, POLLIN
    let wait = |r: &mut Rig, host: &mut Silent, timeout_ms: i64| {
        let mut cx = Context {
            mem: &mut r.mem,
            host,
            remaining: Some(Duration::from_secs(2)),
            vdso_clock: None,
            interrupt: None,
        };
        let call = SyscallArgs {
            nr: nr::POLL,
            args: [fds, 1, timeout_ms as u64, 0, 0, 0],
        };
        r.process.dispatch(&call, &mut cx)
    };
    assert_eq!(wait(&mut r, &mut host, 100), Next::Return(0));
    assert_eq!(host.0, Duration::from_millis(100));
    assert_eq!(wait(&mut r, &mut host, -1), Next::End(Exit::TimedOut));
    assert_eq!(host.0, Duration::from_secs(2), "capped at the time left");
}

#[test]
fn a_pipe_inside_the_process_follows_linux_rules() {
    let mut r = Rig::new();
    let e = |n: i32| -i64::from(n);
    let fds = BUF;
    let nonblock = libc::O_NONBLOCK as u64 | libc::O_CLOEXEC as u64;
    assert_eq!(r.ret(nr::PIPE2, &[fds, nonblock]), 0);
    let (rd, wr) = (3u64, 4u64);
    assert_eq!(r.mem.read_u64(fds).unwrap(), rd | wr << 32);
    let out = BUF + 0x100;
    assert_eq!(r.ret(nr::READ, &[rd, out, 8]), e(libc::EAGAIN), "empty");
    r.mem.write(out, b"hello").unwrap();
    assert_eq!(r.ret(nr::WRITE, &[wr, out, 5]), 5);
    assert_eq!(
        r.ret(nr::WRITE, &[rd, out, 5]),
        e(libc::EBADF),
        "the read end"
    );
    let n = BUF + 0x200;
    assert_eq!(r.ret(nr::IOCTL, &[rd, libc::FIONREAD, n]), 0);
    assert_eq!(r.mem.read_u64(n).unwrap() as u32, 5);
    // poll: the read end is readable, the write end writable.
    let pfd = BUF + 0x300;
    r.mem
        .write(pfd, &[3, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0])
        .unwrap();
    assert_eq!(r.ret(nr::POLL, &[pfd, 2, 0]), 2);
    let st = BUF + 0x400;
    assert_eq!(r.ret(nr::FSTAT, &[rd, st]), 0);
    let mut mode = [0u8; 4];
    r.mem.read(st + 24, &mut mode).unwrap();
    assert_eq!(u32::from_le_bytes(mode) & libc::S_IFMT, libc::S_IFIFO);
    assert_eq!(
        r.ret(nr::FCNTL, &[wr, libc::F_GETFL as u64]),
        i64::from(libc::O_WRONLY | libc::O_NONBLOCK)
    );
    assert_eq!(r.ret(nr::READ, &[rd, out + 0x10, 3]), 3);
    let mut got = [0u8; 3];
    r.mem.read(out + 0x10, &mut got).unwrap();
    assert_eq!(&got, b"hel");
    // A duplicate of the write end keeps the pipe open; once all are closed, end of file.
    assert_eq!(r.ret(nr::DUP, &[wr]), 5);
    assert_eq!(r.ret(nr::CLOSE, &[wr]), 0);
    assert_eq!(r.ret(nr::READ, &[rd, out, 8]), 2, "what is left");
    assert_eq!(
        r.ret(nr::READ, &[rd, out, 8]),
        e(libc::EAGAIN),
        "a writer is still open"
    );
    assert_eq!(r.ret(nr::CLOSE, &[5]), 0);
    assert_eq!(r.ret(nr::READ, &[rd, out, 8]), 0, "end of file");
    // Full: EAGAIN; no reader: EPIPE.
    assert_eq!(r.ret(nr::PIPE2, &[fds, nonblock]), 0);
    let (rd2, wr2) = (4u64, 5u64);
    let chunk = 16 * 1024u64;
    for _ in 0..4 {
        assert_eq!(r.ret(nr::WRITE, &[wr2, BUF + 0x1000, chunk]), chunk as i64);
    }
    assert_eq!(
        r.ret(nr::WRITE, &[wr2, BUF + 0x1000, 1]),
        e(libc::EAGAIN),
        "64 KiB, full"
    );
    assert_eq!(r.ret(nr::CLOSE, &[rd2]), 0);
    assert_eq!(r.ret(nr::WRITE, &[wr2, BUF + 0x1000, 1]), e(libc::EPIPE));
    assert_eq!(
        r.ret(nr::PIPE2, &[fds, 0x4000_0000]),
        e(libc::EINVAL),
        "unknown flag"
    );
}

#[test]
fn a_blocking_read_of_a_pipe_only_the_program_can_fill_waits_for_the_time_limit() {
    let mut r = Rig::new();
    assert_eq!(r.ret(nr::PIPE, &[BUF]), 0);
    let mut cx = Context {
        mem: &mut r.mem,
        host: &mut r.host,
        remaining: Some(Duration::from_millis(5)),
        vdso_clock: None,
        interrupt: None,
    };
    let call = SyscallArgs {
        nr: nr::READ,
        args: [3, BUF + 0x100, 8, 0, 0, 0],
    };
    assert_eq!(
        r.process.dispatch(&call, &mut cx),
        Next::End(Exit::TimedOut)
    );
}
