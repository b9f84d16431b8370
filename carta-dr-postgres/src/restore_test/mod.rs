//! The restore test: "does it actually restore?"
//!
//! [`run`] restores a base backup (the newest, or a given one) or a logical dump into a
//! scratch cluster on a free loopback port under a temporary directory (run as an unprivileged
//! user when this process is root, like the restore drill), starts it, checks it, and tears it
//! down, timing each phase:
//!
//! | phase | base backup | dump |
//! |---|---|---|
//! | `restore` | the files, every chunk's SHA-256 and file's CRC-32C checked; every tablespace relocated to `<scratch>/tablespaces/<oid>` | `pg_restore` into a fresh `initdb --data-checksums` cluster |
//! | `page_checksums` | every page of every relation file (tablespaces included) against PostgreSQL's checksum ([`carta_dr_core::pagecheck`]), before the server starts | — |
//! | `start` | recovery to the row counts' point (else the backup's consistent point), promotion | `initdb` and start |
//! | `row_counts` | per-table counts against those recorded after the backup | against the dump record's counts |
//! | `pg_amcheck` | heap and btree checks of every database, `--heapallindexed` | same |
//! | `assertions` | user SQL that must return true | same |
//! | `spot_check` | sampled rows detoasted, and re-read through the primary key | same |
//! | `teardown` | server stopped, directory removed, relocated tablespaces with it (also on error and when the future is dropped) | same |
//!
//! The tablespace locations a backup records are never written: they may belong to the
//! source cluster running on this machine. The restore writes each tablespace under the
//! scratch directory and points `pg_tblspc/<oid>` and `tablespace_map` there.
//!
//! ## Exact row counts after a base backup
//!
//! [`rowcounts::record_row_counts`] counts each database in one `REPEATABLE READ` snapshot `S`
//! and reads the WAL insert position `L` in the snapshot's first statement. Every commit `S`
//! sees wrote its commit record before `L`, so a recovery that stops just before `L`
//! (`recovery_target_lsn = L`, `recovery_target_inclusive = off`) holds all of them. It may hold
//! more: a transaction whose commit record lies before `L` but which `S` does not see (still
//! running when `S` was taken, or started and committed between `S` and reading `L`; and, with
//! several databases, anything committed before the largest `L`). Visibility follows the
//! process array, not WAL order, so this race cannot be closed from the outside. It is told
//! apart exactly instead: on the restored server, every transaction id `S` does not see (its
//! `xip` list, and `xmax` up to the restored server's next id) is looked up with
//! `pg_xact_status()`. None committed: the restored data is exactly `S`, and any difference
//! is an **error**. Some committed: a difference may come from them, and is reported as a
//! **warning** naming them. So a clean backup is never reported bad, and on a quiet cluster the
//! comparison is exact.

pub mod checks;
pub mod rowcounts;

mod pages;

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use carta_dr_core::archive::StoreWalArchive;
use carta_dr_core::envelope::{get_opened, get_opened_stream, EnvelopeOptions, Key};
use carta_dr_core::traits::{Location, Severity, VerifyReport};
use carta_dr_core::{BackupId, Error, Result, StorePath, WalSegmentSize};
use serde::Serialize;

use crate::dump::{quote_ident, DumpRecord, TableRows};
use crate::local_cluster::{InitOptions, LocalCluster, PgInstall, ScratchArea};
use crate::replication::Repo;
use crate::restore::{
    restore_with_tablespaces, BackupSelector, RecoveryTarget, RestoreOptions, TablespaceRelocation,
    TargetAction,
};

pub use checks::{parse_assertions, Assertion, Scratch};
use rowcounts::{load_row_counts, Snapshot};

/// What to restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// The newest base backup.
    LatestBackup,
    /// This base backup.
    Backup(BackupId),
    /// A logical dump, by ID (`DB/TIMESTAMP`).
    Dump(String),
}

impl Subject {
    /// Reads a restore-test subject: nothing or `latest` is the newest backup, a backup id
    /// (`YYYYMMDDTHHMMSSZ`) that backup, and `DB/TIMESTAMP` (a slash) a dump.
    pub fn parse(s: Option<&str>) -> Result<Subject> {
        match s {
            None | Some("latest") => Ok(Subject::LatestBackup),
            Some(s) if s.contains('/') => Ok(Subject::Dump(s.trim_end_matches(".dump").into())),
            Some(s) => s.parse().map(Subject::Backup),
        }
    }
}

