//! `carta-dr rejoin` on a real PostgreSQL 15 whose old primary cannot be rewound (no data
//! checksums, no `wal_log_hints`): with `--allow-delete-datadir` and a repository, the old
//! primary is refilled from the newest backup in the store, replays the archive and streams
//! from the new primary; without the flag it refuses and leaves the data directory alone.

mod backup_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use backup_support::{bin, Env};
use carta_dr_testkit::{as_test_user, scratch_dir, test_user, PgCluster};

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(p).expect("read dir") {
            let e = e.expect("entry");
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let t = e.file_type().expect("file type");
            if t.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(root, &path, out);
            } else {
                out.insert(rel, std::fs::read(&path).expect("read file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Files under `dir` not owned by `uid`.
fn not_owned_by(dir: &Path, uid: u32) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut bad = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).expect("stat");
        if m.uid() != uid {
            bad.push(p.display().to_string());
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p).expect("read dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    bad
}

/// `carta-dr --repo REPO rejoin ARGS...` as this process's user (root: the restore runs as
/// root and hands the files to `--run-as`), whatever its outcome.
fn rejoin(repo: &str, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(bin());
    c.arg("--repo").arg(repo).arg("rejoin").args(args);
    match test_user() {
        Some(u) => {
            c.arg("--run-as").arg(&u.name);
        }
        None => {
            as_test_user(&mut c);
        }
    }
    c.output().expect("run carta-dr rejoin")
}

#[test]
fn rejoin_without_rewind_restores_from_the_store_and_streams() {
    // A primary that pg_rewind cannot handle, archiving with carta-dr into a file:// store.
    let repo_dir = scratch_dir("rejoin-store-repo");
    let repo = format!("file://{}", repo_dir.path().display());
    let cmd = format!("{} --repo '{}' wal-push %p", bin().display(), repo);
    let pg = PgCluster::builder()
        .label("rejoin-store-primary")
        .data_checksums(false)
        .conf("wal_log_hints", "off")
        .conf("archive_mode", "on")
        .conf("archive_command", &cmd)
        .conf("archive_timeout", "5s")
        .start();
    let mut env = Env {
        pg,
        repo: repo.clone(),
        repo_dir: Some(repo_dir),
    };
    env.pg.psql(
        "postgres",
        "create table t(id int primary key, v text); \
         insert into t select g, 'before-backup' from generate_series(1, 1000) g",
    );
    let backup = env.backup();
    env.pg.psql(
        "postgres",
        "insert into t select g, 'after-backup' from generate_series(1001, 2000) g",
    );
    env.archive_now();

    let standby = env.pg.create_standby(None);
    let lsn = env.pg.psql("postgres", "select pg_current_wal_lsn()");
    standby.wait_until("the standby to catch up", Duration::from_secs(60), || {
        standby
            .try_psql(
                "postgres",
                &format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
            )
            .is_ok_and(|s| s == "t")
    });

    // The old primary goes down; the standby becomes the new primary on timeline 2.
    env.pg.stop();
    standby.promote();
    standby.psql(
        "postgres",
        "insert into t values (5000, 'after-promotion'); checkpoint",
    );
    let source = standby.conninfo("postgres");
    let data_dir = env.pg.data_dir().to_path_buf();
    let data = data_dir.display().to_string();

    // Without --allow-delete-datadir: refused, nothing touched.
    let before = snapshot(&data_dir);
    let out = rejoin(
        &repo,
        &["--data-dir", &data, "--source", &source, "--no-start"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "rejoin without --allow-delete-datadir succeeded:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("pg_rewind impossible"),
        "refusal does not say why:\n{stdout}\n{stderr}"
    );
    assert!(
        snapshot(&data_dir) == before,
        "the refused rejoin changed the data directory"
    );

    // With it: the newest backup from the store, then the archive, then streaming.
    let log = data_dir
        .parent()
        .expect("cluster dir")
        .join("rejoin.log")
        .display()
        .to_string();
    let conninfo = env.pg.conninfo("postgres");
    let out = rejoin(
        &repo,
        &[
            "--data-dir",
            &data,
            "--source",
            &source,
            "--allow-delete-datadir",
            "--conninfo",
            &conninfo,
            "--log",
            &log,
            "--timeout",
            "180",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "rejoin failed:\n{stdout}\n{stderr}\nserver log:\n{server_log}"
    );
    assert!(
        stdout.contains("method: store_restore"),
        "not restored from the store:\n{stdout}"
    );
    let id = backup["id"].as_str().expect("backup id");
    assert!(
        stdout.contains(id),
        "backup {id} not the one restored:\n{stdout}"
    );
    assert!(
        stdout.contains("streaming timeline 2"),
        "not streaming the new timeline:\n{stdout}"
    );
    assert!(
        server_log.contains("restored log file"),
        "the archive was not replayed through wal-fetch:\n{server_log}"
    );
    if let Some(u) = test_user() {
        let bad = not_owned_by(&data_dir, u.uid);
        assert!(bad.is_empty(), "not owned by {}: {bad:?}", u.name);
    }

    // In recovery, streaming from the new primary on its timeline, with its writes.
    assert_eq!(env.pg.psql("postgres", "select pg_is_in_recovery()"), "t");
    assert_eq!(
        env.pg.psql(
            "postgres",
            "select status || ' ' || received_tli || ' ' || sender_port from pg_stat_wal_receiver"
        ),
        format!("streaming 2 {}", standby.port())
    );
    env.pg
        .wait_until("the promotion row", Duration::from_secs(60), || {
            env.pg
                .try_psql("postgres", "select v from t where id = 5000")
                .is_ok_and(|s| s == "after-promotion")
        });
    standby.psql("postgres", "insert into t values (5001, 'after-rejoin')");
    env.pg.wait_until(
        "a row written after the rejoin",
        Duration::from_secs(60),
        || {
            env.pg
                .try_psql("postgres", "select v from t where id = 5001")
                .is_ok_and(|s| s == "after-rejoin")
        },
    );
    assert_eq!(env.pg.psql("postgres", "select count(*) from t"), "2002");
}
