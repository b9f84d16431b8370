//! The store records the monitor reads, and where they live.
//!
//! | record | path in the store | written by |
//! |---|---|---|
//! | archived WAL | any object under `wal/` (the newest by modification time counts) | the WAL archiver |
//! | backup | `backups/<BackupId>/backup.json`, a [`BackupRecord`] (a subset of the catalog entry, so a full `CatalogEntry` document reads as one) | `carta-dr backup` |
//! | last verification | `status/verify.json`, a [`VerificationRecord`] | `carta-dr verify` |
//! | last recovery drill | `status/drill.json`, a [`DrillRecord`] | `carta-dr drill` |
//!
//! A record that does not exist exports nothing: no metric is invented for it (no fake
//! zeros). `carta_dr_records_found{record=...}` says, for every record kind, whether the
//! monitor found one, so an alert can tell "never ran" from "ran long ago".

use std::time::SystemTime;

use carta_dr_core::traits::{BackupKind, Verdict};
use carta_dr_core::BackupId;
use serde::{Deserialize, Serialize};

/// The prefix of archived WAL.
pub const WAL_PREFIX: &str = "wal";
/// The prefix of backups; each backup's record is `backups/<BackupId>/backup.json`.
pub const BACKUPS_PREFIX: &str = "backups";
/// The file name of a backup's record inside its directory.
pub const BACKUP_RECORD_NAME: &str = "backup.json";
/// Where the last verification's record is.
pub const VERIFY_RECORD_PATH: &str = "status/verify.json";
/// Where the last drill's record is.
pub const DRILL_RECORD_PATH: &str = "status/drill.json";

/// What the monitor reads of a backup. Field names and encodings are those of
/// `carta_dr_core::traits::CatalogEntry`, whose JSON therefore parses as a `BackupRecord`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The backup's id.
    pub id: BackupId,
    /// Full, incremental or logical.
    pub kind: BackupKind,
    /// When it started.
    pub start_time: SystemTime,
    /// When it finished (the backup is restorable from this point on).
    pub stop_time: SystemTime,
    /// Bytes before compression: the size of what was backed up.
    pub original_size: u64,
    /// Bytes newly written to the store.
    pub stored_size: u64,
}

/// The result of the last verification run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRecord {
    /// What was verified (a backup id, `wal`, ...).
    pub subject: String,
    /// When the run finished.
    pub finished_at: SystemTime,
    /// Its verdict.
    pub verdict: Verdict,
    /// How many findings it reported.
    pub findings: u64,
}

/// The result of the last recovery drill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// When the drill finished.
    pub finished_at: SystemTime,
    /// Whether the restored server came up and passed its checks.
    pub success: bool,
    /// Measured recovery time (restore start to serving), in seconds.
    pub rto_seconds: f64,
    /// Measured data loss window, in seconds, where known.
    pub rpo_seconds: Option<f64>,
}

/// The label value of a backup kind.
pub fn kind_label(kind: BackupKind) -> &'static str {
    match kind {
        BackupKind::Full => "full",
        BackupKind::Incremental => "incremental",
        BackupKind::Logical => "logical",
    }
}

/// The label value of a verdict.
pub fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Clean => "clean",
        Verdict::Corrupt => "corrupt",
        Verdict::Incomplete => "incomplete",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carta_dr_core::traits::CatalogEntry;
    use carta_dr_core::{Lsn, TimelineId};

    #[test]
    fn a_catalog_entry_reads_as_a_backup_record() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let entry = CatalogEntry {
            id: BackupId::from_time(t),
            kind: BackupKind::Full,
            label: "x".into(),
            start_lsn: Lsn(1),
            stop_lsn: Lsn(2),
            timeline: "1".parse::<TimelineId>().unwrap(),
            system_identifier: 7,
            pg_version: 150000,
            start_time: t,
            stop_time: t,
            original_size: 100,
            stored_size: 50,
            files: vec![],
        };
        let json = serde_json::to_string(&entry).unwrap();
        let r: BackupRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(r.original_size, 100);
        assert_eq!(r.kind, BackupKind::Full);
        assert_eq!(r.stop_time, t);
    }
}
