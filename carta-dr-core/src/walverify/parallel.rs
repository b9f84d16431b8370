//! The check of a list of segments on several threads, with exactly the result of one pass.
//!
//! The list is cut into contiguous parts, each checked by its own [`WalRecordCheck`]. A part
//! after the first starts as a check of its first segment alone would: it skips a record
//! continued from the segment before and does not compare the first `xl_prev` it reads. The
//! part before it reads on into that segment just far enough to finish the record that
//! crosses into it (so its CRC is checked once, with the state of a sequential pass). Two
//! parts join when everything the later one did differently from a sequential pass is shown
//! to be the same as what the sequential pass would have done:
//!
//! * the earlier part ended without a pending stop (or with an `XLOG_SWITCH`), expecting
//!   exactly the later part's first segment;
//! * the segment size, magic number (hence resource manager range) and system identifier the
//!   later part learned are those of the earlier part;
//! * the first timeline the later part accepted is not below the earlier part's last one;
//! * the continuation it skipped ends where the earlier part's crossing record ended (or,
//!   with no record in progress, it skipped nothing and the earlier part expected a record at
//!   the start of the segment);
//! * the first `xl_prev` it read is the start of the earlier part's last record.
//!
//! From there both passes are in the same state and read the same bytes, so they find the
//! same things; counts add up, findings follow one another in order, and the last part's
//! check classifies the end with the joined summary. When any part fails to join (a stop,
//! a gap, a crossing record not finished cleanly, a read error), the result is that of the
//! sequential pass, run again from the start.

use std::path::PathBuf;

use super::{ReadPages, SlicePages, WalCheckSummary, WalRecordCheck, WalVerifyOptions};
use crate::{Lsn, WalFileName};

/// Fewest segments in a part by default: below it, a thread costs more than it saves.
pub(super) const MIN_PART: usize = 4;

/// Bytes read at a time from a file.
pub(super) const CHUNK: usize = 256 * 1024;

/// Where the segments come from, in LSN order.
pub(super) trait Source: Sync {
    /// How many segments.
    fn count(&self) -> usize;
    /// The name of segment `i`.
    fn name(&self, i: usize) -> Option<WalFileName>;
    /// Feeds segment `i` whole to `c`.
    fn feed(&self, c: &mut WalRecordCheck, i: usize, buf: &mut Vec<u8>) -> std::io::Result<()>;
    /// Has `c` finish the record that crosses into segment `i`
    /// ([`WalRecordCheck::finish_crossing`]).
    fn tail(&self, c: &mut WalRecordCheck, i: usize, buf: &mut Vec<u8>) -> Option<Lsn>;
}

/// Segment files in memory.
pub(super) struct Memory<'a>(pub &'a [(WalFileName, Vec<u8>)]);

impl Source for Memory<'_> {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn name(&self, i: usize) -> Option<WalFileName> {
        self.0.get(i).map(|(n, _)| *n)
    }
    fn feed(&self, c: &mut WalRecordCheck, i: usize, _: &mut Vec<u8>) -> std::io::Result<()> {
        if let Some((n, d)) = self.0.get(i) {
            c.segment(n, d);
        }
        Ok(())
    }
    fn tail(&self, c: &mut WalRecordCheck, i: usize, _: &mut Vec<u8>) -> Option<Lsn> {
        let (n, d) = self.0.get(i)?;
        c.finish_crossing(n, &mut SlicePages(d))
    }
}

/// Segment files on disk, read in [`CHUNK`]s.
pub(super) struct Files {
    /// Each segment's name and path.
    pub files: Vec<(WalFileName, PathBuf)>,
}

impl Source for Files {
    fn count(&self) -> usize {
        self.files.len()
    }
    fn name(&self, i: usize) -> Option<WalFileName> {
        self.files.get(i).map(|(n, _)| *n)
    }
    fn feed(&self, c: &mut WalRecordCheck, i: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
        let Some((name, path)) = self.files.get(i) else {
            return Ok(());
        };
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        c.segment_read(name, len, &mut f, CHUNK, buf)
    }
    fn tail(&self, c: &mut WalRecordCheck, i: usize, buf: &mut Vec<u8>) -> Option<Lsn> {
        let (name, path) = self.files.get(i)?;
        let mut f = std::fs::File::open(path).ok()?;
        let len = f.metadata().ok()?.len();
        let mut pages = ReadPages::new(&mut f, len, CHUNK, buf);
        let end = c.finish_crossing(name, &mut pages);
        if pages.err.is_some() {
            return None;
        }
        end
    }
}

