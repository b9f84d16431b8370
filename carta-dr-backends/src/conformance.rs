//! The one conformance suite every [`Store`] passes.
//!
//! Each check is an async function that exercises one part of the [`Store`] contract and
//! panics with a message naming the store, the path and what went wrong: this module is
//! test support, and a panic is how a test fails. Checks are gated by the store's
//! [`Capabilities`](carta_dr_core::Capabilities): where a capability is missing the check asserts that the store says
//! [`Error::NotSupported`] instead of quietly degrading, so no check is skipped silently.
//!
//! Every check works under its own sub-prefix of [`SuiteOptions::base`], requires that
//! sub-prefix to be empty when it starts, and deletes what it wrote when it passes. Point the
//! suite at a store (or a prefix of one) that holds nothing else of value.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use carta_dr_backends::MemoryStore;
//! use carta_dr_backends::conformance::{self, SuiteOptions};
//!
//! let store = MemoryStore::new();
//! let opts = SuiteOptions::default();
//! conformance::range_reads(&store, &opts).await;
//! conformance::delete_is_idempotent(&store, &opts).await;
//! // Or everything, including the 16 MiB and 200 MiB round trips:
//! // conformance::run_all(Arc::new(store), SuiteOptions::default()).await;
//! # });
//! ```

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use carta_dr_core::store::clamp_range;
use carta_dr_core::{Error, ObjectMeta, PutOptions, Result, Store, StoreExt, StorePath};
use futures::stream::{self, StreamExt, TryStreamExt};

/// One mebibyte.
const MIB: u64 = 1024 * 1024;
/// The longest path [`StorePath`] accepts, in bytes (S3's key limit); the path check
/// asserts this is still [`StorePath`]'s limit.
const MAX_STORE_PATH_LEN: usize = 1024;

/// Sizes and names the suite uses.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// Every check works under a sub-prefix of this (default `conformance`).
    pub base: StorePath,
    /// The object written with one `put` and read back (default 16 MiB).
    pub medium_object_size: u64,
    /// The object streamed through `put_writer` in parts (default 200 MiB).
    pub big_object_size: u64,
    /// The size of each part written to the streamed object (default 8 MiB).
    pub part_size: usize,
    /// How many keys the listing check writes and lists (default 10,000).
    pub list_keys: usize,
    /// How many calls the suite keeps in flight when it writes or deletes many objects
    /// (default 32).
    pub concurrency: usize,
    /// How many tasks race to create one object (default 16).
    pub race_tasks: usize,
    /// How many races are run, each on a fresh path (default 4).
    pub race_rounds: usize,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        SuiteOptions {
            base: path("conformance"),
            medium_object_size: 16 * MIB,
            big_object_size: 200 * MIB,
            part_size: 8 * MIB as usize,
            list_keys: 10_000,
            concurrency: 32,
            race_tasks: 16,
            race_rounds: 4,
        }
    }
}

/// Runs every check in turn, logging each one's duration at `info` level. Panics at the
/// first failure.
pub async fn run_all(store: Arc<dyn Store>, opts: SuiteOptions) {
    let s: &dyn Store = &*store;
    let o = &opts;
    tracing::info!(store = %s, caps = ?s.capabilities(), "conformance suite starting");
    timed(s, "round_trip_small", round_trip_small(s, o)).await;
    timed(s, "round_trip_medium", round_trip_medium(s, o)).await;
    timed(s, "round_trip_big_streamed", round_trip_big_streamed(s, o)).await;
    timed(s, "put_overwrite_semantics", put_overwrite_semantics(s, o)).await;
    timed(s, "range_reads", range_reads(s, o)).await;
    timed(
        s,
        "list_is_complete_and_sorted",
        list_is_complete_and_sorted(s, o),
    )
    .await;
    timed(
        s,
        "list_prefix_is_segment_wise",
        list_prefix_is_segment_wise(s, o),
    )
    .await;
    timed(s, "create_only_is_atomic", create_only_is_atomic(&store, o)).await;
    timed(s, "delete_is_idempotent", delete_is_idempotent(s, o)).await;
    timed(s, "not_found_is_distinct", not_found_is_distinct(s, o)).await;
    timed(s, "paths_are_validated", paths_are_validated(s, o)).await;
    timed(
        s,
        "abandoned_writer_leaves_nothing",
        abandoned_writer_leaves_nothing(s, o),
    )
    .await;
    tracing::info!(store = %s, "conformance suite passed");
}

async fn timed(store: &dyn Store, name: &str, check: impl std::future::Future<Output = ()>) {
    let start = Instant::now();
    check.await;
    tracing::info!(store = %store, check = name, elapsed_ms = start.elapsed().as_millis() as u64, "passed");
}

// ---------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------

