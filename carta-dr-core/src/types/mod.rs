//! Domain types. Each parses and prints exactly what PostgreSQL prints.

mod backup_id;
mod lsn;
mod store_path;
mod timeline;
mod wal_name;

pub use backup_id::{format_utc, BackupId};
pub use lsn::Lsn;
pub use store_path::StorePath;
pub use timeline::TimelineId;
pub use wal_name::{WalFileName, WalSegmentName, WalSegmentSize};
