use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Lsn, TimelineId};
use crate::Error;

/// A WAL segment size: a power of two from 1 MiB to 1 GiB (`initdb --wal-segsize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct WalSegmentSize(u64);

impl WalSegmentSize {
    /// PostgreSQL's default, 16 MiB.
    pub const DEFAULT: WalSegmentSize = WalSegmentSize(16 * 1024 * 1024);
    /// The smallest allowed size, 1 MiB.
    pub const MIN: u64 = 1024 * 1024;
    /// The largest allowed size, 1 GiB.
    pub const MAX: u64 = 1024 * 1024 * 1024;

    /// Validates a size in bytes.
    pub fn new(bytes: u64) -> Result<Self, Error> {
        if bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes) {
            Ok(WalSegmentSize(bytes))
        } else {
            Err(Error::invalid(
                "WAL segment size",
                bytes.to_string(),
                "must be a power of two from 1 MiB to 1 GiB",
            ))
        }
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Segments per 4 GiB "log" (the middle 8 hex digits of a name): 256 for 16 MiB.
    pub fn segments_per_log(self) -> u64 {
        0x1_0000_0000 / self.0
    }
}

impl Default for WalSegmentSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<u64> for WalSegmentSize {
    type Error = Error;
    fn try_from(v: u64) -> Result<Self, Error> {
        WalSegmentSize::new(v)
    }
}

impl From<WalSegmentSize> for u64 {
    fn from(s: WalSegmentSize) -> u64 {
        s.0
    }
}

/// The name of a WAL segment: 24 upper-case hex digits `TTTTTTTTLLLLLLLLSSSSSSSS`
/// (timeline, `segno / n`, `segno % n` with `n = 2^32 / segment size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalSegmentName {
    /// The timeline.
    pub timeline: TimelineId,
    /// The "log" part: `segno / segments_per_log`.
    pub log: u32,
    /// The "seg" part: `segno % segments_per_log`.
    pub seg: u32,
}

impl WalSegmentName {
    /// The name of segment number `segno` on `timeline`.
    pub fn from_segno(timeline: TimelineId, segno: u64, size: WalSegmentSize) -> Option<Self> {
        let n = size.segments_per_log();
        let log = u32::try_from(segno / n).ok()?;
        let seg = (segno % n) as u32;
        Some(WalSegmentName { timeline, log, seg })
    }

    /// The segment holding `lsn` on `timeline`.
    pub fn containing(timeline: TimelineId, lsn: Lsn, size: WalSegmentSize) -> Self {
        let segno = lsn.segment_number(size);
        let n = size.segments_per_log();
        WalSegmentName {
            timeline,
            log: (segno / n) as u32,
            seg: (segno % n) as u32,
        }
    }

    /// The segment number for a segment size.
    pub fn segno(self, size: WalSegmentSize) -> u64 {
        u64::from(self.log) * size.segments_per_log() + u64::from(self.seg)
    }

    /// The LSN of the first byte of this segment.
    pub fn start_lsn(self, size: WalSegmentSize) -> Lsn {
        Lsn(self.segno(size) * size.bytes())
    }

    /// Checks that the "seg" part is possible for the segment size (`seg < 2^32 / size`).
    pub fn validate(self, size: WalSegmentSize) -> Result<(), Error> {
        if u64::from(self.seg) < size.segments_per_log() {
            Ok(())
        } else {
            Err(Error::invalid(
                "WAL segment name",
                self.to_string(),
                format!(
                    "segment part {:08X} is too large for {} MiB segments",
                    self.seg,
                    size.bytes() >> 20
                ),
            ))
        }
    }

    /// The next segment on the same timeline, or `None` at the end of the LSN space.
    pub fn next(self, size: WalSegmentSize) -> Option<Self> {
        Self::from_segno(self.timeline, self.segno(size).checked_add(1)?, size)
    }
}

impl fmt::Display for WalSegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:08X}{:08X}{:08X}",
            self.timeline.get(),
            self.log,
            self.seg
        )
    }
}

impl FromStr for WalSegmentName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |r: &str| Error::invalid("WAL segment name", s, r);
        if s.len() != 24 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("expected 24 hex digits"));
        }
        if s.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(bad("PostgreSQL writes WAL names in upper case"));
        }
        let timeline = TimelineId::from_hex(&s[0..8])?;
        let log = u32::from_str_radix(&s[8..16], 16).map_err(|e| bad(&e.to_string()))?;
        let seg = u32::from_str_radix(&s[16..24], 16).map_err(|e| bad(&e.to_string()))?;
        Ok(WalSegmentName { timeline, log, seg })
    }
}

