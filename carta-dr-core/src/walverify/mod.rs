//! A record-level pass over WAL: what `pg_waldump` would choke on, found faster.
//!
//! [`WalRecordCheck`] is sans-IO: feed it whole segment files in LSN order with
//! [`WalRecordCheck::segment`] (use [`select_segments`] to pick, for each segment number, the
//! file a recovery on the chosen timeline reads), then call [`WalRecordCheck::finish`]. It
//! checks every page header (magic, flags, long header with system identifier, segment size
//! and page size, `xlp_pageaddr`, timeline never decreasing, `xlp_rem_len`), then every
//! record: length, resource manager id, `xl_prev` chaining, and the CRC-32C (body first, then
//! the header without its CRC field), following records across pages and segments and
//! jumping to the next segment after an `XLOG_SWITCH`.
//!
//! # End of WAL versus corruption
//!
//! PostgreSQL cannot tell a torn tail from damage: it stops at the first invalid record. The
//! check does the same, then classifies the stop ([formats §3.6]):
//!
//! * in a segment followed by later segments, it is **corruption** (later WAL exists, so this
//!   point had to be readable), and the check resynchronises at the next segment;
//! * before [`WalVerifyOptions::end_lsn`] (a backup's end LSN, a manifest's End-LSN), it is
//!   **corruption**;
//! * with [`WalVerifyOptions::complete_segments`] (archived segments are complete files), a
//!   stop anywhere but after an `XLOG_SWITCH` is **corruption**;
//! * otherwise it is the **end of WAL**, reported as information. If a later page of the same
//!   segment still carries a valid header for its own position, a warning says the stop may be
//!   damage.
//!
//! Bytes after the end of WAL and after an `XLOG_SWITCH` are never read by PostgreSQL and are
//! not checked: a change there is undetectable by design.
//!
//! Sources: PostgreSQL `src/include/access/xlogrecord.h` (XLogRecord), `xlog_internal.h`,
//! `src/backend/access/transam/xlogreader.c` (XLogDecodeNextRecord, ValidXLogRecordHeader,
//! ValidXLogRecord, XLogReaderValidatePageHeader), `src/include/access/rmgr.h`.
//!
//! [formats §3.6]: https://www.postgresql.org/docs/15/wal-internals.html

mod crc;
mod parallel;
pub mod tblspc;
mod verifier;

pub use parallel::check_segments;
pub use tblspc::{TablespaceCreate, TablespaceCreateScan, TablespaceScanSummary};
pub use verifier::{verify_wal_dir, verify_wal_dir_threads, WalVerifier};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use self::crc::crc_records;
use crate::envelope::crc32c_append;
use crate::traits::{Finding, Location, Severity};
use crate::wal::page::{
    pg_major_from_magic, PageHeader, XLOG_BLCKSZ, XLP_FIRST_IS_CONTRECORD,
    XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_LONG_HEADER,
};
use crate::{Lsn, TimelineId, WalFileName, WalSegmentName};

/// `SizeOfXLogRecord` (`xlogrecord.h`): the record header.
pub const SIZE_OF_XLOG_RECORD: usize = 24;
/// Offset of `xl_crc` in the record header.
const XL_CRC_OFFSET: usize = 20;
/// `RM_XLOG_ID` (`rmgrlist.h`).
pub const RM_XLOG_ID: u8 = 0;
/// `XLOG_SWITCH` (`pg_control.h`): the info bits of a WAL segment switch.
pub const XLOG_SWITCH: u8 = 0x40;
/// `XLOG_OVERWRITE_CONTRECORD` (`pg_control.h`): replaces a lost continuation.
pub const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;
/// `RM_MIN_CUSTOM_ID` (`rmgr.h`, PostgreSQL 15+): custom resource managers are 128–255.
pub const RM_MIN_CUSTOM_ID: u8 = 128;
/// `XLogRecordMaxSize` (`xlogrecord.h`): the largest record PostgreSQL writes.
pub const XLOG_RECORD_MAX_SIZE: u32 = 1020 * 1024 * 1024;

const PAGE: usize = XLOG_BLCKSZ as usize;

fn maxalign(v: u64) -> u64 {
    (v + 7) & !7
}

/// The highest built-in resource manager id of a major version (`rmgrlist.h`).
fn max_builtin_rmid(major: u32) -> u8 {
    if major <= 13 {
        20
    } else {
        21
    }
}

/// Options of a check.
#[derive(Clone, Debug, Default)]
pub struct WalVerifyOptions {
    /// The segments are complete archived files: valid WAL must reach the end of each, or an
    /// `XLOG_SWITCH`. (`.partial` files are exempt.)
    pub complete_segments: bool,
    /// WAL must be readable from here (a backup's start LSN, a manifest's Start-LSN): a
    /// first segment starting after it means WAL is missing.
    pub start_lsn: Option<Lsn>,
    /// WAL must be readable up to here (exclusive): a stop before it is corruption.
    pub end_lsn: Option<Lsn>,
    /// The cluster's system identifier, when known (else the first long header's is used).
    pub system_identifier: Option<u64>,
}

