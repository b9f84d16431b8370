//! # carta-dr-core
//!
//! The foundation every other carta-dr crate stands on:
//!
//! * [`types`]: PostgreSQL domain types that parse and print exactly what PostgreSQL prints
//!   ([`Lsn`], [`TimelineId`], [`WalSegmentName`], [`WalFileName`]), plus [`BackupId`] and the
//!   validated [`StorePath`].
//! * [`store`]: the [`Store`] contract that backends implement, and the [`StoreExt`]
//!   conveniences that they never implement.
//! * [`envelope`]: the self-verifying format of every object carta-dr writes.
//! * [`traits`]: the four capabilities, [`WalArchive`], [`Backup`], [`Verifier`] and
//!   [`Promoter`], with their report types.
//!
//! Data flows one way: PostgreSQL -> pipeline (codec, checksum) -> [`Store`], and back.

#![warn(missing_docs)]

pub mod archive;
pub mod backupverify;
pub mod catalog;
pub mod dump;
pub mod envelope;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod manifest;
pub mod pagecheck;
pub mod store;
pub mod traits;
pub mod types;
pub mod wal;
pub mod walverify;

pub use error::{Error, Result};
pub use store::{
    Capabilities, GetResult, ObjectMeta, ObjectWriter, PutMode, PutOptions, Store, StoreExt,
};
pub use traits::{Backup, Promoter, Verifier, WalArchive};
pub use types::{
    BackupId, Lsn, StorePath, TimelineId, WalFileName, WalSegmentName, WalSegmentSize,
};
