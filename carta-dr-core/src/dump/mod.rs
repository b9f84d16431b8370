//! The pg_dump custom archive (`pg_dump -Fc`): a sans-IO parser and a verifier.
//!
//! [`DumpCheck`] is a push parser: feed it the archive's bytes in any pieces with
//! [`DumpCheck::feed`], then call [`DumpCheck::finish`]. It parses the header and the complete
//! table of contents (archive versions 1.12 to 1.16, PostgreSQL 9.0 to 17), then walks every
//! data block to the end of the file, inflating each zlib stream, and reports what it found as
//! [`Finding`]s with a [`Location::Dump`] (dump id, object name, byte offset). Memory stays
//! bounded by the size of the TOC plus a fixed inflate buffer, whatever the size of the data.
//!
//! What the format lets a verifier prove, and what it does not:
//!
//! * The header, the TOC framing (every Int, string length, offset, dependency list) and the
//!   data framing (block types, block ids against the TOC, offsets equal to block positions,
//!   exactly one block per data entry, chunk lengths, terminators, end of file right after the
//!   last block) are checked exactly, so truncation anywhere is found.
//! * Compressed data (the `-Fc` default) carries zlib's Adler-32 per stream: a changed byte in
//!   a table's data is found, and the finding names the table.
//! * The archive has **no checksum of its own**. A changed byte inside uncompressed COPY data
//!   (`-Z0`) or inside the SQL text of a TOC entry is undetectable unless it breaks a rule the
//!   writer always follows (COPY rows have one tab per column separator and end in a newline;
//!   text in a UTF-8 database is valid UTF-8; TOC fields are consistent with each other).
//!   Store dumps through the carta-dr envelope, whose checksums cover every byte.
//!
//! Sources: PostgreSQL `src/bin/pg_dump/pg_backup_archiver.c` (ReadHead, ReadToc, ReadInt,
//! ReadStr, ReadOffset), `pg_backup_archiver.h` (K_VERS_*, BLK_*, K_OFFSET_*) and
//! `pg_backup_custom.c` (_StartData, _EndData, _StartBlobs, _readBlockHeader, _CloseArchive).
//!
//! [`Finding`]: crate::traits::Finding
//! [`Location::Dump`]: crate::traits::Location::Dump

mod check;
mod parse;
mod verifier;

pub use check::{BlockSummary, DumpCheck, DumpSummary, Span, SpanKind};
pub use verifier::{verify_bytes, verify_reader, DumpSource, DumpVerifier};

use serde::{Deserialize, Serialize};

/// The archive magic, `PGDMP` (`pg_backup_archiver.c`, WriteHead).
pub const MAGIC: &[u8; 5] = b"PGDMP";
/// `BLK_DATA`: a block of table data (`pg_backup_archiver.h`).
pub const BLK_DATA: u8 = 1;
/// `BLK_BLOBS`: a block of large objects (`pg_backup_archiver.h`).
pub const BLK_BLOBS: u8 = 3;
/// `K_OFFSET_POS_NOT_SET`: the data position was not recorded (non-seekable output).
pub const K_OFFSET_POS_NOT_SET: u8 = 1;
/// `K_OFFSET_POS_SET`: the offset is the position of the data block's type byte.
pub const K_OFFSET_POS_SET: u8 = 2;
/// `K_OFFSET_NO_DATA`: the entry has no data block.
pub const K_OFFSET_NO_DATA: u8 = 3;

/// An archive format version `major.minor.rev` (`K_VERS_*` in `pg_backup_archiver.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ArchiveVersion {
    /// Major version (1).
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Revision.
    pub rev: u8,
}

impl ArchiveVersion {
    /// 1.12, the oldest version read (PostgreSQL 9.0).
    pub const V1_12: ArchiveVersion = ArchiveVersion::new(1, 12);
    /// 1.14: adds the table access method to each TOC entry (PostgreSQL 12 to 15).
    pub const V1_14: ArchiveVersion = ArchiveVersion::new(1, 14);
    /// 1.15: a compression-algorithm byte replaces the Int level (PostgreSQL 16).
    pub const V1_15: ArchiveVersion = ArchiveVersion::new(1, 15);
    /// 1.16: adds an Int relkind to each TOC entry (PostgreSQL 17), the newest version read.
    pub const V1_16: ArchiveVersion = ArchiveVersion::new(1, 16);

    const fn new(major: u8, minor: u8) -> Self {
        ArchiveVersion {
            major,
            minor,
            rev: 0,
        }
    }

    /// Compares major and minor only.
    pub fn at_least(self, other: ArchiveVersion) -> bool {
        (self.major, self.minor) >= (other.major, other.minor)
    }
}

impl std::fmt::Display for ArchiveVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}-{}", self.major, self.minor, self.rev)
    }
}

/// The archive format byte of the header (`ArchiveFormat` in `pg_backup.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveFormat {
    /// 1: custom (`-Fc`).
    Custom,
    /// 3: tar, also written in a directory dump's `toc.dat`.
    Tar,
    /// 4: null.
    Null,
    /// 5: directory.
    Directory,
}