/// How to run a restore test.
#[derive(Clone, Debug)]
pub struct RestoreTestOptions {
    /// What to restore.
    pub subject: Subject,
    /// PostgreSQL bin directory (`None`: discovered as the drill does).
    pub pg_bin: Option<PathBuf>,
    /// OS user PostgreSQL runs as when this process is root (`None`: `postgres`).
    pub run_as: Option<String>,
    /// Where the temporary directory goes (default: the system's temp dir, `/tmp` as root).
    pub work_parent: Option<PathBuf>,
    /// `restore_command` of the restored server (base backups): fetches archived WAL.
    pub restore_command: Option<String>,
    /// SQL assertions that must return true.
    pub assertions: Vec<Assertion>,
    /// Rows sampled per table by the spot check (0: no spot check).
    pub sample_rows: u32,
    /// Files restored at once.
    pub concurrency: usize,
    /// How long the restored server may take to start (recovery included).
    pub start_timeout: Duration,
}

impl RestoreTestOptions {
    /// Defaults for `subject`: 100 sampled rows per table, 4 files at once, 10 min to start.
    pub fn new(subject: Subject) -> Self {
        RestoreTestOptions {
            subject,
            pg_bin: None,
            run_as: None,
            work_parent: None,
            restore_command: None,
            assertions: Vec::new(),
            sample_rows: 100,
            concurrency: 4,
            start_timeout: Duration::from_secs(600),
        }
    }
}

/// One timed phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Phase {
    /// `restore`, `page_checksums`, `start`, `row_counts`, `pg_amcheck`, `assertions`,
    /// `spot_check`, `teardown`.
    pub name: String,
    /// How long it took.
    #[serde(rename = "duration_ms", serialize_with = "ser_ms")]
    pub duration: Duration,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The outcome of a restore test.
#[derive(Clone, Debug)]
pub struct RestoreTestOutcome {
    /// Findings and verdict.
    pub report: VerifyReport,
    /// The phases, in order.
    pub phases: Vec<Phase>,
    /// The scratch directory (removed by now).
    pub work_dir: PathBuf,
    /// Whether row counts were compared, and exactly (no concurrent commit).
    pub row_counts: RowCountMode,
}

/// How row counts were compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowCountMode {
    /// Not compared (none recorded, or the check could not run).
    NotCompared,
    /// Compared; any difference is an error.
    Exact,
    /// Compared, but transactions committed while the counts were taken: differences are
    /// warnings.
    Approximate,
}

/// What the checks compare counts with, per database.
#[derive(Clone, Debug)]
pub struct Expected {
    /// The database.
    pub database: String,
    /// Recorded counts.
    pub tables: Vec<TableRows>,
    /// The snapshot the counts were taken in, when the restore may hold more (base backups).
    pub snapshot: Option<Snapshot>,
}

/// Mutable state of a run, dropped (server killed, directory removed) on any exit.
struct State {
    install: PgInstall,
    area: ScratchArea,
    cluster: Option<LocalCluster>,
    report: VerifyReport,
    phases: Vec<Phase>,
    clock: Instant,
    row_counts: RowCountMode,
}

impl State {
    fn end_phase(&mut self, name: &str) {
        let now = Instant::now();
        self.phases.push(Phase {
            name: name.into(),
            duration: now - self.clock,
        });
        self.clock = now;
    }
}

