//! One bus for port I/O and MMIO: address ranges mapped to devices.
//!
//! A VM exit for `in`/`out` or for an access to guest-physical memory with no RAM behind it
//! arrives as (address space, address, data). The bus finds the device whose range holds
//! the address and hands it the *offset* into its range: devices never see absolute
//! addresses, so the same device model works at any port or MMIO base. Overlapping ranges
//! are refused when registered. An access that hits no device is counted, logged, and
//! (for reads) answered with all ones, like an open bus on real hardware.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// How many accesses to nowhere are logged before the bus goes quiet (they stay counted).
const LOGGED_MISSES: u64 = 8;

/// A device model: register semantics only, no knowledge of where it is mapped.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// The two x86 address spaces a device can live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressSpace {
    /// I/O ports, reached with `in`/`out` (16-bit addresses).
    Pio,
    /// Memory-mapped I/O: guest-physical addresses with no RAM behind them.
    Mmio,
}

impl fmt::Display for AddressSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressSpace::Pio => "port",
            AddressSpace::Mmio => "MMIO",
        })
    }
}

/// Errors when registering a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a registered one.
    #[error("{space} range {base:#x}+{len:#x} for {name} overlaps {other} at {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// Address space.
        space: AddressSpace,
        /// New range base.
        base: u64,
        /// New range length.
        len: u64,
        /// New device name.
        name: String,
        /// Existing device name.
        other: String,
        /// Existing range base.
        other_base: u64,
        /// Existing range length.
        other_len: u64,
    },
    /// A zero-length or wrapping range.
    #[error("invalid {space} range {base:#x}+{len:#x} for {name}")]
    InvalidRange {
        /// Address space.
        space: AddressSpace,
        /// Range base.
        base: u64,
        /// Range length.
        len: u64,
        /// Device name.
        name: String,
    },
}

/// A shared, lockable device, as registered on the bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Entry {
    len: u64,
    name: String,
    device: SharedDevice,
}

/// A registered range, as listed by [`Bus::ranges`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RangeInfo {
    /// Address space.
    pub space: AddressSpace,
    /// First address.
    pub base: u64,
    /// Length in bytes (or ports).
    pub len: u64,
    /// Device name.
    pub name: String,
}

