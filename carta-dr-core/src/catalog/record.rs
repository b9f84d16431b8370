//! The backup record: what a physical backup holds and where each file's bytes live.
//!
//! # Store layout
//!
//! ```text
//! backups/<id>/backup.json         the sealed record; its presence makes the backup visible
//! chunks/<hh>/<sha256>             one chunk of a large file, content-addressed, create-only
//! bundles/<hh>/<sha256>            many small files concatenated, content-addressed, create-only
//! ```
//!
//! Large files are cut into fixed chunks ([`CHUNK_SIZE`]); a chunk is named by the SHA-256 of
//! its raw bytes, so a chunk already stored by any backup is never stored again and an
//! unchanged relation segment costs nothing. Files up to [`BUNDLE_FILE_MAX`] bytes are packed
//! into bundles (up to [`BUNDLE_TARGET`] bytes each), so ten thousand small files do not
//! become ten thousand objects; a small file whose content is already in an earlier backup's
//! bundle references that bundle instead of being stored again.
//!
//! # Block-level incremental (PostgreSQL 17)
//!
//! [`Content`] is an open enum. A PostgreSQL 17 `INCREMENTAL` file (a block map plus changed
//! blocks) would become a `Content::Incremental { reference, blocks }` variant naming the
//! backup and the chunk refs it patches; the restore assembles the full file from the
//! reference's chunks and the new blocks, exactly as `pg_combinebackup` does. Readers reject
//! unknown variants and [`FORMAT_VERSION`]s newer than they know.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::traits::{BackupKind, CatalogEntry, FileEntry};
use crate::{BackupId, Error, Lsn, Result, StorePath, TimelineId};

/// Version of the record format.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the chunks large files are cut into (4 MiB). Each [`ChunkRef`] records its own
/// length, so records written with other chunk sizes (earlier records used 1 MiB) still restore; they
/// only do not share chunks with newer backups.
pub const CHUNK_SIZE: usize = 4 << 20;
/// Files up to this size are bundled.
pub const BUNDLE_FILE_MAX: u64 = 128 << 10;
/// A bundle is closed once it holds this many bytes.
pub const BUNDLE_TARGET: usize = 4 << 20;

/// The prefix the catalog lists.
pub const BACKUPS_PREFIX: &str = "backups";
/// The prefix of chunks.
pub const CHUNKS_PREFIX: &str = "chunks";
/// The prefix of bundles.
pub const BUNDLES_PREFIX: &str = "bundles";

/// Where a backup's record lives.
pub fn record_path(id: BackupId) -> Result<StorePath> {
    StorePath::new(format!("{BACKUPS_PREFIX}/{id}/backup.json"))
}

fn hashed_path(prefix: &str, hash: &str) -> Result<StorePath> {
    if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Error::invalid(
            "content hash",
            hash,
            "expected 64 lowercase hex digits",
        ));
    }
    StorePath::new(format!("{prefix}/{}/{hash}", &hash[..2]))
}

/// Where the chunk with this SHA-256 (lowercase hex) lives.
pub fn chunk_path(hash: &str) -> Result<StorePath> {
    hashed_path(CHUNKS_PREFIX, hash)
}

/// Where the bundle with this SHA-256 (lowercase hex) lives.
pub fn bundle_path(hash: &str) -> Result<StorePath> {
    hashed_path(BUNDLES_PREFIX, hash)
}

/// A reference to one chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// SHA-256 of the raw chunk, lowercase hex.
    pub sha256: String,
    /// Raw length.
    pub len: u64,
}

/// Where a file's bytes are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Content {
    /// No bytes (empty file, directory, symlink).
    None,
    /// Concatenated chunks.
    Chunks {
        /// The chunks, in order.
        chunks: Vec<ChunkRef>,
    },
    /// A slice of a bundle.
    Bundled {
        /// SHA-256 of the bundle.
        bundle: String,
        /// Offset in the bundle's raw bytes.
        offset: u64,
        /// SHA-256 of the file's bytes (lets later backups reuse it).
        sha256: String,
    },
}

/// The kind of a file in the data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (tablespaces under `pg_tblspc/`).
    Symlink,
}

/// One file of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Path relative to the data directory; validated by [`validate_relative_path`].
    pub path: String,
    /// File, directory or symlink.
    pub kind: FileKind,
    /// Permission bits.
    pub mode: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: i64,
    /// Size in bytes.
    pub size: u64,
    /// CRC-32C of the bytes.
    pub crc32c: u32,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// Where the bytes are.
    pub content: Content,
}

/// A tablespace of the backed-up cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceRecord {
    /// Its OID; its files are recorded under `pg_tblspc/<oid>/`.
    pub oid: u32,
    /// Its location on the source server.
    pub location: String,
}

