//! The drill's report: phases measured on one monotonic clock, RPO, checks, verdict, and its
//! Markdown rendering.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What the drill rehearses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// The primary is killed (and its data directory removed); restore to the end of the
    /// archive.
    Crash,
    /// An accidental `DELETE`; point-in-time recovery to just before it.
    Delete,
    /// The newest backup is corrupt in the store; the restore must notice and fall back to the
    /// previous one plus a longer WAL replay.
    CorruptLatest,
}

impl Scenario {
    /// The name as typed on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Crash => "crash",
            Scenario::Delete => "delete",
            Scenario::CorruptLatest => "corrupt-latest",
        }
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "crash" => Ok(Scenario::Crash),
            "delete" => Ok(Scenario::Delete),
            "corrupt-latest" => Ok(Scenario::CorruptLatest),
            _ => Err(format!(
                "unknown scenario {s:?} (crash, delete, corrupt-latest)"
            )),
        }
    }
}

/// Parses `90`, `90s`, `10m`, `1h`, `1h30m`, `1.5m` into a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0f64;
    let mut num = String::new();
    let mut seen_unit = false;
    for c in s.chars() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            'd' => 86400.0,
            _ => return Err(format!("{s:?}: unknown unit {c:?} (use s, m, h, d)")),
        };
        let v: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration like 30s, 10m, 1h"))?;
        total += v * unit;
        num.clear();
        seen_unit = true;
    }
    if !num.is_empty() {
        let v: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration like 30s, 10m, 1h"))?;
        total += v;
    } else if !seen_unit {
        return Err(format!("{s:?} is not a duration"));
    }
    if !total.is_finite() || total < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Boundaries on one monotonic clock, from the declared disaster on. Phase lengths are
/// differences of consecutive boundaries rounded to milliseconds from the origin, so they
/// always add up to the total exactly.
#[derive(Debug)]
pub struct Stopwatch {
    origin: Instant,
    marks: Vec<(String, u64)>,
    events: Vec<TimelineEvent>,
}

