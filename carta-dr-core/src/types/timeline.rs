use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A PostgreSQL timeline ID. Printed in decimal, as `pg_controldata` and
/// `IDENTIFY_SYSTEM` print it; [`TimelineId::to_hex`] gives the 8-digit form used in WAL file
/// names. Timeline 0 does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct TimelineId(u32);

impl TimelineId {
    /// Timeline 1, where every cluster starts.
    pub const ONE: TimelineId = TimelineId(1);

    /// A timeline from its number; `None` for 0.
    pub fn new(id: u32) -> Option<Self> {
        (id != 0).then_some(TimelineId(id))
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The 8 upper-case hex digits used in WAL and history file names.
    pub fn to_hex(self) -> String {
        format!("{:08X}", self.0)
    }

    /// Parses the 8 hex digits of a WAL or history file name.
    pub fn from_hex(s: &str) -> Result<Self, Error> {
        let bad = |r: &str| Error::invalid("timeline", s, r);
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("expected 8 hex digits"));
        }
        let v = u32::from_str_radix(s, 16).map_err(|e| bad(&e.to_string()))?;
        TimelineId::new(v).ok_or_else(|| bad("timeline 0 does not exist"))
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for TimelineId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let v: u32 = s
            .parse()
            .map_err(|_| Error::invalid("timeline", s, "expected a decimal number"))?;
        TimelineId::new(v).ok_or_else(|| Error::invalid("timeline", s, "timeline 0 does not exist"))
    }
}

impl TryFrom<u32> for TimelineId {
    type Error = Error;
    fn try_from(v: u32) -> Result<Self, Error> {
        TimelineId::new(v)
            .ok_or_else(|| Error::invalid("timeline", "0", "timeline 0 does not exist"))
    }
}

impl From<TimelineId> for u32 {
    fn from(t: TimelineId) -> u32 {
        t.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_and_hex() {
        let t: TimelineId = "26".parse().unwrap();
        assert_eq!(t.to_string(), "26");
        assert_eq!(t.to_hex(), "0000001A");
        assert_eq!(TimelineId::from_hex("0000001a").unwrap(), t);
        assert!("0".parse::<TimelineId>().is_err());
        assert!(TimelineId::from_hex("00000000").is_err());
        assert!(TimelineId::from_hex("1A").is_err());
    }
}
