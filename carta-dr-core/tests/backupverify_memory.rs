//! `BackupVerifier` against hand-built backups in a `MemoryStore` (the CLI tests
//! `verify_backup*.rs` run it against real PostgreSQL 15 backups in a local store).

use std::sync::Arc;

use bytes::Bytes;
use carta_dr_backends::MemoryStore;
use sha2::{Digest, Sha256};

use carta_dr_core::backupverify::{BackupSelection, BackupVerifier, BackupVerifyOptions};
use carta_dr_core::catalog::{
    bundle_path, chunk_path, record_path, BackupRecord, ChunkRef, Content, FileKind, FileRecord,
    FORMAT_VERSION,
};
use carta_dr_core::envelope::{self, seal, EnvelopeOptions};
use carta_dr_core::manifest::{build_manifest, WalRange};
use carta_dr_core::traits::{BackupKind, Verdict, VerifyReport};
use carta_dr_core::{BackupId, Lsn, Store, StoreExt, StorePath, TimelineId, Verifier};

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

struct Fixture {
    store: Arc<MemoryStore>,
    id: BackupId,
    big: Vec<u8>,
    small: Vec<u8>,
}

fn file(path: &str, data: &[u8], content: Content) -> FileRecord {
    FileRecord {
        path: path.into(),
        kind: FileKind::File,
        mode: 0o600,
        mtime: 0,
        size: data.len() as u64,
        crc32c: crc32c::crc32c(data),
        link_target: None,
        content,
    }
}

async fn put(store: &MemoryStore, path: &StorePath, raw: &[u8]) {
    let sealed = seal(&EnvelopeOptions::zstd(1), raw).unwrap();
    store
        .put(path, Bytes::from(sealed), Default::default())
        .await
        .unwrap();
}

async fn fixture(manifest_extra: Option<(&str, &[u8])>) -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let big: Vec<u8> = (0..2_500_000u32).map(|i| (i % 253) as u8).collect();
    let small = b"15\n".to_vec();
    let other = b"some other small file".to_vec();
    let mut chunks = Vec::new();
    for c in big.chunks(1 << 20) {
        let h = sha(c);
        put(&store, &chunk_path(&h).unwrap(), c).await;
        chunks.push(ChunkRef {
            sha256: h,
            len: c.len() as u64,
        });
    }
    let mut bundle = small.clone();
    bundle.extend_from_slice(&other);
    let bh = sha(&bundle);
    put(&store, &bundle_path(&bh).unwrap(), &bundle).await;
    let range = WalRange {
        timeline: TimelineId::ONE,
        start: Lsn(0x2000028),
        end: Lsn(0x2000138),
    };
    let mut mfiles: Vec<(&str, &[u8])> = vec![
        ("base/1/1259", &big),
        ("PG_VERSION", &small),
        ("global/other", &other),
    ];
    if let Some(x) = manifest_extra {
        mfiles.push(x);
    }
    let manifest = build_manifest(&mfiles, &[range]);
    let id: BackupId = "20261123T120000Z".parse().unwrap();
    let rec = BackupRecord {
        format_version: FORMAT_VERSION,
        id,
        kind: BackupKind::Full,
        label: "t".into(),
        start_lsn: range.start,
        stop_lsn: range.end,
        timeline: TimelineId::ONE,
        stop_timeline: TimelineId::ONE,
        system_identifier: 1,
        pg_version: 150000,
        wal_segment_size: 16 << 20,
        start_time: 0,
        stop_time: 0,
        original_size: 0,
        stored_size: 0,
        tablespaces: vec![],
        files: vec![
            file("base/1/1259", &big, Content::Chunks { chunks }),
            file(
                "PG_VERSION",
                &small,
                Content::Bundled {
                    bundle: bh.clone(),
                    offset: 0,
                    sha256: sha(&small),
                },
            ),
            file(
                "global/other",
                &other,
                Content::Bundled {
                    bundle: bh.clone(),
                    offset: small.len() as u64,
                    sha256: sha(&other),
                },
            ),
        ],
        backup_manifest: String::from_utf8(manifest).unwrap(),
    };
    put(&store, &record_path(id).unwrap(), &rec.to_json().unwrap()).await;
    Fixture {
        store,
        id,
        big,
        small,
    }
}