/// Objects of 0 and 1 bytes survive `put` and `get`, and `put_writer` with zero writes
/// stores an empty object; `head`, the `get` metadata and the listing agree on their sizes.
pub async fn round_trip_small(store: &dyn Store, opts: &SuiteOptions) {
    let dir = fresh(store, opts, "round-trip-small").await;
    let empty = join(&dir, "empty");
    let one = join(&dir, "one");
    let streamed_empty = join(&dir, "streamed-empty");
    let streamed_one = join(&dir, "streamed-one");

    must(
        store,
        "put 0 B",
        store.put(&empty, Bytes::new(), PutOptions::default()).await,
    );
    must(
        store,
        "put 1 B",
        store
            .put(&one, Bytes::from_static(b"x"), PutOptions::default())
            .await,
    );
    let w = must(
        store,
        "open writer",
        store
            .put_writer(&streamed_empty, PutOptions::default())
            .await,
    );
    must(
        store,
        "complete a writer with no writes",
        w.complete().await,
    );
    let mut w = must(
        store,
        "open writer",
        store.put_writer(&streamed_one, PutOptions::default()).await,
    );
    must(store, "write 1 B", w.write(Bytes::from_static(b"y")).await);
    must(store, "complete 1 B writer", w.complete().await);

    for (p, want) in [
        (&empty, &b""[..]),
        (&one, &b"x"[..]),
        (&streamed_empty, &b""[..]),
        (&streamed_one, &b"y"[..]),
    ] {
        let got = must(store, &format!("get {p}"), store.get(p, None).await);
        assert_eq!(
            got.meta.path, *p,
            "{store}: get {p} returned metadata of another path"
        );
        assert_eq!(
            got.meta.size,
            want.len() as u64,
            "{store}: get {p}: wrong size in metadata"
        );
        assert_eq!(
            got.range,
            0..want.len() as u64,
            "{store}: get {p}: wrong range"
        );
        let bytes = must(store, &format!("read {p}"), got.bytes().await);
        assert_eq!(&bytes[..], want, "{store}: {p} read back different bytes");
        let meta = must(store, &format!("head {p}"), store.head(p).await);
        assert_eq!(
            meta.size,
            want.len() as u64,
            "{store}: head {p}: wrong size"
        );
        assert_eq!(meta.path, *p, "{store}: head {p}: wrong path");
    }
    let listed = checked_list(store, Some(&dir)).await;
    let sizes: Vec<(String, u64)> = listed
        .iter()
        .map(|m| (m.path.to_string(), m.size))
        .collect();
    assert_eq!(
        sizes,
        vec![
            (empty.to_string(), 0),
            (one.to_string(), 1),
            (streamed_empty.to_string(), 0),
            (streamed_one.to_string(), 1),
        ],
        "{store}: listing of {dir} is wrong"
    );
    cleanup(store, opts, &dir).await;
}

/// An object of [`SuiteOptions::medium_object_size`] (16 MiB) survives one `put` and a
/// streamed `get`, checked by length and CRC-32C.
pub async fn round_trip_medium(store: &dyn Store, opts: &SuiteOptions) {
    let dir = fresh(store, opts, "round-trip-medium").await;
    let p = join(&dir, "medium");
    let size = opts.medium_object_size;
    let data = pattern(0x5eed_0001, 0, size);
    let crc = crc32c::crc32c(&data);
    must(
        store,
        &format!("put {size} B"),
        store.put(&p, data, PutOptions::default()).await,
    );
    let meta = must(store, "head", store.head(&p).await);
    assert_eq!(meta.size, size, "{store}: head {p}: wrong size");
    let (len, got_crc) = read_crc(store, &p, None).await;
    assert_eq!(
        len, size,
        "{store}: {p} read back {len} bytes, wrote {size}"
    );
    assert_eq!(
        got_crc, crc,
        "{store}: {p} read back different bytes (CRC-32C differs)"
    );
    cleanup(store, opts, &dir).await;
}

/// An object of [`SuiteOptions::big_object_size`] (200 MiB) streamed through `put_writer`
/// in parts of [`SuiteOptions::part_size`] reads back whole (length and CRC-32C, without
/// holding it in memory twice) and by a range that straddles a part boundary.
pub async fn round_trip_big_streamed(store: &dyn Store, opts: &SuiteOptions) {
    let dir = fresh(store, opts, "round-trip-big").await;
    let p = join(&dir, "big");
    let size = opts.big_object_size;
    let part = (opts.part_size.max(1)) as u64;
    const SEED: u64 = 0x5eed_0002;

    let mut w = must(
        store,
        "open writer",
        store.put_writer(&p, PutOptions::default()).await,
    );
    let mut crc = 0u32;
    let mut off = 0u64;
    while off < size {
        let n = part.min(size - off);
        let chunk = pattern(SEED, off, n);
        crc = crc32c::crc32c_append(crc, &chunk);
        must(store, &format!("write part at {off}"), w.write(chunk).await);
        // Not visible before completion.
        if off == 0 {
            assert_not_found(
                store,
                "head of an object being written",
                store.head(&p).await,
            );
        }
        off += n;
    }
    must(
        store,
        &format!("complete {size} B writer"),
        w.complete().await,
    );

    let meta = must(store, "head", store.head(&p).await);
    assert_eq!(meta.size, size, "{store}: head {p}: wrong size");
    let (len, got_crc) = read_crc(store, &p, None).await;
    assert_eq!(
        len, size,
        "{store}: {p} read back {len} bytes, wrote {size}"
    );
    assert_eq!(
        got_crc, crc,
        "{store}: {p} read back different bytes (CRC-32C differs)"
    );

    if size > part && part > 1000 && range_capable(store) {
        let r = (part - 1000)..(part + 1000).min(size);
        let got = must(store, "ranged get", store.get_range(&p, r.clone()).await);
        assert_eq!(
            got,
            pattern(SEED, r.start, r.end - r.start),
            "{store}: range {r:?} of {p}, across a part boundary, differs"
        );
    }
    cleanup(store, opts, &dir).await;
}

