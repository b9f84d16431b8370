//! The store records the monitor reads, and where they live.
//!
//! | record | path in the store | written by |
//! |---|---|---|
//! | archived WAL | WAL segments under `wal/` (`wal/<TLI>/<LOG>/<SEGMENT>`; the newest by modification time counts) | `carta-dr wal-push` |
//! | backup | `backups/<BackupId>/backup.json`: the catalog's `carta_dr_core::catalog::BackupRecord`, of which the monitor reads the fields of [`BackupRecord`] | `carta-dr backup` |
//! | last verification | `status/verify.json`, a [`VerificationRecord`] | `carta-dr verify` (to come) |
//! | last recovery drill | `status/drill.json`, a [`DrillRecord`] | `carta-dr drill` (to come) |
//!
//! Records are JSON sealed in the envelope (`carta_dr_core::envelope`) like every object
//! carta-dr writes, so the monitor needs the repository key when the repository is encrypted.
//!
//! A record that does not exist exports nothing: no metric is invented for it (no fake
//! zeros). `carta_dr_records_found{record=...}` says, for every record kind, whether the
//! monitor found one, so an alert can tell "never ran" from "ran long ago".

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

/// What the monitor reads of a catalog record. Field names and encodings are those of
/// `carta_dr_core::catalog::BackupRecord`, whose JSON therefore parses as a `BackupRecord`
/// (other fields are ignored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The backup's id.
    pub id: BackupId,
    /// Full, incremental or logical.
    pub kind: BackupKind,
    /// When it started, in seconds since the Unix epoch.
    pub start_time: u64,
    /// When it finished (restorable from this point on), in seconds since the Unix epoch.
    pub stop_time: u64,
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
    /// When the run finished, in seconds since the Unix epoch.
    pub finished_at: u64,
    /// Its verdict.
    pub verdict: Verdict,
    /// How many findings it reported.
    pub findings: u64,
}

/// The result of the last recovery drill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// When the drill finished, in seconds since the Unix epoch.
    pub finished_at: u64,
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

    #[test]
    fn a_catalog_record_reads_as_a_backup_record() {
        // The field names and encodings of carta_dr_core::catalog::BackupRecord.
        let json = r#"{"format_version":1,"id":"20240101T000000Z","kind":"full","label":"x",
            "start_lsn":"0/2000028","stop_lsn":"0/2000100","start_time":1700000000,
            "stop_time":1700000060,"original_size":100,"stored_size":50,"files":[]}"#;
        let r: BackupRecord = serde_json::from_str(json).unwrap();
        assert_eq!(r.original_size, 100);
        assert_eq!(r.kind, BackupKind::Full);
        assert_eq!(r.stop_time, 1_700_000_060);
    }
}
