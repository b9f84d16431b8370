//! Sans-IO checks of the files PostgreSQL hands to `archive_command`.
//!
//! * [`page`]: WAL page headers, with the constants of `access/xlog_internal.h`.
//! * [`segment`]: validation of a segment's first page and the [`ClusterIdentity`] it carries.
//! * [`history`]: timeline history files and backup history files.
//!
//! [`validate_wal_file`] applies the right rules to any [`WalFileName`]. Nothing here does
//! I/O or panics, whatever the input: every function takes bytes and returns a result whose
//! error names the file and the offset or line.

pub mod history;
pub mod page;
pub mod segment;

pub use history::{parse_backup_history, parse_history, BackupHistory, HistoryEntry};
pub use page::{pg_major_from_magic, PageHeader, XLOG_BLCKSZ};
pub use segment::{inspect_segment, ClusterIdentity, SegmentHeaderInfo};

use crate::{Result, WalFileName};

/// What [`validate_wal_file`] learned about a file it accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValidatedWal {
    /// A complete or partial segment, with its cluster identity.
    Segment(SegmentHeaderInfo),
    /// A timeline history file.
    History(Vec<HistoryEntry>),
    /// A backup history file.
    Backup(BackupHistory),
}

impl ValidatedWal {
    /// The cluster identity, for segments.
    pub fn identity(&self) -> Option<&ClusterIdentity> {
        match self {
            ValidatedWal::Segment(s) => Some(&s.identity),
            _ => None,
        }
    }
}

/// Validates `data` as the file `name`, and, when the archive's cluster is known, checks that
/// the file belongs to it (see [`ClusterIdentity::check`]). Segments and `.partial` files
/// follow [`inspect_segment`]; history files [`parse_history`]; backup history files
/// [`parse_backup_history`].
pub fn validate_wal_file(
    name: &WalFileName,
    data: &[u8],
    cluster: Option<&ClusterIdentity>,
) -> Result<ValidatedWal> {
    match name {
        WalFileName::Segment(s) | WalFileName::Partial(s) => {
            let info = inspect_segment(s, matches!(name, WalFileName::Partial(_)), data)?;
            if let Some(c) = cluster {
                c.check(&name.to_string(), &info.identity)?;
            }
            Ok(ValidatedWal::Segment(info))
        }
        WalFileName::History(t) => Ok(ValidatedWal::History(parse_history(*t, data)?)),
        WalFileName::Backup { segment, offset } => Ok(ValidatedWal::Backup(parse_backup_history(
            segment,
            *offset,
            cluster.map(|c| c.wal_segment_size),
            data,
        )?)),
    }
}