/// The sealed record of one physical backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The id.
    pub id: BackupId,
    /// Full or incremental.
    pub kind: BackupKind,
    /// The label.
    pub label: String,
    /// Where WAL replay must start.
    pub start_lsn: Lsn,
    /// Replay must reach this point for consistency.
    pub stop_lsn: Lsn,
    /// Timeline at start.
    pub timeline: TimelineId,
    /// Timeline at stop.
    pub stop_timeline: TimelineId,
    /// Database system identifier.
    pub system_identifier: u64,
    /// `PG_VERSION_NUM`.
    pub pg_version: u32,
    /// WAL segment size of the cluster.
    pub wal_segment_size: u64,
    /// Start time (seconds since the epoch).
    pub start_time: u64,
    /// Stop time (seconds since the epoch).
    pub stop_time: u64,
    /// Bytes before compression.
    pub original_size: u64,
    /// Bytes this backup newly wrote to the store.
    pub stored_size: u64,
    /// Tablespaces other than the main data directory.
    pub tablespaces: Vec<TablespaceRecord>,
    /// Every file, directory and link.
    pub files: Vec<FileRecord>,
    /// PostgreSQL's `backup_manifest`, verbatim.
    pub backup_manifest: String,
}

impl BackupRecord {
    /// Checks what a restore relies on: the version, every path, every content hash.
    pub fn validate(&self) -> Result<()> {
        if self.format_version != FORMAT_VERSION {
            return Err(Error::invalid(
                "backup record",
                self.id.to_string(),
                format!(
                    "format version {} (this carta-dr reads {FORMAT_VERSION})",
                    self.format_version
                ),
            ));
        }
        for f in &self.files {
            validate_relative_path(&f.path)?;
            match &f.content {
                Content::None => {}
                Content::Chunks { chunks } => {
                    let mut total = 0u64;
                    for c in chunks {
                        chunk_path(&c.sha256)?;
                        total = total.saturating_add(c.len);
                    }
                    if total != f.size {
                        return Err(Error::corrupt(
                            record_path(self.id)?,
                            None,
                            format!("{}: chunks add up to {total} bytes, not {}", f.path, f.size),
                        ));
                    }
                }
                Content::Bundled { bundle, sha256, .. } => {
                    bundle_path(bundle)?;
                    hashed_path(BUNDLES_PREFIX, sha256)?;
                }
            }
        }
        Ok(())
    }

    /// The store objects (chunks and bundles) this backup references.
    pub fn referenced_objects(&self) -> Result<Vec<StorePath>> {
        let mut out = Vec::new();
        for f in &self.files {
            match &f.content {
                Content::None => {}
                Content::Chunks { chunks } => {
                    for c in chunks {
                        out.push(chunk_path(&c.sha256)?);
                    }
                }
                Content::Bundled { bundle, .. } => out.push(bundle_path(bundle)?),
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The [`CatalogEntry`] of this record.
    pub fn to_entry(&self) -> CatalogEntry {
        CatalogEntry {
            id: self.id,
            kind: self.kind,
            label: self.label.clone(),
            start_lsn: self.start_lsn,
            stop_lsn: self.stop_lsn,
            timeline: self.timeline,
            system_identifier: self.system_identifier,
            pg_version: self.pg_version,
            start_time: secs_to_time(self.start_time),
            stop_time: secs_to_time(self.stop_time),
            original_size: self.original_size,
            stored_size: self.stored_size,
            files: self
                .files
                .iter()
                .filter(|f| f.kind == FileKind::File)
                .map(|f| FileEntry {
                    path: f.path.clone(),
                    size: f.size,
                    crc32c: f.crc32c,
                })
                .collect(),
        }
    }

    /// Serializes to JSON.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| {
            Error::invalid_input(format!("serializing backup record {}: {e}", self.id))
        })
    }

    /// Parses JSON and validates it.
    pub fn from_json(path: &StorePath, bytes: &[u8]) -> Result<Self> {
        let r: BackupRecord = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(path, None, format!("backup record: {e}")))?;
        r.validate()?;
        Ok(r)
    }
}

/// Seconds since the epoch to a time.
pub fn secs_to_time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Seconds since the epoch of a time (0 before the epoch).
pub fn time_to_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Accepts only a relative path that stays inside the directory it is joined to: no empty,
/// `.` or `..` component, no leading `/`, no NUL or backslash, at most 1024 bytes.
pub fn validate_relative_path(p: &str) -> Result<()> {
    let bad = |why: &str| Error::invalid("path in backup", p, why.to_string());
    if p.is_empty() || p.len() > 1024 {
        return Err(bad("empty or too long"));
    }
    if p.starts_with('/') {
        return Err(bad("absolute"));
    }
    if p.contains('\0') || p.contains('\\') {
        return Err(bad("contains NUL or backslash"));
    }
    for seg in p.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(bad("empty, '.' or '..' component"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_validation() {
        for ok in [
            "base/1/1259",
            "global/pg_control",
            "pg_tblspc/16384/PG_15_1/5/1",
        ] {
            validate_relative_path(ok).unwrap();
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "a\\b",
            "a\0",
        ] {
            assert!(validate_relative_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn content_paths() {
        let h = "ab".repeat(32);
        assert_eq!(chunk_path(&h).unwrap().as_str(), format!("chunks/ab/{h}"));
        assert!(chunk_path("../x").is_err());
        assert!(chunk_path(&"AB".repeat(32)).is_err());
    }
}
