//! The backup catalog: the record of each physical backup, the content-addressed chunk and
//! bundle layout, and the retention rules. Free of I/O; the code that reads and writes the
//! store lives with the backup and restore implementations.

mod record;
mod retention;

pub use record::{
    bundle_path, chunk_path, record_path, secs_to_time, time_to_secs, validate_relative_path,
    BackupRecord, ChunkRef, Content, FileKind, FileRecord, TablespaceRecord, BACKUPS_PREFIX,
    BUNDLES_PREFIX, BUNDLE_FILE_MAX, BUNDLE_TARGET, CHUNKS_PREFIX, CHUNK_SIZE, FORMAT_VERSION,
};
pub use retention::{
    expirable_wal, pitr_window, plan_expiry, BackupSummary, ExpiryPlan, PitrWindow, RetentionPolicy,
};

impl BackupRecord {
    /// The facts retention needs.
    pub fn summary(&self) -> BackupSummary {
        BackupSummary {
            id: self.id,
            timeline: self.timeline,
            start_lsn: self.start_lsn,
            stop_lsn: self.stop_lsn,
            stop_timeline: self.stop_timeline,
            start_time: self.start_time,
            stop_time: self.stop_time,
        }
    }
}
