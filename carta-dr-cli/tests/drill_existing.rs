//! The restore drill against an explicit target: a running PostgreSQL 15 cluster that
//! archives with `carta-dr wal-push` into a local store and has a carta-dr base backup.
//!
//! The drill must never harm that cluster: it keeps running (same postmaster), its tables
//! (outside the drill's own schema) keep their rows, its configuration and data directory
//! layout are untouched, it still accepts writes, the store keeps its backups, and the
//! drill's restored server and temporary directories are gone afterwards. The report is
//! checked against independent bookkeeping: the heartbeat writer's log and the restored
//! server queried here.

mod backup_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backup_support::*;
use carta_dr_core::envelope::EnvelopeOptions;
use carta_dr_core::Store;
use carta_dr_postgres::drill::restore_drill::DrillOutcome;
use carta_dr_postgres::drill::{DrillTarget, RestoreDrillOptions, Scenario, StoreOpener};
use carta_dr_postgres::replication::Repo;
use carta_dr_testkit::{scratch_dir, test_user, PgCluster};

fn opener() -> StoreOpener {
    Arc::new(|url: &str| {
        let s: Arc<dyn Store> = carta_dr_backends::open(url)?;
        Ok(s)
    })
}

/// A running cluster with application data, WAL archived by `carta-dr wal-push` every second
/// of activity, and one carta-dr base backup.
fn target(label: &str) -> Env {
    let env = Env::local(label);
    env.pg.psql(
        "postgres",
        "create table app (id int primary key, v text not null); \
         insert into app select g, md5(g::text) from generate_series(1, 20000) g; \
         create table app_audit (at timestamptz not null default now(), what text); \
         insert into app_audit (what) select 'row ' || g from generate_series(1, 500) g",
    );
    let out = env
        .pg
        .command("pgbench")
        .args(["-i", "-q", "-s", "1", "postgres"])
        .output()
        .expect("run pgbench");
    assert!(
        out.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The archive is as current as archive_timeout allows; 1 s keeps the drill short and
    // gives the restore some heartbeats to find.
    env.pg.psql(
        "postgres",
        "alter system set archive_timeout = '1s'; select pg_reload_conf()",
    );
    env.backup();
    env.archive_now();
    env
}

fn postmaster_pid(pg: &PgCluster) -> u32 {
    let text = std::fs::read_to_string(pg.data_dir().join("postmaster.pid")).expect("pid file");
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("pid")
}

/// What must not change on the target: the postmaster, the rows of every table outside the
/// drill's schema, the configuration files, the top-level layout of the data directory, its
/// identity and timeline.
#[derive(Debug, PartialEq)]
struct TargetState {
    pid: u32,
    tables: String,
    files: BTreeMap<String, String>,
    top_level: BTreeSet<String>,
    identity: String,
    drill_schema: bool,
}

fn md5_file(path: &Path) -> String {
    let out = std::process::Command::new("md5sum")
        .arg(path)
        .output()
        .expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

fn state(pg: &PgCluster) -> TargetState {
    let tables = table_digests(pg, "postgres")
        .lines()
        .filter(|l| !l.starts_with("carta_dr_drill."))
        .collect::<Vec<_>>()
        .join("\n");
    let mut files = BTreeMap::new();
    for f in [
        "postgresql.conf",
        "postgresql.auto.conf",
        "pg_hba.conf",
        "pg_ident.conf",
        "PG_VERSION",
        "postmaster.opts",
    ] {
        files.insert(f.to_string(), md5_file(&pg.data_dir().join(f)));
    }
    let top_level = std::fs::read_dir(pg.data_dir())
        .expect("data dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let identity = pg.psql(
        "postgres",
        "select system_identifier || ' tli ' || (select timeline_id from pg_control_checkpoint()) \
         || ' recovery ' || pg_is_in_recovery() from pg_control_system()",
    );
    let drill_schema = pg.psql(
        "postgres",
        "select to_regnamespace('carta_dr_drill') is not null",
    ) == "t";
    TargetState {
        pid: postmaster_pid(pg),
        tables,
        files,
        top_level,
        identity,
        drill_schema,
    }
}

/// Backups in the store.
async fn backup_ids(url: &str) -> Vec<String> {
    let repo = Repo::new(
        carta_dr_backends::open(url).expect("store"),
        EnvelopeOptions::zstd(3),
    );
    repo.list_ids()
        .await
        .expect("list backups")
        .iter()
        .map(|i| i.to_string())
        .collect()
}

/// Every postgres process whose command line names a path under `dir`.
fn postgres_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("postgres") && cmd.contains(&needle) {
                found.push(pid);
            }
        }
    }
    found
}