/// The sequential pass: every segment in order on one check. A read error ends it (the
/// segments after it are not read) and is returned with the segment's index.
pub(super) fn sequential(
    src: &dyn Source,
    opts: &WalVerifyOptions,
    track: bool,
) -> (WalCheckSummary, Option<(usize, std::io::Error)>) {
    let mut c = WalRecordCheck::new(opts.clone()).track_records(track);
    let mut buf = Vec::new();
    for i in 0..src.count() {
        if let Err(e) = src.feed(&mut c, i, &mut buf) {
            return (c.finish(), Some((i, e)));
        }
    }
    (c.finish(), None)
}

/// One part, checked.
struct Part {
    check: WalRecordCheck,
    /// A read error happened.
    failed: bool,
    /// State at the end of the part's own segments, before reading on.
    clean_end: bool,
    seg_size: u64,
    magic: Option<u16>,
    sysid: Option<u64>,
    last_tli: u32,
    pending: bool,
    next_rec: Option<Lsn>,
    next_segno: Option<u64>,
    /// Where the record after the one crossing into the next part starts.
    tail: Option<Lsn>,
}

fn run_part(src: &dyn Source, opts: &WalVerifyOptions, track: bool, lo: usize, hi: usize) -> Part {
    let mut check = WalRecordCheck::new(opts.clone()).track_records(track);
    let mut buf = Vec::new();
    let mut failed = false;
    for i in lo..hi {
        if src.feed(&mut check, i, &mut buf).is_err() {
            failed = true;
            break;
        }
    }
    // After an XLOG_SWITCH the next segment simply starts afresh.
    let clean_end = check.stop.as_ref().is_none_or(|s| s.after_switch) && check.sum.stop.is_none();
    let pending = check.pending.is_some();
    let mut part = Part {
        clean_end,
        seg_size: check.seg_size,
        magic: check.magic,
        sysid: check.sysid,
        last_tli: check.last_tli,
        pending,
        next_rec: check.next_rec,
        next_segno: check.next_segno,
        tail: None,
        failed,
        check,
    };
    if !failed && clean_end && pending && hi < src.count() {
        part.tail = src.tail(&mut part.check, hi, &mut buf);
    }
    part
}

/// Whether part `f`, starting at the segment named `first`, continues part `a` exactly as a
/// sequential pass would (see the [module docs](self)).
fn joins(a: &Part, f: &Part, first: &WalFileName) -> bool {
    let e = &f.check.entry;
    if a.failed || f.failed || !a.clean_end || a.seg_size == 0 || e.seg_size != a.seg_size {
        return false;
    }
    if a.magic.is_none() || f.check.magic != a.magic || f.check.sysid != a.sysid {
        return false;
    }
    let Some(segno) = a.next_segno else {
        return false;
    };
    if a.check.segno_of(first) != Some(segno) {
        return false;
    }
    if e.first_tli.is_none_or(|t| t < a.last_tli) {
        return false;
    }
    let entered = if a.pending {
        a.tail.is_some() && e.skip_end == a.tail
    } else {
        a.next_rec == Some(Lsn(segno * a.seg_size)) && !e.skip_started
    };
    if !entered {
        return false;
    }
    match (e.first_prev, a.check.prev) {
        (Some(v), Some(p)) => v == p.0,
        _ => true,
    }
}

/// Adds the summary of the part after `acc` to it.
fn merge(acc: &mut WalCheckSummary, s: WalCheckSummary) {
    acc.segments += s.segments;
    acc.bytes += s.bytes;
    acc.records += s.records;
    acc.record_bytes += s.record_bytes;
    acc.page_crossing += s.page_crossing;
    acc.segment_crossing += s.segment_crossing;
    acc.switches += s.switches;
    for t in s.timelines {
        if !acc.timelines.contains(&t) {
            acc.timelines.push(t);
        }
    }
    if acc.first_record.is_none() {
        acc.first_record = s.first_record;
    }
    if s.end_of_valid_wal.is_some() {
        acc.end_of_valid_wal = s.end_of_valid_wal;
    }
    acc.stop = s.stop;
    acc.findings.extend(s.findings);
    acc.record_spans.extend(s.record_spans);
}

/// Joins the parts (their first segments' indexes in `starts`), or `None` when one does not
/// join.
fn stitch(parts: Vec<Part>, src: &dyn Source, starts: &[usize]) -> Option<WalCheckSummary> {
    let mut parts = parts.into_iter();
    let mut a = parts.next()?;
    if a.failed {
        return None;
    }
    let mut acc = WalCheckSummary::default();
    for (f, &start) in parts.zip(starts.iter().skip(1)) {
        if !joins(&a, &f, &src.name(start)?) {
            return None;
        }
        merge(&mut acc, std::mem::take(&mut a.check.sum));
        a = f;
    }
    merge(&mut acc, std::mem::take(&mut a.check.sum));
    a.check.sum = acc;
    Some(a.check.finish())
}