/// Runs a restore test; see the [module docs](self). `Err` only when the test cannot begin
/// (no such backup or dump, no PostgreSQL binaries); everything after that is a finding.
pub async fn run(
    repo: &Repo,
    envelope: &EnvelopeOptions,
    opts: &RestoreTestOptions,
) -> Result<RestoreTestOutcome> {
    let started = Instant::now();
    let (subject_text, plan) = match &opts.subject {
        Subject::Dump(id) => {
            let path = StorePath::new(format!("dumps/{id}.json"))?;
            let raw = get_opened(repo.store().as_ref(), &path, envelope.key.as_deref()).await?;
            let rec: DumpRecord = serde_json::from_slice(&raw)
                .map_err(|e| Error::corrupt(&path, None, format!("bad dump record: {e}")))?;
            (
                format!("restore test of dump {id}"),
                Plan::Dump(Box::new(rec)),
            )
        }
        Subject::LatestBackup | Subject::Backup(_) => {
            let rec = match &opts.subject {
                Subject::Backup(id) => repo.load(*id).await?,
                _ => repo.latest().await?.ok_or_else(|| Error::NotFound {
                    path: "a base backup in the repository".into(),
                })?,
            };
            (
                format!("restore test of backup {}", rec.id),
                Plan::Backup(Box::new(rec)),
            )
        }
    };
    let install = PgInstall::discover(opts.pg_bin.as_deref(), opts.run_as.as_deref())?;
    let area = ScratchArea::create(&install, "restore-test", opts.work_parent.as_deref())?;
    let work_dir = area.path().to_path_buf();
    let mut st = State {
        install,
        area,
        cluster: None,
        report: VerifyReport::new(subject_text),
        phases: Vec::new(),
        clock: Instant::now(),
        row_counts: RowCountMode::NotCompared,
    };
    let result = match plan {
        Plan::Backup(rec) => run_backup(repo, envelope, opts, &mut st, &rec).await,
        Plan::Dump(rec) => run_dump(repo, envelope, opts, &mut st, &rec).await,
    };
    if let Err(e) = result {
        let sev = if matches!(e, Error::Corrupt { .. } | Error::Crypto { .. }) {
            Severity::Error
        } else {
            Severity::Warning
        };
        let what = if sev == Severity::Error {
            format!("restore failed: {e}")
        } else {
            format!("could not check everything: {e}")
        };
        st.report.push(sev, Location::Nowhere, what);
    }
    // ---- teardown ----
    st.clock = Instant::now();
    // A scratch cluster needs no shutdown checkpoint: kill it, then remove its directory.
    if let Some(mut c) = st.cluster.take() {
        c.kill();
    }
    let State {
        area,
        mut report,
        mut phases,
        clock,
        row_counts,
        ..
    } = st;
    drop(area);
    phases.push(Phase {
        name: "teardown".into(),
        duration: clock.elapsed(),
    });
    report.duration = started.elapsed();
    Ok(RestoreTestOutcome {
        report,
        phases,
        work_dir,
        row_counts,
    })
}

enum Plan {
    Backup(Box<carta_dr_core::catalog::BackupRecord>),
    Dump(Box<DumpRecord>),
}