/// Any file PostgreSQL hands to `archive_command` or asks of `restore_command`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFileName {
    /// A complete segment: `000000010000000000000007`.
    Segment(WalSegmentName),
    /// A partial segment left at a timeline switch: `000000010000000000000007.partial`.
    Partial(WalSegmentName),
    /// A timeline history file: `00000002.history`.
    History(TimelineId),
    /// A backup history file: `000000010000000000000007.00000028.backup`.
    Backup {
        /// The segment the backup started in.
        segment: WalSegmentName,
        /// The start offset within that segment.
        offset: u32,
    },
}

impl WalFileName {
    /// The timeline this file belongs to.
    pub fn timeline(&self) -> TimelineId {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) => s.timeline,
            WalFileName::Backup { segment, .. } => segment.timeline,
            WalFileName::History(t) => *t,
        }
    }

    /// The segment, for segments, partial segments and backup history files.
    pub fn segment(&self) -> Option<WalSegmentName> {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) => Some(*s),
            WalFileName::Backup { segment, .. } => Some(*segment),
            WalFileName::History(_) => None,
        }
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment(s) => write!(f, "{s}"),
            WalFileName::Partial(s) => write!(f, "{s}.partial"),
            WalFileName::History(t) => write!(f, "{}.history", t.to_hex()),
            WalFileName::Backup { segment, offset } => write!(f, "{segment}.{offset:08X}.backup"),
        }
    }
}

impl FromStr for WalFileName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(t) = s.strip_suffix(".history") {
            return Ok(WalFileName::History(TimelineId::from_hex(t)?));
        }
        if let Some(seg) = s.strip_suffix(".partial") {
            return Ok(WalFileName::Partial(seg.parse()?));
        }
        if let Some(rest) = s.strip_suffix(".backup") {
            let (seg, off) = rest.split_once('.').ok_or_else(|| {
                Error::invalid("WAL file name", s, "expected SEGMENT.OFFSET.backup")
            })?;
            if off.len() != 8 || !off.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::invalid(
                    "WAL file name",
                    s,
                    "offset must be 8 hex digits",
                ));
            }
            let offset = u32::from_str_radix(off, 16)
                .map_err(|e| Error::invalid("WAL file name", s, e.to_string()))?;
            return Ok(WalFileName::Backup {
                segment: seg.parse()?,
                offset,
            });
        }
        Ok(WalFileName::Segment(s.parse()?))
    }
}

impl Serialize for WalFileName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WalFileName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for WalSegmentName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WalSegmentName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_name_round_trip() {
        let n: WalSegmentName = "000000010000000000000007".parse().unwrap();
        assert_eq!(n.timeline, TimelineId::ONE);
        assert_eq!(n.segno(WalSegmentSize::DEFAULT), 7);
        assert_eq!(n.to_string(), "000000010000000000000007");
        let lsn: Lsn = "0/77DB500".parse().unwrap();
        assert_eq!(
            WalSegmentName::containing(TimelineId::ONE, lsn, WalSegmentSize::DEFAULT),
            n
        );
        let big: WalSegmentName = "0000000200000016000000B3".parse().unwrap();
        assert_eq!(
            big.start_lsn(WalSegmentSize::DEFAULT).to_string(),
            "16/B3000000"
        );
    }

    #[test]
    fn next_rolls_over_log() {
        let s = WalSegmentSize::DEFAULT;
        let n: WalSegmentName = "0000000100000000000000FF".parse().unwrap();
        assert_eq!(n.next(s).unwrap().to_string(), "000000010000000100000000");
        let s1g = WalSegmentSize::new(1 << 30).unwrap();
        let n: WalSegmentName = "000000010000000000000003".parse().unwrap();
        assert_eq!(n.next(s1g).unwrap().to_string(), "000000010000000100000000");
        let bad: WalSegmentName = "000000010000000000000004".parse().unwrap();
        assert!(bad.validate(s1g).is_err());
        assert!(bad.validate(s).is_ok());
    }

    #[test]
    fn segment_sizes() {
        assert!(WalSegmentSize::new(1 << 20).is_ok());
        assert!(WalSegmentSize::new(1 << 30).is_ok());
        assert!(WalSegmentSize::new(1 << 19).is_err());
        assert!(WalSegmentSize::new(1 << 31).is_err());
        assert!(WalSegmentSize::new(3 << 20).is_err());
    }

    #[test]
    fn other_file_names() {
        for s in [
            "00000002.history",
            "000000010000000000000007.partial",
            "000000010000000000000007.00000028.backup",
            "000000010000000000000007",
        ] {
            let f: WalFileName = s.parse().unwrap();
            assert_eq!(f.to_string(), s);
        }
        for bad in [
            "00000000.history",
            "0000000100000000000000070",
            "00000001000000000000000g",
            "000000010000000000000007.partial.partial",
            "000000010000000000000007.28.backup",
            "000000000000000000000007",
            "000000010000000000000007.ready",
            "",
        ] {
            assert!(bad.parse::<WalFileName>().is_err(), "{bad:?} accepted");
        }
    }
}