impl Stopwatch {
    /// Starts at `origin` (the declared disaster).
    pub fn new(origin: Instant) -> Self {
        Stopwatch {
            origin,
            marks: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Milliseconds from the origin to `at` (negative before it).
    pub fn offset_ms(&self, at: Instant) -> i64 {
        match at.checked_duration_since(self.origin) {
            Some(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            None => -i64::try_from(self.origin.duration_since(at).as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Ends the phase `name` at `at` (the next phase starts there).
    pub fn end_phase(&mut self, name: &str, at: Instant) {
        let ms = u64::try_from(self.offset_ms(at).max(0)).unwrap_or(0);
        let prev = self.marks.last().map(|m| m.1).unwrap_or(0);
        self.marks.push((name.to_string(), ms.max(prev)));
    }

    /// Records a timeline event at `at`.
    pub fn event(&mut self, at: Instant, what: impl Into<String>) {
        let offset = self.offset_ms(at) as f64 / 1000.0;
        self.events.push(TimelineEvent {
            offset_seconds: offset,
            what: what.into(),
        });
    }

    /// The phases so far.
    pub fn phases(&self) -> Vec<Phase> {
        let mut prev = 0u64;
        self.marks
            .iter()
            .map(|(name, ms)| {
                let p = Phase {
                    name: name.clone(),
                    start_seconds: prev as f64 / 1000.0,
                    seconds: (ms - prev) as f64 / 1000.0,
                    millis: ms - prev,
                };
                prev = *ms;
                p
            })
            .collect()
    }

    /// The total, in milliseconds: the last boundary.
    pub fn total_ms(&self) -> u64 {
        self.marks.last().map(|m| m.1).unwrap_or(0)
    }

    /// The timeline, sorted by time.
    pub fn events(&self) -> Vec<TimelineEvent> {
        let mut e = self.events.clone();
        e.sort_by(|a, b| a.offset_seconds.total_cmp(&b.offset_seconds));
        e
    }
}

/// One phase of the recovery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// `detect`, `fetch_base`, `replay_wal`, `start` or `verify`.
    pub name: String,
    /// Seconds from the declared disaster to the phase's start.
    pub start_seconds: f64,
    /// Its length in seconds.
    pub seconds: f64,
    /// Its length in milliseconds (the exact figure; the phases' millis add up to the total).
    pub millis: u64,
}

/// One line of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// Seconds from the declared disaster (negative: before it).
    pub offset_seconds: f64,
    /// What happened.
    pub what: String,
}

/// Recovery point: what the restore lost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rpo {
    /// Heartbeats the primary acknowledged.
    pub heartbeats_acked: u64,
    /// The last acknowledged heartbeat's sequence number.
    pub last_acked_seq: Option<i64>,
    /// Its commit time (Unix seconds, server clock).
    pub last_acked_at: Option<f64>,
    /// The last heartbeat present after the restore.
    pub last_restored_seq: Option<i64>,
    /// Its commit time (Unix seconds, server clock).
    pub last_restored_at: Option<f64>,
    /// Acknowledged heartbeats missing after the restore: transactions lost.
    pub transactions_lost: u64,
    /// Commit time of the last acknowledged heartbeat minus that of the last one restored.
    pub seconds: f64,
    /// `pg_current_wal_lsn()` just before the disaster.
    pub wal_lsn_at_disaster: Option<String>,
    /// The end of the newest archived WAL segment at the disaster.
    pub archive_end_lsn: Option<String>,
    /// WAL bytes written but not archived when the disaster struck.
    pub wal_bytes_unarchived: Option<u64>,
    /// `pg_stat_archiver.last_archived_wal` just before the disaster.
    pub last_archived_wal: Option<String>,
    /// `pg_stat_archiver.failed_count` just before the disaster.
    pub archiver_failed_count: Option<i64>,
}

/// How the `delete` scenario aims its point-in-time recovery (`--pitr-by`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PitrBy {
    /// `recovery_target_xid` = the `DELETE`'s transaction, exclusive: nothing before it is lost.
    #[default]
    Xid,
    /// `recovery_target_time` = `clock_timestamp()` read just before the `DELETE`, exclusive:
    /// commits between that instant and the `DELETE` are lost.
    Time,
    /// `recovery_target_lsn` = `pg_current_wal_insert_lsn()` read just before the `DELETE`,
    /// exclusive: WAL written between that point and the `DELETE` is lost.
    Lsn,
}

impl PitrBy {
    /// The option's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PitrBy::Xid => "xid",
            PitrBy::Time => "time",
            PitrBy::Lsn => "lsn",
        }
    }
}

impl std::str::FromStr for PitrBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "xid" => Ok(PitrBy::Xid),
            "time" => Ok(PitrBy::Time),
            "lsn" => Ok(PitrBy::Lsn),
            _ => Err(format!(
                "unknown recovery target kind {s:?} (time, xid, lsn)"
            )),
        }
    }
}

/// What a point-in-time recovery (scenario `delete`) brought back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PitrOutcome {
    /// The transaction id of the accidental `DELETE`.
    pub target_xid: u64,
    /// The recovery target used, as configured (`recovery_target_xid = '…'`, exclusive);
    /// empty in reports written before targets other than the xid existed.
    #[serde(default)]
    pub target: String,
    /// Seconds from the declared disaster to the `DELETE`'s commit (negative).
    pub delete_at_seconds: f64,
    /// Rows the `DELETE` removed.
    pub rows_deleted: u64,
    /// Of those, rows present after the restore.
    pub rows_recovered: u64,
    /// Heartbeats acknowledged before the `DELETE` committed but missing after the restore
    /// (writes lost between the recovery target and the `DELETE`).
    pub writes_lost_before_delete: u64,
    /// Heartbeats acknowledged after the `DELETE` that the recovery to before it discards.
    pub writes_discarded_after_delete: u64,
}

impl PitrOutcome {
    /// The recovery target in words.
    pub fn target_label(&self) -> String {
        if self.target.is_empty() {
            format!("xid {}", self.target_xid)
        } else {
            self.target.clone()
        }
    }
}

