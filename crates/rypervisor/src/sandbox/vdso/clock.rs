//! The time page the vDSO reads: the TSC scale and the clocks' bases, kept current by the
//! VMM, as the kernel's vvar page and pvclock are.
//!
//! `ns(clock) = base_ns + offset[clock] + ((tsc - tsc_base) × mult) >> 32`, where the guest
//! reads `tsc` with `rdtsc` and the VMM takes `tsc_base` from the vCPU (`MSR_IA32_TSC`) next to
//! the host's clocks. `mult` starts at KVM's TSC frequency (`KVM_GET_TSC_KHZ`); at each
//! refresh (a system-call exit at least a second after the last) the VMM slews it so that the
//! page meets the host's `CLOCK_MONOTONIC` again one interval later, without a step: the
//! page's time stays continuous and monotonic, and follows NTP's corrections as the host's
//! clock does. `CLOCK_REALTIME` (and `BOOTTIME`, `MONOTONIC_RAW`) are `MONOTONIC` plus the
//! host's offset at the refresh, so a step of the host's wall clock shows at the next one.
//!
//! The page's mode is 0 where the TSC cannot be trusted (no invariant TSC in the CPUID, or no
//! TSC frequency from KVM): then every vDSO function makes the real system call.

use vm_memory::ByteValued;

/// Clocks the page can carry (clock ids below this).
pub const CLOCKS: u64 = 8;
/// Field offsets in the page (the vDSO's code reads them).
pub const SEQ: u64 = 0;
/// 1: the TSC is usable; 0: fall back to system calls.
pub const MODE: u64 = 4;
/// Guest TSC at the base.
pub const TSC_BASE: u64 = 8;
/// Nanoseconds per tick × 2^32.
pub const MULT: u64 = 16;
/// Bit `c`: clock `c` is carried.
pub const MASK: u64 = 24;
/// `CLOCK_MONOTONIC` at the base, in nanoseconds.
pub const BASE_NS: u64 = 32;
/// Per clock id: what to add to `CLOCK_MONOTONIC` (wrapping).
pub const OFFSETS: u64 = 40;

/// The carried clocks: the coarse ones are as fine as the others here.
const CARRIED: [i32; 6] = [
    libc::CLOCK_REALTIME,
    libc::CLOCK_MONOTONIC,
    libc::CLOCK_MONOTONIC_RAW,
    libc::CLOCK_REALTIME_COARSE,
    libc::CLOCK_MONOTONIC_COARSE,
    libc::CLOCK_BOOTTIME,
];

/// How often the VMM re-bases the page (at a system-call exit).
pub const REFRESH_NS: u64 = 1_000_000_000;

/// The page, as the guest sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TimePage {
    /// Sequence: odd while being written.
    pub seq: u32,
    /// 1: TSC usable.
    pub mode: u32,
    /// Guest TSC at the base.
    pub tsc_base: u64,
    /// Nanoseconds per tick × 2^32.
    pub mult: u64,
    /// Carried clocks.
    pub mask: u32,
    /// Padding.
    pub pad: u32,
    /// `CLOCK_MONOTONIC` at the base.
    pub base_ns: u64,
    /// Offsets from `CLOCK_MONOTONIC`, by clock id.
    pub offsets: [u64; CLOCKS as usize],
}

// SAFETY: `repr(C)` integers with an explicit padding field: no implicit padding, and every
// byte pattern is a valid value.
unsafe impl ByteValued for TimePage {}

/// The host's clocks at one instant, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostTime {
    /// By clock id (0 where the host has no such clock).
    pub ns: [u64; CLOCKS as usize],
}

impl HostTime {
    /// Reads the carried clocks now.
    pub fn now() -> Self {
        let mut ns = [0u64; CLOCKS as usize];
        for c in CARRIED {
            if let Some((s, n)) = crate::sandbox::host::host_clock(c) {
                ns[c as usize] = (s as u64)
                    .wrapping_mul(1_000_000_000)
                    .wrapping_add(n as u64);
            }
        }
        Self { ns }
    }

    fn monotonic(&self) -> u64 {
        self.ns[libc::CLOCK_MONOTONIC as usize]
    }
}

/// `mult` for a TSC of `khz`.
pub fn mult_for_khz(khz: u32) -> u64 {
    ((1_000_000u128 << 32) / u128::from(khz.max(1))) as u64
}

impl TimePage {
    /// A page whose TSC cannot be trusted: every call falls back.
    pub fn fallback() -> Self {
        Self::default()
    }

    /// A first page: `tsc` read at `host`, ticking at `khz`.
    pub fn new(tsc: u64, host: &HostTime, khz: u32) -> Self {
        let mut page = Self {
            mode: 1,
            tsc_base: tsc,
            mult: mult_for_khz(khz),
            base_ns: host.monotonic(),
            ..Self::default()
        };
        page.set_offsets(host);
        page
    }

