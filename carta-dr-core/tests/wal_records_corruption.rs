//! Corruption corpus for the record-level WAL pass, over real PostgreSQL 15 WAL (1 MiB
//! segments: records crossing pages and segments, three XLOG_SWITCHes, a timeline switch).
//!
//! Every single-bit flip in a byte PostgreSQL reads (page headers of used pages, record
//! headers and bodies), every zeroed used page, every removed segment and every truncated
//! segment file must be reported as corruption; the clean WAL never is. Bytes PostgreSQL never
//! reads carry no check and are counted apart as undetectable by design:
//!
//! * the 4 padding bytes of every page header and the alignment padding between records;
//! * the unused rest of a segment after an XLOG_SWITCH, and anything after the end of WAL;
//! * the `XLP_BKP_REMOVABLE` bit of `xlp_info`, a hint with no redundancy.

mod common {
    use carta_dr_core::WalFileName;

    /// Decompressed fixture files of a directory, sorted by name.
    pub fn load(dir: &str) -> Vec<(WalFileName, Vec<u8>)> {
        let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(dir);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&d).expect("fixture dir") {
            let p = e.unwrap().path();
            let name = p
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches(".zst")
                .to_string();
            let data = zstd::decode_all(&std::fs::read(&p).unwrap()[..]).unwrap();
            out.push((name.parse::<WalFileName>().expect("WAL file name"), data));
        }
        out.sort_by_key(|(n, _)| n.to_string());
        out
    }
}

use std::collections::{BTreeMap, HashSet};

use carta_dr_core::walverify::{
    select_segments, WalCheckSummary, WalRecordCheck, WalVerifyOptions,
};
use carta_dr_core::{Lsn, WalFileName};

const PAGE: u64 = 8192;
const SEG: u64 = 1 << 20;

struct Wal {
    files: Vec<(WalFileName, Vec<u8>)>,
    /// First LSN of each file.
    starts: Vec<u64>,
    start: Lsn,
    end: Lsn,
}

fn load() -> Wal {
    let all = common::load("wal1m");
    let names: Vec<WalFileName> = all.iter().map(|(n, _)| *n).collect();
    let files: Vec<(WalFileName, Vec<u8>)> = select_segments(&names, None)
        .into_iter()
        .map(|n| (n, all.iter().find(|(m, _)| *m == n).unwrap().1.clone()))
        .collect();
    let starts = files
        .iter()
        .map(|(n, _)| match n {
            WalFileName::Segment(s) | WalFileName::Partial(s) => {
                u64::from(s.seg) * SEG + u64::from(s.log) * (1 << 32)
            }
            _ => unreachable!(),
        })
        .collect();
    Wal {
        files,
        starts,
        start: Lsn(0),
        end: Lsn(0),
    }
}

fn check(w: &Wal, files: &[(WalFileName, Vec<u8>)], track: bool) -> WalCheckSummary {
    let mut c = WalRecordCheck::new(WalVerifyOptions {
        complete_segments: true,
        start_lsn: (w.start.0 > 0).then_some(w.start),
        end_lsn: (w.end.0 > 0).then_some(w.end),
        system_identifier: None,
    })
    .track_records(track);
    for (n, d) in files {
        c.segment(n, d);
    }
    c.finish()
}

