//! PgPromoter against real PostgreSQL 15: promotion with fencing and repointing, a failing
//! fence, the loss budget, the read-only fence and pgbouncer repointing.

mod promote_support;

use std::sync::Arc;
use std::time::Duration;

use carta_dr_core::traits::{PromoteRequest, StepOutcome};
use carta_dr_core::{Lsn, Promoter, TimelineId};
use carta_dr_postgres::promote::{
    clean, promoted, render_report, CommandFencer, FileRepointer, PgBouncerRepointer,
    PgCtlStopFencer, PgPromoter, ReadOnlyFencer,
};
use promote_support::*;

fn request(max_lag: Option<u64>, force: bool) -> PromoteRequest {
    PromoteRequest {
        max_lag_bytes: max_lag,
        force,
        dry_run: false,
    }
}

fn outcome<'a>(r: &'a carta_dr_core::traits::PromotionReport, name: &str) -> &'a StepOutcome {
    &r.steps.iter().find(|s| s.name == name).unwrap().outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_fences_promotes_repoints_and_writes_through_the_file() {
    let (primary, standby) = pair(&[]);
    primary.psql(
        "postgres",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1)",
    );
    wait_caught_up(&primary, &standby);
    let dir = tempfile::tempdir().unwrap();
    let conn_file = dir.path().join("db.conn");
    std::fs::write(&conn_file, primary.conninfo("postgres")).unwrap();

    let promoter = PgPromoter::new(node("old", &primary), vec![node("s1", &standby)])
        .fencer(Arc::new(PgCtlStopFencer::new(
            pg_bin(),
            Duration::from_secs(30),
        )))
        .repointer(Arc::new(FileRepointer::new(&conn_file)));
    let report = promoter.promote(request(Some(0), false)).await.unwrap();
    println!("{}", render_report(&report));
    assert!(promoted(&report) && clean(&report), "{report:#?}");
    assert_eq!(report.promoted, "s1");
    assert_eq!(report.new_timeline, TimelineId::new(2));
    assert_eq!(report.estimated_loss_bytes, Some(0));
    let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["precheck", "fence", "promote", "repoint", "verify"]);
    // The fence really stopped the old primary; the standby really left recovery.
    assert!(!primary.is_running());
    assert!(!in_recovery(&standby));
    // The connection file now names the new primary, and the write check went through it.
    assert_eq!(
        std::fs::read_to_string(&conn_file).unwrap().trim(),
        standby.conninfo("postgres")
    );
    let detail = &report.steps[4].detail;
    assert!(detail.contains("through the repointed path"), "{detail}");
    assert_eq!(
        standby.psql("postgres", "SELECT count(*) FROM carta_dr_promotion_check"),
        "1"
    );
    assert_eq!(standby.psql("postgres", "SELECT x FROM t"), "1");
    // Goal: the promotion step itself under a second.
    let promote = report.steps.iter().find(|s| s.name == "promote").unwrap();
    assert!(promote.duration < Duration::from_secs(1), "{promote:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_is_blocked_by_a_failing_fence() {
    let (primary, standby) = pair(&[]);
    let promoter = PgPromoter::new(node("old", &primary), vec![node("s1", &standby)]).fencer(
        Arc::new(CommandFencer::new("false", Duration::from_secs(10))),
    );
    let report = promoter.promote(request(None, false)).await.unwrap();
    println!("{}", render_report(&report));
    assert!(!promoted(&report));
    assert!(
        matches!(outcome(&report, "fence"), StepOutcome::Failed { why } if why.contains("`false` failed"))
    );
    assert!(matches!(
        outcome(&report, "promote"),
        StepOutcome::Skipped { .. }
    ));
    // Nothing changed: the standby is still a standby, the primary still a primary.
    assert!(in_recovery(&standby));
    assert!(primary.is_running() && !in_recovery(&primary));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_refuses_a_standby_lagging_beyond_the_budget() {
    let (primary, standby) = pair(&[]);
    // Cut the standby off (no WAL receiver) and pause its replay, then write on the primary.
    standby.psql(
        "postgres",
        "ALTER SYSTEM SET primary_conninfo = ''; SELECT pg_reload_conf(); SELECT pg_wal_replay_pause();",
    );
    // End the replication connection from the primary's side as well, so the receiver does
    // not linger in a blocked read until a timeout; with an empty primary_conninfo it does
    // not come back.
    primary.wait_until("the WAL sender to end", Duration::from_secs(60), || {
        primary
            .try_psql(
                "postgres",
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication",
            )
            .is_ok_and(|s| s == "0")
    });
    standby.wait_until("the WAL receiver to stop", Duration::from_secs(60), || {
        standby
            .try_psql("postgres", "SELECT count(*) FROM pg_stat_wal_receiver")
            .is_ok_and(|s| s == "0")
    });
    primary.psql(
        "postgres",
        "CREATE TABLE big AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 20000) g",
    );
    let primary_lsn: Lsn = primary
        .psql("postgres", "SELECT pg_current_wal_lsn()")
        .parse()
        .unwrap();
    let promoter = PgPromoter::new(node("old", &primary), vec![node("s1", &standby)]).fencer(
        Arc::new(PgCtlStopFencer::new(pg_bin(), Duration::from_secs(30))),
    );
    let report = promoter.promote(request(Some(8192), false)).await.unwrap();
    println!("{}", render_report(&report));
    assert!(!promoted(&report));
    let pre = &report.steps[0];
    let StepOutcome::Failed { why } = &pre.outcome else {
        panic!("precheck should refuse: {pre:?}")
    };
    let loss = report.estimated_loss_bytes.unwrap();
    let standby_lsn = report.standby_lsn.unwrap();
    assert!(loss > 8192, "{loss}");
    assert!(report.primary_lsn.unwrap() >= primary_lsn);
    assert_eq!(loss, report.primary_lsn.unwrap().bytes_since(standby_lsn));
    // The refusal says exactly what would be lost: bytes and LSN range.
    assert!(why.contains(&format!("{loss} bytes")), "{why}");
    assert!(
        why.contains(&format!("{standby_lsn}..{}", report.primary_lsn.unwrap())),
        "{why}"
    );
    assert!(why.contains("--max-lag 8192"), "{why}");
    // Nothing was fenced or promoted.
    assert!(matches!(
        outcome(&report, "fence"),
        StepOutcome::Skipped { .. }
    ));
    assert!(primary.is_running());
    assert!(in_recovery(&standby));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_fence_makes_the_old_primary_refuse_writes() {
    let (primary, standby) = pair(&[]);
    let promoter = PgPromoter::new(node("old", &primary), vec![node("s1", &standby)])
        .fencer(Arc::new(ReadOnlyFencer::new(Duration::from_secs(10))));
    let report = promoter.promote(request(None, false)).await.unwrap();
    println!("{}", render_report(&report));
    assert!(promoted(&report) && clean(&report), "{report:#?}");
    let fence = report.steps.iter().find(|s| s.name == "fence").unwrap();
    assert!(fence.detail.contains("25006"), "{fence:?}");
    // The old primary still runs but refuses writes.
    assert!(primary.is_running());
    let err = primary
        .try_psql("postgres", "CREATE TABLE after_fence (x int)")
        .unwrap_err();
    assert!(err.contains("read-only transaction"), "{err}");
    assert!(!in_recovery(&standby));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_path_reaches_the_new_primary_after_repointing() {
    let (primary, standby) = pair(&[]);
    let bouncer = PgBouncer::start(primary.port());
    // Before: through pgbouncer we reach the primary (timeline 1, not in recovery).
    let via = |sql: &str| {
        let out = std::process::Command::new(carta_dr_testkit::pg_bin_dir().join("psql"))
            .args(["-XAtq", "-c", sql, &bouncer.client_conninfo()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(via("SELECT inet_server_port()"), primary.port().to_string());

    let promoter = PgPromoter::new(node("old", &primary), vec![node("s1", &standby)])
        .fencer(Arc::new(PgCtlStopFencer::new(
            pg_bin(),
            Duration::from_secs(30),
        )))
        .repointer(Arc::new(
            PgBouncerRepointer::new(&bouncer.ini, "app", bouncer.admin_conninfo())
                .client_conninfo(bouncer.client_conninfo()),
        ));
    let report = promoter.promote(request(None, false)).await.unwrap();
    println!("{}", render_report(&report));
    assert!(
        promoted(&report) && clean(&report),
        "{report:#?}\n{}",
        bouncer.log()
    );
    let verify = report.steps.iter().find(|s| s.name == "verify").unwrap();
    assert!(
        verify.detail.contains("through the repointed path"),
        "{verify:?}"
    );
    // After: pgbouncer sends us to the new primary, which takes writes.
    assert_eq!(via("SELECT inet_server_port()"), standby.port().to_string());
    assert_eq!(via("SELECT pg_is_in_recovery()"), "f");
    via("CREATE TABLE through_bouncer (x int)");
    let ini = std::fs::read_to_string(&bouncer.ini).unwrap();
    assert!(
        ini.contains(&format!(
            "app = host=127.0.0.1 port={} dbname=postgres",
            standby.port()
        )),
        "{ini}"
    );
}
