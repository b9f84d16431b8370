//! The corruption corpus of base backups: a real PostgreSQL 15 cluster (data checksums on,
//! WAL archived by `carta-dr wal-push`) backed up with `carta-dr backup` into a local
//! repository, then damaged one way at a time, in place, and verified with
//! `carta_dr_core::backupverify::BackupVerifier` (what `carta-dr verify ID` runs):
//!
//! * single-bit flips in every kind of stored object (chunk objects, bundles, the backup
//!   record, WAL segments) and every region of their envelope (header, chunk frame headers,
//!   chunk data, trailer);
//! * single-bit flips in the text of the stored `backup_manifest`, the record re-sealed with
//!   valid envelope checksums, so that only the manifest's own SHA-256 can catch them;
//! * single-bit flips and zeroed 8 KiB pages in file content, the chunk or bundle re-sealed
//!   with valid envelope checksums, so that only the comparison with the CRC-32C of
//!   PostgreSQL's `backup_manifest` can catch them;
//! * truncations of each object kind at every region boundary and at random points;
//! * zeroed 8 KiB pages of stored objects;
//! * a deleted chunk object, a deleted bundle, each WAL segment of the backup's range deleted.
//!
//! Every damage must be detected; the test prints the counts per class. The clean backup is
//! verified before, between batches and after, and must never be reported bad.
//!
//! Damage to chunk, bundle and record objects is verified without the WAL pass (it cannot
//! affect WAL, and the pass would only slow the test); damage to WAL segments with it.
//!
//! By design, one kind of flip is not detectable and is counted apart: the case of a hex
//! letter (a-f / A-F) in the `Manifest-Checksum` value. PostgreSQL and carta-dr both read
//! hexadecimal case-insensitively, so the checksum, and everything it protects, is unchanged.

mod backup_support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use backup_support::*;
use carta_dr_core::backupverify::{BackupSelection, BackupVerifier, BackupVerifyOptions};
use carta_dr_core::catalog::{bundle_path, chunk_path, record_path, BackupRecord, Content};
use carta_dr_core::envelope::{self, EnvelopeOptions};
use carta_dr_core::fuzzing::layout;
use carta_dr_core::traits::{Verdict, VerifyReport};
use carta_dr_core::{
    BackupId, Store, StorePath, Verifier, WalFileName, WalSegmentName, WalSegmentSize,
};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

struct Corpus {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn Store>,
    id: BackupId,
    repo: PathBuf,
    rec: BackupRecord,
    /// (class, tried, detected)
    counts: BTreeMap<String, (u64, u64)>,
    since_clean: u64,
}

impl Corpus {
    fn verify(&self, wal: bool) -> VerifyReport {
        let opts = BackupVerifyOptions {
            check_wal: wal,
            ..Default::default()
        };
        self.rt
            .block_on(
                BackupVerifier::new(
                    self.store.clone(),
                    None,
                    BackupSelection::One(self.id),
                    opts,
                )
                .verify(),
            )
            .expect("the verifier runs")
    }

    fn assert_clean(&mut self) {
        for wal in [false, true] {
            let r = self.verify(wal);
            assert_eq!(
                r.verdict(),
                Verdict::Clean,
                "the clean backup was reported bad: {:#?}",
                r.findings
            );
            assert!(r.findings.is_empty(), "{:#?}", r.findings);
        }
        self.since_clean = 0;
    }

    fn file(&self, p: &StorePath) -> PathBuf {
        self.repo.join(p.as_str())
    }

    /// Writes `damaged` over the object at `p`, verifies, puts the original back, and counts
    /// the outcome under `class`. `must_name`: a text some finding's location must contain.
    fn try_damage(
        &mut self,
        class: &str,
        p: &StorePath,
        damaged: Option<&[u8]>,
        wal: bool,
        must_name: Option<&str>,
    ) {
        let path = self.file(p);
        let original = std::fs::read(&path).unwrap();
        match damaged {
            Some(d) => {
                assert_ne!(
                    d,
                    original.as_slice(),
                    "{class}: the damage changes nothing"
                );
                std::fs::write(&path, d).unwrap();
            }
            None => std::fs::remove_file(&path).unwrap(),
        }
        let r = self.verify(wal);
        std::fs::write(&path, &original).unwrap();
        let named = match must_name {
            Some(n) => r
                .findings
                .iter()
                .any(|f| f.location.to_string().contains(n)),
            None => true,
        };
        let ok = r.verdict() == Verdict::Corrupt && named;
        if !ok {
            eprintln!(
                "NOT DETECTED: {class} on {p} (must name {must_name:?}): {:#?}",
                r.findings
            );
        }
        let e = self.counts.entry(class.to_string()).or_default();
        e.0 += 1;
        e.1 += u64::from(ok);
        self.since_clean += 1;
        if self.since_clean >= 250 {
            self.assert_clean();
        }
    }
}

