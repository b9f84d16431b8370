//! Finding `CREATE TABLESPACE` in WAL before it is replayed.
//!
//! Replaying an `XLOG_TBLSPC_CREATE` record creates the tablespace at the absolute location
//! the record names (PostgreSQL 15 first removes a `PG_15_*` directory already there). A
//! restore beside a running server must not replay such a record: the location is the running
//! server's own tablespace directory. [`TablespaceCreateScan`] reads the WAL that a recovery
//! would replay and reports every such record with its LSN, tablespace OID and location.
//!
//! It is sans-IO, like [`WalRecordCheck`](super::WalRecordCheck): feed whole segment files in
//! LSN order with [`TablespaceCreateScan::segment`], then call
//! [`TablespaceCreateScan::finish`]. It starts at a record boundary (a backup's start LSN, the
//! redo point of its checkpoint), follows records across pages and segments, checks each
//! record's CRC-32C, jumps to the next segment after an `XLOG_SWITCH`, and stops where
//! PostgreSQL's reader would stop: a zero or invalid length, a CRC mismatch, a page whose
//! header does not carry its own address (a recycled segment), or a missing segment. Where it
//! stopped and why is in the summary.
//!
//! Record layout: PostgreSQL `src/include/access/xlogrecord.h` (XLogRecord, block ids
//! `XLR_BLOCK_ID_DATA_SHORT` 255, `XLR_BLOCK_ID_DATA_LONG` 254, `XLR_BLOCK_ID_ORIGIN` 253,
//! `XLR_BLOCK_ID_TOPLEVEL_XID` 252), `src/include/commands/tablespace.h`
//! (`xl_tblspc_create_rec { Oid ts_id; char ts_path[]; }`), `rmgrlist.h` (`RM_TBLSPC_ID` 5).

use serde::{Deserialize, Serialize};

use super::{maxalign, RM_XLOG_ID, SIZE_OF_XLOG_RECORD, XLOG_RECORD_MAX_SIZE, XLOG_SWITCH};
use crate::envelope::crc32c_append;
use crate::wal::page::{
    PageHeader, XLOG_BLCKSZ, XLP_FIRST_IS_CONTRECORD, XLP_FIRST_IS_OVERWRITE_CONTRECORD,
};
use crate::{Lsn, WalSegmentSize};

/// `RM_TBLSPC_ID` (`rmgrlist.h`): the tablespace resource manager.
pub const RM_TBLSPC_ID: u8 = 5;
/// `XLOG_TBLSPC_CREATE` (`tablespace.h`): the info bits of a tablespace creation.
pub const XLOG_TBLSPC_CREATE: u8 = 0x00;

const PAGE: u64 = XLOG_BLCKSZ as u64;
const XL_CRC_OFFSET: usize = 20;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

/// One `XLOG_TBLSPC_CREATE` record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceCreate {
    /// Where the record starts.
    pub lsn: Lsn,
    /// The new tablespace's OID (0 when the payload could not be read).
    pub oid: u32,
    /// The location the record names (empty for an in-place tablespace; a description in
    /// angle brackets when the payload could not be read).
    pub location: String,
}

/// What a scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceScanSummary {
    /// Every tablespace creation, in LSN order.
    pub creates: Vec<TablespaceCreate>,
    /// Records read (CRC-checked).
    pub records: u64,
    /// Where the next record would have started.
    pub end: Lsn,
    /// Why reading stopped before the end of the segments fed, if it did.
    pub stop: Option<String>,
}

struct Partial {
    start: u64,
    buf: Vec<u8>,
    total: Option<usize>,
}

/// A sans-IO scan for `XLOG_TBLSPC_CREATE` records. See the [module docs](self).
pub struct TablespaceCreateScan {
    seg_size: u64,
    end: Option<u64>,
    next: u64,
    fed_until: Option<u64>,
    partial: Option<Partial>,
    stop: Option<String>,
    finished: bool,
    out: TablespaceScanSummary,
}

impl TablespaceCreateScan {
    /// A scan of the records from `start` (a record boundary) up to, not including, a record
    /// starting at or after `end` (all records fed when `None`).
    pub fn new(start: Lsn, end: Option<Lsn>, seg_size: WalSegmentSize) -> Self {
        TablespaceCreateScan {
            seg_size: seg_size.bytes(),
            end: end.map(|l| l.0),
            next: start.0,
            fed_until: None,
            partial: None,
            stop: None,
            finished: false,
            out: TablespaceScanSummary::default(),
        }
    }

