//! `carta-dr verify --restore-test` of a backup with a tablespace outside the data directory,
//! on a real PostgreSQL 15 with data checksums: the tablespace is restored under the scratch
//! directory, its relation files are page-checked, the row counts of the table it holds are
//! compared (a wrong recorded count for that table is an error naming it), a flipped bit in
//! one of its pages is named by file and block, the original tablespace directory is not
//! touched, and nothing is left behind.

mod backup_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use backup_support::{count_files, Env};
use carta_dr_core::catalog::{chunk_path, record_path, Content};
use carta_dr_core::envelope::EnvelopeOptions;
use carta_dr_postgres::replication::Repo;
use carta_dr_testkit::{scratch_dir, test_user, ScratchDir};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Every entry under `dir` with its size and modification time, to show it was not touched.
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .expect("read tablespace dir")
            .flatten()
        {
            let m = std::fs::symlink_metadata(e.path()).expect("stat");
            if m.is_dir() {
                stack.push(e.path());
            }
            out.insert(e.path(), (m.len(), m.mtime(), m.mtime_nsec()));
        }
    }
    out
}

fn run_test(env: &Env, work: &ScratchDir, extra: &[&str]) -> (Output, Value) {
    let dir = work.path().display().to_string();
    let mut args = vec!["verify", "--restore-test"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--work-dir", &dir, "--json"]);
    let out = env.try_carta(&args);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify --restore-test printed no JSON ({e}), status {}:\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, json)
}

/// The scratch directory (relocated tablespaces included) is gone and no server runs on it.
fn assert_torn_down(work: &ScratchDir) {
    assert_eq!(
        count_files(work.path()),
        0,
        "the scratch cluster's files are left in {}",
        work.path().display()
    );
    let left: Vec<_> = std::fs::read_dir(work.path())
        .expect("read work dir")
        .filter_map(|e| e.ok())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    let procs = String::from_utf8_lossy(&ps.stdout);
    let wd = work.path().display().to_string();
    assert!(
        !procs.lines().any(|l| l.contains(&wd)),
        "a process still runs in {wd}"
    );
}

fn findings(json: &Value, severity: &str) -> Vec<Value> {
    json["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["severity"] == severity)
        .cloned()
        .collect()
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).expect("chown");
    if p.is_dir() {
        for e in std::fs::read_dir(p).expect("read dir").flatten() {
            chown_tree(&e.path(), uid, gid);
        }
    }
}

/// Rewrites the recorded row count of `db`.`table` beside backup `id`.
fn set_recorded_count(env: &Env, id: &str, db: &str, table: &str, rows: i64) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = carta_dr_backends::open(&env.repo).expect("open store");
        let repo = Repo::new(store.clone(), EnvelopeOptions::zstd(3));
        let path = carta_dr_postgres::restore_test::rowcounts::rowcounts_path(
            id.parse().expect("backup id"),
        )
        .expect("path");
        let raw = repo
            .get(&path)
            .await
            .expect("row counts recorded with the backup");
        let mut v: Value = serde_json::from_slice(&raw).expect("row counts JSON");
        let entry = v["databases"]
            .as_array_mut()
            .expect("databases")
            .iter_mut()
            .find(|d| d["database"] == db)
            .unwrap_or_else(|| panic!("{db} not counted"))["tables"]
            .as_array_mut()
            .expect("tables")
            .iter_mut()
            .find(|t| t["table"] == table)
            .unwrap_or_else(|| panic!("{table} not counted"));
        entry["rows"] = rows.into();
        store.delete(&path).await.expect("delete");
        repo.put_create(&path, serde_json::to_vec(&v).expect("encode").into())
            .await
            .expect("put");
    });
    if let (Some(u), Some(dir)) = (test_user(), env.repo_dir.as_ref()) {
        chown_tree(dir.path(), u.uid, u.gid);
    }
}

/// Rewrites the stored backup so that `rel` (a relation file stored in chunks) carries one
/// flipped bit at `offset`, with every chunk hash and file CRC recomputed: damage that only
/// the page checksum can reveal.
fn flip_bit_in_backup(env: &Env, id: &str, rel: &str, offset: usize) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = carta_dr_backends::open(&env.repo).expect("open store");
        let repo = Repo::new(store.clone(), EnvelopeOptions::zstd(3));
        let bid = id.parse().expect("backup id");
        let mut rec = repo.load(bid).await.expect("load record");
        let file = rec
            .files
            .iter_mut()
            .find(|f| f.path == rel)
            .unwrap_or_else(|| panic!("{rel} not in the backup"));
        let Content::Chunks { chunks } = &mut file.content else {
            panic!("{rel} is not stored in chunks");
        };
        let mut whole = Vec::new();
        let mut pos = 0usize;
        for c in chunks.iter_mut() {
            let mut raw = repo
                .get(&chunk_path(&c.sha256).expect("chunk path"))
                .await
                .expect("get chunk")
                .to_vec();
            if (pos..pos + raw.len()).contains(&offset) {
                raw[offset - pos] ^= 0x04;
                c.sha256 = hex::encode(Sha256::digest(&raw));
                repo.put_create(&chunk_path(&c.sha256).expect("path"), raw.clone().into())
                    .await
                    .expect("put chunk");
            }
            pos += raw.len();
            whole.extend_from_slice(&raw);
        }
        file.crc32c = crc32c::crc32c(&whole);
        let path = record_path(bid).expect("record path");
        store.delete(&path).await.expect("delete record");
        repo.save(&rec).await.expect("save record");
    });
    if let (Some(u), Some(dir)) = (test_user(), env.repo_dir.as_ref()) {
        chown_tree(dir.path(), u.uid, u.gid);
    }
}