fn flip(data: &[u8], at: usize, bit: usize) -> Vec<u8> {
    let mut d = data.to_vec();
    d[at] ^= 1 << bit;
    d
}

/// The envelope regions of a sealed object: (name, byte ranges).
fn regions(sealed: &[u8]) -> Vec<(&'static str, Vec<std::ops::Range<usize>>)> {
    let l = layout(sealed).expect("an envelope");
    let frames: Vec<_> = l.chunks.iter().map(|c| c.start..c.start + 24).collect();
    let data: Vec<_> = l
        .chunks
        .iter()
        .filter(|c| c.end > c.start + 24)
        .map(|c| c.start + 24..c.end)
        .collect();
    vec![
        ("header", vec![l.header]),
        ("frame headers", frames),
        ("chunk data", data),
        ("trailer", vec![l.trailer.expect("a trailer")]),
    ]
}

/// Region boundaries of a sealed object: every start and end of header, frame header,
/// payload and trailer (excluding the full length).
fn boundaries(sealed: &[u8]) -> Vec<usize> {
    let mut v = vec![0];
    for (_, rs) in regions(sealed) {
        for r in rs {
            v.push(r.start);
            v.push(r.end);
        }
    }
    v.retain(|&b| b < sealed.len());
    v.sort();
    v.dedup();
    v
}

fn reseal(raw: &[u8]) -> Vec<u8> {
    envelope::seal(&EnvelopeOptions::default(), raw).unwrap()
}

