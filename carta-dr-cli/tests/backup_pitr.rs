//! Point-in-time recovery through the CLI on a real PostgreSQL 15, with WAL archived by
//! `carta-dr wal-push` and replayed through `carta-dr wal-fetch`: after a DELETE at T, restores
//! by time, LSN and named restore point land before it; by xid (inclusive) just after it; a
//! later insert never appears.

mod backup_support;

use backup_support::*;

fn digest(pg: &carta_dr_testkit::PgCluster) -> String {
    pg.psql("postgres", "select count(*) || ':' || md5(coalesce(string_agg(id || '=' || v, ',' order by id), '')) from t")
}

#[test]
fn backup_pitr_by_time_lsn_xid_and_name() {
    let env = Env::local("bk-pitr");
    env.pg.psql("postgres", "create table t (id int primary key, v text); insert into t select g, md5(g::text) from generate_series(1, 5000) g");
    let rec = env.backup();
    assert!(rec["stored_size"].as_u64().unwrap() > 0);

    env.pg.psql(
        "postgres",
        "insert into t select g, 'second ' || g from generate_series(5001, 6000) g",
    );
    let before = digest(&env.pg);
    env.pg.psql(
        "postgres",
        "select pg_create_restore_point('before_delete')",
    );
    let lsn = env.pg.psql("postgres", "select pg_current_wal_lsn()");
    let time = env.pg.psql("postgres", "select clock_timestamp()::text");
    let xid = env.pg.psql(
        "postgres",
        "begin; delete from t where id % 3 = 0; select txid_current(); commit;",
    );
    let after_delete = digest(&env.pg);
    assert_ne!(before, after_delete);
    env.pg.psql(
        "postgres",
        "insert into t values (100000, 'after everything')",
    );
    env.archive_now();

    let cases: [(&str, Vec<&str>, &str); 4] = [
        ("name", vec!["--target-name", "before_delete"], &before),
        ("lsn", vec!["--target-lsn", lsn.as_str()], &before),
        ("time", vec!["--target-time", time.as_str()], &before),
        ("xid", vec!["--target-xid", xid.trim()], &after_delete),
    ];
    for (what, args, want) in cases {
        let mut a = args.clone();
        a.extend_from_slice(&["--target-action", "promote"]);
        let restored = env.restore_and_start(&format!("bk-pitr-{what}"), &a);
        wait_promoted(&restored);
        assert_eq!(&digest(&restored), want, "restore by {what}");
        drop(restored);
    }
}
