//! The push parser and verifier of a custom archive: header, TOC, then every data block.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use flate2::{Decompress, FlushDecompress, Status};
use serde::{Deserialize, Serialize};

use super::parse::{parse_toc, ParseError, ParsedToc};
use super::{
    ArchiveFormat, ArchiveHeader, Compression, DataOffset, Section, TocEntry, BLK_BLOBS, BLK_DATA,
};
use crate::traits::{Finding, Location, Severity};

/// What a byte range of the archive holds (see [`DumpCheck::track_spans`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SpanKind {
    /// `PGDMP`.
    Magic,
    /// The three version bytes.
    Version,
    /// The Int size byte.
    IntSize,
    /// The offset size byte.
    OffSize,
    /// The format byte.
    Format,
    /// The compression level Int or algorithm byte.
    Compression,
    /// An Int field (sign and magnitude): `toc_count`, `dump_id`, `time.sec`, ...
    Int {
        /// The field.
        field: &'static str,
    },
    /// The length Int of a string field.
    StrLen {
        /// The field.
        field: &'static str,
    },
    /// The bytes of a string field.
    StrText {
        /// The field.
        field: &'static str,
    },
    /// The flag byte of a data offset.
    OffsetFlag,
    /// The value bytes of a data offset.
    OffsetValue,
    /// A data block's type byte.
    BlockType,
    /// A data block's dump id Int.
    BlockId,
    /// A large object's oid Int in a BLOBS block.
    BlobOid,
    /// A chunk length Int.
    ChunkLen,
    /// Chunk payload (compressed or raw data).
    ChunkData,
    /// A zero Int ending a block, a large object or the BLOBS list.
    Terminator,
}

/// A byte range of the archive and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Span {
    /// Absolute byte range.
    pub range: Range<u64>,
    /// What it is.
    pub kind: SpanKind,
    /// The TOC entry it belongs to, where it belongs to one.
    pub dump_id: Option<i64>,
}

/// One data block as found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSummary {
    /// The entry's dump id.
    pub dump_id: i64,
    /// `TABLE DATA` or `BLOBS`.
    pub desc: String,
    /// `schema.table` (or the entry's tag).
    pub name: String,
    /// Position of the block's type byte.
    pub offset: u64,
    /// Bytes in the archive (chunk payloads).
    pub stored_bytes: u64,
    /// Bytes after decompression (equal to `stored_bytes` when not compressed).
    pub data_bytes: u64,
    /// COPY rows (lines) for table data, large objects for BLOBS.
    pub rows: u64,
}

/// The result of a check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DumpSummary {
    /// The header, if it could be parsed.
    pub header: Option<ArchiveHeader>,
    /// The TOC, if it could be parsed.
    pub toc: Vec<TocEntry>,
    /// The data blocks walked.
    pub blocks: Vec<BlockSummary>,
    /// Bytes fed.
    pub bytes: u64,
    /// Everything found, in order.
    pub findings: Vec<Finding>,
    /// The byte layout, when [`DumpCheck::track_spans`] was set.
    pub spans: Vec<Span>,
}

