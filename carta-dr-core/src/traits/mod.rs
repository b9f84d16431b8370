//! The four capabilities of carta-dr and their report types.
//!
//! They are defined here, free of I/O details; their PostgreSQL implementations live in the
//! crates that talk to a live server. Tool authors compose their own pipelines from them.

mod backup;
mod promoter;
mod verifier;
mod wal_archive;

pub use backup::{Backup, BackupKind, BackupRequest, CatalogEntry, FileEntry};
pub use promoter::{PromoteRequest, Promoter, PromotionReport, StepOutcome, TimedStep};
pub use verifier::{Finding, Location, Severity, Verdict, Verifier, VerifyReport};
pub use wal_archive::{ArchivedWal, PushOutcome, WalArchive};