    /// Whether reading has stopped (end reached or the WAL ended); later segments are ignored.
    pub fn is_done(&self) -> bool {
        self.finished || self.stop.is_some()
    }

    /// The tablespace creations found so far.
    pub fn creates(&self) -> &[TablespaceCreate] {
        &self.out.creates
    }

    /// Why reading stopped, if it stopped before the end of the segments fed (so far).
    pub fn stopped(&self) -> Option<&str> {
        self.stop.as_deref()
    }

    /// Where reading stands: the next record's position (or the stop's).
    pub fn position(&self) -> Lsn {
        Lsn(self.next)
    }

    /// Feeds the segment file with segment number `segno`; segments must come in order.
    pub fn segment(&mut self, segno: u64, data: &[u8]) {
        if self.is_done() {
            return;
        }
        let seg_start = segno.saturating_mul(self.seg_size);
        let seg_end = seg_start.saturating_add(self.seg_size);
        if seg_end <= self.next && self.partial.is_none() {
            return; // before the start
        }
        let expected = self
            .fed_until
            .unwrap_or(self.next - self.next % self.seg_size);
        if seg_start != expected {
            self.stop = Some(format!(
                "segment starting at {} is missing (got the one at {})",
                Lsn(expected),
                Lsn(seg_start)
            ));
            return;
        }
        self.fed_until = Some(seg_end);
        let first_page = if self.partial.is_some() {
            0
        } else {
            (self.next - seg_start) / PAGE
        };
        let pages = self.seg_size / PAGE;
        for i in first_page..pages {
            let page_lsn = seg_start + i * PAGE;
            let Some(page) = usize::try_from(i * PAGE)
                .ok()
                .and_then(|o| data.get(o..o + PAGE as usize))
            else {
                self.stop = Some(format!("segment file ends before page {}", Lsn(page_lsn)));
                return;
            };
            match self.page(page_lsn, page) {
                PageOutcome::Next => {}
                PageOutcome::Stop => return,
                PageOutcome::NextSegment => {
                    self.next = seg_end;
                    return;
                }
            }
        }
    }

    fn page(&mut self, page_lsn: u64, page: &[u8]) -> PageOutcome {
        let hdr = match PageHeader::parse(page) {
            Ok(h) => h,
            Err(e) => {
                self.stop = Some(format!("page {}: {e:?}", Lsn(page_lsn)));
                return PageOutcome::Stop;
            }
        };
        if hdr.pageaddr.0 != page_lsn {
            self.stop = Some(format!(
                "page {} carries the address {} (end of WAL)",
                Lsn(page_lsn),
                hdr.pageaddr
            ));
            return PageOutcome::Stop;
        }
        let body_start = page_lsn + hdr.len() as u64;
        let page_end = page_lsn + PAGE;
        if self.partial.is_some()
            && hdr.info & XLP_FIRST_IS_CONTRECORD == 0
            && hdr.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0
        {
            // The record was never finished (a crash); the server went on from this page,
            // which starts with an XLOG_OVERWRITE_CONTRECORD record.
            self.partial = None;
            self.next = body_start;
        }
        let mut pos = if self.partial.is_some() {
            if hdr.info & XLP_FIRST_IS_CONTRECORD == 0 {
                self.stop = Some(format!(
                    "page {} does not continue the record at {}",
                    Lsn(page_lsn),
                    Lsn(self.partial.as_ref().map(|p| p.start).unwrap_or(0))
                ));
                return PageOutcome::Stop;
            }
            body_start
        } else {
            self.next.max(body_start)
        };
        while pos < page_end {
            let mut p = match self.partial.take() {
                Some(p) => p,
                None => {
                    if self.end.is_some_and(|e| pos >= e) {
                        self.finished = true;
                        self.next = pos;
                        return PageOutcome::Stop;
                    }
                    Partial {
                        start: pos,
                        buf: Vec::new(),
                        total: None,
                    }
                }
            };
            let want = p.total.unwrap_or(SIZE_OF_XLOG_RECORD);
            let take = (want - p.buf.len()).min((page_end - pos) as usize);
            let off = (pos - page_lsn) as usize;
            p.buf
                .extend_from_slice(page.get(off..off + take).unwrap_or(&[]));
            pos += take as u64;
            if p.total.is_none() && p.buf.len() >= 4 {
                let tot = u32_at(&p.buf, 0).unwrap_or(0);
                if (tot as usize) < SIZE_OF_XLOG_RECORD || tot > XLOG_RECORD_MAX_SIZE {
                    self.next = p.start;
                    self.stop = Some(format!(
                        "record at {} has length {tot} (end of WAL)",
                        Lsn(p.start)
                    ));
                    return PageOutcome::Stop;
                }
                if p.buf.len() >= SIZE_OF_XLOG_RECORD {
                    p.total = Some(tot as usize);
                }
            }
            match p.total {
                Some(t) if p.buf.len() >= t => {
                    // The record's end in LSN space: page headers crossed included.
                    let end = pos;
                    match self.record(&p) {
                        Ok(switch) => {
                            self.next = maxalign(end);
                            if switch {
                                // The rest of the segment holding the switch's end is unused.
                                let seg = (end - 1) / self.seg_size;
                                self.next = (seg + 1) * self.seg_size;
                                if self.next > page_lsn + PAGE {
                                    return PageOutcome::NextSegment;
                                }
                            }
                            pos = self.next;
                        }
                        Err(why) => {
                            self.next = p.start;
                            self.stop = Some(why);
                            return PageOutcome::Stop;
                        }
                    }
                }
                _ => self.partial = Some(p),
            }
        }
        PageOutcome::Next
    }

