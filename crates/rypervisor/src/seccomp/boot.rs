//! The seccomp filters of `rypervisor boot`, one per thread role, each applied by the thread
//! itself once the VM is built (as Firecracker does): a vCPU runs KVM_RUN and a few
//! register ioctls and signals irqfds; the device event loop waits on epoll and reads and
//! writes eventfds, takes entropy for virtio-rng and serves vsock's Unix sockets (accept,
//! connect to Unix sockets only, SO_OOBINLINE and no other option, stream I/O, shutdown,
//! unlink of its own socket file at the end); the console threads read stdin or
//! write stdout; the supervisor (the main thread) waits, kicks and joins. Everything else
//! kills the process with SIGSYS.

use seccompiler::{BpfProgram, SeccompCmpOp};

use super::{kvm_ioctls, Rules, SeccompError, VMM_BASICS};

/// One filter per thread role.
#[derive(Clone, Debug)]
pub struct BootFilters {
    /// vCPU threads.
    pub vcpu: BpfProgram,
    /// The virtio event loop.
    pub devices: BpfProgram,
    /// The console input thread (stdin → UART).
    pub console_input: BpfProgram,
    /// The console output thread (UART → stdout).
    pub console_output: BpfProgram,
    /// The supervisor: the thread that called `LinuxVm::run`.
    pub supervisor: BpfProgram,
}

/// The ioctls a boot vCPU issues beyond the sandbox's: `KVM_TRANSLATE` and the vCPU events
/// (where it stopped; stepping over an emulation failure).
pub(super) fn boot_vcpu_ioctls() -> Vec<u64> {
    use kvm_bindings::{kvm_translation, kvm_vcpu_events};
    const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
        (dir << 30) | ((size as u64) << 16) | (0xae << 8) | nr
    }
    const W: u64 = 1;
    const R: u64 = 2;
    let mut all = kvm_ioctls();
    all.extend([
        ioc(R | W, 0x85, std::mem::size_of::<kvm_translation>()), // KVM_TRANSLATE
        ioc(R, 0x9f, std::mem::size_of::<kvm_vcpu_events>()),     // KVM_GET_VCPU_EVENTS
        ioc(W, 0xa0, std::mem::size_of::<kvm_vcpu_events>()),     // KVM_SET_VCPU_EVENTS
    ]);
    all
}

/// What every thread of a boot needs: its own memory (never executable), time, locks,
/// the kick signal, logging to stderr, its own end.
pub(super) fn base() -> Result<Rules, SeccompError> {
    let mut rules = Rules::default();
    rules.allow(&VMM_BASICS);
    let exec = SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64);
    rules.allow_when(libc::SYS_mmap, 2, exec.clone(), 0)?;
    rules.allow_when(libc::SYS_mprotect, 2, exec, 0)?;
    rules.allow_when(libc::SYS_fcntl, 1, SeccompCmpOp::Eq, libc::F_GETFD as u64)?;
    Ok(rules)
}

