//! An object's uid or resourceVersion as a cache keeps it: 24 bytes in
//! place, no allocation for the shapes the API server gives them.
//!
//! A uid is a UUID in its 36-character text form and a resourceVersion
//! (etcd's) a decimal number; as `Box<str>`s each costs a pointer pair and
//! an allocation (48 bytes for a uid with the allocator's rounding). Both
//! are opaque to clients, so anything else is kept as it came; a value is
//! folded into 16 bytes or a number only when its text is exactly what
//! folding gives back, so every value reads back byte for byte.

use std::fmt::Write as _;

/// See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CompactId {
    #[default]
    Absent,
    /// A lowercase, hyphenated UUID.
    Uuid([u8; 16]),
    /// A decimal number without leading zeros.
    Number(u64),
    Text(Box<str>),
}

impl CompactId {
    pub fn of(value: Option<&str>) -> Self {
        let Some(v) = value else {
            return Self::Absent;
        };
        if let Some(uuid) = uuid_of(v) {
            return Self::Uuid(uuid);
        }
        if let Ok(n) = v.parse::<u64>()
            && n.to_string() == v
        {
            return Self::Number(n);
        }
        Self::Text(v.into())
    }

    /// The value as the API types hold it.
    pub fn to_option(&self) -> Option<String> {
        match self {
            Self::Absent => None,
            Self::Uuid(bytes) => Some(uuid_text(bytes)),
            Self::Number(n) => Some(n.to_string()),
            Self::Text(t) => Some(t.to_string()),
        }
    }
}

/// Where the hyphens of a UUID's text are.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

fn uuid_of(v: &str) -> Option<[u8; 16]> {
    let b = v.as_bytes();
    if b.len() != 36 || HYPHENS.iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let mut digits = b.iter().filter(|&&c| c != b'-');
    let mut out = [0u8; 16];
    for byte in &mut out {
        let hi = lower_hex(*digits.next()?)?;
        let lo = lower_hex(*digits.next()?)?;
        *byte = hi << 4 | lo;
    }
    Some(out)
}

/// A lowercase hexadecimal digit's value (uppercase ones would not read
/// back the same).
fn lower_hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn uuid_text(bytes: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_reads_back_as_it_came() {
        for v in [
            "0b6f6f3e-58f4-4bdf-9c7c-5d2b1f2a9e01",
            "0B6F6F3E-58F4-4BDF-9C7C-5D2B1F2A9E01",
            "0b6f6f3e58f44bdf9c7c5d2b1f2a9e01xxxx",
            "0b6f6f3e-58f4-4bdf-9c7c-5d2b1f2a9e0g",
            "12345",
            "0",
            "007",
            "18446744073709551616",
            "uid-ip-1",
            "",
            "é-unicode-ßtuff-that-is-36-bytes-lo",
        ] {
            assert_eq!(
                CompactId::of(Some(v)).to_option().as_deref(),
                Some(v),
                "{v}"
            );
        }
        assert_eq!(CompactId::of(None).to_option(), None);
    }

    #[test]
    fn the_api_servers_shapes_take_no_allocation() {
        assert!(matches!(
            CompactId::of(Some("0b6f6f3e-58f4-4bdf-9c7c-5d2b1f2a9e01")),
            CompactId::Uuid(_)
        ));
        assert_eq!(CompactId::of(Some("98765")), CompactId::Number(98765));
        assert!(matches!(CompactId::of(Some("007")), CompactId::Text(_)));
        assert_eq!(std::mem::size_of::<CompactId>(), 24);
    }
}