impl DumpSummary {
    /// Whether an error-severity finding was made.
    pub fn is_corrupt(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// The TABLE DATA entries, with their blocks where found.
    pub fn tables(&self) -> impl Iterator<Item = (&TocEntry, Option<&BlockSummary>)> {
        self.toc
            .iter()
            .filter(|e| e.desc.as_deref() == Some("TABLE DATA"))
            .map(|e| (e, self.blocks.iter().find(|b| b.dump_id == e.dump_id)))
    }
}

/// Per-block state of the data walk.
struct Block {
    entry: usize,
    blobs: bool,
    summary: BlockSummary,
    /// The inflater of the current stream (a block, or one large object).
    z: Option<Decompress>,
    stream_done: bool,
    stream_failed: bool,
    /// Chunks seen in the current stream.
    stream_chunks: u64,
    /// The current large object's oid.
    blob_oid: i64,
    copy: Option<CopyRows>,
}

/// COPY text redundancy: every row has `cols - 1` tabs and ends with a newline.
struct CopyRows {
    cols: usize,
    tabs: usize,
    /// Bytes in the current line, and its first two.
    line_len: usize,
    prefix: [u8; 2],
    /// The `\\.` end-of-data line was seen.
    ended: bool,
    bad: bool,
    utf8: bool,
    rows: u64,
    /// Up to 3 bytes of an incomplete UTF-8 sequence carried over.
    carry: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Buffering until the header and TOC parse.
    Toc,
    /// Expecting a block type byte (or the end of the archive).
    BlockType,
    /// Expecting the block's dump id Int.
    BlockId,
    /// Expecting a large object oid Int (BLOBS).
    BlobOid,
    /// Expecting a chunk length Int.
    ChunkLen,
    /// Inside a chunk, with this many payload bytes left.
    Chunk(u64),
    /// After the last block: nothing may follow.
    End,
    /// A fatal finding was made; the rest is not read.
    Stopped,
}

/// A sans-IO verifier of a pg_dump custom archive. Feed bytes, then finish.
///
/// ```
/// use carta_dr_core::dump::DumpCheck;
/// let mut c = DumpCheck::new();
/// c.feed(b"not a dump");
/// let summary = c.finish();
/// assert!(summary.is_corrupt());
/// ```
pub struct DumpCheck {
    phase: Phase,
    /// Bytes not yet consumed (the TOC, or a partial Int).
    buf: Vec<u8>,
    /// Absolute position of `buf[0]`.
    pos: u64,
    /// Try to parse the TOC again once `buf` has this many bytes.
    next_try: usize,
    header: Option<ArchiveHeader>,
    toc: Vec<TocEntry>,
    ids: HashMap<i64, usize>,
    /// Data entries in TOC order, and the next one expected.
    expected: Vec<usize>,
    next_expected: usize,
    seen_blocks: HashSet<i64>,
    /// Oids of the TOC's `BLOB` entries, and those seen in BLOBS blocks.
    blob_oids: HashSet<i64>,
    seen_oids: HashSet<i64>,
    block: Option<Block>,
    block_start: u64,
    int_size: usize,
    compressed: bool,
    can_inflate: bool,
    utf8: bool,
    blocks: Vec<BlockSummary>,
    findings: Vec<Finding>,
    track: bool,
    spans: Vec<Span>,
    out: Vec<u8>,
    total: u64,
}

impl Default for DumpCheck {
    fn default() -> Self {
        Self::new()
    }
}

const INFLATE_BUF: usize = 64 * 1024;

impl DumpCheck {
    /// A new check.
    pub fn new() -> Self {
        DumpCheck {
            phase: Phase::Toc,
            buf: Vec::new(),
            pos: 0,
            next_try: 0,
            header: None,
            toc: Vec::new(),
            ids: HashMap::new(),
            expected: Vec::new(),
            next_expected: 0,
            seen_blocks: HashSet::new(),
            blob_oids: HashSet::new(),
            seen_oids: HashSet::new(),
            block: None,
            block_start: 0,
            int_size: 4,
            compressed: false,
            can_inflate: true,
            utf8: false,
            blocks: Vec::new(),
            findings: Vec::new(),
            track: false,
            spans: Vec::new(),
            out: vec![0; INFLATE_BUF],
            total: 0,
        }
    }

    /// Records the byte layout ([`DumpSummary::spans`]); for tools and tests, it costs memory
    /// proportional to the number of chunks.
    pub fn track_spans(mut self, on: bool) -> Self {
        self.track = on;
        self
    }

    /// Whether a fatal finding already ended the walk (further input is ignored).
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    fn name_of(&self, entry: usize) -> Option<String> {
        self.toc.get(entry).map(|e| e.qualified_name())
    }

    fn finding(&mut self, severity: Severity, dump_id: Option<i64>, offset: u64, what: String) {
        let name = dump_id
            .and_then(|id| self.ids.get(&id).copied())
            .and_then(|i| self.name_of(i));
        self.findings.push(Finding {
            severity,
            location: Location::Dump {
                dump_id,
                name,
                offset: Some(offset),
            },
            what,
        });
    }

    fn fatal(&mut self, dump_id: Option<i64>, offset: u64, what: String) {
        self.finding(Severity::Error, dump_id, offset, what);
        self.phase = Phase::Stopped;
        self.buf = Vec::new();
        self.block = None;
    }

    fn span(&mut self, range: Range<u64>, kind: SpanKind, dump_id: Option<i64>) {
        if self.track {
            self.spans.push(Span {
                range,
                kind,
                dump_id,
            });
        }
    }

    /// Feeds the next bytes of the archive.
    pub fn feed(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        while !data.is_empty() {
            match self.phase {
                Phase::Stopped => return,
                Phase::Toc => {
                    self.buf.extend_from_slice(data);
                    data = &[];
                    if self.buf.len() >= self.next_try {
                        self.try_toc(false);
                    }
                }
                Phase::End => {
                    let at = self.pos + self.buf.len() as u64;
                    self.fatal(
                        None,
                        at,
                        format!(
                            "{} unexpected bytes after the last data block (pg_dump writes nothing there)",
                            data.len()
                        ),
                    );
                    return;
                }
                Phase::Chunk(left) => {
                    let n = (left.min(data.len() as u64)) as usize;
                    let (now, rest) = data.split_at(n);
                    let at = self.pos;
                    self.chunk_data(now, at);
                    self.pos += n as u64;
                    data = rest;
                    if self.phase == Phase::Chunk(left) {
                        self.phase = if left == n as u64 {
                            Phase::ChunkLen
                        } else {
                            Phase::Chunk(left - n as u64)
                        };
                    }
                }
                Phase::BlockType => {
                    let b = data.first().copied().unwrap_or(0);
                    data = data.get(1..).unwrap_or(&[]);
                    let at = self.pos;
                    self.pos += 1;
                    self.block_type(b, at);
                }
                Phase::BlockId | Phase::BlobOid | Phase::ChunkLen => {
                    let need = 1 + self.int_size;
                    let take = (need - self.buf.len()).min(data.len());
                    let (now, rest) = data.split_at(take);
                    self.buf.extend_from_slice(now);
                    data = rest;
                    if self.buf.len() == need {
                        let bytes = std::mem::take(&mut self.buf);
                        let at = self.pos;
                        self.pos += need as u64;
                        self.int_field(&bytes, at);
                    }
                }
            }
        }
    }

