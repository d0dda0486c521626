//! virtio-net over an existing tap device: `--net tap=NAME[,mac=MAC]`.
//!
//! - [`NetConfig`] (here): parsing, and opening the tap (`IFF_TAP | IFF_NO_PI |
//!   IFF_VNET_HDR`, a 12-byte `virtio_net_hdr_v1` on every frame) with clear errors: a tap
//!   that does not exist is never created behind the user's back;
//! - [`device`]: the device: RX and TX queues, the MAC in the configuration space, checksum
//!   offload both ways when the driver acknowledges it (and only then on the tap).
//!
//! Only tap devices: rypervisor has no user-space network stack.

pub mod device;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

pub use device::Net;

/// Bytes of `virtio_net_hdr_v1` in front of every frame (VERSION_1: `num_buffers` included).
pub const VNET_HDR: usize = 12;

/// One `--net`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap device's name.
    pub tap: String,
    /// The guest's MAC address.
    pub mac: [u8; 6],
}

/// A locally administered MAC derived from the tap's name: the same name, the same address.
pub fn default_mac(tap: &str) -> [u8; 6] {
    // FNV-1a: a stable hash (std's is randomised per process).
    let h = tap.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let b = h.to_le_bytes();
    [0x52, 0x54, 0x00, b[0], b[1], b[2]]
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = (text.split(':'))
        .map(|p| {
            // (from_str_radix alone would take "+1".)
            (p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u8::from_str_radix(p, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    let mac: [u8; 6] = parts.try_into().ok()?;
    // A unicast address (the multicast bit clear), not all zeros.
    (mac[0] & 1 == 0 && mac != [0; 6]).then_some(mac)
}

impl std::str::FromStr for NetConfig {
    type Err = NetError;

    /// `tap=NAME[,mac=aa:bb:cc:dd:ee:ff]`.
    fn from_str(spec: &str) -> Result<Self, NetError> {
        let bad = |why: &'static str| NetError::Spec {
            spec: spec.to_string(),
            why,
        };
        let (mut tap, mut mac) = (None, None);
        for part in super::option_parts(spec).map_err(bad)? {
            match part {
                ("tap", Some(n)) if !n.is_empty() && n.len() < libc::IFNAMSIZ => {
                    tap = Some(n.to_string())
                }
                ("tap", Some(_)) => return Err(bad("tap=NAME: 1 to 15 characters")),
                ("mac", Some(m)) => {
                    mac = Some(parse_mac(m).ok_or(bad("mac: six hex pairs, unicast"))?)
                }
                _ => return Err(bad("unknown key (tap=, mac=)")),
            }
        }
        let tap = tap.ok_or(bad("tap=NAME is missing"))?;
        let mac = mac.unwrap_or_else(|| default_mac(&tap));
        Ok(Self { tap, mac })
    }
}

/// Refuses two `--net`s on one tap (a tap serves one reader) or with one MAC (the guest's
/// interfaces would clash), before any tap is opened.
pub fn check_all(nets: &[NetConfig]) -> Result<(), NetError> {
    for (i, n) in nets.iter().enumerate() {
        for m in &nets[..i] {
            if m.tap == n.tap {
                return Err(NetError::TapTwice(n.tap.clone()));
            }
            if m.mac == n.mac {
                let mac = n.mac.map(|b| format!("{b:02x}")).join(":");
                return Err(NetError::MacTwice(mac));
            }
        }
    }
    Ok(())
}

/// Errors attaching a tap.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `--net` that cannot be parsed.
    #[error("--net {spec:?}: {why}")]
    Spec {
        /// What was given.
        spec: String,
        /// What is wrong.
        why: &'static str,
    },
    /// One tap given twice.
    #[error("--net tap={0}: the same tap is given twice (each --net needs a tap of its own)")]
    TapTwice(String),
    /// One MAC given twice.
    #[error("--net: two interfaces with the MAC {0} (give each its own mac=)")]
    MacTwice(String),
    /// No network device of that name.
    #[error(
        "--net tap={0}: no such network device (create it first: ip tuntap add {0} mode tap user $USER; ip link set {0} up)"
    )]
    NoSuchTap(String),
    /// The tap cannot be opened or configured.
    #[error("--net tap={tap}: {what}: {}{hint}", crate::hostfile::os_text(source))]
    Tap {
        /// The tap's name.
        tap: String,
        /// The step.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The device's eventfds could not be made.
    #[error(transparent)]
    Virtio(#[from] super::VirtioError),
}

/// Opens the existing tap `name`, non-blocking, with 12-byte virtio-net headers.
pub fn open_tap(name: &str) -> Result<File, NetError> {
    // Looked up in this process's network namespace (/sys/class/net may show another's).
    let cname = std::ffi::CString::new(name).map_err(|_| NetError::NoSuchTap(name.to_string()))?;
    // SAFETY: a plain libc call on a NUL-terminated string that lives across it.
    if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
        return Err(NetError::NoSuchTap(name.to_string()));
    }
    let tap_error = |what, source: std::io::Error| {
        let hint = match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EBUSY) => {
                " (is it a tap owned by you, not in use? ip tuntap add NAME mode tap user $USER)"
            }
            Some(libc::EINVAL) => " (is it a tap device? ip tuntap add NAME mode tap)",
            _ => "",
        };
        NetError::Tap {
            tap: name.to_string(),
            what,
            source,
            hint,
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| tap_error("cannot open /dev/net/tun", e))?;
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads (and writes) one ifreq, which lives across the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
        return Err(tap_error("TUNSETIFF", std::io::Error::last_os_error()));
    }
    let size: libc::c_int = VNET_HDR as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int, which lives across the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) } != 0 {
        return Err(tap_error(
            "TUNSETVNETHDRSZ",
            std::io::Error::last_os_error(),
        ));
    }
    set_offload(&file, 0).map_err(|e| tap_error("TUNSETOFFLOAD", e))?;
    Ok(file)
}

/// Tells the tap which offloads the guest takes (`TUN_F_*`); a file that is not a tap
/// (the tests' socket pairs) is left alone.
pub fn set_offload(tap: &File, flags: libc::c_uint) -> std::io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; the result is checked.
    let r = unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) };
    match r {
        0 => Ok(()),
        _ => match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENOTTY) => Ok(()),
            e => Err(e),
        },
    }
}

#[cfg(test)]
mod tap_tests;
#[cfg(test)]
mod tests;