    /// Checks a whole record; returns whether it is an `XLOG_SWITCH`.
    fn record(&mut self, p: &Partial) -> Result<bool, String> {
        let rec = &p.buf;
        let (Some(stored), Some(&info), Some(&rmid)) =
            (u32_at(rec, XL_CRC_OFFSET), rec.get(16), rec.get(17))
        else {
            return Err(format!("record at {} is truncated", Lsn(p.start)));
        };
        let crc = crc32c_append(
            crc32c_append(0, rec.get(SIZE_OF_XLOG_RECORD..).unwrap_or(&[])),
            rec.get(..XL_CRC_OFFSET).unwrap_or(&[]),
        );
        if crc != stored {
            return Err(format!(
                "record at {} fails its CRC (end of WAL)",
                Lsn(p.start)
            ));
        }
        self.out.records += 1;
        if rmid == RM_TBLSPC_ID && info & 0xF0 == XLOG_TBLSPC_CREATE {
            let (oid, location) = match create_payload(rec) {
                Some(v) => v,
                None => (0, "<unreadable payload>".to_string()),
            };
            self.out.creates.push(TablespaceCreate {
                lsn: Lsn(p.start),
                oid,
                location,
            });
        }
        Ok(rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH)
    }

    /// The summary.
    pub fn finish(mut self) -> TablespaceScanSummary {
        if self.stop.is_none() && !self.finished {
            if let Some(p) = &self.partial {
                self.stop = Some(format!(
                    "record at {} continues past the last segment",
                    Lsn(p.start)
                ));
                self.next = p.start;
            }
        }
        self.out.end = Lsn(self.next);
        self.out.stop = self.stop;
        self.out
    }
}

enum PageOutcome {
    Next,
    Stop,
    NextSegment,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
}

