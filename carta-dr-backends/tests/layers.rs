//! The store layers do what they claim: retry, circuit breaker, fault injection and the
//! concurrency limit. Time-dependent tests run on tokio's paused clock, so backoffs and
//! cool-downs take no wall time and elapsed times are exact.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use carta_dr_backends::layers::{
    BitFlip, CircuitBreakerConfig, CircuitBreakerStore, CircuitState, ConcurrencyLimitStore,
    FaultCounts, FaultOp, FaultStore, RetryPolicy, RetryStore,
};
use carta_dr_backends::MemoryStore;
use carta_dr_core::envelope::{get_opened, put_sealed, EnvelopeOptions};
use carta_dr_core::{
    Capabilities, Error, GetResult, ObjectMeta, ObjectWriter, PutOptions, Result, Store, StoreExt,
    StorePath,
};
use futures::stream::{BoxStream, Stream, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::Instant;

fn path(s: &str) -> StorePath {
    StorePath::new(s).unwrap()
}

fn policy(max_attempts: u32, base_ms: u64, cap_ms: u64, max_elapsed_ms: u64) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(base_ms),
        max_delay: Duration::from_millis(cap_ms),
        max_elapsed: Duration::from_millis(max_elapsed_ms),
    }
}

fn faulty() -> FaultStore<MemoryStore> {
    FaultStore::with_seed(MemoryStore::new(), 42)
}