/// The target after the drill: unharmed, its drill rows removed (and the drill's schema
/// dropped when the drill created it), and it still takes writes.
fn assert_unharmed(pg: &PgCluster, before: &TargetState, drill_id: &str) {
    assert!(pg.is_running(), "the target is no longer running");
    let after = state(pg);
    assert_eq!(after.pid, before.pid, "the target's postmaster changed");
    assert_eq!(after.tables, before.tables, "the target's tables changed");
    assert_eq!(
        after.files, before.files,
        "the target's configuration changed"
    );
    assert_eq!(
        after.top_level, before.top_level,
        "the target's data directory gained or lost entries"
    );
    assert_eq!(after.identity, before.identity);
    assert_eq!(
        after.drill_schema, before.drill_schema,
        "the drill left its schema behind (or dropped one it found)"
    );
    if after.drill_schema {
        assert_eq!(
            pg.psql(
                "postgres",
                &format!(
                    "select (select count(*) from carta_dr_drill.heartbeat where drill = '{drill_id}') \
                     + (select count(*) from carta_dr_drill.ledger where drill = '{drill_id}')"
                ),
            ),
            "0",
            "the drill left rows behind"
        );
    }
    pg.psql(
        "postgres",
        "insert into app values (100001, 'after the drill')",
    );
    assert_eq!(
        pg.psql("postgres", "select v from app where id = 100001"),
        "after the drill"
    );
}

