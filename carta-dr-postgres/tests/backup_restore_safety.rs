//! A crafted backup record cannot make restore write outside the target directory: `..`
//! components, absolute paths, and symlinks outside `pg_tblspc` are refused before anything
//! is written; a chunk whose bytes do not match its hash is refused too.

use std::sync::Arc;

use bytes::Bytes;
use carta_dr_backends::LocalStore;
use carta_dr_core::catalog::{
    chunk_path, BackupRecord, ChunkRef, Content, FileKind, FileRecord, FORMAT_VERSION,
};
use carta_dr_core::envelope::EnvelopeOptions;
use carta_dr_core::traits::BackupKind;
use carta_dr_core::{BackupId, Lsn, TimelineId};
use carta_dr_postgres::replication::Repo;
use carta_dr_postgres::restore::{restore, BackupSelector, RecoveryTarget, RestoreOptions};
use sha2::{Digest, Sha256};

fn record(id: BackupId, files: Vec<FileRecord>) -> BackupRecord {
    BackupRecord {
        format_version: FORMAT_VERSION,
        id,
        kind: BackupKind::Full,
        label: "crafted".into(),
        start_lsn: Lsn(0x2000028),
        stop_lsn: Lsn(0x2000138),
        timeline: TimelineId::ONE,
        stop_timeline: TimelineId::ONE,
        system_identifier: 1,
        pg_version: 150018,
        wal_segment_size: 16 << 20,
        start_time: 1,
        stop_time: 2,
        original_size: 0,
        stored_size: 0,
        tablespaces: vec![],
        files,
        backup_manifest: String::new(),
    }
}

fn file(path: &str, kind: FileKind, content: Content, size: u64, crc: u32) -> FileRecord {
    FileRecord {
        path: path.into(),
        kind,
        mode: 0o600,
        mtime: 0,
        size,
        crc32c: crc,
        link_target: (kind == FileKind::Symlink).then(|| "/tmp".to_string()),
        content,
    }
}

fn opts(dir: &std::path::Path) -> RestoreOptions {
    RestoreOptions {
        target_dir: dir.to_path_buf(),
        backup: BackupSelector::Latest,
        target: RecoveryTarget::Immediate,
        action: None,
        standby: false,
        delta: false,
        restore_command: None,
        extra_settings: vec![],
        concurrency: 2,
    }
}

async fn repo_with(
    files: Vec<FileRecord>,
    chunk: Option<(&[u8], &[u8])>,
) -> (tempfile::TempDir, Repo) {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new(
        Arc::new(LocalStore::open(dir.path()).unwrap()),
        EnvelopeOptions::default(),
    );
    // (bytes named by their hash, bytes actually stored)
    if let Some((named, stored)) = chunk {
        let h = hex::encode(Sha256::digest(named));
        repo.put_create(&chunk_path(&h).unwrap(), Bytes::copy_from_slice(stored))
            .await
            .unwrap();
    }
    repo.save(&record(
        BackupId::from_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)),
        files,
    ))
    .await
    .unwrap();
    (dir, repo)
}

#[tokio::test]
async fn backup_restore_refuses_paths_escaping_the_target() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    let crafted = [
        format!("../{}", victim.display()),
        "base/../../victim".to_string(),
        victim.display().to_string(),
        "a//b".to_string(),
    ];
    for p in crafted {
        let (_d, repo) = repo_with(vec![file(&p, FileKind::File, Content::None, 0, 0)], None).await;
        let target = outside.path().join("data");
        let err = restore(&repo, &opts(&target)).await.expect_err(&p);
        assert!(err.to_string().contains("path in backup"), "{p}: {err}");
        assert!(!victim.exists(), "{p} wrote outside the target");
        assert!(!target.join("recovery.signal").exists());
    }
}