/// A fallback from a damaged backup to an older one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fallback {
    /// The backup that failed.
    pub failed_backup: String,
    /// Why (the checksum failure, with the object).
    pub error: String,
    /// The backup restored instead.
    pub used_backup: String,
    /// The object the drill damaged, when it did (scenario `corrupt-latest`).
    pub corrupted_object: Option<String>,
}

/// One verification check on the restored server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Its name.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Detail (counts, tool output).
    pub detail: String,
    /// How long it took, in milliseconds (part of the `verify` phase).
    #[serde(default)]
    pub millis: u64,
}

/// What the archiving settings mean for the RPO.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cadence {
    /// `archive_timeout` in seconds (0: off).
    pub archive_timeout_s: u64,
    /// `checkpoint_timeout` in seconds.
    pub checkpoint_timeout_s: u64,
    /// `wal_segment_size` in bytes.
    pub wal_segment_size: u64,
    /// The consequence, in words.
    pub note: String,
}

impl Cadence {
    /// Describes the worst-case RPO these settings allow.
    pub fn explain(archive_timeout_s: u64, checkpoint_timeout_s: u64, seg: u64) -> Cadence {
        let mib = seg / (1024 * 1024);
        let note = if archive_timeout_s == 0 {
            format!(
                "archive_timeout is off: a segment is archived only once {mib} MiB of WAL fill \
                 it, so on a quiet server the WAL since the last switch (hours of commits) can \
                 be lost; set archive_timeout (for example 60s) to bound the RPO. \
                 checkpoint_timeout = {checkpoint_timeout_s}s does not force a segment switch."
            )
        } else {
            format!(
                "archive_timeout = {archive_timeout_s}s: WAL reaches the archive at least every \
                 {archive_timeout_s}s (sooner when {mib} MiB fill a segment), so a lost server \
                 loses at most about {archive_timeout_s}s of commits plus the archiving time. \
                 checkpoint_timeout = {checkpoint_timeout_s}s bounds crash-recovery replay, not \
                 the RPO."
            )
        };
        Cadence {
            archive_timeout_s,
            checkpoint_timeout_s,
            wal_segment_size: seg,
            note,
        }
    }
}

/// Targets and the verdict against them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The RTO target in seconds.
    pub rto_target_seconds: f64,
    /// The RPO target in seconds.
    pub rpo_target_seconds: f64,
    /// Measured RTO within target.
    pub rto_met: bool,
    /// Measured RPO within target.
    pub rpo_met: bool,
    /// Every verification check passed.
    pub checks_passed: bool,
    /// All three.
    pub pass: bool,
}

/// The record of one restore drill, as kept in the store and rendered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// The drill id (sorts by time).
    pub id: String,
    /// `restore`.
    pub kind: String,
    /// The scenario name.
    pub scenario: String,
    /// Wall-clock start (Unix seconds).
    pub started_at: u64,
    /// The target: `embedded` or the redacted connection string.
    pub target: String,
    /// The backup restored.
    pub backup_used: String,
    /// Set when the newest backup failed and an older one was used.
    pub fallback: Option<Fallback>,
    /// The phases (they add up to `rto_seconds`).
    pub phases: Vec<Phase>,
    /// Declared disaster to a verified server that accepts writes.
    pub rto_seconds: f64,
    /// The same, in milliseconds.
    pub rto_millis: u64,
    /// The recovery point.
    pub rpo: Rpo,
    /// Scenario `delete`: the point-in-time recovery.
    pub pitr: Option<PitrOutcome>,
    /// Verification checks.
    pub checks: Vec<Check>,
    /// Archiving cadence and its RPO consequence.
    pub cadence: Cadence,
    /// Verdict.
    pub verdict: Verdict,
    /// Bytes restored from the store.
    pub restored_bytes: u64,
    /// WAL segments the restored server fetched from the archive.
    pub wal_segments_fetched: u64,
    /// The timeline.
    pub timeline: Vec<TimelineEvent>,
    /// The exact commands run.
    pub commands: Vec<String>,
    /// The heartbeat writer's log (one JSON line per acknowledged heartbeat), when kept.
    pub writer_log: Option<String>,
}

