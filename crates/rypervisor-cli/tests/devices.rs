//! The virtio devices of `rypervisor boot` against real /dev/kvm, in one boot of the recipe
//! kernel (one vCPU) that carries every check: the guest reaches /init; virtio-rng backs
//! `/dev/hwrng`; vsock carries a 1 MiB echo (more than the guest's buffer, so credit updates
//! flow), sixteen concurrent echoes, a guest connection to `PATH_5000`, refusals both ways
//! and malformed CONNECT lines; and every VMM thread runs under seccomp meanwhile.
//! A third boot puts the guest on a tap in a network namespace the test makes itself: UDP
//! datagrams echoed, 1 MiB streamed over TCP and checked by the host.
//! A second boot runs from an ext4 root disk (guest/build-rootfs.sh) with a read-only data
//! drive, and the host then reads what the guest wrote. `--vsock` and `--drive` mistakes are
//! refused with one clear line. A short boot is stopped and continued, then sent SIGTERM: it
//! ends as the guest's own end would, its vsock socket file removed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::guest::{guest_kernel, initramfs, one_at_a_time, script};
use common::{require_kvm, rypervisor, threads};

/// Bytes that differ from connection to connection (xorshift).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Connects to the guest's `port` through the hybrid-vsock socket; the answer line.
fn connect(path: &Path, port: u32, line: Option<&[u8]>) -> (UnixStream, String) {
    let mut s = UnixStream::connect(path).expect("the vsock socket accepts");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let default = format!("CONNECT {port}\n");
    s.write_all(line.unwrap_or(default.as_bytes())).unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = s.read(&mut byte) {
        answer.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    (s, String::from_utf8_lossy(&answer).into_owned())
}

/// Sends `data` to the guest's echo and reads it all back; the echo's bytes.
fn echo(path: &Path, data: Vec<u8>) -> Vec<u8> {
    let (s, answer) = connect(path, 1234, None);
    assert!(answer.starts_with("OK "), "{answer:?}");
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    (&s).read_to_end(&mut back).expect("the echo comes back");
    sender.join().unwrap();
    back
}

/// The console, line by line, from a reader thread.
fn console(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads console lines into `seen` until one contains `pattern`.
fn wait_for(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, pattern: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(300);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let found = line.contains(pattern);
        seen.push(line);
        if found {
            return true;
        }
    }
    false
}

#[test]
fn one_boot_checks_init_rng_vsock_and_seccomp() {
    require_kvm();
    let kernel = guest_kernel().join("vmlinux");
    let initrd = initramfs();
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    // The host side of the guest's connection to port 5000.
    let out = UnixListener::bind(dir.path().join("v.sock_5000")).unwrap();
    let host_peer = std::thread::spawn(move || {
        let (mut s, _) = out.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        let mut said = String::new();
        s.read_to_string(&mut said).unwrap();
        s.write_all(b"hello from the host\n").unwrap();
        said
    });
    let _one = one_at_a_time();
    let spec = format!("cid=3,uds={}", uds.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_rypervisor"))
        .args(["boot", "--kernel", kernel.to_str().unwrap()])
        .args(["--initrd", initrd.to_str().unwrap()])
        .args([
            "--cpus",
            "1",
            "--mem",
            "128M",
            "--timeout",
            "400",
            "--stats",
        ])
        .args(["--rng", "--vsock", &spec, "--cmdline"])
        .arg("loglevel=7 rypervisor.test=1 rypervisor.rng rypervisor.vsock")
        .stdin(Stdio::piped()) // kept open: the console input thread stays alive
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = console(&mut child);
    let mut lines = Vec::new();
    let ready = wait_for(&rx, &mut lines, "rypervisor-init: vsock ready");
    let vmm = threads(child.id());
    let mut checks = Vec::new();
    if ready {
        checks = host_side_checks(&uds);
        let (_ctl, answer) = connect(&uds, 1235, None); // the guest powers off once it ends
        assert!(answer.starts_with("OK "), "{answer:?}");
    }
    wait_for(&rx, &mut lines, "reboot: Power down");
    let status = child.wait().unwrap();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
        lines.push(line);
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let stdout = lines.join("\n");
    assert!(
        ready,
        "the guest never got ready:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(status.code(), Some(0), "{stdout}\nstderr:\n{stderr}");
    for (what, ok, detail) in &checks {
        assert!(*ok, "{what}: {detail}");
    }
    assert_init_and_rng(&stdout, &stderr);
    // The guest's side: its connection to PATH_5000, its refused connection to 5001.
    assert_eq!(host_peer.join().unwrap(), "hello from the guest\n");
    assert!(
        stdout.contains("rypervisor-init: vsock host said: hello from the host"),
        "{stdout}"
    );
    let refused = lines
        .iter()
        .find(|l| l.contains("vsock connect 5001:"))
        .map(String::as_str);
    assert!(
        refused.is_some_and(|l| l.contains("reset by peer") || l.contains("refused")),
        "{refused:?}"
    );
    // Seccomp on every VMM thread while the guest ran.
    for want in [
        "rypervisor",
        "console-input",
        "console-output",
        "virtio",
        "vcpu0",
    ] {
        assert!(
            vmm.iter().any(|(n, _)| n == want),
            "no {want} thread in {vmm:?}"
        );
    }
    for (name, mode) in &vmm {
        assert!(mode.ends_with('2'), "{name} is not confined: {mode}");
    }
    assert!(!uds.exists(), "the socket file is removed at the end");
}

/// What the host does while the guest serves: (check, passed, detail) for each.
fn host_side_checks(uds: &Path) -> Vec<(&'static str, bool, String)> {
    let mut checks = Vec::new();
    // 1 MiB echoed, bytes compared.
    let started = Instant::now();
    let data = pattern(1, 1 << 20);
    let back = echo(uds, data.clone());
    let took = started.elapsed();
    eprintln!("vsock: 1 MiB echoed in {took:.2?}");
    checks.push((
        "1 MiB echo",
        back == data,
        format!("{} bytes back", back.len()),
    ));
    // Sixteen at once.
    let senders: Vec<_> = (0..16)
        .map(|i| {
            let uds: PathBuf = uds.to_path_buf();
            std::thread::spawn(move || {
                let data = pattern(100 + i, 64 << 10);
                echo(&uds, data.clone()) == data
            })
        })
        .collect();
    let n = (senders.into_iter())
        .filter(|_| true)
        .map(|t| t.join())
        .filter(|r| matches!(r, Ok(true)))
        .count();
    checks.push(("16 concurrent echoes", n == 16, format!("{n} of 16 right")));
    // Nobody listens on 4321 in the guest: closed without OK.
    let (_s, answer) = connect(uds, 4321, None);
    checks.push(("refused guest port", answer.is_empty(), answer));
    // Lines that are not CONNECT lines: closed, and the device serves on.
    for bad in [&b"HELLO 1234\n"[..], b"CONNECT 1234"] {
        let mut s = UnixStream::connect(uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(bad).unwrap();
        if !bad.ends_with(b"\n") {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut rest = Vec::new();
        let closed = matches!(s.read_to_end(&mut rest), Ok(0));
        checks.push(("malformed CONNECT line", closed, format!("{rest:?}")));
    }
    let again = echo(uds, b"still there".to_vec());
    checks.push((
        "served after bad lines",
        again == b"still there",
        format!("{again:?}"),
    ));
    checks
}

fn assert_init_and_rng(stdout: &str, stderr: &str) {
    assert!(
        stdout.contains("rypervisor-init: hello from /init"),
        "{stdout}"
    );
    assert!(stdout.contains("rypervisor-init: cpus=1"), "{stdout}");
    assert!(stderr.contains("ELF vmlinux (PVH entry)"), "{stderr}");
    // Both devices announced on the command line, in window order.
    assert!(
        stdout.contains("virtio_mmio.device=4K@0xd0000000:5")
            && stdout.contains("virtio_mmio.device=4K@0xd0001000:6"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rypervisor-init: rng_current=virtio_rng.0"),
        "{stdout}"
    );
    let hwrng: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split("rypervisor-init: hwrng").nth(1))
        .map(|l| l[2..].split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(hwrng.len(), 2, "{stdout}");
    assert_eq!(hwrng[0].len(), 64, "32 bytes: {stdout}");
    assert_ne!(hwrng[0], hwrng[1], "two reads, two values");
    assert_ne!(hwrng[0], "0".repeat(64));
    let marker = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("boot marker"))
        .unwrap_or("");
    assert!(
        marker.ends_with(" s") && !marker.contains('-'),
        "the marker was seen: {stderr}"
    );
}

/// An e2fsprogs tool, found where Debian puts it even when /usr/sbin is not on PATH.
fn e2fs(tool: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{tool} not found: install e2fsprogs"))
}

#[test]
fn one_boot_from_an_ext4_root_disk_with_a_read_only_second_drive() {
    require_kvm();
    let kernel = guest_kernel().join("vmlinux");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.ext4");
    script("build-rootfs.sh", &[root.to_str().unwrap()]);
    let data = dir.path().join("data.img");
    let bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7) as u8).collect();
    std::fs::write(&data, &bytes).unwrap();
    // FNV-1a, as guest/init.c sums what it read of vdb.
    let fnv = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let all_of_vdb = format!("rypervisor-init: vdb read 1048576 bytes fnv1a={fnv:016x}");
    let _one = one_at_a_time();
    let root_drive = format!("path={},root,cache=writeback", root.display());
    let data_drive = format!("path={},ro,serial=DATA123", data.display());
    let r = rypervisor(
        &[
            "boot",
            "--kernel",
            kernel.to_str().unwrap(),
            "--mem",
            "128M",
            "--timeout",
            "300",
            "--drive",
            &root_drive,
            "--drive",
            &data_drive,
            "--cmdline",
            "init=/init rypervisor.disk",
        ],
        b"",
    );
    assert_eq!(r.status, 0, "{}\nstderr:\n{}", r.stdout, r.stderr);
    for l in r.stdout.lines().filter(|l| l.contains("timing:")) {
        eprintln!("{l}"); // for docs/PERFORMANCE.md (not asserted: a benchmark, not a test)
    }
    for want in [
        "root=/dev/vda rw",
        "VFS: Mounted root (ext4 filesystem)",
        "rypervisor-init: disk /file written",
        "rypervisor-init: vdb ro=1 size=1048576 head=00070e151c232a31",
        "rypervisor-init: vdb serial=DATA123",
        "rypervisor-init: / remounted read-only: yes",
        &all_of_vdb,
    ] {
        assert!(r.stdout.contains(want), "no {want:?} in\n{}", r.stdout);
    }
    let write = (r.stdout.lines())
        .find(|l| l.contains("vdb write:"))
        .expect("init reports its write to vdb");
    assert!(
        !write.ends_with("written"),
        "a write to the read-only drive: {write}"
    );
    // The host sees what the guest wrote, and a clean file system.
    let cat = Command::new(e2fs("debugfs"))
        .args(["-R", "cat /file"])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "written by the guest\n"
    );
    let fsck = Command::new(e2fs("e2fsck"))
        .arg("-fn")
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    assert_eq!(
        std::fs::read(&data).unwrap()[..8],
        [0, 7, 14, 21, 28, 35, 42, 49]
    );
}

#[test]
fn vsock_drive_and_net_mistakes_are_one_clear_line_and_status_1() {
    require_kvm();
    let kernel = guest_kernel().join("vmlinux");
    let dir = tempfile::tempdir().unwrap();
    let taken = dir.path().join("taken.sock");
    let _listener = UnixListener::bind(&taken).unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let at = |p: &Path| format!("cid=3,uds={}", p.display());
    let odd = dir.path().join("odd.img");
    std::fs::write(&odd, [0u8; 1000]).unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, [0u8; 4096]).unwrap();
    let drive = |p: &Path| format!("path={}", p.display());
    for (args, message) in [
        (vec![drive(&dir.path().join("none.img"))], "No such file"),
        (vec![drive(dir.path())], "a disk image is a file"),
        (vec![drive(&odd)], "is not a multiple of 512"),
        (vec![drive(&img), drive(&img)], "attached twice"),
        (vec![format!("{},size=1", drive(&img))], "unknown key"),
    ] {
        let mut all = vec!["boot", "--kernel", kernel.to_str().unwrap()];
        for a in &args {
            all.extend(["--drive", a.as_str()]);
        }
        all.extend(["--cpu-template", "host"]);
        let r = rypervisor(&all, b"");
        assert_eq!(r.status, 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(message), "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{args:?}: {}", r.stderr);
    }
    for (specs, message) in [
        (&["tap=rvnope0"][..], "ip tuntap add rvnope0 mode tap"),
        (&["tap=t,mac=zz"], "six hex pairs"),
        (&["dev=t"], "unknown key"),
        (
            &["tap=rvnope0", "tap=rvnope0"],
            "the same tap is given twice",
        ),
    ] {
        let mut all = vec!["boot", "--kernel", kernel.to_str().unwrap()];
        for spec in specs {
            all.extend(["--net", spec]);
        }
        all.extend(["--cpu-template", "host"]);
        let r = rypervisor(&all, b"");
        assert_eq!(r.status, 1, "{specs:?}: {}", r.stderr);
        assert!(r.stderr.contains(message), "{specs:?}: {}", r.stderr);
        assert_eq!(
            r.stderr.trim().lines().count(),
            1,
            "{specs:?}: {}",
            r.stderr
        );
    }
    let cases = [
        ("cid=2,uds=v.sock".to_string(), "guest CID 2 is not allowed"),
        ("cid=three,uds=v.sock".into(), "cid must be a number"),
        ("cid=3".into(), "uds=PATH is missing"),
        ("cid=3,uds=v.sock,mtu=9000".into(), "unknown key"),
        (
            at(&dir.path().join("no/such/dir/v.sock")),
            "no such directory",
        ),
        (at(&taken), "is in use by another program"),
        (at(&file), "exists and is not a socket"),
    ];
    for (spec, message) in cases {
        let args = [
            "boot",
            "--kernel",
            kernel.to_str().unwrap(),
            "--vsock",
            &spec,
        ];
        let r = rypervisor(&[&args[..], &["--cpu-template", "host"]].concat(), b"");
        assert_eq!(r.status, 1, "{spec}: {}", r.stderr);
        assert!(r.stderr.contains(message), "{spec}: {}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{spec}: {}", r.stderr);
    }
}

/// The host side of the network test, run inside the namespace: a UDP echo on 10.0.2.1:7777
/// and a TCP sink on 10.0.2.1:7778 that answers "<bytes> <sum of bytes mod 2^32>".
const NET_PEER: &str = r#"
import socket, sys, threading
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("10.0.2.1", 7777))
def echo():
    while True:
        data, peer = u.recvfrom(2048)
        u.sendto(data, peer)
