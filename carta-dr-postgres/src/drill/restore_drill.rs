//! `carta-dr drill restore`: rehearse losing the primary and restoring it from the store
//! alone, with a stopwatch.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use carta_dr_core::archive::StoreWalArchive;
use carta_dr_core::catalog::{time_to_secs, BackupRecord, CHUNKS_PREFIX};
use carta_dr_core::envelope::EnvelopeOptions;
use carta_dr_core::store::PutOptions;
use carta_dr_core::traits::BackupRequest;
use carta_dr_core::{
    Error, Lsn, Result, Store, StoreExt, StorePath, WalArchive, WalSegmentName, WalSegmentSize,
};

use super::history;
use super::replay_guard::{server_uid, ReplayGuard};
use super::report::{
    Cadence, Check, DrillReport, Fallback, PitrBy, PitrOutcome, Rpo, Scenario, Stopwatch,
};
use super::writer::{Ack, Writer, WriterLog, SCHEMA_SQL};
use crate::local_cluster::{connect, redact, InitOptions, LocalCluster, PgInstall, ScratchArea};
use crate::replication::{ConnParams, PgBackup, PgBackupConfig, Repo};
use crate::restore::{
    restore_with_tablespaces, BackupSelector, RecoveryTarget, RestoreOptions, TablespaceRelocation,
    TargetAction,
};

/// Opens a store from its URL (the CLI passes `carta_dr_backends::open`).
pub type StoreOpener = Arc<dyn Fn(&str) -> Result<Arc<dyn Store>> + Send + Sync>;

/// Settings the restored copy starts with, whatever the source server's configuration says:
/// no archiving into the store it came from, no commands of the source run (end of recovery,
/// archive cleanup), no replication from or waiting for the source's peers, no writing to the
/// source's log directory (the drill reads the server log on stderr). The source's
/// `external_pid_file` is redirected into the drill's directory where the server starts.
///
/// `recovery_init_sync_method = syncfs`: a restored data directory starts like a crashed
/// one, and PostgreSQL first makes every file durable. The restore has already synced the
/// data, but handing the files to the server's OS user dirtied every inode again, and one
/// `fsync` per file then costs a journal commit each (seconds at pgbench scale 100); one
/// `syncfs` per file system gives the same guarantee in one pass.
const RESTORED_OVERRIDES: [(&str, &str); 9] = [
    ("archive_mode", "off"),
    ("recovery_end_command", ""),
    ("archive_cleanup_command", ""),
    ("primary_conninfo", ""),
    ("primary_slot_name", ""),
    ("synchronous_standby_names", ""),
    ("logging_collector", "off"),
    ("log_destination", "stderr"),
    ("recovery_init_sync_method", "syncfs"),
];

/// Rows the drill writes to its own ledger table before the disaster.
const LEDGER_ROWS: i32 = 1000;

/// What the drill restores.
#[derive(Clone, Debug)]
pub enum DrillTarget {
    /// A throwaway PostgreSQL cluster under a temporary directory, with pgbench data, WAL
    /// archived by `carta-dr wal-push` into a local store and base backups taken by carta-dr.
    Embedded {
        /// pgbench scale (1 = 100 000 accounts, about 16 MB).
        scale: u32,
        /// `archive_timeout` of the throwaway cluster.
        archive_timeout: Duration,
    },
    /// A running cluster that archives into `repo_url`: never stopped or changed (beyond the
    /// drill's own rows in schema `carta_dr_drill`); the restore runs beside it on another port.
    Existing {
        /// libpq connection string of the cluster.
        conninfo: String,
        /// Its repository.
        repo_url: String,
        /// Its data directory, if on this machine: the drill refuses to write inside it.
        data_dir: Option<PathBuf>,
    },
}

/// How to run a restore drill.
#[derive(Clone)]
pub struct RestoreDrillOptions {
    /// What to rehearse.
    pub scenario: Scenario,
    /// On what.
    pub target: DrillTarget,
    /// The `carta-dr` executable (for `archive_command` and `restore_command`).
    pub carta_dr_exe: PathBuf,
    /// Opens stores by URL.
    pub open_store: StoreOpener,
    /// How objects are sealed.
    pub envelope: EnvelopeOptions,
    /// PostgreSQL bin directory (`--pg-bin`).
    pub pg_bin: Option<PathBuf>,
    /// OS user PostgreSQL runs as when this process is root.
    pub run_as: Option<String>,
    /// RTO target.
    pub rto_target: Duration,
    /// RPO target.
    pub rpo_target: Duration,
    /// Heartbeats are written for about this long before the disaster.
    pub writes_for: Duration,
    /// Scenario `delete`: the kind of recovery target aimed just before the `DELETE`.
    pub pitr_by: PitrBy,
    /// Interval between heartbeats.
    pub heartbeat_interval: Duration,
    /// Keep the crashed primary's data directory (default: remove it, as a lost disk would).
    pub keep_primary_data: bool,
    /// Run `pg_amcheck` on the restored server when it is installed.
    pub amcheck: bool,
    /// `pg_amcheck` checks every heap page too, not only those not marked all-visible (see
    /// the verify step in [`run`]).
    pub amcheck_full: bool,
    /// Where the temporary directory goes (default: the system's temp dir, `/tmp` as root).
    pub work_parent: Option<PathBuf>,
    /// Leave the restored server running and its directory on disk, handed back in
    /// [`DrillOutcome::restored`].
    pub keep_restored: bool,
    /// How long the restored server may take to reach "ready".
    pub start_timeout: Duration,
}

impl std::fmt::Debug for RestoreDrillOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreDrillOptions")
            .field("scenario", &self.scenario)
            .field("target", &self.target)
            .field("carta_dr_exe", &self.carta_dr_exe)
            .finish_non_exhaustive()
    }
}

