//! Header and TOC parsing over a byte slice (the caller buffers until the TOC is complete).

use super::check::{Span, SpanKind};
use super::{
    ArchiveFormat, ArchiveHeader, ArchiveVersion, Compression, DataOffset, DumpTime, Section,
    TocEntry, K_OFFSET_NO_DATA, K_OFFSET_POS_NOT_SET, K_OFFSET_POS_SET, MAGIC,
};

/// Why parsing stopped.
#[derive(Debug)]
pub(crate) enum ParseError {
    /// The slice ends before the structure does.
    NeedMore,
    /// The bytes break a rule of the format.
    Bad {
        /// Absolute byte offset of the offending field.
        offset: u64,
        /// What is wrong.
        what: String,
        /// The TOC entry being read, where known.
        dump_id: Option<i64>,
    },
}

type PResult<T> = Result<T, ParseError>;

/// A parsed header and TOC.
#[derive(Debug)]
pub(crate) struct ParsedToc {
    pub header: ArchiveHeader,
    pub entries: Vec<TocEntry>,
    /// Bytes of the slice used.
    pub consumed: usize,
    /// Offsets of strings that are not valid UTF-8, with their entry.
    pub non_utf8: Vec<(u64, Option<i64>, &'static str)>,
}

/// A cursor over the archive's first bytes.
pub(crate) struct Cur<'a, 's> {
    buf: &'a [u8],
    pos: usize,
    int_size: usize,
    off_size: usize,
    spans: Option<&'s mut Vec<Span>>,
    dump_id: Option<i64>,
    non_utf8: Vec<(u64, Option<i64>, &'static str)>,
}

impl<'a, 's> Cur<'a, 's> {
    fn new(buf: &'a [u8], spans: Option<&'s mut Vec<Span>>) -> Self {
        Cur {
            buf,
            pos: 0,
            int_size: 4,
            off_size: 8,
            spans,
            dump_id: None,
            non_utf8: Vec::new(),
        }
    }

    fn bad(&self, offset: usize, what: impl Into<String>) -> ParseError {
        ParseError::Bad {
            offset: offset as u64,
            what: what.into(),
            dump_id: self.dump_id,
        }
    }

    fn span(&mut self, start: usize, kind: SpanKind) {
        let dump_id = self.dump_id;
        let end = self.pos;
        if let Some(s) = self.spans.as_deref_mut() {
            s.push(Span {
                range: start as u64..end as u64,
                kind,
                dump_id,
            });
        }
    }

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(ParseError::NeedMore)?;
        let s = self.buf.get(self.pos..end).ok_or(ParseError::NeedMore)?;
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> PResult<u8> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    /// An Int: a sign byte (the writer uses 0 or 1), then `int_size` magnitude bytes, LE.
    fn int_raw(&mut self) -> PResult<i64> {
        let start = self.pos;
        let sign = self.byte()?;
        let mag = self.take(self.int_size)?;
        let mut v: u64 = 0;
        for (i, b) in mag.iter().enumerate() {
            if i >= 4 {
                if *b != 0 {
                    return Err(self.bad(start, "Int does not fit in 32 bits"));
                }
            } else {
                v |= u64::from(*b) << (8 * i);
            }
        }
        match sign {
            0 => {
                if v > i32::MAX as u64 {
                    return Err(self.bad(start, format!("Int {v} does not fit in 32 bits")));
                }
                Ok(v as i64)
            }
            1 => {
                if v == 0 {
                    return Err(
                        self.bad(start, "Int is a negative zero, which pg_dump never writes")
                    );
                }
                if v > 1 << 31 {
                    return Err(self.bad(start, format!("Int -{v} does not fit in 32 bits")));
                }
                Ok(-(v as i64))
            }
            s => Err(self.bad(start, format!("Int sign byte is {s}, expected 0 or 1"))),
        }
    }

    fn int(&mut self, field: &'static str) -> PResult<i64> {
        let start = self.pos;
        let v = self.int_raw()?;
        self.span(start, SpanKind::Int { field });
        Ok(v)
    }

    /// A Str: an Int length (−1 = NULL), then that many bytes.
    fn str(&mut self, field: &'static str) -> PResult<Option<String>> {
        let start = self.pos;
        let len = self.int_raw()?;
        self.span(start, SpanKind::StrLen { field });
        if len == -1 {
            return Ok(None);
        }
        if len < 0 {
            return Err(self.bad(start, format!("{field}: string length {len}")));
        }
        let tstart = self.pos;
        let bytes = self.take(len as usize)?;
        self.span(tstart, SpanKind::StrText { field });
        if let Some(i) = bytes.iter().position(|&b| b == 0) {
            // WriteStr writes a C string: it can never hold a NUL byte.
            return Err(self.bad(tstart + i, format!("{field}: NUL byte inside a string")));
        }
        Ok(Some(match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => {
                self.non_utf8.push((tstart as u64, self.dump_id, field));
                String::from_utf8_lossy(bytes).into_owned()
            }
        }))
    }