/// Port I/O and MMIO ranges mapped to devices.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<(AddressSpace, u64), Entry>,
    misses: AtomicU64,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.ranges()).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base+len)` in `space` to `device`. Refuses empty, wrapping and
    /// overlapping ranges.
    pub fn insert(
        &mut self,
        space: AddressSpace,
        base: u64,
        len: u64,
        name: &str,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 && (space == AddressSpace::Mmio || end <= 0x1_0000) => end,
            _ => {
                return Err(BusError::InvalidRange {
                    space,
                    base,
                    len,
                    name: name.to_owned(),
                });
            }
        };
        // The only candidates for overlap: the last range starting below `end`.
        if let Some(((_, other_base), other)) =
            self.ranges.range((space, 0)..(space, end)).next_back()
        {
            if other_base + other.len > base {
                return Err(BusError::Overlap {
                    space,
                    base,
                    len,
                    name: name.to_owned(),
                    other: other.name.clone(),
                    other_base: *other_base,
                    other_len: other.len,
                });
            }
        }
        self.ranges.insert(
            (space, base),
            Entry {
                len,
                name: name.to_owned(),
                device,
            },
        );
        Ok(())
    }

    fn find(&self, space: AddressSpace, addr: u64) -> Option<(u64, &Entry)> {
        let ((_, base), entry) = self.ranges.range((space, 0)..=(space, addr)).next_back()?;
        (addr - base < entry.len).then_some((addr - base, entry))
    }

    /// Guest read of `data.len()` bytes at `addr`. Returns false (and fills `data` with
    /// 0xff) when no device is there.
    pub fn read(&self, space: AddressSpace, addr: u64, data: &mut [u8]) -> bool {
        match self.find(space, addr) {
            Some((offset, entry)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                self.miss(space, addr, "read", data);
                false
            }
        }
    }

    /// Guest write of `data` at `addr`. Returns false when no device is there.
    pub fn write(&self, space: AddressSpace, addr: u64, data: &[u8]) -> bool {
        match self.find(space, addr) {
            Some((offset, entry)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => {
                self.miss(space, addr, "write", data);
                false
            }
        }
    }

    fn miss(&self, space: AddressSpace, addr: u64, what: &str, data: &[u8]) {
        let n = self.misses.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= LOGGED_MISSES {
            tracing::warn!(
                "guest {what} of {} byte(s) at {space} {addr:#x} hit no device{}{}",
                data.len(),
                if what == "read" {
                    "; it reads as all ones"
                } else {
                    "; ignored"
                },
                if n == LOGGED_MISSES {
                    " (further accesses to nowhere are counted, not logged)"
                } else {
                    ""
                },
            );
        }
    }

    /// How many accesses hit no device.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// The registered ranges, in address order.
    pub fn ranges(&self) -> Vec<RangeInfo> {
        self.ranges
            .iter()
            .map(|((space, base), e)| RangeInfo {
                space: *space,
                base: *base,
                len: e.len,
                name: e.name.clone(),
            })
            .collect()
    }
}

/// Locks a device, recovering from a poisoned lock (a device that panicked must not take the
/// VMM down with it a second time).
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn devices_see_offsets_not_addresses() {
        let mut bus = Bus::new();
        let d = dev();
        bus.insert(AddressSpace::Pio, 0x3f8, 8, "uart", d.clone())
            .unwrap();
        assert!(bus.write(AddressSpace::Pio, 0x3fb, &[1]));
        let mut b = [0u8; 1];
        assert!(bus.read(AddressSpace::Pio, 0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert_eq!(d.lock().unwrap().writes, vec![(3, vec![1])]);
    }

    #[test]
    fn address_spaces_are_separate() {
        let mut bus = Bus::new();
        bus.insert(AddressSpace::Pio, 0x3f8, 8, "uart", dev())
            .unwrap();
        bus.insert(AddressSpace::Mmio, 0x3f8, 8, "mmio", dev())
            .unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(AddressSpace::Mmio, 0x400, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert_eq!(bus.misses(), 1);
    }

    #[test]
    fn overlaps_are_refused_on_either_side() {
        let mut bus = Bus::new();
        bus.insert(AddressSpace::Mmio, 0x1000, 0x100, "a", dev())
            .unwrap();
        for (base, len) in [
            (0x1000, 1),
            (0xfff, 2),
            (0x10ff, 1),
            (0x800, 0x1000),
            (0x1080, 0x10),
        ] {
            let err = bus
                .insert(AddressSpace::Mmio, base, len, "b", dev())
                .unwrap_err();
            assert!(
                matches!(err, BusError::Overlap { .. }),
                "{base:#x}+{len:#x}"
            );
        }
        bus.insert(AddressSpace::Mmio, 0x1100, 1, "after", dev())
            .unwrap();
        bus.insert(AddressSpace::Mmio, 0xfff, 1, "before", dev())
            .unwrap();
        assert_eq!(bus.ranges().len(), 3);
    }

    #[test]
    fn invalid_ranges_are_refused() {
        let mut bus = Bus::new();
        assert!(bus
            .insert(AddressSpace::Pio, 0x10, 0, "empty", dev())
            .is_err());
        assert!(bus
            .insert(AddressSpace::Pio, 0xffff, 2, "past 64K", dev())
            .is_err());
        assert!(bus
            .insert(AddressSpace::Mmio, u64::MAX, 2, "wraps", dev())
            .is_err());
    }

    #[test]
    fn misses_are_counted_not_fatal() {
        let bus = Bus::new();
        for i in 0..100 {
            assert!(!bus.write(AddressSpace::Pio, i, &[0]));
        }
        assert_eq!(bus.misses(), 100);
    }
}