#[tokio::test]
async fn backup_restore_refuses_symlinks_outside_pg_tblspc() {
    let outside = tempfile::tempdir().unwrap();
    let files = vec![
        file("base", FileKind::Dir, Content::None, 0, 0),
        file("base/evil", FileKind::Symlink, Content::None, 0, 0),
        file("base/evil/x", FileKind::File, Content::None, 0, 0),
    ];
    let (_d, repo) = repo_with(files, None).await;
    let target = outside.path().join("data");
    let err = restore(&repo, &opts(&target)).await.unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(!target.join("base/evil").exists());
}

fn chunked(data: &[u8], crc: u32) -> Vec<FileRecord> {
    let h = hex::encode(Sha256::digest(data));
    vec![file(
        "PG_VERSION",
        FileKind::File,
        Content::Chunks {
            chunks: vec![ChunkRef {
                sha256: h,
                len: data.len() as u64,
            }],
        },
        data.len() as u64,
        crc,
    )]
}

#[tokio::test]
async fn backup_restore_refuses_a_chunk_that_does_not_match_its_hash() {
    let good = b"the real bytes".to_vec();
    let evil = b"the evil bytes".to_vec();
    let (_d, repo) = repo_with(chunked(&good, crc32c::crc32c(&good)), Some((&good, &evil))).await;
    let target = tempfile::tempdir().unwrap();
    let err = restore(&repo, &opts(&target.path().join("d")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SHA-256"), "{err}");
    assert!(!target.path().join("d/PG_VERSION").exists());
}

#[tokio::test]
async fn backup_restore_refuses_a_file_whose_crc_differs_from_the_record() {
    let good = b"the real bytes".to_vec();
    let (_d, repo) = repo_with(
        chunked(&good, crc32c::crc32c(b"other bytes!!!")),
        Some((&good, &good)),
    )
    .await;
    let target = tempfile::tempdir().unwrap();
    let err = restore(&repo, &opts(&target.path().join("d")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CRC-32C"), "{err}");
    assert!(!target.path().join("d/PG_VERSION").exists());
}

#[tokio::test]
async fn backup_restore_refuses_a_non_empty_target_without_delta() {
    let (_d, repo) = repo_with(
        vec![file("PG_VERSION", FileKind::File, Content::None, 0, 0)],
        None,
    )
    .await;
    let target = tempfile::tempdir().unwrap();
    std::fs::write(target.path().join("keep"), b"x").unwrap();
    let err = restore(&repo, &opts(target.path())).await.unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    let mut o = opts(target.path());
    o.delta = true;
    let r = restore(&repo, &o).await.unwrap();
    assert_eq!(r.files_removed, 1);
    assert!(!target.path().join("keep").exists());
    assert!(target.path().join("PG_VERSION").exists());
}

#[tokio::test]
async fn backup_restore_writes_relation_segments_side_by_side() {
    // `16384` and `16384.1` are restored concurrently and must not share a temporary file.
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new(
        Arc::new(LocalStore::open(dir.path()).unwrap()),
        EnvelopeOptions::default(),
    );
    let mut files = vec![
        file("base", FileKind::Dir, Content::None, 0, 0),
        file("base/5", FileKind::Dir, Content::None, 0, 0),
    ];
    let mut want = Vec::new();
    for (name, fill) in [
        ("base/5/16384", 1u8),
        ("base/5/16384.1", 2),
        ("base/5/16384.2", 3),
    ] {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8 ^ fill).collect();
        let h = hex::encode(Sha256::digest(&data));
        repo.put_create(&chunk_path(&h).unwrap(), Bytes::from(data.clone()))
            .await
            .unwrap();
        files.push(file(
            name,
            FileKind::File,
            Content::Chunks {
                chunks: vec![ChunkRef {
                    sha256: h,
                    len: data.len() as u64,
                }],
            },
            data.len() as u64,
            crc32c::crc32c(&data),
        ));
        want.push((name, data));
    }
    repo.save(&record(BackupId::from_time(std::time::UNIX_EPOCH), files))
        .await
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    let d = target.path().join("d");
    let r = restore(&repo, &opts(&d)).await.unwrap();
    assert_eq!(r.files_written, 3);
    for (name, data) in want {
        assert_eq!(std::fs::read(d.join(name)).unwrap(), data, "{name}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(d.join("base/5"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty());
}
