//! Our own replication-protocol client and the physical base backup built on it.
//!
//! * [`conn`]: connection parameters (libpq environment, `key=value` strings), startup with
//!   `replication=true`, authentication, `IDENTIFY_SYSTEM`, `SHOW`.
//! * [`stream`]: `BASE_BACKUP` and its COPY stream; [`copy`] decodes each `CopyData`.
//! * [`backup`]: the backup itself ([`PgBackup`], an implementation of
//!   [`carta_dr_core::Backup`]); [`repo`] reads and writes the sealed objects.
//! * [`expire`]: retention of backups, WAL and unreferenced chunks.
//! * [`tar`]: a sans-IO streaming reader of the tar archives inside the stream.

pub mod backup;
pub mod conn;
pub mod copy;
pub mod expire;
pub mod repo;
pub mod stream;
pub mod tar;

pub use backup::{BackupProgress, PgBackup, PgBackupConfig, ProgressFn};
pub use conn::{ConnParams, ReplicationConnection, SystemIdentity};
pub use repo::Repo;
pub use stream::{BackupStart, BaseBackupOptions, BaseBackupStream, StreamItem, Tablespace};