impl ArchiveFormat {
    /// From the header byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(ArchiveFormat::Custom),
            3 => Some(ArchiveFormat::Tar),
            4 => Some(ArchiveFormat::Null),
            5 => Some(ArchiveFormat::Directory),
            _ => None,
        }
    }
}

/// How the data blocks are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum Compression {
    /// Not compressed.
    None,
    /// zlib streams. `level` is stored only before archive version 1.15 (−1 is the default).
    Gzip {
        /// The zlib level, where stored.
        level: Option<i64>,
    },
    /// LZ4 frames (1.15+).
    Lz4,
    /// zstd frames (1.15+).
    Zstd,
}

/// The creation time stored in the header: a `struct tm` in pg_dump's local time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpTime {
    /// Seconds (0–61).
    pub sec: i64,
    /// Minutes (0–59).
    pub min: i64,
    /// Hours (0–23).
    pub hour: i64,
    /// Day of the month (1–31).
    pub mday: i64,
    /// Month (0–11).
    pub mon: i64,
    /// Year − 1900.
    pub year: i64,
    /// Daylight saving flag (−1, 0 or 1).
    pub isdst: i64,
}

impl std::fmt::Display for DumpTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year + 1900,
            self.mon + 1,
            self.mday,
            self.hour,
            self.min,
            self.sec
        )
    }
}

/// The archive header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveHeader {
    /// The format version.
    pub version: ArchiveVersion,
    /// Bytes of an Int's magnitude (4 in practice).
    pub int_size: u8,
    /// Bytes of an offset (8 in practice).
    pub off_size: u8,
    /// The format byte.
    pub format: ArchiveFormat,
    /// The data compression.
    pub compression: Compression,
    /// When pg_dump started.
    pub created: DumpTime,
    /// The database name.
    pub database: Option<String>,
    /// The server's version string.
    pub server_version: Option<String>,
    /// pg_dump's version string.
    pub pg_dump_version: Option<String>,
}

/// A TOC entry's section (`teSection` in `pg_backup.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// 1: outside the pre-data/data/post-data order (ACLs, comments...).
    None,
    /// 2: schema created before the data.
    PreData,
    /// 3: data.
    Data,
    /// 4: indexes, constraints and triggers created after the data.
    PostData,
}

impl Section {
    /// From the stored Int.
    pub fn from_int(v: i64) -> Option<Self> {
        match v {
            1 => Some(Section::None),
            2 => Some(Section::PreData),
            3 => Some(Section::Data),
            4 => Some(Section::PostData),
            _ => None,
        }
    }
}

/// Where a custom-format entry's data block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DataOffset {
    /// Flag 1: not recorded (the archive was written to a pipe).
    NotSet,
    /// Flag 2: the block's type byte is at this absolute position.
    Set {
        /// The position.
        pos: u64,
    },
    /// Flag 3: no data.
    NoData,
}

/// One TOC entry, with every field of archive versions 1.12 to 1.16.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TocEntry {
    /// The byte offset of the entry in the archive.
    pub offset: u64,
    /// The dump id (> 0).
    pub dump_id: i64,
    /// Whether the entry has a data block.
    pub had_dumper: bool,
    /// The catalog's table oid, as text.
    pub table_oid: Option<String>,
    /// The object's oid, as text.
    pub oid: Option<String>,
    /// The object name.
    pub tag: Option<String>,
    /// The object type (`TABLE`, `TABLE DATA`, `BLOBS`, ...).
    pub desc: Option<String>,
    /// The section.
    pub section: Section,
    /// The SQL that creates the object.
    pub defn: Option<String>,
    /// The SQL that drops it.
    pub drop_stmt: Option<String>,
    /// The `COPY ... FROM stdin;` statement of a data entry.
    pub copy_stmt: Option<String>,
    /// The schema.
    pub namespace: Option<String>,
    /// The tablespace.
    pub tablespace: Option<String>,
    /// The table access method (1.14+).
    pub table_am: Option<String>,
    /// The relkind (1.16+).
    pub relkind: Option<i64>,
    /// The owner.
    pub owner: Option<String>,
    /// The obsolete "with oids" flag, always `false`.
    pub with_oids: Option<String>,
    /// The dump ids this entry depends on.
    pub dependencies: Vec<i64>,
    /// Where its data is (custom format).
    pub data_offset: Option<DataOffset>,
    /// Its data file (directory and tar formats).
    pub file_name: Option<String>,
}

impl TocEntry {
    /// `schema.name` where the entry has a schema, else the name.
    pub fn qualified_name(&self) -> String {
        match (&self.namespace, &self.tag) {
            (Some(ns), Some(t)) if !ns.is_empty() => format!("{ns}.{t}"),
            (_, Some(t)) => t.clone(),
            _ => String::new(),
        }
    }
}
