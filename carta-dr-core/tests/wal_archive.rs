//! `StoreWalArchive` over the memory store (unit-level) and the local store (real files).
//! The end-to-end proofs against a running PostgreSQL live in carta-dr-cli's tests.

use std::sync::Arc;

use bytes::Bytes;
use carta_dr_backends::{LocalStore, MemoryStore};
use carta_dr_core::archive::{path_of, DroppedWal, StoreWalArchive, CLUSTER_RECORD};
use carta_dr_core::envelope::{EnvelopeOptions, Key};
use carta_dr_core::traits::PushOutcome;
use carta_dr_core::wal::page::{
    encode_page_header, LongHeaderFields, PageHeader, XLOG_PAGE_MAGIC_PG15, XLP_LONG_HEADER,
};
use carta_dr_core::{
    Error, PutOptions, Store, StoreExt, StorePath, TimelineId, WalArchive, WalFileName,
    WalSegmentName, WalSegmentSize,
};

const SYSID: u64 = 7_310_391_390_467_375_236;
const MIB: u64 = 1 << 20;

/// A 1 MiB segment whose first page header is what PostgreSQL 15 writes for `name`, with
/// `fill` varying the bytes after it.
fn segment(name: &str, sysid: u64, fill: u8) -> Bytes {
    let n: WalSegmentName = name.parse().unwrap();
    let seg = WalSegmentSize::new(MIB).unwrap();
    let h = PageHeader {
        magic: XLOG_PAGE_MAGIC_PG15,
        info: XLP_LONG_HEADER,
        tli: n.timeline.get(),
        pageaddr: n.start_lsn(seg),
        rem_len: 0,
        long: Some(LongHeaderFields {
            system_identifier: sysid,
            seg_size: MIB as u32,
            xlog_blcksz: 8192,
        }),
    };
    let mut v = vec![0u8; MIB as usize];
    let hb = encode_page_header(&h);
    v[..hb.len()].copy_from_slice(&hb);
    for (i, b) in v[64..20_000].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(fill) ^ fill;
    }
    Bytes::from(v)
}

fn name(s: &str) -> WalFileName {
    s.parse().unwrap()
}

fn archive(store: Arc<dyn Store>) -> StoreWalArchive {
    StoreWalArchive::new(store, EnvelopeOptions::zstd(1))
}

#[tokio::test]
async fn push_fetch_round_trip_and_idempotence() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = archive(store.clone());
    let n = name("000000010000000000000003");
    let seg = segment("000000010000000000000003", SYSID, 7);
    assert_eq!(a.push(&n, seg.clone()).await.unwrap(), PushOutcome::Stored);
    assert_eq!(
        a.push(&n, seg.clone()).await.unwrap(),
        PushOutcome::AlreadyArchived
    );
    assert_eq!(a.fetch(&n).await.unwrap(), seg);
    // Stored compressed under the documented layout, not raw.
    let p = path_of(&n).unwrap();
    assert_eq!(p.as_str(), "wal/00000001/00000000/000000010000000000000003");
    let stored = store.head(&p).await.unwrap();
    assert!(stored.size < MIB / 4, "stored {} bytes", stored.size);
    // The cluster record was written by the first push.
    let c = a.cluster().await.unwrap().unwrap();
    assert_eq!(c.system_identifier, SYSID);
    assert_eq!(c.pg_major, 15);
    assert_eq!(c.wal_segment_size.bytes(), MIB);
    assert!(store
        .exists(&StorePath::new(CLUSTER_RECORD).unwrap())
        .await
        .unwrap());
}

#[tokio::test]
async fn different_content_is_a_conflict_naming_both_checksums() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = archive(store.clone());
    let n = name("000000010000000000000003");
    let first = segment("000000010000000000000003", SYSID, 7);
    let second = segment("000000010000000000000003", SYSID, 9);
    a.push(&n, first.clone()).await.unwrap();
    let e = a.push(&n, second.clone()).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    let c1 = format!("{:08x}", crc32c::crc32c(&first));
    let c2 = format!("{:08x}", crc32c::crc32c(&second));
    assert!(msg.contains(&c1) && msg.contains(&c2), "{msg}");
    // The stored copy is untouched.
    assert_eq!(a.fetch(&n).await.unwrap(), first);
}

#[tokio::test]
async fn another_clusters_segment_is_refused() {
    let a = archive(Arc::new(MemoryStore::new()));
    a.push(
        &name("000000010000000000000003"),
        segment("000000010000000000000003", SYSID, 1),
    )
    .await
    .unwrap();
    let e = a
        .push(
            &name("000000010000000000000004"),
            segment("000000010000000000000004", 42, 1),
        )
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
    assert!(
        msg.contains("42") && msg.contains(&SYSID.to_string()),
        "{msg}"
    );
    assert!(!a.exists(&name("000000010000000000000004")).await.unwrap());
}

