//! Shared fixtures of the backup tests: a cluster archiving into a directory, a `WalArchive`
//! view of that directory, table checksums, and starting a restored data directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use carta_dr_backends::LocalStore;
use carta_dr_core::envelope::EnvelopeOptions;
use carta_dr_core::traits::{ArchivedWal, PushOutcome};
use carta_dr_core::{Error, Result, TimelineId, WalArchive, WalFileName};
use carta_dr_postgres::replication::{ConnParams, PgBackup, PgBackupConfig, Repo};
use carta_dr_testkit::{scratch_dir, test_user, PgCluster, ScratchDir};

/// The directory PostgreSQL's `archive_command` copies WAL into, seen as a [`WalArchive`].
#[derive(Debug)]
pub struct DirArchive(pub PathBuf);

#[async_trait]
impl WalArchive for DirArchive {
    async fn push(&self, _name: &WalFileName, _data: Bytes) -> Result<PushOutcome> {
        Err(Error::NotSupported {
            backend: "dir".into(),
            what: "push (archive_command copies)".into(),
        })
    }
    async fn fetch(&self, name: &WalFileName) -> Result<Bytes> {
        std::fs::read(self.0.join(name.to_string()))
            .map(Bytes::from)
            .map_err(|e| Error::io(name, e))
    }
    async fn exists(&self, name: &WalFileName) -> Result<bool> {
        Ok(self.0.join(name.to_string()).is_file())
    }
    async fn list(&self, _timeline: Option<TimelineId>) -> Result<Vec<ArchivedWal>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.0).map_err(|e| Error::io("archive", e))? {
            let e = e.map_err(|e| Error::io("archive", e))?;
            if let Ok(name) = e.file_name().to_string_lossy().parse::<WalFileName>() {
                let size = e.metadata().map(|m| m.len()).ok();
                v.push(ArchivedWal {
                    name,
                    size,
                    stored_size: size.unwrap_or(0),
                });
            }
        }
        v.sort_by_key(|a| a.name);
        Ok(v)
    }
}

/// A primary archiving into `archive`.
pub struct Env {
    pub pg: PgCluster,
    pub archive: ScratchDir,
    pub repo_dir: ScratchDir,
}

impl Env {
    pub fn new(label: &str) -> Env {
        let archive = scratch_dir(&format!("{label}-archive"));
        let repo_dir = scratch_dir(&format!("{label}-repo"));
        let cmd = format!("test ! -f {0}/%f && cp %p {0}/%f", archive.path().display());
        let pg = PgCluster::builder()
            .label(label)
            .data_checksums(true)
            .conf("archive_mode", "on")
            .conf("archive_command", &cmd)
            .conf("archive_timeout", "2s")
            .start();
        Env {
            pg,
            archive,
            repo_dir,
        }
    }

    pub fn repo(&self) -> Repo {
        Repo::new(
            Arc::new(LocalStore::open(self.repo_dir.path()).expect("open local store")),
            EnvelopeOptions::default(),
        )
    }

    pub fn backup(&self, repo: Repo) -> PgBackup {
        let conn = ConnParams::from_lookup(|_| None)
            .apply_conninfo(&format!(
                "host=127.0.0.1 port={} user=postgres",
                self.pg.port()
            ))
            .expect("conninfo");
        PgBackup::new(
            repo,
            PgBackupConfig {
                conn,
                archive: Arc::new(DirArchive(self.archive.path().to_path_buf())),
                wal_deadline: Duration::from_secs(60),
                concurrency: 4,
                progress: None,
            },
        )
    }

    /// The `restore_command` that reads this archive.
    pub fn restore_command(&self) -> String {
        format!("cp {}/%f %p", self.archive.path().display())
    }

    /// Switches WAL and waits until the segment holding the current LSN is archived.
    pub fn archive_now(&self) {
        let seg = self
            .pg
            .psql("postgres", "select pg_walfile_name(pg_current_wal_lsn())");
        self.pg.psql("postgres", "select pg_switch_wal()");
        let path = self.archive.path().join(&seg);
        self.pg
            .wait_until(&format!("{seg} archived"), Duration::from_secs(60), || {
                path.is_file()
            });
    }
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

/// A not-yet-started cluster whose data directory is empty, ready to restore into, and the
/// settings that make the restored copy use its own port and socket.
pub fn empty_target(label: &str) -> (PgCluster, Vec<(String, String)>) {
    let c = PgCluster::builder().label(label).init();
    std::fs::remove_dir_all(c.data_dir()).expect("clear target");
    let settings = vec![
        ("port".to_string(), c.port().to_string()),
        (
            "unix_socket_directories".to_string(),
            c.socket_dir().display().to_string(),
        ),
        ("archive_mode".to_string(), "off".to_string()),
    ];
    (c, settings)
}

/// Gives a restored tree to the test user (PostgreSQL refuses to run as root).
pub fn chown_tree(p: &Path) {
    let Some(u) = test_user() else { return };
    std::os::unix::fs::lchown(p, Some(u.uid), Some(u.gid)).expect("chown");
    if p.is_dir() && !p.is_symlink() {
        for e in std::fs::read_dir(p).expect("read dir") {
            chown_tree(&e.expect("entry").path());
        }
    }
}

/// Runs `pg_amcheck --all --heapallindexed` against a cluster; panics with its output.
pub fn amcheck(pg: &PgCluster) {
    pg.psql("postgres", "create extension if not exists amcheck");
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
