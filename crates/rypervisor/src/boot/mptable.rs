//! The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI learns its
//! CPUs, its I/O APIC and how ISA interrupts reach it.
//!
//! Hand-written because no maintained crate builds it (Firecracker and Cloud Hypervisor
//! each carry their own copy inside their VMM crates). The table sits in the EBDA, where
//! Linux's `mpparse` scans for the `_MP_` signature.

use super::layout::{EBDA, IOAPIC, LAPIC};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Legacy ISA interrupts routed through the I/O APIC.
const ISA_IRQS: u8 = 16;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the MP floating pointer + configuration table for `cpus` processors, to be
/// written at [`EBDA`]. Returns the bytes.
pub fn build(cpus: u8) -> Vec<u8> {
    let table_addr = EBDA as u32 + 16;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    // Processor entries (type 0): APIC id = vCPU index; the first is the bootstrap CPU.
    for id in 0..cpus {
        let flags = 1 | if id == 0 { 2 } else { 0 }; // enabled | BSP
        let mut e = vec![0, id, APIC_VERSION, flags];
        e.extend_from_slice(&0x600u32.to_le_bytes()); // CPU signature (family 6)
        e.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        e.extend_from_slice(&[0; 8]);
        entries.extend(e);
        count += 1;
    }
    // Bus entry (type 1): bus 0 is ISA.
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    // I/O APIC entry (type 2): id after the CPUs, enabled.
    let ioapic_id = cpus;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC as u32).to_le_bytes());
    count += 1;
    // I/O interrupt entries (type 3): ISA IRQ n → I/O APIC pin n, default polarity/trigger.
    for irq in 0..ISA_IRQS {
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupt entries (type 4): ExtINT on LINT0, NMI on LINT1, for all local APICs.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"RYPERVSR"); // OEM id
    header.extend_from_slice(b"MICROVM     "); // product id
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(LAPIC as u32).to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    header.push(0); // extended table checksum
    header.push(0);
    let mut table = header;
    table.extend(entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // revision
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0; 5]); // feature bytes: 0 = configuration table present
    fp[10] = checksum(&fp);
    fp.extend(table);
    fp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts_are_right() {
        for cpus in [1u8, 2, 8] {
            let t = build(cpus);
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(
                t[..16].iter().fold(0u8, |s, b| s.wrapping_add(*b)),
                0,
                "floating pointer"
            );
            let table = &t[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(
                table.iter().fold(0u8, |s, b| s.wrapping_add(*b)),
                0,
                "table checksum"
            );
            let entries = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(entries, u16::from(cpus) + 1 + 1 + 16 + 2);
            // Processor entries first, the BSP flagged.
            assert_eq!(&table[44..48], &[0, 0, APIC_VERSION, 3]);
            if cpus > 1 {
                assert_eq!(&table[64..68], &[0, 1, APIC_VERSION, 1]);
            }
            assert!(t.len() <= 1024, "fits in the EBDA's first KiB");
        }
        let addr = u32::from_le_bytes(build(1)[4..8].try_into().unwrap());
        assert_eq!(u64::from(addr), EBDA + 16);
    }
}