// ---------------------------------------------------------------------------------------
// Retry
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_succeeds_after_injected_failures() {
    let faults = faulty();
    let h = faults.handle();
    let store = RetryStore::with_seed(faults, policy(5, 100, 1_000, 60_000), 1);
    let p = path("a/b");
    h.fail_next(FaultOp::Put, 3);
    h.fail_next(FaultOp::Get, 2);
    h.fail_next(FaultOp::Head, 4);

    let start = Instant::now();
    store
        .put(&p, Bytes::from_static(b"hello"), PutOptions::default())
        .await
        .unwrap();
    // Three retries: the jittered delays are at most 100 + 200 + 400 ms.
    assert!(
        start.elapsed() <= Duration::from_millis(700),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(h.calls(FaultOp::Put), 4);
    assert_eq!(store.get_bytes(&p).await.unwrap(), &b"hello"[..]);
    assert_eq!(h.calls(FaultOp::Get), 3);
    assert_eq!(store.head(&p).await.unwrap().size, 5);
    assert_eq!(h.calls(FaultOp::Head), 5);
    assert_eq!(h.counts().failed, 3 + 2 + 4);
    assert_eq!(store.to_string(), "Retry(Faults(Memory))");
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_after_max_attempts() {
    let faults = faulty();
    let h = faults.handle();
    let store = RetryStore::with_seed(faults, policy(4, 10, 100, 3_600_000), 1);
    h.fail_next(FaultOp::Head, 1_000);
    let err = store.head(&path("x")).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert_eq!(
        h.calls(FaultOp::Head),
        4,
        "max_attempts counts the first attempt"
    );

    h.fail_next(FaultOp::List, 1_000);
    store.list(None).await.unwrap_err();
    assert_eq!(h.calls(FaultOp::List), 4);
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_after_max_elapsed() {
    let faults = faulty();
    let h = faults.handle();
    // Unlimited attempts, 1 s backoff cap, a 10 s budget.
    let store = RetryStore::with_seed(faults, policy(u32::MAX, 500, 1_000, 10_000), 7);
    h.fail_next(FaultOp::Delete, u32::MAX);
    let start = Instant::now();
    let err = store.delete(&path("x")).await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        elapsed <= Duration::from_secs(10),
        "ran past the budget: {elapsed:?}"
    );
    // The delays average 0.5 s once capped, so well over 5 attempts fit in 10 s; and the
    // budget, not the attempt count, ended it.
    let calls = h.calls(FaultOp::Delete);
    assert!(calls > 5, "only {calls} attempts within the budget");
    assert!(
        elapsed >= Duration::from_secs(9),
        "gave up early: {elapsed:?} after {calls} attempts"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_never_retries_non_retryable_errors() {
    let faults = faulty();
    let h = faults.handle();
    let store = RetryStore::new(faults, policy(10, 10, 100, 60_000));
    // NotFound from the backend itself.
    let err = store.get(&path("missing"), None).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(h.calls(FaultOp::Get), 1);
    // An injected non-retryable error.
    h.fail_next_with(FaultOp::Head, 5, |op, p| Error::Backend {
        backend: "test",
        context: format!("{op} {p}"),
        message: "access denied".into(),
        retryable: false,
    });
    let err = store.head(&path("x")).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Backend {
                retryable: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(h.calls(FaultOp::Head), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_delays_are_jittered_within_the_cap_and_seeded() {
    async fn elapsed_for(seed: u64) -> Duration {
        let faults = faulty();
        let h = faults.handle();
        let store = RetryStore::with_seed(faults, policy(6, 100, 400, 60_000), seed);
        h.fail_next(FaultOp::Head, 5);
        let start = Instant::now();
        store.head(&path("x")).await.unwrap_err(); // NotFound after 5 retries
        start.elapsed()
    }
    let a = elapsed_for(1).await;
    // Caps: 100, 200, 400, 400, 400 ms.
    assert!(a <= Duration::from_millis(1_500), "{a:?}");
    assert_eq!(a, elapsed_for(1).await, "same seed, same delays");
    let mut distinct = std::collections::BTreeSet::new();
    for seed in 2..12 {
        distinct.insert(elapsed_for(seed).await);
    }
    assert!(distinct.len() > 5, "delays are not jittered: {distinct:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_of_create_resolves_a_lost_ack_by_content() {
    let faults = faulty();
    let h = faults.handle();
    let store = RetryStore::with_seed(faults, policy(5, 10, 100, 60_000), 1);
    let p = path("wal/000000010000000000000001");

    // The first attempt stores the object but its answer is lost; the retry gets
    // AlreadyExists, reads back identical content, and reports success.
    h.lose_next_acks(1);
    store
        .put(&p, Bytes::from_static(b"segment"), PutOptions::create())
        .await
        .unwrap();
    assert_eq!(h.counts().acks_lost, 1);
    assert_eq!(h.calls(FaultOp::Put), 2);
    assert_eq!(store.get_bytes(&p).await.unwrap(), &b"segment"[..]);

    // Without an earlier ambiguous failure, AlreadyExists stands even for identical bytes:
    // a create-only race keeps exactly one winner.
    let err = store
        .put(&p, Bytes::from_static(b"segment"), PutOptions::create())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");

    // After an ambiguous failure, different content is AlreadyExists.
    h.fail_next(FaultOp::Put, 1);
    let err = store
        .put(&p, Bytes::from_static(b"other bytes"), PutOptions::create())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    assert_eq!(store.get_bytes(&p).await.unwrap(), &b"segment"[..]);

    // Same size, different bytes: compared byte for byte, not by length.
    h.fail_next(FaultOp::Put, 1);
    let err = store
        .put(&p, Bytes::from_static(b"SEGMENT"), PutOptions::create())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_of_put_writer_retries_only_the_open() {
    let faults = faulty();
    let h = faults.handle();
    let store = RetryStore::with_seed(faults, policy(5, 10, 100, 60_000), 1);
    let p = path("big");
    h.fail_next(FaultOp::PutWriter, 2);
    let mut w = store.put_writer(&p, PutOptions::default()).await.unwrap();
    assert_eq!(h.calls(FaultOp::PutWriter), 3);
    w.write(Bytes::from_static(b"ab")).await.unwrap();
    w.write(Bytes::from_static(b"cd")).await.unwrap();
    w.complete().await.unwrap();
    assert_eq!(store.get_bytes(&p).await.unwrap(), &b"abcd"[..]);

    // A failed completion is not replayed: the writer's lost answer surfaces.
    h.lose_next_acks(1);
    let mut w = store.put_writer(&p, PutOptions::default()).await.unwrap();
    w.write(Bytes::from_static(b"efgh")).await.unwrap();
    let err = w.complete().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(h.calls(FaultOp::PutWriter), 4);
}

// ---------------------------------------------------------------------------------------
// Circuit breaker
// ---------------------------------------------------------------------------------------

fn breaker(
    threshold: u32,
    cool_down_s: u64,
) -> (
    Arc<CircuitBreakerStore<FaultStore<MemoryStore>>>,
    carta_dr_backends::layers::FaultHandle,
) {
    let faults = faulty();
    let h = faults.handle();
    let b = CircuitBreakerStore::new(
        faults,
        CircuitBreakerConfig {
            failure_threshold: threshold,
            cool_down: Duration::from_secs(cool_down_s),
        },
    );
    (Arc::new(b), h)
}

async fn wait_for_state<S: Store>(b: &CircuitBreakerStore<S>, want: CircuitState) {
    for _ in 0..10_000 {
        if b.state() == want {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("breaker never reached {want:?}, is {:?}", b.state());
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_fails_fast_half_opens_and_closes() {
    let (b, h) = breaker(3, 10);
    let p = path("x");
    assert_eq!(b.to_string(), "CircuitBreaker(Faults(Memory))");
    assert_eq!(b.state(), CircuitState::Closed);

    // Three consecutive retryable failures open it.
    h.fail_next(FaultOp::Head, 3);
    for i in 1..=3 {
        let err = b.head(&p).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
        assert_eq!(b.consecutive_failures(), i);
    }
    assert_eq!(b.state(), CircuitState::Open);

    // While open, calls fail fast without reaching the backend.
    for _ in 0..5 {
        let err = b.head(&p).await.unwrap_err();
        assert!(
            matches!(&err, Error::Unavailable { what } if what.contains("circuit breaker")),
            "{err:?}"
        );
        b.put(&p, Bytes::from_static(b"v"), PutOptions::default())
            .await
            .unwrap_err();
    }
    assert_eq!(h.calls(FaultOp::Head), 3);
    assert_eq!(h.calls(FaultOp::Put), 0);

    // Just before the cool-down ends, still open.
    tokio::time::advance(Duration::from_millis(9_990)).await;
    b.head(&p).await.unwrap_err();
    assert_eq!(h.calls(FaultOp::Head), 3);

    // After it, one probe goes through; the others fail fast while it is in flight.
    tokio::time::advance(Duration::from_millis(20)).await;
    h.set_latency(FaultOp::Head, Duration::from_secs(1));
    let probe = tokio::spawn({
        let b = Arc::clone(&b);
        let p = p.clone();
        async move { b.head(&p).await }
    });
    wait_for_state(&b, CircuitState::HalfOpen).await;
    let err = b.get(&p, None).await.unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable { what } if what.contains("half-open")),
        "{err:?}"
    );
    assert_eq!(h.calls(FaultOp::Get), 0);

    // The probe's answer (NotFound: the backend is answering) closes the circuit.
    let probed = probe.await.unwrap();
    assert!(probed.unwrap_err().is_not_found());
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(b.consecutive_failures(), 0);
    h.set_latency(FaultOp::Head, Duration::ZERO);
    b.put(&p, Bytes::from_static(b"v"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(b.head(&p).await.unwrap().size, 1);
}

#[tokio::test(start_paused = true)]
async fn breaker_failed_probe_reopens_for_another_cool_down() {
    let (b, h) = breaker(2, 5);
    let p = path("x");
    h.fail_next(FaultOp::List, 3);
    b.list(None).await.unwrap_err();
    b.list(None).await.unwrap_err();
    assert_eq!(b.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(5)).await;
    // The probe fails (third injected failure): open again, for a full cool-down.
    b.list(None).await.unwrap_err();
    assert_eq!(h.calls(FaultOp::List), 3);
    assert_eq!(b.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(4)).await;
    b.head(&p).await.unwrap_err();
    assert_eq!(
        h.calls(FaultOp::Head),
        0,
        "called the backend during the second cool-down"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(b.list(None).await.unwrap().is_empty());
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn breaker_ignores_answers_about_the_data() {
    let (b, h) = breaker(2, 5);
    let p = path("x");
    b.put(&p, Bytes::from_static(b"v"), PutOptions::default())
        .await
        .unwrap();
    for _ in 0..10 {
        assert!(b.head(&path("missing")).await.unwrap_err().is_not_found());
        let err = b
            .put(&p, Bytes::from_static(b"w"), PutOptions::create())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }));
        let err = b.get(&p, Some(10..20)).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }));
    }
    assert_eq!(b.state(), CircuitState::Closed);
    // And a healthy answer resets a run of failures.
    h.fail_next(FaultOp::Head, 1);
    b.head(&p).await.unwrap_err();
    assert_eq!(b.consecutive_failures(), 1);
    b.head(&p).await.unwrap();
    assert_eq!(b.consecutive_failures(), 0);
    h.fail_next(FaultOp::Head, 1);
    b.head(&p).await.unwrap_err();
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn breaker_abandoned_probe_reopens() {
    let (b, h) = breaker(1, 5);
    h.fail_next(FaultOp::Head, 1);
    b.head(&path("x")).await.unwrap_err();
    assert_eq!(b.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(5)).await;
    h.set_latency(FaultOp::Head, Duration::from_secs(60));
    let probe = tokio::spawn({
        let b = Arc::clone(&b);
        async move { b.head(&path("x")).await }
    });
    wait_for_state(&b, CircuitState::HalfOpen).await;
    probe.abort();
    assert!(probe.await.unwrap_err().is_cancelled());
    assert_eq!(
        b.state(),
        CircuitState::Open,
        "a dropped probe must not leave it half-open"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_outside_breaker_rides_out_an_outage() {
    let faults = faulty();
    let h = faults.handle();
    let store = RetryStore::with_seed(
        CircuitBreakerStore::new(
            faults,
            CircuitBreakerConfig {
                failure_threshold: 3,
                cool_down: Duration::from_secs(2),
            },
        ),
        policy(30, 200, 2_000, 120_000),
        3,
    );
    let p = path("x");
    // An outage of 5 failed calls: the breaker opens after 3, the retry layer keeps backing
    // off through fail-fast answers until a probe succeeds.
    h.fail_next(FaultOp::Put, 5);
    store
        .put(&p, Bytes::from_static(b"v"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        h.calls(FaultOp::Put),
        6,
        "the backend saw the 5 failures and one success"
    );
    assert_eq!(store.inner().state(), CircuitState::Closed);
    assert_eq!(store.to_string(), "Retry(CircuitBreaker(Faults(Memory)))");
}

// ---------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn fault_flip_at_offset_is_caught_by_the_envelope() {
    let store = faulty();
    let h = store.handle();
    let p = path("base/file");
    let content: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let opts = EnvelopeOptions::default().with_chunk_size(64 * 1024);
    put_sealed(&store, &p, &content, &opts, PutOptions::default())
        .await
        .unwrap();
    let sealed_len = store.head(&p).await.unwrap().size;

    // Intact, it opens.
    assert_eq!(get_opened(&store, &p, None).await.unwrap(), content);
    // One bit flipped in the middle of the object: Corrupt.
    h.flip_next_reads(1, BitFlip::At(sealed_len / 2));
    let err = get_opened(&store, &p, None).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert_eq!(h.counts().flipped, 1);
    // Exactly that bit differs in the raw read.
    let clean = store.get_bytes(&p).await.unwrap();
    h.flip_next_reads(1, BitFlip::At(sealed_len / 2));
    let dirty = store.get_bytes(&p).await.unwrap();
    let diffs: Vec<usize> = (0..clean.len()).filter(|&i| clean[i] != dirty[i]).collect();
    assert_eq!(diffs, vec![(sealed_len / 2) as usize]);
    assert_eq!((clean[diffs[0]] ^ dirty[diffs[0]]).count_ones(), 1);
    // The fault is spent: the next read is clean.
    assert_eq!(get_opened(&store, &p, None).await.unwrap(), content);
}

#[tokio::test]
async fn fault_random_flips_are_seeded_and_always_caught() {
    async fn flipped_offsets(seed: u64) -> Vec<usize> {
        let store = FaultStore::with_seed(MemoryStore::new(), seed);
        let h = store.handle();
        let p = path("obj");
        let content = vec![7u8; 200_000];
        put_sealed(
            &store,
            &p,
            &content,
            &EnvelopeOptions::uncompressed(),
            PutOptions::default(),
        )
        .await
        .unwrap();
        let clean = store.get_bytes(&p).await.unwrap();
        let mut offsets = Vec::new();
        for _ in 0..20 {
            h.flip_next_reads(1, BitFlip::Random);
            let dirty = store.get_bytes(&p).await.unwrap();
            let d: Vec<usize> = (0..clean.len()).filter(|&i| clean[i] != dirty[i]).collect();
            assert_eq!(d.len(), 1);
            offsets.push(d[0]);
            h.flip_next_reads(1, BitFlip::Random);
            let err = get_opened(&store, &p, None).await.unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
        }
        offsets
    }
    let a = flipped_offsets(9).await;
    assert_eq!(a, flipped_offsets(9).await, "same seed, same flips");
    assert_ne!(a, flipped_offsets(10).await);
}

#[tokio::test]
async fn fault_flip_in_a_ranged_read_uses_object_offsets() {
    let store = faulty();
    let h = store.handle();
    let p = path("obj");
    store
        .put(&p, Bytes::from(vec![0u8; 1000]), PutOptions::default())
        .await
        .unwrap();
    // Outside the range: untouched, and the flip stays armed.
    h.flip_next_reads(1, BitFlip::At(900));
    assert!(store
        .get_range(&p, 0..100)
        .await
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    assert_eq!(h.counts().flipped, 0);
    let got = store.get_range(&p, 850..950).await.unwrap();
    assert_eq!(got[50], 1);
    assert_eq!(got.iter().filter(|&&b| b != 0).count(), 1);
    assert_eq!(h.counts().flipped, 1);
}

#[tokio::test]
async fn fault_torn_write_is_detected_by_the_envelope() {
    let store = faulty();
    let h = store.handle();
    let p = path("wal/000000010000000000000002");
    let content: Vec<u8> = (0..100_000u32)
        .flat_map(|i| (i * 7).to_le_bytes())
        .collect();
    let opts = EnvelopeOptions::default().with_chunk_size(32 * 1024);
    let whole = carta_dr_core::envelope::seal(&opts, &content).unwrap();

    h.tear_next_writes(1);
    let err = put_sealed(&store, &p, &content, &opts, PutOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(h.counts().torn, 1);
    // Half the object stands under the final name, as on a non-atomic backend...
    assert_eq!(store.head(&p).await.unwrap().size, (whole.len() / 2) as u64);
    // ...and the envelope refuses it.
    let err = get_opened(&store, &p, None).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");

    // The same through a streaming writer.
    let q = path("streamed");
    h.tear_next_writes(1);
    let mut w = store.put_writer(&q, PutOptions::default()).await.unwrap();
    w.write(Bytes::from(whole.clone())).await.unwrap();
    w.complete().await.unwrap_err();
    assert_eq!(store.head(&q).await.unwrap().size, (whole.len() / 2) as u64);
    let err = get_opened(&store, &q, None).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert_eq!(h.counts().torn, 2);
}

#[tokio::test]
async fn fault_dropped_write_reports_ok_and_stores_nothing() {
    let store = faulty();
    let h = store.handle();
    let p = path("a");
    h.drop_next_writes(2);
    store
        .put(&p, Bytes::from_static(b"lost"), PutOptions::create())
        .await
        .unwrap();
    assert!(store.head(&p).await.unwrap_err().is_not_found());
    let mut w = store.put_writer(&p, PutOptions::default()).await.unwrap();
    w.write(Bytes::from_static(b"lost too")).await.unwrap();
    w.complete().await.unwrap();
    assert!(store.get(&p, None).await.unwrap_err().is_not_found());
    assert!(store.list(None).await.unwrap().is_empty());
    assert_eq!(h.counts().dropped, 2);
    // Spent: the next write lands.
    store
        .put(&p, Bytes::from_static(b"kept"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(store.get_bytes(&p).await.unwrap(), &b"kept"[..]);
}

#[tokio::test(start_paused = true)]
async fn fault_latency_delays_only_its_operation() {
    let store = faulty();
    let h = store.handle();
    let p = path("a");
    store
        .put(&p, Bytes::from_static(b"v"), PutOptions::default())
        .await
        .unwrap();
    h.set_latency(FaultOp::Get, Duration::from_millis(750));
    let start = Instant::now();
    store.head(&p).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    store.get_bytes(&p).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(750));
    assert_eq!(h.counts().delayed, 1);
}

#[tokio::test]
async fn fault_failures_hit_the_chosen_operation_with_the_chosen_error() {
    let store = faulty();
    let h = store.handle();
    let p = path("a");
    h.fail_next_with(FaultOp::Delete, 2, |_, p| Error::Timeout {
        what: format!("delete {p}"),
    });
    for _ in 0..2 {
        let err = store.delete(&p).await.unwrap_err();
        assert!(
            matches!(&err, Error::Timeout { what } if what == "delete a"),
            "{err:?}"
        );
    }
    store.delete(&p).await.unwrap();
    assert!(store.head(&p).await.unwrap_err().is_not_found());
    assert_eq!(
        h.counts(),
        FaultCounts {
            failed: 2,
            ..FaultCounts::default()
        }
    );
    // A seeded failure rate fails the same calls every time.
    async fn pattern(seed: u64) -> Vec<bool> {
        let s = FaultStore::with_seed(MemoryStore::new(), seed);
        s.handle().set_failure_rate(FaultOp::List, 0.5);
        let mut v = Vec::new();
        for _ in 0..64 {
            v.push(s.list(None).await.is_err());
        }
        v
    }
    let a = pattern(5).await;
    assert_eq!(a, pattern(5).await);
    let failed = a.iter().filter(|&&f| f).count();
    assert!(
        (10..=54).contains(&failed),
        "{failed} of 64 failed at rate 0.5"
    );
    // Cleared, nothing fails.
    h.fail_next(FaultOp::Head, 10);
    h.clear();
    assert!(store.head(&p).await.unwrap_err().is_not_found());
    assert_eq!(h.counts().failed, 2, "a cleared fault fired");
}

// ---------------------------------------------------------------------------------------
// Concurrency limit
// ---------------------------------------------------------------------------------------

/// Counts calls in flight (a get until its stream ends, a writer until it completes) and
/// records the most seen at once; each call takes 10 ms of (paused) time.
#[derive(Debug, Default)]
struct Gauge {
    inner: MemoryStore,
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl fmt::Display for Gauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gauge({})", self.inner)
    }
}

struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(g: &Gauge) -> InFlight {
        let n = g.now.fetch_add(1, Ordering::SeqCst) + 1;
        g.max.fetch_max(n, Ordering::SeqCst);
        InFlight(Arc::clone(&g.now))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct GaugeStream {
    inner: BoxStream<'static, Result<Bytes>>,
    in_flight: Option<InFlight>,
}

impl Stream for GaugeStream {
    type Item = Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(None) = polled {
            self.in_flight = None;
        }
        polled
    }
}

struct GaugeWriter {
    inner: Box<dyn ObjectWriter>,
    _in_flight: InFlight,
}

#[async_trait]
impl ObjectWriter for GaugeWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.inner.write(data).await
    }
    async fn complete(self: Box<Self>) -> Result<()> {
        self.inner.complete().await
    }
    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl Store for Gauge {
    async fn put(&self, path: &StorePath, data: Bytes, opts: PutOptions) -> Result<()> {
        let _g = InFlight::enter(self);
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.inner.put(path, data, opts).await
    }
    async fn put_writer(
        &self,
        path: &StorePath,
        opts: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>> {
        let g = InFlight::enter(self);
        let inner = self.inner.put_writer(path, opts).await?;
        Ok(Box::new(GaugeWriter {
            inner,
            _in_flight: g,
        }))
    }
    async fn get(&self, path: &StorePath, range: Option<Range<u64>>) -> Result<GetResult> {
        let g = InFlight::enter(self);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut got = self.inner.get(path, range).await?;
        got.stream = GaugeStream {
            inner: got.stream,
            in_flight: Some(g),
        }
        .boxed();
        Ok(got)
    }
    async fn head(&self, path: &StorePath) -> Result<ObjectMeta> {
        let _g = InFlight::enter(self);
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.inner.head(path).await
    }
    async fn list(&self, prefix: Option<&StorePath>) -> Result<Vec<ObjectMeta>> {
        let _g = InFlight::enter(self);
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.inner.list(prefix).await
    }
    async fn delete(&self, path: &StorePath) -> Result<()> {
        let _g = InFlight::enter(self);
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.inner.delete(path).await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

#[tokio::test(start_paused = true)]
async fn limit_never_exceeds_its_bound() {
    let gauge = Gauge::default();
    let (now, max) = (Arc::clone(&gauge.now), Arc::clone(&gauge.max));
    let store = Arc::new(ConcurrencyLimitStore::new(gauge, 4));
    assert_eq!(store.to_string(), "Limit(Gauge(Memory))");
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let p = path(&format!("k/{}", i % 8));
            let data = Bytes::from(vec![i as u8; 100]);
            match i % 4 {
                0 => store.put(&p, data, PutOptions::default()).await,
                1 => {
                    let mut w = store.put_writer(&p, PutOptions::default()).await?;
                    w.write(data.slice(..50)).await?;
                    w.write(data.slice(50..)).await?;
                    w.complete().await
                }
                2 => match store.get(&p, None).await {
                    Ok(got) => got.bytes().await.map(|_| ()),
                    Err(e) if e.is_not_found() => Ok(()),
                    Err(e) => Err(e),
                },
                _ => store.list(Some(&path("k"))).await.map(|_| ()),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        max.load(Ordering::SeqCst),
        4,
        "the bound was exceeded or never reached"
    );
    assert_eq!(now.load(Ordering::SeqCst), 0);
    assert_eq!(store.available_permits(), 4);
}

#[tokio::test(start_paused = true)]
async fn limit_holds_permits_for_open_streams_and_writers() {
    let store = ConcurrencyLimitStore::new(MemoryStore::new(), 2);
    let p = path("a");
    store
        .put(&p, Bytes::from(vec![1u8; 10]), PutOptions::default())
        .await
        .unwrap();

    let read = store.get(&p, None).await.unwrap();
    let writer = store
        .put_writer(&path("b"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(store.available_permits(), 0);
    // A third call waits.
    let blocked = tokio::time::timeout(Duration::from_secs(60), store.head(&p)).await;
    assert!(blocked.is_err(), "a call ran past the limit");

    // Finishing the stream frees its permit.
    let bytes = read.bytes().await.unwrap();
    assert_eq!(bytes.len(), 10);
    assert_eq!(store.available_permits(), 1);
    store.head(&p).await.unwrap();
    // So does completing (or dropping) the writer.
    writer.complete().await.unwrap();
    assert_eq!(store.available_permits(), 2);
    let w = store
        .put_writer(&path("c"), PutOptions::default())
        .await
        .unwrap();
    let got = store.get(&p, None).await.unwrap();
    assert_eq!(store.available_permits(), 0);
    drop(w);
    drop(got);
    assert_eq!(store.available_permits(), 2);
}