    /// The clocks' offsets from `CLOCK_MONOTONIC` at `host`, on a first page. Later pages
    /// keep `MONOTONIC_RAW`'s (it must not step with NTP's slews of `MONOTONIC`) and let
    /// `BOOTTIME`'s only grow (by a suspend); `REALTIME` takes the host's steps.
    fn set_offsets(&mut self, host: &HostTime) {
        self.mask = 0;
        for c in CARRIED {
            let c = c as usize;
            self.offsets[c] = host.ns[c].wrapping_sub(host.monotonic());
            self.mask |= 1 << c;
        }
    }

    fn update_offsets(&mut self, host: &HostTime) {
        let old = self.offsets;
        self.set_offsets(host);
        for c in [libc::CLOCK_MONOTONIC_RAW, libc::CLOCK_MONOTONIC] {
            self.offsets[c as usize] = old[c as usize];
        }
        let boot = libc::CLOCK_BOOTTIME as usize;
        // Offsets wrap (they may be negative): compare them signed.
        if (self.offsets[boot] as i64) < (old[boot] as i64) {
            self.offsets[boot] = old[boot];
        }
    }

    /// `CLOCK_MONOTONIC` at `tsc`, as the vDSO computes it.
    pub fn monotonic_at(&self, tsc: u64) -> u64 {
        let ticks = tsc.wrapping_sub(self.tsc_base);
        let scaled = (u128::from(ticks) * u128::from(self.mult)) >> 32;
        self.base_ns.wrapping_add(scaled as u64)
    }

    /// Clock `clock` at `tsc`, as the vDSO computes it.
    pub fn clock_at(&self, clock: usize, tsc: u64) -> u64 {
        self.monotonic_at(tsc).wrapping_add(self.offsets[clock])
    }

    /// The next page at `tsc`, read at `host`: continuous where this one ends, its rate
    /// chosen to meet the host's monotonic clock again after `interval_ticks` more ticks
    /// (at most ±50 % off the nominal rate `nominal`).
    pub fn rebased(&self, tsc: u64, host: &HostTime, interval_ticks: u64, nominal: u64) -> Self {
        if self.mode == 0 || interval_ticks == 0 {
            return *self;
        }
        let here = self.monotonic_at(tsc);
        // Where the page should be one interval from now: the host's time then.
        let interval_ns = (u128::from(interval_ticks) * u128::from(nominal)) >> 32;
        let target = i128::from(host.monotonic()) + interval_ns as i128 - i128::from(here);
        let wanted = (target.max(0) as u128) << 32;
        let mult = (wanted / u128::from(interval_ticks)).min(u128::from(u64::MAX)) as u64;
        let mut page = Self {
            tsc_base: tsc,
            base_ns: here,
            mult: mult.clamp(nominal / 2, nominal + nominal / 2),
            ..*self
        };
        page.update_offsets(host);
        page
    }
}

/// The VMM's side: the current page and when it was made.
#[derive(Clone, Debug)]
pub struct TimeKeeper {
    page: TimePage,
    /// `mult` at KVM's TSC frequency.
    nominal: u64,
    /// Host monotonic time and guest TSC at the last refresh.
    last: (u64, u64),
}

impl TimeKeeper {
    /// A keeper for a TSC of `khz` read as `tsc` just before `host`; `None`: the TSC cannot
    /// be trusted and the page sends every call to the VMM.
    pub fn start(tsc_khz: Option<(u64, u32)>, host: &HostTime) -> Self {
        match tsc_khz {
            Some((tsc, khz)) => Self {
                page: TimePage::new(tsc, host, khz),
                nominal: mult_for_khz(khz),
                last: (host.monotonic(), tsc),
            },
            None => Self {
                page: TimePage::fallback(),
                nominal: 0,
                last: (host.monotonic(), 0),
            },
        }
    }

    /// The page to write at [`super::VVAR`].
    pub fn page(&self) -> &TimePage {
        &self.page
    }

