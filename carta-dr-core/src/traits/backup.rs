use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{BackupId, Lsn, Result, TimelineId};

/// Full, or incremental against what the store already holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// Every file's content is referenced afresh (chunks already stored are still reused).
    Full,
    /// Only content the store does not hold is written.
    Incremental,
    /// A logical dump (pg_dump).
    Logical,
}

/// What to back up, and how.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRequest {
    /// A human label (`BASE_BACKUP LABEL`).
    pub label: String,
    /// Ask for a fast (immediate) checkpoint.
    pub fast_checkpoint: bool,
    /// Resume an interrupted backup with this id, reusing what is stored and verified.
    pub resume: Option<BackupId>,
}

/// One file of a physical backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the data directory (validated before any restore uses it).
    pub path: String,
    /// Original size in bytes.
    pub size: u64,
    /// CRC-32C of the file's bytes.
    pub crc32c: u32,
}

/// A catalog entry: everything known about a completed backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// The id, which sorts by time.
    pub id: BackupId,
    /// Full, incremental or logical.
    pub kind: BackupKind,
    /// The label.
    pub label: String,
    /// Where WAL replay must start.
    pub start_lsn: Lsn,
    /// The minimum recovery point: replay must reach it for consistency.
    pub stop_lsn: Lsn,
    /// The timeline at backup start.
    pub timeline: TimelineId,
    /// The database system identifier.
    pub system_identifier: u64,
    /// The server version number (`150018` for 15.18).
    pub pg_version: u32,
    /// When the backup started.
    pub start_time: SystemTime,
    /// When it finished.
    pub stop_time: SystemTime,
    /// Bytes before compression.
    pub original_size: u64,
    /// Bytes newly written to the store by this backup.
    pub stored_size: u64,
    /// The files, with their checksums.
    pub files: Vec<FileEntry>,
}

/// Takes backups.
///
/// `run` returns only once the backup is complete and visible in the catalog: all its files,
/// and the whole WAL range from its start to its stop LSN, are durable in the store. A backup
/// that fails or is killed is never listed; running it again with
/// [`BackupRequest::resume`] reuses what is already stored and verified.
#[async_trait]
pub trait Backup: Send + Sync {
    /// Takes one backup.
    async fn run(&self, request: BackupRequest) -> Result<CatalogEntry>;
}