#[tokio::test]
async fn invalid_segments_are_refused_before_storing() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = archive(store.clone());
    // Header of segment 5 under the name of segment 6 (a recycled file).
    let e = a
        .push(
            &name("000000010000000000000006"),
            segment("000000010000000000000005", SYSID, 1),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("000000010000000000000006"), "{e}");
    // Truncated.
    let s = segment("000000010000000000000006", SYSID, 1);
    assert!(a
        .push(&name("000000010000000000000006"), s.slice(..s.len() - 8192))
        .await
        .is_err());
    assert!(store.list(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn history_and_backup_files() {
    let a = archive(Arc::new(MemoryStore::new()));
    let h = name("00000002.history");
    let text = Bytes::from_static(b"1\t0/3000000\tno recovery target specified\n");
    assert_eq!(a.push(&h, text.clone()).await.unwrap(), PushOutcome::Stored);
    assert_eq!(
        a.push(&h, text.clone()).await.unwrap(),
        PushOutcome::AlreadyArchived
    );
    // Never overwritten.
    let other = Bytes::from_static(b"1\t0/3000001\tno recovery target specified\n");
    assert!(matches!(
        a.push(&h, other).await.unwrap_err(),
        Error::Conflict { .. }
    ));
    assert_eq!(a.fetch(&h).await.unwrap(), text);
    assert!(a.push(&h, Bytes::from_static(b"garbage")).await.is_err());

    let b = name("000000010000000000000002.00000028.backup");
    let label = Bytes::from_static(
        b"START WAL LOCATION: 0/200028 (file 000000010000000000000002)\n\
          STOP WAL LOCATION: 0/200138 (file 000000010000000000000002)\n\
          CHECKPOINT LOCATION: 0/200098\nSTOP TIMELINE: 1\n",
    );
    assert_eq!(
        a.push(&b, label.clone()).await.unwrap(),
        PushOutcome::Stored
    );
    assert_eq!(
        path_of(&b).unwrap().as_str(),
        "wal/00000001/00000000/000000010000000000000002.00000028.backup"
    );
    assert_eq!(a.fetch(&b).await.unwrap(), label);
}

#[tokio::test]
async fn fetch_distinguishes_missing_from_corrupt() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = archive(store.clone());
    let n = name("000000010000000000000003");
    assert!(matches!(
        a.fetch(&n).await.unwrap_err(),
        Error::NotFound { .. }
    ));
    a.push(&n, segment("000000010000000000000003", SYSID, 3))
        .await
        .unwrap();
    let p = path_of(&n).unwrap();
    let mut raw = store.get_bytes(&p).await.unwrap().to_vec();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x40;
    store
        .put(&p, Bytes::from(raw), PutOptions::overwrite())
        .await
        .unwrap();
    let e = a.fetch(&n).await.unwrap_err();
    assert!(!e.is_not_found(), "{e:?}");
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    // A push of the good content does not replace the damaged copy silently.
    let e = a
        .push(&n, segment("000000010000000000000003", SYSID, 3))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
}

#[tokio::test]
async fn racing_pushers_store_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(dir.path()).unwrap());
    let a = Arc::new(archive(store.clone()));
    let n = name("000000010000000000000009");
    let seg = segment("000000010000000000000009", SYSID, 5);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let a = a.clone();
            let seg = seg.clone();
            tokio::spawn(async move { a.push(&n, seg).await })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            PushOutcome::Stored => stored += 1,
            PushOutcome::AlreadyArchived => {}
        }
    }
    assert_eq!(stored, 1);
    let objs = store
        .list(Some(&StorePath::new("wal/00000001").unwrap()))
        .await
        .unwrap();
    assert_eq!(objs.len(), 1);
    assert_eq!(a.fetch(&n).await.unwrap(), seg);
}

#[tokio::test]
async fn encrypted_archive_needs_its_key() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let key = Arc::new(Key::from_bytes([9; 32]));
    let a = StoreWalArchive::new(store.clone(), EnvelopeOptions::zstd(1).with_key(key));
    let n = name("000000010000000000000003");
    let seg = segment("000000010000000000000003", SYSID, 3);
    a.push(&n, seg.clone()).await.unwrap();
    assert_eq!(a.fetch(&n).await.unwrap(), seg);
    let wrong = StoreWalArchive::new(
        store.clone(),
        EnvelopeOptions::zstd(1).with_key(Arc::new(Key::from_bytes([8; 32]))),
    );
    assert!(matches!(
        wrong.fetch(&n).await.unwrap_err(),
        Error::Crypto { .. }
    ));
    let none = archive(store);
    assert!(!none.fetch(&n).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn list_and_drop_records() {
    let a = archive(Arc::new(MemoryStore::new()));
    for s in [
        "000000010000000000000003",
        "000000010000000000000004",
        "0000000100000001000000FF",
        "000000020000000000000004",
    ] {
        a.push(&name(s), segment(s, SYSID, 1)).await.unwrap();
    }
    a.push(
        &name("00000002.history"),
        Bytes::from_static(b"1\t0/4000000\tx\n"),
    )
    .await
    .unwrap();
    let all = a.list(None).await.unwrap();
    let names: Vec<String> = all.iter().map(|w| w.name.to_string()).collect();
    assert_eq!(
        names,
        [
            "000000010000000000000003",
            "000000010000000000000004",
            "0000000100000001000000FF",
            "00000002.history",
            "000000020000000000000004",
        ]
    );
    assert_eq!(all[0].size, Some(MIB));
    let tl2 = a.list(Some(TimelineId::new(2).unwrap())).await.unwrap();
    assert_eq!(tl2.len(), 2);

    let rec = DroppedWal {
        name: name("000000010000000000000005"),
        size: MIB,
        crc32c: 0xdead_beef,
        dropped_at_unix: 1_700_000_000,
        reason: "store down".into(),
    };
    a.record_dropped(&rec).await.unwrap();
    a.record_dropped(&rec).await.unwrap();
    assert_eq!(a.dropped().await.unwrap(), vec![rec]);
    // Drop records and the cluster record are not WAL files.
    assert_eq!(a.list(None).await.unwrap().len(), 5);
}
