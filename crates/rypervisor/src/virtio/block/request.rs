//! One virtio-blk request (virtio 1.2, 5.2.6): a 16-byte header the driver wrote (type,
//! reserved, sector), the data buffers, and a one-byte status the device writes last. Parsed
//! from a chain, checked against the disk, and executed. Whatever the guest puts in a chain,
//! the outcome is a status (OK, IOERR, UNSUPP) — a chain with a buffer outside guest memory
//! gets IOERR in its last byte if that byte is the guest's and writable — or, when there is
//! no writable byte to put a status in, the request is dropped with a log line.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::disk::{Direction, Disk, SECTOR};
use crate::virtio::buffers::{walk, BufferError, Buffers};

/// Segments accepted in one DISCARD or WRITE_ZEROES request (announced in the config).
pub const MAX_SEGMENTS: u32 = 32;
/// Sectors one WRITE_ZEROES request may zero in all (announced in the config): where the
/// file system cannot zero a range, zeros are written on the event loop, so a request is
/// kept to 16 MiB of them.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 32 << 10;

/// What a FLUSH counts for against a turn's budget (see `Done::moved`): all of it, since
/// `fdatasync` writes back whatever the guest dirtied, however much.
pub const FLUSH_COST: u64 = u64::MAX;

/// A request's outcome: the status byte, and the bytes the device wrote into the guest's
/// buffers (status included) for the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    /// `VIRTIO_BLK_S_*`.
    pub status: u8,
    /// Bytes written to guest memory.
    pub written: u32,
    /// Bytes the request moved to or from the file, zeroed or discarded there (a FLUSH:
    /// [`FLUSH_COST`]): what it cost the event loop (see `serve_queue_metered`).
    pub moved: u64,
}