    fn offset(&mut self) -> PResult<DataOffset> {
        let start = self.pos;
        let flag = self.byte()?;
        self.span(start, SpanKind::OffsetFlag);
        let vstart = self.pos;
        let bytes = self.take(self.off_size)?;
        self.span(vstart, SpanKind::OffsetValue);
        let mut v: u64 = 0;
        for (i, b) in bytes.iter().enumerate() {
            v |= u64::from(*b) << (8 * i);
        }
        match flag {
            K_OFFSET_POS_SET => Ok(DataOffset::Set { pos: v }),
            K_OFFSET_POS_NOT_SET | K_OFFSET_NO_DATA if v != 0 => Err(self.bad(
                vstart,
                format!("data offset {v} stored with flag {flag}, which pg_dump writes as 0"),
            )),
            K_OFFSET_POS_NOT_SET => Ok(DataOffset::NotSet),
            K_OFFSET_NO_DATA => Ok(DataOffset::NoData),
            f => Err(self.bad(start, format!("unexpected data offset flag {f}"))),
        }
    }
}

/// Parses the header and the TOC at the start of `buf`.
pub(crate) fn parse_toc(buf: &[u8], spans: Option<&mut Vec<Span>>) -> PResult<ParsedToc> {
    let mut c = Cur::new(buf, spans);
    let header = parse_header(&mut c)?;
    let start = c.pos;
    let count = c.int("toc_count")?;
    if count < 0 {
        return Err(c.bad(start, format!("TOC count {count} is negative")));
    }
    let mut entries = Vec::with_capacity((count as usize).min(4096));
    for _ in 0..count {
        entries.push(parse_entry(&mut c, &header)?);
    }
    c.dump_id = None;
    Ok(ParsedToc {
        header,
        entries,
        consumed: c.pos,
        non_utf8: std::mem::take(&mut c.non_utf8),
    })
}

fn parse_header(c: &mut Cur<'_, '_>) -> PResult<ArchiveHeader> {
    let magic = c.take(5)?;
    if magic != MAGIC {
        let text = magic
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
        return Err(c.bad(
            0,
            if text {
                "not a pg_dump custom archive: the file starts with text (a plain SQL dump is restored with psql)"
            } else {
                "not a pg_dump custom archive: no PGDMP magic"
            },
        ));
    }
    c.span(0, SpanKind::Magic);
    let vstart = c.pos;
    let v = c.take(3)?;
    let version = ArchiveVersion {
        major: v.first().copied().unwrap_or(0),
        minor: v.get(1).copied().unwrap_or(0),
        rev: v.get(2).copied().unwrap_or(0),
    };
    c.span(vstart, SpanKind::Version);
    if version.major != 1
        || !version.at_least(ArchiveVersion::V1_12)
        || version.minor > ArchiveVersion::V1_16.minor
        || version.rev != 0
    {
        return Err(c.bad(
            vstart,
            format!("unsupported archive version {version} (1.12.0 to 1.16.0 are read)"),
        ));
    }
    let s = c.pos;
    let int_size = c.byte()?;
    c.span(s, SpanKind::IntSize);
    if !(1..=8).contains(&int_size) {
        return Err(c.bad(s, format!("integer size {int_size} is not supported")));
    }
    c.int_size = int_size as usize;
    let s = c.pos;
    let off_size = c.byte()?;
    c.span(s, SpanKind::OffSize);
    if !(1..=8).contains(&off_size) {
        return Err(c.bad(s, format!("offset size {off_size} is not supported")));
    }
    c.off_size = off_size as usize;
    let s = c.pos;
    let fb = c.byte()?;
    c.span(s, SpanKind::Format);
    let format = ArchiveFormat::from_byte(fb)
        .ok_or_else(|| c.bad(s, format!("unknown archive format {fb}")))?;
    let s = c.pos;
    let compression = if version.at_least(ArchiveVersion::V1_15) {
        let a = c.byte()?;
        c.span(s, SpanKind::Compression);
        match a {
            0 => Compression::None,
            1 => Compression::Gzip { level: None },
            2 => Compression::Lz4,
            3 => Compression::Zstd,
            x => return Err(c.bad(s, format!("unknown compression algorithm {x}"))),
        }
    } else {
        let level = c.int_raw()?;
        c.span(s, SpanKind::Compression);
        match level {
            0 => Compression::None,
            -1 | 1..=9 => Compression::Gzip { level: Some(level) },
            x => return Err(c.bad(s, format!("invalid compression level {x}"))),
        }
    };
    let mut t = [0i64; 7];
    const NAMES: [&str; 7] = [
        "time.sec",
        "time.min",
        "time.hour",
        "time.mday",
        "time.mon",
        "time.year",
        "time.isdst",
    ];
    const RANGES: [(i64, i64); 7] = [
        (0, 61),
        (0, 59),
        (0, 23),
        (1, 31),
        (0, 11),
        (0, 1100),
        (-1, 1),
    ];
    for i in 0..7 {
        let s = c.pos;
        let v = c.int(NAMES[i])?;
        let (lo, hi) = RANGES[i];
        if v < lo || v > hi {
            return Err(c.bad(
                s,
                format!("creation {} is {v}, outside {lo}..={hi}", NAMES[i]),
            ));
        }
        t[i] = v;
    }
    let created = DumpTime {
        sec: t[0],
        min: t[1],
        hour: t[2],
        mday: t[3],
        mon: t[4],
        year: t[5],
        isdst: t[6],
    };
    let database = c.str("database")?;
    let server_version = c.str("server_version")?;
    let pg_dump_version = c.str("pg_dump_version")?;
    Ok(ArchiveHeader {
        version,
        int_size,
        off_size,
        format,
        compression,
        created,
        database,
        server_version,
        pg_dump_version,
    })
}

fn parse_entry(c: &mut Cur<'_, '_>, h: &ArchiveHeader) -> PResult<TocEntry> {
    let offset = c.pos as u64;
    c.dump_id = None;
    let s = c.pos;
    let dump_id = c.int("dump_id")?;
    if dump_id <= 0 {
        return Err(c.bad(
            s,
            format!("entry ID {dump_id} out of range -- perhaps a corrupt TOC"),
        ));
    }
    c.dump_id = Some(dump_id);
    if let Some(last) = c.spans.as_deref_mut().and_then(|v| v.last_mut()) {
        last.dump_id = Some(dump_id);
    }
    let s = c.pos;
    let had_dumper = match c.int("had_dumper")? {
        0 => false,
        1 => true,
        x => return Err(c.bad(s, format!("had-data flag is {x}, expected 0 or 1"))),
    };
    let table_oid = c.str("table_oid")?;
    let oid = c.str("oid")?;
    let tag = c.str("tag")?;
    let desc = c.str("desc")?;
    let s = c.pos;
    let sv = c.int("section")?;
    let section =
        Section::from_int(sv).ok_or_else(|| c.bad(s, format!("unexpected section code {sv}")))?;
    let defn = c.str("defn")?;
    let drop_stmt = c.str("drop_stmt")?;
    let copy_stmt = c.str("copy_stmt")?;
    let namespace = c.str("namespace")?;
    let tablespace = c.str("tablespace")?;
    let table_am = if h.version.at_least(ArchiveVersion::V1_14) {
        c.str("table_am")?
    } else {
        None
    };
    let relkind = if h.version.at_least(ArchiveVersion::V1_16) {
        Some(c.int("relkind")?)
    } else {
        None
    };
    let owner = c.str("owner")?;
    let with_oids = c.str("with_oids")?;
    let mut dependencies = Vec::new();
    loop {
        let s = c.pos;
        match c.str("dependency")? {
            None => break,
            Some(d) => {
                let id = parse_decimal(&d)
                    .filter(|v| *v > 0)
                    .ok_or_else(|| c.bad(s, format!("dependency {d:?} is not a dump id")))?;
                dependencies.push(id);
            }
        }
    }
    let (data_offset, file_name) = match h.format {
        ArchiveFormat::Custom => (Some(c.offset()?), None),
        ArchiveFormat::Null => (None, None),
        ArchiveFormat::Tar | ArchiveFormat::Directory => (None, c.str("file_name")?),
    };
    Ok(TocEntry {
        offset,
        dump_id,
        had_dumper,
        table_oid,
        oid,
        tag,
        desc,
        section,
        defn,
        drop_stmt,
        copy_stmt,
        namespace,
        tablespace,
        table_am,
        relkind,
        owner,
        with_oids,
        dependencies,
        data_offset,
        file_name,
    })
}

/// A non-negative decimal number without sign or spaces.
pub(crate) fn parse_decimal(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