#[test]
fn backup_with_a_tablespace_passes_and_leaves_the_original_untouched() {
    let env = Env::local("rt-tblspc");
    let orig = scratch_dir("rt-tblspc-orig");
    let orig_loc = orig.path().canonicalize().expect("tablespace dir");
    env.pg.psql(
        "postgres",
        &format!("CREATE TABLESPACE ts LOCATION '{}'", orig_loc.display()),
    );
    // A table and its index in the tablespace (several MiB: stored in chunks), one outside it.
    env.pg.psql(
        "postgres",
        "CREATE TABLE tsitems (id int PRIMARY KEY USING INDEX TABLESPACE ts, v text) TABLESPACE ts;
         INSERT INTO tsitems SELECT g, md5(g::text) FROM generate_series(1, 100000) g;
         CREATE TABLE here (id int);
         INSERT INTO here SELECT generate_series(1, 1000);
         VACUUM (FREEZE, ANALYZE);
         CHECKPOINT;",
    );
    let rel = env
        .pg
        .psql("postgres", "SELECT pg_relation_filepath('tsitems')");
    assert!(rel.starts_with("pg_tblspc/"), "{rel}");
    let rec = env.backup();
    let id = rec["id"].as_str().expect("id").to_string();
    env.archive_now();
    // The source stops here so its tablespace directory stays still: every later change in it
    // comes from the restore test.
    let mut env = env;
    env.pg.stop();
    let before = listing(&orig_loc);
    assert!(
        before
            .keys()
            .any(|p| p.ends_with(&rel[rel.find("PG_15_").expect("PG_15_")..])),
        "{rel} is not in the tablespace directory: {before:?}"
    );

    let work = scratch_dir("rt-tblspc-work");
    let (out, json) = run_test(&env, &work, &[&id]);
    println!("{json:#}");
    assert!(
        out.status.success(),
        "backup with a tablespace failed the restore test ({}):\n{json:#}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json["verdict"], "clean");
    assert_eq!(json["row_counts"], "exact", "{json:#}");
    assert!(
        findings(&json, "error").is_empty() && findings(&json, "warning").is_empty(),
        "{json:#}"
    );
    let checked = json["checked"].to_string();
    assert!(
        checked.contains("row counts of 2 tables compared (exact)"),
        "{checked}"
    );
    assert!(
        checked.contains(&format!(
            "1 tablespace(s) restored under {}",
            work.path().canonicalize().expect("work dir").display()
        )),
        "{checked}"
    );
    // The tablespace's heap, its free space and visibility maps, and the index are checked.
    let pages = json["checked"]
        .as_array()
        .expect("checked")
        .iter()
        .filter_map(Value::as_str)
        .find(|c| c.starts_with("page checksums:"))
        .unwrap_or_else(|| panic!("no page checksum pass: {checked}"));
    let in_ts: u64 = pages
        .split_once(" (")
        .and_then(|(_, r)| r.split_once(" in tablespaces)"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no tablespace file count: {pages}"));
    assert!(in_ts >= 3, "{pages}");
    assert!(!pages.contains(" 0 pages verified"), "{pages}");
    assert!(pages.ends_with(" 0 failed"), "{pages}");
    assert!(checked.contains("pg_amcheck: heap and btree"), "{checked}");
    assert_torn_down(&work);
    assert_eq!(
        listing(&orig_loc),
        before,
        "the restore test modified the original tablespace"
    );

    // The count recorded for the table in the tablespace is compared: one off is an error.
    set_recorded_count(&env, &id, "postgres", "tsitems", 99_999);
    let (out, json) = run_test(&env, &work, &[&id, "--sample-rows", "0"]);
    assert_eq!(out.status.code(), Some(5), "{json:#}");
    assert_eq!(json["row_counts"], "exact");
    let errors = findings(&json, "error");
    assert_eq!(errors.len(), 1, "{json:#}");
    assert_eq!(errors[0]["location"]["name"], "postgres: public.tsitems");
    assert_eq!(
        errors[0]["what"],
        "row count 100000 after restore, 99999 recorded"
    );
    assert_torn_down(&work);
    assert_eq!(
        listing(&orig_loc),
        before,
        "the restore test modified the original tablespace"
    );

    // A flipped bit in block 3 of the tablespace's heap is found by the page checksum pass and
    // named by its recorded path.
    flip_bit_in_backup(&env, &id, &rel, 3 * 8192 + 5000);
    let (out, json) = run_test(&env, &work, &[&id, "--sample-rows", "0"]);
    assert_eq!(out.status.code(), Some(5), "{json:#}");
    assert_eq!(json["verdict"], "corrupt");
    let page_errors: Vec<Value> = findings(&json, "error")
        .into_iter()
        .filter(|f| f["location"]["kind"] == "file")
        .collect();
    assert_eq!(page_errors.len(), 1, "{json:#}");
    assert_eq!(page_errors[0]["location"]["path"], rel.as_str());
    assert_eq!(page_errors[0]["location"]["block"], 3);
    assert!(
        page_errors[0]["what"]
            .as_str()
            .is_some_and(|w| w.contains("page checksum mismatch")),
        "{json:#}"
    );
    assert_torn_down(&work);
    assert_eq!(
        listing(&orig_loc),
        before,
        "the restore test modified the original tablespace"
    );
    drop(env);
    drop(orig);
}