impl DrillReport {
    /// Fills the verdict from the measurements and the targets.
    pub fn judge(&mut self, rto: Duration, rpo: Duration) {
        let checks_passed = !self.checks.is_empty() && self.checks.iter().all(|c| c.ok);
        let rto_met = self.rto_seconds <= rto.as_secs_f64();
        let rpo_met = self.rpo.seconds <= rpo.as_secs_f64();
        self.verdict = Verdict {
            rto_target_seconds: rto.as_secs_f64(),
            rpo_target_seconds: rpo.as_secs_f64(),
            rto_met,
            rpo_met,
            checks_passed,
            pass: rto_met && rpo_met && checks_passed,
        };
    }

    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "restore drill {} ({}, target {}): {}",
            self.id,
            self.scenario,
            self.target,
            if self.verdict.pass { "PASS" } else { "FAIL" }
        );
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|p| format!("{} {:.2}s", p.name, p.seconds))
            .collect();
        let _ = writeln!(
            s,
            "  RTO {:.2}s (target {}s, {}): {}",
            self.rto_seconds,
            self.verdict.rto_target_seconds,
            met(self.verdict.rto_met),
            phases.join(" + ")
        );
        let _ = writeln!(
            s,
            "  RPO {:.2}s, {} transaction(s) lost (target {}s, {}); {} WAL byte(s) unarchived at the disaster",
            self.rpo.seconds,
            self.rpo.transactions_lost,
            self.verdict.rpo_target_seconds,
            met(self.verdict.rpo_met),
            self.rpo
                .wal_bytes_unarchived
                .map(|b| b.to_string())
                .unwrap_or_else(|| "?".into())
        );
        let _ = writeln!(s, "  backup restored: {}", self.backup_used);
        if let Some(f) = &self.fallback {
            let _ = writeln!(
                s,
                "  FALLBACK: backup {} failed verification ({}); restored {} with a longer WAL replay",
                f.failed_backup, f.error, f.used_backup
            );
        }
        if let Some(p) = &self.pitr {
            let _ = writeln!(
                s,
                "  PITR to before {}: {}/{} deleted rows recovered; {} write(s) before the DELETE lost, {} after it discarded",
                p.target_label(),
                p.rows_recovered,
                p.rows_deleted,
                p.writes_lost_before_delete,
                p.writes_discarded_after_delete
            );
        }
        for c in &self.checks {
            let _ = writeln!(
                s,
                "  check {:<14} {} {:>7.2}s {}",
                c.name,
                if c.ok { "ok  " } else { "FAIL" },
                c.millis as f64 / 1000.0,
                c.detail
            );
        }
        let _ = writeln!(s, "  cadence: {}", self.cadence.note);
        s
    }

    /// The full Markdown report.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Restore drill {}\n", self.id);
        let _ = writeln!(
            s,
            "* Scenario: `{}`\n* Target: `{}`\n* Started: {} (Unix {})\n* Backup restored: `{}`\n* Verdict: **{}**\n",
            self.scenario,
            self.target,
            crate::drill::history::format_utc(self.started_at),
            self.started_at,
            self.backup_used,
            if self.verdict.pass { "PASS" } else { "FAIL" }
        );
        let _ = writeln!(s, "## Verdict\n");
        let _ = writeln!(
            s,
            "| measure | measured | target | met |\n|---|---|---|---|"
        );
        let _ = writeln!(
            s,
            "| RTO | {:.3} s | {} s | {} |",
            self.rto_seconds,
            self.verdict.rto_target_seconds,
            met(self.verdict.rto_met)
        );
        let _ = writeln!(
            s,
            "| RPO | {:.3} s ({} transactions lost) | {} s | {} |",
            self.rpo.seconds,
            self.rpo.transactions_lost,
            self.verdict.rpo_target_seconds,
            met(self.verdict.rpo_met)
        );
        let _ = writeln!(
            s,
            "| checks | {} of {} passed | all | {} |\n",
            self.checks.iter().filter(|c| c.ok).count(),
            self.checks.len(),
            met(self.verdict.checks_passed)
        );
        let _ = writeln!(s, "## RTO phases\n");
        let _ = writeln!(s, "| phase | starts at (s) | seconds |\n|---|---:|---:|");
        for p in &self.phases {
            let _ = writeln!(
                s,
                "| {} | {:.3} | {:.3} |",
                p.name, p.start_seconds, p.seconds
            );
        }
        let _ = writeln!(s, "| **total** | | **{:.3}** |\n", self.rto_seconds);
        let _ = writeln!(s, "## RPO\n");
        let r = &self.rpo;
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "* Heartbeats acknowledged by the primary: {} (last seq {})\n* Last heartbeat after restore: seq {}\n* Transactions lost: {}\n* Seconds of commits lost: {:.3}\n* WAL LSN at the disaster: {}; archive ended at {}; unarchived WAL: {} bytes\n* pg_stat_archiver: last archived {}, failed count {}\n",
            r.heartbeats_acked,
            r.last_acked_seq.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            r.last_restored_seq.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            r.transactions_lost,
            r.seconds,
            opt(&r.wal_lsn_at_disaster),
            opt(&r.archive_end_lsn),
            r.wal_bytes_unarchived.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
            opt(&r.last_archived_wal),
            r.archiver_failed_count.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
        );
        if let Some(p) = &self.pitr {
            let _ = writeln!(
                s,
                "## Point-in-time recovery\n\n* Target: before {} (the DELETE is transaction {}, at {:.3} s)\n* Rows deleted: {}; recovered: {}\n* Writes lost between the target and the DELETE: {}\n* Writes after the DELETE discarded by the recovery: {}\n",
                p.target_label(),
                p.target_xid,
                p.delete_at_seconds,
                p.rows_deleted,
                p.rows_recovered,
                p.writes_lost_before_delete,
                p.writes_discarded_after_delete
            );
        }
        if let Some(f) = &self.fallback {
            let _ = writeln!(
                s,
                "## Fallback\n\nBackup `{}` failed: {}\n\nRestored `{}` instead, with a longer WAL replay.{}\n",
                f.failed_backup,
                f.error,
                f.used_backup,
                f.corrupted_object
                    .as_ref()
                    .map(|o| format!(" The drill had damaged `{o}`."))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            s,
            "## Checks\n\n| check | result | seconds | detail |\n|---|---|---:|---|"
        );
        for c in &self.checks {
            let _ = writeln!(
                s,
                "| {} | {} | {:.3} | {} |",
                c.name,
                if c.ok { "ok" } else { "FAIL" },
                c.millis as f64 / 1000.0,
                c.detail.replace('|', "\\|").replace('\n', " ")
            );
        }
        let _ = writeln!(s, "\n## Archiving cadence\n\n{}\n", self.cadence.note);
        let _ = writeln!(s, "## Timeline\n\n| t (s) | event |\n|---:|---|");
        for e in &self.timeline {
            let _ = writeln!(s, "| {:.3} | {} |", e.offset_seconds, e.what);
        }
        let _ = writeln!(s, "\n## Commands\n\n```sh");
        for c in &self.commands {
            let _ = writeln!(s, "{c}");
        }
        let _ = writeln!(s, "```");
        s
    }
}

fn met(b: bool) -> &'static str {
    if b {
        "met"
    } else {
        "MISSED"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn phases_add_up_to_the_total() {
        let t0 = Instant::now();
        let mut sw = Stopwatch::new(t0);
        let micros = [1234u64, 999_999, 1, 500_500, 77_777];
        let mut at = t0;
        for (i, m) in micros.iter().enumerate() {
            at += Duration::from_micros(*m);
            sw.end_phase(&format!("p{i}"), at);
        }
        let sum: u64 = sw.phases().iter().map(|p| p.millis).sum();
        assert_eq!(sum, sw.total_ms());
        assert_eq!(sw.total_ms(), u64::try_from((at - t0).as_millis()).unwrap());
    }

    #[test]
    fn scenarios_round_trip() {
        for s in [Scenario::Crash, Scenario::Delete, Scenario::CorruptLatest] {
            assert_eq!(s.as_str().parse::<Scenario>(), Ok(s));
        }
    }
}
