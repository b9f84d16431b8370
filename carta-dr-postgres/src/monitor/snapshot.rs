//! What one poll observed: plain data, no I/O. The exporter turns a [`Snapshot`] into series.

use std::time::{Duration, SystemTime};

use carta_dr_core::Lsn;

use super::records::{BackupRecord, DrillRecord, VerificationRecord};

/// The outcome of probing one target.
#[derive(Clone, Debug)]
pub enum Probe<T> {
    /// The target answered.
    Up {
        /// What it said.
        status: T,
        /// How long the probe took.
        took: Duration,
    },
    /// The target could not be reached or answered with an error (timeout included).
    Down {
        /// Why, for logs.
        error: String,
        /// How long the failed probe took.
        took: Duration,
    },
}

impl<T> Probe<T> {
    /// The status, when up.
    pub fn status(&self) -> Option<&T> {
        match self {
            Probe::Up { status, .. } => Some(status),
            Probe::Down { .. } => None,
        }
    }

    /// How long the probe took.
    pub fn took(&self) -> Duration {
        match self {
            Probe::Up { took, .. } | Probe::Down { took, .. } => *took,
        }
    }
}

/// One row of the primary's `pg_stat_replication`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicationRow {
    /// The standby's `application_name`.
    pub application_name: String,
    /// `startup`, `catchup`, `streaming`, `backup` or `stopping`.
    pub state: String,
    /// `async`, `potential`, `sync` or `quorum`.
    pub sync_state: String,
    /// Last WAL location sent.
    pub sent_lsn: Option<Lsn>,
    /// Last location written by the standby.
    pub write_lsn: Option<Lsn>,
    /// Last location flushed by the standby.
    pub flush_lsn: Option<Lsn>,
    /// Last location replayed by the standby.
    pub replay_lsn: Option<Lsn>,
    /// `write_lag` in seconds (NULL when idle and caught up, or not measured yet).
    pub write_lag: Option<f64>,
    /// `flush_lag` in seconds.
    pub flush_lag: Option<f64>,
    /// `replay_lag` in seconds.
    pub replay_lag: Option<f64>,
}

impl ReplicationRow {
    /// Whether this row is a streaming standby (not a base backup's WAL sender).
    pub fn is_standby(&self) -> bool {
        self.state != "backup"
    }
}

/// One row of `pg_replication_slots`.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotRow {
    /// The slot's name.
    pub slot_name: String,
    /// `physical` or `logical`.
    pub slot_type: String,
    /// Whether a consumer is connected.
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost` (NULL before the slot reserved WAL).
    pub wal_status: Option<String>,
    /// Bytes that can still be written before the slot is in danger (NULL unless
    /// `max_slot_wal_keep_size` is set).
    pub safe_wal_size: Option<i64>,
    /// WAL retained by the slot: current LSN minus `restart_lsn`.
    pub retained_bytes: Option<u64>,
}

/// The primary's archiver, from `pg_stat_archiver` and `pg_ls_archive_statusdir()`.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchiverStatus {
    /// Whether `archive_mode` is not `off`.
    pub enabled: bool,
    /// Files archived since the statistics reset.
    pub archived_count: i64,
    /// Failed attempts since the statistics reset.
    pub failed_count: i64,
    /// Unix time of the last success.
    pub last_archived_time: Option<f64>,
    /// Unix time of the last failure.
    pub last_failed_time: Option<f64>,
    /// Finished WAL files waiting for the archiver (`.ready` files).
    pub pending_files: i64,
    /// Seconds the oldest waiting file has waited (0 when none waits).
    pub oldest_pending_seconds: f64,
}

impl ArchiverStatus {
    /// Whether the archiver is failing now: its last attempt failed.
    pub fn failing(&self) -> bool {
        match (self.last_failed_time, self.last_archived_time) {
            (Some(f), Some(a)) => f > a,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// What the primary said.
#[derive(Clone, Debug, PartialEq)]
pub struct PrimaryStatus {
    /// `pg_is_in_recovery()`: true means this "primary" is a standby (misconfiguration or
    /// after a failover).
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()`, when not in recovery.
    pub current_lsn: Option<Lsn>,
    /// `pg_stat_replication`.
    pub replication: Vec<ReplicationRow>,
    /// `pg_replication_slots`.
    pub slots: Vec<SlotRow>,
    /// The archiver.
    pub archiver: ArchiverStatus,
}

/// What a standby said.
#[derive(Clone, Debug, PartialEq)]
pub struct StandbyStatus {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<Lsn>,
    /// `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<Lsn>,
    /// `pg_last_xact_replay_timestamp()` as Unix time.
    pub last_replay_time: Option<f64>,
    /// The server's `now()` as Unix time, so ages use the server's clock.
    pub now: f64,
    /// `pg_stat_wal_receiver.status`, when a WAL receiver runs.
    pub receiver_status: Option<String>,
    /// Seconds since the WAL receiver last heard from the primary.
    pub receiver_last_message_age: Option<f64>,
}

impl StandbyStatus {
    /// Seconds of replay delay: 0 when everything received is replayed, else the age of the
    /// last replayed transaction. `None` when unknown.
    pub fn replay_delay_seconds(&self) -> Option<f64> {
        match (self.receive_lsn, self.replay_lsn) {
            (Some(r), Some(p)) if p >= r => Some(0.0),
            _ => self.last_replay_time.map(|t| (self.now - t).max(0.0)),
        }
    }
}

/// The newest archived WAL, from listing `wal/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalArchiveStatus {
    /// The newest segment's path.
    pub newest_path: String,
    /// Its modification time.
    pub newest_modified: SystemTime,
    /// How many segments are under `wal/`.
    pub objects: u64,
    /// Their total stored size.
    pub bytes: u64,
}

/// What the store holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreStatus {
    /// The WAL archive, `None` when `wal/` is empty.
    pub wal: Option<WalArchiveStatus>,
    /// How many backup records exist, whatever their kind.
    pub backup_count: u64,
    /// The newest backups read, newest first (at most two per kind).
    pub recent_backups: Vec<BackupRecord>,
    /// The oldest backup, for the start of the point-in-time-recovery window.
    pub oldest_backup: Option<BackupRecord>,
    /// The last verification.
    pub verification: Option<VerificationRecord>,
    /// The last drill.
    pub drill: Option<DrillRecord>,
    /// Records that exist but could not be read or parsed (their paths).
    pub unreadable: Vec<String>,
}

/// Everything one poll observed.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// When the poll started.
    pub taken_at: SystemTime,
    /// The primary, when one is configured.
    pub primary: Option<Probe<PrimaryStatus>>,
    /// The standbys, by target name, in configuration order.
    pub standbys: Vec<(String, Probe<StandbyStatus>)>,
    /// The store, when one is configured (the last read, which may be older than the poll).
    pub store: Option<Probe<StoreStatus>>,
}
