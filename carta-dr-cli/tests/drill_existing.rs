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
    TargetState {
        pid: postmaster_pid(pg),
        tables,
        files,
        top_level,
        identity,
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

/// The target after the drill: unharmed, its drill rows removed, and it still takes writes.
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