    fn try_toc(&mut self, at_end: bool) {
        let mut spans = Vec::new();
        let res = parse_toc(&self.buf, if self.track { Some(&mut spans) } else { None });
        match res {
            Err(ParseError::NeedMore) => {
                if at_end {
                    let what = if self.buf.len() < 5 {
                        format!(
                            "input is too short ({} bytes) to be a pg_dump archive",
                            self.buf.len()
                        )
                    } else {
                        format!(
                            "the archive ends inside its header or TOC after {} bytes (truncated, or a damaged length field)",
                            self.buf.len()
                        )
                    };
                    let at = self.buf.len() as u64;
                    self.fatal(None, at, what);
                } else {
                    self.next_try = self.buf.len().saturating_mul(2).max(64 * 1024);
                }
            }
            Err(ParseError::Bad {
                offset,
                what,
                dump_id,
            }) => {
                self.spans = spans;
                self.fatal(dump_id, offset, what);
            }
            Ok(parsed) => {
                self.spans = spans;
                let rest = self.buf.split_off(parsed.consumed.min(self.buf.len()));
                self.pos = parsed.consumed as u64;
                self.buf = Vec::new();
                self.accept_toc(parsed);
                if self.phase != Phase::Stopped && !rest.is_empty() {
                    // Avoid double counting: `feed` already counted these bytes.
                    self.total -= rest.len() as u64;
                    self.feed(&rest);
                }
            }
        }
    }

    fn accept_toc(&mut self, parsed: ParsedToc) {
        let ParsedToc {
            header,
            entries,
            non_utf8,
            ..
        } = parsed;
        self.int_size = header.int_size as usize;
        self.compressed = header.compression != Compression::None;
        self.toc = entries;
        self.header = Some(header.clone());
        let mut dup = Vec::new();
        for (i, e) in self.toc.iter().enumerate() {
            if self.ids.insert(e.dump_id, i).is_some() {
                dup.push((e.dump_id, e.offset));
            }
        }
        for (id, off) in dup {
            self.finding(
                Severity::Error,
                Some(id),
                off,
                format!("dump id {id} appears twice in the TOC"),
            );
        }
        self.utf8 = self
            .toc
            .iter()
            .find(|e| e.desc.as_deref() == Some("ENCODING"))
            .and_then(|e| e.defn.as_deref())
            .is_some_and(|d| d.contains("'UTF8'"));
        if self.utf8 {
            for (off, id, field) in non_utf8 {
                self.finding(
                    Severity::Error,
                    id,
                    off,
                    format!("{field} is not valid UTF-8 in a UTF8 archive"),
                );
            }
        }
        self.blob_oids = self
            .toc
            .iter()
            .filter(|e| e.desc.as_deref() == Some("BLOB"))
            .filter_map(|e| e.tag.as_deref().and_then(super::parse::parse_decimal))
            .collect();
        self.check_toc_semantics();
        match header.compression {
            Compression::Lz4 | Compression::Zstd => {
                self.can_inflate = false;
                let at = self.pos;
                self.finding(
                    Severity::Warning,
                    None,
                    at,
                    format!(
                        "could not check the {:?} compressed data streams (only framing is checked)",
                        header.compression
                    ),
                );
            }
            _ => {}
        }
        if header.format != ArchiveFormat::Custom {
            let at = self.pos;
            self.finding(
                Severity::Warning,
                None,
                at,
                format!(
                    "could not check data: a {:?}-format TOC holds no data blocks (its data files are separate)",
                    header.format
                ),
            );
            self.phase = Phase::End;
            return;
        }
        self.expected = self
            .toc
            .iter()
            .enumerate()
            .filter(|(_, e)| e.had_dumper)
            .map(|(i, _)| i)
            .collect();
        self.phase = if self.expected.is_empty() {
            Phase::End
        } else {
            Phase::BlockType
        };
    }

