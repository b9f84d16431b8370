//! Envelope throughput against its floor: raw zstd at the same level over the same 1 MiB
//! chunks with a reused context, and raw CRC-32C, on the same buffer.
//!
//! The buffer is 32 MiB of `carta_dr_core::fuzzing::wal_like_data`: synthetic WAL shaped
//! like a pgbench workload (record headers with random CRCs, `pgbench_accounts` tuples with
//! a blank-padded filler, full-page images, incompressible runs), which zstd level 1
//! compresses about 3.8x. Throughput is in raw (uncompressed) bytes for every variant.
//!
//! Two pairs are like for like:
//! * one-shot: `seal`/`open` build the whole sealed/raw object in a fresh `Vec`, and so do
//!   `raw_zstdN` (chunks appended to one fresh output buffer);
//! * streaming: `stream_zstd1` runs `Sealer` into `io::sink()` and `Opener` into a reused
//!   buffer, like `raw_zstdN_reuse` (each chunk into one reused buffer).
//!
//! `raw_crc32c` is the `crc32c` crate, `envelope_crc32c` the CRC-32C the envelope computes
//! its chunk checksums with.
//!
//! `cargo bench -p carta-dr-benches --bench envelope -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::io::{Cursor, Read, Write};
use std::sync::Arc;

use carta_dr_core::envelope::{
    open, seal, EnvelopeOptions, Key, Opener, Sealer, DEFAULT_CHUNK_SIZE,
};
use carta_dr_core::fuzzing::wal_like_data;
use criterion::{criterion_main, Criterion, Throughput};
use zstd::zstd_safe::compress_bound;

const LEN: usize = 32 << 20;

fn variants() -> Vec<(&'static str, EnvelopeOptions)> {
    let key = Arc::new(Key::from_bytes([0x42; 32]));
    vec![
        ("zstd1", EnvelopeOptions::zstd(1)),
        ("zstd3", EnvelopeOptions::zstd(3)),
        ("none", EnvelopeOptions::uncompressed()),
        ("aes256gcm+zstd1", EnvelopeOptions::zstd(1).with_key(key)),
    ]
}

/// Raw zstd, one frame per 1 MiB chunk, appended to one fresh buffer.
fn raw_compress_all(cx: &mut zstd::bulk::Compressor<'_>, data: &[u8]) -> Vec<u8> {
    let chunks = data.len().div_ceil(DEFAULT_CHUNK_SIZE);
    let mut out: Vec<u8> = Vec::with_capacity(chunks * compress_bound(DEFAULT_CHUNK_SIZE));
    for chunk in data.chunks(DEFAULT_CHUNK_SIZE) {
        let pos = out.len() as u64;
        let mut cur = Cursor::new(&mut out);
        cur.set_position(pos);
        cx.compress_to_buffer(chunk, &mut cur).expect("compress");
    }
    out
}

fn seal_benches(c: &mut Criterion, data: &[u8]) {
    let mut g = c.benchmark_group("envelope_seal");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10);
    for (name, opts) in variants() {
        g.bench_function(name, |b| {
            b.iter(|| seal(&opts, black_box(data)).expect("seal"))
        });
    }
    g.bench_function("stream_zstd1", |b| {
        let opts = EnvelopeOptions::zstd(1);
        b.iter(|| {
            let mut s = Sealer::new(&opts, std::io::sink()).expect("sealer");
            s.write_all(black_box(data)).expect("write");
            s.finish().expect("finish").1
        })
    });
    for level in [1, 3] {
        g.bench_function(format!("raw_zstd{level}"), |b| {
            let mut cx = zstd::bulk::Compressor::new(level).expect("zstd context");
            b.iter(|| raw_compress_all(&mut cx, black_box(data)))
        });
        g.bench_function(format!("raw_zstd{level}_reuse"), |b| {
            let mut cx = zstd::bulk::Compressor::new(level).expect("zstd context");
            let mut out = Vec::with_capacity(compress_bound(DEFAULT_CHUNK_SIZE));
            b.iter(|| {
                let mut total = 0;
                for chunk in black_box(data).chunks(DEFAULT_CHUNK_SIZE) {
                    total += cx.compress_to_buffer(chunk, &mut out).expect("compress");
                }
                total
            })
        });
    }
    g.bench_function("raw_crc32c", |b| b.iter(|| crc32c::crc32c(black_box(data))));
    g.bench_function("envelope_crc32c", |b| {
        b.iter(|| carta_dr_core::envelope::crc32c(black_box(data)))
    });
    g.finish();
}