fn assert_phases_add_up(phases: &[(String, u64, f64)], rto_millis: u64) {
    let names: Vec<&str> = phases.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(
        names,
        ["detect", "fetch_base", "replay_wal", "start", "verify"]
    );
    let sum: u64 = phases.iter().map(|p| p.1).sum();
    assert_eq!(sum, rto_millis, "phases {phases:?} do not add up");
    let mut at = 0u64;
    for p in phases {
        assert!(
            (p.2 - at as f64 / 1000.0).abs() < 1e-6,
            "phases are not contiguous: {phases:?}"
        );
        at += p.1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_existing_target_unharmed_and_rpo_matches_bookkeeping() {
    let env = target("drill-existing");
    let before = state(&env.pg);
    let backups_before = backup_ids(&env.repo).await;
    let work = scratch_dir("drill-existing-work");

    let mut opts =
        RestoreDrillOptions::embedded(PathBuf::from(env!("CARGO_BIN_EXE_carta-dr")), opener());
    opts.scenario = Scenario::Crash;
    opts.target = DrillTarget::Existing {
        conninfo: env.pg.conninfo("postgres"),
        repo_url: env.repo.clone(),
        data_dir: Some(env.pg.data_dir().to_path_buf()),
    };
    opts.run_as = test_user().map(|u| u.name);
    opts.work_parent = Some(work.path().to_path_buf());
    opts.writes_for = Duration::from_secs(4);
    opts.keep_restored = true;
    let o: DrillOutcome = carta_dr_postgres::drill::run(&opts)
        .await
        .unwrap_or_else(|e| panic!("drill against a running cluster failed: {e}"));
    let r = &o.report;
    assert!(r.verdict.checks_passed, "checks: {:#?}", r.checks);
    assert_eq!(
        r.backup_used,
        backups_before.last().cloned().unwrap_or_default()
    );
    let phases: Vec<(String, u64, f64)> = r
        .phases
        .iter()
        .map(|p| (p.name.clone(), p.millis, p.start_seconds))
        .collect();
    assert_phases_add_up(&phases, r.rto_millis);

    // Independent bookkeeping: the writer's log against the restored server.
    let kept = o.restored.as_ref().expect("restored server kept");
    let acked: Vec<(i64, i64)> = std::fs::read_to_string(&kept.writer_log)
        .expect("writer log")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            (
                v["seq"].as_i64().expect("seq"),
                v["at_us"].as_i64().expect("at_us"),
            )
        })
        .collect();
    let c = kept
        .cluster
        .connect("postgres")
        .await
        .expect("connect to restored");
    let present: Vec<(i64, i64)> = c
        .query(
            "SELECT seq, (extract(epoch FROM committed_at) * 1000000)::bigint \
             FROM carta_dr_drill.heartbeat WHERE drill = $1 AND seq > 0 ORDER BY seq",
            &[&kept.drill_id],
        )
        .await
        .expect("heartbeats")
        .iter()
        .map(|row| (row.get::<_, i64>(0), row.get::<_, i64>(1)))
        .collect();
    // The restored copy is a copy of the target (same system identifier), in its own
    // directory under the work dir, on another port.
    let restored_id: String = c
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .expect("system id")
        .get(0);
    assert!(before.identity.starts_with(&restored_id));
    assert_ne!(kept.cluster.port(), env.pg.port());
    assert!(kept.cluster.data_dir().starts_with(work.path()));
    drop(c);

    let present_seqs: BTreeSet<i64> = present.iter().map(|p| p.0).collect();
    let lost: Vec<&(i64, i64)> = acked
        .iter()
        .filter(|a| !present_seqs.contains(&a.0))
        .collect();
    assert!(acked.len() >= 20, "too few heartbeats: {}", acked.len());
    assert!(
        !present.is_empty(),
        "no heartbeat reached the archive in time (archive_timeout 1s, 4 s of writes)"
    );
    assert_eq!(r.rpo.heartbeats_acked, acked.len() as u64);
    assert_eq!(r.rpo.transactions_lost, lost.len() as u64, "{:#?}", r.rpo);
    assert_eq!(r.rpo.last_acked_seq, acked.last().map(|a| a.0));
    assert_eq!(r.rpo.last_restored_seq, present.last().map(|p| p.0));
    let (a, p) = (
        acked.last().expect("acked"),
        present.last().expect("present"),
    );
    let expected_secs = (a.1 - p.1).max(0) as f64 / 1e6;
    assert!(
        (r.rpo.seconds - expected_secs).abs() < 1e-6,
        "{} vs {expected_secs}",
        r.rpo.seconds
    );
    if let Some(first_lost) = lost.first() {
        assert!(first_lost.0 > p.0, "a hole in the restored heartbeats");
    }
    // The unarchived WAL is the WAL position at the disaster minus the end of the archive.
    let at: carta_dr_core::Lsn = r
        .rpo
        .wal_lsn_at_disaster
        .as_deref()
        .expect("lsn")
        .parse()
        .expect("lsn");
    let end: carta_dr_core::Lsn = r
        .rpo
        .archive_end_lsn
        .as_deref()
        .expect("end")
        .parse()
        .expect("end");
    assert_eq!(r.rpo.wal_bytes_unarchived, Some(at.0.saturating_sub(end.0)));
    // Nothing restored lies beyond the archive as it was at the disaster: every heartbeat
    // found was acknowledged before it.
    assert!(p.0 <= a.0);

    let drill_id = kept.drill_id.clone();
    if let Some(mut k) = o.restored {
        k.cluster
            .stop(Duration::from_secs(30))
            .await
            .expect("stop restored");
        let path = k.area.path().to_path_buf();
        drop(k);
        std::fs::remove_dir_all(&path).ok();
    }
    assert_unharmed(&env.pg, &before, &drill_id);
    assert_eq!(
        backup_ids(&env.repo).await,
        backups_before,
        "backups changed"
    );
}