async fn run_backup(
    repo: &Repo,
    envelope: &EnvelopeOptions,
    opts: &RestoreTestOptions,
    st: &mut State,
    rec: &carta_dr_core::catalog::BackupRecord,
) -> Result<()> {
    let counts = match load_row_counts(repo, rec.id).await {
        Ok(c) => c,
        Err(e) => {
            st.report.push(
                Severity::Warning,
                Location::Nowhere,
                format!("could not check row counts: {e}"),
            );
            None
        }
    };
    // Recover to the counts' point when the archive reaches it, else to consistency.
    let mut target = RecoveryTarget::Immediate;
    let mut extra = Vec::new();
    let mut expected = Vec::new();
    match &counts {
        None => st.report.push(
            Severity::Info,
            Location::Nowhere,
            "no row counts were recorded with this backup: counts not compared",
        ),
        Some(c) => {
            let seg = WalSegmentSize::new(rec.wal_segment_size)?;
            let archive = StoreWalArchive::new(repo.store().clone(), envelope.clone());
            let end = crate::drill::restore_drill::archive_end(&archive, seg).await?;
            if end.is_some_and(|e| e > c.target_lsn) {
                target = RecoveryTarget::Lsn(c.target_lsn);
                extra.push(("recovery_target_inclusive".to_string(), "off".to_string()));
                for d in &c.databases {
                    expected.push(Expected {
                        database: d.database.clone(),
                        tables: d.tables.clone(),
                        snapshot: Some(Snapshot::parse(&d.snapshot).ok_or_else(|| {
                            Error::invalid("snapshot", &d.snapshot, "not xmin:xmax:xip")
                        })?),
                    });
                }
            } else {
                st.report.push(
                    Severity::Warning,
                    Location::Nowhere,
                    format!(
                        "could not check row counts: the WAL archive ends at {}, before the \
                         counts' point {} (not archived yet)",
                        end.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                        c.target_lsn
                    ),
                );
            }
        }
    }
    let data = st.area.path().join("data");
    // Every tablespace goes to <scratch>/tablespaces/<oid>: the recorded locations may be in
    // use by the source cluster on this machine, and are never written.
    let tablespaces = scratch_tablespaces(st, rec)?;
    let relocate: Vec<TablespaceRelocation> = tablespaces
        .iter()
        .map(|(oid, to)| TablespaceRelocation {
            from: oid.to_string(),
            to: to.clone(),
        })
        .collect();
    let ropts = RestoreOptions {
        target_dir: data.clone(),
        backup: BackupSelector::Id(rec.id),
        target: target.clone(),
        action: Some(TargetAction::Promote),
        standby: false,
        delta: false,
        restore_command: opts.restore_command.clone(),
        extra_settings: extra,
        concurrency: opts.concurrency.max(1),
    };
    let restored = restore_with_tablespaces(repo, &ropts, &relocate).await;
    st.end_phase("restore");
    let restored = restored?;
    st.report.bytes = restored.bytes_written;
    st.report.checked.push(format!(
        "restored backup {}: {} files, {} bytes; recovery target {}",
        rec.id,
        restored.files_written,
        restored.bytes_written,
        match &target {
            RecoveryTarget::Lsn(l) => format!("LSN {l} (the row counts' point)"),
            _ => "the backup's consistent point".into(),
        }
    ));
    st.install.give_tree(&data)?;
    for loc in tablespaces.values() {
        st.install.give_tree(loc)?;
    }
    if !tablespaces.is_empty() {
        st.report.checked.push(format!(
            "{} tablespace(s) restored under {}, not to their recorded locations",
            tablespaces.len(),
            st.area.path().join("tablespaces").display()
        ));
    }

    // ---- page checksums, before the server touches the files ----
    let files: Vec<String> = rec
        .files
        .iter()
        .filter(|f| f.kind == carta_dr_core::catalog::FileKind::File)
        .map(|f| f.path.clone())
        .collect();
    pages::check_pages(
        &st.install,
        &data,
        &tablespaces,
        &files,
        rec.start_lsn,
        &mut st.report,
    )
    .await;
    st.end_phase("page_checksums");

    // ---- start ----
    let mut cluster = LocalCluster::existing(&st.install, &data, st.area.path());
    cluster.set("archive_mode", "off");
    // The source's pg_hba.conf may demand passwords: the scratch server trusts its own
    // socket and loopback only, from a file outside the restored directory.
    let hba = st.area.path().join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
    )
    .map_err(|e| Error::io(format!("writing {}", hba.display()), e))?;
    st.install.give(&hba)?;
    cluster.set("hba_file", &hba.display().to_string());
    let user = counts
        .as_ref()
        .and_then(|c| c.superuser.clone())
        .unwrap_or_else(|| "postgres".into());
    let target = checks::Scratch { port: 0, user };
    let started = start_promoted(&mut cluster, &target, opts.start_timeout).await;
    st.cluster = Some(cluster);
    st.end_phase("start");
    if let Err(e) = started {
        st.report.push(
            Severity::Error,
            Location::Nowhere,
            format!("the restored backup does not start: {e}"),
        );
        return Ok(());
    }
    run_checks(opts, st, &expected, &target.user).await
}

/// Creates `<scratch>/tablespaces/<oid>` parents for every tablespace of `rec` and returns
/// where each goes (the directories themselves are created by the restore).
fn scratch_tablespaces(
    st: &State,
    rec: &carta_dr_core::catalog::BackupRecord,
) -> Result<BTreeMap<u32, PathBuf>> {
    let mut out = BTreeMap::new();
    if rec.tablespaces.is_empty() {
        return Ok(out);
    }
    let root = st.area.path().join("tablespaces");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&root)
        .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    st.install.give(&root)?;
    let root = root
        .canonicalize()
        .map_err(|e| Error::io(format!("resolving {}", root.display()), e))?;
    for t in &rec.tablespaces {
        if out.insert(t.oid, root.join(t.oid.to_string())).is_some() {
            return Err(Error::corrupt(
                format!("pg_tblspc/{}", t.oid),
                None,
                "tablespace recorded twice in the backup",
            ));
        }
    }
    Ok(out)
}

