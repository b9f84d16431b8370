//! Backup life cycle through the CLI on a real PostgreSQL 15, WAL archived by
//! `carta-dr wal-push`: content-incremental backups, a backup killed and run again, retention
//! that keeps the claimed recovery window restorable, a standby following the archive, and the
//! full cycle under pgbench load on the S3-compatible store.

mod backup_support;

use std::time::Duration;

use backup_support::*;
use carta_dr_testkit::{wait_for, S3Env};

fn pgbench_init(env: &Env, scale: &str) {
    let out = env
        .pg
        .command("pgbench")
        .args(["-i", "-q", "-s", scale])
        .output()
        .expect("pgbench -i");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn backup_incremental_stores_a_small_fraction() {
    let env = Env::local("bk-incr");
    pgbench_init(&env, "3");
    let first = env.backup();
    let orig1 = first["original_size"].as_u64().unwrap();
    let stored1 = first["stored_size"].as_u64().unwrap();
    // A small change: 0.1% of the accounts.
    env.pg.psql(
        "postgres",
        "update pgbench_accounts set abalance = abalance + 1 where aid % 1000 = 0; checkpoint",
    );
    let second = env.backup();
    let orig2 = second["original_size"].as_u64().unwrap();
    let stored2 = second["stored_size"].as_u64().unwrap();
    let fraction = stored2 as f64 / orig2 as f64;
    eprintln!(
        "first backup: {orig1} bytes read, {stored1} stored; second: {orig2} read, {stored2} stored ({:.2}%)",
        fraction * 100.0
    );
    assert_eq!(second["kind"], "incremental");
    assert!(
        fraction < 0.10,
        "second backup stored {:.1}% of its size",
        fraction * 100.0
    );

    // The second backup restores on its own.
    let want = table_digests(&env.pg, "postgres");
    env.archive_now();
    let restored = env.restore_and_start(
        "bk-incr-restore",
        &["--target", "immediate", "--target-action", "promote"],
    );
    wait_promoted(&restored);
    assert_eq!(table_digests(&restored, "postgres"), want);
}

#[test]
fn backup_killed_then_rerun_completes_and_verifies() {
    let env = Env::local("bk-kill");
    pgbench_init(&env, "5");
    let chunks = env.repo_dir.as_ref().unwrap().path().join("chunks");
    let mut child = env
        .carta_cmd(&["backup", "--pg", &env.pg_conninfo(), "--concurrency", "1"])
        .spawn()
        .expect("start backup");
    wait_for("some chunks stored", Duration::from_secs(120), || {
        count_files(&chunks) >= 8
    });
    // SIGKILL, no chance to clean up.
    let _ = child.kill();
    let _ = child.wait();
    let listed = env.carta(&["backup", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed["backups"].as_array().unwrap().len(),
        0,
        "a killed backup must not be listed"
    );
    let before = count_files(&chunks);

    let rec = env.backup();
    let orig = rec["original_size"].as_u64().unwrap();
    let stored = rec["stored_size"].as_u64().unwrap();
    eprintln!("re-run after kill: {before} chunks already stored; {orig} bytes read, {stored} newly stored");
    assert!(stored < orig, "the re-run stored everything again");
    let want = table_digests(&env.pg, "postgres");
    env.archive_now();
    let restored = env.restore_and_start(
        "bk-kill-restore",
        &["--target", "immediate", "--target-action", "promote"],
    );
    wait_promoted(&restored);
    assert_eq!(table_digests(&restored, "postgres"), want);
    amcheck(&restored);
}

#[test]
fn backup_expire_keeps_the_claimed_window_restorable() {
    let env = Env::local("bk-expire");
    env.pg.psql("postgres", "create table t (id int primary key, v text); insert into t select g, 'one' from generate_series(1, 20000) g");
    let b1 = env.backup();
    env.pg
        .psql("postgres", "update t set v = 'two' where id % 2 = 0");
    env.archive_now();
    let b2 = env.backup();
    let at_b2 = table_digests(&env.pg, "postgres");
    env.pg
        .psql("postgres", "update t set v = 'three' where id % 3 = 0");
    env.archive_now();
    let b3 = env.backup();
    env.archive_now();

    let out = env.carta(&[
        "expire",
        "--keep-full",
        "2",
        "--keep-newer-than",
        "0",
        "--gc-grace",
        "0",
        "--json",
    ]);
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["expired"], serde_json::json!([b1["id"]]));
    // Everything under the expired backup's prefix goes with it (the record and the restore
    // test's row counts); the retained backups keep theirs.
    let backups = env.repo_dir.as_ref().unwrap().path().join("backups");
    let b1_dir = backups.join(b1["id"].as_str().unwrap());
    assert_eq!(
        count_files(&b1_dir),
        0,
        "{} still holds objects",
        b1_dir.display()
    );
    assert!(backups
        .join(b2["id"].as_str().unwrap())
        .join("rowcounts.json")
        .is_file());
    assert!(
        !out["wal_removed"].as_array().unwrap().is_empty(),
        "WAL before the oldest retained backup stays"
    );
    // A second run finds nothing more to do.
    let again: serde_json::Value = serde_json::from_str(&env.carta(&[
        "expire",
        "--keep-full",
        "2",
        "--keep-newer-than",
        "0",
        "--gc-grace",
        "0",
        "--json",
    ]))
    .unwrap();
    assert_eq!(again["expired"], serde_json::json!([]));
    assert_eq!(again["objects_removed"], 0);

    let listed: serde_json::Value =
        serde_json::from_str(&env.carta(&["backup", "list", "--json"])).unwrap();
    let ids: Vec<_> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].clone())
        .collect();
    assert_eq!(ids, vec![b2["id"].clone(), b3["id"].clone()]);
    let window = &listed["pitr_window"];
    assert_eq!(window["earliest_backup"], b2["id"]);
    assert_eq!(window["earliest_lsn"], b2["stop_lsn"]);

    // The oldest point the window claims is restorable.
    let earliest = window["earliest_backup"].as_str().unwrap().to_string();
    let restored = env.restore_and_start(
        "bk-expire-restore",
        &[
            "--backup",
            &earliest,
            "--target",
            "immediate",
            "--target-action",
            "promote",
        ],
    );
    wait_promoted(&restored);
    assert_eq!(table_digests(&restored, "postgres"), at_b2);
}