#[test]
fn verify_backup_corruption_corpus() {
    let env = Env::local("vb-corpus");
    env.pg.psql(
        "postgres",
        "create table wide as select g, md5(g::text) || repeat('x', 40) as h
           from generate_series(1, 60000) g;
         create table small_t as select g from generate_series(1, 100) g;
         checkpoint",
    );
    let info = env.backup();
    let id: BackupId = info["id"].as_str().unwrap().parse().unwrap();
    let repo = env.repo_dir.as_ref().unwrap().path().to_path_buf();
    let store = carta_dr_backends::open(&env.repo).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rpath = record_path(id).unwrap();
    let sealed = std::fs::read(repo.join(rpath.as_str())).unwrap();
    let rec = BackupRecord::from_json(
        &rpath,
        &envelope::open(rpath.as_str(), &sealed, None).unwrap(),
    )
    .unwrap();
    let mut c = Corpus {
        rt,
        store,
        id,
        repo,
        rec,
        counts: BTreeMap::new(),
        since_clean: 0,
    };
    c.assert_clean();

    // The objects, by kind.
    let mut chunks: Vec<(StorePath, String, u64)> = Vec::new(); // (object, file, offset)
    let mut bundles: BTreeMap<StorePath, Vec<(String, u64, u64)>> = BTreeMap::new();
    for f in &c.rec.files {
        match &f.content {
            Content::Chunks { chunks: cs } => {
                let mut off = 0;
                for ch in cs {
                    chunks.push((chunk_path(&ch.sha256).unwrap(), f.path.clone(), off));
                    off += ch.len;
                }
            }
            Content::Bundled { bundle, offset, .. } => bundles
                .entry(bundle_path(bundle).unwrap())
                .or_default()
                .push((f.path.clone(), *offset, f.size)),
            Content::None => {}
        }
    }
    chunks.sort();
    chunks.dedup_by(|a, b| a.0 == b.0);
    assert!(chunks.len() >= 4, "the backup has chunked files");
    assert!(bundles.len() >= 2, "the backup has bundles");
    let seg_size = WalSegmentSize::new(c.rec.wal_segment_size).unwrap();
    let a = c.rec.start_lsn.segment_number(seg_size);
    let b = carta_dr_core::Lsn(c.rec.stop_lsn.0 - 1).segment_number(seg_size);
    let wal: Vec<(StorePath, String)> = (a..=b)
        .map(|n| {
            let s = WalSegmentName::from_segno(c.rec.timeline, n, seg_size).unwrap();
            (
                carta_dr_core::archive::path_of(&WalFileName::Segment(s)).unwrap(),
                s.to_string(),
            )
        })
        .collect();
    eprintln!(
        "backup {id}: {} files, {} chunk objects, {} bundles, {} WAL segments in its range",
        c.rec.files.len(),
        chunks.len(),
        bundles.len(),
        wal.len()
    );
    let bundle_list: Vec<StorePath> = bundles.keys().cloned().collect();
    let chunk_list: Vec<StorePath> = chunks.iter().map(|x| x.0.clone()).collect();
    let wal_list: Vec<StorePath> = wal.iter().map(|x| x.0.clone()).collect();
    let kinds: Vec<(&str, Vec<StorePath>, [usize; 4], bool)> = vec![
        // (kind, objects, flips per region [header, frames, data, trailer], with WAL)
        ("chunk object", chunk_list.clone(), [60, 60, 220, 60], false),
        ("bundle", bundle_list.clone(), [60, 60, 220, 60], false),
        ("record", vec![rpath.clone()], [40, 40, 120, 40], false),
        ("WAL segment", wal_list.clone(), [8, 8, 24, 8], true),
    ];
    let mut rng = Rng(0x5eed_cafe_f00d);

    // 1. Single-bit flips, every kind and region.
    for (kind, objs, per_region, with_wal) in &kinds {
        for (ri, n) in per_region.iter().enumerate() {
            for i in 0..*n {
                let p = &objs[(i * 7 + ri) % objs.len()];
                let data = std::fs::read(c.file(p)).unwrap();
                let regs = regions(&data);
                let (rname, ranges) = &regs[ri];
                let r = &ranges[rng.below(ranges.len())];
                let at = r.start + rng.below(r.len());
                let d = flip(&data, at, rng.below(8));
                let class = format!("flip {kind} {rname}");
                let name = p.as_str().to_string();
                c.try_damage(&class, p, Some(&d), *with_wal, Some(&name));
            }
        }
    }

    // 2. Flips in the stored backup_manifest text, the record re-sealed intact.
    let record_raw = std::fs::read(c.file(&rpath)).unwrap();
    let manifest = c.rec.backup_manifest.clone();
    let sum_at = manifest.rfind("\"Manifest-Checksum\": \"").unwrap() + 21;
    let mut by_design = 0u64;
    for _ in 0..200 {
        let at = rng.below(manifest.len());
        let bit = rng.below(7); // bit 7 would not be text any more
        let mut m = manifest.clone().into_bytes();
        m[at] ^= 1 << bit;
        let hex_case = (sum_at..sum_at + 64).contains(&at)
            && bit == 5
            && manifest.as_bytes()[at].is_ascii_alphabetic();
        if hex_case {
            by_design += 1;
            continue;
        }
        let mut rec = c.rec.clone();
        rec.backup_manifest = String::from_utf8(m).unwrap();
        let d = reseal(&rec.to_json().unwrap());
        assert_ne!(d, record_raw);
        c.try_damage(
            "flip manifest text (record re-sealed)",
            &rpath,
            Some(&d),
            false,
            Some("backup_manifest"),
        );
    }

    // 3. Content damage re-sealed with valid envelope checksums: only the manifest CRC-32C
    // can see it. Flips, and zeroed 8 KiB pages (skipping pages already zero).
    for i in 0..60 {
        let (p, file, _) = &chunks[(i * 5) % chunks.len()];
        let raw = envelope::open(p.as_str(), &std::fs::read(c.file(p)).unwrap(), None).unwrap();
        let at = rng.below(raw.len());
        let d = reseal(&flip(&raw, at, rng.below(8)));
        c.try_damage(
            "flip chunk content (re-sealed)",
            p,
            Some(&d),
            false,
            Some(file),
        );
    }
    for i in 0..60 {
        let p = &bundle_list[i % bundle_list.len()];
        let files = &bundles[p];
        let (file, off, size) = &files[rng.below(files.len())];
        if *size == 0 {
            continue;
        }
        let raw = envelope::open(p.as_str(), &std::fs::read(c.file(p)).unwrap(), None).unwrap();
        let at = (*off as usize) + rng.below(*size as usize);
        let d = reseal(&flip(&raw, at, rng.below(8)));
        c.try_damage(
            "flip bundle content (re-sealed)",
            p,
            Some(&d),
            false,
            Some(file),
        );
    }
    let mut zeroed = 0;
    let mut tries = 0;
    while zeroed < 40 && tries < 2000 {
        tries += 1;
        let (p, file, _) = &chunks[rng.below(chunks.len())];
        let raw = envelope::open(p.as_str(), &std::fs::read(c.file(p)).unwrap(), None).unwrap();
        let page = rng.below(raw.len() / 8192);
        let r = page * 8192..((page + 1) * 8192).min(raw.len());
        if raw[r.clone()].iter().all(|b| *b == 0) {
            continue;
        }
        let mut z = raw.clone();
        z[r].fill(0);
        zeroed += 1;
        c.try_damage(
            "zeroed 8 KiB page of content (re-sealed)",
            p,
            Some(&reseal(&z)),
            false,
            Some(file),
        );
    }

    // 4. Truncations: every region boundary and random points, per kind.
    for (kind, objs, _, with_wal) in &kinds {
        for p in objs.iter().take(3) {
            let data = std::fs::read(c.file(p)).unwrap();
            let mut cuts = boundaries(&data);
            cuts.push(data.len() - 1);
            for _ in 0..10 {
                cuts.push(rng.below(data.len()));
            }
            cuts.sort();
            cuts.dedup();
            for cut in cuts {
                let class = format!("truncate {kind}");
                c.try_damage(&class, p, Some(&data[..cut]), *with_wal, Some(p.as_str()));
            }
        }
    }

    // 5. Zeroed 8 KiB pages of stored objects (at 0 and random offsets; skipping ranges
    // already zero).
    for (kind, objs, _, with_wal) in &kinds {
        for i in 0..12 {
            let p = &objs[i % objs.len()];
            let data = std::fs::read(c.file(p)).unwrap();
            let start = if i < objs.len().min(3) {
                0
            } else {
                rng.below(data.len())
            };
            let r = start..(start + 8192).min(data.len());
            if data[r.clone()].iter().all(|b| *b == 0) {
                continue;
            }
            let mut d = data.clone();
            d[r].fill(0);
            let class = format!("zeroed 8 KiB page of {kind}");
            c.try_damage(&class, p, Some(&d), *with_wal, Some(p.as_str()));
        }
    }

    // 6. Deleted objects and missing WAL.
    for (p, file, _) in chunks.iter().take(3) {
        c.try_damage("deleted chunk object", p, None, false, Some(file));
    }
    for p in bundle_list.iter().take(3) {
        let file = bundles[p][0].0.clone();
        c.try_damage("deleted bundle", p, None, false, Some(&file));
    }
    for (p, seg) in &wal {
        c.try_damage("deleted WAL segment of the range", p, None, true, Some(seg));
    }

    c.assert_clean();
    let mut total = (0, 0);
    eprintln!("{:<50} {:>7} {:>9}", "class", "damaged", "detected");
    for (class, (n, d)) in &c.counts {
        eprintln!("{class:<50} {n:>7} {d:>9}");
        total.0 += n;
        total.1 += d;
    }
    eprintln!("{:<50} {:>7} {:>9}", "total", total.0, total.1);
    eprintln!(
        "by design, not counted: {by_design} case flips of a hex letter in Manifest-Checksum"
    );
    let flips: u64 = c
        .counts
        .iter()
        .filter(|(k, _)| k.starts_with("flip"))
        .map(|(_, v)| v.0)
        .sum();
    assert!(flips >= 1000, "{flips} single-bit flips");
    assert_eq!(total.0, total.1, "every damage is detected");
}