fn open_benches(c: &mut Criterion, data: &[u8]) {
    let mut g = c.benchmark_group("envelope_open");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10);
    for (name, opts) in variants() {
        let sealed = seal(&opts, data).expect("seal");
        let key = opts.key.clone();
        eprintln!(
            "{name}: {} -> {} bytes (ratio {:.2})",
            data.len(),
            sealed.len(),
            data.len() as f64 / sealed.len() as f64
        );
        g.bench_function(name, |b| {
            b.iter(|| open("bench", black_box(&sealed), key.as_deref()).expect("open"))
        });
    }
    {
        let sealed = seal(&EnvelopeOptions::zstd(1), data).expect("seal");
        g.bench_function("stream_zstd1", |b| {
            let mut buf = vec![0u8; DEFAULT_CHUNK_SIZE];
            b.iter(|| {
                let mut r = Opener::new("bench", black_box(&sealed[..]), None);
                let mut total = 0;
                loop {
                    let n = r.read(&mut buf).expect("open");
                    if n == 0 {
                        break total;
                    }
                    total += n;
                }
            })
        });
    }
    for level in [1, 3] {
        let mut cx = zstd::bulk::Compressor::new(level).expect("zstd context");
        let frames: Vec<Vec<u8>> = data
            .chunks(DEFAULT_CHUNK_SIZE)
            .map(|chunk| cx.compress(chunk).expect("compress"))
            .collect();
        g.bench_function(format!("raw_zstd{level}"), |b| {
            let mut d = zstd::bulk::Decompressor::new().expect("zstd context");
            b.iter(|| {
                let mut out: Vec<u8> = Vec::with_capacity(LEN);
                for f in black_box(&frames) {
                    let pos = out.len() as u64;
                    let mut cur = Cursor::new(&mut out);
                    cur.set_position(pos);
                    d.decompress_to_buffer(f, &mut cur).expect("decompress");
                }
                out
            })
        });
        g.bench_function(format!("raw_zstd{level}_reuse"), |b| {
            let mut d = zstd::bulk::Decompressor::new().expect("zstd context");
            let mut out = Vec::with_capacity(DEFAULT_CHUNK_SIZE);
            b.iter(|| {
                let mut total = 0;
                for f in black_box(&frames) {
                    total += d.decompress_to_buffer(f, &mut out).expect("decompress");
                }
                total
            })
        });
    }
    g.finish();
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Like-for-like overhead on a shared machine: the envelope and its raw-zstd floor run
/// alternately, `ROUNDS` times each, timed in thread CPU time (not wall time, which other
/// processes inflate), and the fastest run of each counts. Printed before the criterion
/// groups, with the CRC-32C cost that the format adds (raw bytes and stored bytes).
fn paired_summary(data: &[u8]) {
    const ROUNDS: usize = 15;
    fn cpu(f: &mut dyn FnMut()) -> f64 {
        let t = thread_cpu_secs();
        f();
        thread_cpu_secs() - t
    }
    let mib = data.len() as f64 / 1048576.0;
    let mut crate_min = f64::MAX;
    let mut crc_min = f64::MAX;
    for _ in 0..ROUNDS {
        crate_min = crate_min.min(cpu(&mut || {
            black_box(crc32c::crc32c(black_box(data)));
        }));
        crc_min = crc_min.min(cpu(&mut || {
            black_box(carta_dr_core::envelope::crc32c(black_box(data)));
        }));
    }
    eprintln!(
        "paired: CRC-32C {:.0} MiB/s as the envelope computes it, crc32c crate {:.0} MiB/s \
         (thread CPU time)",
        mib / crc_min,
        mib / crate_min
    );
    for level in [1, 3] {
        let opts = EnvelopeOptions::zstd(level);
        let sealed = seal(&opts, data).expect("seal");
        let mut cx = zstd::bulk::Compressor::new(level).expect("zstd context");
        let frames: Vec<Vec<u8>> = data
            .chunks(DEFAULT_CHUNK_SIZE)
            .map(|chunk| cx.compress(chunk).expect("compress"))
            .collect();
        let mut d = zstd::bulk::Decompressor::new().expect("zstd context");
        let mut min = [f64::MAX; 4];
        for _ in 0..ROUNDS {
            let runs: [&mut dyn FnMut(); 4] = [
                &mut || drop(black_box(seal(&opts, black_box(data)).expect("seal"))),
                &mut || drop(black_box(raw_compress_all(&mut cx, black_box(data)))),
                &mut || {
                    drop(black_box(
                        open("b", black_box(&sealed), None).expect("open"),
                    ))
                },
                &mut || {
                    let mut out: Vec<u8> = Vec::with_capacity(LEN);
                    for f in black_box(&frames) {
                        let pos = out.len() as u64;
                        let mut cur = Cursor::new(&mut out);
                        cur.set_position(pos);
                        d.decompress_to_buffer(f, &mut cur).expect("decompress");
                    }
                    drop(black_box(out));
                },
            ];
            for (i, f) in runs.into_iter().enumerate() {
                min[i] = min[i].min(cpu(f));
            }
        }
        // The CRC work the format requires on top of zstd: all raw bytes, plus the stored
        // (compressed) bytes.
        let crc_share = crc_min * (1.0 + sealed.len() as f64 / data.len() as f64);
        eprintln!(
            "paired zstd level {level}: seal {:.0} MiB/s vs raw {:.0} MiB/s (overhead {:+.1}%); \
             open {:.0} MiB/s vs raw {:.0} MiB/s (overhead {:+.1}%); \
             CRC-32C share: {:.1}% of raw seal, {:.1}% of raw open",
            mib / min[0],
            mib / min[1],
            (min[0] / min[1] - 1.0) * 100.0,
            mib / min[2],
            mib / min[3],
            (min[2] / min[3] - 1.0) * 100.0,
            crc_share / min[1] * 100.0,
            crc_share / min[3] * 100.0,
        );
    }
}

fn benches(c: &mut Criterion) {
    let data = wal_like_data(LEN, 1);
    paired_summary(&data);
    seal_benches(c, &data);
    open_benches(c, &data);
}

/// The bench group (written out: the `criterion_group!` macro's function has no doc).
fn envelope() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
}

criterion_main!(envelope);