impl RestoreDrillOptions {
    /// Defaults: crash scenario on the embedded cluster (scale 1, archive_timeout 2s),
    /// targets RTO 10 min and RPO 5 min, 3 s of heartbeats every 100 ms, pg_amcheck on.
    pub fn embedded(carta_dr_exe: PathBuf, open_store: StoreOpener) -> Self {
        RestoreDrillOptions {
            scenario: Scenario::Crash,
            target: DrillTarget::Embedded {
                scale: 1,
                archive_timeout: Duration::from_secs(2),
            },
            carta_dr_exe,
            open_store,
            envelope: EnvelopeOptions::zstd(carta_dr_core::envelope::DEFAULT_ZSTD_LEVEL),
            pg_bin: None,
            run_as: None,
            rto_target: Duration::from_secs(600),
            rpo_target: Duration::from_secs(300),
            writes_for: Duration::from_secs(3),
            heartbeat_interval: Duration::from_millis(100),
            pitr_by: PitrBy::Xid,
            keep_primary_data: false,
            amcheck: true,
            amcheck_full: false,
            work_parent: None,
            keep_restored: false,
            start_timeout: Duration::from_secs(600),
        }
    }
}

/// A restored server left running ([`RestoreDrillOptions::keep_restored`]).
#[derive(Debug)]
pub struct RestoredServer {
    /// The server.
    pub cluster: LocalCluster,
    /// The drill's temporary directory (removed when this is dropped, unless kept).
    pub area: ScratchArea,
    /// The heartbeat writer's JSON-lines log.
    pub writer_log: PathBuf,
    /// The drill id (heartbeat rows are tagged with it).
    pub drill_id: String,
}

/// A finished drill.
#[derive(Debug)]
pub struct DrillOutcome {
    /// The report.
    pub report: DrillReport,
    /// The repository URL the drill restored from.
    pub repo_url: String,
    /// The restored server, when kept.
    pub restored: Option<RestoredServer>,
}

fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=+,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn now_unix() -> u64 {
    time_to_secs(SystemTime::now())
}

/// The primary side: what the drill writes to and, when embedded, owns.
struct Primary {
    conninfo: String,
    cluster: Option<LocalCluster>,
    repo_url: String,
    accounts_expected: Option<i64>,
}

/// Runs a restore drill. Everything the drill creates lives in one temporary directory and is
/// removed (servers killed) when the returned future completes or is dropped — so cancelling
/// it (Ctrl-C in the CLI) cleans up too.
pub async fn run(opts: &RestoreDrillOptions) -> Result<DrillOutcome> {
    let started_at = now_unix();
    let id = history::new_id(started_at);
    let DrillTarget::Existing { conninfo, .. } = &opts.target else {
        return run_drill(opts, started_at, &id).await;
    };
    // Beside a running server the drill leaves nothing of its own behind, also when it
    // fails half-way: its rows are deleted, and its schema dropped if this drill created it.
    let schema_was_there = match connect(conninfo).await {
        Ok(c) => c
            .query_one("SELECT to_regnamespace('carta_dr_drill') IS NOT NULL", &[])
            .await
            .map_err(|e| pg_err("looking for the drill schema", e))?
            .get::<_, bool>(0),
        Err(e) => return Err(e),
    };
    let out = run_drill(opts, started_at, &id).await;
    remove_drill_rows(conninfo, &id).await;
    if !schema_was_there {
        drop_drill_schema(conninfo).await;
    }
    out
}

/// Drops the drill's schema and its two tables if they hold no rows (another drill running
/// at the same time keeps them); anything else created in the schema keeps it too.
async fn drop_drill_schema(conninfo: &str) {
    let Ok(mut c) = connect(conninfo).await else {
        return;
    };
    let r: std::result::Result<bool, tokio_postgres::Error> = async {
        let tx = c.transaction().await?;
        tx.batch_execute(
            "SET LOCAL lock_timeout = '5s'; \
             LOCK TABLE carta_dr_drill.heartbeat, carta_dr_drill.ledger IN ACCESS EXCLUSIVE MODE",
        )
        .await?;
        let empty: bool = tx
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM carta_dr_drill.heartbeat) \
                 AND NOT EXISTS (SELECT 1 FROM carta_dr_drill.ledger)",
                &[],
            )
            .await?
            .get(0);
        if !empty {
            return Ok(false);
        }
        tx.batch_execute(
            "DROP TABLE carta_dr_drill.heartbeat, carta_dr_drill.ledger; \
             DROP SCHEMA carta_dr_drill",
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
    .await;
    match r {
        Ok(dropped) => tracing::debug!(dropped, "drill schema"),
        Err(e) => tracing::debug!(error = %e, "the drill schema stays"),
    }
}

/// Deletes the rows drill `id` wrote in the target's `carta_dr_drill` schema (best effort).
async fn remove_drill_rows(conninfo: &str, id: &str) {
    if let Ok(c) = connect(conninfo).await {
        for table in ["heartbeat", "ledger"] {
            if let Err(e) = c
                .execute(
                    &format!("DELETE FROM carta_dr_drill.{table} WHERE drill = $1"),
                    &[&id],
                )
                .await
            {
                tracing::debug!(table, error = %e, "removing the drill's rows");
            }
        }
    }
}

