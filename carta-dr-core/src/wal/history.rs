//! Timeline history files (`TTTTTTTT.history`) and backup history files
//! (`<segment>.<offset>.backup`).
//!
//! The rules follow PostgreSQL's readers: `readTimeLineHistory` in
//! `src/backend/access/transam/timeline.c` for history files, and the text
//! `do_pg_backup_stop` writes (`xlog.c`) for backup history files.

use serde::{Deserialize, Serialize};

use crate::{Error, Lsn, Result, TimelineId, WalSegmentName, WalSegmentSize};

/// One line of a timeline history file: the parent timeline and where it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub parent: TimelineId,
    /// The LSN where the ancestor ended (the switch point).
    pub switch_lsn: Lsn,
    /// Free text (`no recovery target specified`, `before transaction 123`...).
    pub reason: String,
}

/// Parses the history file of `timeline`. Like `readTimeLineHistory`: leading whitespace,
/// blank lines and `#` comments are skipped; each entry is `<tli>\t<lsn>\t<reason>`; the
/// timelines increase strictly and stay below `timeline`. A history file with no entry, or
/// with non-UTF-8 outside the reason, is refused. Errors name the file and line.
pub fn parse_history(timeline: TimelineId, data: &[u8]) -> Result<Vec<HistoryEntry>> {
    let file = format!("{}.history", timeline.to_hex());
    let mut out: Vec<HistoryEntry> = Vec::new();
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let bad = |what: &str| Error::invalid_input(format!("{file}, line {line_no}: {what}"));
        let line = String::from_utf8_lossy(raw);
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let digits = line.bytes().take_while(u8::is_ascii_digit).count();
        let (tli_text, rest) = line.split_at(digits);
        let tli: u32 = tli_text
            .parse()
            .map_err(|_| bad("expected a timeline number"))?;
        let parent = TimelineId::new(tli).ok_or_else(|| bad("timeline 0 does not exist"))?;
        let rest = rest.trim_start_matches([' ', '\t']);
        let lsn_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_hexdigit() || *b == b'/')
            .count();
        let (lsn_text, reason) = rest.split_at(lsn_len);
        let switch_lsn: Lsn = lsn_text
            .parse()
            .map_err(|_| bad("expected a switch-point LSN after the timeline"))?;
        if let Some(prev) = out.last() {
            if parent <= prev.parent {
                return Err(bad("timeline IDs must be in increasing sequence"));
            }
        }
        if parent >= timeline {
            return Err(bad(
                "timeline IDs must be less than the file's own timeline",
            ));
        }
        out.push(HistoryEntry {
            parent,
            switch_lsn,
            reason: reason.trim().to_string(),
        });
    }
    if out.is_empty() {
        return Err(Error::invalid_input(format!(
            "{file}: no history entries (every timeline after 1 has at least one)"
        )));
    }
    Ok(out)
}

/// What a backup history file (`<segment>.<offset>.backup`) records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHistory {
    /// `START WAL LOCATION`.
    pub start_lsn: Lsn,
    /// The segment named on the `START WAL LOCATION` line.
    pub start_segment: WalSegmentName,
    /// `STOP WAL LOCATION`.
    pub stop_lsn: Lsn,
    /// `CHECKPOINT LOCATION`, when present.
    pub checkpoint_lsn: Option<Lsn>,
    /// `LABEL`, when present.
    pub label: Option<String>,
    /// `STOP TIMELINE`, when present.
    pub stop_timeline: Option<TimelineId>,
}