#[test]
fn backup_standby_follows_the_primary_via_restore_command() {
    let env = Env::local("bk-standby");
    env.pg
        .psql("postgres", "create table t (id int primary key)");
    env.backup();
    let standby = env.restore_and_start("bk-standby-replica", &["--standby"]);
    standby.wait_until("standby up", Duration::from_secs(120), || {
        standby
            .try_psql("postgres", "select pg_is_in_recovery()")
            .ok()
            .as_deref()
            == Some("t")
    });
    for round in 1..=2 {
        env.pg
            .psql("postgres", &format!("insert into t values ({round})"));
        env.archive_now();
        standby.wait_until(
            &format!("row {round} replayed"),
            Duration::from_secs(120),
            || {
                standby.try_psql("postgres", "select count(*) from t").ok()
                    == Some(round.to_string())
            },
        );
    }
}

#[test]
fn backup_full_cycle_on_s3_under_load() {
    let s3 = S3Env::require();
    let env = Env::with_repo("bk-s3", s3.unique_url("bk-s3"), None);
    pgbench_init(&env, "3");
    let mut load = env
        .pg
        .command("pgbench")
        .args(["-c", "2", "-T", "15", "-n"])
        .spawn()
        .expect("pgbench");
    let rec = env.backup();
    assert!(rec["stored_size"].as_u64().unwrap() > 0);
    let _ = load.wait();
    let want = table_digests(&env.pg, "postgres");
    env.archive_now();
    let info = env.carta(&["backup", "info", "latest"]);
    assert!(info.contains("restorable:        yes"), "{info}");
    let restored = env.restore_and_start("bk-s3-restore", &["--target-action", "promote"]);
    wait_promoted(&restored);
    assert_eq!(table_digests(&restored, "postgres"), want);
    amcheck(&restored);
}