/// Checks the segments of `src` on up to `threads` threads, in parts of at least `min_part`
/// segments: the result is exactly that of [`sequential`].
pub(super) fn check(
    src: &dyn Source,
    opts: &WalVerifyOptions,
    threads: usize,
    min_part: usize,
    track: bool,
) -> (WalCheckSummary, Option<(usize, std::io::Error)>) {
    match joined(src, opts, threads, min_part, track) {
        Some(sum) => (sum, None),
        None => {
            tracing::debug!("WAL parts do not join; checking the segments in one pass");
            sequential(src, opts, track)
        }
    }
}

/// The parts checked on their threads and joined, or `None` when there is a single part or
/// they do not join.
fn joined(
    src: &dyn Source,
    opts: &WalVerifyOptions,
    threads: usize,
    min_part: usize,
    track: bool,
) -> Option<WalCheckSummary> {
    let n = src.count();
    let k = threads.min(n / min_part.max(1)).max(1);
    if k <= 1 {
        return None;
    }
    let starts: Vec<usize> = (0..k).map(|j| j * n / k).collect();
    let later = WalVerifyOptions {
        start_lsn: None,
        ..opts.clone()
    };
    let parts: Option<Vec<Part>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..k)
            .map(|j| {
                let (lo, hi) = (j * n / k, (j + 1) * n / k);
                let later = &later;
                s.spawn(move || run_part(src, later, track, lo, hi))
            })
            .collect();
        let first = run_part(src, opts, track, 0, n / k);
        let mut all = vec![first];
        for h in handles {
            all.push(h.join().ok()?);
        }
        Some(all)
    });
    parts.and_then(|p| stitch(p, src, &starts))
}