    /// Rules that hold between TOC fields in every archive pg_dump writes.
    fn check_toc_semantics(&mut self) {
        let mut errs: Vec<(i64, u64, String)> = Vec::new();
        let mut warns: Vec<(i64, u64, String)> = Vec::new();
        let custom = self.header.as_ref().map(|h| h.format) == Some(ArchiveFormat::Custom);
        let mut not_set = 0usize;
        let mut set = 0usize;
        let mut cur = Section::PreData;
        for e in &self.toc {
            let id = e.dump_id;
            let desc = e.desc.as_deref().unwrap_or("");
            if custom {
                match (e.had_dumper, e.data_offset) {
                    (true, Some(DataOffset::NoData)) => errs.push((
                        id,
                        e.offset,
                        "entry has data but its offset says no data".into(),
                    )),
                    (false, Some(DataOffset::Set { .. } | DataOffset::NotSet)) => errs.push((
                        id,
                        e.offset,
                        "entry has no data but its offset says it has".into(),
                    )),
                    (true, Some(DataOffset::NotSet)) => not_set += 1,
                    (true, Some(DataOffset::Set { .. })) => set += 1,
                    _ => {}
                }
            }
            if e.had_dumper {
                if !matches!(desc, "TABLE DATA" | "BLOBS") {
                    errs.push((id, e.offset, format!("a {desc:?} entry cannot carry data")));
                }
                if e.section != Section::Data {
                    errs.push((
                        id,
                        e.offset,
                        format!("data entry in section {:?}", e.section),
                    ));
                }
            }
            if e.section == Section::Data
                && !matches!(
                    desc,
                    "TABLE DATA" | "BLOBS" | "SEQUENCE SET" | "STATISTICS DATA"
                )
            {
                errs.push((
                    id,
                    e.offset,
                    format!("a {desc:?} entry in the data section"),
                ));
            }
            if desc == "BLOB" {
                let ok = e.tag.is_some()
                    && e.tag == e.oid
                    && e.defn.as_deref().is_none_or(|d| {
                        d.is_empty()
                            || d.contains(&format!(
                                "lo_create('{}')",
                                e.tag.as_deref().unwrap_or("")
                            ))
                    });
                if !ok {
                    errs.push((
                        id,
                        e.offset,
                        "large object entry: tag, oid and SQL disagree".into(),
                    ));
                }
            }
            match e.section {
                Section::None => {}
                Section::PreData if cur != Section::PreData => errs.push((
                    id,
                    e.offset,
                    "archive items not in correct section order".into(),
                )),
                Section::Data if cur == Section::PostData => errs.push((
                    id,
                    e.offset,
                    "archive items not in correct section order".into(),
                )),
                _ => {}
            }
            if e.section != Section::None {
                cur = e.section;
            }
            if e.dependencies.contains(&id) {
                errs.push((id, e.offset, "entry depends on itself".into()));
            }
            for oid in [&e.table_oid, &e.oid].into_iter().flatten() {
                if super::parse::parse_decimal(oid).is_none() {
                    errs.push((id, e.offset, format!("oid {oid:?} is not a number")));
                }
            }
            if let Some(w) = &e.with_oids {
                if w != "false" && w != "true" {
                    errs.push((id, e.offset, format!("with-oids flag is {w:?}")));
                }
            }
            if !is_known_desc(desc) {
                warns.push((id, e.offset, format!("unknown object type {desc:?}")));
            }
            // Names repeated inside the entry's own SQL.
            let name_checks: &[&Option<String>] = match desc {
                "TABLE" | "VIEW" | "SEQUENCE" => &[&e.defn, &e.drop_stmt],
                "TABLE DATA" => &[&e.copy_stmt],
                "INDEX" => &[&e.drop_stmt],
                "SCHEMA" => &[&e.defn, &e.drop_stmt],
                _ => &[],
            };
            for sql in name_checks.iter().copied().flatten() {
                if sql.is_empty() {
                    continue;
                }
                let ns = if desc == "SCHEMA" {
                    None
                } else {
                    e.namespace.as_deref()
                };
                if let Some(tag) = e.tag.as_deref() {
                    if !mentions(sql, ns, tag) {
                        errs.push((
                            id,
                            e.offset,
                            format!("its SQL does not name the object {:?}", e.qualified_name()),
                        ));
                    }
                }
            }
            if desc == "TABLE DATA" {
                if let Some(table) = e.dependencies.first().and_then(|d| self.ids.get(d)) {
                    if let Some(t) = self.toc.get(*table) {
                        if t.desc.as_deref() == Some("TABLE")
                            && (t.tag != e.tag || t.namespace != e.namespace)
                        {
                            errs.push((
                                id,
                                e.offset,
                                format!(
                                    "data entry {:?} depends on table {:?}",
                                    e.qualified_name(),
                                    t.qualified_name()
                                ),
                            ));
                        }
                    }
                }
            }
        }
        // Dependencies name other TOC entries (pg_dump's BuildArchiveDependencies). Only the
        // explicit dependencies of data entries may dangle: in data-only dumps, and for the
        // configuration tables of extensions (their data is dumped, their definition is not).
        let has_schema = self.toc.iter().any(|e| {
            e.desc.as_deref() == Some("TABLE DATA")
                && e.dependencies
                    .first()
                    .is_some_and(|d| self.ids.contains_key(d))
        });
        let has_extension = self
            .toc
            .iter()
            .any(|e| e.desc.as_deref() == Some("EXTENSION"));
        let strict_data_deps = has_schema && !has_extension;
        for e in &self.toc {
            let data_entry = matches!(
                e.desc.as_deref(),
                Some("TABLE DATA" | "SEQUENCE SET" | "BLOBS" | "STATISTICS DATA")
            );
            for d in &e.dependencies {
                if !self.ids.contains_key(d) {
                    let what = format!("depends on dump id {d}, which is not in the TOC");
                    if data_entry && !strict_data_deps {
                        warns.push((e.dump_id, e.offset, what));
                    } else {
                        errs.push((e.dump_id, e.offset, what));
                    }
                }
            }
        }
        if set > 0 && not_set > 0 {
            errs.push((
                0,
                0,
                format!(
                    "{set} data offsets are set and {not_set} are not: pg_dump sets all or none"
                ),
            ));
        }
        for (id, off, what) in errs {
            let id = (id > 0).then_some(id);
            self.finding(Severity::Error, id, off, what);
        }
        for (id, off, what) in warns {
            self.finding(Severity::Warning, Some(id), off, what);
        }
    }

