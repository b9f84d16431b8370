//! A service that embeds backup verification.
//!
//! The service writes its nightly exports as sealed objects (chunked, CRC-32C per chunk and for
//! the whole content, zstd) into a `LocalStore`, then verifies every object with a `Verifier`
//! and gets a structured `VerifyReport`. Then the disk "rots": one object gets a flipped bit,
//! another is cut short. The next verification must find both, name the object (and the chunk
//! for the flip), and report `Corrupt`. Exits non-zero if anything is missed.
//!
//! Run: `cargo run -p carta-dr-examples --example embed_verification`

use std::sync::Arc;

use carta_dr_backends::LocalStore;
use carta_dr_core::envelope::{put_sealed, EnvelopeOptions};
use carta_dr_core::traits::{Location, Severity, Verdict};
use carta_dr_core::{PutOptions, Store, StorePath, Verifier};
use carta_dr_examples::{ensure, print_report, StoreVerifier};

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A day of export rows: realistic, compressible, different per day.
fn export_rows(day: u32) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..6_000u32 {
        let amount = (i * 7919 + day * 104_729) % 100_000;
        out.push_str(&format!(
            "2026-11-{:02},order-{day:02}-{i:06},customer-{:05},{}.{:02},EUR\n",
            day % 28 + 1,
            (i * 31) % 20_000,
            amount / 100,
            amount % 100
        ));
    }
    out.into_bytes()
}

#[tokio::main]
async fn main() -> Res<()> {
    let dir = tempfile::tempdir()?;
    let local = LocalStore::open(dir.path())?;
    let store: Arc<dyn Store> = Arc::new(local.clone());
    // 64 KiB chunks so every export spans several chunks and damage is located precisely.
    let opts = EnvelopeOptions::zstd(3).with_chunk_size(64 * 1024);

    println!("1. the service writes 10 daily exports as sealed objects to {store}");
    let mut raw = 0usize;
    for day in 1..=10 {
        let rows = export_rows(day);
        raw += rows.len();
        let path = StorePath::new(format!("exports/day-{day:02}.csv"))?;
        put_sealed(&*store, &path, &rows, &opts, PutOptions::create()).await?;
    }
    println!("   {raw} bytes of rows written");

    println!("2. verification of the fresh store");
    let verifier = StoreVerifier::new(store.clone(), None);
    let report = verifier.verify().await?;
    print_report(&report);
    ensure(
        report.verdict() == Verdict::Clean,
        "fresh store must verify clean",
    )?;

    println!("3. the disk rots: a bit flips in day-03, day-07 is cut short");
    let flipped = StorePath::new("exports/day-03.csv")?;
    let cut = StorePath::new("exports/day-07.csv")?;
    let flipped_file = local.file_path(&flipped)?;
    let mut bytes = std::fs::read(&flipped_file)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&flipped_file, &bytes)?;
    let cut_file = local.file_path(&cut)?;
    let len = std::fs::metadata(&cut_file)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut_file)?
        .set_len(len * 2 / 3)?;
    println!("   flipped bit 4 of byte {at} of {}", flipped.as_str());
    println!(
        "   truncated {} from {len} to {} bytes",
        cut.as_str(),
        len * 2 / 3
    );

    println!("4. verification finds both");
    let report = verifier.verify().await?;
    print_report(&report);
    ensure(
        report.verdict() == Verdict::Corrupt,
        "damaged store must verify corrupt",
    )?;
    let errors: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    ensure(
        errors.len() == 2,
        format!("expected 2 errors, got {}", errors.len()),
    )?;
    let found = |path: &StorePath, need_chunk: bool| {
        errors.iter().any(|f| {
            matches!(&f.location, Location::Object { path: p, chunk }
                if p == path.as_str() && (!need_chunk || chunk.is_some()))
        })
    };
    ensure(
        found(&flipped, true),
        "the flipped bit must be located to its chunk",
    )?;
    ensure(found(&cut, false), "the truncated object must be reported")?;
    println!("ok: both damaged objects found, the flip located to its chunk; 8 others verified");
    Ok(())
}
