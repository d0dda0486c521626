//! The 64-bit (or 32-bit) task state segment: the stack a CPL3 guest's exceptions switch to
//! (`RSP0`) and the I/O permission bitmap that says which ports CPL3 code may use.

use kvm_bindings::kvm_segment;

use super::segments::tss_segment;
use crate::memory::{GuestRam, MemoryError};

/// The TSS proper (without a bitmap).
const TSS_BYTES: u32 = 104;
/// Where the I/O bitmap starts, right after the TSS.
const IO_BITMAP_OFFSET: u16 = 104;
/// One bit per port, plus the terminating all-ones byte.
const IO_BITMAP_BYTES: u32 = 8192 + 1;
/// Offset of RSP0.
const RSP0: usize = 4;
/// Offset of the I/O map base.
const IO_MAP_BASE: usize = 102;

/// Which ports CPL3 code may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoPorts<'a> {
    /// No bitmap (a kernel at CPL0 needs none).
    None,
    /// Every port.
    All,
    /// These ports only; every other `in`/`out` at CPL3 is a #GP.
    Only(&'a [u16]),
}

/// Writes a TSS at `at` with `rsp0` and `ports`, and returns the task register's segment.
pub fn write_tss(
    ram: &GuestRam,
    at: u64,
    rsp0: u64,
    ports: IoPorts<'_>,
) -> Result<kvm_segment, MemoryError> {
    let limit = match ports {
        IoPorts::None => TSS_BYTES - 1,
        IoPorts::All | IoPorts::Only(_) => TSS_BYTES + IO_BITMAP_BYTES - 1,
    };
    let mut tss = vec![0u8; limit as usize + 1];
    tss[RSP0..RSP0 + 8].copy_from_slice(&rsp0.to_le_bytes());
    tss[IO_MAP_BASE..IO_MAP_BASE + 2].copy_from_slice(&IO_BITMAP_OFFSET.to_le_bytes());
    let bitmap = &mut tss[TSS_BYTES as usize..];
    match ports {
        IoPorts::None | IoPorts::All => {}
        IoPorts::Only(open) => {
            bitmap.fill(0xff);
            for &port in open {
                bitmap[usize::from(port / 8)] &= !(1 << (port % 8));
            }
        }
    }
    if let Some(last) = bitmap.last_mut() {
        *last = 0xff;
    }
    ram.write(at, &tss)?;
    Ok(tss_segment(at, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_ports(ram: &GuestRam, at: u64) -> Vec<usize> {
        let mut bitmap = vec![0u8; 8193];
        ram.read(at + 104, &mut bitmap).unwrap();
        (0..65536)
            .filter(|p| bitmap[p / 8] & (1 << (p % 8)) == 0)
            .collect()
    }

    #[test]
    fn bitmaps_open_what_they_say() {
        let ram = GuestRam::new(0, 1 << 20).unwrap();
        let seg = write_tss(&ram, 0x8000, 0xc000, IoPorts::Only(&[0xf5])).unwrap();
        assert_eq!(open_ports(&ram, 0x8000), vec![0xf5]);
        assert_eq!((seg.base, seg.limit), (0x8000, 104 + 8192));
        assert_eq!(ram.read_u64(0x8004).unwrap(), 0xc000, "RSP0");
        write_tss(&ram, 0x8000, 0xc000, IoPorts::All).unwrap();
        assert_eq!(open_ports(&ram, 0x8000).len(), 65536);
        let seg = write_tss(&ram, 0x4000, 0, IoPorts::None).unwrap();
        assert_eq!(seg.limit, 0x67);
    }
}