    /// Clock `clock` as the vDSO would read it at the guest TSC `tsc()` gives, as (seconds,
    /// nanoseconds); `None` for a clock the page does not carry (or no TSC).
    pub fn read(&self, clock: i32, tsc: impl FnOnce() -> Option<u64>) -> Option<(i64, i64)> {
        let carried = (0..CLOCKS as i32).contains(&clock) && self.page.mask & (1 << clock) != 0;
        if self.page.mode != 1 || !carried {
            return None;
        }
        let ns = self.page.clock_at(clock as usize, tsc()?);
        Some(((ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as i64))
    }

    /// Whether a refresh is due at host monotonic time `now_ns` (never for a fallback page).
    pub fn due(&self, now_ns: u64) -> bool {
        self.page.mode == 1 && now_ns.saturating_sub(self.last.0) >= REFRESH_NS
    }

    /// Re-bases the page at guest `tsc`, read just before `host`.
    pub fn refresh(&mut self, tsc: u64, host: &HostTime) {
        let interval = tsc.saturating_sub(self.last.1);
        let mut next = self.page.rebased(tsc, host, interval, self.nominal);
        next.seq = self.page.seq.wrapping_add(2);
        self.page = next;
        self.last = (host.monotonic(), tsc);
    }
}

/// The host's `CLOCK_MONOTONIC` in nanoseconds.
pub fn host_monotonic_ns() -> u64 {
    let (s, n) = crate::sandbox::host::host_clock(libc::CLOCK_MONOTONIC).unwrap_or((0, 0));
    (s as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(mono: u64) -> HostTime {
        let mut h = HostTime::default();
        for c in CARRIED {
            h.ns[c as usize] = mono;
        }
        h.ns[libc::CLOCK_REALTIME as usize] = mono + 1_700_000_000_000_000_000;
        h
    }

    #[test]
    fn the_layout_is_what_the_code_reads() {
        let p = TimePage::default();
        let base = &p as *const _ as usize;
        let off = |f: *const u8| f as usize - base;
        assert_eq!(off(&p.seq as *const _ as _), SEQ as usize);
        assert_eq!(off(&p.mode as *const _ as _), MODE as usize);
        assert_eq!(off(&p.tsc_base as *const _ as _), TSC_BASE as usize);
        assert_eq!(off(&p.mult as *const _ as _), MULT as usize);
        assert_eq!(off(&p.mask as *const _ as _), MASK as usize);
        assert_eq!(off(&p.base_ns as *const _ as _), BASE_NS as usize);
        assert_eq!(off(&p.offsets as *const _ as _), OFFSETS as usize);
        assert!(std::mem::size_of::<TimePage>() <= 4096);
    }

    #[test]
    fn ticks_become_nanoseconds_at_the_tsc_rate() {
        let page = TimePage::new(1_000, &host(5_000_000_000), 2_000_000); // 2 GHz
        assert_eq!(page.monotonic_at(1_000), 5_000_000_000);
        assert_eq!(page.monotonic_at(1_000 + 2_000_000_000), 6_000_000_000);
        let real = page.clock_at(libc::CLOCK_REALTIME as usize, 1_000 + 2_000);
        assert_eq!(real, 1_700_000_005_000_001_000);
        assert_eq!(
            page.mask & (1 << libc::CLOCK_PROCESS_CPUTIME_ID),
            0,
            "served by the VMM"
        );
        // Hours of ticks do not overflow the product.
        let hours = 2_000_000_000u64 * 3600 * 10;
        assert_eq!(
            page.monotonic_at(1_000 + hours),
            5_000_000_000 + 36_000 * 1_000_000_000
        );
    }

    #[test]
    fn a_rebase_is_continuous_and_slews_toward_the_host() {
        let nominal = mult_for_khz(1_000_000); // 1 GHz: 1 ns a tick
        let page = TimePage::new(0, &host(0), 1_000_000);
        let second = 1_000_000_000;
        // The guest's TSC ran 1 ms fast against the host's clock over the first second.
        let tsc = second + 1_000_000;
        let next = page.rebased(tsc, &host(second), second, nominal);
        assert_eq!(next.monotonic_at(tsc), page.monotonic_at(tsc), "no step");
        let met = next.monotonic_at(tsc + second);
        assert!(
            met.abs_diff(2 * second) <= 1,
            "meets the host a second later: {met}"
        );
        assert!(next.mult < nominal, "slowed");
        // Lagging: sped up, never a step back.
        let behind = page.rebased(second - 1_000_000, &host(second), second, nominal);
        assert!(behind.mult > nominal);
        // Absurd readings are clamped.
        let wild = page.rebased(1, &host(u64::MAX / 4), second, nominal);
        assert_eq!(wild.mult, nominal + nominal / 2);
        // MONOTONIC_RAW keeps its offset (no step with NTP's slew); BOOTTIME never goes back.
        let mut later = host(second);
        later.ns[libc::CLOCK_MONOTONIC_RAW as usize] += 500_000;
        later.ns[libc::CLOCK_BOOTTIME as usize] -= 1_000;
        let kept = page.rebased(tsc, &later, second, nominal);
        assert_eq!(kept.offsets, page.offsets);
        let fallback = TimePage::fallback();
        assert_eq!(fallback.rebased(5, &host(9), second, nominal), fallback);
    }
}