async fn verify(f: &Fixture, sel: BackupSelection) -> VerifyReport {
    let opts = BackupVerifyOptions {
        check_wal: false,
        threads: 2,
        concurrency: 3,
    };
    BackupVerifier::new(f.store.clone(), None, sel, opts)
        .verify()
        .await
        .unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn clean_backup_is_clean() {
    block_on(async {
        let f = fixture(None).await;
        let r = verify(&f, BackupSelection::One(f.id)).await;
        assert_eq!(r.verdict(), Verdict::Clean, "{:#?}", r.findings);
        assert!(r.findings.is_empty(), "{:#?}", r.findings);
        assert!(r.checked.iter().any(|c| c.contains("3 files")), "{r:?}");
        let all = verify(&f, BackupSelection::All).await;
        assert_eq!(all.verdict(), Verdict::Clean, "{:#?}", all.findings);
        assert_eq!((f.big.len(), f.small.len()), (2_500_000, 3));
    });
}

#[test]
fn damaged_chunk_names_object_and_file() {
    block_on(async {
        let f = fixture(None).await;
        let p = chunk_path(&sha(&f.big[1 << 20..2 << 20])).unwrap();
        let mut b = f.store.get_bytes(&p).await.unwrap().to_vec();
        let n = b.len();
        b[n / 2] ^= 0x10;
        f.store
            .put(&p, Bytes::from(b), Default::default())
            .await
            .unwrap();
        let r = verify(&f, BackupSelection::One(f.id)).await;
        assert_eq!(r.verdict(), Verdict::Corrupt);
        let text: Vec<String> = r
            .findings
            .iter()
            .map(|x| format!("{}: {}", x.location, x.what))
            .collect();
        assert!(text.iter().any(|t| t.starts_with(p.as_str())), "{text:#?}");
        assert!(
            text.iter()
                .any(|t| t.starts_with("base/1/1259 offset 1048576") && t.contains("chunk 1")),
            "{text:#?}"
        );
    });
}

#[test]
fn resealed_content_change_is_caught_by_the_crc() {
    block_on(async {
        let f = fixture(None).await;
        // A chunk re-sealed with one changed bit: its envelope is intact, its content is not.
        let c = &f.big[..1 << 20];
        let p = chunk_path(&sha(c)).unwrap();
        let mut changed = c.to_vec();
        changed[1000] ^= 4;
        put(&f.store, &p, &changed).await;
        let r = verify(&f, BackupSelection::One(f.id)).await;
        assert_eq!(r.verdict(), Verdict::Corrupt);
        assert!(
            r.findings
                .iter()
                .any(|x| x.what.contains("backup_manifest says")
                    && x.location.to_string() == "base/1/1259"),
            "{:#?}",
            r.findings
        );
    });
}

#[test]
fn missing_objects_and_file_set_differences() {
    block_on(async {
        let f = fixture(Some(("base/1/extra", b"x"))).await;
        let r = verify(&f, BackupSelection::One(f.id)).await;
        assert_eq!(r.verdict(), Verdict::Corrupt);
        assert!(r
            .findings
            .iter()
            .any(|x| x.location.to_string() == "base/1/extra"
                && x.what.contains("absent from the record")));

        let f = fixture(None).await;
        let mut bundle = f.small.clone();
        bundle.extend_from_slice(b"some other small file");
        f.store
            .delete(&bundle_path(&sha(&bundle)).unwrap())
            .await
            .unwrap();
        let r = verify(&f, BackupSelection::All).await;
        assert_eq!(r.verdict(), Verdict::Corrupt);
        assert!(r.findings.iter().any(|x| x.what.contains("missing")));
        assert!(r
            .findings
            .iter()
            .any(|x| x.location.to_string() == "PG_VERSION"));
    });
}

#[test]
fn tampered_manifest_and_unknown_id() {
    block_on(async {
        let f = fixture(None).await;
        let path = record_path(f.id).unwrap();
        let raw = envelope::open("r", &f.store.get_bytes(&path).await.unwrap(), None).unwrap();
        let mut rec = BackupRecord::from_json(&path, &raw).unwrap();
        rec.backup_manifest = rec
            .backup_manifest
            .replacen("\"Size\": 3", "\"Size\": 4", 1);
        put(&f.store, &path, &rec.to_json().unwrap()).await;
        let r = verify(&f, BackupSelection::One(f.id)).await;
        assert_eq!(r.verdict(), Verdict::Corrupt);
        assert!(
            r.findings
                .iter()
                .any(|x| x.what.contains("checksum mismatch")),
            "{:#?}",
            r.findings
        );

        let other: BackupId = "20261123T130000Z".parse().unwrap();
        let e = BackupVerifier::new(
            f.store.clone(),
            None,
            BackupSelection::One(other),
            BackupVerifyOptions::default(),
        )
        .verify()
        .await
        .unwrap_err();
        assert!(e.is_not_found(), "{e}");
    });
}

/// The real PostgreSQL 15 manifests of the fuzz seed corpus (CRC-32C, SHA-256, no checksum
/// with Encoded-Path, a tablespace) parse, checksum included; a flipped bit anywhere before
/// the checksum line makes the SHA-256 check fail.
#[test]
fn real_pg15_manifests_parse_and_their_sha256_covers_them() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/manifest");
    let mut n = 0;
    for name in [
        "seed-pg15-crc32c",
        "seed-pg15-sha256",
        "seed-pg15-encoded-path-no-checksum",
    ] {
        let raw = std::fs::read(dir.join(name)).unwrap();
        let m = &raw[1..];
        let parsed =
            carta_dr_core::manifest::parse_manifest(m).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(parsed.files.len() > 900, "{name}");
        assert!(parsed
            .files
            .iter()
            .any(|f| f.path_str().starts_with("pg_tblspc/")));
        let covered = m.len() - m.iter().rev().skip(1).position(|b| *b == b'\n').unwrap() - 1;
        for i in (0..covered).step_by(401) {
            let mut t = m.to_vec();
            t[i] ^= 1 << (i % 8);
            assert!(
                carta_dr_core::manifest::parse_manifest(&t).is_err(),
                "{name}: flip at {i} accepted"
            );
            n += 1;
        }
    }
    eprintln!("{n} flips in real manifests, all rejected");
}