/// Why a request could not even be answered.
#[derive(Debug, thiserror::Error)]
pub enum Unanswerable {
    /// The buffers are unusable.
    #[error(transparent)]
    Buffers(#[from] BufferError),
    /// No device-writable byte for the status.
    #[error("no status byte")]
    NoStatus,
}

/// Parses and executes the request in `chain`; `serial` answers GET_ID.
pub fn execute(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    disk: &Disk,
    serial: &[u8],
) -> Result<Done, Unanswerable> {
    let (mut readable, mut data_out) = match Buffers::split(chain.clone(), mem) {
        Ok(buffers) => buffers,
        // A chain too long or cut short has no end to trust: no status is written.
        Err(e @ (BufferError::TooLong | BufferError::Cut)) => return Err(e.into()),
        Err(e) => return status_only(chain, mem).ok_or(e.into()),
    };
    let status_at = data_out.pop_last_byte().ok_or(Unanswerable::NoStatus)?;
    let (status, written, moved) = match readable.read_obj::<[u8; 16]>() {
        Err(_) => (VIRTIO_BLK_S_IOERR, 0, 0),
        Ok(header) => {
            let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
            let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
            serve(kind, sector, &readable, &data_out, disk, serial)
        }
    };
    status_at.copy_from(&[status as u8]);
    // A request that failed (part done, then an error) costs at least its buffers.
    let buffers = (readable.len() + data_out.len()) as u64;
    Ok(Done {
        status: status as u8,
        written: written + 1,
        moved: moved.max(buffers),
    })
}

/// IOERR for a chain whose buffers cannot all be used (one lies outside guest memory, or
/// their lengths overflow), written where the status belongs — the last byte of its last
/// descriptor — if that descriptor is device-writable and in guest memory; `None` if not.
fn status_only(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> Option<Done> {
    let mut last = None;
    walk(chain, |d| {
        if d.len() > 0 {
            last = Some(d);
        }
        Ok(())
    })
    .ok()?;
    let last = last?;
    let at = last.addr().0.checked_add(u64::from(last.len()) - 1)?;
    if !last.is_write_only() {
        return None;
    }
    mem.write_obj(VIRTIO_BLK_S_IOERR as u8, GuestAddress(at))
        .ok()?;
    Some(Done {
        status: VIRTIO_BLK_S_IOERR as u8,
        written: 1,
        moved: 0,
    })
}

/// The status, the data bytes written to the guest, and the bytes moved or zeroed.
fn serve(
    kind: u32,
    sector: u64,
    from_guest: &Buffers<'_>,
    to_guest: &Buffers<'_>,
    disk: &Disk,
    serial: &[u8],
) -> (u32, u32, u64) {
    // (Bytes written to the guest, bytes moved or zeroed in the file.)
    let result = match kind {
        VIRTIO_BLK_T_IN => {
            transfer(disk, Direction::Read, sector, to_guest).map(|n| (n as u32, n as u64))
        }
        VIRTIO_BLK_T_OUT if disk.read_only() => Err(VIRTIO_BLK_S_IOERR),
        VIRTIO_BLK_T_OUT => {
            transfer(disk, Direction::Write, sector, from_guest).map(|n| (0, n as u64))
        }
        // A flush writes back whatever the guest dirtied: it costs a turn's worth.
        VIRTIO_BLK_T_FLUSH if disk.writeback() => {
            disk.flush().map(|_| (0, FLUSH_COST)).map_err(io_error)
        }
        VIRTIO_BLK_T_GET_ID => get_id(to_guest, serial).map(|n| (n, 0)),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES if disk.read_only() => {
            Err(VIRTIO_BLK_S_IOERR)
        }
        VIRTIO_BLK_T_DISCARD => segments(disk, from_guest, false).map(|n| (0, n)),
        VIRTIO_BLK_T_WRITE_ZEROES => segments(disk, from_guest, true).map(|n| (0, n)),
        _ => Err(VIRTIO_BLK_S_UNSUPP),
    };
    match result {
        Ok((written, moved)) => (VIRTIO_BLK_S_OK, written, moved),
        Err(status) => (status, 0, 0),
    }
}

/// An I/O error is the guest's IOERR (the device logs it, rate-limited).
fn io_error(_e: std::io::Error) -> u32 {
    VIRTIO_BLK_S_IOERR
}

/// The byte range of `len` bytes at `sector`, if it lies on the disk and is whole sectors.
fn range(disk: &Disk, sector: u64, len: u64) -> Result<u64, u32> {
    let offset = sector.checked_mul(SECTOR).ok_or(VIRTIO_BLK_S_IOERR)?;
    let end = offset.checked_add(len).ok_or(VIRTIO_BLK_S_IOERR)?;
    if !len.is_multiple_of(SECTOR) || end > disk.size() {
        return Err(VIRTIO_BLK_S_IOERR);
    }
    Ok(offset)
}

fn transfer(disk: &Disk, dir: Direction, sector: u64, data: &Buffers<'_>) -> Result<usize, u32> {
    let offset = range(disk, sector, data.len() as u64)?;
    disk.transfer(dir, offset, data).map_err(io_error)?;
    Ok(data.len())
}

/// GET_ID: the serial, NUL-padded to 20 bytes (or cut to the buffer).
fn get_id(to_guest: &Buffers<'_>, serial: &[u8]) -> Result<u32, u32> {
    let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
    let n = serial.len().min(id.len());
    id[..n].copy_from_slice(&serial[..n]);
    let n = to_guest.len().min(id.len());
    let mut out = to_guest.clone();
    out.write_bytes(&id[..n]).map_err(|_| VIRTIO_BLK_S_IOERR)?;
    Ok(n as u32)
}

/// DISCARD / WRITE_ZEROES: 16-byte segments (sector, sectors, flags), each checked before
/// any is executed; the bytes they cover.
fn segments(disk: &Disk, from_guest: &Buffers<'_>, zeroes: bool) -> Result<u64, u32> {
    if from_guest.is_empty() || !from_guest.len().is_multiple_of(16) {
        return Err(VIRTIO_BLK_S_IOERR);
    }
    if from_guest.len() / 16 > MAX_SEGMENTS as usize {
        return Err(VIRTIO_BLK_S_UNSUPP);
    }
    let mut data = from_guest.clone();
    let mut work = Vec::new();
    let mut total = 0u64;
    while !data.is_empty() {
        let seg: [u8; 16] = data.read_obj().map_err(|_| VIRTIO_BLK_S_IOERR)?;
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
        let sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
        let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        // Discard has no flags; write-zeroes knows only UNMAP.
        if (!zeroes && flags != 0) || flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
            return Err(VIRTIO_BLK_S_UNSUPP);
        }
        let len = u64::from(sectors) * SECTOR;
        total += u64::from(sectors);
        if zeroes && total > u64::from(MAX_WRITE_ZEROES_SECTORS) {
            return Err(VIRTIO_BLK_S_IOERR);
        }
        let offset = range(disk, sector, len)?;
        if len > 0 {
            work.push((offset, len, unmap)); // an empty segment has nothing to do
        }
    }
    for (offset, len, unmap) in work {
        let unsupported = |r: &std::io::Result<()>| matches!(r, Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP));
        let r = match (zeroes, unmap) {
            // Discarding is advisory: a file system without holes keeps the bytes.
            (false, _) => Some(disk.punch_hole(offset, len)).filter(|r| !unsupported(r)),
            (true, true) => Some(disk.punch_hole(offset, len))
                .filter(|r| !unsupported(r))
                .or_else(|| Some(disk.write_zeroes(offset, len))),
            (true, false) => Some(disk.write_zeroes(offset, len)),
        };
        r.unwrap_or(Ok(())).map_err(io_error)?;
    }
    Ok(total * SECTOR)
}