async fn run_drill(opts: &RestoreDrillOptions, started_at: u64, id: &str) -> Result<DrillOutcome> {
    let id = id.to_string();
    let install = PgInstall::discover(opts.pg_bin.as_deref(), opts.run_as.as_deref())?;
    if let DrillTarget::Existing {
        data_dir: Some(d), ..
    } = &opts.target
    {
        // Checked before anything is created: the drill never writes inside the target.
        let parent = match &opts.work_parent {
            Some(p) => p.clone(),
            None if crate::local_cluster::is_root() => PathBuf::from("/tmp"),
            None => std::env::temp_dir(),
        };
        if inside(&parent, d) {
            return Err(Error::invalid(
                "drill work directory",
                parent.display().to_string(),
                format!("lies inside the target's data directory {}", d.display()),
            ));
        }
    }
    let mut area = ScratchArea::create(&install, "drill-restore", opts.work_parent.as_deref())?;
    let mut commands: Vec<String> = Vec::new();
    let setup_clock = Instant::now();
    let mut pre_events: Vec<(Instant, String)> = Vec::new();
    let exe = opts.carta_dr_exe.display().to_string();

    // ---- The primary ---------------------------------------------------------------------
    let mut primary = match &opts.target {
        DrillTarget::Embedded {
            scale,
            archive_timeout,
        } => {
            let store_dir = area.subdir(&install, "store")?;
            let repo_url = format!("file://{}", store_dir.display());
            let archive_command = format!(
                "{} --repo {} wal-push %p",
                sh_quote(&exe),
                sh_quote(&repo_url)
            );
            let data = area.path().join("primary");
            let settings = vec![
                ("wal_level".to_string(), "replica".to_string()),
                ("archive_mode".into(), "on".into()),
                ("archive_command".into(), archive_command.clone()),
                (
                    "archive_timeout".into(),
                    format!("{}s", archive_timeout.as_secs().max(1)),
                ),
                ("max_wal_senders".into(), "4".into()),
                ("log_line_prefix".into(), "%m [%p] ".into()),
            ];
            commands.push(format!(
                "initdb -D {} -U postgres --auth=trust -E UTF8 --locale=C --data-checksums",
                data.display()
            ));
            for (k, v) in &settings {
                commands.push(format!(
                    "echo {} >> postgresql.conf",
                    sh_quote(&format!("{k} = '{v}'"))
                ));
            }
            let mut c = LocalCluster::init(
                &install,
                &data,
                area.path(),
                &InitOptions {
                    data_checksums: true,
                    settings,
                },
            )
            .await?;
            c.start(Duration::from_secs(120)).await?;
            pre_events.push((
                Instant::now(),
                format!("primary started on port {}", c.port()),
            ));
            let mut pgbench = install.command("pgbench");
            pgbench
                .args(["-i", "-q", "-s", &scale.to_string()])
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &c.port().to_string(),
                    "-U",
                    "postgres",
                ])
                .arg("postgres");
            commands.push(format!(
                "pgbench -i -q -s {scale} -h 127.0.0.1 -p {} -U postgres postgres",
                c.port()
            ));
            install.run_checked(pgbench, "pgbench -i").await?;
            pre_events.push((
                Instant::now(),
                format!("pgbench data loaded (scale {scale})"),
            ));
            Primary {
                conninfo: c.conninfo("postgres"),
                cluster: Some(c),
                repo_url,
                accounts_expected: Some(i64::from(*scale) * 100_000),
            }
        }
        DrillTarget::Existing {
            conninfo, repo_url, ..
        } => Primary {
            conninfo: conninfo.clone(),
            cluster: None,
            repo_url: repo_url.clone(),
            accounts_expected: None,
        },
    };
    let embedded = primary.cluster.is_some();
    if opts.scenario == Scenario::CorruptLatest && !embedded {
        return Err(Error::invalid_input(
            "scenario corrupt-latest damages a backup in the store: it runs only on the \
             embedded cluster (give no target)",
        ));
    }

    let store = (opts.open_store)(&primary.repo_url)?;
    let repo = Repo::new(store.clone(), opts.envelope.clone());
    let archive: Arc<StoreWalArchive> =
        Arc::new(StoreWalArchive::new(store.clone(), opts.envelope.clone()));

    // Beside a running server: before the drill writes anything there, the WAL a restore of
    // its newest backup would replay must not create a tablespace (see `replay_guard`). The
    // check is completed up to the end of the archive at the disaster, before the restore.
    let mut guard: Option<ReplayGuard> = None;
    if !embedded {
        let newest = repo.latest().await?.ok_or_else(|| Error::NotFound {
            path: format!("a backup in {}", primary.repo_url),
        })?;
        let seg = WalSegmentSize::new(newest.wal_segment_size)?;
        let mut g = ReplayGuard::new(newest.id.to_string(), newest.start_lsn, seg);
        if let Some(tip) = archive_tip(archive.as_ref(), seg).await? {
            g.advance(archive.as_ref(), tip).await?;
            let v = g.check(tip, server_uid(install.run_as.as_ref()))?;
            pre_events.push((
                Instant::now(),
                format!(
                    "WAL since backup {} read up to {} ({} segments): {}",
                    newest.id,
                    v.position,
                    v.segments,
                    allowed_note(&v.allowed)
                ),
            ));
        }
        guard = Some(g);
    }

    let client = connect(&primary.conninfo).await?;
    client
        .batch_execute(SCHEMA_SQL)
        .await
        .map_err(|e| pg_err("creating the drill schema", e))?;
    client
        .execute(
            "INSERT INTO carta_dr_drill.ledger (drill, id, payload) \
             SELECT $1, g, md5(g::text) FROM generate_series(1, $2) g",
            &[&id, &LEDGER_ROWS],
        )
        .await
        .map_err(|e| pg_err("filling the drill ledger", e))?;

    // ---- Backups (embedded) ----------------------------------------------------------------
    let mut corrupted: Option<(String, String)> = None;
    if embedded {
        let conn = ConnParams::from_lookup(|_| None).apply_conninfo(&primary.conninfo)?;
        let backup = PgBackup::new(
            repo.clone(),
            PgBackupConfig {
                conn,
                archive: archive.clone(),
                wal_deadline: Duration::from_secs(120),
                concurrency: 4,
                progress: None,
            },
        );
        let n = if opts.scenario == Scenario::CorruptLatest {
            2
        } else {
            1
        };
        for i in 0..n {
            if i > 0 {
                // Something for the longer replay to carry: changes between the backups.
                client
                    .batch_execute(
                        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = 0",
                    )
                    .await
                    .map_err(|e| pg_err("updating between backups", e))?;
            }
            let rec = backup
                .run_record(&BackupRequest {
                    label: format!("drill {id} #{}", i + 1),
                    fast_checkpoint: true,
                    resume: None,
                })
                .await?;
            commands.push(format!(
                "carta-dr --repo {} backup  # took {}",
                sh_quote(&primary.repo_url),
                rec.id
            ));
            pre_events.push((Instant::now(), format!("base backup {} stored", rec.id)));
        }
        if opts.scenario == Scenario::CorruptLatest {
            let (backup_id, object) = corrupt_newest_backup(&repo, store.as_ref()).await?;
            pre_events.push((
                Instant::now(),
                format!("damaged object {object} of the newest backup {backup_id}"),
            ));
            corrupted = Some((backup_id, object));
        }
    }

    let latest = repo.latest().await?.ok_or_else(|| Error::NotFound {
        path: format!("a backup in {}", primary.repo_url),
    })?;
    let seg_size = WalSegmentSize::new(latest.wal_segment_size)?;
    if let Some(g) = &guard {
        if g.backup_id() != latest.id.to_string() {
            // A newer backup appeared meanwhile: its WAL is read from its own start.
            guard = Some(ReplayGuard::new(
                latest.id.to_string(),
                latest.start_lsn,
                seg_size,
            ));
        }
    }

    // ---- Heartbeats, the accident, the disaster --------------------------------------------
    let writer_log_path = area.path().join("heartbeats.jsonl");
    let writer = Writer::start(
        &primary.conninfo,
        &id,
        opts.heartbeat_interval,
        writer_log_path.clone(),
    )
    .await?;
    pre_events.push((Instant::now(), "heartbeat writer started".into()));
    let beats = usize::try_from(
        (opts.writes_for.as_millis() / opts.heartbeat_interval.as_millis().max(1)).max(4),
    )
    .unwrap_or(30);
    let patience = opts.writes_for * 5 + Duration::from_secs(30);
    let mut delete: Option<(u64, u64, Instant, Instant)> = None;
    let mut pitr_target: Option<(RecoveryTarget, String)> = None;
    if opts.scenario == Scenario::Delete {
        writer.wait_for(beats / 2, patience).await;
        let mut tx_client = connect(&primary.conninfo).await?;
        // The point to recover to, read just before the accident (time and LSN targets).
        let before = tx_client
            .query_one(
                "SELECT clock_timestamp()::text, \
                        extract(epoch FROM clock_timestamp())::bigint, \
                        pg_current_wal_insert_lsn()::text",
                &[],
            )
            .await
            .map_err(|e| pg_err("reading the time and LSN before the DELETE", e))?;
        let issued = Instant::now();
        let tx = tx_client
            .transaction()
            .await
            .map_err(|e| pg_err("BEGIN", e))?;
        let deleted = tx
            .execute(
                "DELETE FROM carta_dr_drill.ledger WHERE drill = $1 AND id % 3 = 0",
                &[&id],
            )
            .await
            .map_err(|e| pg_err("the accidental DELETE", e))?;
        let xid: i64 = tx
            .query_one("SELECT txid_current()", &[])
            .await
            .map_err(|e| pg_err("txid_current()", e))?
            .get(0);
        tx.commit().await.map_err(|e| pg_err("COMMIT", e))?;
        let committed = Instant::now();
        pre_events.push((
            committed,
            format!("accidental DELETE of {deleted} ledger rows committed (xid {xid})"),
        ));
        commands.push(format!(
            "psql -c \"DELETE FROM carta_dr_drill.ledger WHERE drill = '{id}' AND id % 3 = 0\"  # xid {xid}"
        ));
        let xid = u64::try_from(xid).unwrap_or(0);
        pitr_target = Some(match opts.pitr_by {
            PitrBy::Xid => (RecoveryTarget::Xid(xid), format!("xid {xid}")),
            PitrBy::Time => {
                let text: String = before.get(0);
                let unix: i64 = before.get(1);
                (
                    RecoveryTarget::Time {
                        text: text.clone(),
                        unix: u64::try_from(unix).ok(),
                    },
                    format!("time {text}"),
                )
            }
            PitrBy::Lsn => {
                let text: String = before.get(2);
                let lsn: Lsn = text
                    .parse()
                    .map_err(|_| Error::invalid("WAL position", text.clone(), "is not an LSN"))?;
                (RecoveryTarget::Lsn(lsn), format!("LSN {lsn}"))
            }
        });
        delete = Some((xid, deleted, issued, committed));
    }
    writer.wait_for(beats, patience).await;

    let probe = client
        .query_one(
            "SELECT pg_current_wal_lsn()::text, \
                    (SELECT last_archived_wal FROM pg_stat_archiver), \
                    (SELECT failed_count FROM pg_stat_archiver), \
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'archive_timeout'), \
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'checkpoint_timeout')",
            &[],
        )
        .await
        .map_err(|e| pg_err("reading the WAL position", e))?;
    let lsn_text: String = probe.get(0);
    let last_archived: Option<String> = probe.get(1);
    let failed_count: Option<i64> = probe.get(2);
    let archive_timeout: Option<i64> = probe.get(3);
    let checkpoint_timeout: Option<i64> = probe.get(4);
    let lsn_at_disaster: Option<Lsn> = lsn_text.parse().ok();
    let cadence = Cadence::explain(
        archive_timeout
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0),
        checkpoint_timeout
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0),
        seg_size.bytes(),
    );

    let disaster_at;
    let writer_log: WriterLog;
    if opts.scenario == Scenario::Delete {
        // The server survives an accidental DELETE: make sure the WAL holding it is archived,
        // then declare the disaster.
        let sw: String = client
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await
            .map_err(|e| pg_err("pg_switch_wal()", e))?
            .get(0);
        wait_archived(&client, &sw, Duration::from_secs(120)).await?;
        writer_log = writer.finish().await;
        disaster_at = Instant::now();
        pre_events.push((
            disaster_at,
            format!("disaster declared: the DELETE is noticed ({sw} archived)"),
        ));
    } else if let Some(c) = primary.cluster.as_mut() {
        disaster_at = Instant::now();
        let pids = c.kill();
        pre_events.push((
            disaster_at,
            format!(
                "disaster: SIGKILL to the primary ({} processes)",
                pids.len()
            ),
        ));
        writer_log = writer.finish().await;
        pre_events.push((Instant::now(), "heartbeat writer stopped".into()));
    } else {
        writer_log = writer.finish().await;
        disaster_at = Instant::now();
        pre_events.push((
            disaster_at,
            "disaster declared (the target keeps running)".into(),
        ));
    }
    drop(client);

    let mut sw = Stopwatch::new(disaster_at);
    for (at, what) in pre_events.drain(..) {
        sw.event(at, what);
    }
    sw.event(setup_clock, "drill started");

    // ---- detect ---------------------------------------------------------------------------
    if opts.scenario != Scenario::Delete {
        if let Some(c) = primary.cluster.as_ref() {
            if !opts.keep_primary_data {
                // The disk is gone: the directory is moved out of reach at once (a rename)
                // and deleted with the rest of the drill's directory afterwards.
                let d = c.data_dir().to_path_buf();
                let lost = d.with_extension("lost");
                std::fs::rename(&d, &lost)
                    .map_err(|e| Error::io(format!("moving {} away", d.display()), e))?;
                sw.event(
                    Instant::now(),
                    format!("primary data directory {} lost", d.display()),
                );
            }
            let gone = Instant::now() + Duration::from_secs(10);
            while connect(&primary.conninfo).await.is_ok() {
                if Instant::now() > gone {
                    return Err(Error::invalid_input("the killed primary still answers"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sw.event(Instant::now(), "primary unreachable: connection refused");
        }
    }
    let tip = archive_tip(archive.as_ref(), seg_size).await?;
    let archive_end = tip.map(|s| Lsn(s.start_lsn(seg_size).0 + seg_size.bytes()));
    sw.event(
        Instant::now(),
        format!(
            "archive ends at {}",
            archive_end
                .map(|l| l.to_string())
                .unwrap_or_else(|| "-".into())
        ),
    );
    sw.end_phase("detect", Instant::now());

    // ---- the replay guard (beside a running server) ----------------------------------------
    if let (Some(g), Some(tip)) = (guard.as_mut(), tip) {
        g.advance(archive.as_ref(), tip).await?;
        let v = g.check(tip, server_uid(install.run_as.as_ref()))?;
        sw.event(
            Instant::now(),
            format!(
                "WAL to replay read up to {} ({} segments since backup {}): {}",
                v.position,
                v.segments,
                latest.id,
                allowed_note(&v.allowed)
            ),
        );
    }

    // ---- fetch_base -----------------------------------------------------------------------
    let mut restored_dir = area.path().join("restored");
    // A running target keeps archiving while the drill restores: replay only what the
    // archive held at the disaster, or the RPO would be understated.
    let restore_command = match (&primary.cluster, tip) {
        (None, Some(tip)) => format!(
            "{} --repo {} drill wal-fetch --until {tip} %f %p",
            sh_quote(&exe),
            sh_quote(&primary.repo_url)
        ),
        _ => format!(
            "{} --repo {} wal-fetch %f %p",
            sh_quote(&exe),
            sh_quote(&primary.repo_url)
        ),
    };
    let target = match &pitr_target {
        Some((t, _)) => t.clone(),
        None => RecoveryTarget::EndOfWal,
    };
    let mut ropts = RestoreOptions {
        target_dir: restored_dir.clone(),
        backup: BackupSelector::Id(latest.id),
        target: target.clone(),
        action: delete.map(|_| TargetAction::Promote),
        standby: false,
        delta: false,
        restore_command: Some(restore_command.clone()),
        extra_settings: if delete.is_some() {
            vec![("recovery_target_inclusive".into(), "off".into())]
        } else {
            Vec::new()
        },
        concurrency: 4,
    };
    // Every tablespace of the backup is restored into the drill's directory, never to its
    // recorded location (the running server's own, or the lost primary's).
    let ts_root = area.path().join("tablespaces");
    let relocations = |rec: &BackupRecord| -> Vec<TablespaceRelocation> {
        rec.tablespaces
            .iter()
            .map(|t| TablespaceRelocation {
                from: t.oid.to_string(),
                to: ts_root.join(t.oid.to_string()),
            })
            .collect()
    };
    let relocate = relocations(&latest);
    for r in &relocate {
        commands.push(format!(
            "# tablespace {} restored to {}",
            r.from,
            r.to.display()
        ));
    }
    sw.event(Instant::now(), format!("restoring backup {}", latest.id));
    let mut fallback = None;
    let (report_restore, used) = match restore_with_tablespaces(&repo, &ropts, &relocate).await {
        Ok(r) => (r, latest.id),
        Err(e) if is_integrity_error(&e) => {
            sw.event(
                Instant::now(),
                format!("backup {} failed its checksums: {e}", latest.id),
            );
            // The partial restore is set aside (removed with the drill's directory); the
            // fallback restores into a fresh directory.
            if let Err(e) = std::fs::remove_dir_all(&restored_dir) {
                tracing::warn!(dir = %restored_dir.display(), error = %e, "cannot remove a partial restore");
            }
            restored_dir = area.path().join("restored-fallback");
            ropts.target_dir = restored_dir.clone();
            let ids = repo.list_ids().await?;
            let prev = ids
                .iter()
                .rev()
                .find(|i| **i < latest.id)
                .copied()
                .ok_or_else(|| Error::NotFound {
                    path: format!("a backup older than the damaged {}", latest.id),
                })?;
            sw.event(Instant::now(), format!("falling back to backup {prev}"));
            ropts.backup = BackupSelector::Id(prev);
            if ts_root.exists() {
                std::fs::remove_dir_all(&ts_root)
                    .map_err(|e| Error::io(format!("removing {}", ts_root.display()), e))?;
            }
            let prev_rec: BackupRecord = repo.load(prev).await?;
            let r = restore_with_tablespaces(&repo, &ropts, &relocations(&prev_rec)).await?;
            fallback = Some(Fallback {
                failed_backup: latest.id.to_string(),
                error: e.to_string(),
                used_backup: prev.to_string(),
                corrupted_object: corrupted.as_ref().map(|c| c.1.clone()),
            });
            (r, prev)
        }
        Err(e) => return Err(e),
    };
    commands.push(format!(
        "carta-dr --repo {} restore --backup {used} --to {}{}{}",
        sh_quote(&primary.repo_url),
        sh_quote(&restored_dir.display().to_string()),
        relocate
            .iter()
            .map(|r| format!(
                " --tablespace-map {}",
                sh_quote(&format!("{}={}", r.from, r.to.display()))
            ))
            .collect::<String>(),
        match &target {
            RecoveryTarget::Xid(x) => format!(
                " --target-xid {x} --set recovery_target_inclusive=off --target-action promote"
            ),
            RecoveryTarget::Time { text, .. } => format!(
                " --target-time {} --set recovery_target_inclusive=off --target-action promote",
                sh_quote(text)
            ),
            RecoveryTarget::Lsn(l) => format!(
                " --target-lsn {l} --set recovery_target_inclusive=off --target-action promote"
            ),
            _ => String::new(),
        }
    ));
    install.give_tree(&restored_dir)?;
    if ts_root.exists() {
        install.give_tree(&ts_root)?;
    }
    sw.event(
        Instant::now(),
        format!(
            "backup {used} restored: {} files, {} bytes",
            report_restore.files_written, report_restore.bytes_written
        ),
    );
    sw.end_phase("fetch_base", Instant::now());

    // ---- replay_wal, start ----------------------------------------------------------------
    let mut restored = LocalCluster::existing(&install, &restored_dir, area.path());
    // The copy must never archive into the store it came from, nor act on anything of the
    // server it was copied from: settings carried over from that server's configuration that
    // name outside files, other servers or commands are neutralised.
    for (k, v) in RESTORED_OVERRIDES {
        restored.set(k, v);
    }
    let pid_file = area.path().join("restored.external.pid");
    restored.set("external_pid_file", &pid_file.display().to_string());
    let log_from = restored.log_len();
    restored.launch()?;
    commands.push(format!(
        "postgres -D {} -c port={} -c listen_addresses=127.0.0.1 {}  # restore_command = {}",
        restored_dir.display(),
        restored.port(),
        RESTORED_OVERRIDES
            .iter()
            .map(|(k, v)| format!("-c {}", sh_quote(&format!("{k}={v}"))))
            .collect::<Vec<_>>()
            .join(" "),
        restore_command
    ));
    sw.event(
        Instant::now(),
        format!("restored server launched on port {}", restored.port()),
    );
    let deadline = Instant::now() + opts.start_timeout;
    let mut redo_done = false;
    let mut redo_started = false;
    let mut rclient: Option<tokio_postgres::Client> = None;
    // "ready" in postmaster.pid also means a hot standby accepting reads: the end of
    // recovery is `pg_is_in_recovery()` turning false.
    let rclient = loop {
        let log = restored.log_since(log_from);
        if !redo_started && log.contains("redo starts at") {
            redo_started = true;
            sw.event(Instant::now(), "WAL replay started");
        }
        if !redo_done && (log.contains("redo done at") || log.contains("redo is not required")) {
            redo_done = true;
            let at = Instant::now();
            sw.event(at, "WAL replay done");
            sw.end_phase("replay_wal", at);
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!(
                    "the restored server did not finish recovery within {:?}; log:\n{}",
                    opts.start_timeout,
                    restored.log_tail(30)
                ),
            });
        }
        if !restored.running() {
            return Err(Error::invalid_input(format!(
                "the restored server exited during recovery; log {}:\n{}",
                restored.log_path().display(),
                restored.log_tail(30)
            )));
        }
        match rclient.take() {
            None => {
                if matches!(crate::local_cluster::read_pid_file(&restored_dir), Some(pf) if pf.status == "ready")
                {
                    rclient = restored.connect("postgres").await.ok();
                }
            }
            Some(c) => match c.query_one("SELECT pg_is_in_recovery()", &[]).await {
                Ok(row) if !row.get::<_, bool>(0) => break c,
                Ok(_) => rclient = Some(c),
                Err(_) => {}
            },
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ready_at = Instant::now();
    if !redo_done {
        sw.end_phase("replay_wal", ready_at);
    }
    sw.event(
        ready_at,
        "restored server out of recovery, accepts connections",
    );
    sw.end_phase("start", ready_at);

    // ---- verify ---------------------------------------------------------------------------
    let mut checks = Vec::new();
    let t = Instant::now();
    let rows = rclient
        .query(
            "SELECT seq, (extract(epoch FROM committed_at) * 1000000)::bigint \
             FROM carta_dr_drill.heartbeat WHERE drill = $1 ORDER BY seq",
            &[&id],
        )
        .await
        .map_err(|e| pg_err("reading heartbeats on the restored server", e))?;
    let present: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let present_set: BTreeSet<i64> = present.iter().map(|p| p.0).collect();
    let max_present = present.last().map(|p| p.0);
    let holes = match max_present {
        Some(m) => (1..=m).filter(|s| !present_set.contains(s)).count(),
        None => 0,
    };
    checks.push(Check {
        name: "heartbeats".into(),
        ok: holes == 0,
        detail: format!(
            "{} present, seq 1..{} with {holes} hole(s); {} acknowledged by the primary",
            present.len(),
            max_present.unwrap_or(0),
            writer_log.acks.len()
        ),
        millis: millis_since(t),
    });
    let t = Instant::now();
    let ledger: i64 = rclient
        .query_one(
            "SELECT count(*) FROM carta_dr_drill.ledger WHERE drill = $1",
            &[&id],
        )
        .await
        .map_err(|e| pg_err("counting ledger rows", e))?
        .get(0);
    checks.push(Check {
        name: "ledger rows".into(),
        ok: ledger == i64::from(LEDGER_ROWS),
        detail: format!("{ledger} of {LEDGER_ROWS}"),
        millis: millis_since(t),
    });
    // The two long checks (both read the whole database) run side by side.
    let accounts = async {
        let expected = primary.accounts_expected?;
        let t = Instant::now();
        let n = rclient
            .query_one("SELECT count(*) FROM pgbench_accounts", &[])
            .await
            .map(|r| r.get::<_, i64>(0));
        Some(match n {
            Ok(n) => Check {
                name: "accounts rows".into(),
                ok: n == expected,
                detail: format!("pgbench_accounts {n} of {expected}"),
                millis: millis_since(t),
            },
            Err(e) => Check {
                name: "accounts rows".into(),
                ok: false,
                detail: format!("counting pgbench_accounts: {e}"),
                millis: millis_since(t),
            },
        })
    };
    let amcheck_jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    // Heap pages marked all-visible were not touched by the replay (modifying a page clears
    // its bit) and are the backup's bytes, each file checked against the backup's checksums by
    // the restore; the full row count reads them again with their page checksums. By default
    // the structural heap check covers the pages the replay wrote; `amcheck_full` checks all.
    let skip = if opts.amcheck_full {
        "none"
    } else {
        "all-visible"
    };
    let amcheck_line = format!(
        "pg_amcheck -h 127.0.0.1 -p {} -U postgres --install-missing --jobs {amcheck_jobs} --skip={skip} --database postgres",
        restored.port()
    );
    let amcheck = async {
        if !(opts.amcheck && install.has("pg_amcheck")) {
            return None;
        }
        let t = Instant::now();
        let mut cmd = install.command("pg_amcheck");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &restored.port().to_string(),
            "-U",
            "postgres",
        ])
        .args(["--install-missing", "--jobs", &amcheck_jobs.to_string()])
        .arg(format!("--skip={skip}"))
        .args(["--database", "postgres"]);
        Some(match install.output(cmd, "pg_amcheck").await {
            Ok(out) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                Check {
                    name: "pg_amcheck".into(),
                    ok: out.status.success(),
                    detail: if out.status.success() {
                        format!(
                            "no corruption found (B-tree structure; heap pages: {}; {amcheck_jobs} jobs)",
                            if skip == "none" { "all" } else { "not all-visible" }
                        )
                    } else {
                        format!(
                            "{}: {}",
                            out.status,
                            text.trim().chars().take(400).collect::<String>()
                        )
                    },
                    millis: millis_since(t),
                }
            }
            Err(e) => Check {
                name: "pg_amcheck".into(),
                ok: false,
                detail: e.to_string(),
                millis: millis_since(t),
            },
        })
    };
    let (accounts, amcheck) = tokio::join!(accounts, amcheck);
    if amcheck.is_some() {
        commands.push(amcheck_line);
    }
    checks.extend(accounts);
    checks.extend(amcheck);
    let t = Instant::now();
    let write = rclient
        .query_one(
            "INSERT INTO carta_dr_drill.heartbeat (drill, seq, committed_at) \
             VALUES ($1, 0, clock_timestamp()) RETURNING NOT pg_is_in_recovery()",
            &[&id],
        )
        .await;
    checks.push(match write {
        Ok(r) => {
            let primary_mode: bool = r.get(0);
            Check {
                name: "write".into(),
                ok: primary_mode,
                detail: if primary_mode {
                    "INSERT committed; out of recovery".into()
                } else {
                    "INSERT committed but the server is still in recovery".into()
                },
                millis: millis_since(t),
            }
        }
        Err(e) => Check {
            name: "write".into(),
            ok: false,
            detail: e.to_string(),
            millis: millis_since(t),
        },
    });
    let verified_at = Instant::now();
    sw.event(verified_at, "verification finished");
    sw.end_phase("verify", verified_at);

    // ---- RPO ------------------------------------------------------------------------------
    let acks = &writer_log.acks;
    let lost: Vec<&Ack> = acks
        .iter()
        .filter(|a| !present_set.contains(&a.seq))
        .collect();
    let last_ack = acks.last();
    let last_present = present.iter().rfind(|p| p.0 > 0);
    let rpo_seconds = match (last_ack, last_present) {
        (Some(a), Some(p)) => (a.at_us - p.1).max(0) as f64 / 1e6,
        (Some(a), None) => acks
            .first()
            .map(|f| (a.at_us - f.at_us) as f64 / 1e6 + opts.heartbeat_interval.as_secs_f64())
            .unwrap_or(0.0),
        _ => 0.0,
    };
    let archive_end_lsn = archive_end;
    let rpo = Rpo {
        heartbeats_acked: acks.len() as u64,
        last_acked_seq: last_ack.map(|a| a.seq),
        last_acked_at: last_ack.map(|a| a.at_us as f64 / 1e6),
        last_restored_seq: last_present.map(|p| p.0),
        last_restored_at: last_present.map(|p| p.1 as f64 / 1e6),
        transactions_lost: lost.len() as u64,
        seconds: rpo_seconds,
        wal_lsn_at_disaster: lsn_at_disaster.map(|l| l.to_string()),
        archive_end_lsn: archive_end_lsn.map(|l| l.to_string()),
        wal_bytes_unarchived: match (lsn_at_disaster, archive_end_lsn) {
            (Some(a), Some(b)) => Some(a.0.saturating_sub(b.0)),
            (Some(a), None) => Some(a.0),
            _ => None,
        },
        last_archived_wal: last_archived,
        archiver_failed_count: failed_count,
    };
    let pitr = delete.map(|(xid, deleted, _issued, committed)| {
        // Every lost heartbeat is on one side of the DELETE. With an xid target recovery stops
        // just before the DELETE's commit record, so whatever it lost committed after it. With
        // a time or LSN target, a lost heartbeat acknowledged before the DELETE's own
        // acknowledgement counts as lost before it (one acknowledged while the DELETE ran may
        // have committed on either side; it is counted before).
        let by_xid = matches!(pitr_target, Some((RecoveryTarget::Xid(_), _)));
        let before = if by_xid {
            0
        } else {
            lost.iter()
                .filter(|a| a.acked.is_some_and(|t| t < committed))
                .count() as u64
        };
        let after = lost.len() as u64 - before;
        let survivors = u64::try_from(ledger).unwrap_or(0);
        let kept_before = u64::from(LEDGER_ROWS.unsigned_abs()) - deleted;
        PitrOutcome {
            target_xid: xid,
            target: pitr_target
                .as_ref()
                .map(|(_, label)| label.clone())
                .unwrap_or_default(),
            delete_at_seconds: sw.offset_ms(committed) as f64 / 1000.0,
            rows_deleted: deleted,
            rows_recovered: survivors.saturating_sub(kept_before).min(deleted),
            writes_lost_before_delete: before,
            writes_discarded_after_delete: after,
        }
    });
    let wal_fetched = restored
        .log_since(log_from)
        .matches("restored log file")
        .count() as u64;

    let mut report = DrillReport {
        id: id.clone(),
        kind: "restore".into(),
        scenario: opts.scenario.as_str().into(),
        started_at,
        target: if embedded {
            "embedded".into()
        } else {
            redact(&primary.conninfo)
        },
        backup_used: used.to_string(),
        fallback,
        phases: sw.phases(),
        rto_seconds: sw.total_ms() as f64 / 1000.0,
        rto_millis: sw.total_ms(),
        rpo,
        pitr,
        checks,
        cadence,
        verdict: Default::default(),
        restored_bytes: report_restore.bytes_written,
        wal_segments_fetched: wal_fetched,
        timeline: sw.events(),
        commands,
        writer_log: Some(writer_log_path.display().to_string()),
    };
    report.judge(opts.rto_target, opts.rpo_target);

    // ---- cleanup --------------------------------------------------------------------------
    if let Some(mut c) = primary.cluster.take() {
        let _ = c.stop(Duration::from_secs(30)).await;
    }
    drop(rclient);
    let restored_out = if opts.keep_restored {
        area.keep();
        Some(RestoredServer {
            cluster: restored,
            area,
            writer_log: writer_log_path,
            drill_id: id,
        })
    } else {
        let _ = restored.stop(Duration::from_secs(30)).await;
        None
    };
    Ok(DrillOutcome {
        report,
        repo_url: primary.repo_url,
        restored: restored_out,
    })
}