#[test]
fn encrypted_repository() {
    block_on(async {
        let f = fixture(None).await;
        let key = Arc::new(carta_dr_core::envelope::Key::from_bytes([9; 32]));
        let opts = EnvelopeOptions::zstd(1).with_key(key.clone());
        for p in f.store.list_paths(None).await.unwrap() {
            let raw =
                envelope::open(p.as_str(), &f.store.get_bytes(&p).await.unwrap(), None).unwrap();
            let sealed = seal(&opts, &raw).unwrap();
            f.store
                .put(&p, Bytes::from(sealed), Default::default())
                .await
                .unwrap();
        }
        let run = |k: Option<Arc<carta_dr_core::envelope::Key>>| {
            BackupVerifier::new(
                f.store.clone(),
                k,
                BackupSelection::One(f.id),
                BackupVerifyOptions {
                    check_wal: false,
                    ..Default::default()
                },
            )
        };
        let r = run(Some(key.clone())).verify().await.unwrap();
        assert_eq!(r.verdict(), Verdict::Clean, "{:#?}", r.findings);

        // One flipped bit in an encrypted chunk: authentication fails, object and file named.
        let p = chunk_path(&sha(&f.big[..1 << 20])).unwrap();
        let mut b = f.store.get_bytes(&p).await.unwrap().to_vec();
        let n = b.len();
        b[n / 2] ^= 1;
        f.store
            .put(&p, Bytes::from(b), Default::default())
            .await
            .unwrap();
        let r = run(Some(key)).verify().await.unwrap();
        assert_eq!(r.verdict(), Verdict::Corrupt);
        assert!(r
            .findings
            .iter()
            .any(|x| x.location.to_string().starts_with(p.as_str())));
        assert!(r
            .findings
            .iter()
            .any(|x| x.location.to_string().starts_with("base/1/1259")));

        // The wrong key is refused on the record.
        let other = Arc::new(carta_dr_core::envelope::Key::from_bytes([1; 32]));
        let r = run(Some(other)).verify().await.unwrap();
        assert_eq!(r.verdict(), Verdict::Corrupt);
        assert!(
            r.findings[0].what.contains("wrong key"),
            "{:#?}",
            r.findings
        );
    });
}