/// `put` overwrites by default, and create-only leaves an existing object untouched
/// (`AlreadyExists`); the same for `put_writer`. Where the store lacks create-only for
/// `put` or `put_writer`, asserts it answers `NotSupported`.
pub async fn put_overwrite_semantics(store: &dyn Store, opts: &SuiteOptions) {
    let dir = fresh(store, opts, "overwrite").await;
    let caps = store.capabilities();
    let p = join(&dir, "obj");
    let q = join(&dir, "streamed");

    must(
        store,
        "put v1",
        store
            .put(
                &p,
                Bytes::from_static(b"version one"),
                PutOptions::overwrite(),
            )
            .await,
    );
    must(
        store,
        "overwrite with v2",
        store
            .put(&p, Bytes::from_static(b"v2"), PutOptions::overwrite())
            .await,
    );
    assert_content(store, &p, b"v2").await;
    assert_eq!(
        must(store, "head", store.head(&p).await).size,
        2,
        "{store}: size not updated by overwrite"
    );

    let r = store
        .put(&p, Bytes::from_static(b"v3"), PutOptions::create())
        .await;
    if caps.atomic_create {
        assert_already_exists(store, "create-only put over an existing object", r);
    } else {
        assert_not_supported(store, "create-only put", r);
    }
    assert_content(store, &p, b"v2").await;

    // Streaming overwrite.
    must(
        store,
        "put",
        store
            .put(
                &q,
                Bytes::from_static(b"old old old"),
                PutOptions::default(),
            )
            .await,
    );
    must(
        store,
        "streamed overwrite",
        write_streamed(store, &q, PutOptions::overwrite(), &[b"new ", b"bytes"]).await,
    );
    assert_content(store, &q, b"new bytes").await;
    let r = write_streamed(store, &q, PutOptions::create(), &[b"other"]).await;
    if caps.atomic_create_streaming {
        assert_already_exists(store, "create-only put_writer over an existing object", r);
    } else {
        assert_not_supported(store, "create-only put_writer", r);
    }
    assert_content(store, &q, b"new bytes").await;

    // Create-only on a free path works.
    let fresh_path = join(&dir, "created");
    if caps.atomic_create {
        must(
            store,
            "create-only put on a free path",
            store
                .put(&fresh_path, Bytes::from_static(b"c"), PutOptions::create())
                .await,
        );
        assert_content(store, &fresh_path, b"c").await;
    }
    let fresh_streamed = join(&dir, "created-streamed");
    if caps.atomic_create_streaming {
        must(
            store,
            "create-only put_writer on a free path",
            write_streamed(store, &fresh_streamed, PutOptions::create(), &[b"c", b"s"]).await,
        );
        assert_content(store, &fresh_streamed, b"cs").await;
    }
    cleanup(store, opts, &dir).await;
}

// ---------------------------------------------------------------------------------------
// Ranges
// ---------------------------------------------------------------------------------------

/// Range reads: start, middle, end, clamped past the end, empty, and a start past the end
/// (`InvalidInput`), each with the right bytes and the right reported range; a reversed
/// range is `InvalidInput` too. Where the store lacks range reads, asserts that a ranged
/// `get` answers `NotSupported`.
pub async fn range_reads(store: &dyn Store, opts: &SuiteOptions) {
    let dir = fresh(store, opts, "ranges").await;
    let p = join(&dir, "obj");
    let e = join(&dir, "empty");
    let data = pattern(0x5eed_0003, 0, 1000);
    must(
        store,
        "put",
        store.put(&p, data.clone(), PutOptions::default()).await,
    );
    must(
        store,
        "put empty",
        store.put(&e, Bytes::new(), PutOptions::default()).await,
    );

    if !range_capable(store) {
        let r = store.get(&p, Some(0..10)).await;
        assert_not_supported(store, "ranged get", r);
        cleanup(store, opts, &dir).await;
        return;
    }

    let cases: [(Range<u64>, Range<u64>); 8] = [
        (0..10, 0..10),           // start
        (500..600, 500..600),     // middle
        (990..1000, 990..1000),   // end
        (990..5000, 990..1000),   // clamped past the end
        (0..1000, 0..1000),       // whole
        (0..u64::MAX, 0..1000),   // clamped, huge
        (100..100, 100..100),     // empty
        (1000..1000, 1000..1000), // empty, at the end
    ];
    for (asked, want) in cases {
        let got = must(
            store,
            &format!("get {asked:?}"),
            store.get(&p, Some(asked.clone())).await,
        );
        assert_eq!(
            got.range, want,
            "{store}: get {p} {asked:?}: wrong reported range"
        );
        assert_eq!(
            got.meta.size, 1000,
            "{store}: get {p} {asked:?}: meta.size must be the object's size"
        );
        let bytes = must(store, &format!("read {asked:?}"), got.bytes().await);
        let expect = data.slice(want.start as usize..want.end as usize);
        assert_eq!(bytes, expect, "{store}: get {p} {asked:?}: wrong bytes");
        assert_eq!(
            clamp_range(&p, Some(asked.clone()), 1000).ok(),
            Some(want.clone()),
            "suite and clamp_range disagree on {asked:?}"
        );
    }
    for bad in [1001..1002, 1000..1001, 5000..6000] {
        let r = store.get(&p, Some(bad.clone())).await;
        assert_invalid_input(store, &format!("get {p} {bad:?} (starts past the end)"), r);
    }
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 600..500;
    let r = store.get(&p, Some(reversed)).await;
    assert_invalid_input(store, &format!("get {p} 600..500 (reversed)"), r);

    // The empty object: 0..0 and 0..10 are empty, not errors.
    for asked in [0..0, 0..10] {
        let got = must(
            store,
            &format!("get empty {asked:?}"),
            store.get(&e, Some(asked.clone())).await,
        );
        assert_eq!(got.range, 0..0, "{store}: get {e} {asked:?}: wrong range");
        let b = must(store, "read empty", got.bytes().await);
        assert!(b.is_empty(), "{store}: get {e} {asked:?} returned bytes");
    }
    let r = store.get(&e, Some(1..2)).await;
    assert_invalid_input(
        store,
        &format!("get {e} 1..2 (past the end of an empty object)"),
        r,
    );
    cleanup(store, opts, &dir).await;
}

// ---------------------------------------------------------------------------------------
// Listing
// ---------------------------------------------------------------------------------------