/// What a check found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalCheckSummary {
    /// Segment files read.
    pub segments: u64,
    /// Bytes of segment files read.
    pub bytes: u64,
    /// Records whose CRC was verified.
    pub records: u64,
    /// Bytes of those records.
    pub record_bytes: u64,
    /// Records that span more than one page.
    pub page_crossing: u64,
    /// Records that span two segments.
    pub segment_crossing: u64,
    /// `XLOG_SWITCH` records.
    pub switches: u64,
    /// Timelines seen in page headers.
    pub timelines: Vec<u32>,
    /// The first record verified.
    pub first_record: Option<Lsn>,
    /// The end of the last valid record.
    pub end_of_valid_wal: Option<Lsn>,
    /// Why reading stopped, when it stopped before the end of the last segment.
    pub stop: Option<String>,
    /// Everything found.
    pub findings: Vec<Finding>,
    /// Start and length of every valid record, when [`WalRecordCheck::track_records`] was set.
    #[serde(skip)]
    pub record_spans: Vec<(Lsn, u32)>,
}

impl WalCheckSummary {
    /// Whether an error-severity finding was made.
    pub fn is_corrupt(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Picks the file to read for each segment number, as a recovery following `timeline` (the
/// highest timeline present when `None`) would: the highest timeline not above it, a complete
/// segment before a `.partial` one. History and backup history files are left out. The result
/// is in LSN order.
pub fn select_segments(files: &[WalFileName], timeline: Option<TimelineId>) -> Vec<WalFileName> {
    let target = timeline.or_else(|| {
        files
            .iter()
            .filter(|f| matches!(f, WalFileName::Segment(_) | WalFileName::Partial(_)))
            .map(|f| f.timeline())
            .max()
    });
    let Some(target) = target else {
        return Vec::new();
    };
    let mut best: BTreeMap<(u32, u32), WalFileName> = BTreeMap::new();
    for f in files {
        let (s, partial) = match f {
            WalFileName::Segment(s) => (s, false),
            WalFileName::Partial(s) => (s, true),
            _ => continue,
        };
        if s.timeline > target {
            continue;
        }
        let key = (s.log, s.seg);
        let better = match best.get(&key) {
            None => true,
            Some(WalFileName::Segment(o)) => !partial && s.timeline > o.timeline,
            Some(WalFileName::Partial(o)) => !partial || s.timeline > o.timeline,
            Some(_) => true,
        };
        if better {
            best.insert(key, *f);
        }
    }
    best.into_values().collect()
}

/// The pages of one segment file, read forward.
trait Pages {
    /// The file's length in bytes.
    fn len(&self) -> usize;
    /// Page `p` (`None` past the end, or when it cannot be read). Pages are asked for in
    /// increasing order; an earlier page may be unavailable afterwards.
    fn page(&mut self, p: usize) -> Option<&[u8]>;
}

/// A segment file in memory.
struct SlicePages<'a>(&'a [u8]);

impl Pages for SlicePages<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn page(&mut self, p: usize) -> Option<&[u8]> {
        self.0.get(p * PAGE..(p + 1) * PAGE)
    }
}

/// A segment file read in chunks of whole pages into a reused buffer.
struct ReadPages<'a> {
    reader: &'a mut dyn std::io::Read,
    len: usize,
    buf: &'a mut Vec<u8>,
    /// Pages per chunk.
    chunk_pages: usize,
    /// The first page in `buf`, and how many whole pages it holds.
    first: usize,
    held: usize,
    /// The first read error (or early end of file).
    err: Option<std::io::Error>,
}

impl<'a> ReadPages<'a> {
    fn new(
        reader: &'a mut dyn std::io::Read,
        len: u64,
        chunk: usize,
        buf: &'a mut Vec<u8>,
    ) -> Self {
        ReadPages {
            reader,
            len: usize::try_from(len).unwrap_or(usize::MAX),
            buf,
            chunk_pages: (chunk / PAGE).max(1),
            first: 0,
            held: 0,
            err: None,
        }
    }

    /// Reads the chunk that starts at page `first` (skipping the pages before it).
    fn fill(&mut self, first: usize) -> std::io::Result<()> {
        let mut next = self.first + self.held;
        let total = self.len / PAGE;
        let want = self.chunk_pages.min(total.saturating_sub(first));
        self.buf.resize(want.max(1) * PAGE, 0);
        self.held = 0;
        while next <= first {
            let pages = if next < first {
                (first - next).min(self.chunk_pages)
            } else {
                want
            };
            let dst = self.buf.get_mut(..pages * PAGE).unwrap_or(&mut []);
            self.reader.read_exact(dst)?;
            if next == first {
                self.first = first;
                self.held = pages;
                return Ok(());
            }
            next += pages;
        }
        Ok(())
    }
}

impl Pages for ReadPages<'_> {
    fn len(&self) -> usize {
        self.len
    }
    fn page(&mut self, p: usize) -> Option<&[u8]> {
        if self.err.is_some() || p >= self.len / PAGE {
            return None;
        }
        if p < self.first || p >= self.first + self.held {
            if p < self.first + self.held {
                return None;
            }
            if let Err(e) = self.fill(p) {
                self.err = Some(e);
                self.held = 0;
                return None;
            }
        }
        let i = p - self.first;
        self.buf.get(i * PAGE..(i + 1) * PAGE)
    }
}

/// A record being read across pages: its header is kept, its body is checksummed piece by
/// piece as the pages arrive (never copied).
struct Pending {
    start: Lsn,
    total: u32,
    /// Bytes of the record read so far.
    have: u32,
    /// The record header (`have` bytes of it while `have < 24`).
    head: [u8; SIZE_OF_XLOG_RECORD],
    /// CRC-32C of the body bytes read so far (the record's bytes from offset 24).
    body_crc: u32,
    pages: u32,
    start_segno: u64,
}

