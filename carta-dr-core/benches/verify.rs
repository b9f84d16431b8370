//! Throughput of the dump verifier and of the record-level WAL pass over the PostgreSQL 15
//! fixtures (tests/fixtures).

use criterion::{criterion_main, Criterion, Throughput};

use carta_dr_core::dump::verify_bytes;
use carta_dr_core::walverify::{
    check_segments, select_segments, verify_wal_dir_threads, WalRecordCheck, WalVerifyOptions,
};
use carta_dr_core::WalFileName;

fn fixture_dir(dir: &str) -> Vec<(String, Vec<u8>)> {
    let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&d).expect("fixture dir") {
        let p = e.expect("dir entry").path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .trim_end_matches(".zst")
            .to_string();
        let data = zstd::decode_all(&std::fs::read(&p).expect("read fixture")[..]).expect("zstd");
        out.push((name, data));
    }
    out.sort();
    out
}

fn dump(c: &mut Criterion) {
    let mut g = c.benchmark_group("dump_verify");
    for (name, data) in fixture_dir("dump") {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(name, |b| b.iter(|| verify_bytes("bench", &data)));
    }
    g.finish();
}

fn wal(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_records");
    for dir in ["wal1m", "wal16m"] {
        let files: Vec<(WalFileName, Vec<u8>)> = fixture_dir(dir)
            .into_iter()
            .filter_map(|(n, d)| n.parse::<WalFileName>().ok().map(|w| (w, d)))
            .collect();
        let names: Vec<WalFileName> = files.iter().map(|(n, _)| *n).collect();
        let chosen: Vec<&(WalFileName, Vec<u8>)> = select_segments(&names, None)
            .into_iter()
            .filter_map(|n| files.iter().find(|(m, _)| *m == n))
            .collect();
        let bytes: u64 = chosen.iter().map(|(_, d)| d.len() as u64).sum();
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(dir, |b| {
            b.iter(|| {
                let mut c = WalRecordCheck::new(WalVerifyOptions::default());
                for (n, d) in &chosen {
                    c.segment(n, d);
                }
                c.finish()
            })
        });
    }
    // A larger real WAL directory, for the comparison with pg_waldump
    // (see docs/verification.md): CARTA_DR_BENCH_WAL_DIR=/path/to/segments.
    if let Ok(dir) = std::env::var("CARTA_DR_BENCH_WAL_DIR") {
        let mut files: Vec<(WalFileName, Vec<u8>)> = Vec::new();
        for e in std::fs::read_dir(&dir).expect("CARTA_DR_BENCH_WAL_DIR") {
            let p = e.expect("dir entry").path();
            if let Some(w) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<WalFileName>().ok())
            {
                if matches!(w, WalFileName::Segment(_)) {
                    files.push((w, std::fs::read(&p).expect("read segment")));
                }
            }
        }
        files.sort_by_key(|(n, _)| n.to_string());
        let bytes: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
        let mut c0 = WalRecordCheck::new(WalVerifyOptions::default());
        for (n, d) in &files {
            c0.segment(n, d);
        }
        let s = c0.finish();
        eprintln!(
            "{dir}: {} segments, {} records, {} record bytes, findings {:?}",
            s.segments, s.records, s.record_bytes, s.findings
        );
        g.throughput(Throughput::Bytes(bytes));
        g.sample_size(10);
        // The files as `verify --wal --wal-dir` reads them: one thread, then two.
        let opts = WalVerifyOptions {
            complete_segments: true,
            ..Default::default()
        };
        let path = std::path::Path::new(&dir);
        let one = verify_wal_dir_threads(path, None, &opts, 1)
            .expect("verify")
            .1;
        let two = verify_wal_dir_threads(path, None, &opts, 2)
            .expect("verify")
            .1;
        assert_eq!(one, two, "two threads find what one does");
        for threads in [1, 2] {
            g.bench_function(format!("dir_files_{threads}_threads"), |b| {
                b.iter(|| verify_wal_dir_threads(path, None, &opts, threads))
            });
        }
        g.bench_function("dir_memory_2_threads", |b| {
            b.iter(|| check_segments(&files, &WalVerifyOptions::default(), 2))
        });
        g.bench_function("dir", |b| {
            b.iter(|| {
                let mut c = WalRecordCheck::new(WalVerifyOptions::default());
                for (n, d) in &files {
                    c.segment(n, d);
                }
                c.finish()
            })
        });
    }
    g.finish();
}

/// The bench group (written out: the `criterion_group!` macro's function has no doc).
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    dump(&mut c);
    wal(&mut c);
}

criterion_main!(benches);
