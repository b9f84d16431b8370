//! `carta-dr verify --restore-test` against PostgreSQL 15: a clean backup passes every check
//! with exact row counts; a page with a flipped bit is named by file and block; a failing SQL
//! assertion is named; a dump restores and its counts compare; nothing is left behind.

mod backup_support;

use std::path::Path;
use std::process::Output;

use backup_support::{count_files, Env};
use carta_dr_core::catalog::{chunk_path, record_path, Content};
use carta_dr_core::envelope::EnvelopeOptions;
use carta_dr_core::StoreExt;
use carta_dr_postgres::replication::Repo;
use carta_dr_testkit::{scratch_dir, test_user, ScratchDir};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Data in two databases: a table with a primary key and TOASTed values, one without a key,
/// and an unlogged table (left out of base backup counts).
fn fill(env: &Env) {
    env.pg.psql("postgres", "CREATE DATABASE shop");
    env.pg.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text, blob text);
         INSERT INTO items SELECT g, md5(g::text),
                CASE WHEN g % 500 = 0 THEN
                  (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 300) i)
                END
           FROM generate_series(1, 20000) g;
         CREATE TABLE nokey (v int);
         INSERT INTO nokey SELECT g FROM generate_series(1, 1234) g;
         CREATE UNLOGGED TABLE scratch (v int);
         INSERT INTO scratch VALUES (1), (2);
         VACUUM (FREEZE, ANALYZE);",
    );
    env.pg.psql(
        "postgres",
        "CREATE TABLE t0 (id int PRIMARY KEY, note text);
         INSERT INTO t0 SELECT g, 'n' || g FROM generate_series(1, 100) g;
         CHECKPOINT;",
    );
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

/// The scratch directory is gone and no server runs on it.
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

fn phases(json: &Value) -> Vec<String> {
    json["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| {
            assert!(p["duration_ms"].is_u64(), "{p}");
            p["name"].as_str().expect("name").to_string()
        })
        .collect()
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

#[test]
fn clean_backup_passes_every_check_with_exact_row_counts() {
    let env = Env::local("rt-clean");
    fill(&env);
    let rec = env.backup();
    let id = rec["id"].as_str().expect("id").to_string();
    env.archive_now();
    let work = scratch_dir("rt-clean-work");
    let asserts = work.path().join("asserts.sql");
    std::fs::write(
        &asserts,
        "-- database: shop\n\
         SELECT count(*) = 20000 FROM items;\n\
         SELECT bool_and(length(blob) = 9600) FROM items WHERE blob IS NOT NULL;\n\
         -- database: postgres\n\
         SELECT exists (SELECT 1 FROM t0 WHERE note = 'n42');\n",
    )
    .expect("write assertions");
    let asserts_s = asserts.display().to_string();
    let (out, json) = run_test(&env, &work, &[&id, "--assert", &asserts_s]);
    std::fs::remove_file(&asserts).expect("remove assertions");
    println!("{json:#}");
    assert!(
        out.status.success(),
        "clean backup failed the restore test ({}):\n{}\n{}",
        out.status,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json["verdict"], "clean");
    assert_eq!(json["row_counts"], "exact", "{json:#}");
    assert!(
        findings(&json, "error").is_empty() && findings(&json, "warning").is_empty(),
        "{json:#}"
    );
    assert_eq!(
        phases(&json),
        [
            "restore",
            "page_checksums",
            "start",
            "row_counts",
            "pg_amcheck",
            "assertions",
            "spot_check",
            "teardown"
        ]
    );
    let checked = json["checked"].to_string();
    // Recorded: shop.items, shop.nokey, postgres.t0 (the unlogged table is left out).
    assert!(
        checked.contains("row counts of 3 tables compared (exact)"),
        "{checked}"
    );
    assert!(checked.contains("pg_amcheck: heap and btree"), "{checked}");
    assert!(checked.contains("SQL assertions: 3 of 3 true"), "{checked}");
    assert!(checked.contains("page checksums:"), "{checked}");
    assert!(!checked.contains(" 0 pages verified"), "{checked}");
    assert!(
        checked.contains("re-read through their primary key"),
        "{checked}"
    );
    assert!(!checked.contains("spot check: 0 sampled"), "{checked}");
    assert_torn_down(&work);

    // The newest backup is the default subject, and the human form prints every phase.
    let out = env.try_carta(&[
        "verify",
        "--restore-test",
        "--work-dir",
        &work.path().display().to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("restore test of backup {id}")),
        "{text}"
    );
    for p in [
        "restore",
        "page_checksums",
        "start",
        "pg_amcheck",
        "teardown",
    ] {
        assert!(text.contains(&format!("    {p} ")), "{p} missing:\n{text}");
    }
    assert!(text.contains("verdict: clean"), "{text}");
    assert_torn_down(&work);
}