/// Launches the server and waits until recovery has ended (`pg_is_in_recovery()` false).
async fn start_promoted(
    cluster: &mut LocalCluster,
    target: &checks::Scratch,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    cluster.start(timeout).await?;
    let target = checks::Scratch {
        port: cluster.port(),
        user: target.user.clone(),
    };
    loop {
        if !cluster.running() {
            return Err(Error::invalid_input(format!(
                "the server exited during recovery; log:\n{}",
                cluster.log_tail(20)
            )));
        }
        if let Ok(c) = crate::local_cluster::connect(&target.conninfo("template1")).await {
            if let Ok(row) = c.query_one("SELECT pg_is_in_recovery()", &[]).await {
                if !row.get::<_, bool>(0) {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!(
                    "recovery did not end within {timeout:?}; log:\n{}",
                    cluster.log_tail(20)
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_dump(
    repo: &Repo,
    envelope: &EnvelopeOptions,
    opts: &RestoreTestOptions,
    st: &mut State,
    rec: &DumpRecord,
) -> Result<()> {
    let data = st.area.path().join("data");
    let mut cluster = LocalCluster::init(
        &st.install,
        &data,
        st.area.path(),
        &InitOptions {
            data_checksums: true,
            settings: Vec::new(),
        },
    )
    .await?;
    let started = cluster.start(opts.start_timeout).await;
    st.cluster = Some(cluster);
    st.end_phase("start");
    started?;
    let Some(cluster) = st.cluster.as_ref() else {
        return Ok(());
    };
    if rec.database != "postgres" {
        let c = cluster.connect("postgres").await?;
        c.batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote_ident(&rec.database)
        ))
        .await
        .map_err(|e| Error::invalid_input(format!("creating database {}: {e}", rec.database)))?;
    }
    let restored = pg_restore(
        repo,
        envelope.key.as_deref(),
        &st.install,
        cluster.port(),
        rec,
    )
    .await;
    st.end_phase("restore");
    match restored {
        Ok(bytes) => {
            st.report.bytes = bytes;
            st.report.checked.push(format!(
                "restored dump {} ({} bytes) into database {}",
                rec.id, bytes, rec.database
            ));
        }
        Err(e @ (Error::Corrupt { .. } | Error::Crypto { .. })) => return Err(e),
        Err(e) => {
            st.report.push(
                Severity::Error,
                Location::Object {
                    path: rec.object.clone(),
                    chunk: None,
                },
                format!("the dump does not restore: {e}"),
            );
            return Ok(());
        }
    }
    let expected = vec![Expected {
        database: rec.database.clone(),
        tables: rec.tables.clone(),
        snapshot: None,
    }];
    run_checks(opts, st, &expected, "postgres").await
}

/// Streams the opened dump into `pg_restore --no-owner --no-privileges --exit-on-error`.
async fn pg_restore(
    repo: &Repo,
    key: Option<&Key>,
    install: &PgInstall,
    port: u16,
    rec: &DumpRecord,
) -> Result<u64> {
    let object = StorePath::new(rec.object.clone())?;
    let stream = get_opened_stream(repo.store().as_ref(), &object, key).await?;
    let mut cmd = install.command("pg_restore");
    cmd.args(["--no-owner", "--no-privileges", "--exit-on-error"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", &rec.database]);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("starting pg_restore", e))?;
    crate::dump::feed_pg_restore(child, stream, format!("restoring {}", rec.id)).await
}

async fn run_checks(
    opts: &RestoreTestOptions,
    st: &mut State,
    expected: &[Expected],
    user: &str,
) -> Result<()> {
    // Held here while the checks borrow the state; dropped (killed) if the future is.
    let Some(cluster) = st.cluster.take() else {
        return Ok(());
    };
    let target = checks::Scratch {
        port: cluster.port(),
        user: user.to_string(),
    };
    if !expected.is_empty() {
        st.row_counts = checks::row_counts(&target, expected, &mut st.report).await;
    }
    st.end_phase("row_counts");
    checks::amcheck(&st.install, &target, &mut st.report).await;
    st.end_phase("pg_amcheck");
    if !opts.assertions.is_empty() {
        checks::assertions(&target, &opts.assertions, &mut st.report).await;
    }
    st.end_phase("assertions");
    if opts.sample_rows > 0 {
        checks::spot_check(&target, opts.sample_rows, &mut st.report).await;
    }
    st.end_phase("spot_check");
    st.cluster = Some(cluster);
    Ok(())
}