#[test]
fn drill_existing_target_through_the_cli_cleans_up_and_refuses_its_data_dir() {
    let env = target("drill-existing-cli");
    let before = state(&env.pg);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let backups_before = rt.block_on(backup_ids(&env.repo));
    let work = scratch_dir("drill-existing-cli-work");
    let report = work.path().join("report.md");
    let history = format!("file://{}", work.subdir("history").display());
    let parent = work.subdir("drills");
    let conninfo = env.pg.conninfo("postgres");
    let data_dir = env.pg.data_dir().display().to_string();

    // A work directory inside the target's data directory is refused before anything is
    // created there.
    let inside = env.pg.data_dir().join("drill-work");
    let out = env.try_carta(&[
        "drill",
        "restore",
        "--target-conninfo",
        &conninfo,
        "--target-data-dir",
        &data_dir,
        "--work-dir",
        &inside.display().to_string(),
    ]);
    assert!(
        !out.status.success(),
        "a work dir inside the target was accepted"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("inside the target's data directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!inside.exists(), "the refused drill created its work dir");
    assert_eq!(state(&env.pg).top_level, before.top_level);

    // The drill itself, as an ordinary user.
    let out = env.try_carta(&[
        "drill",
        "restore",
        "--json",
        "--target-conninfo",
        &conninfo,
        "--target-data-dir",
        &data_dir,
        "--work-dir",
        &parent.display().to_string(),
        "--writes-for",
        "3s",
        "--report",
        &report.display().to_string(),
        "--history",
        &history,
    ]);
    assert!(
        out.status.success(),
        "drill restore failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["verdict"]["pass"], true, "{v:#}");
    assert!(v["target"]
        .as_str()
        .expect("target")
        .contains(&format!("port={}", env.pg.port())));
    let phases: Vec<(String, u64, f64)> = v["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("name").to_string(),
                p["millis"].as_u64().expect("millis"),
                p["start_seconds"].as_f64().expect("start"),
            )
        })
        .collect();
    assert_phases_add_up(&phases, v["rto_millis"].as_u64().expect("rto"));
    // RPO figures: present and consistent with each other. Heartbeats are numbered from 1
    // without gaps and the restore holds a prefix of them.
    let rpo = &v["rpo"];
    let acked = rpo["heartbeats_acked"].as_u64().expect("acked");
    assert!(acked >= 10, "{rpo:#}");
    assert_eq!(rpo["last_acked_seq"].as_u64(), Some(acked));
    let restored = rpo["last_restored_seq"].as_u64().unwrap_or(0);
    assert_eq!(
        rpo["transactions_lost"].as_u64(),
        Some(acked - restored),
        "{rpo:#}"
    );
    let at: carta_dr_core::Lsn = rpo["wal_lsn_at_disaster"]
        .as_str()
        .expect("lsn")
        .parse()
        .expect("lsn");
    let end: carta_dr_core::Lsn = rpo["archive_end_lsn"]
        .as_str()
        .expect("end")
        .parse()
        .expect("end");
    assert_eq!(
        rpo["wal_bytes_unarchived"].as_u64(),
        Some(at.0.saturating_sub(end.0))
    );
    assert!(rpo["seconds"].as_f64().expect("seconds") >= 0.0);
    assert!(std::fs::read_to_string(&report)
        .expect("markdown report")
        .contains("## RTO phases"));

    // Everything the drill created beside the target is gone: no server, no directory.
    let left: Vec<_> = std::fs::read_dir(&parent)
        .expect("work dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(left.is_empty(), "the drill left {left:?}");
    assert!(
        postgres_under(&parent).is_empty(),
        "a restored server still runs"
    );
    assert_unharmed(&env.pg, &before, v["id"].as_str().expect("id"));
    assert_eq!(rt.block_on(backup_ids(&env.repo)), backups_before);
}

/// Every entry under `dir` with its size, modification time and inode: a file rewritten,
/// removed or re-created shows.
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, i64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let m = e.metadata().expect("stat");
            if m.is_dir() {
                stack.push(e.path());
            }
            out.insert(e.path(), (m.len(), m.mtime(), m.mtime_nsec(), m.ino()));
        }
    }
    out
}