/// Rewrites the stored backup so that `rel` (a relation file stored in chunks) carries one
/// flipped bit at `offset`, with every chunk hash and file CRC recomputed: corruption that
/// came in with the source's page, which only the page checksum can reveal.
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
        assert!(store.exists(&path).await.expect("exists"));
    });
    // The files the rewrite created belong to this process: hand them to the test user.
    if let (Some(u), Some(dir)) = (test_user(), env.repo_dir.as_ref()) {
        chown_tree(dir.path(), u.uid, u.gid);
    }
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).expect("chown");
    if p.is_dir() {
        for e in std::fs::read_dir(p).expect("read dir").flatten() {
            chown_tree(&e.path(), uid, gid);
        }
    }
}

#[test]
fn flipped_bit_in_a_data_page_is_reported_with_file_and_block() {
    let env = Env::local("rt-flip");
    fill(&env);
    let rel = env.pg.psql("shop", "SELECT pg_relation_filepath('items')");
    let rec = env.backup();
    let id = rec["id"].as_str().expect("id").to_string();
    env.archive_now();
    // Block 3 of the heap, in the middle of its tuples.
    flip_bit_in_backup(&env, &id, &rel, 3 * 8192 + 5000);
    let work = scratch_dir("rt-flip-work");
    let (out, json) = run_test(&env, &work, &[&id]);
    println!("{json:#}");
    assert_eq!(
        out.status.code(),
        Some(5),
        "{json:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json["verdict"], "corrupt");
    let errors = findings(&json, "error");
    let page = errors
        .iter()
        .find(|f| {
            f["what"]
                .as_str()
                .is_some_and(|w| w.contains("page checksum mismatch"))
        })
        .unwrap_or_else(|| panic!("no page checksum finding: {json:#}"));
    assert_eq!(page["location"]["kind"], "file");
    assert_eq!(page["location"]["path"], rel.as_str());
    assert_eq!(page["location"]["block"], 3);
    assert_eq!(page["location"]["offset"], 3 * 8192);
    // Only that page: every other error is about the same relation or the same block.
    let page_errors = errors
        .iter()
        .filter(|f| f["location"]["kind"] == "file")
        .count();
    assert_eq!(page_errors, 1, "{json:#}");
    assert_torn_down(&work);
}

#[test]
fn failing_sql_assertion_exits_5_and_names_the_query() {
    let env = Env::local("rt-assert");
    fill(&env);
    let rec = env.backup();
    let id = rec["id"].as_str().expect("id").to_string();
    env.archive_now();
    let work = scratch_dir("rt-assert-work");
    let asserts = work.path().join("asserts.sql");
    std::fs::write(
        &asserts,
        "-- database: shop\n\
         SELECT count(*) = 20000 FROM items;\n\
         SELECT count(*) = 99 FROM nokey;\n\
         SELECT no_such_column FROM items;\n",
    )
    .expect("write assertions");
    let asserts_s = asserts.display().to_string();
    let (out, json) = run_test(
        &env,
        &work,
        &[&id, "--assert", &asserts_s, "--sample-rows", "0"],
    );
    std::fs::remove_file(&asserts).expect("remove assertions");
    assert_eq!(out.status.code(), Some(5), "{json:#}");
    let errors = findings(&json, "error");
    let whats: Vec<&str> = errors.iter().filter_map(|f| f["what"].as_str()).collect();
    assert_eq!(whats.len(), 2, "{json:#}");
    assert!(
        whats
            .iter()
            .any(|w| w.contains("returned false") && w.contains("SELECT count(*) = 99 FROM nokey")),
        "{whats:?}"
    );
    assert!(
        whats
            .iter()
            .any(|w| w.contains("with an error") && w.contains("SELECT no_such_column FROM items")),
        "{whats:?}"
    );
    assert!(json["checked"]
        .to_string()
        .contains("SQL assertions: 1 of 3 true"));
    // Everything else was clean: the counts compared exactly.
    assert_eq!(json["row_counts"], "exact");
    assert_torn_down(&work);
}

#[test]
fn dump_restore_test_passes_and_compares_counts() {
    let env = Env::local("rt-dump");
    fill(&env);
    let out = env.carta(&[
        "dump",
        "--db",
        "shop",
        "--pg",
        &env.pg_conninfo(),
        "--pg-bin",
        &carta_dr_testkit::pg_bin_dir().display().to_string(),
        "--json",
    ]);
    let rec: Value = serde_json::from_str(&out).expect("dump --json");
    let id = rec["id"].as_str().expect("dump id").to_string();
    assert!(id.starts_with("shop/"), "{id}");
    let work = scratch_dir("rt-dump-work");
    let (out, json) = run_test(&env, &work, &[&id]);
    assert!(
        out.status.success(),
        "{json:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json["verdict"], "clean");
    assert_eq!(json["row_counts"], "exact");
    assert_eq!(json["subject"], format!("restore test of dump {id}"));
    let checked = json["checked"].to_string();
    // The dump counts every table of shop, the unlogged one included.
    assert!(
        checked.contains("row counts of 3 tables compared (exact)"),
        "{checked}"
    );
    assert!(checked.contains("pg_amcheck: heap and btree"), "{checked}");
    assert_eq!(
        phases(&json),
        [
            "start",
            "restore",
            "row_counts",
            "pg_amcheck",
            "assertions",
            "spot_check",
            "teardown"
        ]
    );
    assert_torn_down(&work);
}

#[test]
fn ctrl_c_stops_the_scratch_cluster_and_removes_its_directory() {
    let env = Env::local("rt-sigint");
    fill(&env);
    env.backup();
    env.archive_now();
    let work = scratch_dir("rt-sigint-work");
    let asserts = work.path().join("slow.sql");
    std::fs::write(&asserts, "SELECT pg_sleep(600) IS NOT NULL;\n").expect("write assertions");
    let asserts_s = asserts.display().to_string();
    let dir = work.path().display().to_string();
    let mut child = env
        .carta_cmd(&[
            "verify",
            "--restore-test",
            "--assert",
            &asserts_s,
            "--work-dir",
            &dir,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start verify --restore-test");
    // Wait until the scratch server runs the slow assertion.
    let pid_file = || {
        std::fs::read_dir(work.path())
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("data/postmaster.pid"))
            .find(|p| p.exists())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let port = loop {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "verify --restore-test ended before it was interrupted"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the slow assertion never ran"
        );
        let port = pid_file()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| t.lines().nth(3).and_then(|l| l.trim().parse::<u16>().ok()));
        if let Some(port) = port {
            let out = std::process::Command::new(carta_dr_testkit::pg_bin_dir().join("psql"))
                .args(["-XAtq", "-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["-U", "postgres", "-d", "postgres", "-c"])
                .arg("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(600)%'")
                .output()
                .expect("psql");
            if String::from_utf8_lossy(&out.stdout).trim() == "1" {
                break port;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0);
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("interrupted"), "{stderr}");
    std::fs::remove_file(&asserts).expect("remove assertions");
    assert_torn_down(&work);
    // Nothing answers on the scratch server's port any more.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the scratch server still listens on {port}"
    );
}

#[test]
fn restore_test_options_without_restore_test_are_usage_errors() {
    let repo = scratch_dir("rt-usage-repo");
    let url = format!("file://{}", repo.path().display());
    for args in [
        &["verify", "--wal", "--assert", "a.sql"][..],
        &["verify", "--sample-rows", "5", "--wal"][..],
        &["verify", "--restore-test", "not-an-id"][..],
    ] {
        let out = std::process::Command::new(backup_support::bin())
            .arg("--repo")
            .arg(&url)
            .args(args)
            .output()
            .expect("run carta-dr");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // An unknown backup or dump is "not found" (1).
    for id in ["20200101T000000Z", "shop/20200101T000000Z"] {
        let out = std::process::Command::new(backup_support::bin())
            .arg("--repo")
            .arg(&url)
            .args(["verify", "--restore-test", id])
            .output()
            .expect("run carta-dr");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Rewrites the row counts recorded beside backup `id` with `change`.
fn rewrite_row_counts(env: &Env, id: &str, change: impl FnOnce(&mut Value)) {
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
        change(&mut v);
        store.delete(&path).await.expect("delete");
        repo.put_create(&path, serde_json::to_vec(&v).expect("encode").into())
            .await
            .expect("put");
    });
    if let (Some(u), Some(dir)) = (test_user(), env.repo_dir.as_ref()) {
        chown_tree(dir.path(), u.uid, u.gid);
    }
}

fn set_items_count(v: &mut Value, rows: i64) {
    let shop = v["databases"]
        .as_array_mut()
        .expect("databases")
        .iter_mut()
        .find(|d| d["database"] == "shop")
        .expect("shop counted");
    let items = shop["tables"]
        .as_array_mut()
        .expect("tables")
        .iter_mut()
        .find(|t| t["table"] == "items")
        .expect("items counted");
    items["rows"] = rows.into();
}

#[test]
fn row_count_difference_is_an_error_unless_a_concurrent_commit_explains_it() {
    let env = Env::local("rt-counts");
    fill(&env);
    let rec = env.backup();
    let id = rec["id"].as_str().expect("id").to_string();
    env.archive_now();
    let work = scratch_dir("rt-counts-work");

    // Recorded 19,999 rows where the restore has 20,000: with no concurrent commit, an error.
    rewrite_row_counts(&env, &id, |v| set_items_count(v, 19_999));
    let (out, json) = run_test(&env, &work, &[&id, "--sample-rows", "0"]);
    assert_eq!(out.status.code(), Some(5), "{json:#}");
    assert_eq!(json["row_counts"], "exact");
    let errors = findings(&json, "error");
    assert_eq!(errors.len(), 1, "{json:#}");
    assert_eq!(errors[0]["location"]["name"], "shop: public.items");
    assert_eq!(
        errors[0]["what"],
        "row count 20000 after restore, 19999 recorded"
    );
    assert_torn_down(&work);

    // The same difference, but the counting snapshot claims not to have seen transactions the
    // restore holds (as when they commit while the counts are taken): only a warning.
    rewrite_row_counts(&env, &id, |v| {
        for d in v["databases"].as_array_mut().expect("databases") {
            d["snapshot"] = "3:3:".into();
        }
    });
    let (out, json) = run_test(&env, &work, &[&id, "--sample-rows", "0"]);
    assert!(out.status.success(), "{json:#}");
    assert_eq!(json["row_counts"], "approximate");
    assert!(findings(&json, "error").is_empty(), "{json:#}");
    let warnings = findings(&json, "warning");
    assert_eq!(warnings.len(), 1, "{json:#}");
    assert_eq!(warnings[0]["location"]["name"], "shop: public.items");
    assert!(findings(&json, "info").iter().any(|f| f["what"]
        .as_str()
        .is_some_and(|w| w.contains("transactions committed while"))));
    assert_torn_down(&work);
}