/// Checks whole segment files in memory, in LSN order (as [`super::select_segments`] lists
/// them), on up to `threads` threads: the result is exactly that of feeding them one after
/// another to one [`WalRecordCheck`] and calling [`WalRecordCheck::finish`].
pub fn check_segments(
    files: &[(WalFileName, Vec<u8>)],
    opts: &WalVerifyOptions,
    threads: usize,
) -> WalCheckSummary {
    check(&Memory(files), opts, threads, MIN_PART, false).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::walverify::select_segments;

    const PAGE: usize = 8192;

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

    /// Checks `files` on 2, 3 and 4 threads (parts of one segment and up) and compares every
    /// joined result with the sequential pass; returns how many of the three joined.
    fn same_as_sequential(
        what: &str,
        files: &[(WalFileName, Vec<u8>)],
        opts: &WalVerifyOptions,
    ) -> usize {
        let (want, _) = sequential(&Memory(files), opts, true);
        let mut n = 0;
        for threads in [2, 3, 4] {
            if let Some(got) = joined(&Memory(files), opts, threads, 1, true) {
                assert_eq!(got, want, "{what}, {threads} threads");
                assert_eq!(
                    got.record_spans, want.record_spans,
                    "{what}, {threads} threads"
                );
                n += 1;
            }
            // With the fallback, the public entry is always the sequential result.
            if threads == 4 {
                let (got, _) = check(&Memory(files), opts, threads, 1, true);
                assert_eq!(got, want, "{what}, {threads} threads");
            }
        }
        n
    }

    #[test]
    fn fixtures_checked_in_parts_match_one_pass() {
        for dir in ["wal1m", "wal16m"] {
            let files = fixtures(dir);
            for complete in [false, true] {
                let opts = WalVerifyOptions {
                    complete_segments: complete,
                    ..Default::default()
                };
                let joins = same_as_sequential(dir, &files, &opts);
                if files.len() > 1 {
                    // Across a record crossing segments, two XLOG_SWITCHes and a timeline
                    // switch: every boundary joins.
                    assert_eq!(joins, 3, "{dir}");
                }
            }
        }
        // Each file alone, and each run of consecutive files.
        let files = fixtures("wal1m");
        for a in 0..files.len() {
            for b in a + 1..=files.len() {
                same_as_sequential("run", &files[a..b], &WalVerifyOptions::default());
            }
        }
    }

    #[test]
    fn corruption_corpus_checked_in_parts_matches_one_pass() {
        let clean = fixtures("wal1m");
        let (first, _) = sequential(&Memory(&clean), &WalVerifyOptions::default(), false);
        let strict = WalVerifyOptions {
            complete_segments: true,
            start_lsn: first.first_record,
            end_lsn: first.end_of_valid_wal,
            system_identifier: None,
        };
        let loose = WalVerifyOptions::default();
        let seg = clean[0].1.len();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut cases, mut joins) = (0usize, 0usize);
        let mut run = |what: &str, files: &[(WalFileName, Vec<u8>)]| {
            for opts in [&strict, &loose] {
                joins += same_as_sequential(what, files, opts);
                cases += 1;
            }
        };
        // Single-bit flips: every bit of the page headers at the start of each segment and of
        // the first pages, then a sample of every byte.
        let mut files = clean.clone();
        for f in 0..files.len() {
            for page in [0, 1, 2] {
                for byte in 0..40 {
                    let off = page * PAGE + byte;
                    let bit = (byte + page) % 8;
                    files[f].1[off] ^= 1 << bit;
                    run(&format!("flip {f}:{off}:{bit}"), &files);
                    files[f].1[off] ^= 1 << bit;
                }
            }
            // The record crossing into this segment and the ones after it.
            for off in (40..PAGE).step_by(7) {
                files[f].1[off] ^= 4;
                run(&format!("flip {f}:{off}:2"), &files);
                files[f].1[off] ^= 4;
            }
            // The end of the segment, where a record crosses into the next one.
            for off in (seg - 600..seg).step_by(5) {
                files[f].1[off] ^= 1;
                run(&format!("flip {f}:{off}:0"), &files);
                files[f].1[off] ^= 1;
            }
        }
        for _ in 0..600 {
            let f = (next() % files.len() as u64) as usize;
            let off = (next() % seg as u64) as usize;
            let bit = (next() % 8) as u8;
            files[f].1[off] ^= 1 << bit;
            run(&format!("flip {f}:{off}:{bit}"), &files);
            files[f].1[off] ^= 1 << bit;
        }
        // Every zeroed page.
        for f in 0..files.len() {
            for page in (0..seg).step_by(PAGE) {
                let saved = files[f].1[page..page + PAGE].to_vec();
                files[f].1[page..page + PAGE].fill(0);
                run(&format!("zeroed {f}:{page}"), &files);
                files[f].1[page..page + PAGE].copy_from_slice(&saved);
            }
        }
        // Removed segments, truncated segments, zeroed tails.
        for skip in 0..clean.len() {
            let fewer: Vec<_> = clean
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, f)| f.clone())
                .collect();
            run(&format!("without {skip}"), &fewer);
        }
        for f in 0..clean.len() {
            for cut in [0usize, 1, 24, 40, 8191, 8192, 100_000, 524_288, seg - 1] {
                let mut short = clean.clone();
                short[f].1.truncate(cut);
                run(&format!("{f} cut to {cut}"), &short);
            }
            let mut tail = clean.clone();
            tail[f].1[0x8000..].fill(0);
            run(&format!("{f} zeroed from 0x8000"), &tail);
        }
        // Arbitrary bytes.
        for i in 0..100 {
            let mut files = clean.clone();
            for _ in 0..20 {
                let r = next();
                let f = (r >> 33) as usize % files.len();
                let off = (r >> 7) as usize % files[f].1.len();
                files[f].1[off] = (r >> 51) as u8;
            }
            if i % 3 == 0 {
                let r = next();
                let f = (r % files.len() as u64) as usize;
                files[f].1.truncate((r >> 20) as usize % seg);
            }
            run(&format!("random {i}"), &files);
        }
        println!("{cases} cases x 3 thread counts: {joins} joined and equal, the rest fell back");
        // Most damage leaves the boundaries far from it intact: the parts still join.
        assert!(joins > cases, "{joins} joins in {cases} cases");
    }

    #[test]
    fn files_on_disk_checked_in_parts_match_one_pass() {
        let clean = fixtures("wal1m");
        let dir = std::env::temp_dir().join(format!("carta-walpar-{}", std::process::id()));
        let mut cases = vec![clean.clone()];
        let mut flipped = clean.clone();
        flipped[1].1[3 * PAGE + 100] ^= 2;
        cases.push(flipped);
        let mut short = clean.clone();
        short[2].1.truncate(5 * PAGE + 10);
        cases.push(short);
        for files in &cases {
            std::fs::create_dir_all(&dir).expect("temp dir");
            let src = Files {
                files: files
                    .iter()
                    .map(|(n, d)| {
                        let p = dir.join(n.to_string());
                        std::fs::write(&p, d).expect("write segment");
                        (*n, p)
                    })
                    .collect(),
            };
            let opts = WalVerifyOptions {
                complete_segments: true,
                ..Default::default()
            };
            let (want, _) = sequential(&Memory(files), &opts, true);
            for threads in [1, 2, 3, 4] {
                let (got, err) = check(&src, &opts, threads, 1, true);
                assert!(err.is_none());
                assert_eq!(got, want, "{threads} threads");
            }
            std::fs::remove_dir_all(&dir).ok();
        }
    }
}
