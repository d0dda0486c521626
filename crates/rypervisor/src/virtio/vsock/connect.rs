//! The line a host program writes on the vsock Unix socket to reach a guest port:
//! `CONNECT <port>\n` (Firecracker's hybrid-vsock protocol: the first word in any case, the
//! port a decimal u32, further words ignored). It is read one byte at a time so that not a
//! byte past the newline is consumed (those are the stream's), it is at most [`MAX_LINE`]
//! bytes, and a line cut off by EOF, too long or malformed ends the connection without harm.

use std::io::{ErrorKind, Read};

/// Longest line accepted, newline included.
pub const MAX_LINE: usize = 32;

/// What the bytes so far say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Not a whole line yet.
    More,
    /// The guest port asked for.
    Port(u32),
    /// Not a CONNECT line: close the host stream.
    Refused(&'static str),
}

/// A CONNECT line being read.
#[derive(Clone, Debug, Default)]
pub struct ConnectLine {
    bytes: Vec<u8>,
}

impl ConnectLine {
    /// Takes one more byte.
    pub fn feed(&mut self, byte: u8) -> Step {
        if byte != b'\n' {
            if self.bytes.len() + 1 >= MAX_LINE {
                return Step::Refused("line too long");
            }
            self.bytes.push(byte);
            return Step::More;
        }
        let Ok(text) = std::str::from_utf8(&self.bytes) else {
            return Step::Refused("not text");
        };
        let mut words = text.split_whitespace();
        match (words.next(), words.next()) {
            (Some(verb), Some(port)) if verb.eq_ignore_ascii_case("connect") => {
                match port.parse::<u32>() {
                    Ok(p) => Step::Port(p),
                    Err(_) => Step::Refused("the port is not a number"),
                }
            }
            _ => Step::Refused("expected \"CONNECT <port>\""),
        }
    }

    /// Reads from a non-blocking `stream` until the line is complete, refused, or the stream
    /// has nothing more for now ([`Step::More`]). EOF before the newline is a refusal.
    pub fn read_from(&mut self, stream: &mut impl Read) -> Step {
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) => return Step::Refused("end of stream before the newline"),
                Ok(_) => match self.feed(byte[0]) {
                    Step::More => continue,
                    done => return done,
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::More,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Step::Refused("read error"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &[u8]) -> Step {
        let mut l = ConnectLine::default();
        let mut cursor = std::io::Cursor::new(text.to_vec());
        l.read_from(&mut cursor)
    }

    #[test]
    fn connect_lines_are_parsed_as_firecracker_does() {
        assert_eq!(line(b"CONNECT 52\n"), Step::Port(52));
        assert_eq!(line(b"connect 4294967295\n"), Step::Port(u32::MAX));
        assert_eq!(line(b"Connect  7 extra words\n"), Step::Port(7));
        assert!(matches!(line(b"CONNECT\n"), Step::Refused(_)));
        assert!(matches!(line(b"CONNECT -1\n"), Step::Refused(_)));
        assert!(matches!(line(b"CONNECT 4294967296\n"), Step::Refused(_)));
        assert!(matches!(line(b"HELLO 52\n"), Step::Refused(_)));
        assert!(matches!(line(b"\xff\xfe 52\n"), Step::Refused(_)));
        assert!(matches!(
            line(b"CONNECT 52"),
            Step::Refused("end of stream before the newline")
        ));
        let long = [b"CONNECT ".as_slice(), &[b'0'; 40], b"\n"].concat();
        assert_eq!(line(&long), Step::Refused("line too long"));
    }

    #[test]
    fn nothing_past_the_newline_is_consumed() {
        let mut cursor = std::io::Cursor::new(b"CONNECT 9\nhello".to_vec());
        assert_eq!(ConnectLine::default().read_from(&mut cursor), Step::Port(9));
        let mut rest = String::new();
        cursor.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "hello");
    }

    #[test]
    fn a_line_can_arrive_in_pieces() {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut l = ConnectLine::default();
        std::io::Write::write_all(&mut a, b"CONN").unwrap();
        assert_eq!(l.read_from(&mut b), Step::More);
        std::io::Write::write_all(&mut a, b"ECT 1234\n").unwrap();
        assert_eq!(l.read_from(&mut b), Step::Port(1234));
    }
}