threading.Thread(target=echo, daemon=True).start()
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("10.0.2.1", 7778))
t.listen(1)
open(sys.argv[1], "w").write("ready\n")
c, _ = t.accept()
total = s = 0
while chunk := c.recv(1 << 16):
    total += len(chunk)
    s = (s + sum(chunk)) & 0xffffffff
c.sendall(b"%d %d" % (total, s))
c.close()
"#;

#[test]
fn a_guest_on_a_tap_exchanges_udp_and_streams_tcp_in_a_network_namespace() {
    require_kvm();
    let kernel = guest_kernel().join("vmlinux");
    let initrd = initramfs();
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    // Everything network lives in a namespace of the test's own: the tap, its address, the
    // peer, and rypervisor itself.
    let script = format!(
        "set -e; ip link set lo up; ip tuntap add tap0 mode tap; \
         ip addr add 10.0.2.1/24 dev tap0; ip link set tap0 up; \
         python3 -c '{peer}' {ready} & \
         for i in $(seq 100); do [ -s {ready} ] && break; sleep 0.1; done; \
         exec {vmm} boot --kernel {kernel} --initrd {initrd} --mem 128M --timeout 300 \
           --net tap=tap0 --cmdline rypervisor.net </dev/null",
        peer = NET_PEER.replace('\'', "'\"'\"'"),
        ready = ready.display(),
        vmm = env!("CARGO_BIN_EXE_rypervisor"),
        kernel = kernel.display(),
        initrd = initrd.display(),
    );
    let _one = one_at_a_time();
    let out = Command::new("unshare")
        .args(["-n", "--", "bash", "-c", &script])
        .output()
        .expect("unshare runs (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("unshare failed") && !stderr.contains("Operation not permitted"),
        "this machine forbids network namespaces or taps, which this test needs: {stderr}"
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\nstderr:\n{stderr}");
    for l in stdout.lines().filter(|l| l.contains("timing:")) {
        eprintln!("{l}"); // for docs/PERFORMANCE.md (not asserted)
    }
    assert!(
        stdout.contains("virtio_mmio.device=4K@0xd0000000:5"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rypervisor-init: udp echoed 100 of 100"),
        "{stdout}"
    );
    let tcp = stdout
        .lines()
        .find_map(|l| l.split("rypervisor-init: tcp sent ").nth(1))
        .unwrap_or_else(|| panic!("no TCP result in\n{stdout}"));
    let (sent, said) = tcp.split_once(", host said ").unwrap();
    assert!(sent.starts_with("1048576 "), "{tcp}");
    assert_eq!(
        sent.trim(),
        said.trim(),
        "what the host received is what was sent"
    );
}

/// `kill -STOP`/`-CONT` (every thread's timed waits resumed under seccomp), then SIGTERM:
/// the VM stops as at its own end (the socket file removed on the event loop's thread) and
/// rypervisor dies by SIGTERM, as `timeout(1)` or a service manager expects.
#[test]
fn a_boot_stopped_continued_and_terminated_ends_cleanly() {
    use std::os::unix::process::ExitStatusExt;
    require_kvm();
    let kernel = guest_kernel().join("vmlinux");
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let _one = one_at_a_time();
    let spec = format!("cid=3,uds={}", uds.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_rypervisor"))
        .args(["boot", "--kernel", kernel.to_str().unwrap()])
        .args(["--mem", "64M", "--timeout", "120", "--vsock", &spec])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !uds.exists() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(uds.exists(), "the VM was never built");
    std::thread::sleep(Duration::from_secs(1)); // the guest runs
    let pid = child.id() as i32;
    for signal in [libc::SIGSTOP, libc::SIGCONT, libc::SIGTERM] {
        // SAFETY: signals to our own child, which has not been waited for.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}: {stderr}");
    assert!(
        stderr.contains("rypervisor: stopped by SIGTERM"),
        "{stderr}"
    );
    assert!(!uds.exists(), "the socket file is removed");
}
