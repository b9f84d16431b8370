use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Result, TimelineId, WalFileName};

/// What [`WalArchive::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushOutcome {
    /// The file was stored, and is durable.
    Stored,
    /// Identical content was already stored (for example after a crash between store and
    /// acknowledgement); nothing was rewritten.
    AlreadyArchived,
}

/// One file in a WAL archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedWal {
    /// Its PostgreSQL name.
    pub name: WalFileName,
    /// Its original (uncompressed) size, where known.
    pub size: Option<u64>,
    /// Its stored size.
    pub stored_size: u64,
}

/// A WAL archive: what `archive_command` and `restore_command` talk to.
///
/// Edge cases every implementation honours:
///
/// * `push` of content identical to what is stored returns [`PushOutcome::AlreadyArchived`];
///   `push` of *different* content under an existing name fails with
///   [`crate::Error::Conflict`] naming both checksums and never replaces the stored copy.
///   History files are never overwritten.
/// * `push` returns only once the file is durable in the store.
/// * `fetch` of a name that is not archived is [`crate::Error::NotFound`]; every other failure
///   (unreachable store, corrupt object) is a different error, so `restore_command` can make
///   PostgreSQL abort rather than end recovery early.
/// * `fetch` never returns bytes that failed a checksum.
#[async_trait]
pub trait WalArchive: Send + Sync {
    /// Archives one file.
    async fn push(&self, name: &WalFileName, data: Bytes) -> Result<PushOutcome>;
    /// Fetches one file, verified.
    async fn fetch(&self, name: &WalFileName) -> Result<Bytes>;
    /// Whether a file is archived.
    async fn exists(&self, name: &WalFileName) -> Result<bool>;
    /// Lists archived files, of one timeline or all, sorted by name.
    async fn list(&self, timeline: Option<TimelineId>) -> Result<Vec<ArchivedWal>>;
}