/// For the timeline: tablespace creations let through by the replay guard.
fn allowed_note(allowed: &[carta_dr_core::walverify::TablespaceCreate]) -> String {
    if allowed.is_empty() {
        return "no CREATE TABLESPACE".into();
    }
    format!(
        "CREATE TABLESPACE out of the restored copy's reach: {}",
        allowed
            .iter()
            .map(|c| if c.location.is_empty() {
                format!("in-place tablespace {} at {}", c.oid, c.lsn)
            } else {
                format!(
                    "tablespace {} at {} ({}, not writable by the server's OS user: its replay fails there)",
                    c.oid, c.location, c.lsn
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Whether `path` is `dir` or lies below it, comparing the paths as the file system resolves
/// them (symbolic links, `..`); a path that does not exist yet is resolved through its
/// nearest existing ancestor.
fn inside(path: &Path, dir: &Path) -> bool {
    fn resolve(p: &Path) -> PathBuf {
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        let mut tail = Vec::new();
        let mut cur = abs.as_path();
        loop {
            if let Ok(c) = cur.canonicalize() {
                let mut out = c;
                for t in tail.iter().rev() {
                    out.push(t);
                }
                return out;
            }
            match (cur.parent(), cur.file_name()) {
                (Some(parent), Some(name)) => {
                    tail.push(name.to_os_string());
                    cur = parent;
                }
                _ => return abs,
            }
        }
    }
    resolve(path).starts_with(resolve(dir))
}

fn millis_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn pg_err(what: &str, e: tokio_postgres::Error) -> Error {
    Error::invalid_input(format!("{what}: {e}"))
}

/// Whether a restore failed because stored bytes failed their checks.
fn is_integrity_error(e: &Error) -> bool {
    matches!(e, Error::Corrupt { .. } | Error::Crypto { .. })
}

/// Polls `pg_stat_archiver` until `segment` (or a later one) is archived.
async fn wait_archived(
    client: &tokio_postgres::Client,
    segment: &str,
    timeout: Duration,
) -> Result<()> {
    let until = Instant::now() + timeout;
    loop {
        let last: Option<String> = client
            .query_one("SELECT last_archived_wal FROM pg_stat_archiver", &[])
            .await
            .map_err(|e| pg_err("reading pg_stat_archiver", e))?
            .get(0);
        if last
            .as_deref()
            .is_some_and(|l| l.len() == 24 && l >= segment)
        {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(Error::Timeout {
                what: format!(
                    "WAL segment {segment} was not archived within {timeout:?} (last archived: {})",
                    last.unwrap_or_else(|| "none".into())
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The end of the newest archived segment (on the highest timeline), if any.
pub async fn archive_end(archive: &dyn WalArchive, seg: WalSegmentSize) -> Result<Option<Lsn>> {
    Ok(archive_tip(archive, seg)
        .await?
        .map(|s| Lsn(s.start_lsn(seg).0 + seg.bytes())))
}

/// The newest archived segment (on the highest timeline), if any.
pub async fn archive_tip(
    archive: &dyn WalArchive,
    seg: WalSegmentSize,
) -> Result<Option<WalSegmentName>> {
    let list = archive.list(None).await?;
    Ok(list
        .iter()
        .filter_map(|w| match w.name {
            carta_dr_core::WalFileName::Segment(s) => Some(s),
            _ => None,
        })
        .max_by_key(|s| (s.timeline, s.segno(seg))))
}

/// Damages one stored object of the newest backup that the previous backup does not share
/// (flips bytes in the middle of a chunk or bundle), so the previous backup stays intact.
/// Returns the backup id and the object's path.
pub async fn corrupt_newest_backup(repo: &Repo, store: &dyn Store) -> Result<(String, String)> {
    let ids = repo.list_ids().await?;
    let (Some(newest), Some(prev)) = (ids.last(), ids.iter().rev().nth(1)) else {
        return Err(Error::invalid_input(
            "corrupt-latest needs two backups in the store",
        ));
    };
    let newest: BackupRecord = repo.load(*newest).await?;
    let prev: BackupRecord = repo.load(*prev).await?;
    let shared: BTreeSet<StorePath> = prev.referenced_objects()?.into_iter().collect();
    let mut own: Vec<StorePath> = newest
        .referenced_objects()?
        .into_iter()
        .filter(|p| !shared.contains(p))
        .collect();
    // Prefer a chunk (a large relation file), else a bundle.
    own.sort_by_key(|p| !p.to_string().starts_with(CHUNKS_PREFIX));
    let target = own.first().ok_or_else(|| {
        Error::invalid_input("the newest backup shares every object with the previous one")
    })?;
    let raw = store.get_bytes(target).await?;
    let mut bytes = raw.to_vec();
    let mid = bytes.len() / 2;
    for b in bytes.iter_mut().skip(mid).take(8) {
        *b ^= 0xA5;
    }
    store
        .put(target, Bytes::from(bytes), PutOptions::overwrite())
        .await?;
    Ok((newest.id.to_string(), target.to_string()))
}

/// Where a drill's Markdown report goes by default: `<state dir>/drills/<id>.md`.
pub fn default_report_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("drills").join(format!("{id}.md"))
}
