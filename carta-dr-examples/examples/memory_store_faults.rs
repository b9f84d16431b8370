//! A test suite on `MemoryStore` with fault injection.
//!
//! How a test suite uses carta-dr without any server: wrap a `MemoryStore` in a `FaultStore`,
//! arm a fault (bit flip on read, dropped write, torn write, rot at rest), and prove that the
//! sealed-object envelope detects it. Each scenario is a `#[tokio::test]`
//! (`cargo test -p carta-dr-examples --example memory_store_faults`) and `main` runs them all
//! as a program, exiting non-zero if any damage goes undetected.
//!
//! Run: `cargo run -p carta-dr-examples --example memory_store_faults`

use std::sync::Arc;

use bytes::Bytes;
use carta_dr_backends::layers::{BitFlip, FaultHandle, FaultStore};
use carta_dr_backends::MemoryStore;
use carta_dr_core::envelope::{get_opened, put_sealed, EnvelopeOptions};
use carta_dr_core::traits::{Location, Severity, Verdict};
use carta_dr_core::{Error, PutOptions, Store, StoreExt, StorePath, Verifier};
use carta_dr_examples::{ensure, StoreVerifier};

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A fresh store, its fault handle, and options with small chunks (damage is located to one).
fn setup() -> (Arc<FaultStore<MemoryStore>>, FaultHandle, EnvelopeOptions) {
    let store = Arc::new(FaultStore::with_seed(MemoryStore::new(), 11));
    let handle = store.handle();
    (
        store,
        handle,
        EnvelopeOptions::zstd(1).with_chunk_size(16 * 1024),
    )
}

fn payload() -> Vec<u8> {
    (0..200_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect()
}

fn path(s: &str) -> StorePath {
    StorePath::new(s).expect("valid path")
}

/// A bit flipped in transit is caught on read; the stored object is intact.
async fn bit_flip_on_read_is_detected() -> Res<String> {
    let (store, faults, opts) = setup();
    let p = path("data/flip");
    put_sealed(&*store, &p, &payload(), &opts, PutOptions::create()).await?;
    faults.flip_next_reads(1, BitFlip::Random);
    let err = get_opened(&*store, &p, None).await;
    ensure(
        matches!(err, Err(Error::Corrupt { .. })),
        format!("flipped read must be Corrupt, got {err:?}"),
    )?;
    let again = get_opened(&*store, &p, None).await?;
    ensure(again == payload(), "the stored object is intact")?;
    Ok(format!(
        "flipped read rejected: {}",
        err.err().map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// A write the backend dropped (reported Ok, stored nothing) is caught by reading back.
async fn dropped_write_is_detected() -> Res<String> {
    let (store, faults, opts) = setup();
    let p = path("data/dropped");
    faults.drop_next_writes(1);
    put_sealed(&*store, &p, &payload(), &opts, PutOptions::create()).await?;
    ensure(faults.counts().dropped == 1, "the write was dropped")?;
    let read = get_opened(&*store, &p, None).await;
    ensure(
        matches!(read, Err(Error::NotFound { .. })),
        format!("read-after-write must miss the object, got {read:?}"),
    )?;
    Ok("put said Ok but read-after-write found nothing: not found".into())
}

/// A torn write (half the bytes visible under the final name) is caught by the verifier and
/// located to the object.
async fn torn_write_is_detected() -> Res<String> {
    let (store, faults, opts) = setup();
    let p = path("data/torn");
    faults.tear_next_writes(1);
    let put = put_sealed(&*store, &p, &payload(), &opts, PutOptions::overwrite()).await;
    ensure(put.is_err(), "a torn write reports an error")?;
    ensure(store.exists(&p).await?, "half the object is visible")?;
    let report = StoreVerifier::new(store.clone(), None).verify().await?;
    ensure(
        report.verdict() == Verdict::Corrupt,
        "the torn object is corrupt",
    )?;
    let finding = report
        .findings
        .iter()
        .find(|f| f.severity == Severity::Error)
        .ok_or("no error finding")?;
    ensure(
        matches!(&finding.location, Location::Object { path, .. } if path == p.as_str()),
        "the finding names the torn object",
    )?;
    // Retrying the write repairs it.
    put_sealed(&*store, &p, &payload(), &opts, PutOptions::overwrite()).await?;
    let report = StoreVerifier::new(store.clone(), None).verify().await?;
    ensure(
        report.verdict() == Verdict::Clean,
        "rewritten object verifies clean",
    )?;
    Ok(format!(
        "torn object reported at {}: {}",
        finding.location, finding.what
    ))
}

/// A bit that rots at rest is located to its chunk.
async fn rot_at_rest_is_located_to_its_chunk() -> Res<String> {
    let (store, _faults, opts) = setup();
    for i in 0..5 {
        let p = path(&format!("data/obj-{i}"));
        put_sealed(&*store, &p, &payload(), &opts, PutOptions::create()).await?;
    }
    let victim = path("data/obj-2");
    let mut raw = store.inner().get_bytes(&victim).await?.to_vec();
    let at = raw.len() * 3 / 4;
    raw[at] ^= 0x01;
    store
        .inner()
        .put(&victim, Bytes::from(raw), PutOptions::overwrite())
        .await?;
    let report = StoreVerifier::new(store.clone(), None).verify().await?;
    let errors: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    ensure(
        errors.len() == 1,
        format!("one damaged object, got {errors:?}"),
    )?;
    ensure(
        matches!(&errors[0].location, Location::Object { path, chunk: Some(_) } if path == victim.as_str()),
        format!(
            "located to a chunk of {}: {}",
            victim.as_str(),
            errors[0].location
        ),
    )?;
    Ok(format!(
        "rot found at {}: {}",
        errors[0].location, errors[0].what
    ))
}

#[tokio::main]
async fn main() -> Res<()> {
    println!("MemoryStore + FaultStore: every injected fault must be detected");
    let mut failed = 0;
    macro_rules! run {
        ($name:ident) => {
            match $name().await {
                Ok(how) => println!("  ok    {}: {how}", stringify!($name)),
                Err(e) => {
                    failed += 1;
                    println!("  FAIL  {}: {e}", stringify!($name));
                }
            }
        };
    }
    run!(bit_flip_on_read_is_detected);
    run!(dropped_write_is_detected);
    run!(torn_write_is_detected);
    run!(rot_at_rest_is_located_to_its_chunk);
    ensure(failed == 0, format!("{failed} scenario(s) failed"))?;
    println!("ok: 4 of 4 faults detected");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn bit_flip_on_read_is_detected() {
        super::bit_flip_on_read_is_detected().await.unwrap();
    }

    #[tokio::test]
    async fn dropped_write_is_detected() {
        super::dropped_write_is_detected().await.unwrap();
    }

    #[tokio::test]
    async fn torn_write_is_detected() {
        super::torn_write_is_detected().await.unwrap();
    }

    #[tokio::test]
    async fn rot_at_rest_is_located_to_its_chunk() {
        super::rot_at_rest_is_located_to_its_chunk().await.unwrap();
    }
}