    fn block_type(&mut self, b: u8, at: u64) {
        self.span(at..at + 1, SpanKind::BlockType, None);
        if b != BLK_DATA && b != BLK_BLOBS {
            self.fatal(None, at, format!("unrecognized data block type {b}"));
            return;
        }
        self.block_start = at;
        self.block = Some(Block {
            entry: usize::MAX,
            blobs: b == BLK_BLOBS,
            summary: BlockSummary {
                dump_id: 0,
                desc: String::new(),
                name: String::new(),
                offset: at,
                stored_bytes: 0,
                data_bytes: 0,
                rows: 0,
            },
            z: None,
            stream_done: false,
            stream_failed: false,
            stream_chunks: 0,
            blob_oid: 0,
            copy: None,
        });
        self.phase = Phase::BlockId;
    }

    fn read_int(&self, bytes: &[u8]) -> Result<i64, String> {
        let sign = bytes.first().copied().unwrap_or(0);
        let mut v: u64 = 0;
        for (i, b) in bytes.iter().skip(1).enumerate() {
            if i >= 4 {
                if *b != 0 {
                    return Err("Int does not fit in 32 bits".into());
                }
            } else {
                v |= u64::from(*b) << (8 * i);
            }
        }
        match sign {
            0 if v <= i32::MAX as u64 => Ok(v as i64),
            1 if v == 0 => Err("Int is a negative zero, which pg_dump never writes".into()),
            1 if v <= 1 << 31 => Ok(-(v as i64)),
            0 | 1 => Err("Int does not fit in 32 bits".into()),
            s => Err(format!("Int sign byte is {s}, expected 0 or 1")),
        }
    }

    fn int_field(&mut self, bytes: &[u8], at: u64) {
        let end = at + bytes.len() as u64;
        let cur_id = self
            .block
            .as_ref()
            .map(|b| b.summary.dump_id)
            .filter(|i| *i > 0);
        let v = match self.read_int(bytes) {
            Ok(v) => v,
            Err(e) => {
                self.fatal(cur_id, at, e);
                return;
            }
        };
        match self.phase {
            Phase::BlockId => {
                self.span(at..end, SpanKind::BlockId, Some(v));
                self.start_block(v);
            }
            Phase::BlobOid => {
                self.span(
                    at..end,
                    if v == 0 {
                        SpanKind::Terminator
                    } else {
                        SpanKind::BlobOid
                    },
                    cur_id,
                );
                if v == 0 {
                    self.end_block();
                } else if v < 0 {
                    self.fatal(cur_id, at, format!("large object oid {v} is negative"));
                } else if !self.seen_oids.insert(v) {
                    self.fatal(cur_id, at, format!("large object {v} appears twice"));
                } else if let Some(b) = self.block.as_mut() {
                    if !self.blob_oids.is_empty() && !self.blob_oids.contains(&v) {
                        self.findings.push(Finding {
                            severity: Severity::Error,
                            location: Location::Dump {
                                dump_id: cur_id,
                                name: Some(b.summary.name.clone()),
                                offset: Some(at),
                            },
                            what: format!("large object {v} has no BLOB entry in the TOC"),
                        });
                    }
                    b.blob_oid = v;
                    b.summary.rows += 1;
                    b.z = None;
                    b.stream_done = false;
                    b.stream_failed = false;
                    b.stream_chunks = 0;
                    self.phase = Phase::ChunkLen;
                }
            }
            Phase::ChunkLen => {
                if v == 0 {
                    self.span(at..end, SpanKind::Terminator, cur_id);
                    self.end_stream(at);
                    if self.phase == Phase::Stopped {
                        return;
                    }
                    let blobs = self.block.as_ref().is_some_and(|b| b.blobs);
                    if blobs {
                        self.phase = Phase::BlobOid;
                    } else {
                        self.end_block();
                    }
                } else if v < 0 {
                    self.fatal(cur_id, at, format!("chunk length {v} is negative"));
                } else {
                    self.span(at..end, SpanKind::ChunkLen, cur_id);
                    if let Some(b) = self.block.as_mut() {
                        b.summary.stored_bytes += v as u64;
                        b.stream_chunks += 1;
                    }
                    self.phase = Phase::Chunk(v as u64);
                }
            }
            _ => {}
        }
    }

