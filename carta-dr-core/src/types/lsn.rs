use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::WalSegmentSize;
use crate::Error;

/// A WAL location (log sequence number), printed as PostgreSQL prints it: `16/B374D848`.
///
/// Parsing accepts upper- or lower-case hex and the zero-padded low half that PostgreSQL 18
/// prints (`16/0374D848`). Printing always uses PostgreSQL 15's `%X/%X`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid LSN `0/0`.
    pub const INVALID: Lsn = Lsn(0);

    /// The segment number holding this LSN for a given segment size.
    pub fn segment_number(self, seg_size: WalSegmentSize) -> u64 {
        self.0 / seg_size.bytes()
    }

    /// The byte offset of this LSN within its segment.
    pub fn segment_offset(self, seg_size: WalSegmentSize) -> u64 {
        self.0 % seg_size.bytes()
    }

    /// The first LSN of segment `segno`.
    pub fn from_segment(segno: u64, seg_size: WalSegmentSize) -> Option<Lsn> {
        segno.checked_mul(seg_size.bytes()).map(Lsn)
    }

    /// Adds a byte count, or `None` on overflow.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }

    /// Subtracts a byte count, or `None` on underflow.
    pub fn checked_sub(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_sub(bytes).map(Lsn)
    }

    /// The number of WAL bytes from `earlier` to `self`, zero when `earlier` is later.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Whether this is the invalid LSN `0/0`.
    pub fn is_invalid(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| Error::invalid("LSN", s, reason);
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| bad("expected HI/LO in hex"))?;
        let part = |p: &str| -> Result<u64, Error> {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("each half must be 1 to 8 hex digits"));
            }
            u64::from_str_radix(p, 16).map_err(|e| bad(&e.to_string()))
        };
        Ok(Lsn((part(hi)? << 32) | part(lo)?))
    }
}

impl std::ops::Add<u64> for Lsn {
    type Output = Lsn;
    /// Saturating addition: LSNs never wrap.
    fn add(self, rhs: u64) -> Lsn {
        Lsn(self.0.saturating_add(rhs))
    }
}

impl std::ops::Sub<Lsn> for Lsn {
    type Output = u64;
    /// The byte distance, saturating at zero.
    fn sub(self, rhs: Lsn) -> u64 {
        self.0.saturating_sub(rhs.0)
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_like_postgres() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::INVALID);
        assert_eq!("0/77db500".parse::<Lsn>().unwrap().to_string(), "0/77DB500");
        // PostgreSQL 18 zero-pads the low half.
        assert_eq!(
            "16/0374D848".parse::<Lsn>().unwrap().to_string(),
            "16/374D848"
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0/0/0",
            "G/0",
            "123456789/0",
            "0x1/0",
            " 0/0",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn segment_arithmetic() {
        let seg = WalSegmentSize::DEFAULT;
        let l: Lsn = "0/77DB500".parse().unwrap();
        assert_eq!(l.segment_number(seg), 7);
        assert_eq!(l.segment_offset(seg), 0x7DB500);
        assert_eq!(Lsn::from_segment(7, seg).unwrap().to_string(), "0/7000000");
        assert_eq!((l + 0x100).to_string(), "0/77DB600");
        assert_eq!(l - Lsn(0x77DB400), 0x100);
        assert_eq!(Lsn(5) - Lsn(9), 0);
    }

    #[test]
    fn serde_as_text() {
        let l: Lsn = "1/2".parse().unwrap();
        assert_eq!(serde_json::to_string(&l).unwrap(), "\"1/2\"");
        assert_eq!(serde_json::from_str::<Lsn>("\"1/2\"").unwrap(), l);
    }
}
