//! The CMOS real-time clock at ports 0x70/0x71, so the guest reads the wall-clock time at
//! boot. Register index written to port 0x70 (bit 7 is the NMI mask), data read from 0x71.
//! Time registers come from the host's clock (UTC) in BCD, 24-hour mode; other CMOS bytes
//! read as zero and writes are ignored (the guest cannot set the host's clock).

use crate::bus::BusDevice;

/// Index port.
pub const PORT: u16 = 0x70;
/// Ports the device covers.
pub const PORTS: u64 = 2;

/// The CMOS/RTC model.
#[derive(Debug, Default)]
pub struct Rtc {
    index: u8,
    /// Fixed time for tests (seconds since the epoch); `None`: the host clock.
    pub fixed: Option<i64>,
}

fn bcd(v: u32) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl Rtc {
    fn register(&self, index: u8) -> u8 {
        let now = self.fixed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
        let (days, secs) = (now.div_euclid(86_400), now.rem_euclid(86_400) as u32);
        let (year, month, day) = civil(days);
        match index {
            0x00 => bcd(secs % 60),
            0x02 => bcd(secs / 60 % 60),
            0x04 => bcd(secs / 3600),
            0x06 => bcd(((days + 4).rem_euclid(7) + 1) as u32), // day of week, Sunday = 1
            0x07 => bcd(day),
            0x08 => bcd(month),
            0x09 => bcd((year % 100) as u32),
            0x32 => bcd((year / 100) as u32), // century
            0x0a => 0x26,                     // status A: 32.768 kHz, no update in progress
            0x0b => 0x02,                     // status B: 24-hour, BCD
            0x0d => 0x80,                     // status D: battery good
            _ => 0,
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 1 {
            if let Some(b) = data.first_mut() {
                *b = self.register(self.index);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            if let Some(&b) = data.first() {
                self.index = b & 0x7f;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(rtc: &mut Rtc, index: u8) -> u8 {
        rtc.write(0, &[index | 0x80]);
        let mut b = [0];
        rtc.read(1, &mut b);
        b[0]
    }

    #[test]
    fn reports_the_time_in_bcd() {
        // 2026-11-25 15:04:05 UTC, a Wednesday.
        let mut rtc = Rtc {
            fixed: Some(1_795_619_045),
            ..Rtc::default()
        };
        assert_eq!(read(&mut rtc, 0x09), 0x26);
        assert_eq!(read(&mut rtc, 0x32), 0x20);
        assert_eq!(read(&mut rtc, 0x08), 0x11);
        assert_eq!(read(&mut rtc, 0x07), 0x25);
        assert_eq!(read(&mut rtc, 0x04), 0x15);
        assert_eq!(read(&mut rtc, 0x02), 0x04);
        assert_eq!(read(&mut rtc, 0x00), 0x05);
        assert_eq!(read(&mut rtc, 0x06), 0x04, "Wednesday");
        assert_eq!(read(&mut rtc, 0x0b), 0x02);
    }
}