    fn start_block(&mut self, id: i64) {
        let at = self.block_start;
        let Some(&entry) = self.ids.get(&id) else {
            self.fatal(
                Some(id),
                at,
                format!("data block for dump id {id}, which is not in the TOC"),
            );
            return;
        };
        let Some(e) = self.toc.get(entry).cloned() else {
            return;
        };
        if !e.had_dumper {
            self.fatal(
                Some(id),
                at,
                format!("data block for dump id {id}, whose TOC entry has no data"),
            );
            return;
        }
        if self.seen_blocks.contains(&id) {
            self.fatal(Some(id), at, format!("second data block for dump id {id}"));
            return;
        }
        let blobs = self.block.as_ref().is_some_and(|b| b.blobs);
        let desc = e.desc.clone().unwrap_or_default();
        let want_blobs = desc == "BLOBS";
        if blobs != want_blobs {
            self.fatal(
                Some(id),
                at,
                format!(
                    "block type {} does not match the {desc:?} entry",
                    if blobs { BLK_BLOBS } else { BLK_DATA }
                ),
            );
            return;
        }
        // Blocks come in TOC order; anything skipped is missing.
        let pos = self.expected[self.next_expected.min(self.expected.len())..]
            .iter()
            .position(|&i| i == entry);
        let Some(skip) = pos else {
            self.fatal(
                Some(id),
                at,
                format!("data block for dump id {id} is out of TOC order"),
            );
            return;
        };
        for k in 0..skip {
            let missing = self.expected[self.next_expected + k];
            let mid = self.toc.get(missing).map(|e| e.dump_id);
            self.finding(
                Severity::Error,
                mid,
                at,
                "the data block of this entry is missing".into(),
            );
        }
        self.next_expected += skip + 1;
        if let Some(DataOffset::Set { pos }) = e.data_offset {
            if pos != at {
                self.finding(
                    Severity::Error,
                    Some(id),
                    at,
                    format!("TOC says the data block is at offset {pos}, found at {at}"),
                );
            }
        }
        let copy = if !blobs {
            e.copy_stmt
                .as_deref()
                .and_then(copy_columns)
                .map(|cols| CopyRows {
                    cols,
                    tabs: 0,
                    line_len: 0,
                    prefix: [0; 2],
                    ended: false,
                    bad: false,
                    rows: 0,
                    utf8: self.utf8,
                    carry: Vec::new(),
                })
        } else {
            None
        };
        let name = e.qualified_name();
        self.seen_blocks.insert(id);
        if let Some(b) = self.block.as_mut() {
            b.entry = entry;
            b.summary.dump_id = id;
            b.summary.desc = desc;
            b.summary.name = name;
            b.copy = copy;
        }
        self.phase = if blobs {
            Phase::BlobOid
        } else {
            Phase::ChunkLen
        };
    }

    fn chunk_data(&mut self, data: &[u8], at: u64) {
        let compressed = self.compressed;
        let can_inflate = self.can_inflate;
        let Some(b) = self.block.as_mut() else {
            return;
        };
        let id = b.summary.dump_id;
        if self.track {
            self.spans.push(Span {
                range: at..at + data.len() as u64,
                kind: SpanKind::ChunkData,
                dump_id: Some(id),
            });
        }
        if !compressed {
            b.summary.data_bytes += data.len() as u64;
            if let Some(c) = b.copy.as_mut() {
                c.feed(data);
            }
            return;
        }
        if !can_inflate || b.stream_failed {
            return;
        }
        let mut problem: Option<(u64, String)> = None;
        if b.stream_done {
            problem = Some((at, "bytes after the end of the compressed stream".into()));
        } else {
            let z = b.z.get_or_insert_with(|| Decompress::new(true));
            let mut input = data;
            loop {
                let before_in = z.total_in();
                let before_out = z.total_out();
                let res = z.decompress(input, &mut self.out, FlushDecompress::None);
                let used = (z.total_in() - before_in) as usize;
                let produced = (z.total_out() - before_out) as usize;
                input = input.get(used..).unwrap_or(&[]);
                let out = self.out.get(..produced).unwrap_or(&[]);
                b.summary.data_bytes += produced as u64;
                if let Some(c) = b.copy.as_mut() {
                    c.feed(out);
                }
                match res {
                    Err(e) => {
                        let off = at + (data.len() - input.len()) as u64;
                        problem = Some((off, format!("could not uncompress data: {e}")));
                        break;
                    }
                    Ok(Status::StreamEnd) => {
                        b.stream_done = true;
                        if !input.is_empty() {
                            let off = at + (data.len() - input.len()) as u64;
                            problem =
                                Some((off, "bytes after the end of the compressed stream".into()));
                        }
                        break;
                    }
                    Ok(_) => {
                        if input.is_empty() && produced < self.out.len() {
                            break;
                        }
                        if used == 0 && produced == 0 {
                            let off = at + (data.len() - input.len()) as u64;
                            problem = Some((off, "compressed stream makes no progress".into()));
                            break;
                        }
                    }
                }
            }
        }
        if let Some((off, what)) = problem {
            b.stream_failed = true;
            let what = if b.blobs {
                format!("large object {}: {what}", b.blob_oid)
            } else {
                what
            };
            self.finding(Severity::Error, Some(id), off, what);
        }
    }

    /// A zero chunk length: the end of the current stream.
    fn end_stream(&mut self, at: u64) {
        let compressed = self.compressed && self.can_inflate;
        let Some(b) = self.block.as_mut() else {
            return;
        };
        let id = b.summary.dump_id;
        let mut what = None;
        if compressed && !b.stream_failed && !b.stream_done {
            what = Some(if b.stream_chunks == 0 {
                "no compressed stream where pg_dump always writes one".to_string()
            } else {
                "the compressed stream ends early (data cut short)".to_string()
            });
        }
        if let Some(w) = what {
            let w = if b.blobs {
                format!("large object {}: {w}", b.blob_oid)
            } else {
                w
            };
            self.finding(Severity::Error, Some(id), at, w);
        }
    }