/// Library drill options against `env`'s running cluster, work directory under `work`.
fn existing_opts(env: &Env, work: &Path, scenario: Scenario) -> RestoreDrillOptions {
    let mut opts =
        RestoreDrillOptions::embedded(PathBuf::from(env!("CARGO_BIN_EXE_carta-dr")), opener());
    opts.scenario = scenario;
    opts.target = DrillTarget::Existing {
        conninfo: env.pg.conninfo("postgres"),
        repo_url: env.repo.clone(),
        data_dir: Some(env.pg.data_dir().to_path_buf()),
    };
    opts.run_as = test_user().map(|u| u.name);
    opts.work_parent = Some(work.to_path_buf());
    opts
}

/// Stops a kept restored server and removes its directory.
async fn discard(o: DrillOutcome) {
    if let Some(mut k) = o.restored {
        k.cluster
            .stop(Duration::from_secs(30))
            .await
            .expect("stop restored");
        let path = k.area.path().to_path_buf();
        drop(k);
        std::fs::remove_dir_all(&path).ok();
    }
}

/// The delete scenario against a running cluster: the accidental `DELETE` runs on the
/// drill's own ledger rows (never on the target's tables), the point-in-time restore beside
/// the target brings every deleted row back, the writes lost on either side of the `DELETE`
/// add up to the heartbeats missing on the restored server, and the target is unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_existing_delete_recovers_rows_and_leaves_target_untouched() {
    let env = target("drill-existing-delete");
    // A schema the drill finds is the operator's: the drill removes its rows but keeps it.
    env.pg.psql("postgres", "create schema carta_dr_drill");
    let before = state(&env.pg);
    assert!(before.drill_schema);
    let backups_before = backup_ids(&env.repo).await;
    let work = scratch_dir("drill-existing-delete-work");
    let mut opts = existing_opts(&env, work.path(), Scenario::Delete);
    opts.pitr_by = carta_dr_postgres::drill::PitrBy::Time;
    opts.writes_for = Duration::from_secs(4);
    opts.keep_restored = true;
    let o = carta_dr_postgres::drill::run(&opts)
        .await
        .unwrap_or_else(|e| panic!("delete drill against a running cluster failed: {e}"));
    let r = &o.report;
    assert!(r.verdict.checks_passed, "checks: {:#?}", r.checks);
    let pitr = r.pitr.as_ref().expect("pitr outcome");
    assert!(pitr.target.starts_with("time "), "{pitr:?}");

    // Independent bookkeeping on the restored server and the writer's log.
    let kept = o.restored.as_ref().expect("restored server kept");
    let c = kept
        .cluster
        .connect("postgres")
        .await
        .expect("connect to restored");
    let row = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE id % 3 = 0) \
             FROM carta_dr_drill.ledger WHERE drill = $1",
            &[&kept.drill_id],
        )
        .await
        .expect("ledger");
    let (ledger, deleted_ids): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(ledger, 1000, "the restored ledger is not whole");
    assert_eq!(deleted_ids, 333);
    assert_eq!(pitr.rows_deleted, 333);
    assert_eq!(pitr.rows_recovered, 333);
    let present: BTreeSet<i64> = c
        .query(
            "SELECT seq FROM carta_dr_drill.heartbeat WHERE drill = $1 AND seq > 0",
            &[&kept.drill_id],
        )
        .await
        .expect("heartbeats")
        .iter()
        .map(|row| row.get::<_, i64>(0))
        .collect();
    let in_recovery: bool = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("recovery")
        .get(0);
    assert!(!in_recovery, "the restored copy was not promoted");
    drop(c);
    let acked: Vec<i64> = std::fs::read_to_string(&kept.writer_log)
        .expect("writer log")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            v["seq"].as_i64().expect("seq")
        })
        .collect();
    let lost = acked.iter().filter(|s| !present.contains(s)).count() as u64;
    assert!(
        !present.is_empty(),
        "no heartbeat before the DELETE survived"
    );
    assert!(
        present.iter().copied().eq(1..=present.len() as i64),
        "the restored heartbeats are not a prefix: {present:?}"
    );
    assert_eq!(r.rpo.transactions_lost, lost);
    assert_eq!(
        pitr.writes_lost_before_delete + pitr.writes_discarded_after_delete,
        lost,
        "{pitr:?}"
    );
    assert!(pitr.writes_discarded_after_delete > 0, "{pitr:?}");

    let drill_id = kept.drill_id.clone();
    discard(o).await;
    assert_unharmed(&env.pg, &before, &drill_id);
    assert_eq!(backup_ids(&env.repo).await, backups_before);
}

