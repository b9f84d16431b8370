//! Retention rules and the point-in-time-recovery window, free of I/O.
//!
//! A backup is expired only when it is outside **both** rules: it is not among the newest
//! `keep_full` backups, and it is older than `keep_newer_than`. The newest backup is always
//! kept. WAL older than the start segment of the oldest retained backup is expirable; WAL from
//! there on is kept, so every retained backup can reach consistency and replay to the newest
//! archived segment. Timeline history files are never expired.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::record::secs_to_time;
use crate::{BackupId, Lsn, TimelineId, WalFileName, WalSegmentName, WalSegmentSize};

/// Retention settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Keep at least this many newest backups (at least 1).
    pub keep_full: usize,
    /// Keep every backup that started less than this long ago.
    pub keep_newer_than: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            keep_full: 1,
            keep_newer_than: Duration::from_secs(30 * 86_400),
        }
    }
}

/// The facts about one backup the rules need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// Its id.
    pub id: BackupId,
    /// Timeline at start.
    pub timeline: TimelineId,
    /// Where replay starts.
    pub start_lsn: Lsn,
    /// Consistency point.
    pub stop_lsn: Lsn,
    /// Timeline at stop.
    pub stop_timeline: TimelineId,
    /// Start time (seconds since the epoch).
    pub start_time: u64,
    /// Stop time (seconds since the epoch).
    pub stop_time: u64,
}

/// Which backups to keep and which to expire, both sorted by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryPlan {
    /// Retained.
    pub keep: Vec<BackupId>,
    /// Expired.
    pub expire: Vec<BackupId>,
}

/// Applies `policy` at time `now`.
pub fn plan_expiry(
    backups: &[BackupSummary],
    policy: &RetentionPolicy,
    now: SystemTime,
) -> ExpiryPlan {
    let mut sorted: Vec<&BackupSummary> = backups.iter().collect();
    sorted.sort_by_key(|b| std::cmp::Reverse(b.id));
    let keep_n = policy.keep_full.max(1);
    let cutoff = now.checked_sub(policy.keep_newer_than);
    let mut plan = ExpiryPlan::default();
    for (rank, b) in sorted.iter().enumerate() {
        let recent = match cutoff {
            Some(c) => secs_to_time(b.start_time) >= c,
            None => true,
        };
        if rank < keep_n || recent {
            plan.keep.push(b.id);
        } else {
            plan.expire.push(b.id);
        }
    }
    plan.keep.sort();
    plan.expire.sort();
    plan
}

/// WAL files that may be deleted once only `retained` backups are kept: segments (and
/// `.partial` and `.backup` files) whose segment number is below the start segment of the
/// oldest retained backup. History files are always kept. Nothing is expirable when no
/// backup is retained.
pub fn expirable_wal(
    wal: &[WalFileName],
    retained: &[BackupSummary],
    seg_size: WalSegmentSize,
) -> Vec<WalFileName> {
    let Some(oldest) = retained.iter().min_by_key(|b| b.start_lsn) else {
        return Vec::new();
    };
    let keep_from = oldest.start_lsn.segment_number(seg_size);
    wal.iter()
        .filter(|w| match w {
            WalFileName::History(_) => false,
            other => other
                .segment()
                .is_some_and(|s| s.segno(seg_size) < keep_from),
        })
        .copied()
        .collect()
}

/// The recoverable window: from the consistency point of the oldest backup whose WAL is
/// complete, to the end of the WAL archived contiguously after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitrWindow {
    /// The backup the earliest point restores from.
    pub earliest_backup: BackupId,
    /// Earliest restorable LSN (that backup's stop LSN).
    pub earliest_lsn: Lsn,
    /// Earliest restorable time (that backup's stop time, seconds since the epoch).
    pub earliest_time: u64,
    /// The newest backup with complete WAL.
    pub latest_backup: BackupId,
    /// Latest restorable LSN: the end of the last contiguously archived segment after the
    /// newest restorable backup, on its timeline.
    pub latest_lsn: Lsn,
}

/// Whether every segment from `start` to `stop` on `tli` is in `have`.
fn range_complete(
    have: &BTreeSet<WalSegmentName>,
    tli: TimelineId,
    start: Lsn,
    stop: Lsn,
    seg_size: WalSegmentSize,
) -> bool {
    let (a, b) = (
        start.segment_number(seg_size),
        stop.segment_number(seg_size),
    );
    (a..=b).all(|n| WalSegmentName::from_segno(tli, n, seg_size).is_some_and(|s| have.contains(&s)))
}

