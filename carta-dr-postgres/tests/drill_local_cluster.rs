//! `LocalCluster` against the real PostgreSQL 15 binaries: init, start, query, crash, restart
//! (crash recovery), fast stop.

use std::time::Duration;

use carta_dr_postgres::local_cluster::{InitOptions, LocalCluster, PgInstall, ScratchArea};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_init_start_crash_restart_stop() {
    let install = PgInstall::discover(None, None)
        .unwrap_or_else(|e| panic!("{e} — install postgresql-15 (apt-get install postgresql-15)"));
    let area = ScratchArea::create(&install, "lc-test", None).expect("scratch");
    let data = area.path().join("data");
    let mut c = LocalCluster::init(&install, &data, area.path(), &InitOptions::default())
        .await
        .expect("initdb");
    c.start(Duration::from_secs(60)).await.expect("start");
    assert_ne!(c.port(), 0);
    let client = c.connect("postgres").await.expect("connect");
    client
        .batch_execute("CREATE TABLE t(x int); INSERT INTO t VALUES (1), (2);")
        .await
        .expect("sql");
    drop(client);

    let pids = c.kill();
    assert!(!pids.is_empty(), "kill signalled no process");
    assert!(!c.running());
    assert!(
        c.connect("postgres").await.is_err(),
        "server still answers after kill"
    );

    c.start(Duration::from_secs(60))
        .await
        .expect("restart after crash");
    let client = c.connect("postgres").await.expect("connect again");
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2, "committed rows survive the crash");
    drop(client);
    c.stop(Duration::from_secs(30)).await.expect("stop");
    assert!(!c.running());
    assert!(c.log_tail(50).contains("database system is shut down"));
}
