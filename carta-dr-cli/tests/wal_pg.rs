//! `carta-dr wal-push` / `wal-fetch` as PostgreSQL 15's archive_command and restore_command,
//! against the local store and the S3-compatible server: archiving under load, byte-identical
//! fetches, point-in-time recovery, store outages, another cluster's WAL.

mod support;

use std::time::Duration;

use carta_dr_testkit::{scratch_dir, PgCluster};
use support::*;

const LONG: Duration = Duration::from_secs(240);

/// Archiving under pgbench and pg_switch_wal(), every segment fetched back byte-identical,
/// then PITR to just before an accidental DELETE.
fn archive_under_load_then_pitr(repo: Repo) {
    let pg = archiving_cluster(&repo, "");
    pgbench(&pg, &["-i", "-s", "4", "-q"]);

    // A base backup that takes no WAL with it: recovery needs the archive.
    let mut restored = PgCluster::builder().label("pitr").init();
    std::fs::remove_dir_all(restored.data_dir()).unwrap();
    let out = pg
        .command("pg_basebackup")
        .arg("-D")
        .arg(restored.data_dir())
        .args(["-X", "none", "-c", "fast"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Load: pgbench transactions and segment switches until 30+ segments are archived.
    let mut last = String::new();
    for i in 0..32 {
        if i % 4 == 0 {
            pgbench(&pg, &["-n", "-c", "2", "-t", "300"]);
        }
        last = switch_wal(&pg);
    }

    // The accidental DELETE at time T, and commits after it.
    pg.psql(
        "postgres",
        "CREATE TABLE precious(id int primary key, note text); \
         INSERT INTO precious SELECT g, 'row ' || g FROM generate_series(1, 1000) g",
    );
    pg.psql("postgres", "SELECT pg_sleep(1.1)");
    let t = pg.psql("postgres", "SELECT clock_timestamp()");
    pg.psql("postgres", "SELECT pg_sleep(1.1)");
    pg.psql("postgres", "DELETE FROM precious WHERE id > 10");
    pg.psql(
        "postgres",
        "CREATE TABLE later(id int); INSERT INTO later VALUES (1), (2), (3)",
    );
    for _ in 0..2 {
        last = switch_wal(&pg);
    }
    pg.wait_until("the last segment to be archived", LONG, || {
        archiver_stats(&pg).last_archived >= last
    });
    wait_archived(&pg, LONG);

    let stats = archiver_stats(&pg);
    assert_eq!(stats.failed, 0, "{stats:?}\n{}", pg.log_tail(30));
    assert!(stats.archived >= 30, "{stats:?}");

    // Every archived segment comes back byte-identical.
    let segs = done_segments(&pg);
    assert!(segs.len() >= 30, "only {} segments in pg_wal", segs.len());
    let fetch_dir = scratch_dir("fetch");
    for s in &segs {
        let orig = std::fs::read(pg.data_dir().join("pg_wal").join(s)).unwrap();
        let back = fetch_back(&repo, s, fetch_dir.path());
        assert!(back == orig, "{s} differs after a round trip");
    }

    // wal-list sees one timeline without gaps from the first archived segment on.
    let out = repo.run(&["wal-list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tl = &listing["timelines"][0];
    assert_eq!(tl["timeline"], 1);
    assert!(tl["segments"].as_u64().unwrap() >= 30, "{listing}");
    assert_eq!(tl["gaps"].as_array().unwrap().len(), 0, "{listing}");

    // PITR to T.
    restored.append_conf(&format!(
        "\n# PITR\nport = {}\nunix_socket_directories = '{}'\narchive_mode = off\n\
         restore_command = '{}'\nrecovery_target_time = '{t}'\nrecovery_target_action = 'promote'",
        restored.port(),
        restored.socket_dir().display(),
        repo.restore_command().replace('\'', "''"),
    ));
    std::fs::write(restored.data_dir().join("recovery.signal"), b"").unwrap();
    if let Some(u) = carta_dr_testkit::test_user() {
        std::os::unix::fs::chown(
            restored.data_dir().join("recovery.signal"),
            Some(u.uid),
            Some(u.gid),
        )
        .unwrap();
    }
    restored.start();
    restored.wait_until("recovery to end and the server to promote", LONG, || {
        restored
            .try_psql("postgres", "SELECT pg_is_in_recovery()")
            .is_ok_and(|s| s == "f")
    });
    assert_eq!(
        restored.psql("postgres", "SELECT count(*) FROM precious"),
        "1000",
        "the deleted rows are back"
    );
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT count(*) FROM pg_class WHERE relname = 'later'"
        ),
        "0",
        "commits after T are not replayed"
    );
    let log = restored.log_tail(200);
    assert!(log.contains("restored log file"), "{log}");
    assert!(
        log.contains("recovery stopping before commit"),
        "recovery did not stop at the target:\n{log}"
    );
}

#[test]
fn local_archive_under_load_byte_identical_and_pitr() {
    archive_under_load_then_pitr(Repo::local("wal-local"));
}

#[test]
fn s3_archive_under_load_byte_identical_and_pitr() {
    archive_under_load_then_pitr(Repo::s3("wal-s3"));
}

/// The store goes down: archive_command fails and PostgreSQL retries; once it is back every
/// segment is archived, none lost.
fn outage_then_catch_up(repo: Repo) {
    let pg = archiving_cluster(&repo, "");
    for _ in 0..3 {
        switch_wal(&pg);
    }
    wait_archived(&pg, LONG);
    assert_eq!(archiver_stats(&pg).failed, 0);

    repo.set_down(true);
    let mut during = Vec::new();
    for _ in 0..4 {
        during.push(switch_wal(&pg));
    }
    pg.wait_until("archive_command to fail", LONG, || {
        archiver_stats(&pg).failed > 0
    });
    // Nothing switched during the outage is reported archived.
    let st = archiver_stats(&pg);
    assert!(st.last_archived < during[0], "{st:?} vs {during:?}");

    repo.set_down(false);
    let last = switch_wal(&pg);
    pg.wait_until("the backlog to be archived", LONG, || {
        archiver_stats(&pg).last_archived >= last
    });
    wait_archived(&pg, LONG);
    let fetch_dir = scratch_dir("fetch");
    let segs = done_segments(&pg);
    for s in during.iter().chain(std::iter::once(&last)) {
        assert!(segs.contains(s), "{s} not archived: {segs:?}");
    }
    for s in &segs {
        let orig = std::fs::read(pg.data_dir().join("pg_wal").join(s)).unwrap();
        assert!(
            fetch_back(&repo, s, fetch_dir.path()) == orig,
            "{s} differs"
        );
    }
}

#[test]
fn local_store_outage_postgres_retries_and_nothing_is_lost() {
    outage_then_catch_up(Repo::local("wal-outage"));
}

#[test]
fn s3_store_outage_postgres_retries_and_nothing_is_lost() {
    outage_then_catch_up(Repo::s3("wal-outage"));
}

/// A segment of another cluster is refused, naming both system identifiers.
fn other_cluster_refused(repo: Repo) {
    let a = PgCluster::builder().label("sys-a").init();
    let b = PgCluster::builder().label("sys-b").init();
    let seg = "000000010000000000000001";
    let push = |pg: &PgCluster| {
        let p = pg.data_dir().join("pg_wal").join(seg);
        repo.run(&["wal-push", "--look-ahead", "0", p.to_str().unwrap()])
    };
    let sysid = |pg: &PgCluster| {
        let out = pg
            .command("pg_controldata")
            .arg(pg.data_dir())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("Database system identifier:")
                    .map(|s| s.trim().to_string())
            })
            .unwrap()
    };
    let first = push(&a);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = push(&b);
    assert_eq!(second.status.code(), Some(6), "exit status of a conflict");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains(&sysid(&a)) && err.contains(&sysid(&b)),
        "{err}"
    );
    // The first cluster's copy is kept.
    let dir = scratch_dir("fetch");
    let orig = std::fs::read(a.data_dir().join("pg_wal").join(seg)).unwrap();
    assert!(fetch_back(&repo, seg, dir.path()) == orig);
}

#[test]
fn local_segment_from_another_cluster_is_refused() {
    other_cluster_refused(Repo::local("wal-sysid"));
}

#[test]
fn s3_segment_from_another_cluster_is_refused() {
    other_cluster_refused(Repo::s3("wal-sysid"));
}
