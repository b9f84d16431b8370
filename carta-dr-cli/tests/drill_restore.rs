//! The restore drill end to end on the embedded default (a throwaway PostgreSQL 15 cluster,
//! WAL archived by this `carta-dr` binary into a local store, our own base backups).
//!
//! Each test checks the drill's report against independent bookkeeping: the heartbeat
//! writer's JSON-lines log read here, and the restored server queried here.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use carta_dr_core::envelope::EnvelopeOptions;
use carta_dr_core::{Store, StorePath};
use carta_dr_postgres::drill::restore_drill::DrillOutcome;
use carta_dr_postgres::drill::{PitrBy, RestoreDrillOptions, Scenario, StoreOpener};
use carta_dr_postgres::replication::Repo;

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_carta-dr"))
}

fn opener() -> StoreOpener {
    Arc::new(|url: &str| {
        let s: Arc<dyn Store> = carta_dr_backends::open(url)?;
        Ok(s)
    })
}

fn options(scenario: Scenario) -> RestoreDrillOptions {
    let mut o = RestoreDrillOptions::embedded(exe(), opener());
    o.scenario = scenario;
    o.keep_restored = true;
    o.writes_for = Duration::from_secs(3);
    o
}

async fn drill(scenario: Scenario) -> DrillOutcome {
    carta_dr_postgres::drill::run(&options(scenario))
        .await
        .unwrap_or_else(|e| {
            panic!("drill {scenario:?} failed: {e} (needs postgresql-15: apt-get install postgresql-15)")
        })
}

/// Acknowledged heartbeats, read from the writer's log: (seq, commit time in µs).
fn acked(outcome: &DrillOutcome) -> Vec<(i64, i64)> {
    let r = outcome.restored.as_ref().expect("restored server kept");
    let text = std::fs::read_to_string(&r.writer_log).expect("writer log");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            (
                v["seq"].as_i64().expect("seq"),
                v["at_us"].as_i64().expect("at_us"),
            )
        })
        .collect()
}

/// Heartbeats on the restored server, queried here: (seq, commit time in µs), seq > 0.
async fn present(outcome: &DrillOutcome) -> Vec<(i64, i64)> {
    let r = outcome.restored.as_ref().expect("restored server kept");
    let c = r
        .cluster
        .connect("postgres")
        .await
        .expect("connect to restored");
    c.query(
        "SELECT seq, (extract(epoch FROM committed_at) * 1000000)::bigint \
         FROM carta_dr_drill.heartbeat WHERE drill = $1 AND seq > 0 ORDER BY seq",
        &[&r.drill_id],
    )
    .await
    .expect("heartbeats")
    .iter()
    .map(|row| (row.get::<_, i64>(0), row.get::<_, i64>(1)))
    .collect()
}

fn assert_phases_add_up(outcome: &DrillOutcome) {
    let r = &outcome.report;
    let names: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["detect", "fetch_base", "replay_wal", "start", "verify"]
    );
    let sum: u64 = r.phases.iter().map(|p| p.millis).sum();
    assert_eq!(sum, r.rto_millis, "phases {:?} do not add up", r.phases);
    assert!((r.rto_seconds - r.rto_millis as f64 / 1000.0).abs() < 1e-9);
    let mut at = 0.0;
    for p in &r.phases {
        assert!(
            (p.start_seconds - at).abs() < 1e-6,
            "phases are not contiguous: {:?}",
            r.phases
        );
        at += p.seconds;
    }
}