/// Parses a backup history file named `<segment>.<offset>.backup` and checks it against its
/// name: the `START WAL LOCATION` line must name the same segment (log and seg), and when
/// the segment size is known its start LSN must lie at `offset` in that segment. When a
/// `STOP TIMELINE` line is present, it must be the name's timeline.
pub fn parse_backup_history(
    segment: &WalSegmentName,
    offset: u32,
    seg_size: Option<WalSegmentSize>,
    data: &[u8],
) -> Result<BackupHistory> {
    let file = format!("{segment}.{offset:08X}.backup");
    let bad = |what: String| Error::invalid_input(format!("{file}: {what}"));
    let text = String::from_utf8_lossy(data);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
            .map(str::trim)
    };
    // "0/2000028 (file 000000010000000000000002)"
    let location = |key: &str| -> Result<(Lsn, Option<WalSegmentName>)> {
        let v = field(key).ok_or_else(|| bad(format!("no {key} line")))?;
        let (lsn, rest) = v.split_once(' ').unwrap_or((v, ""));
        let lsn: Lsn = lsn
            .parse()
            .map_err(|_| bad(format!("{key}: {lsn:?} is not an LSN")))?;
        let seg = match rest.trim().strip_prefix("(file ") {
            Some(r) => Some(
                r.trim_end_matches(')')
                    .parse::<WalSegmentName>()
                    .map_err(|e| bad(format!("{key}: {e}")))?,
            ),
            None => None,
        };
        Ok((lsn, seg))
    };
    let (start_lsn, start_file) = location("START WAL LOCATION")?;
    let start_segment =
        start_file.ok_or_else(|| bad("START WAL LOCATION names no segment".into()))?;
    let (stop_lsn, _) = location("STOP WAL LOCATION")?;
    let checkpoint_lsn = match field("CHECKPOINT LOCATION") {
        Some(v) => Some(
            v.parse()
                .map_err(|_| bad(format!("CHECKPOINT LOCATION {v:?} is not an LSN")))?,
        ),
        None => None,
    };
    let stop_timeline = match field("STOP TIMELINE") {
        Some(v) => Some(
            v.parse::<TimelineId>()
                .map_err(|e| bad(format!("STOP TIMELINE: {e}")))?,
        ),
        None => None,
    };
    if (start_segment.log, start_segment.seg) != (segment.log, segment.seg) {
        return Err(bad(format!(
            "START WAL LOCATION is in segment {start_segment}, but the file name says {segment}"
        )));
    }
    if stop_lsn < start_lsn {
        return Err(bad(format!(
            "STOP WAL LOCATION {stop_lsn} is before START WAL LOCATION {start_lsn}"
        )));
    }
    if let Some(size) = seg_size {
        if start_lsn.segment_offset(size) != u64::from(offset)
            || start_lsn.segment_number(size) != start_segment.segno(size)
        {
            return Err(bad(format!(
                "START WAL LOCATION {start_lsn} is not at offset {offset:08X} of {segment}"
            )));
        }
    }
    if let Some(t) = stop_timeline {
        if t != segment.timeline {
            return Err(bad(format!(
                "STOP TIMELINE {t} differs from the file name's timeline {}",
                segment.timeline
            )));
        }
    }
    Ok(BackupHistory {
        start_lsn,
        start_segment,
        stop_lsn,
        checkpoint_lsn,
        label: field("LABEL").map(str::to_string),
        stop_timeline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_as_postgres_writes_it() {
        let t3 = TimelineId::new(3).unwrap();
        let text =
            b"1\t0/4000000\tno recovery target specified\n\n2\t0/60000A0\tbefore transaction 745\n";
        let h = parse_history(t3, text).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].parent, TimelineId::ONE);
        assert_eq!(h[0].switch_lsn.to_string(), "0/4000000");
        assert_eq!(h[0].reason, "no recovery target specified");
        assert_eq!(h[1].switch_lsn.to_string(), "0/60000A0");
        // Comments and leading whitespace are skipped.
        assert!(parse_history(t3, b"# c\n  1\t0/1\tx\n").is_ok());
    }

    #[test]
    fn history_rejects_bad_files() {
        let t2 = TimelineId::new(2).unwrap();
        for bad in [
            &b""[..],
            b"\n# only comments\n",
            b"x\t0/1\tr\n",
            b"1\tzz\tr\n",
            b"2\t0/1\tr\n",
            b"0\t0/1\tr\n",
            b"1\t0/1\tr\n1\t0/2\tr\n",
            b"\xff\xfe",
        ] {
            let e = parse_history(t2, bad);
            assert!(e.is_err(), "{bad:?} accepted");
        }
        let e = parse_history(t2, b"1\t0/1\tr\n3\t0/2\tr\n").unwrap_err();
        assert!(e.to_string().contains("00000002.history, line 2"), "{e}");
    }

    const BACKUP: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
STOP WAL LOCATION: 0/2000138 (file 000000010000000000000002)
CHECKPOINT LOCATION: 0/2000098
BACKUP METHOD: streamed
BACKUP FROM: primary
START TIME: 2026-11-23 12:17:18 UTC
LABEL: testlabel
START TIMELINE: 1
STOP TIME: 2026-11-23 12:17:18 UTC
STOP TIMELINE: 1
";

    #[test]
    fn backup_history() {
        let seg: WalSegmentName = "000000010000000000000002".parse().unwrap();
        let size = Some(WalSegmentSize::DEFAULT);
        let b = parse_backup_history(&seg, 0x28, size, BACKUP.as_bytes()).unwrap();
        assert_eq!(b.start_lsn.to_string(), "0/2000028");
        assert_eq!(b.stop_lsn.to_string(), "0/2000138");
        assert_eq!(b.label.as_deref(), Some("testlabel"));
        assert_eq!(b.stop_timeline, Some(TimelineId::ONE));
        // Wrong offset, wrong segment, missing lines, garbage.
        assert!(parse_backup_history(&seg, 0x30, size, BACKUP.as_bytes()).is_err());
        let seg3: WalSegmentName = "000000010000000000000003".parse().unwrap();
        assert!(parse_backup_history(&seg3, 0x28, size, BACKUP.as_bytes()).is_err());
        let seg_tl2: WalSegmentName = "000000020000000000000002".parse().unwrap();
        assert!(parse_backup_history(&seg_tl2, 0x28, size, BACKUP.as_bytes()).is_err());
        let no_stop: String = BACKUP
            .lines()
            .filter(|l| !l.starts_with("STOP WAL"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(parse_backup_history(&seg, 0x28, size, no_stop.as_bytes()).is_err());
        assert!(parse_backup_history(&seg, 0x28, size, b"\x00\xff garbage").is_err());
        assert!(parse_backup_history(&seg, 0x28, None, BACKUP.as_bytes()).is_ok());
    }
}