/// The OID and location of an `xl_tblspc_create_rec` (a record without block references).
fn create_payload(rec: &[u8]) -> Option<(u32, String)> {
    let mut i = SIZE_OF_XLOG_RECORD;
    let len = loop {
        match *rec.get(i)? {
            XLR_BLOCK_ID_DATA_SHORT => {
                let l = usize::from(*rec.get(i + 1)?);
                i += 2;
                break l;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                let l = usize::try_from(u32_at(rec, i + 1)?).ok()?;
                i += 5;
                break l;
            }
            XLR_BLOCK_ID_ORIGIN => i += 3,
            XLR_BLOCK_ID_TOPLEVEL_XID => i += 5,
            _ => return None,
        }
    };
    let data = rec.get(i..i.checked_add(len)?)?;
    let oid = u32_at(data, 0)?;
    let path = data.get(4..)?;
    let path = path.split(|b| *b == 0).next().unwrap_or(path);
    Some((oid, String::from_utf8_lossy(path).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::page::{SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD};

    const SEG: u64 = 1024 * 1024;

    /// Writes records into segments the way PostgreSQL lays them out.
    struct Writer {
        segs: Vec<Vec<u8>>,
        pos: u64,
        prev: u64,
        count: u64,
    }

    impl Writer {
        fn new(segments: usize) -> Self {
            let mut segs = vec![vec![0u8; SEG as usize]; segments];
            for (s, seg) in segs.iter_mut().enumerate() {
                for p in 0..(SEG / PAGE) {
                    let lsn = s as u64 * SEG + p * PAGE;
                    let page = &mut seg[(p * PAGE) as usize..];
                    page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
                    let info: u16 = if p == 0 { 0x0002 } else { 0 };
                    page[2..4].copy_from_slice(&info.to_le_bytes());
                    page[4..8].copy_from_slice(&1u32.to_le_bytes());
                    page[8..16].copy_from_slice(&lsn.to_le_bytes());
                    if p == 0 {
                        page[24..32].copy_from_slice(&7u64.to_le_bytes());
                        page[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
                        page[36..40].copy_from_slice(&XLOG_BLCKSZ.to_le_bytes());
                    }
                }
            }
            Writer {
                segs,
                pos: SIZE_OF_XLOG_LONG_PHD as u64,
                prev: 0,
                count: 0,
            }
        }

        /// Filler records up to `target` (within a page, at least 1 KiB past its start).
        fn pad_to(&mut self, target: u64) {
            while target - self.pos > 4000 {
                self.record(10, 0, &[3u8; 3000]);
            }
            let d = target - self.pos;
            assert!(d >= 32 && d.is_multiple_of(8), "cannot pad {d} bytes");
            let n = if d < 282 { d - 26 } else { d - 29 };
            self.record(10, 0, &vec![4u8; n as usize]);
            assert_eq!(self.pos, target);
        }

        fn hdr_len(lsn: u64) -> u64 {
            if lsn.is_multiple_of(SEG) {
                SIZE_OF_XLOG_LONG_PHD as u64
            } else {
                SIZE_OF_XLOG_SHORT_PHD as u64
            }
        }

        /// Appends a record; returns its LSN.
        fn record(&mut self, rmid: u8, info: u8, data: &[u8]) -> u64 {
            let mut body = Vec::new();
            if data.len() < 256 {
                body.push(XLR_BLOCK_ID_DATA_SHORT);
                body.push(data.len() as u8);
            } else {
                body.push(XLR_BLOCK_ID_DATA_LONG);
                body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            }
            body.extend_from_slice(data);
            let tot = (SIZE_OF_XLOG_RECORD + body.len()) as u32;
            let mut rec = Vec::new();
            rec.extend_from_slice(&tot.to_le_bytes());
            rec.extend_from_slice(&0u32.to_le_bytes());
            rec.extend_from_slice(&self.prev.to_le_bytes());
            rec.push(info);
            rec.push(rmid);
            rec.extend_from_slice(&[0, 0]);
            let crc = crc32c_append(crc32c_append(0, &body), &rec[..20]);
            rec.extend_from_slice(&crc.to_le_bytes());
            rec.extend_from_slice(&body);
            let start = self.pos;
            let mut left: &[u8] = &rec;
            while !left.is_empty() {
                if self.pos.is_multiple_of(PAGE) {
                    let seg = (self.pos / SEG) as usize;
                    let off = (self.pos % SEG) as usize;
                    let page = &mut self.segs[seg][off..];
                    let flags = u16::from_le_bytes([page[2], page[3]]) | XLP_FIRST_IS_CONTRECORD;
                    page[2..4].copy_from_slice(&flags.to_le_bytes());
                    page[16..20].copy_from_slice(&(left.len() as u32).to_le_bytes());
                    self.pos += Self::hdr_len(self.pos);
                }
                let room = (PAGE - self.pos % PAGE) as usize;
                let n = room.min(left.len());
                let seg = (self.pos / SEG) as usize;
                let off = (self.pos % SEG) as usize;
                self.segs[seg][off..off + n].copy_from_slice(&left[..n]);
                left = &left[n..];
                self.pos += n as u64;
            }
            self.pos = maxalign(self.pos);
            if self.pos.is_multiple_of(PAGE) {
                self.pos += Self::hdr_len(self.pos);
            }
            self.prev = start;
            self.count += 1;
            start
        }

        fn switch(&mut self) -> u64 {
            let at = self.record(RM_XLOG_ID, XLOG_SWITCH, &[]);
            self.pos = (at / SEG + 1) * SEG + SIZE_OF_XLOG_LONG_PHD as u64;
            at
        }
    }

    fn tblspc(oid: u32, path: &str) -> Vec<u8> {
        let mut d = oid.to_le_bytes().to_vec();
        d.extend_from_slice(path.as_bytes());
        d.push(0);
        d
    }

    fn scan(w: &Writer, start: u64, end: Option<u64>) -> TablespaceScanSummary {
        let mut s = TablespaceCreateScan::new(
            Lsn(start),
            end.map(Lsn),
            WalSegmentSize::new(SEG).expect("size"),
        );
        for (i, seg) in w.segs.iter().enumerate() {
            s.segment(i as u64, seg);
        }
        s.finish()
    }

    #[test]
    fn finds_creates_across_pages_segments_and_switches() {
        let mut w = Writer::new(3);
        let first = w.pos;
        let mut expect = Vec::new();
        // Records crossing pages, a create split over a page boundary, a long one.
        w.pad_to(2 * PAGE - 16); // the next header straddles a page boundary
        let a = w.record(
            RM_TBLSPC_ID,
            XLOG_TBLSPC_CREATE,
            &tblspc(16385, "/srv/ts one"),
        );
        expect.push((a, 16385, "/srv/ts one".to_string()));
        // A drop (info 0x10) is not a creation.
        w.record(RM_TBLSPC_ID, 0x10, &16385u32.to_le_bytes());
        // A record crossing into the second segment.
        w.pad_to(SEG - 4096);
        w.record(10, 0, &vec![1u8; 9000]);
        let long_path = format!("/{}", "x".repeat(300));
        let b = w.record(RM_TBLSPC_ID, 0x01, &tblspc(16390, &long_path));
        expect.push((b, 16390, long_path));
        w.switch();
        let c = w.record(RM_TBLSPC_ID, XLOG_TBLSPC_CREATE, &tblspc(16400, ""));
        expect.push((c, 16400, String::new()));
        let after = w.pos;

        let out = scan(&w, first, None);
        let got: Vec<(u64, u32, String)> = out
            .creates
            .iter()
            .map(|c| (c.lsn.0, c.oid, c.location.clone()))
            .collect();
        assert_eq!(got, expect);
        assert_eq!(out.records, w.count);
        assert_eq!(out.end, Lsn(after));
        assert!(out.stop.as_deref().unwrap_or("").contains("length 0"));

        // Bounded: a record starting at the end is not read.
        let out = scan(&w, first, Some(b));
        assert_eq!(out.creates.len(), 1);
        assert_eq!(out.stop, None);
        // Started after the first creation.
        let out = scan(&w, b, None);
        assert_eq!(out.creates.len(), 2);
    }

    #[test]
    fn stops_at_damage_and_missing_segments() {
        let mut w = Writer::new(2);
        let first = w.pos;
        w.record(10, 0, b"abc");
        let bad = w.record(RM_TBLSPC_ID, XLOG_TBLSPC_CREATE, &tblspc(1, "/a"));
        let off = (bad + 30) as usize;
        w.segs[0][off] ^= 1;
        let out = scan(&w, first, None);
        assert!(out.creates.is_empty());
        assert_eq!(out.end, Lsn(bad));
        assert!(out.stop.as_deref().unwrap_or("").contains("CRC"));

        let mut w = Writer::new(2);
        w.pad_to(SEG - 104);
        w.record(10, 0, &[0u8; 500]);
        let mut s =
            TablespaceCreateScan::new(Lsn(first), None, WalSegmentSize::new(SEG).expect("size"));
        s.segment(0, &w.segs[0]);
        let out = s.finish();
        assert!(out.stop.as_deref().unwrap_or("").contains("continues past"));
        let mut s =
            TablespaceCreateScan::new(Lsn(first), None, WalSegmentSize::new(SEG).expect("size"));
        s.segment(1, &w.segs[1]);
        assert!(s.finish().stop.as_deref().unwrap_or("").contains("missing"));
        // A record never finished, overwritten after a crash: reading goes on from the page
        // flagged XLP_FIRST_IS_OVERWRITE_CONTRECORD.
        let mut w = Writer::new(2);
        w.pad_to(SEG - 104);
        w.record(10, 0, &[0u8; 500]);
        let page = &mut w.segs[1][..];
        page[2..4].copy_from_slice(&(0x0002 | XLP_FIRST_IS_OVERWRITE_CONTRECORD).to_le_bytes());
        page[16..20].copy_from_slice(&0u32.to_le_bytes());
        w.pos = SEG + SIZE_OF_XLOG_LONG_PHD as u64;
        let after = w.record(RM_TBLSPC_ID, XLOG_TBLSPC_CREATE, &tblspc(9, "/b"));
        let out = scan(&w, first, None);
        assert_eq!(out.creates.len(), 1, "{out:?}");
        assert_eq!(out.creates[0].lsn, Lsn(after));
        // Garbage instead of a page never panics.
        let mut s =
            TablespaceCreateScan::new(Lsn(first), None, WalSegmentSize::new(SEG).expect("size"));
        s.segment(0, &[0xFFu8; 100]);
        assert!(s.finish().stop.is_some());
    }
}
