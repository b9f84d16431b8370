//! The record-level WAL pass over real PostgreSQL 15 WAL (tests/fixtures/wal1m and wal16m,
//! made by tests/fixtures/generate.sh), cross-checked against what pg_waldump reported for the
//! same files when they were made.

use carta_dr_core::traits::Severity;
use carta_dr_core::walverify::{select_segments, WalRecordCheck, WalVerifyOptions};
use carta_dr_core::{Lsn, WalFileName};

/// Decompressed fixture files of a directory, by name.
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

fn run(
    files: &[(WalFileName, Vec<u8>)],
    opts: WalVerifyOptions,
) -> carta_dr_core::walverify::WalCheckSummary {
    let names: Vec<WalFileName> = files.iter().map(|(n, _)| *n).collect();
    let mut c = WalRecordCheck::new(opts);
    for n in select_segments(&names, None) {
        let data = &files.iter().find(|(m, _)| *m == n).unwrap().1;
        c.segment(&n, data);
    }
    c.finish()
}

#[test]
fn timeline_switch_fixture_is_clean_end_to_end() {
    let files = load("wal1m");
    let names: Vec<WalFileName> = files.iter().map(|(n, _)| *n).collect();
    let chosen: Vec<String> = select_segments(&names, None)
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        chosen,
        [
            "000000010000000000000006",
            "000000010000000000000007",
            "000000010000000000000008",
            "000000020000000000000009"
        ],
        "timeline 2 replaces the .partial of timeline 1"
    );
    let s = run(
        &files,
        WalVerifyOptions {
            complete_segments: true,
            ..Default::default()
        },
    );
    for f in &s.findings {
        eprintln!("{:?} {} {}", f.severity, f.location, f.what);
    }
    assert!(!s.is_corrupt());
    assert!(s.findings.iter().all(|f| f.severity != Severity::Warning));
    eprintln!("{s:#?}");
    // Segment 6 starts with the 224-byte tail of a record begun in segment 5 (skipped); the
    // first whole record is at 0/600108, as pg_waldump reported.
    assert_eq!(s.first_record, Some("0/600108".parse::<Lsn>().unwrap()));
    // The record at 0/6FFEE0 (363 bytes) crosses from segment 6 into 7.
    assert!(s.segment_crossing >= 1);
    assert!(s.page_crossing > 10);
    // Switches at 0/7264C8 and 0/80B028 (timeline 1), 0/90C980 (timeline 2).
    assert_eq!(s.switches, 3);
    assert_eq!(s.timelines, vec![1, 2]);
    assert_eq!(s.end_of_valid_wal, Some("0/A00000".parse::<Lsn>().unwrap()));
}

#[test]
fn the_partial_segment_ends_where_the_timeline_switched() {
    let files = load("wal1m");
    let partial: Vec<_> = files
        .into_iter()
        .filter(|(n, _)| matches!(n, WalFileName::Partial(_)))
        .collect();
    let s = run(&partial, WalVerifyOptions::default());
    assert!(!s.is_corrupt(), "{:?}", s.findings);
    // pg_waldump: "invalid record length at 0/9000A0: wanted 24, got 0", the switch point in
    // 00000002.history.
    let end = s
        .findings
        .iter()
        .find(|f| f.what.starts_with("end of WAL"))
        .expect("end of WAL");
    assert!(end.what.contains("0/9000A0"), "{}", end.what);
    // The shutdown checkpoint at 0/900028 is 114 bytes long.
    assert_eq!(s.end_of_valid_wal, Some("0/90009A".parse::<Lsn>().unwrap()));
    assert_eq!(s.records, 1);
}

#[test]
fn sixteen_mib_segment_ending_in_a_switch() {
    let files = load("wal16m");
    let s = run(
        &files,
        WalVerifyOptions {
            complete_segments: true,
            ..Default::default()
        },
    );
    assert!(!s.is_corrupt(), "{:?}", s.findings);
    assert_eq!(s.switches, 1);
    assert!(s.records > 5000, "{} records", s.records);
}

/// pg_waldump 15 over the same files counts the same records.
#[test]
fn record_count_matches_pg_waldump() {
    let bin =
        std::env::var("CARTA_DR_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let waldump = std::path::Path::new(&bin).join("pg_waldump");
    assert!(
        waldump.exists(),
        "{} is missing: install postgresql-15 (apt-get install postgresql-15) or set CARTA_DR_PG_BIN",
        waldump.display()
    );
    let files = load("wal1m");
    let dir = std::env::temp_dir().join(format!("carta-walfix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (n, d) in &files {
        std::fs::write(dir.join(n.to_string()), d).unwrap();
    }
    let s = run(&files, WalVerifyOptions::default());
    let count = |tli: &str, start: &str, end: Option<String>| -> u64 {
        let mut cmd = std::process::Command::new(&waldump);
        cmd.arg("-p").arg(&dir).args(["-t", tli, "-s", start]);
        if let Some(e) = end {
            cmd.args(["-e", &e]);
        }
        let out = cmd.output().expect("run pg_waldump");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("rmgr:"))
            .count() as u64
    };
    // Timeline 1 up to its last switch (the end of segment 8), then timeline 2 from the start
    // of segment 9 (which holds timeline 1's shutdown checkpoint, copied at the switch).
    let first = s.first_record.unwrap().to_string();
    let n1 = count("1", &first, Some("0/900000".into()));
    let n2 = count("2", "0/900028", None);
    std::fs::remove_dir_all(&dir).ok();
    assert!(n1 > 5000 && n2 > 100, "pg_waldump counted {n1} and {n2}");
    assert_eq!(s.records, n1 + n2, "records verified vs pg_waldump");
}
