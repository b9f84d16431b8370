//! A cluster with a tablespace outside its data directory, backed up through the CLI and
//! restored with the tablespace relocated, on a real PostgreSQL 15: the restore must not
//! touch the original tablespace directory, must point `pg_tblspc/<oid>` and
//! `tablespace_map` at the new one, and the started server must hold the same rows.

mod backup_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backup_support::*;
use carta_dr_testkit::scratch_dir;

/// Every entry under `dir` with its size and modification time, to show it was not touched.
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .expect("read tablespace dir")
            .flatten()
        {
            let m = e.metadata().expect("stat");
            if m.is_dir() {
                stack.push(e.path());
            }
            out.insert(e.path(), (m.len(), m.mtime(), m.mtime_nsec()));
        }
    }
    out
}

#[test]
fn backup_restores_a_tablespace_to_a_new_location() {
    let env = Env::local("bk-tblspc");
    let orig = scratch_dir("bk-tblspc-orig");
    let orig_loc = orig.path().canonicalize().expect("tablespace dir");
    env.pg.psql(
        "postgres",
        &format!("create tablespace ts location '{}'", orig_loc.display()),
    );
    // A large table and its index in the tablespace (chunked files), a small one (bundled),
    // and a whole database living there.
    env.pg.psql(
        "postgres",
        "create table big (id int primary key using index tablespace ts, v text) tablespace ts; \
         insert into big select g, md5(g::text) from generate_series(1, 200000) g; \
         create table small (id int, v text) tablespace ts; \
         insert into small values (1, 'one'), (2, 'two'); \
         create table here (id int); insert into here select generate_series(1, 1000)",
    );
    env.pg
        .psql("postgres", "create database tsdb tablespace ts");
    env.pg.psql(
        "tsdb",
        "create table t (id int, v text); \
         insert into t select g, repeat('x', g % 50) from generate_series(1, 50000) g",
    );
    let oid = env.pg.psql(
        "postgres",
        "select oid from pg_tablespace where spcname = 'ts'",
    );

    let rec = env.backup();
    let id = rec["id"].as_str().expect("backup id").to_string();
    // Written after the backup: replayed from the archive into the relocated tablespace.
    env.pg.psql(
        "postgres",
        "insert into big select g, 'after' from generate_series(200001, 210000) g; \
         delete from small where id = 2",
    );
    let in_ts = "select count(*) from pg_class c join pg_tablespace t \
                 on t.oid = c.reltablespace where t.spcname = 'ts'";
    let want_in_ts = env.pg.psql("postgres", in_ts);
    let want_pg = table_digests(&env.pg, "postgres");
    let want_tsdb = table_digests(&env.pg, "tsdb");
    env.archive_now();
    let mut env = env;
    env.pg.stop();
    let before = listing(&orig_loc);
    assert!(
        before.keys().any(|p| p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("PG_15_"))),
        "the tablespace directory holds no PG_15_* directory: {before:?}"
    );

    // Without relocation the original location is not empty: refused, nothing written.
    let (plain, _) = empty_target("bk-tblspc-plain");
    let out = env.try_carta(&[
        "restore",
        "--to",
        &plain.data_dir().display().to_string(),
        "--backup",
        &id,
    ]);
    assert!(
        !out.status.success(),
        "restore over the original tablespace location succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not empty"), "unexpected error: {err}");
    // A relocation naming no tablespace of the backup is refused.
    let out = env.try_carta(&[
        "restore",
        "--to",
        &plain.data_dir().display().to_string(),
        "--tablespace-map",
        "4294967295=/nonexistent",
    ]);
    assert!(!out.status.success(), "unknown tablespace OID accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no tablespace"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(plain);

    // Relocated, by its original directory.
    let new_parent = scratch_dir("bk-tblspc-new");
    let new_loc = new_parent
        .path()
        .canonicalize()
        .expect("new dir")
        .join("ts");
    let map = format!("{}={}", orig_loc.display(), new_loc.display());
    let (mut target, sets) = empty_target("bk-tblspc-restore");
    let data = target.data_dir().to_path_buf();
    let mut args = vec![
        "restore".to_string(),
        "--to".into(),
        data.display().to_string(),
        "--backup".into(),
        id.clone(),
        "--tablespace-map".into(),
        map,
    ];
    for s in &sets {
        args.push("--set".into());
        args.push(s.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.carta(&args);

    // What the restore wrote: the link, the map, the files in the new place.
    let link = data.join("pg_tblspc").join(&oid);
    let meta = std::fs::symlink_metadata(&link).expect("pg_tblspc link");
    assert!(
        meta.file_type().is_symlink(),
        "{} is not a symlink",
        link.display()
    );
    assert_eq!(std::fs::read_link(&link).expect("read link"), new_loc);
    let map_text = std::fs::read_to_string(data.join("tablespace_map")).expect("tablespace_map");
    assert_eq!(map_text, format!("{oid} {}\n", new_loc.display()));
    let restored_files = count_files(&new_loc);
    assert!(
        restored_files >= 5,
        "only {restored_files} files restored under {}",
        new_loc.display()
    );
    assert_eq!(
        listing(&orig_loc),
        before,
        "the original tablespace was modified"
    );

    // The server starts from it, replays the WAL written after the backup, and holds the rows.
    target.start();
    wait_promoted(&target);
    assert_eq!(
        target.psql(
            "postgres",
            "select pg_tablespace_location(oid) from pg_tablespace where spcname = 'ts'"
        ),
        new_loc.display().to_string()
    );
    assert_eq!(std::fs::read_link(&link).expect("read link"), new_loc);
    assert_eq!(target.psql("postgres", in_ts), want_in_ts);
    assert_eq!(table_digests(&target, "postgres"), want_pg);
    assert_eq!(table_digests(&target, "tsdb"), want_tsdb);
    assert_eq!(
        target.psql("postgres", "select count(*) from big"),
        "210000"
    );
    amcheck(&target);
    // Writes after recovery land in the new location, never the original.
    target.psql(
        "postgres",
        "insert into big select g, 'new' from generate_series(210001, 220000) g; checkpoint",
    );
    assert_eq!(
        listing(&orig_loc),
        before,
        "the original tablespace was modified"
    );
    drop(target);
    drop(new_parent);
    drop(orig);
}