/// [`SuiteOptions::list_keys`] (10,000) objects in nested "directories" are listed
/// completely, sorted, without duplicates, whatever the backend's page size; a listing of
/// the whole store includes them all.
pub async fn list_is_complete_and_sorted(store: &dyn Store, opts: &SuiteOptions) {
    let dir = fresh(store, opts, "list").await;
    // Names that sort differently as numbers, as strings and per directory.
    let mut expected: Vec<StorePath> = (0..opts.list_keys)
        .map(|i| join(&dir, &format!("d{}/{i}", i % 7)))
        .collect();
    stream::iter(expected.iter().cloned())
        .map(|p| async move {
            let body = Bytes::from(p.to_string().into_bytes());
            store
                .put(&p, body, PutOptions::default())
                .await
                .map_err(|e| (p, e))
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await
        .unwrap_or_else(|(p, e)| panic!("{store}: put {p} failed: {e}"));
    expected.sort();

    let listed = checked_list(store, Some(&dir)).await;
    let got: Vec<StorePath> = listed.iter().map(|m| m.path.clone()).collect();
    if got != expected {
        let missing = expected
            .iter()
            .filter(|p| got.binary_search(p).is_err())
            .count();
        panic!(
            "{store}: listing {dir} returned {} entries, expected {}; {missing} missing; first entries {:?}",
            got.len(),
            expected.len(),
            got.iter().take(5).collect::<Vec<_>>()
        );
    }
    for m in &listed {
        let want = m.path.as_str().len() as u64;
        assert_eq!(
            m.size, want,
            "{store}: listing reports a wrong size for {}",
            m.path
        );
    }

    // A sub-directory.
    let sub = join(&dir, "d3");
    let got_sub: Vec<StorePath> = checked_list(store, Some(&sub))
        .await
        .into_iter()
        .map(|m| m.path)
        .collect();
    let want_sub: Vec<StorePath> = expected
        .iter()
        .filter(|p| p.starts_with(&sub))
        .cloned()
        .collect();
    assert_eq!(got_sub, want_sub, "{store}: listing {sub} is wrong");

    // The whole store.
    let all = checked_list(store, None).await;
    let all: Vec<StorePath> = all.into_iter().map(|m| m.path).collect();
    let missing = expected
        .iter()
        .filter(|p| all.binary_search(p).is_err())
        .count();
    assert_eq!(
        missing,
        0,
        "{store}: a listing of the whole store misses {missing} of {} objects",
        expected.len()
    );

    delete_all(store, opts, &expected).await;
    cleanup(store, opts, &dir).await;
}

/// Listing by prefix works on whole segments: `a` covers `a/b` but not `ab` or `a-b`; the
/// result is sorted by the full path (`a-b` < `a/b` < `ab/c`), a prefix that is an object
/// lists that object, and a prefix with nothing under it lists nothing (not `NotFound`).
pub async fn list_prefix_is_segment_wise(store: &dyn Store, opts: &SuiteOptions) {
    let dir = fresh(store, opts, "prefix").await;
    // No name is both an object and a "directory" of others: a file system cannot hold that.
    let names = ["a/b", "a/c/d", "a-b", "a.b", "ab/c", "a0", "b", "x/y/z"];
    for n in names {
        let p = join(&dir, n);
        must(
            store,
            &format!("put {p}"),
            store
                .put(&p, Bytes::from_static(b"."), PutOptions::default())
                .await,
        );
    }
    let rel = |ms: Vec<ObjectMeta>| -> Vec<String> {
        ms.into_iter()
            .map(|m| m.path.as_str()[dir.as_str().len() + 1..].to_string())
            .collect()
    };
    let cases: [(&str, &[&str]); 6] = [
        ("a", &["a/b", "a/c/d"]),
        ("a/c", &["a/c/d"]),
        ("ab", &["ab/c"]),
        ("b", &["b"]),
        ("x/y", &["x/y/z"]),
        ("nothing-here", &[]),
    ];
    for (prefix, want) in cases {
        let pp = join(&dir, prefix);
        let got = rel(checked_list(store, Some(&pp)).await);
        assert_eq!(got, want.to_vec(), "{store}: list {pp} is wrong");
    }
    let got = rel(checked_list(store, Some(&dir)).await);
    assert_eq!(
        got,
        ["a-b", "a.b", "a/b", "a/c/d", "a0", "ab/c", "b", "x/y/z"].to_vec(),
        "{store}: list {dir} must be sorted by full path, byte-wise"
    );
    // A prefix under an object is empty, not an error.
    let under_object = join(&dir, "b/c");
    let got = checked_list(store, Some(&under_object)).await;
    assert!(
        got.is_empty(),
        "{store}: list {under_object} (under an object) returned {got:?}"
    );
    cleanup(store, opts, &dir).await;
}

// ---------------------------------------------------------------------------------------
// Create-only race
// ---------------------------------------------------------------------------------------

/// [`SuiteOptions::race_tasks`] (16) tasks create one object at once with create-only
/// `put` (and, where supported, create-only `put_writer`): exactly one wins, every other
/// gets `AlreadyExists`, and the object holds the winner's bytes. Where create-only is not
/// supported, asserts `NotSupported`.
pub async fn create_only_is_atomic(store: &Arc<dyn Store>, opts: &SuiteOptions) {
    let s: &dyn Store = &**store;
    let dir = fresh(s, opts, "race").await;
    let caps = s.capabilities();
    let tasks = opts.race_tasks.max(2);

    if !caps.atomic_create {
        let r = s
            .put(
                &join(&dir, "unsupported"),
                Bytes::from_static(b"x"),
                PutOptions::create(),
            )
            .await;
        assert_not_supported(s, "create-only put", r);
    }
    if !caps.atomic_create_streaming {
        let r = write_streamed(
            s,
            &join(&dir, "unsupported-streamed"),
            PutOptions::create(),
            &[b"x"],
        )
        .await;
        assert_not_supported(s, "create-only put_writer", r);
    }

    for streaming in [false, true] {
        if (streaming && !caps.atomic_create_streaming) || (!streaming && !caps.atomic_create) {
            continue;
        }
        for round in 0..opts.race_rounds.max(1) {
            let p = join(
                &dir,
                &format!("{}-{round}", if streaming { "streamed" } else { "put" }),
            );
            let barrier = Arc::new(tokio::sync::Barrier::new(tasks));
            let mut handles = Vec::with_capacity(tasks);
            for i in 0..tasks {
                let store = Arc::clone(store);
                let p = p.clone();
                let barrier = Arc::clone(&barrier);
                handles.push(tokio::spawn(async move {
                    let body = race_body(i, round);
                    barrier.wait().await;
                    let r = if streaming {
                        write_streamed(&*store, &p, PutOptions::create(), &[&body[..4], &body[4..]])
                            .await
                    } else {
                        store.put(&p, Bytes::from(body), PutOptions::create()).await
                    };
                    (i, r)
                }));
            }
            let mut winners = Vec::new();
            for h in handles {
                let (i, r) = h
                    .await
                    .unwrap_or_else(|e| panic!("race task panicked: {e}"));
                match r {
                    Ok(()) => winners.push(i),
                    Err(Error::AlreadyExists { .. }) => {}
                    Err(e) => panic!(
                        "{s}: create-only race on {p} (streaming {streaming}): task {i} failed with {e:?}, expected Ok or AlreadyExists"
                    ),
                }
            }
            assert_eq!(
                winners.len(),
                1,
                "{s}: create-only race on {p} (streaming {streaming}): {} winners {winners:?}, expected exactly one",
                winners.len()
            );
            assert_content(s, &p, &race_body(winners[0], round)).await;
        }
    }
    cleanup(s, opts, &dir).await;
}

fn race_body(task: usize, round: usize) -> Vec<u8> {
    format!("task {task:02} of round {round}: {}", "x".repeat(task * 3)).into_bytes()
}

// ---------------------------------------------------------------------------------------
// Delete, NotFound
// ---------------------------------------------------------------------------------------

/// Deleting an object removes it; deleting it again, or deleting a path that never
/// existed, succeeds; deleting a path that is only a "directory" of other objects succeeds
/// and leaves those objects alone.
pub async fn delete_is_idempotent(store: &dyn Store, opts: &SuiteOptions) {
    let dir = fresh(store, opts, "delete").await;
    let p = join(&dir, "obj");
    let child = join(&dir, "dir/child");
    must(
        store,
        "put",
        store
            .put(&p, Bytes::from_static(b"x"), PutOptions::default())
            .await,
    );
    must(
        store,
        "put child",
        store
            .put(&child, Bytes::from_static(b"y"), PutOptions::default())
            .await,
    );

    must(store, "delete", store.delete(&p).await);
    assert_not_found(store, "head after delete", store.head(&p).await);
    must(store, "delete again", store.delete(&p).await);
    must(
        store,
        "delete a path that never existed",
        store.delete(&join(&dir, "never/was")).await,
    );
    must(
        store,
        "delete a path under an object",
        store.delete(&join(&dir, "dir/child/below")).await,
    );
    must(
        store,
        "delete a path that is only a directory",
        store.delete(&join(&dir, "dir")).await,
    );
    assert_content(store, &child, b"y").await;
    let listed: Vec<StorePath> = checked_list(store, Some(&dir))
        .await
        .into_iter()
        .map(|m| m.path)
        .collect();
    assert_eq!(
        listed,
        vec![child.clone()],
        "{store}: listing after deletes is wrong"
    );
    cleanup(store, opts, &dir).await;
}

/// A missing object is `NotFound` (never another error) for `head`, `get` and ranged
/// `get`, including under a path where a "directory" or an object stands, and after a
/// delete.
pub async fn not_found_is_distinct(store: &dyn Store, opts: &SuiteOptions) {
    let dir = fresh(store, opts, "not-found").await;
    let file = join(&dir, "file");
    let in_dir = join(&dir, "dir/obj");
    must(
        store,
        "put",
        store
            .put(&file, Bytes::from_static(b"abc"), PutOptions::default())
            .await,
    );
    must(
        store,
        "put",
        store
            .put(&in_dir, Bytes::from_static(b"abc"), PutOptions::default())
            .await,
    );

    let missing = [
        join(&dir, "missing"),
        join(&dir, "no/such/dir/obj"),
        join(&dir, "dir"),        // a "directory", not an object
        join(&dir, "file/below"), // under an object
    ];
    for p in &missing {
        assert_not_found(store, &format!("head {p}"), store.head(p).await);
        assert_not_found(store, &format!("get {p}"), store.get(p, None).await);
        let r = store.get(p, Some(0..10)).await;
        if range_capable(store) {
            assert_not_found(store, &format!("ranged get {p}"), r);
        } else {
            assert!(
                matches!(r, Err(Error::NotFound { .. } | Error::NotSupported { .. })),
                "{store}: ranged get of missing {p} must be NotFound or NotSupported, got {r:?}"
            );
        }
        if range_capable(store) {
            let r = store.get(p, Some(100..200)).await;
            assert_not_found(
                store,
                &format!("get {p} 100..200 (missing, range past any end)"),
                r,
            );
        }
        let exists = must(store, &format!("exists {p}"), store.exists(p).await);
        assert!(!exists, "{store}: exists({p}) is true");
    }
    must(store, "delete", store.delete(&file).await);
    assert_not_found(store, "get after delete", store.get(&file, None).await);
    cleanup(store, opts, &dir).await;
}

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

/// Bad paths cannot be built ([`StorePath::new`] rejects them), so they never reach a
/// store; unusual but valid names (spaces, non-ASCII, punctuation, dot-files, long
/// segments, a path of exactly the maximum length) round-trip through `put`, `get` and
/// `list` byte for byte, and every listed path is valid.
pub async fn paths_are_validated(store: &dyn Store, opts: &SuiteOptions) {
    let long = "l".repeat(1025);
    for bad in [
        "",
        "/abs",
        "a/",
        "a//b",
        ".",
        "..",
        "a/../b",
        "./a",
        "a/.",
        "a\\b",
        "a\nb",
        "a\tb",
        "a\u{7f}b",
        "a\0b",
        long.as_str(),
    ] {
        assert!(
            StorePath::new(bad).is_err(),
            "StorePath::new accepted the bad path {bad:?}"
        );
    }
    assert!(
        StorePath::new("m".repeat(MAX_STORE_PATH_LEN)).is_ok(),
        "StorePath::new rejects a path of {MAX_STORE_PATH_LEN} bytes"
    );

    let dir = fresh(store, opts, "paths").await;
    let seg200 = "s".repeat(200);
    let mut names: Vec<String> = [
        "with space",
        "ünïcödé-名前",
        "per%cent",
        "plus+equals=",
        "tilde~at@colon:comma,",
        "semi;amp&dollar$",
        "quote'paren(bracket)[",
        "star*excl!",
        "q?h#",
        ".hidden",
        "..double-dot-prefix",
        "trailing.",
        "UPPER-lower",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.push(seg200);
    // A path of exactly MAX_STORE_PATH_LEN bytes, in segments of at most 100 bytes.
    let mut deep = String::new();
    let mut remaining = MAX_STORE_PATH_LEN - dir.as_str().len() - 1;
    let mut letter = b'd';
    while remaining > 0 {
        if !deep.is_empty() {
            deep.push('/');
        }
        let seg = if remaining <= 100 {
            remaining
        } else {
            100.min(remaining - 2)
        };
        deep.push_str(&char::from(letter).to_string().repeat(seg));
        remaining -= seg;
        remaining = remaining.saturating_sub(1); // the next '/'
        letter = if letter == b'z' { b'd' } else { letter + 1 };
    }
    names.push(deep);

    let mut paths = Vec::new();
    for n in &names {
        let p = StorePath::new(format!("{dir}/{n}"))
            .unwrap_or_else(|e| panic!("suite bug: valid test path {n:?} rejected: {e}"));
        let body = Bytes::from(n.clone().into_bytes());
        must(
            store,
            &format!("put {p:?}"),
            store.put(&p, body.clone(), PutOptions::default()).await,
        );
        assert_content(store, &p, &body).await;
        paths.push(p);
    }
    assert_eq!(
        paths.last().map(|p| p.as_str().len()),
        Some(MAX_STORE_PATH_LEN),
        "suite bug: the longest path is not of the maximum length"
    );
    paths.sort();
    let listed: Vec<StorePath> = checked_list(store, Some(&dir))
        .await
        .into_iter()
        .map(|m| m.path)
        .collect();
    assert_eq!(
        listed, paths,
        "{store}: listing of unusual names differs from what was written"
    );
    cleanup(store, opts, &dir).await;
}

// ---------------------------------------------------------------------------------------
// Abandoned writers
// ---------------------------------------------------------------------------------------

/// A writer that is dropped or aborted before `complete` leaves nothing visible: no object
/// (`head`, `get`, `list`), no temporary in listings, and an object it would have replaced
/// keeps its old bytes. A path left free by an abandoned create-only writer can still be
/// created.
pub async fn abandoned_writer_leaves_nothing(store: &dyn Store, opts: &SuiteOptions) {
    let dir = fresh(store, opts, "abandoned").await;
    let caps = store.capabilities();
    let part = pattern(0x5eed_0004, 0, MIB);

    for (how, abort) in [("dropped", false), ("aborted", true)] {
        // A new object.
        let p = join(&dir, &format!("new-{how}"));
        let mut w = must(
            store,
            "open writer",
            store.put_writer(&p, PutOptions::overwrite()).await,
        );
        must(store, "write", w.write(part.clone()).await);
        must(store, "write", w.write(part.clone()).await);
        assert_not_found(
            store,
            &format!("head {p} while being written"),
            store.head(&p).await,
        );
        if abort {
            must(store, "abort", w.abort().await);
        } else {
            drop(w);
        }
        assert_not_found(
            store,
            &format!("head {p} after the writer was {how}"),
            store.head(&p).await,
        );
        assert_not_found(
            store,
            &format!("get {p} after the writer was {how}"),
            store.get(&p, None).await,
        );

        // Replacing an existing object.
        let q = join(&dir, &format!("existing-{how}"));
        must(
            store,
            "put",
            store
                .put(&q, Bytes::from_static(b"old"), PutOptions::default())
                .await,
        );
        let mut w = must(
            store,
            "open writer",
            store.put_writer(&q, PutOptions::overwrite()).await,
        );
        must(store, "write", w.write(part.clone()).await);
        if abort {
            must(store, "abort", w.abort().await);
        } else {
            drop(w);
        }
        assert_content(store, &q, b"old").await;

        // A create-only writer abandoned: the path stays free.
        if caps.atomic_create_streaming {
            let c = join(&dir, &format!("create-{how}"));
            let mut w = must(
                store,
                "open create-only writer",
                store.put_writer(&c, PutOptions::create()).await,
            );
            must(store, "write", w.write(part.clone()).await);
            if abort {
                must(store, "abort", w.abort().await);
            } else {
                drop(w);
            }
            assert_not_found(
                store,
                &format!("head {c} after the writer was {how}"),
                store.head(&c).await,
            );
            must(
                store,
                &format!("create {c} after an abandoned create-only writer"),
                write_streamed(store, &c, PutOptions::create(), &[b"fresh"]).await,
            );
            assert_content(store, &c, b"fresh").await;
        }
    }
    let mut want: Vec<StorePath> = vec![
        join(&dir, "existing-dropped"),
        join(&dir, "existing-aborted"),
    ];
    if caps.atomic_create_streaming {
        want.push(join(&dir, "create-dropped"));
        want.push(join(&dir, "create-aborted"));
    }
    want.sort();
    let listed: Vec<StorePath> = checked_list(store, Some(&dir))
        .await
        .into_iter()
        .map(|m| m.path)
        .collect();
    assert_eq!(
        listed, want,
        "{store}: abandoned writers left something visible in the listing of {dir}"
    );
    cleanup(store, opts, &dir).await;
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn path(s: &str) -> StorePath {
    StorePath::new(s).unwrap_or_else(|e| panic!("suite bug: bad path {s:?}: {e}"))
}

fn join(dir: &StorePath, child: &str) -> StorePath {
    dir.join(child)
        .unwrap_or_else(|e| panic!("suite bug: bad path {dir}/{child}: {e}"))
}

fn must<T>(store: &dyn Store, what: &str, r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{store}: {what} failed: {e} ({e:?})"))
}

fn range_capable(store: &dyn Store) -> bool {
    store.capabilities().range_reads
}

fn assert_not_found<T: Debug>(store: &dyn Store, what: &str, r: Result<T>) {
    match r {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{store}: {what}: expected NotFound, got {other:?}"),
    }
}

fn assert_already_exists<T: Debug>(store: &dyn Store, what: &str, r: Result<T>) {
    match r {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("{store}: {what}: expected AlreadyExists, got {other:?}"),
    }
}

fn assert_not_supported<T: Debug>(store: &dyn Store, what: &str, r: Result<T>) {
    match r {
        Err(Error::NotSupported { .. }) => {}
        other => panic!(
            "{store}: {what}: the store's capabilities say it cannot, so it must answer NotSupported; got {other:?}"
        ),
    }
}

fn assert_invalid_input<T: Debug>(store: &dyn Store, what: &str, r: Result<T>) {
    match r {
        Err(Error::InvalidInput { .. }) => {}
        other => panic!("{store}: {what}: expected InvalidInput, got {other:?}"),
    }
}

async fn assert_content(store: &dyn Store, p: &StorePath, want: &[u8]) {
    let got = must(store, &format!("get {p}"), store.get_bytes(p).await);
    assert!(
        &got[..] == want,
        "{store}: {p} holds {} bytes {:?}, expected {} bytes {:?}",
        got.len(),
        String::from_utf8_lossy(&got[..got.len().min(64)]),
        want.len(),
        String::from_utf8_lossy(&want[..want.len().min(64)]),
    );
}

/// Opens a writer, writes `parts`, completes: the first error wins.
async fn write_streamed(
    store: &dyn Store,
    p: &StorePath,
    opts: PutOptions,
    parts: &[&[u8]],
) -> Result<()> {
    let mut w = store.put_writer(p, opts).await?;
    for part in parts {
        w.write(Bytes::copy_from_slice(part)).await?;
    }
    w.complete().await
}

/// Streams an object (or a range of it) and returns its length and CRC-32C.
async fn read_crc(store: &dyn Store, p: &StorePath, range: Option<Range<u64>>) -> (u64, u32) {
    let got = must(store, &format!("get {p}"), store.get(p, range).await);
    let mut s = got.stream;
    let (mut len, mut crc) = (0u64, 0u32);
    while let Some(chunk) = s.next().await {
        let chunk = must(store, &format!("read {p} at {len}"), chunk);
        crc = crc32c::crc32c_append(crc, &chunk);
        len += chunk.len() as u64;
    }
    (len, crc)
}

/// Lists, and checks what every listing must be: sorted, without duplicates, under the
/// prefix, made of valid paths.
async fn checked_list(store: &dyn Store, prefix: Option<&StorePath>) -> Vec<ObjectMeta> {
    let what = prefix
        .map(|p| p.to_string())
        .unwrap_or_else(|| "(whole store)".into());
    let listed = must(store, &format!("list {what}"), store.list(prefix).await);
    for pair in listed.windows(2) {
        assert!(
            pair[0].path < pair[1].path,
            "{store}: list {what} is not sorted or has duplicates: {} then {}",
            pair[0].path,
            pair[1].path
        );
    }
    for m in &listed {
        let again = StorePath::new(m.path.as_str());
        assert!(
            matches!(&again, Ok(p) if *p == m.path),
            "{store}: list {what} yielded an invalid path {:?}",
            m.path.as_str()
        );
        if let Some(pre) = prefix {
            assert!(
                m.path.starts_with(pre),
                "{store}: list {what} yielded {} outside the prefix",
                m.path
            );
        }
    }
    listed
}

/// The check's directory, which must be empty.
async fn fresh(store: &dyn Store, opts: &SuiteOptions, name: &str) -> StorePath {
    let dir = join(&opts.base, name);
    let there = must(store, &format!("list {dir}"), store.list(Some(&dir)).await);
    assert!(
        there.is_empty(),
        "{store}: the conformance suite needs {dir} empty, it holds {} objects (first {})",
        there.len(),
        there[0].path
    );
    dir
}

async fn delete_all(store: &dyn Store, opts: &SuiteOptions, paths: &[StorePath]) {
    stream::iter(paths.iter())
        .map(|p| async move { store.delete(p).await.map_err(|e| (p, e)) })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await
        .unwrap_or_else(|(p, e)| panic!("{store}: delete {p} failed: {e}"));
}

/// Deletes what a check wrote and checks that it is gone.
async fn cleanup(store: &dyn Store, opts: &SuiteOptions, dir: &StorePath) {
    let left: Vec<StorePath> = must(store, &format!("list {dir}"), store.list(Some(dir)).await)
        .into_iter()
        .map(|m| m.path)
        .collect();
    delete_all(store, opts, &left).await;
    let after = must(store, &format!("list {dir}"), store.list(Some(dir)).await);
    assert!(
        after.is_empty(),
        "{store}: {} objects remain under {dir} after deleting them",
        after.len()
    );
}

/// `len` bytes at `offset` of an endless deterministic pseudo-random stream (SplitMix64 of
/// the 8-byte word index), so that any range can be regenerated without the rest.
fn pattern(seed: u64, offset: u64, len: u64) -> Bytes {
    let len = usize::try_from(len)
        .unwrap_or_else(|_| panic!("suite bug: {len} bytes do not fit in memory"));
    let first_word = offset / 8;
    let skip = (offset % 8) as usize;
    let words = (skip + len).div_ceil(8);
    let mut out = vec![0u8; words * 8];
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(
            &splitmix64(seed ^ (first_word + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .to_le_bytes(),
        );
    }
    let mut b = Bytes::from(out);
    b = b.slice(skip..skip + len);
    b
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use async_trait::async_trait;
    use carta_dr_core::{Capabilities, GetResult, ObjectWriter, PutMode};
    use std::fmt;

    #[test]
    fn pattern_is_seekable() {
        let whole = pattern(7, 0, 1000);
        for (off, len) in [
            (0u64, 10u64),
            (3, 17),
            (8, 8),
            (999, 1),
            (500, 0),
            (13, 987),
        ] {
            assert_eq!(
                pattern(7, off, len),
                whole.slice(off as usize..(off + len) as usize),
                "{off}+{len}"
            );
        }
        assert_ne!(pattern(7, 0, 64), pattern(8, 0, 64));
    }

    /// A store with one deliberate contract violation, to prove the suite catches it.
    #[derive(Debug)]
    struct Broken {
        inner: MemoryStore,
        bug: Bug,
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Bug {
        UnsortedList,
        NotFoundAsBackendError,
        CreateOverwrites,
        ShortRead,
        CapabilitiesLie,
        WriterVisibleEarly,
    }

    impl fmt::Display for Broken {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "Broken({:?})", self.bug)
        }
    }

    #[async_trait]
    impl Store for Broken {
        async fn put(&self, path: &StorePath, data: Bytes, mut opts: PutOptions) -> Result<()> {
            if self.bug == Bug::CreateOverwrites {
                opts.mode = PutMode::Overwrite;
                tokio::task::yield_now().await;
            }
            self.inner.put(path, data, opts).await
        }
        async fn put_writer(
            &self,
            path: &StorePath,
            opts: PutOptions,
        ) -> Result<Box<dyn ObjectWriter>> {
            if self.bug == Bug::WriterVisibleEarly {
                self.inner
                    .put(path, Bytes::new(), PutOptions::default())
                    .await?;
            }
            self.inner.put_writer(path, opts).await
        }
        async fn get(&self, path: &StorePath, range: Option<Range<u64>>) -> Result<GetResult> {
            let got = self.inner.get(path, range).await?;
            if self.bug != Bug::ShortRead {
                return Ok(got);
            }
            let (meta, range) = (got.meta.clone(), got.range.clone());
            let all = got.bytes().await?;
            let short = all.slice(..all.len().saturating_sub(1));
            Ok(GetResult {
                meta,
                range,
                stream: stream::once(async move { Ok(short) }).boxed(),
            })
        }
        async fn head(&self, path: &StorePath) -> Result<ObjectMeta> {
            match self.inner.head(path).await {
                Err(Error::NotFound { path }) if self.bug == Bug::NotFoundAsBackendError => {
                    Err(Error::Backend {
                        backend: "broken",
                        context: path,
                        message: "404".into(),
                        retryable: false,
                    })
                }
                r => r,
            }
        }
        async fn list(&self, prefix: Option<&StorePath>) -> Result<Vec<ObjectMeta>> {
            let mut l = self.inner.list(prefix).await?;
            if self.bug == Bug::UnsortedList {
                l.reverse();
            }
            Ok(l)
        }
        async fn delete(&self, path: &StorePath) -> Result<()> {
            self.inner.delete(path).await
        }
        fn capabilities(&self) -> Capabilities {
            let mut c = self.inner.capabilities();
            if self.bug == Bug::CapabilitiesLie {
                c.atomic_create = false;
            }
            c
        }
    }

    fn broken(bug: Bug) -> Broken {
        Broken {
            inner: MemoryStore::new(),
            bug,
        }
    }

    fn small() -> SuiteOptions {
        SuiteOptions {
            medium_object_size: MIB,
            big_object_size: 3 * MIB,
            part_size: MIB as usize,
            list_keys: 100,
            ..SuiteOptions::default()
        }
    }

    #[tokio::test]
    #[should_panic(expected = "is not sorted")]
    async fn catches_unsorted_listing() {
        list_prefix_is_segment_wise(&broken(Bug::UnsortedList), &small()).await;
    }

    #[tokio::test]
    #[should_panic(expected = "expected NotFound")]
    async fn catches_not_found_reported_as_another_error() {
        not_found_is_distinct(&broken(Bug::NotFoundAsBackendError), &small()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[should_panic(expected = "expected exactly one")]
    async fn catches_non_atomic_create() {
        let s: Arc<dyn Store> = Arc::new(broken(Bug::CreateOverwrites));
        create_only_is_atomic(&s, &small()).await;
    }

    #[tokio::test]
    #[should_panic(expected = "read back")]
    async fn catches_short_reads() {
        round_trip_medium(&broken(Bug::ShortRead), &small()).await;
    }

    #[tokio::test]
    #[should_panic(expected = "must answer NotSupported")]
    async fn catches_capabilities_that_lie() {
        put_overwrite_semantics(&broken(Bug::CapabilitiesLie), &small()).await;
    }

    #[tokio::test]
    #[should_panic(expected = "while being written")]
    async fn catches_writes_visible_before_completion() {
        abandoned_writer_leaves_nothing(&broken(Bug::WriterVisibleEarly), &small()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_store_passes_with_small_sizes() {
        run_all(Arc::new(MemoryStore::new()), small()).await;
    }
}