impl Pending {
    /// Takes in the next piece of the record.
    fn feed(&mut self, mut piece: &[u8]) {
        let have = self.have as usize;
        if have < SIZE_OF_XLOG_RECORD {
            let n = (SIZE_OF_XLOG_RECORD - have).min(piece.len());
            if let (Some(dst), Some(src)) = (self.head.get_mut(have..have + n), piece.get(..n)) {
                dst.copy_from_slice(src);
            }
            piece = piece.get(n..).unwrap_or(&[]);
            self.have += n as u32;
        }
        self.body_crc = crc32c_append(self.body_crc, piece);
        self.have += piece.len() as u32;
    }
}

/// Where reading stopped, not yet classified.
struct Stop {
    lsn: Lsn,
    segment: String,
    what: String,
    partial: bool,
    /// The stop is at the start of a page (a bad page header) rather than at a record.
    after_switch: bool,
}

/// The sans-IO record-level WAL check. See the [module docs](self).
pub struct WalRecordCheck {
    opts: WalVerifyOptions,
    sum: WalCheckSummary,
    seg_size: u64,
    sysid: Option<u64>,
    magic: Option<u16>,
    max_rmid: u8,
    /// Segment number of the next segment expected.
    next_segno: Option<u64>,
    /// Where the next record starts (`None`: resynchronise at the next page).
    next_rec: Option<Lsn>,
    prev: Option<Lsn>,
    pending: Option<Pending>,
    last_tli: u32,
    stop: Option<Stop>,
    /// Offsets and lengths of the records wholly on the page being read (reused).
    batch: Vec<(u32, u32)>,
    /// Their CRC-32Cs (reused).
    crcs: Vec<u32>,
    last_segment: String,
    track: bool,
    /// How this check entered its first segment (see [`Entry`]).
    entry: Entry,
    /// Set while [`Self::finish_crossing`] reads: stop once the pending record is complete.
    tail_only: bool,
    /// Where the record after the one completed by [`Self::finish_crossing`] starts.
    tail_end: Option<Lsn>,
}

/// What a check started on a segment other than the first (with no state from the segments
/// before it) did differently from a check that read those segments first: everything a
/// parallel pass compares when it joins two parts (see `parallel`).
#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// The segment size, when the first segment set it (and had that size).
    seg_size: u64,
    /// The timeline of the first page header accepted.
    first_tli: Option<u32>,
    /// A record header was checked.
    header_seen: bool,
    /// The `xl_prev` of the first record header checked, when its resource manager was valid
    /// (it is compared to nothing).
    first_prev: Option<u64>,
    /// The first page of the first segment continues a record, which was skipped.
    skip_started: bool,
    /// Where the first record after that skipped continuation starts.
    skip_end: Option<Lsn>,
}

impl WalRecordCheck {
    /// A new check.
    pub fn new(opts: WalVerifyOptions) -> Self {
        WalRecordCheck {
            sysid: opts.system_identifier,
            opts,
            sum: WalCheckSummary::default(),
            seg_size: 0,
            magic: None,
            max_rmid: 21,
            next_segno: None,
            next_rec: None,
            prev: None,
            pending: None,
            last_tli: 0,
            stop: None,
            batch: Vec::new(),
            crcs: Vec::new(),
            last_segment: String::new(),
            track: false,
            entry: Entry::default(),
            tail_only: false,
            tail_end: None,
        }
    }

    /// Records the start and length of every valid record in
    /// [`WalCheckSummary::record_spans`] (for tools and tests; memory grows with the records).
    pub fn track_records(mut self, on: bool) -> Self {
        self.track = on;
        self
    }

    fn push(&mut self, severity: Severity, segment: &str, lsn: Option<Lsn>, what: String) {
        self.sum.findings.push(Finding {
            severity,
            location: Location::Wal {
                segment: segment.to_string(),
                lsn,
            },
            what,
        });
    }

    /// Resolves a pending stop now that later WAL exists: it was corruption.
    fn stop_is_corruption(&mut self, why: &str) {
        if let Some(s) = self.stop.take() {
            let what = format!("{} ({why})", s.what);
            self.push(Severity::Error, &s.segment, Some(s.lsn), what);
            self.sum.stop = None;
        }
    }

    fn record_stop(&mut self, segment: &str, lsn: Lsn, what: String, partial: bool) {
        self.pending = None;
        self.next_rec = None;
        self.sum.stop = Some(format!("{what} at {lsn}"));
        self.stop = Some(Stop {
            lsn,
            segment: segment.to_string(),
            what,
            partial,
            after_switch: false,
        });
    }

    /// Feeds one whole segment file (a complete segment or a `.partial`), in LSN order.
    pub fn segment(&mut self, name: &WalFileName, data: &[u8]) {
        self.segment_from(name, &mut SlicePages(data));
    }