/// A running cluster with a tablespace outside its data directory: the drill restores the
/// backup with the tablespace relocated into its own directory (the restored server's
/// `pg_tblspc` link points there and its tablespace holds the target's rows, including
/// those replayed from WAL written after the backup), and the target's tablespace directory
/// is not touched: same files, sizes, times and inodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_existing_target_with_tablespace_restores_it_relocated() {
    let env = Env::local("drill-existing-ts");
    let ts = scratch_dir("drill-existing-ts-loc");
    let loc = ts.path().canonicalize().expect("tablespace dir");
    env.pg.psql(
        "postgres",
        &format!("create tablespace ts location '{}'", loc.display()),
    );
    env.pg.psql(
        "postgres",
        "create table in_ts (id int primary key using index tablespace ts, v text) \
           with (autovacuum_enabled = off) tablespace ts; \
         insert into in_ts select g, md5(g::text) from generate_series(1, 50000) g; \
         create table app (id int primary key, v text not null); \
         insert into app select g, md5(g::text) from generate_series(1, 1000) g",
    );
    env.pg.psql(
        "postgres",
        "alter system set archive_timeout = '1s'; select pg_reload_conf()",
    );
    env.backup();
    // After the backup: replayed from the archive into the relocated tablespace.
    env.pg.psql(
        "postgres",
        "insert into in_ts select g, 'after' from generate_series(50001, 60000) g",
    );
    // Hint bits and visibility set now, flushed: reading the table later dirties nothing.
    env.pg.psql("postgres", "vacuum (freeze) in_ts");
    env.pg.psql("postgres", "checkpoint");
    env.archive_now();
    let oid = env.pg.psql(
        "postgres",
        "select oid from pg_tablespace where spcname = 'ts'",
    );
    let before = state(&env.pg);
    let ts_before = listing(&loc);
    assert!(
        ts_before.keys().any(|p| p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("PG_15_"))),
        "no PG_15_* directory in the tablespace: {ts_before:?}"
    );
    let work = scratch_dir("drill-existing-ts-work");
    let mut opts = existing_opts(&env, work.path(), Scenario::Crash);
    opts.writes_for = Duration::from_secs(3);
    opts.keep_restored = true;
    let o = carta_dr_postgres::drill::run(&opts)
        .await
        .unwrap_or_else(|e| panic!("drill against a cluster with a tablespace failed: {e}"));
    assert!(
        o.report.verdict.checks_passed,
        "checks: {:#?}",
        o.report.checks
    );
    assert!(
        o.report
            .commands
            .iter()
            .any(|c| c.contains(&format!("--tablespace-map {oid}="))),
        "{:#?}",
        o.report.commands
    );
    let kept = o.restored.as_ref().expect("restored server kept");
    let link = std::fs::read_link(kept.cluster.data_dir().join("pg_tblspc").join(&oid))
        .expect("pg_tblspc link");
    assert!(
        link.starts_with(kept.area.path()),
        "the restored tablespace is at {}",
        link.display()
    );
    let c = kept
        .cluster
        .connect("postgres")
        .await
        .expect("connect to restored");
    let row = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE v = 'after'), \
                    pg_tablespace_location((SELECT oid FROM pg_tablespace WHERE spcname = 'ts')) \
             FROM in_ts",
            &[],
        )
        .await
        .expect("rows in the restored tablespace");
    let (n, after, location): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((n, after), (60000, 10000));
    assert!(
        Path::new(&location).starts_with(kept.area.path()),
        "pg_tablespace_location on the restored copy: {location}"
    );
    drop(c);
    assert!(
        listing(&link)
            .keys()
            .any(|p| p.extension().is_none() && p.is_file()),
        "the relocated tablespace holds no relation file"
    );
    let drill_id = kept.drill_id.clone();
    discard(o).await;
    assert_eq!(listing(&loc), ts_before, "the target's tablespace changed");
    assert_unharmed(&env.pg, &before, &drill_id);
}