async fn cleanup(outcome: DrillOutcome) {
    if let Some(mut r) = outcome.restored {
        r.cluster.stop(Duration::from_secs(30)).await.ok();
        let path = r.area.path().to_path_buf();
        drop(r);
        std::fs::remove_dir_all(&path).ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_crash_rpo_equals_heartbeats_lost_and_phases_add_up() {
    let o = drill(Scenario::Crash).await;
    let acked = acked(&o);
    let present = present(&o).await;
    let present_seqs: BTreeSet<i64> = present.iter().map(|p| p.0).collect();
    let lost: Vec<&(i64, i64)> = acked
        .iter()
        .filter(|a| !present_seqs.contains(&a.0))
        .collect();
    let r = &o.report;
    assert!(
        acked.len() >= 20,
        "too few heartbeats acknowledged: {}",
        acked.len()
    );
    assert_eq!(r.rpo.heartbeats_acked, acked.len() as u64);
    assert_eq!(
        r.rpo.transactions_lost,
        lost.len() as u64,
        "report {:#?}",
        r.rpo
    );
    assert_eq!(r.rpo.last_acked_seq, acked.last().map(|a| a.0));
    assert_eq!(r.rpo.last_restored_seq, present.last().map(|p| p.0));
    let expected_secs = match (acked.last(), present.last()) {
        (Some(a), Some(p)) => (a.1 - p.1).max(0) as f64 / 1e6,
        _ => panic!("no heartbeat restored at all"),
    };
    assert!(
        (r.rpo.seconds - expected_secs).abs() < 1e-6,
        "{} vs {expected_secs}",
        r.rpo.seconds
    );
    // Lost heartbeats are the newest ones: everything acknowledged up to the last restored
    // one is there.
    if let Some(first_lost) = lost.first() {
        assert!(first_lost.0 > present.last().map(|p| p.0).unwrap_or(0));
    }
    assert_phases_add_up(&o);
    assert!(r.verdict.checks_passed, "checks: {:#?}", r.checks);
    assert!(r.verdict.pass);
    assert!(r.fallback.is_none());
    assert!(r.rpo.wal_bytes_unarchived.is_some());
    assert!(r.markdown().contains("| **total** |"));
    cleanup(o).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_delete_recovers_every_deleted_row() {
    let o = drill(Scenario::Delete).await;
    let r = &o.report;
    let pitr = r.pitr.clone().expect("pitr outcome");
    assert!(
        pitr.rows_deleted > 300,
        "the DELETE removed {} rows",
        pitr.rows_deleted
    );
    assert_eq!(pitr.rows_recovered, pitr.rows_deleted);
    // Independently: the ledger is whole on the restored server.
    let kept = o.restored.as_ref().expect("kept");
    let c = kept.cluster.connect("postgres").await.expect("connect");
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM carta_dr_drill.ledger WHERE drill = $1",
            &[&kept.drill_id],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1000, "ledger rows after PITR");
    drop(c);
    // The RPO still matches the writer's log.
    let acked = acked(&o);
    let present: BTreeSet<i64> = present(&o).await.iter().map(|p| p.0).collect();
    let lost = acked.iter().filter(|a| !present.contains(&a.0)).count() as u64;
    assert_eq!(r.rpo.transactions_lost, lost);
    assert!(
        lost > 0,
        "writes after the DELETE must be discarded by the PITR"
    );
    assert_eq!(pitr.writes_lost_before_delete, 0);
    assert_phases_add_up(&o);
    assert!(r.verdict.checks_passed, "checks: {:#?}", r.checks);
    cleanup(o).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_delete_by_time_and_lsn_recovers_every_deleted_row() {
    for (by, prefix) in [(PitrBy::Time, "time "), (PitrBy::Lsn, "LSN ")] {
        let mut opts = options(Scenario::Delete);
        opts.pitr_by = by;
        let o = carta_dr_postgres::drill::run(&opts)
            .await
            .unwrap_or_else(|e| panic!("drill delete by {by:?} failed: {e}"));
        let r = &o.report;
        let pitr = r.pitr.clone().expect("pitr outcome");
        assert!(pitr.target.starts_with(prefix), "target {:?}", pitr.target);
        assert!(pitr.rows_deleted > 300);
        assert_eq!(pitr.rows_recovered, pitr.rows_deleted, "by {by:?}");
        let kept = o.restored.as_ref().expect("kept");
        let c = kept.cluster.connect("postgres").await.expect("connect");
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM carta_dr_drill.ledger WHERE drill = $1",
                &[&kept.drill_id],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 1000, "ledger rows after PITR by {by:?}");
        drop(c);
        // Heartbeats lost, counted here, split into before and after the DELETE by the
        // report: together they are every acknowledged heartbeat missing.
        let acked = acked(&o);
        let present: BTreeSet<i64> = present(&o).await.iter().map(|p| p.0).collect();
        let lost = acked.iter().filter(|a| !present.contains(&a.0)).count() as u64;
        assert_eq!(r.rpo.transactions_lost, lost);
        assert_eq!(
            pitr.writes_lost_before_delete + pitr.writes_discarded_after_delete,
            lost,
            "{pitr:#?}"
        );
        assert!(pitr.writes_discarded_after_delete > 0);
        assert_phases_add_up(&o);
        assert!(r.verdict.checks_passed, "checks: {:#?}", r.checks);
        assert!(r.markdown().contains(&format!("* Target: before {prefix}")));
        cleanup(o).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_corrupt_latest_falls_back_to_the_previous_backup() {
    let o = drill(Scenario::CorruptLatest).await;
    let r = &o.report;
    let f = r
        .fallback
        .clone()
        .expect("the drill must report a fallback");
    assert_ne!(f.failed_backup, f.used_backup);
    assert!(
        f.used_backup < f.failed_backup,
        "fell back to a newer backup?"
    );
    assert_eq!(r.backup_used, f.used_backup);
    // Independently: the damaged object fails its check, and the used backup is the older of
    // the two in the store.
    let store = carta_dr_backends::open(&o.repo_url).expect("store");
    let repo = Repo::new(store, EnvelopeOptions::zstd(3));
    let ids = repo.list_ids().await.expect("ids");
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0].to_string(), f.used_backup);
    assert_eq!(ids[1].to_string(), f.failed_backup);
    let obj = StorePath::new(f.corrupted_object.as_deref().expect("object")).expect("path");
    assert!(repo.get(&obj).await.is_err(), "damaged object still opens");
    assert_phases_add_up(&o);
    assert!(r.verdict.checks_passed, "checks: {:#?}", r.checks);
    assert!(r.summary().contains("FALLBACK"));
    cleanup(o).await;
}

#[test]
fn drill_restore_cli_end_to_end_and_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let history = format!("file://{}", dir.path().join("history").display());
    let md = dir.path().join("report.md");
    let out = Command::new(exe())
        .args(["drill", "restore", "--json", "--rto", "10m", "--rpo", "5m"])
        .arg("--history")
        .arg(&history)
        .arg("--report")
        .arg(&md)
        .env("CARTA_DR_STATE_DIR", &state)
        .output()
        .expect("run carta-dr");
    assert!(
        out.status.success(),
        "drill restore failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["verdict"]["pass"], true);
    let sum: u64 = v["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["millis"].as_u64().expect("millis"))
        .sum();
    assert_eq!(sum, v["rto_millis"].as_u64().expect("rto"));
    let text = std::fs::read_to_string(&md).expect("markdown report");
    assert!(text.contains("## RTO phases") && text.contains("## Commands"));

    let out = Command::new(exe())
        .args(["drill", "history", "--json", "--history", &history])
        .output()
        .expect("run carta-dr");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON history");
    let list = h.as_array().expect("array");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], v["id"]);
    let out = Command::new(exe())
        .args(["drill", "history", "--history", &history])
        .output()
        .expect("run carta-dr");
    assert!(String::from_utf8_lossy(&out.stdout).contains(v["id"].as_str().expect("id")));
}
