//! Disassembly of guest instructions with iced-x86, for explanations and fault reports.

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, NasmFormatter};

/// One decoded instruction.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Decoded {
    /// Address it was decoded at.
    pub ip: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// NASM syntax, e.g. `out dx,al`; `(bad)` when the bytes do not decode.
    pub text: String,
}

impl std::fmt::Display for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}: {:<24} {}", self.ip, hex(&self.bytes), self.text)
    }
}

/// Bytes as `ba f8 03`.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Decodes the first instruction in `bytes` as `bitness`-bit code at `ip`.
pub fn decode(bytes: &[u8], bitness: u32, ip: u64) -> Decoded {
    let mut decoder = Decoder::with_ip(bitness, bytes, ip, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    decoder.decode_out(&mut insn);
    if insn.is_invalid() {
        return Decoded {
            ip,
            bytes: bytes.iter().take(1).copied().collect(),
            text: "(bad)".into(),
        };
    }
    let mut text = String::new();
    let mut fmt = NasmFormatter::new();
    fmt.options_mut().set_space_after_operand_separator(false);
    fmt.format(&insn, &mut text);
    Decoded {
        ip,
        bytes: bytes[..insn.len()].to_vec(),
        text,
    }
}

/// Decodes every instruction in `bytes` (for listings of small programs).
pub fn decode_all(bytes: &[u8], bitness: u32, ip: u64) -> Vec<Decoded> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < bytes.len() {
        let d = decode(&bytes[off..], bitness, ip + off as u64);
        off += d.bytes.len().max(1);
        out.push(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lwn_program_disassembles() {
        let code = [
            0xba, 0xf8, 0x03, 0x00, 0xd8, 0x04, b'0', 0xee, 0xb0, b'\n', 0xee, 0xf4,
        ];
        let text: Vec<String> = decode_all(&code, 16, 0x1000)
            .into_iter()
            .map(|d| d.text)
            .collect();
        assert_eq!(
            text,
            [
                "mov dx,3F8h",
                "add al,bl",
                "add al,30h",
                "out dx,al",
                "mov al,0Ah",
                "out dx,al",
                "hlt"
            ]
        );
    }

    #[test]
    fn garbage_is_bad_not_a_panic() {
        assert_eq!(decode(&[0x0f, 0xff], 64, 0).text, "(bad)");
        assert_eq!(decode(&[], 64, 0).text, "(bad)");
    }
}