/// Byte classes of the clean WAL: (file index, offset) -> class.
fn classify(
    w: &Wal,
    s: &WalCheckSummary,
) -> BTreeMap<(usize, usize), Result<&'static str, &'static str>> {
    let mut class = BTreeMap::new();
    let mut used_pages: HashSet<u64> = HashSet::new();
    let file_of = |lsn: u64| w.starts.iter().position(|&st| lsn >= st && lsn < st + SEG);
    for &(start, len) in &s.record_spans {
        // Walk the record's bytes, skipping page headers.
        let mut lsn = start.0;
        let mut left = u64::from(len);
        while left > 0 {
            let page = lsn - lsn % PAGE;
            used_pages.insert(page);
            let f = file_of(lsn).expect("record inside a fixture file");
            let n = left.min(page + PAGE - lsn);
            for b in lsn..lsn + n {
                class.insert((f, (b - w.starts[f]) as usize), Ok("record"));
            }
            left -= n;
            lsn += n;
            if left > 0 {
                let hdr = if (lsn % SEG) == 0 { 40 } else { 24 };
                used_pages.insert(lsn);
                lsn += hdr;
            }
        }
    }
    for &page in &used_pages {
        let f = file_of(page).unwrap();
        let off = (page - w.starts[f]) as usize;
        let long = page % SEG == 0;
        for i in 0..if long { 40 } else { 24 } {
            let c = match i {
                20..=23 => Err("page header padding"),
                _ => Ok("page header"),
            };
            class.insert((f, off + i), c);
        }
    }
    class
}

#[test]
fn every_checked_bit_flip_is_detected() {
    let mut w = load();
    let clean = check(&w, &w.files, true);
    assert!(
        !clean.is_corrupt(),
        "clean WAL reported: {:?}",
        clean.findings
    );
    w.end = clean.end_of_valid_wal.unwrap();
    w.start = clean.first_record.unwrap();
    let clean = check(&w, &w.files, true);
    assert!(
        !clean.is_corrupt() && clean.findings.is_empty(),
        "{:?}",
        clean.findings
    );
    let class = classify(&w, &clean);

    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Targets: every bit of every used page header of the first and last file (long and
    // short headers), a sample elsewhere, a sample of record bytes, a sample of the bytes no
    // reader looks at.
    let keys: Vec<(usize, usize)> = class.keys().copied().collect();
    let headers: Vec<(usize, usize)> = keys
        .iter()
        .copied()
        .filter(|k| class[k] == Ok("page header"))
        .collect();
    let records: Vec<(usize, usize)> = keys
        .iter()
        .copied()
        .filter(|k| class[k] == Ok("record"))
        .collect();
    let mut targets: Vec<((usize, usize), u8)> = Vec::new();
    for _ in 0..1200 {
        targets.push((
            headers[(next() % headers.len() as u64) as usize],
            (next() % 8) as u8,
        ));
    }
    for _ in 0..1500 {
        targets.push((
            records[(next() % records.len() as u64) as usize],
            (next() % 8) as u8,
        ));
    }
    // Unread bytes: padding, and positions outside any record or used header.
    let mut unread = 0;
    while unread < 300 {
        let f = (next() % w.files.len() as u64) as usize;
        let off = (next() % SEG) as usize;
        if !matches!(class.get(&(f, off)), Some(Ok(_))) {
            targets.push(((f, off), (next() % 8) as u8));
            unread += 1;
        }
    }
    let mut files = w.files.clone();
    let mut tally: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut missed = Vec::new();
    for ((f, off), bit) in targets {
        // XLP_BKP_REMOVABLE (bit 2 of xlp_info's low byte) is a hint nobody can verify.
        let hint = class.get(&(f, off)) == Some(&Ok("page header"))
            && off % PAGE as usize == 2
            && bit == 2;
        let c = match class.get(&(f, off)) {
            _ if hint => Err("XLP_BKP_REMOVABLE hint"),
            Some(c) => *c,
            None => Err("unread (alignment, after switch or end)"),
        };
        files[f].1[off] ^= 1 << bit;
        let s = check(&w, &files, false);
        files[f].1[off] ^= 1 << bit;
        let e = tally
            .entry(match c {
                Ok(r) | Err(r) => r,
            })
            .or_default();
        e.0 += 1;
        if s.is_corrupt() {
            e.1 += 1;
        } else if c.is_ok() {
            missed.push((files[f].0.to_string(), off, bit, c));
        }
    }
    println!("single-bit flips (flipped, detected):");
    for (r, (t, d)) in &tally {
        println!("  {r:<40} {t:>5} {d:>5}");
    }
    for m in missed.iter().take(10) {
        println!("  missed: {m:?}");
    }
    assert!(
        missed.is_empty(),
        "{} flips in read bytes undetected",
        missed.len()
    );
    let detected: usize = tally
        .iter()
        .filter(|(r, _)| **r == "record" || **r == "page header")
        .map(|(_, (_, d))| d)
        .sum();
    assert!(detected >= 1000, "{detected}");
}

#[test]
fn zeroed_pages_missing_and_truncated_segments_are_detected() {
    let mut w = load();
    let clean = check(&w, &w.files, true);
    w.end = clean.end_of_valid_wal.unwrap();
    w.start = clean.first_record.unwrap();
    let class = classify(&w, &clean);
    let used: HashSet<(usize, usize)> = class
        .keys()
        .map(|&(f, off)| (f, off - off % PAGE as usize))
        .collect();
    let mut used: Vec<_> = used.into_iter().collect();
    used.sort_unstable();
    let mut files = w.files.clone();
    for &(f, page) in &used {
        let saved = files[f].1[page..page + PAGE as usize].to_vec();
        files[f].1[page..page + PAGE as usize].fill(0);
        let s = check(&w, &files, false);
        assert!(
            s.is_corrupt(),
            "zeroed page {} of {} not detected",
            page,
            files[f].0
        );
        files[f].1[page..page + PAGE as usize].copy_from_slice(&saved);
    }
    println!("{} zeroed used pages, all detected", used.len());
    // A segment missing in the middle, or at the end.
    for skip in 0..w.files.len() {
        let fewer: Vec<_> = w
            .files
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, f)| f.clone())
            .collect();
        let s = check(&w, &fewer, false);
        assert!(
            s.is_corrupt(),
            "segment {} removed, not detected",
            w.files[skip].0
        );
    }
    // Segment files cut short, at page boundaries and odd points.
    let mut n = 0;
    for f in 0..w.files.len() {
        for cut in [
            0usize,
            1,
            24,
            40,
            8191,
            8192,
            100_000,
            524_288,
            (SEG - 1) as usize,
        ] {
            let mut short = w.files.clone();
            short[f].1.truncate(cut);
            assert!(
                check(&w, &short, false).is_corrupt(),
                "{} cut to {cut}",
                w.files[f].0
            );
            n += 1;
        }
    }
    println!(
        "{n} truncated segment files, all detected; {} removed segments, all detected",
        w.files.len()
    );
}

