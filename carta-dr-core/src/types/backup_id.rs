use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::Error;

/// A backup identifier that sorts by time: `20261123T132400Z`, with an optional `-N` suffix
/// when two backups start within the same second (`20261123T132400Z-1`).
///
/// Both the lexical order of the text and [`Ord`] are chronological.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupId {
    /// Seconds since the Unix epoch (UTC).
    secs: u64,
    /// Disambiguator for backups started in the same second.
    seq: u32,
}

impl BackupId {
    /// The id for a backup started at `time`.
    pub fn from_time(time: SystemTime) -> Self {
        let secs = time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        BackupId { secs, seq: 0 }
    }

    /// The id for a backup started now.
    pub fn now() -> Self {
        Self::from_time(SystemTime::now())
    }

    /// The same second with another disambiguator.
    pub fn with_seq(self, seq: u32) -> Self {
        BackupId { seq, ..self }
    }

    /// The start time, to the second.
    pub fn time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.secs)
    }

    /// Seconds since the Unix epoch.
    pub fn unix_secs(self) -> u64 {
        self.secs
    }

    /// The disambiguator (0 for the first backup in a second).
    pub fn seq(self) -> u32 {
        self.seq
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day). Howard Hinnant's
/// `civil_from_days`.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The inverse of [`civil_from_days`].
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A Unix time (seconds, UTC) as `YYYY-MM-DD HH:MM:SS`, the form reports and logs print.
pub fn format_utc(unix_secs: u64) -> String {
    let (y, m, d) = civil_from_days((unix_secs / 86_400) as i64);
    let rem = unix_secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = (self.secs / 86_400) as i64;
        let rem = self.secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        )?;
        if self.seq > 0 {
            write!(f, "-{}", self.seq)?;
        }
        Ok(())
    }
}

impl FromStr for BackupId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |r: &str| Error::invalid("backup id", s, r);
        let (stamp, seq) = match s.split_once('-') {
            Some((a, b)) => {
                if b.is_empty() || !b.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(bad("suffix must be a number"));
                }
                let seq: u32 = b.parse().map_err(|_| bad("suffix must be a number"))?;
                if seq == 0 || b.starts_with('0') {
                    return Err(bad(
                        "suffix must be a positive number without leading zeros",
                    ));
                }
                (a, seq)
            }
            None => (s, 0),
        };
        // ASCII only, so that the fixed byte ranges below are character boundaries.
        if !stamp.is_ascii() {
            return Err(bad("expected YYYYMMDDTHHMMSSZ"));
        }
        let b = stamp.as_bytes();
        if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
            return Err(bad("expected YYYYMMDDTHHMMSSZ"));
        }
        let digits = |r: std::ops::Range<usize>| -> Result<u32, Error> {
            let t = &stamp[r];
            if !t.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad("expected digits"));
            }
            t.parse().map_err(|_| bad("expected digits"))
        };
        let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
        let (h, mi, se) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
            return Err(bad("date or time out of range"));
        }
        let days = days_from_civil(i64::from(y), mo, d);
        if civil_from_days(days) != (i64::from(y), mo, d) || days < 0 {
            return Err(bad("no such date"));
        }
        let secs = days as u64 * 86_400 + u64::from(h) * 3600 + u64::from(mi) * 60 + u64::from(se);
        Ok(BackupId { secs, seq })
    }
}

impl Serialize for BackupId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BackupId {
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
    fn prints_utc_stamp() {
        // 2026-11-23 13:24:00 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_795_440_240);
        let id = BackupId::from_time(t);
        assert_eq!(id.to_string(), "20261123T132400Z");
        assert_eq!("20261123T132400Z".parse::<BackupId>().unwrap(), id);
        assert_eq!(id.with_seq(2).to_string(), "20261123T132400Z-2");
        assert_eq!(
            "20261123T132400Z-2".parse::<BackupId>().unwrap(),
            id.with_seq(2)
        );
    }

    #[test]
    fn sorts_by_time_as_text_and_value() {
        let mut ids: Vec<BackupId> = (0..50u64)
            .map(|i| {
                BackupId::from_time(UNIX_EPOCH + Duration::from_secs(1_600_000_000 + i * 7919))
            })
            .collect();
        ids.push(ids[3].with_seq(1));
        let mut by_text: Vec<String> = ids.iter().map(ToString::to_string).collect();
        by_text.sort();
        ids.sort();
        assert_eq!(
            by_text,
            ids.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "",
            "20261123T132400",
            "20261323T132400Z",
            "20260230T132400Z",
            "20261123T246000Z",
            "20261123T132400Z-0",
            "20261123T132400Z-01",
            "2026112xT132400Z",
        ] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn formats_utc() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_795_440_240), "2026-11-23 13:24:00");
    }

    #[test]
    fn civil_round_trip() {
        for days in [-1000i64, 0, 59, 60, 365, 10_957, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
