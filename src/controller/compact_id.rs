//! An object's uid or resourceVersion as a cache keeps it: 24 bytes in
//! place, no allocation for the shapes the API server gives them.
//!
//! A uid is a UUID in its 36-character text form and a resourceVersion
//! (etcd's) a decimal number; as `Box<str>`s each costs a pointer pair and
//! an allocation (48 bytes for a uid with the allocator's rounding). Both
//! are opaque to clients, so anything else is kept as it came; a value is
//! folded into 16 bytes or a number only when its text is exactly what
//! folding gives back, so every value reads back byte for byte.

use uuid::Uuid;

/// See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CompactId {
    #[default]
    Absent,
    /// A lowercase, hyphenated UUID.
    Uuid(Uuid),
    /// A decimal number without leading zeros.
    Number(u64),
    Text(Box<str>),
}

impl CompactId {
    pub fn of(value: Option<&str>) -> Self {
        let Some(v) = value else {
            return Self::Absent;
        };
        if let Ok(uuid) = Uuid::try_parse(v)
            && uuid.hyphenated().to_string() == v
        {
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
            Self::Uuid(uuid) => Some(uuid.hyphenated().to_string()),
            Self::Number(n) => Some(n.to_string()),
            Self::Text(t) => Some(t.to_string()),
        }
    }
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