#[test]
fn without_an_end_lsn_the_last_segment_may_simply_end() {
    // pg_wal-style reading (not complete archived files, no known end): a zeroed tail in the
    // last segment is the end of WAL, not corruption; the same in an earlier one is.
    let w = load();
    let mut files = w.files.clone();
    let last = files.len() - 1;
    let mut c = WalRecordCheck::new(WalVerifyOptions::default());
    files[last].1[0x8000..].fill(0);
    for (n, d) in &files {
        c.segment(n, d);
    }
    let s = c.finish();
    assert!(!s.is_corrupt(), "{:?}", s.findings);
    assert!(s.findings.iter().any(|f| f.what.starts_with("end of WAL")));
    let mut files = w.files.clone();
    files[1].1[0x8000..].fill(0);
    let mut c = WalRecordCheck::new(WalVerifyOptions::default());
    for (n, d) in &files {
        c.segment(n, d);
    }
    assert!(c.finish().is_corrupt());
}

#[test]
fn arbitrary_bytes_never_panic() {
    let w = load();
    let mut rng = 7u64;
    for i in 0..200 {
        let mut files = w.files.clone();
        for _ in 0..50 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let f = (rng >> 33) as usize % files.len();
            let off = (rng >> 7) as usize % files[f].1.len();
            files[f].1[off] = (rng >> 51) as u8;
        }
        if i % 3 == 0 {
            files[0].1.truncate((rng >> 20) as usize % (SEG as usize));
        }
        let mut c = WalRecordCheck::new(WalVerifyOptions::default());
        for (n, d) in &files {
            c.segment(n, d);
        }
        let _ = c.finish();
    }
    let _ = Lsn(0);
}
