//! The failover game-day against real PostgreSQL 15, in both replication modes: SIGKILL of
//! the primary with a live writer, detection, fence, promote, repoint, measurements, and the
//! old primary rejoining through pg_rewind.

use std::time::Duration;

use carta_dr_postgres::local_cluster::PgInstall;
use carta_dr_postgres::promote::drill::{
    append_local_log, read_local_log, render_drill, run_failover_drill, DrillOptions,
    ReplicationMode,
};
use carta_dr_postgres::promote::rejoin::RejoinMethod;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_drill_async_then_sync_meets_the_goals_and_rejoins() {
    let install = PgInstall::discover(None, None)
        .unwrap_or_else(|e| panic!("{e} — install postgresql-15 (apt-get install postgresql-15)"));
    let opts = DrillOptions::new(install);
    assert_eq!(opts.health_interval, Duration::from_secs(1));
    let report = run_failover_drill(&opts).await.expect("drill");
    println!("{}", render_drill(&report));
    assert_eq!(report.modes.len(), 2);
    assert_eq!(report.modes[0].mode, ReplicationMode::Async);
    assert_eq!(report.modes[1].mode, ReplicationMode::Sync);
    for m in &report.modes {
        // The writer really wrote on both sides of the kill.
        assert!(
            m.acked_before_kill > 0 && m.acked_total >= m.acked_before_kill + 100,
            "{m:?}"
        );
        // Detection needs `failures` consecutive failed checks at 1 s: about 1 to 2 s.
        assert!(
            m.detection_seconds > 0.5 && m.detection_seconds < 3.0,
            "{m:?}"
        );
        // Goals: downtime as the client saw it < 5 s, promotion < 1 s.
        assert!(m.write_downtime_seconds > m.detection_seconds, "{m:?}");
        assert!(m.write_downtime_seconds < 5.0, "{m:?}");
        assert!(m.promotion_seconds < 1.0, "{m:?}");
        assert_eq!(m.new_timeline.map(|t| t.get()), Some(2));
        // The fenced old primary takes no write.
        assert!(!m.old_primary_accepted_write, "{}", m.split_brain_probe);
        // The old primary is back as a streaming standby through pg_rewind.
        let r = m.rejoin.as_ref().expect("rejoin ran");
        assert_eq!(r.method, Some(RejoinMethod::PgRewind), "{r:?}");
        assert!(r.streaming && r.replicates, "{r:?}");
    }
    // Synchronous replication: no acknowledged write is lost.
    assert_eq!(report.modes[1].acked_lost, 0, "{:?}", report.modes[1]);
    assert!(report.goals_met, "{:?}", report.goal_failures());

    // The drill log keeps one JSON line per drill.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("drills.jsonl");
    append_local_log(&log, &report).unwrap();
    append_local_log(&log, &report).unwrap();
    let back = read_local_log(&log).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back[1], report);
}
