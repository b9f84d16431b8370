//! Helpers for the tests that run `carta-dr` as PostgreSQL's archive and restore command.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use carta_dr_testkit::{as_test_user, scratch_dir, PgCluster, S3Env, ScratchDir, TcpProxy};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_carta-dr")
}

/// A repository for a test: a local directory or an S3 prefix (optionally behind a proxy that
/// can simulate an outage).
pub struct Repo {
    /// The URL.
    pub url: String,
    /// The local directory (for `file://`).
    pub dir: Option<ScratchDir>,
    /// The proxy in front of the S3 server, for outages.
    pub proxy: Option<TcpProxy>,
}

impl Repo {
    /// A local repository in a scratch directory the test user owns.
    pub fn local(label: &str) -> Repo {
        let dir = scratch_dir(label);
        let root = dir.subdir("repo");
        Repo {
            url: format!("file://{}", root.display()),
            dir: Some(dir),
            proxy: None,
        }
    }

    /// An S3 repository under a unique prefix, reached through a proxy.
    pub fn s3(label: &str) -> Repo {
        let env = S3Env::require();
        let proxy = TcpProxy::start(env.addr());
        let url = env.via(&proxy).unique_url(label);
        Repo {
            url,
            dir: None,
            proxy: Some(proxy),
        }
    }

    /// The local repository's root.
    pub fn root(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().join("repo"))
    }

    /// Takes the store down (local: every directory read-only to the test user; S3: the proxy
    /// refuses connections) or brings it back.
    pub fn set_down(&self, down: bool) {
        if let Some(p) = &self.proxy {
            p.set_down(down);
        }
        if let Some(root) = self.root() {
            let mode = if down { 0o555 } else { 0o755 };
            for d in dirs_under(&root) {
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
    }

    /// `env` assignments for a shell command: the repository and, for S3, the credentials.
    pub fn env_prefix(&self) -> String {
        let mut s = format!("env CARTA_DR_REPO=\"{}\"", self.url);
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
        ] {
            if let Ok(v) = std::env::var(k) {
                s.push_str(&format!(" {k}=\"{v}\""));
            }
        }
        s
    }

    /// The `archive_command` PostgreSQL runs.
    pub fn archive_command(&self, extra: &str) -> String {
        format!("{} {} {extra} wal-push %p", self.env_prefix(), bin())
    }

    /// The `restore_command` PostgreSQL runs.
    pub fn restore_command(&self) -> String {
        format!("{} {} wal-fetch %f %p", self.env_prefix(), bin())
    }

    /// `carta-dr ARGS` against this repository, as the test user.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin());
        cmd.args(args).env("CARTA_DR_REPO", &self.url);
        as_test_user(&mut cmd);
        cmd.output().unwrap()
    }
}

fn dirs_under(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// A PostgreSQL 15 cluster archiving into `repo` (keeping its WAL in `pg_wal` so tests can
/// compare), started.
pub fn archiving_cluster(repo: &Repo, extra_args: &str) -> PgCluster {
    PgCluster::builder()
        .label("wal-arch")
        .conf("archive_mode", "on")
        .conf("archive_command", &repo.archive_command(extra_args))
        .conf("wal_keep_size", "4GB")
        .conf("max_wal_size", "4GB")
        .conf("checkpoint_timeout", "1h")
        .start()
}

/// A row of `pg_stat_archiver`.
#[derive(Debug)]
pub struct ArchiverStats {
    pub archived: u64,
    pub failed: u64,
    pub last_archived: String,
}

pub fn archiver_stats(pg: &PgCluster) -> ArchiverStats {
    let s = pg.psql(
        "postgres",
        "SELECT archived_count, failed_count, coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    );
    let mut f = s.split('|');
    ArchiverStats {
        archived: f.next().unwrap().parse().unwrap(),
        failed: f.next().unwrap().parse().unwrap(),
        last_archived: f.next().unwrap_or("").to_string(),
    }
}

/// Switches to a new segment (writing something first so the switch happens) and returns the
/// name of the segment just finished.
pub fn switch_wal(pg: &PgCluster) -> String {
    pg.psql(
        "postgres",
        "CREATE TABLE IF NOT EXISTS filler(x int); INSERT INTO filler SELECT generate_series(1, 100)",
    );
    pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
}

/// Waits until no file waits in `archive_status` as `.ready`.
pub fn wait_archived(pg: &PgCluster, timeout: Duration) {
    let status = pg.data_dir().join("pg_wal/archive_status");
    pg.wait_until("every .ready file to be archived", timeout, || {
        std::fs::read_dir(&status)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".ready"))
    });
}

/// The archived (`.done`) complete segments in `pg_wal`.
pub fn done_segments(pg: &PgCluster) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(pg.data_dir().join("pg_wal/archive_status"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let seg = n.strip_suffix(".done")?.to_string();
            (seg.len() == 24).then_some(seg)
        })
        .collect();
    v.sort();
    v
}

/// Fetches `name` with `wal-fetch` (prefetch off) into `dir` and returns the bytes.
pub fn fetch_back(repo: &Repo, name: &str, dir: &Path) -> Vec<u8> {
    let dest = dir.join(name);
    let out = repo.run(&["wal-fetch", "--prefetch", "0", name, dest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "wal-fetch {name}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dest).unwrap()
}

/// Runs pgbench with `args` against `pg`, panicking on failure.
pub fn pgbench(pg: &PgCluster, args: &[&str]) {
    let out = pg.command("pgbench").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "pgbench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