/// Computes the window from the retained backups and the archived WAL (`None` when no backup
/// has its WAL range archived). Only full segments count.
pub fn pitr_window(
    backups: &[BackupSummary],
    wal: &[WalFileName],
    seg_size: WalSegmentSize,
) -> Option<PitrWindow> {
    let have: BTreeSet<WalSegmentName> = wal
        .iter()
        .filter_map(|w| match w {
            WalFileName::Segment(s) => Some(*s),
            _ => None,
        })
        .collect();
    let mut sorted: Vec<&BackupSummary> = backups.iter().collect();
    sorted.sort_by_key(|b| b.id);
    let ok: Vec<&&BackupSummary> = sorted
        .iter()
        .filter(|b| {
            b.timeline == b.stop_timeline
                && range_complete(&have, b.timeline, b.start_lsn, b.stop_lsn, seg_size)
        })
        .collect();
    let first = ok.first()?;
    let last = ok.last()?;
    let mut seg = WalSegmentName::containing(last.stop_timeline, last.stop_lsn, seg_size);
    while let Some(next) = seg.next(seg_size) {
        if !have.contains(&next) {
            break;
        }
        seg = next;
    }
    let latest_lsn = seg
        .next(seg_size)
        .map(|n| n.start_lsn(seg_size))
        .unwrap_or(last.stop_lsn);
    Some(PitrWindow {
        earliest_backup: first.id,
        earliest_lsn: first.stop_lsn,
        earliest_time: first.stop_time,
        latest_backup: last.id,
        latest_lsn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn b(secs: u64, start_seg: u64, stop_seg: u64) -> BackupSummary {
        BackupSummary {
            id: BackupId::from_time(secs_to_time(secs)),
            timeline: TimelineId::ONE,
            start_lsn: Lsn(start_seg * SEG + 40),
            stop_lsn: Lsn(stop_seg * SEG + 300),
            stop_timeline: TimelineId::ONE,
            start_time: secs,
            stop_time: secs + 5,
        }
    }

    fn seg(n: u64) -> WalFileName {
        WalFileName::Segment(
            WalSegmentName::from_segno(TimelineId::ONE, n, WalSegmentSize::DEFAULT).unwrap(),
        )
    }

    #[test]
    fn keeps_union_of_rules_and_newest() {
        let day = 86_400;
        let now = secs_to_time(100 * day);
        let bs = [
            b(10 * day, 2, 2),
            b(50 * day, 5, 5),
            b(90 * day, 9, 9),
            b(95 * day, 12, 12),
        ];
        let p = RetentionPolicy {
            keep_full: 1,
            keep_newer_than: Duration::from_secs(30 * day),
        };
        let plan = plan_expiry(&bs, &p, now);
        assert_eq!(plan.expire, vec![bs[0].id, bs[1].id]);
        let p = RetentionPolicy {
            keep_full: 3,
            keep_newer_than: Duration::ZERO,
        };
        assert_eq!(plan_expiry(&bs, &p, now).expire, vec![bs[0].id]);
        let p = RetentionPolicy {
            keep_full: 0,
            keep_newer_than: Duration::ZERO,
        };
        assert_eq!(plan_expiry(&bs, &p, now).keep, vec![bs[3].id]);
    }

    #[test]
    fn wal_expiry_keeps_oldest_retained_start() {
        let wal: Vec<_> = (1..12)
            .map(seg)
            .chain([WalFileName::History(TimelineId::new(2).unwrap())])
            .collect();
        let kept = [b(0, 5, 5), b(1, 9, 9)];
        let gone = expirable_wal(&wal, &kept, WalSegmentSize::DEFAULT);
        assert_eq!(gone, (1..5).map(seg).collect::<Vec<_>>());
        assert!(expirable_wal(&wal, &[], WalSegmentSize::DEFAULT).is_empty());
    }

    #[test]
    fn window_needs_complete_wal() {
        let bs = [b(0, 2, 3), b(1, 5, 5)];
        // Segment 3 missing: the first backup cannot reach consistency.
        let wal: Vec<_> = [2, 4, 5, 6, 7, 9].into_iter().map(seg).collect();
        let w = pitr_window(&bs, &wal, WalSegmentSize::DEFAULT).unwrap();
        assert_eq!(w.earliest_backup, bs[1].id);
        assert_eq!(w.latest_lsn, Lsn(8 * SEG));
        assert!(pitr_window(&bs, &[seg(2)], WalSegmentSize::DEFAULT).is_none());
    }
}