    fn end_block(&mut self) {
        let Some(mut b) = self.block.take() else {
            return;
        };
        let id = b.summary.dump_id;
        if let Some(c) = b.copy.as_mut() {
            if !c.bad {
                c.finish();
            }
            if c.bad {
                self.finding(
                    Severity::Error,
                    Some(id),
                    b.summary.offset,
                    format!(
                        "COPY data breaks its row format ({} columns per row, newline-terminated{})",
                        c.cols,
                        if c.utf8 { ", UTF-8" } else { "" }
                    ),
                );
            }
        }
        if !b.blobs {
            b.summary.rows = b.copy.as_ref().map(|c| c.rows_hint()).unwrap_or(0);
        } else {
            let mut missing: Vec<i64> = self
                .blob_oids
                .difference(&self.seen_oids)
                .copied()
                .collect();
            missing.sort_unstable();
            for oid in missing {
                self.finding(
                    Severity::Error,
                    Some(id),
                    b.summary.offset,
                    format!("large object {oid} of the TOC has no data"),
                );
            }
        }
        self.blocks.push(b.summary);
        self.phase = if self.next_expected >= self.expected.len() {
            Phase::End
        } else {
            Phase::BlockType
        };
    }

    /// Ends the input and returns what was found.
    pub fn finish(mut self) -> DumpSummary {
        if self.phase == Phase::Toc {
            self.try_toc(true);
        }
        let end = self.total;
        match self.phase {
            Phase::End | Phase::Stopped | Phase::Toc => {}
            Phase::BlockType => {}
            _ => {
                let id = self
                    .block
                    .as_ref()
                    .map(|b| b.summary.dump_id)
                    .filter(|i| *i > 0);
                self.finding(
                    Severity::Error,
                    id,
                    end,
                    "the archive ends inside a data block (truncated)".into(),
                );
            }
        }
        if self.phase != Phase::Stopped && self.header.is_some() {
            let start = if self.phase == Phase::BlockType {
                self.next_expected
            } else {
                self.next_expected.min(self.expected.len())
            };
            let missing: Vec<usize> = self.expected.get(start..).unwrap_or(&[]).to_vec();
            for i in missing {
                let id = self.toc.get(i).map(|e| e.dump_id);
                self.finding(
                    Severity::Error,
                    id,
                    end,
                    "the data block of this entry is missing (archive truncated)".into(),
                );
            }
        } else if self.phase == Phase::Stopped && self.header.is_some() {
            let left = self.expected.len().saturating_sub(self.next_expected);
            if left > 0 {
                self.finding(
                    Severity::Warning,
                    None,
                    end,
                    format!("{left} data entries after the damage were not checked"),
                );
            }
        }
        DumpSummary {
            header: self.header,
            toc: self.toc,
            blocks: self.blocks,
            bytes: self.total,
            findings: self.findings,
            spans: self.spans,
        }
    }
}

impl CopyRows {
    fn feed(&mut self, data: &[u8]) {
        if self.bad {
            return;
        }
        if (self.utf8 && !self.check_utf8(data)) || data.contains(&0) {
            // Text never holds a NUL byte in PostgreSQL.
            self.bad = true;
            return;
        }
        let mut rest = data;
        while !rest.is_empty() {
            let i = rest
                .iter()
                .position(|&b| b == b'\t' || b == b'\n')
                .unwrap_or(rest.len());
            let (text, tail) = rest.split_at(i);
            for &b in text {
                if self.line_len < 2 {
                    self.prefix[self.line_len] = b;
                }
                self.line_len += 1;
            }
            let Some((&sep, after)) = tail.split_first() else {
                break;
            };
            rest = after;
            if self.ended {
                // After the `\.` end marker pg_dump writes only empty lines.
                if sep != b'\n' || self.line_len != 0 {
                    self.bad = true;
                    return;
                }
                continue;
            }
            if sep == b'\t' {
                self.tabs += 1;
                self.line_len += 1;
                continue;
            }
            if self.tabs == 0 && self.line_len == 2 && self.prefix == *b"\\." {
                self.ended = true;
            } else if self.tabs + 1 != self.cols {
                self.bad = true;
                return;
            } else {
                self.rows += 1;
            }
            self.tabs = 0;
            self.line_len = 0;
        }
    }

    fn check_utf8(&mut self, data: &[u8]) -> bool {
        let mut joined;
        let buf: &[u8] = if self.carry.is_empty() {
            data
        } else {
            joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(data);
            &joined
        };
        match std::str::from_utf8(buf) {
            Ok(_) => true,
            Err(e) => {
                if e.error_len().is_some() {
                    return false;
                }
                // An incomplete sequence at the end: carry it over.
                self.carry = buf.get(e.valid_up_to()..).unwrap_or(&[]).to_vec();
                true
            }
        }
    }

    fn finish(&mut self) {
        if self.line_len != 0 || !self.carry.is_empty() {
            self.bad = true;
        }
    }

