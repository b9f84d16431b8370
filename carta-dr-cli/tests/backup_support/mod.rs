//! Shared fixtures of the CLI backup tests: a primary archiving with `carta-dr wal-push`, the
//! `carta-dr` binary run as the test user, restores started on their own port.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use carta_dr_testkit::{as_test_user, scratch_dir, PgCluster, ScratchDir};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_carta-dr"))
}

/// A primary whose WAL goes to `repo` through `carta-dr wal-push`.
pub struct Env {
    pub pg: PgCluster,
    pub repo: String,
    pub repo_dir: Option<ScratchDir>,
}

impl Env {
    /// A primary archiving into a local repository.
    pub fn local(label: &str) -> Env {
        let dir = scratch_dir(&format!("{label}-repo"));
        let repo = format!("file://{}", dir.path().display());
        Self::with_repo(label, repo, Some(dir))
    }

    /// A primary archiving into the repository at `repo`.
    pub fn with_repo(label: &str, repo: String, repo_dir: Option<ScratchDir>) -> Env {
        let cmd = format!("{} --repo '{}' wal-push %p", bin().display(), repo);
        let pg = PgCluster::builder()
            .label(label)
            .data_checksums(true)
            .conf("archive_mode", "on")
            .conf("archive_command", &cmd)
            .conf("archive_timeout", "5s")
            .start();
        Env { pg, repo, repo_dir }
    }

    /// `carta-dr --repo REPO ARGS...` as the test user; panics with its output on failure.
    pub fn carta(&self, args: &[&str]) -> String {
        let out = self.try_carta(args);
        assert!(
            out.status.success(),
            "carta-dr {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The command, not yet run.
    pub fn carta_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--repo").arg(&self.repo).args(args);
        as_test_user(&mut c);
        c
    }

    /// `carta-dr` as the test user, whatever its outcome.
    pub fn try_carta(&self, args: &[&str]) -> Output {
        self.carta_cmd(args).output().expect("run carta-dr")
    }

    /// The `--pg` connection string of the primary.
    pub fn pg_conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.pg.port())
    }

    /// Takes a backup and returns its JSON record summary.
    pub fn backup(&self) -> serde_json::Value {
        let out = self.carta(&[
            "backup",
            "--pg",
            &self.pg_conninfo(),
            "--json",
            "--wal-timeout",
            "120",
        ]);
        serde_json::from_str(&out).expect("backup --json")
    }

    /// Switches WAL and waits until that segment is archived.
    pub fn archive_now(&self) {
        let seg = self
            .pg
            .psql("postgres", "select pg_walfile_name(pg_current_wal_lsn())");
        self.pg.psql("postgres", "select pg_switch_wal()");
        self.pg
            .wait_until(&format!("{seg} archived"), Duration::from_secs(120), || {
                let last = self.pg.psql(
                    "postgres",
                    "select coalesce(last_archived_wal, '') from pg_stat_archiver",
                );
                last.len() == 24 && last.as_str() >= seg.as_str()
            });
    }

    /// Restores into a fresh cluster directory with `extra` options, starts it, and returns it.
    pub fn restore_and_start(&self, label: &str, extra: &[&str]) -> PgCluster {
        let (mut target, sets) = empty_target(label);
        let dir = target.data_dir().display().to_string();
        let mut args = vec!["restore", "--to", dir.as_str()];
        args.extend_from_slice(extra);
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        for s in &sets {
            args.push("--set");
            args.push(s);
        }
        self.carta(&args);
        target.start();
        target
    }
}

/// A cluster directory whose data directory does not exist yet (the restore creates it), and
/// the settings that give the restored server its own port and socket and no archiving.
pub fn empty_target(label: &str) -> (PgCluster, Vec<String>) {
    let c = PgCluster::builder().label(label).init();
    std::fs::remove_dir_all(c.data_dir()).expect("clear target");
    let sets = vec![
        format!("port={}", c.port()),
        format!("unix_socket_directories={}", c.socket_dir().display()),
        "archive_mode=off".to_string(),
    ];
    (c, sets)
}

/// Waits until a restored server has finished recovery and accepts writes.
pub fn wait_promoted(pg: &PgCluster) {
    pg.wait_until("recovery to end", Duration::from_secs(180), || {
        pg.try_psql("postgres", "select pg_is_in_recovery()")
            .ok()
            .as_deref()
            == Some("f")
    });
}

/// md5 of every user table's rows in order, one line per table.
pub fn table_digests(pg: &PgCluster, db: &str) -> String {
    let tables = pg.psql(
        db,
        "select format('%I.%I', schemaname, relname) from pg_stat_user_tables order by 1",
    );
    let mut out = String::new();
    for t in tables.lines() {
        let d = pg.psql(
            db,
            &format!(
                "select md5(coalesce(string_agg(x::text, E'\\n' order by x::text), '')) from {t} x"
            ),
        );
        out.push_str(&format!("{t} {d}\n"));
    }
    out
}

/// Runs pg_amcheck on every database; panics with its output on failure.
pub fn amcheck(pg: &PgCluster) {
    let out = pg
        .command("pg_amcheck")
        .args(["--all", "--heapallindexed", "--install-missing"])
        .output()
        .expect("run pg_amcheck");
    assert!(
        out.status.success(),
        "pg_amcheck failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Number of files under `dir`, recursively.
pub fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_files(&p)
            } else {
                1
            }
        })
        .sum()
}