/// A tablespace created on the target after its newest backup is only in the WAL, where its
/// location cannot be redirected: the drill reads that WAL first and refuses before writing
/// anything anywhere, naming the location and the record's LSN; the target and its
/// tablespace directory are untouched, and the work directory is left empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_existing_refuses_a_tablespace_created_after_the_backup() {
    let env = target("drill-existing-newts");
    let ts = scratch_dir("drill-existing-newts-loc");
    let loc = ts.path().canonicalize().expect("tablespace dir");
    env.pg.psql(
        "postgres",
        &format!("create tablespace late location '{}'", loc.display()),
    );
    env.pg.psql(
        "postgres",
        "create table in_late (id int) with (autovacuum_enabled = off) tablespace late; \
         insert into in_late select generate_series(1, 1000)",
    );
    env.pg.psql("postgres", "vacuum (freeze) in_late");
    env.pg.psql("postgres", "checkpoint");
    env.archive_now();
    let before = state(&env.pg);
    let ts_before = listing(&loc);
    let work = scratch_dir("drill-existing-newts-work");
    let opts = existing_opts(&env, work.path(), Scenario::Crash);
    let err = match carta_dr_postgres::drill::run(&opts).await {
        Ok(o) => panic!("the drill replayed a CREATE TABLESPACE: {:#?}", o.report),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("creates tablespace"), "{err}");
    assert!(err.contains(&loc.display().to_string()), "{err}");
    assert!(err.contains("carta-dr backup"), "{err}");
    assert!(err.contains("record at "), "{err}");
    let left: Vec<_> = std::fs::read_dir(work.path())
        .expect("work dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(left.is_empty(), "the refused drill left {left:?}");
    assert!(postgres_under(work.path()).is_empty());
    assert_eq!(listing(&loc), ts_before, "the target's tablespace changed");
    // No trace of the drill in the target: its schema does not exist.
    assert_eq!(
        env.pg.psql(
            "postgres",
            "select count(*) from pg_namespace where nspname = 'carta_dr_drill'"
        ),
        "0"
    );
    let after = state(&env.pg);
    assert_eq!(after, before);
}

