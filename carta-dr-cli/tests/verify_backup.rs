//! `carta-dr verify ID` and `verify --all` on base backups of a real PostgreSQL 15 in a local
//! repository: a clean backup exits 0, a flipped bit in a stored chunk exits 5 naming the
//! object and the file, a missing WAL segment exits 5 naming the segment, an unreachable store
//! exits 4, an unknown ID 1, a malformed one 2; `verify --wal` over the repository's archive
//! exits 0 when clean and 5 naming a stored segment with a flipped bit.

mod backup_support;

use std::path::{Path, PathBuf};
use std::process::Output;

use backup_support::*;
use carta_dr_core::catalog::{chunk_path, record_path, BackupRecord, Content};
use carta_dr_core::{BackupId, StorePath};

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The record of backup `id`, read straight from the repository directory.
pub fn read_record(repo: &Path, id: BackupId) -> BackupRecord {
    let path = record_path(id).unwrap();
    let sealed = std::fs::read(repo.join(path.as_str())).unwrap();
    let raw = carta_dr_core::envelope::open(path.as_str(), &sealed, None).unwrap();
    BackupRecord::from_json(&path, &raw).unwrap()
}

fn object_file(repo: &Path, p: &StorePath) -> PathBuf {
    repo.join(p.as_str())
}

#[test]
fn verify_backup_exit_statuses_and_locations() {
    let env = Env::local("verify-backup");
    env.pg.psql(
        "postgres",
        "create table big as select g, md5(g::text) as h from generate_series(1, 200000) g;
         checkpoint",
    );
    let first = env.backup();
    let id: BackupId = first["id"].as_str().unwrap().parse().unwrap();
    env.pg.psql(
        "postgres",
        "insert into big select g, 'x' from generate_series(1, 1000) g",
    );
    let second = env.backup();
    let id2: BackupId = second["id"].as_str().unwrap().parse().unwrap();
    let repo = env.repo_dir.as_ref().unwrap().path().to_path_buf();

    // Clean: 0, in text and JSON.
    let ok = env.try_carta(&["verify", &id.to_string()]);
    assert_eq!(ok.status.code(), Some(0), "clean backup: {}", text(&ok));
    let t = text(&ok);
    assert!(t.contains("verdict: clean"), "{t}");
    assert!(t.contains("SHA-256 verified"), "{t}");
    assert!(t.contains("records"), "the WAL range was read: {t}");
    let all = env.try_carta(&["verify", "--all", "--json"]);
    assert_eq!(all.status.code(), Some(0), "clean --all: {}", text(&all));
    let v: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(v["verdict"], "clean");
    assert!(
        v["checked"].to_string().contains("WAL archive from"),
        "--all checks the archive's continuity: {v}"
    );

    // One bit flipped in the middle of a chunk of the largest file.
    let rec = read_record(&repo, id);
    let f = rec
        .files
        .iter()
        .filter(|f| matches!(f.content, Content::Chunks { .. }))
        .max_by_key(|f| f.size)
        .expect("a chunked file");
    let Content::Chunks { chunks } = &f.content else {
        unreachable!()
    };
    let obj = chunk_path(&chunks[0].sha256).unwrap();
    let file = object_file(&repo, &obj);
    let clean = std::fs::read(&file).unwrap();
    let mut bad = clean.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x08;
    std::fs::write(&file, &bad).unwrap();
    let out = env.try_carta(&["verify", &id.to_string()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(5), "corrupt chunk: {t}");
    assert!(t.contains(obj.as_str()), "names the object: {t}");
    assert!(t.contains(&f.path), "names the file {}: {t}", f.path);
    assert!(t.contains("CORRUPT"), "{t}");
    // The chunk is shared with the second backup: --all reports it too, and checks it once.
    let out = env.try_carta(&["verify", "--all", "--json"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let object_findings = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["location"]["path"] == obj.as_str())
        .count();
    assert_eq!(object_findings, 1, "one finding for the shared object: {v}");
    std::fs::write(&file, &clean).unwrap();
    let ok = env.try_carta(&["verify", &id2.to_string()]);
    assert_eq!(ok.status.code(), Some(0), "repaired: {}", text(&ok));

    // A WAL segment the backup needs, removed.
    let seg = carta_dr_core::WalSegmentName::containing(
        rec.timeline,
        rec.start_lsn,
        carta_dr_core::WalSegmentSize::new(rec.wal_segment_size).unwrap(),
    );
    let wal = object_file(
        &repo,
        &carta_dr_core::archive::path_of(&carta_dr_core::WalFileName::Segment(seg)).unwrap(),
    );
    let saved = std::fs::read(&wal).unwrap();
    std::fs::remove_file(&wal).unwrap();
    let out = env.try_carta(&["verify", &id.to_string()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(5), "missing WAL: {t}");
    assert!(t.contains(&seg.to_string()) && t.contains("missing"), "{t}");
    std::fs::write(&wal, &saved).unwrap();

    // The repository's WAL archive, record by record (`verify --wal`): clean, then one bit
    // flipped in the middle of that stored segment is reported with its name.
    let ok = env.try_carta(&["verify", "--wal"]);
    assert_eq!(ok.status.code(), Some(0), "clean archive: {}", text(&ok));
    let mut bad = saved.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x10;
    std::fs::write(&wal, &bad).unwrap();
    let out = env.try_carta(&["verify", "--wal"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(5), "corrupt archived segment: {t}");
    assert!(t.contains(&seg.to_string()), "names the segment: {t}");
    std::fs::write(&wal, &saved).unwrap();

    // The outcome is recorded for the monitor.
    assert!(repo.join("status/verify.json").is_file());

    // Unknown ID: 1; malformed: 2; two forms at once: 2.
    let out = env.try_carta(&["verify", "20000101T000000Z"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = env.try_carta(&["verify", "not-an-id"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = env.try_carta(&["verify", &id.to_string(), "--all"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // Unreachable store: 4 (an S3 endpoint where nothing listens).
    let mut c = std::process::Command::new(bin());
    c.args([
        "--repo",
        "s3://nobucket/repo?endpoint=http://127.0.0.1:9&region=us-east-1&allow_http=true",
        "verify",
        &id.to_string(),
    ])
    .env("AWS_ACCESS_KEY_ID", "x")
    .env("AWS_SECRET_ACCESS_KEY", "x");
    let out = c.output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(4), "unreachable store: {t}");
    assert!(t.contains("could not check"), "{t}");
}