    /// Feeds one whole segment file of `len` bytes read from `reader`, in LSN order, like
    /// [`segment`](Self::segment) but reading it in pieces of `chunk` bytes (rounded to whole
    /// pages) into `buf` (reused from call to call): the pages are checked while they are
    /// still in the CPU cache, and no buffer as large as the segment is needed.
    ///
    /// On a read error (or a file shorter than `len`) the check of this segment ends where
    /// the error occurred, a record cut off by it is dropped without a finding, and the error
    /// is returned: the caller reports that the rest could not be checked.
    pub fn segment_read(
        &mut self,
        name: &WalFileName,
        len: u64,
        reader: &mut dyn std::io::Read,
        chunk: usize,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let mut src = ReadPages::new(reader, len, chunk, buf);
        self.segment_from(name, &mut src);
        match src.err.take() {
            Some(e) => {
                self.pending = None;
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// The segment number of a segment file, once the segment size is known.
    fn segno_of(&self, name: &WalFileName) -> Option<u64> {
        let seg = match name {
            WalFileName::Segment(s) | WalFileName::Partial(s) => s,
            _ => return None,
        };
        if self.seg_size == 0 {
            return None;
        }
        let per_log = 0x1_0000_0000u64 / self.seg_size;
        Some(u64::from(seg.log) * per_log + u64::from(seg.seg))
    }

    /// Reads on into the next segment `name` only as far as needed to finish the record in
    /// progress at the end of the segments fed so far (its CRC, `xl_prev` and the page
    /// headers it crosses are checked as [`Self::segment`] would), without counting that
    /// segment. Returns where the next record starts, or `None` when that is not a clean
    /// continuation (no record in progress, an earlier stop, another segment, any stop while
    /// reading, a record reaching past this segment, an `XLOG_SWITCH`): then the state of the
    /// check is no longer that of a sequential pass.
    fn finish_crossing(&mut self, name: &WalFileName, data: &mut impl Pages) -> Option<Lsn> {
        let (seg, partial) = match name {
            WalFileName::Segment(s) => (*s, false),
            WalFileName::Partial(s) => (*s, true),
            _ => return None,
        };
        if self.pending.is_none()
            || self.stop.is_some()
            || self.seg_size == 0
            || data.len() as u64 != self.seg_size
        {
            return None;
        }
        let segno = self.segno_of(name)?;
        if self.next_segno != Some(segno) {
            return None;
        }
        let started = self.pending.as_ref().map(|p| p.start);
        let fname = name.to_string();
        self.tail_only = true;
        self.tail_end = None;
        let seg_start = Lsn(segno * self.seg_size);
        self.read_segment(&fname, partial, seg.timeline.get(), seg_start, data);
        self.tail_only = false;
        let end = self.tail_end.take();
        if self.stop.is_some() || self.pending.is_some() || self.prev != started {
            return None;
        }
        end
    }

    fn segment_from(&mut self, name: &WalFileName, data: &mut impl Pages) {
        let (seg, partial) = match name {
            WalFileName::Segment(s) => (*s, false),
            WalFileName::Partial(s) => (*s, true),
            other => {
                let n = other.to_string();
                self.push(
                    Severity::Warning,
                    &n,
                    None,
                    "could not check: not a WAL segment file".into(),
                );
                return;
            }
        };
        let fname = name.to_string();
        self.last_segment = fname.clone();
        self.sum.segments += 1;
        let data_len = data.len();
        self.sum.bytes += data_len as u64;
        // Segment size: from the first long header, checked against the file size.
        if self.seg_size == 0 {
            let first = data.page(0).and_then(|p| PageHeader::parse(p).ok());
            match first.and_then(|h| h.long) {
                Some(l) if u64::from(l.seg_size) == data_len as u64 => {
                    self.seg_size = u64::from(l.seg_size)
                }
                _ => {
                    if data_len.is_power_of_two() && data_len >= 1 << 20 {
                        self.seg_size = data_len as u64;
                    } else {
                        self.push(
                            Severity::Error,
                            &fname,
                            None,
                            format!(
                                "segment is {} bytes and has no valid long header: cannot tell the segment size",
                                data_len
                            ),
                        );
                        return;
                    }
                }
            }
        }
        if self.sum.segments == 1 {
            self.entry.seg_size = self.seg_size;
        }
        if data_len as u64 != self.seg_size {
            self.push(
                Severity::Error,
                &fname,
                None,
                format!("segment is {} bytes, expected {}", data_len, self.seg_size),
            );
            self.stop_is_corruption("a later segment is damaged too");
            self.next_segno = None;
            self.pending = None;
            self.next_rec = None;
            return;
        }
        let per_log = 0x1_0000_0000u64 / self.seg_size;
        let segno = u64::from(seg.log) * per_log + u64::from(seg.seg);
        let seg_start = Lsn(segno * self.seg_size);
        if let Some(want) = self.next_segno {
            if segno != want {
                let missing = WalSegmentName::from_segno(
                    seg.timeline,
                    want,
                    crate::WalSegmentSize::new(self.seg_size).unwrap_or_default(),
                )
                .map(|n| n.to_string())
                .unwrap_or_default();
                self.stop_is_corruption("later WAL exists");
                self.push(
                    Severity::Error,
                    &fname,
                    Some(seg_start),
                    format!(
                        "WAL is missing before this segment: expected {missing} ({} segment(s) absent)",
                        segno.saturating_sub(want)
                    ),
                );
                self.pending = None;
                self.next_rec = None;
                self.prev = None;
            }
        }
        if self.stop.is_some() {
            if self.stop.as_ref().is_some_and(|s| s.after_switch) {
                self.stop = None;
            } else {
                self.stop_is_corruption("later WAL exists");
                self.prev = None;
            }
        }
        if self.next_segno.is_none() && self.sum.segments == 1 {
            if let Some(st) = self.opts.start_lsn {
                if st < seg_start {
                    self.push(
                        Severity::Error,
                        &fname,
                        Some(st),
                        format!("WAL from {st} is required, but the first segment starts at {seg_start}"),
                    );
                }
            }
        }
        self.next_segno = Some(segno + 1);
        let file_tli = seg.timeline.get();
        self.read_segment(&fname, partial, file_tli, seg_start, data);
    }

    fn read_segment(
        &mut self,
        fname: &str,
        partial: bool,
        file_tli: u32,
        seg_start: Lsn,
        data: &mut impl Pages,
    ) {
        let npages = data.len() / PAGE;
        // When set, the rest of the segment after an XLOG_SWITCH is unused.
        let mut switched = false;
        let mut skip_cont: Option<u64> = None;
        for p in 0..npages {
            if switched {
                break;
            }
            let Some(page) = data.page(p) else {
                break;
            };
            let page_lsn = Lsn(seg_start.0 + (p * PAGE) as u64);
            // Validate the header.
            let hdr = match self.check_page_header(page, p == 0, page_lsn, file_tli) {
                Ok(h) => h,
                Err(what) => {
                    let lsn = self.pending.as_ref().map(|x| x.start).unwrap_or(page_lsn);
                    let what = if self.pending.is_some() {
                        format!("record at {lsn} continues into an invalid page {page_lsn}: {what}")
                    } else {
                        format!("invalid page header at {page_lsn}: {what}")
                    };
                    self.record_stop(fname, page_lsn, what, partial);
                    self.look_past_stop(fname, data, p + 1, seg_start, file_tli);
                    return;
                }
            };
            let hlen = hdr.len();
            let cont = hdr.info & XLP_FIRST_IS_CONTRECORD != 0;
            let overwrite = hdr.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0;
            let mut pos = hlen; // offset within the page
            if overwrite {
                // The record in progress was lost and overwritten: PostgreSQL abandons it and
                // the page must start with an XLOG_OVERWRITE_CONTRECORD record.
                let first = page.get(hlen..).unwrap_or(&[]);
                let is_ow = !cont
                    && first.get(17) == Some(&RM_XLOG_ID)
                    && first
                        .get(16)
                        .is_some_and(|i| i & 0xF0 == XLOG_OVERWRITE_CONTRECORD);
                if !is_ow {
                    let what = format!(
                        "page {page_lsn} is flagged XLP_FIRST_IS_OVERWRITE_CONTRECORD but does not start with an OVERWRITE_CONTRECORD record"
                    );
                    self.record_stop(fname, page_lsn, what, partial);
                    self.look_past_stop(fname, data, p + 1, seg_start, file_tli);
                    return;
                }
                self.pending = None;
                self.next_rec = Some(Lsn(page_lsn.0 + hlen as u64));
                self.prev = None;
            }
            if let Some(pend) = self.pending.as_mut() {
                let have = pend.have;
                let want = pend.total.saturating_sub(have);
                if !cont {
                    let (lsn, what) = (
                        pend.start,
                        format!("there is no contrecord flag at {page_lsn}"),
                    );
                    self.record_stop(fname, lsn, what, partial);
                    self.look_past_stop(fname, data, p + 1, seg_start, file_tli);
                    return;
                }
                if hdr.rem_len != want {
                    let what = format!(
                        "invalid contrecord length {} (expected {want}) at {page_lsn}",
                        hdr.rem_len
                    );
                    let lsn = pend.start;
                    self.record_stop(fname, lsn, what, partial);
                    self.look_past_stop(fname, data, p + 1, seg_start, file_tli);
                    return;
                }
                let n = (want as usize).min(PAGE - hlen);
                pend.feed(page.get(hlen..hlen + n).unwrap_or(&[]));
                pend.pages += 1;
                pos = hlen + n;
                if pend.have == pend.total {
                    let pend = self.pending.take();
                    if let Some(pend) = pend {
                        if let Err(what) = self.check_record_header(&pend.head, pend.start) {
                            self.record_stop(fname, pend.start, what, partial);
                            self.look_past_stop(fname, data, p + 1, seg_start, file_tli);
                            return;
                        }
                        let end = Lsn(page_lsn.0 + pos as u64);
                        let crossed_segment = pend.start_segno != seg_start.0 / self.seg_size;
                        let res = self.finish_record(
                            fname,
                            pend.start,
                            &pend.head,
                            crc32c_append(
                                pend.body_crc,
                                pend.head.get(..XL_CRC_OFFSET).unwrap_or(&[]),
                            ),
                            end,
                            partial,
                        );
                        match res {
                            Some(sw) => {
                                self.sum.page_crossing += 1;
                                if crossed_segment {
                                    self.sum.segment_crossing += 1;
                                }
                                if self.tail_only {
                                    if !sw {
                                        self.tail_end = Some(Lsn(maxalign(end.0)));
                                    }
                                    return;
                                }
                                if sw {
                                    switched = true;
                                    continue;
                                }
                            }
                            None => {
                                self.look_past_stop(fname, data, p + 1, seg_start, file_tli);
                                return;
                            }
                        }
                    }
                } else {
                    continue;
                }
            } else if cont {
                match (self.next_rec, skip_cont) {
                    (Some(n), _) if n.0 == page_lsn.0 + hlen as u64 || n.0 == page_lsn.0 => {
                        let what = format!(
                            "contrecord is requested by {page_lsn}, but no record is in progress"
                        );
                        self.record_stop(fname, page_lsn, what, partial);
                        self.look_past_stop(fname, data, p + 1, seg_start, file_tli);
                        return;
                    }
                    _ => {
                        // Entering mid-stream: skip the continuation (maybe several pages).
                        if p == 0 && skip_cont.is_none() && self.sum.segments == 1 {
                            self.entry.skip_started = true;
                        }
                        let left = skip_cont.unwrap_or(u64::from(hdr.rem_len));
                        let room = (PAGE - hlen) as u64;
                        if left > room {
                            skip_cont = Some(left - room);
                            continue;
                        }
                        skip_cont = None;
                        pos = hlen + maxalign(left) as usize;
                        self.next_rec = Some(Lsn(page_lsn.0 + pos as u64));
                        if self.entry.skip_started
                            && self.entry.skip_end.is_none()
                            && self.sum.segments == 1
                        {
                            self.entry.skip_end = self.next_rec;
                        }
                    }
                }
            } else if hdr.rem_len != 0 {
                let what = format!(
                    "xlp_rem_len is {} on a page that continues no record",
                    hdr.rem_len
                );
                self.record_stop(fname, page_lsn, what, partial);
                self.look_past_stop(fname, data, p + 1, seg_start, file_tli);
                return;
            }
            // Records starting on this page.
            let mut next = match self.next_rec {
                Some(n) => n,
                None => Lsn(maxalign(page_lsn.0 + pos as u64)),
            };
            if next.0 < page_lsn.0 + pos as u64 {
                next = Lsn(maxalign(page_lsn.0 + pos as u64));
            }
            // The records wholly on this page are collected with their headers checked
            // (xl_prev chained to the record before, tentatively), then checksummed together
            // and confirmed in LSN order: the first invalid record stops reading, exactly as
            // when they are checked one at a time.
            let mut batch = std::mem::take(&mut self.batch);
            batch.clear();
            let confirmed_prev = self.prev;
            let mut bad_header: Option<(Lsn, String)> = None;
            let mut new_pending = None;
            loop {
                let off = (next.0 - page_lsn.0) as usize;
                if off >= PAGE {
                    break;
                }
                let avail = PAGE - off;
                let Some(rest) = page.get(off..) else { break };
                let tot = u32::from_le_bytes([
                    rest.first().copied().unwrap_or(0),
                    rest.get(1).copied().unwrap_or(0),
                    rest.get(2).copied().unwrap_or(0),
                    rest.get(3).copied().unwrap_or(0),
                ]);
                if tot < SIZE_OF_XLOG_RECORD as u32 {
                    let what = format!("invalid record length at {next}: wanted 24, got {tot}");
                    bad_header = Some((next, what));
                    break;
                }
                if tot > XLOG_RECORD_MAX_SIZE {
                    let what = format!("record length {tot} at {next} too long");
                    bad_header = Some((next, what));
                    break;
                }
                if avail >= SIZE_OF_XLOG_RECORD {
                    if let Err(what) = self.check_record_header(rest, next) {
                        bad_header = Some((next, what));
                        break;
                    }
                }
                if tot as usize <= avail {
                    batch.push((off as u32, tot));
                    self.prev = Some(next);
                    next = Lsn(maxalign(next.0 + u64::from(tot)));
                    let is_switch = rest.get(17) == Some(&RM_XLOG_ID)
                        && rest.get(16).is_some_and(|i| i & 0xF0 == XLOG_SWITCH);
                    if is_switch {
                        break;
                    }
                } else {
                    let mut pend = Pending {
                        start: next,
                        total: tot,
                        have: 0,
                        head: [0; SIZE_OF_XLOG_RECORD],
                        body_crc: 0,
                        pages: 1,
                        start_segno: seg_start.0 / self.seg_size,
                    };
                    pend.feed(rest);
                    new_pending = Some(pend);
                    break;
                }
            }
            let mut crcs = std::mem::take(&mut self.crcs);
            crc_records(page, &batch, &mut crcs);
            self.prev = confirmed_prev;
            let mut stopped = false;
            for (&(off, tot), &crc) in batch.iter().zip(crcs.iter()) {
                let start = Lsn(page_lsn.0 + u64::from(off));
                let head = page
                    .get(off as usize..off as usize + SIZE_OF_XLOG_RECORD)
                    .and_then(|h| <&[u8; SIZE_OF_XLOG_RECORD]>::try_from(h).ok())
                    .unwrap_or(&[0; SIZE_OF_XLOG_RECORD]);
                let end = Lsn(start.0 + u64::from(tot));
                match self.finish_record(fname, start, head, crc, end, partial) {
                    Some(sw) => switched |= sw,
                    None => {
                        stopped = true;
                        break;
                    }
                }
            }
            self.batch = batch;
            self.crcs = crcs;
            if stopped {
                self.look_past_stop(fname, data, p + 1, seg_start, file_tli);
                return;
            }
            if let Some((lsn, what)) = bad_header {
                self.record_stop(fname, lsn, what, partial);
                self.look_past_stop(fname, data, p + 1, seg_start, file_tli);
                return;
            }
            if new_pending.is_some() {
                self.pending = new_pending;
            }
            if self.pending.is_none() && !switched {
                // The next record may start on the next page, after its header.
                self.next_rec = Some(next);
            }
        }
        if switched {
            // The next record starts after the next segment's long header.
            self.next_rec = Some(Lsn(seg_start.0 + self.seg_size));
        }
    }

    /// Verifies a complete record whose header passed [`Self::check_record_header`], given
    /// the CRC-32C of its bytes (body, then header up to `xl_crc`): the CRC, then
    /// bookkeeping. `Some(true)` for an XLOG_SWITCH, `Some(false)` for any other valid
    /// record, `None` after recording a stop.
    fn finish_record(
        &mut self,
        fname: &str,
        start: Lsn,
        head: &[u8; SIZE_OF_XLOG_RECORD],
        crc: u32,
        end: Lsn,
        partial: bool,
    ) -> Option<bool> {
        let [.., c0, c1, c2, c3] = *head;
        let stored = u32::from_le_bytes([c0, c1, c2, c3]);
        if crc != stored {
            let what = format!("incorrect resource manager data checksum in record at {start}");
            self.record_stop(fname, start, what, partial);
            return None;
        }
        let [l0, l1, l2, l3, ..] = *head;
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        self.sum.records += 1;
        self.sum.record_bytes += u64::from(len);
        if self.track {
            self.sum.record_spans.push((start, len));
        }
        if self.sum.first_record.is_none() {
            self.sum.first_record = Some(start);
        }
        self.sum.end_of_valid_wal = Some(end);
        self.prev = Some(start);
        let [.., info, rmid, _, _, _, _, _, _] = *head;
        if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH {
            self.sum.switches += 1;
            // The rest of the segment is unused: the end of WAL may legitimately be here.
            self.sum.end_of_valid_wal = Some(Lsn(end.0.div_ceil(self.seg_size) * self.seg_size));
            self.stop = Some(Stop {
                lsn: end,
                segment: fname.to_string(),
                what: "XLOG_SWITCH".into(),
                partial,
                after_switch: true,
            });
            return Some(true);
        }
        Some(false)
    }

    /// `ValidXLogRecordHeader`: length, rmgr, xl_prev.
    fn check_record_header(&mut self, rec: &[u8], at: Lsn) -> Result<(), String> {
        let first = !self.entry.header_seen;
        self.entry.header_seen = true;
        let rmid = rec.get(17).copied().unwrap_or(0);
        if rmid > self.max_rmid && rmid < RM_MIN_CUSTOM_ID {
            return Err(format!("invalid resource manager ID {rmid} at {at}"));
        }
        let prev = rec
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        if first {
            self.entry.first_prev = Some(prev);
        }
        if let Some(want) = self.prev {
            if prev != want.0 {
                return Err(format!(
                    "record with incorrect prev-link {} at {at} (expected {want})",
                    Lsn(prev)
                ));
            }
        }
        Ok(())
    }

    /// `XLogReaderValidatePageHeader`, and a little stricter where PostgreSQL's writer always
    /// is (the long header only on a segment's first page).
    fn check_page_header(
        &mut self,
        page: &[u8],
        first: bool,
        lsn: Lsn,
        file_tli: u32,
    ) -> Result<PageHeader, String> {
        let h = PageHeader::parse(page).map_err(|e| e.to_string())?;
        let magic_ok = match self.magic {
            Some(m) => h.magic == m,
            None => match pg_major_from_magic(h.magic) {
                Some(major) => {
                    self.magic = Some(h.magic);
                    self.max_rmid = max_builtin_rmid(major);
                    true
                }
                None => false,
            },
        };
        if !magic_ok {
            return Err(format!("invalid magic number {:04X}", h.magic));
        }
        if h.pageaddr != lsn {
            return Err(format!(
                "unexpected pageaddr {} (expected {lsn})",
                h.pageaddr
            ));
        }
        if first != (h.info & XLP_LONG_HEADER != 0) {
            return Err(if first {
                "the first page of a segment has no long header".into()
            } else {
                "a long header on a page that does not start a segment".into()
            });
        }
        if let Some(l) = h.long {
            match self.sysid {
                Some(s) if s != l.system_identifier => {
                    return Err(format!(
                        "WAL file is from a different database system: identifier {}, expected {s}",
                        l.system_identifier
                    ))
                }
                None => self.sysid = Some(l.system_identifier),
                _ => {}
            }
            if u64::from(l.seg_size) != self.seg_size {
                return Err(format!(
                    "incorrect segment size {} in page header",
                    l.seg_size
                ));
            }
            if l.xlog_blcksz != XLOG_BLCKSZ {
                return Err(format!(
                    "incorrect XLOG_BLCKSZ {} in page header",
                    l.xlog_blcksz
                ));
            }
        }
        if h.tli == 0 || h.tli > file_tli {
            return Err(format!(
                "timeline {} in page header of a timeline {file_tli} file",
                h.tli
            ));
        }
        if h.tli < self.last_tli {
            return Err(format!(
                "out-of-sequence timeline ID {} (after {})",
                h.tli, self.last_tli
            ));
        }
        if self.entry.first_tli.is_none() {
            self.entry.first_tli = Some(h.tli);
        }
        if h.tli != self.last_tli {
            if !self.sum.timelines.contains(&h.tli) {
                self.sum.timelines.push(h.tli);
            }
            self.last_tli = h.tli;
        }
        Ok(h)
    }

    /// After a stop: does a later page of this segment still hold a valid header for its own
    /// position? Then WAL was written past the stop, which is suspicious.
    fn look_past_stop(
        &mut self,
        fname: &str,
        data: &mut impl Pages,
        from: usize,
        seg_start: Lsn,
        file_tli: u32,
    ) {
        let magic = self.magic;
        for p in from..data.len() / PAGE {
            let Some(page) = data.page(p) else {
                break;
            };
            let lsn = Lsn(seg_start.0 + (p * PAGE) as u64);
            if let Ok(h) = PageHeader::parse(page) {
                if Some(h.magic) == magic && h.pageaddr == lsn && h.tli >= 1 && h.tli <= file_tli {
                    if let Some(s) = self.stop.as_mut() {
                        s.what = format!(
                            "{}; later page {lsn} holds valid WAL for its position",
                            s.what
                        );
                    }
                    let what = format!(
                        "WAL stops before page {lsn}, which still holds a valid page header for its position: the stop may be damage"
                    );
                    self.push(Severity::Warning, fname, Some(lsn), what);
                    return;
                }
            }
        }
    }

    /// Classifies the stop and returns the summary.
    pub fn finish(mut self) -> WalCheckSummary {
        if let Some(pend) = self.pending.take() {
            self.stop = Some(Stop {
                lsn: pend.start,
                segment: self.last_segment.clone(),
                what: format!(
                    "record at {} is cut off at the end of the last segment ({} of {} bytes)",
                    pend.start, pend.have, pend.total
                ),
                partial: false,
                after_switch: false,
            });
        }
        if let Some(s) = self.stop.take() {
            // After an XLOG_SWITCH, WAL logically reaches the end of that segment.
            let reached = if s.after_switch {
                self.sum.end_of_valid_wal.unwrap_or(s.lsn)
            } else {
                s.lsn
            };
            let before_end = self.opts.end_lsn.is_some_and(|e| reached < e);
            let incomplete = self.opts.complete_segments && !s.partial && !s.after_switch;
            if s.after_switch {
                if before_end {
                    self.push(
                        Severity::Error,
                        &s.segment,
                        Some(s.lsn),
                        format!(
                            "WAL ends with an XLOG_SWITCH at {}, before the required end",
                            s.lsn
                        ),
                    );
                }
            } else if before_end || incomplete {
                let why = if before_end {
                    format!(
                        "WAL must be readable up to {}",
                        self.opts.end_lsn.unwrap_or_default()
                    )
                } else {
                    "archived segments are complete".to_string()
                };
                let what = format!("{} ({why})", s.what);
                self.push(Severity::Error, &s.segment, Some(s.lsn), what);
            } else {
                let what = format!("end of WAL: {}", s.what);
                self.push(Severity::Info, &s.segment, Some(s.lsn), what);
            }
        } else if let Some(e) = self.opts.end_lsn {
            if self.sum.end_of_valid_wal.is_some_and(|v| v < e) {
                let at = self.sum.end_of_valid_wal;
                self.push(
                    Severity::Error,
                    "-",
                    at,
                    format!("WAL ends before the required end {e}"),
                );
            }
        }
        self.sum.timelines.sort_unstable();
        self.sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures(dir: &str) -> Vec<(WalFileName, Vec<u8>)> {
        let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(dir);
        let mut all = Vec::new();
        for e in std::fs::read_dir(&d).expect("fixture dir") {
            let p = e.expect("entry").path();
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .trim_end_matches(".zst")
                .to_string();
            if let Ok(w) = name.parse::<WalFileName>() {
                let raw = std::fs::read(&p).expect("read fixture");
                all.push((w, zstd::decode_all(&raw[..]).expect("zstd")));
            }
        }
        let names: Vec<WalFileName> = all.iter().map(|(n, _)| *n).collect();
        select_segments(&names, None)
            .into_iter()
            .filter_map(|n| all.iter().find(|(m, _)| *m == n).cloned())
            .collect()
    }

    fn by_slices(segs: &[(WalFileName, Vec<u8>)]) -> WalCheckSummary {
        let mut c = WalRecordCheck::new(WalVerifyOptions::default()).track_records(true);
        for (n, d) in segs {
            c.segment(n, d);
        }
        c.finish()
    }

    fn by_reads(segs: &[(WalFileName, Vec<u8>)], chunk: usize) -> WalCheckSummary {
        let mut c = WalRecordCheck::new(WalVerifyOptions::default()).track_records(true);
        let mut buf = Vec::new();
        for (n, d) in segs {
            c.segment_read(n, d.len() as u64, &mut &d[..], chunk, &mut buf)
                .expect("read from memory");
        }
        c.finish()
    }

    #[test]
    fn reading_in_chunks_finds_exactly_what_whole_segments_do() {
        for dir in ["wal1m", "wal16m"] {
            let clean = fixtures(dir);
            let mut cases = vec![clean.clone()];
            // Damage in every place a stop is found: a record body, a page header, a zeroed
            // page (then the look past the stop reads on), a truncated file.
            for (k, &(off, how)) in [(5000usize, 0u8), (3 * 8192 + 2, 0), (8192 * 4, 1), (0, 2)]
                .iter()
                .enumerate()
            {
                let mut segs = clean.clone();
                let i = k % segs.len();
                if let Some((_, d)) = segs.get_mut(i) {
                    match how {
                        0 => d[off] ^= 0x10,
                        1 => d[off..off + 8192].fill(0),
                        _ => {
                            let l = d.len() / 2 + 100;
                            d.truncate(l)
                        }
                    }
                }
                cases.push(segs);
            }
            for segs in &cases {
                let want = by_slices(segs);
                for chunk in [8192, 3 * 8192, 256 * 1024, 64 << 20] {
                    let got = by_reads(segs, chunk);
                    assert_eq!(got, want, "{dir}, chunk {chunk}");
                    assert_eq!(got.record_spans, want.record_spans, "{dir}, chunk {chunk}");
                }
            }
            assert!(!by_slices(&clean).is_corrupt(), "{dir} is clean");
        }
    }

    #[test]
    fn a_file_shorter_than_announced_is_a_read_error() {
        // Segment 6 holds WAL to its end (a record crosses into segment 7).
        let segs = fixtures("wal1m");
        let (n, d) = &segs[0];
        let mut c = WalRecordCheck::new(WalVerifyOptions::default());
        let mut buf = Vec::new();
        let short = &d[..5 * 8192 + 100];
        let r = c.segment_read(n, d.len() as u64, &mut &short[..], 8192, &mut buf);
        assert!(r.is_err());
        // What was read is checked; the record cut by the error is not reported.
        let sum = c.finish();
        assert!(sum.records > 0);
        assert!(!sum.is_corrupt(), "{:?}", sum.findings);
    }
}