/// Builds the five filters.
pub fn boot_filters() -> Result<BootFilters, SeccompError> {
    let mut vcpu = base()?;
    for nr in boot_vcpu_ioctls() {
        vcpu.allow_when(libc::SYS_ioctl, 1, SeccompCmpOp::Eq, nr)?;
    }
    let mut devices = base()?;
    devices.allow(&[
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
    ]);
    // vsock's host side: accept host programs on PATH, connect to PATH_<port> (Unix
    // sockets only), stream I/O (sendmsg: a connection's payloads in one call), half-closes,
    // its deadline timer, removing PATH at the end (recvmsg: a host stream read into several
    // RX buffers at once, its flags telling a read cut at passed descriptors). seccomp cannot
    // look into recvmsg's msghdr: the VMM passes no control buffer, so passed descriptors are
    // closed by the kernel, but a thread taken over could ask for them.
    devices.allow(&[
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_shutdown,
        libc::SYS_timerfd_settime,
        libc::SYS_unlink,
    ]);
    devices.allow_when(libc::SYS_socket, 0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)?;
    // ... whose out-of-band bytes stay in the stream (SO_OOBINLINE, and no other option).
    let oob_inline = [
        (1, SeccompCmpOp::Eq, libc::SOL_SOCKET as u64),
        (2, SeccompCmpOp::Eq, libc::SO_OOBINLINE as u64),
    ];
    devices.allow_when_all(libc::SYS_setsockopt, &oob_inline)?;
    // virtio-blk: positioned I/O on the images (opened before the filter), flushes, holes.
    devices.allow(&[
        libc::SYS_pread64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_pwrite64,
        libc::SYS_fdatasync,
        libc::SYS_fallocate,
    ]);
    devices.allow_when(libc::SYS_ioctl, 1, SeccompCmpOp::Eq, libc::FIONBIO)?;
    // virtio-net: frames in and out of the tap, and its offloads once the guest chose them.
    devices.allow(&[libc::SYS_readv]);
    devices.allow_when(libc::SYS_ioctl, 1, SeccompCmpOp::Eq, libc::TUNSETOFFLOAD)?;
    let console_input = base()?;
    let console_output = base()?;
    let mut supervisor = base()?;
    // Restoring the terminal (tcsetattr) and re-raising a signal after it, at the end.
    for request in [libc::TCGETS, libc::TCSETS, libc::TCSETSW] {
        supervisor.allow_when(libc::SYS_ioctl, 1, SeccompCmpOp::Eq, request)?;
    }
    supervisor.allow(&[libc::SYS_rt_sigaction]);
    Ok(BootFilters {
        vcpu: vcpu.compile()?,
        devices: devices.compile()?,
        console_input: console_input.compile()?,
        console_output: console_output.compile()?,
        supervisor: supervisor.compile()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::confine_thread;

    /// The device thread's filter serves a whole vsock exchange: a host program connects
    /// (in the parent), the model guest accepts and echoes, connects out to PATH_5000, and
    /// the socket file is removed at the end.
    #[test]
    fn the_device_filter_serves_vsock() {
        use crate::virtio::vsock::model::GuestDriver;
        use crate::virtio::vsock::packet::{OP_REQUEST, OP_RESPONSE, OP_RW};
        use crate::virtio::VirtioDevice;
        use std::io::{Read, Write};
        let f = boot_filters().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let mut g = GuestDriver::new(3, path.clone(), 4096).unwrap();
        let out = crate::virtio::vsock::unix::port_path(&path, 5000);
        let out = std::os::unix::net::UnixListener::bind(out).unwrap();
        let parent = std::thread::spawn(move || {
            let mut host = std::os::unix::net::UnixStream::connect(&path).unwrap();
            host.write_all(b"CONNECT 1234\nping").unwrap();
            let mut got = [0u8; 18];
            host.read_exact(&mut got).unwrap();
            let (mut peer, _) = out.accept().unwrap();
            let mut hello = [0u8; 5];
            peer.read_exact(&mut hello).unwrap();
            (got, hello)
        });
        let status = crate::seccomp::tests::in_child(move || {
            if confine_thread(&f.devices).is_err() {
                return 10;
            }
            g.send(g.header(OP_REQUEST, 7, 5000, 0), &[]);
            g.send(g.header(OP_RW, 7, 5000, 5), b"hello");
            for _ in 0..400 {
                for (h, data) in g.receive() {
                    let (op, port, host_port) = (h.op, h.dst_port, h.src_port);
                    match op {
                        OP_REQUEST => g.send(g.header(OP_RESPONSE, port, host_port, 0), &[]),
                        OP_RW if port == 1234 => {
                            let reply = g.header(OP_RW, port, host_port, data.len() as u32);
                            g.send(reply, &data);
                            std::thread::sleep(std::time::Duration::from_millis(100));
                            g.device.stop();
                            return 0;
                        }
                        _ => {}
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            11
        });
        assert!(
            libc::WIFEXITED(status),
            "killed by signal {}",
            libc::WTERMSIG(status)
        );
        assert_eq!(libc::WEXITSTATUS(status), 0);
        let (got, hello) = parent.join().unwrap();
        assert_eq!(&got, b"OK 1073741824\nping");
        assert_eq!(&hello, b"hello");
        assert!(
            !dir.path().join("v.sock").exists(),
            "removed under the filter"
        );
    }

    /// A driver's reset reaches the device on a vCPU thread: with live connections, the
    /// device must not touch its sockets there.
    #[test]
    fn a_vsock_reset_on_a_vcpu_thread_stays_within_the_vcpu_filter() {
        use crate::virtio::vsock::model::GuestDriver;
        use crate::virtio::vsock::packet::OP_REQUEST;
        use crate::virtio::VirtioDevice;
        let f = boot_filters().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let mut g = GuestDriver::new(3, path.clone(), 4096).unwrap();
        let _out = std::os::unix::net::UnixListener::bind(crate::virtio::vsock::unix::port_path(
            &path, 80,
        ))
        .unwrap();
        g.send(g.header(OP_REQUEST, 7, 80, 0), &[]);
        assert_eq!(g.device.connections(), 1);
        let status = crate::seccomp::tests::in_child(move || {
            if confine_thread(&f.vcpu).is_err() {
                return 10;
            }
            g.device.reset();
            std::mem::forget(g); // its drop (closing sockets) belongs to the parent
            0
        });
        assert!(
            libc::WIFEXITED(status),
            "killed by signal {}",
            libc::WTERMSIG(status)
        );
    }

    #[test]
    fn every_role_does_its_work_and_is_killed_by_anything_else() {
        let f = boot_filters().unwrap();
        for (role, filter) in [
            ("vcpu", &f.vcpu),
            ("devices", &f.devices),
            ("console input", &f.console_input),
            ("console output", &f.console_output),
            ("supervisor", &f.supervisor),
        ] {
            // AF_INET: the devices role may make Unix sockets (vsock), no role anything else.
            crate::seccomp::tests::assert_role(role, filter, libc::AF_INET);
        }
    }

    #[test]
    fn the_device_filter_sets_one_socket_option_only() {
        let f = boot_filters().unwrap();
        for (level, option, allowed) in [
            (libc::SOL_SOCKET, libc::SO_OOBINLINE, true),
            (libc::SOL_SOCKET, libc::SO_RCVBUF, false),
            (libc::IPPROTO_IP, libc::SO_OOBINLINE, false),
        ] {
            let devices = f.devices.clone();
            let status = crate::seccomp::tests::in_child(move || {
                let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
                if confine_thread(&devices).is_err() {
                    return 10;
                }
                match crate::virtio::vsock::unix::switch_on(&a, level, option) {
                    Ok(()) => 0,
                    Err(_) => 11,
                }
            });
            let ran = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            let killed = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS;
            assert!(
                if allowed { ran } else { killed },
                "level {level}, option {option}: status {status:#x}"
            );
        }
    }
}