    fn rows_hint(&self) -> u64 {
        self.rows
    }
}

/// The number of columns in `COPY name (a, b, "c,d") FROM stdin;`, or `None` if the statement
/// has no column list.
fn copy_columns(stmt: &str) -> Option<usize> {
    let s = stmt.strip_prefix("COPY ")?;
    let s = s.strip_suffix(" FROM stdin;\n")?;
    // The column list is the last parenthesised group; the table name may be quoted.
    let mut in_quotes = false;
    let mut depth = 0usize;
    let mut cols = 0usize;
    let mut seen_list = false;
    let mut any = false;
    for ch in s.chars() {
        match ch {
            '"' => in_quotes = !in_quotes,
            '(' if !in_quotes => {
                if depth == 0 {
                    seen_list = true;
                    cols = 1;
                    any = false;
                }
                depth += 1;
            }
            ')' if !in_quotes => depth = depth.checked_sub(1)?,
            ',' if !in_quotes && depth == 1 => cols += 1,
            c if depth == 1 && !c.is_whitespace() => any = true,
            _ => {}
        }
    }
    (seen_list && any && !in_quotes && depth == 0).then_some(cols)
}

/// Both ways pg_dump may print an identifier: bare, or double-quoted with `"` doubled.
fn ident_forms(name: &str) -> [String; 2] {
    [
        name.to_string(),
        format!("\"{}\"", name.replace('"', "\"\"")),
    ]
}

/// Whether `sql` names `ns.tag` (or `tag` without a schema) in either quoting.
fn mentions(sql: &str, ns: Option<&str>, tag: &str) -> bool {
    let tags = ident_forms(tag);
    match ns.filter(|n| !n.is_empty()) {
        None => tags.iter().any(|t| sql.contains(t.as_str())),
        Some(ns) => ident_forms(ns).iter().any(|n| {
            tags.iter()
                .any(|t| sql.contains(format!("{n}.{t}").as_str()))
        }),
    }
}

/// The TOC entry types pg_dump 9.0 to 17 write.
fn is_known_desc(desc: &str) -> bool {
    matches!(
        desc,
        "ACCESS METHOD"
            | "ACL"
            | "AGGREGATE"
            | "BLOB"
            | "BLOB METADATA"
            | "BLOBS"
            | "CAST"
            | "CHECK CONSTRAINT"
            | "COLLATION"
            | "COMMENT"
            | "CONSTRAINT"
            | "CONVERSION"
            | "DATABASE"
            | "DATABASE PROPERTIES"
            | "DEFAULT"
            | "DEFAULT ACL"
            | "DOMAIN"
            | "ENCODING"
            | "EVENT TRIGGER"
            | "EXTENSION"
            | "FK CONSTRAINT"
            | "FOREIGN DATA WRAPPER"
            | "FOREIGN SERVER"
            | "FOREIGN TABLE"
            | "FUNCTION"
            | "INDEX"
            | "INDEX ATTACH"
            | "LARGE OBJECT"
            | "MATERIALIZED VIEW"
            | "MATERIALIZED VIEW DATA"
            | "OPERATOR"
            | "OPERATOR CLASS"
            | "OPERATOR FAMILY"
            | "POLICY"
            | "PROCEDURAL LANGUAGE"
            | "PROCEDURE"
            | "PUBLICATION"
            | "PUBLICATION TABLE"
            | "PUBLICATION TABLES IN SCHEMA"
            | "ROW SECURITY"
            | "RULE"
            | "SCHEMA"
            | "SEARCHPATH"
            | "SECURITY LABEL"
            | "SEQUENCE"
            | "SEQUENCE OWNED BY"
            | "SEQUENCE SET"
            | "SERVER"
            | "SHELL TYPE"
            | "STATISTICS"
            | "STATISTICS DATA"
            | "STDSTRINGS"
            | "SUBSCRIPTION"
            | "SUBSCRIPTION TABLE"
            | "TABLE"
            | "TABLE ATTACH"
            | "TABLE DATA"
            | "TEXT SEARCH CONFIGURATION"
            | "TEXT SEARCH DICTIONARY"
            | "TEXT SEARCH PARSER"
            | "TEXT SEARCH TEMPLATE"
            | "TRANSFORM"
            | "TRIGGER"
            | "TYPE"
            | "USER MAPPING"
            | "VIEW"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_column_count() {
        assert_eq!(
            copy_columns("COPY public.t (a, b, c) FROM stdin;\n"),
            Some(3)
        );
        assert_eq!(
            copy_columns("COPY public.\"x(y\" (\"a,b\", c) FROM stdin;\n"),
            Some(2)
        );
        assert_eq!(copy_columns("COPY public.t  FROM stdin;\n"), None);
        assert_eq!(copy_columns("garbage"), None);
    }

    #[test]
    fn names_in_sql() {
        assert!(mentions(
            "DROP TABLE public.\"Mixed Case\";\n",
            Some("public"),
            "Mixed Case"
        ));
        assert!(mentions(
            "COPY audit.log (at) FROM stdin;\n",
            Some("audit"),
            "log"
        ));
        assert!(!mentions(
            "COPY audit.log (at) FROM stdin;\n",
            Some("audit"),
            "lof"
        ));
    }
}