/// A tablespace created on the target while the drill writes its heartbeats (after the
/// drill's first look at the WAL) is caught by the second look, before the restore: the drill
/// refuses, removes the rows it wrote, and leaves the target and the new tablespace alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_existing_refuses_a_tablespace_created_during_the_drill() {
    let env = target("drill-existing-midts");
    let ts = scratch_dir("drill-existing-midts-loc");
    let loc = ts.path().canonicalize().expect("tablespace dir");
    let before = state(&env.pg);
    let work = scratch_dir("drill-existing-midts-work");
    let mut opts = existing_opts(&env, work.path(), Scenario::Crash);
    opts.writes_for = Duration::from_secs(6);
    let conninfo = env.pg.conninfo("postgres");
    let create = format!("CREATE TABLESPACE mid LOCATION '{}'", loc.display());
    // Once the drill's heartbeats flow: CREATE TABLESPACE, then its WAL is archived.
    let side = async {
        let c = carta_dr_postgres::local_cluster::connect(&conninfo)
            .await
            .expect("connect to the target");
        let until = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            // Until the drill creates its schema the query fails: no heartbeat yet.
            let n: i64 = match c
                .query_one("SELECT count(*) FROM carta_dr_drill.heartbeat", &[])
                .await
            {
                Ok(row) => row.get(0),
                Err(_) => 0,
            };
            if n > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "no heartbeat within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.batch_execute(&create).await.expect("create tablespace");
        let seg: String = c
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await
            .expect("switch")
            .get(0);
        loop {
            let last: Option<String> = c
                .query_one("SELECT last_archived_wal FROM pg_stat_archiver", &[])
                .await
                .expect("archiver")
                .get(0);
            if last.is_some_and(|l| l.len() == 24 && l >= seg) {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "{seg} not archived within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        listing(&loc)
    };
    let (result, ts_created) = tokio::join!(carta_dr_postgres::drill::run(&opts), side);
    let err = match result {
        Ok(o) => panic!("the drill replayed a CREATE TABLESPACE: {:#?}", o.report),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("creates tablespace"), "{err}");
    assert!(err.contains(&loc.display().to_string()), "{err}");
    assert!(
        ts_created.keys().any(|p| p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("PG_15_"))),
        "{ts_created:?}"
    );
    assert_eq!(listing(&loc), ts_created, "the new tablespace changed");
    let left: Vec<_> = std::fs::read_dir(work.path())
        .expect("work dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(left.is_empty(), "the refused drill left {left:?}");
    assert!(postgres_under(work.path()).is_empty());
    // The drill's rows and schema are gone although it failed half-way.
    let after = state(&env.pg);
    assert!(
        !after.drill_schema,
        "the refused drill left its schema behind"
    );
    assert_eq!(after.pid, before.pid);
    assert_eq!(after.tables, before.tables);
    assert_eq!(after.files, before.files);
    assert_eq!(after.top_level, before.top_level);
    assert_eq!(after.identity, before.identity);
}

/// `carta-dr drill restore --scenario delete` with an explicit target (connection, data
/// directory and store), as an ordinary user: it passes, recovers every deleted drill row,
/// its lost writes add up, and it leaves nothing behind in the target or the work directory.
#[test]
fn drill_existing_delete_through_the_cli() {
    let env = target("drill-existing-delete-cli");
    let before = state(&env.pg);
    let work = scratch_dir("drill-existing-delete-cli-work");
    let history = format!("file://{}", work.subdir("history").display());
    let parent = work.subdir("drills");
    let out = env.try_carta(&[
        "drill",
        "restore",
        "--json",
        "--scenario",
        "delete",
        "--target-conninfo",
        &env.pg.conninfo("postgres"),
        "--target-data-dir",
        &env.pg.data_dir().display().to_string(),
        "--work-dir",
        &parent.display().to_string(),
        "--writes-for",
        "3s",
        "--report",
        &work.path().join("report.md").display().to_string(),
        "--history",
        &history,
    ]);
    assert!(
        out.status.success(),
        "drill restore --scenario delete failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["verdict"]["pass"], true, "{v:#}");
    assert_eq!(v["scenario"], "delete");
    let pitr = &v["pitr"];
    assert_eq!(pitr["rows_deleted"].as_u64(), Some(333), "{pitr:#}");
    assert_eq!(pitr["rows_recovered"].as_u64(), Some(333), "{pitr:#}");
    assert_eq!(
        pitr["writes_lost_before_delete"].as_u64(),
        Some(0),
        "{pitr:#}"
    );
    assert_eq!(
        pitr["writes_discarded_after_delete"].as_u64(),
        v["rpo"]["transactions_lost"].as_u64(),
        "{v:#}"
    );
    let left: Vec<_> = std::fs::read_dir(&parent)
        .expect("work dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(left.is_empty(), "the drill left {left:?}");
    assert!(postgres_under(&parent).is_empty());
    assert_unharmed(&env.pg, &before, v["id"].as_str().expect("id"));
}
