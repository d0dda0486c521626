//! The kernel's structures as the program sees them: `libc`'s own definitions for x86-64,
//! wrapped so that vm-memory can read and write them whole ([`ByteValued`]) at a checked
//! guest address. No byte offsets are written by hand.

use vm_memory::ByteValued;

macro_rules! abi_structs {
    ($($(#[$doc:meta])* $name:ident($libc:ty);)*) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Copy)]
            #[repr(transparent)]
            pub struct $name(pub $libc);

            impl Default for $name {
                fn default() -> Self {
                    // SAFETY: the wrapped type is a C struct of integers (and, for iovec and
                    // stack_t, one pointer-sized address), for which all-zero bytes are valid.
                    Self(unsafe { std::mem::zeroed() })
                }
            }

            impl std::fmt::Debug for $name {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str(stringify!($name))
                }
            }

            // SAFETY: `repr(transparent)` over a `repr(C)` libc struct made of integers (and,
            // for iovec and stack_t, one address that is never dereferenced: it is a guest
            // address, checked before use like any other): every byte pattern is a valid value,
            // and its padding is zeroed by `Default` before the VMM fills the fields.
            unsafe impl ByteValued for $name {}
        )*
    };
}

abi_structs! {
    /// `struct stat` (144 bytes on x86-64).
    Stat(libc::stat);
    /// `struct timespec`.
    Timespec(libc::timespec);
    /// `struct timeval`.
    Timeval(libc::timeval);
    /// `struct iovec`.
    Iovec(libc::iovec);
    /// `struct utsname` (six 65-byte fields).
    Utsname(libc::utsname);
    /// `struct rlimit`.
    Rlimit(libc::rlimit);
    /// `stack_t`, for `sigaltstack`.
    SignalStack(libc::stack_t);
    /// `struct sysinfo`.
    Sysinfo(libc::sysinfo);
    /// `struct rusage`.
    Rusage(libc::rusage);
    /// `struct tms`.
    Tms(libc::tms);
    /// `struct statx` (256 bytes).
    Statx(libc::statx);
    /// `struct statfs`.
    Statfs(libc::statfs);
    /// `struct pollfd`.
    Pollfd(libc::pollfd);
}

// SAFETY: the only non-integer fields (iovec's base, stack_t's sp) hold guest addresses that
// are copied as numbers and never dereferenced by the VMM.
unsafe impl Send for Iovec {}
// SAFETY: as for Send: shared references only ever read the address as a number.
unsafe impl Sync for Iovec {}
// SAFETY: see Iovec.
unsafe impl Send for SignalStack {}
// SAFETY: see Iovec.
unsafe impl Sync for SignalStack {}

/// A kernel `sigaction` as the program passes it to `rt_sigaction` (handler, flags,
/// restorer, mask: 32 bytes; not libc's, whose mask is glibc's 128-byte set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct KernelSigaction {
    /// `sa_handler` / `sa_sigaction` (SIG_DFL is 0, SIG_IGN 1).
    pub handler: u64,
    /// `SA_*` flags.
    pub flags: u64,
    /// `sa_restorer`.
    pub restorer: u64,
    /// The signals blocked while the handler runs.
    pub mask: u64,
}

// SAFETY: four u64s, `repr(C)`, no padding: every byte pattern is a valid value.
unsafe impl ByteValued for KernelSigaction {}

/// A `char[65]` field of `utsname` from `text` (truncated, NUL-terminated).
pub fn uts_field(text: &str) -> [libc::c_char; 65] {
    let mut field = [0 as libc::c_char; 65];
    for (d, s) in field.iter_mut().zip(text.bytes().take(64)) {
        *d = s as libc::c_char;
    }
    field
}

impl Timespec {
    /// A timespec of `(seconds, nanoseconds)`.
    pub fn new((secs, nanos): (i64, i64)) -> Self {
        Self(libc::timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_the_kernels() {
        assert_eq!(std::mem::size_of::<Stat>(), 144);
        assert_eq!(std::mem::size_of::<Timespec>(), 16);
        assert_eq!(std::mem::size_of::<Iovec>(), 16);
        assert_eq!(std::mem::size_of::<Utsname>(), 65 * 6);
        assert_eq!(std::mem::size_of::<Rlimit>(), 16);
        assert_eq!(std::mem::size_of::<SignalStack>(), 24);
        assert_eq!(std::mem::size_of::<KernelSigaction>(), 32);
        assert_eq!(std::mem::size_of::<Sysinfo>(), 112);
        assert_eq!(std::mem::size_of::<Rusage>(), 144);
        assert_eq!(std::mem::size_of::<Tms>(), 32);
        assert_eq!(std::mem::size_of::<Statx>(), 256);
        assert_eq!(std::mem::size_of::<Statfs>(), 120);
        assert_eq!(std::mem::size_of::<Pollfd>(), 8);
    }

    #[test]
    fn stat_fields_land_where_the_kernel_puts_them() {
        let mut st = Stat::default();
        st.0.st_mode = libc::S_IFREG | 0o444;
        st.0.st_size = 13;
        let bytes = st.as_slice();
        assert_eq!(
            u32::from_le_bytes(bytes[24..28].try_into().unwrap()),
            st.0.st_mode
        );
        assert_eq!(u64::from_le_bytes(bytes[48..56].try_into().unwrap()), 13);
        assert_eq!(uts_field("Linux")[..6], [76, 105, 110, 117, 120, 0]);
    }
}
