//! The failover game-day: a throwaway primary and a streaming standby, a live writer, a
//! SIGKILL of the primary, detection by health checks, fence, promote, repoint, and the
//! measurements, in asynchronous and then synchronous replication; then the old primary
//! rejoins through `pg_rewind` and the results are appended to the drill log.
//!
//! # What is measured, and how
//!
//! * **Detection**: from the kill to the health checker's verdict. The checker polls the
//!   primary every [`DrillOptions::health_interval`] with the replication monitor's primary
//!   poll (one kept connection, `pg_current_wal_lsn()`); [`DrillOptions::failures`]
//!   consecutive failed polls declare it dead. The last LSN a poll saw is the "last known
//!   primary position" handed to the promoter.
//! * **Promotion**: the `promote` step of the [`PromotionReport`] (`pg_promote` until the new
//!   timeline is visible).
//! * **Write downtime as the client saw it**: from the writer's last commit acknowledged by
//!   the old primary to its first commit acknowledged by the new one (acknowledgements are
//!   classified by the connection that gave them, not by when the writer read them). The writer commits one
//!   sequenced row per transaction and reconnects by reading the connection file the
//!   [`FileRepointer`] rewrites, as an application would.
//! * **Acknowledged writes lost**: sequence numbers the writer saw acknowledged that are not
//!   in the new primary's table.
//! * **Split brain**: after fencing, whether the old primary still takes a connection and a
//!   write.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use carta_dr_core::envelope::{self, EnvelopeOptions, Key};
use carta_dr_core::store::PutOptions;
use carta_dr_core::traits::{PromoteRequest, PromotionReport};
use carta_dr_core::{Error, Lsn, Promoter, Result, Store, StoreExt, StorePath, TimelineId};
use serde::{Deserialize, Serialize};

use super::fence::PgCtlStopFencer;
use super::promoter::{clean, promoted, PgNode, PgPromoter};
use super::rejoin::{self, RejoinMethod, RejoinOptions};
use super::repoint::{write_atomic, FileRepointer};
use super::sql;
use crate::local_cluster::{InitOptions, LocalCluster, PgInstall, ScratchArea};
use crate::monitor::pg::PgTarget;
use crate::monitor::snapshot::Probe;

/// Where the drill log lives in a repository.
pub const DRILL_LOG_STORE_PATH: &str = "drills/failover.jsonl";
/// The drill log's file name when no repository is given.
pub const DRILL_LOG_FILE_NAME: &str = "failover-drills.jsonl";

/// Asynchronous or synchronous streaming replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationMode {
    /// `synchronous_standby_names` empty: a commit returns once local.
    Async,
    /// `synchronous_standby_names = '*'`, `synchronous_commit = on`: a commit returns once
    /// the standby flushed it.
    Sync,
}

impl std::fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplicationMode::Async => "async",
            ReplicationMode::Sync => "sync",
        })
    }
}

/// How the drill runs.
#[derive(Clone, Debug)]
pub struct DrillOptions {
    /// The PostgreSQL binaries and the user that runs them.
    pub install: PgInstall,
    /// The modes, in order (default: async, then sync).
    pub modes: Vec<ReplicationMode>,
    /// Time between health checks (default 1 s).
    pub health_interval: Duration,
    /// Consecutive failed health checks that declare the primary dead (default 2).
    pub failures: u32,
    /// How long the writer runs before the kill (default 3 s).
    pub warmup: Duration,
    /// Acknowledged writes the writer must see after the failover before it stops
    /// (default 100).
    pub writes_after: u64,
    /// Rejoin the old primary through `pg_rewind` afterwards (default true).
    pub rejoin: bool,
    /// Where the scratch directories go (default: the temp directory).
    pub parent_dir: Option<PathBuf>,
    /// Keep the scratch directories (for post-mortems).
    pub keep: bool,
}

impl DrillOptions {
    /// The defaults with `install`.
    pub fn new(install: PgInstall) -> Self {
        DrillOptions {
            install,
            modes: vec![ReplicationMode::Async, ReplicationMode::Sync],
            health_interval: Duration::from_secs(1),
            failures: 2,
            warmup: Duration::from_secs(3),
            writes_after: 100,
            rejoin: true,
            parent_dir: None,
            keep: false,
        }
    }
}

/// The rejoin of the old primary, as measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RejoinResult {
    /// How it came back.
    pub method: Option<RejoinMethod>,
    /// Seconds from the start of the rejoin to streaming.
    pub seconds: f64,
    /// Whether it streams from the new primary.
    pub streaming: bool,
    /// Whether a row written on the new primary after the rejoin reached it.
    pub replicates: bool,
    /// What happened.
    pub detail: String,
}

/// One mode's measurements.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModeResult {
    /// Which replication mode.
    pub mode: ReplicationMode,
    /// Kill to the health checker's verdict, seconds.
    pub detection_seconds: f64,
    /// The promote step, seconds.
    pub promotion_seconds: f64,
    /// Verdict to a verified write on the new primary (precheck..verify), seconds.
    pub failover_seconds: f64,
    /// Last write acknowledged by the old primary to the first acknowledged by the new one,
    /// seconds.
    pub write_downtime_seconds: f64,
    /// Writes acknowledged by the old primary (before the kill).
    pub acked_before_kill: u64,
    /// Writes acknowledged in all.
    pub acked_total: u64,
    /// Acknowledged writes missing on the new primary.
    pub acked_lost: u64,
    /// The first few lost sequence numbers.
    pub lost_sample: Vec<u64>,
    /// Writes that failed on the client but are on the new primary (outcome unknown to the
    /// client: committed, acknowledgement lost with the server).
    pub unacked_but_present: u64,
    /// The primary's last position the health checks saw.
    pub last_known_primary_lsn: Option<Lsn>,
    /// The new timeline.
    pub new_timeline: Option<TimelineId>,
    /// Whether the old primary still took a write after the fence (split brain).
    pub old_primary_accepted_write: bool,
    /// What the split-brain probe saw.
    pub split_brain_probe: String,
    /// The promoter's report.
    pub promotion: PromotionReport,
    /// The rejoin, when run.
    pub rejoin: Option<RejoinResult>,
}

/// A whole drill: one JSON line of the drill log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// `failover`.
    pub kind: String,
    /// Start, seconds since the Unix epoch.
    pub started_at: u64,
    /// End, seconds since the Unix epoch.
    pub finished_at: u64,
    /// Health check interval, seconds.
    pub health_interval_seconds: f64,
    /// Consecutive failures that declare the primary dead.
    pub failures: u32,
    /// Per mode.
    pub modes: Vec<ModeResult>,
    /// Whether every goal was met (see [`DrillReport::goal_failures`]).
    pub goals_met: bool,
}

/// Goal: write downtime as the client sees it, with 1 s health checks.
pub const GOAL_DOWNTIME: Duration = Duration::from_secs(5);
/// Goal: the promotion step itself.
pub const GOAL_PROMOTION: Duration = Duration::from_secs(1);

impl DrillReport {
    /// The goals not met: downtime under [`GOAL_DOWNTIME`], promotion under
    /// [`GOAL_PROMOTION`], no acknowledged write lost in sync mode, no split brain, a clean
    /// promotion and (when run) a streaming rejoin.
    pub fn goal_failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        for m in &self.modes {
            if m.write_downtime_seconds >= GOAL_DOWNTIME.as_secs_f64() {
                f.push(format!(
                    "{}: write downtime {:.2} s >= {:?}",
                    m.mode, m.write_downtime_seconds, GOAL_DOWNTIME
                ));
            }
            if m.promotion_seconds >= GOAL_PROMOTION.as_secs_f64() {
                f.push(format!(
                    "{}: promotion {:.3} s >= {:?}",
                    m.mode, m.promotion_seconds, GOAL_PROMOTION
                ));
            }
            if m.mode == ReplicationMode::Sync && m.acked_lost > 0 {
                f.push(format!("sync: {} acknowledged writes lost", m.acked_lost));
            }
            if m.old_primary_accepted_write {
                f.push(format!(
                    "{}: the old primary accepted a write after the fence",
                    m.mode
                ));
            }
            if !(promoted(&m.promotion) && clean(&m.promotion)) {
                f.push(format!(
                    "{}: the promotion did not complete cleanly",
                    m.mode
                ));
            }
            if let Some(r) = &m.rejoin {
                if !(r.streaming && r.replicates) {
                    f.push(format!(
                        "{}: the old primary did not rejoin: {}",
                        m.mode, r.detail
                    ));
                }
            }
        }
        f
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the drill in every mode of `opts`, one after the other. Dropping the future (Ctrl-C)
/// kills the throwaway servers and removes their directories.
pub async fn run_failover_drill(opts: &DrillOptions) -> Result<DrillReport> {
    let started_at = unix_now();
    let mut modes = Vec::new();
    for mode in &opts.modes {
        tracing::info!(%mode, "failover drill: starting");
        modes.push(run_mode(opts, *mode).await?);
    }
    let mut report = DrillReport {
        kind: "failover".into(),
        started_at,
        finished_at: unix_now(),
        health_interval_seconds: opts.health_interval.as_secs_f64(),
        failures: opts.failures,
        modes,
        goals_met: false,
    };
    report.goals_met = report.goal_failures().is_empty();
    Ok(report)
}

/// The writer's record.
#[derive(Default)]
struct Ledger {
    /// (sequence number, when acknowledged, acknowledged by the original primary).
    acked: Vec<(u64, Instant, bool)>,
    failed: Vec<u64>,
}

/// Aborts the writer task when dropped.
struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn spawn_writer(
    conn_file: PathBuf,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> TaskGuard {
    TaskGuard(tokio::spawn(async move {
        let mut seq: u64 = 0;
        let mut client: Option<tokio_postgres::Client> = None;
        let mut origin: Option<String> = None;
        let mut on_origin = true;
        while !stop.load(Ordering::Relaxed) {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                // Re-read the connection file on every reconnect, as an application would.
                let conninfo = match FileRepointer::read_conninfo(&conn_file) {
                    Ok(c) => c,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                match sql::connect(&conninfo, Duration::from_millis(500)).await {
                    Ok(c) => {
                        client = Some(c);
                        let first = origin.get_or_insert_with(|| conninfo.clone());
                        on_origin = *first == conninfo;
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            let Some(c) = client.as_ref() else { continue };
            seq += 1;
            let s = i64::try_from(seq).unwrap_or(i64::MAX);
            let r = tokio::time::timeout(
                Duration::from_secs(2),
                c.execute("INSERT INTO drill_writes (seq) VALUES ($1)", &[&s]),
            )
            .await;
            let mut l = ledger
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match r {
                Ok(Ok(_)) => l.acked.push((seq, Instant::now(), on_origin)),
                _ => {
                    l.failed.push(seq);
                    client = None;
                }
            }
        }
    }))
}

fn ledger_len(ledger: &Mutex<Ledger>) -> usize {
    ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .acked
        .len()
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("{what} ({timeout:?})"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn query_value(conninfo: &str, q: &str) -> Result<String> {
    let c = sql::connect(conninfo, Duration::from_secs(2)).await?;
    sql::simple_value(&c, q, Duration::from_secs(10), &sql::redact(conninfo)).await
}

async fn make_standby(
    install: &PgInstall,
    area: &ScratchArea,
    primary: &LocalCluster,
    name: &str,
) -> Result<LocalCluster> {
    let dir = area.path().join(name);
    let mut cmd = install.command("pg_basebackup");
    cmd.arg("-D")
        .arg(&dir)
        .args(["-R", "-X", "stream", "-c", "fast", "-d"])
        .arg(format!(
            "{} application_name={name}",
            primary.conninfo("postgres")
        ));
    install.run_checked(cmd, "pg_basebackup").await?;
    let mut standby = LocalCluster::existing(install, &dir, area.path());
    standby.start(Duration::from_secs(60)).await?;
    let conninfo = standby.conninfo("postgres");
    wait_for("the standby to stream", Duration::from_secs(60), || {
        let c = conninfo.clone();
        async move {
            query_value(&c, "SELECT status FROM pg_stat_wal_receiver")
                .await
                .is_ok_and(|s| s == "streaming")
        }
    })
    .await?;
    Ok(standby)
}

async fn run_mode(opts: &DrillOptions, mode: ReplicationMode) -> Result<ModeResult> {
    let install = &opts.install;
    let mut area = ScratchArea::create(
        install,
        &format!("failover-drill-{mode}"),
        opts.parent_dir.as_deref(),
    )?;
    if opts.keep {
        area.keep();
    }
    let settings = [
        ("wal_level", "replica"),
        ("max_wal_senders", "10"),
        ("hot_standby", "on"),
        // pg_rewind needs hint-bit changes in the WAL (or data checksums).
        ("wal_log_hints", "on"),
        ("wal_keep_size", "256MB"),
        ("log_min_messages", "warning"),
    ];
    let init = InitOptions {
        data_checksums: false,
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let mut primary =
        LocalCluster::init(install, &area.path().join("primary"), area.path(), &init).await?;
    primary.start(Duration::from_secs(60)).await?;
    let mut standby = make_standby(install, &area, &primary, "standby").await?;
    let pc = primary.conninfo("postgres");
    let sc = standby.conninfo("postgres");
    {
        let c = sql::connect(&pc, Duration::from_secs(5)).await?;
        c.batch_execute("CREATE TABLE drill_writes (seq bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
            .await
            .map_err(|e| sql::pg_err(&pc, "creating drill_writes", &e))?;
        if mode == ReplicationMode::Sync {
            // On the primary only (postgresql.auto.conf is not replicated): the promoted
            // standby starts without a synchronous standby, so it takes writes at once.
            for q in [
                "ALTER SYSTEM SET synchronous_standby_names = '*'",
                "SELECT pg_reload_conf()",
            ] {
                c.batch_execute(q)
                    .await
                    .map_err(|e| sql::pg_err(&pc, "enabling synchronous replication", &e))?;
            }
            let pc2 = pc.clone();
            wait_for(
                "the standby to become synchronous",
                Duration::from_secs(30),
                || {
                    let c = pc2.clone();
                    async move {
                        query_value(
                            &c,
                            "SELECT string_agg(sync_state, ',') FROM pg_stat_replication",
                        )
                        .await
                        .is_ok_and(|s| s == "sync")
                    }
                },
            )
            .await?;
        }
    }

    // The application: a connection file and a writer reading it.
    let conn_file = area.path().join("app.conn");
    write_atomic(&conn_file, format!("{pc}\n").as_bytes())?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(conn_file.clone(), ledger.clone(), stop.clone());

    // The health checker, reusing the monitor's primary poll on a kept connection.
    let target = PgTarget::new("primary", &pc, Arc::new(Default::default()))?;
    let mut last_lsn: Option<Lsn> = None;
    let warm_until = Instant::now() + opts.warmup;
    let mut next_check = Instant::now();
    let mut failures = 0u32;
    let mut kill_at: Option<Instant> = None;
    let detected_at;
    loop {
        if kill_at.is_none() && Instant::now() >= warm_until && ledger_len(&ledger) > 0 {
            // Crash the primary: SIGSTOP the tree, SIGKILL it, reap.
            let pids = primary.kill();
            kill_at = Some(Instant::now());
            tracing::info!(%mode, ?pids, "failover drill: primary killed");
        }
        let now = Instant::now();
        // Before the kill, also wake for it: the kill is not aligned with the checks.
        let wake = if kill_at.is_none() {
            next_check.min(warm_until)
        } else {
            next_check
        };
        if now < wake {
            tokio::time::sleep(wake - now).await;
            continue;
        }
        if now < next_check {
            continue;
        }
        next_check += opts.health_interval;
        match target
            .poll_primary(opts.health_interval.min(Duration::from_secs(1)))
            .await
        {
            Probe::Up { status, .. } => {
                failures = 0;
                if status.current_lsn.is_some() {
                    last_lsn = status.current_lsn;
                }
            }
            Probe::Down { error, .. } => {
                failures += 1;
                tracing::info!(%mode, failures, %error, "failover drill: health check failed");
                if failures >= opts.failures {
                    detected_at = Instant::now();
                    break;
                }
            }
        }
        if kill_at.is_none() && Instant::now() > warm_until + Duration::from_secs(60) {
            return Err(Error::Timeout {
                what: "the writer never got an acknowledgement".into(),
            });
        }
    }
    let Some(kill_at) = kill_at else {
        return Err(Error::invalid_input(format!(
            "the primary failed its health checks before the drill killed it:\n{}",
            primary.log_tail(20)
        )));
    };

    // Fence, promote, repoint, verify.
    let promoter = PgPromoter::new(
        PgNode::new("primary", &pc).data_dir(primary.data_dir()),
        vec![PgNode::new("standby", &sc).data_dir(standby.data_dir())],
    )
    .last_known_primary_lsn(last_lsn)
    .fencer(Arc::new(PgCtlStopFencer::new(
        install.clone(),
        Duration::from_secs(30),
    )))
    .repointer(Arc::new(FileRepointer::new(&conn_file)))
    .connect_timeout(Duration::from_secs(2));
    let failover_start = Instant::now();
    let report = promoter
        .promote(PromoteRequest {
            max_lag_bytes: None,
            force: false,
            dry_run: false,
        })
        .await?;
    let failover_seconds = failover_start.elapsed().as_secs_f64();

    // Split brain: does the old primary still take a write?
    let probe = async {
        let c = sql::connect(&pc, Duration::from_secs(2)).await?;
        c.batch_execute("CREATE TABLE split_brain_probe (x int)")
            .await
            .map_err(|e| sql::pg_err(&pc, "write", &e))
    }
    .await;
    let (old_primary_accepted_write, split_brain_probe) = match probe {
        Ok(()) => (true, "the old primary accepted a write".to_string()),
        Err(e) => (false, format!("the old primary refused: {e}")),
    };

    // Let the writer prove the new path, then stop it.
    let writes_target = opts.writes_after;
    let l2 = ledger.clone();
    let after_ok = wait_for(
        "acknowledged writes after the failover",
        Duration::from_secs(60),
        || {
            let l = l2.clone();
            async move {
                let l = l.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                l.acked
                    .iter()
                    .filter(|(_, t, old)| !old && *t > kill_at)
                    .count() as u64
                    >= writes_target
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    drop(writer);
    after_ok?;

    let ledger = std::mem::take(
        &mut *ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    // Classify acknowledgements by the server that gave them, not by when the writer read
    // them: a reply already in the socket before the kill may be read just after it.
    let before: Vec<&(u64, Instant, bool)> =
        ledger.acked.iter().filter(|(_, _, old)| *old).collect();
    let last_before = before.last().map(|(_, t, _)| *t);
    let first_after = ledger
        .acked
        .iter()
        .find(|(_, _, old)| !old)
        .map(|(_, t, _)| *t);
    let write_downtime_seconds = match (last_before, first_after) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => {
            return Err(Error::invalid_input(
                "the writer has no acknowledgement on one side of the kill",
            ))
        }
    };
    let present: BTreeSet<u64> = {
        let c = sql::connect(&sc, Duration::from_secs(5)).await?;
        c.query("SELECT seq FROM drill_writes", &[])
            .await
            .map_err(|e| sql::pg_err(&sc, "reading drill_writes", &e))?
            .iter()
            .filter_map(|r| r.try_get::<_, i64>(0).ok())
            .filter_map(|v| u64::try_from(v).ok())
            .collect()
    };
    let lost: Vec<u64> = ledger
        .acked
        .iter()
        .map(|(s, _, _)| *s)
        .filter(|s| !present.contains(s))
        .collect();
    let unacked_but_present = ledger.failed.iter().filter(|s| present.contains(s)).count() as u64;

    let promotion_seconds = report
        .steps
        .iter()
        .find(|s| s.name == "promote")
        .map(|s| s.duration.as_secs_f64())
        .unwrap_or(0.0);

    let rejoin = if opts.rejoin && promoted(&report) {
        Some(rejoin_old_primary(install, &mut primary, &sc).await)
    } else {
        None
    };
    drop(standby.stop(Duration::from_secs(30)).await);
    drop(primary.stop(Duration::from_secs(30)).await);

    Ok(ModeResult {
        mode,
        detection_seconds: detected_at.duration_since(kill_at).as_secs_f64(),
        promotion_seconds,
        failover_seconds,
        write_downtime_seconds,
        acked_before_kill: before.len() as u64,
        acked_total: ledger.acked.len() as u64,
        acked_lost: lost.len() as u64,
        lost_sample: lost.iter().take(20).copied().collect(),
        unacked_but_present,
        last_known_primary_lsn: last_lsn,
        new_timeline: report.new_timeline,
        old_primary_accepted_write,
        split_brain_probe,
        promotion: report,
        rejoin,
    })
}

async fn rejoin_old_primary(
    install: &PgInstall,
    old: &mut LocalCluster,
    new_primary: &str,
) -> RejoinResult {
    let start = Instant::now();
    let opts = RejoinOptions {
        data_dir: old.data_dir().to_path_buf(),
        source_conninfo: new_primary.to_string(),
        primary_conninfo: Some(format!("{new_primary} application_name=old_primary")),
        allow_delete_datadir: false,
        from_store: None,
    };
    let r = async {
        let report = rejoin::prepare_standby(install, &opts)
            .await
            .map_err(|(_, e)| e)?;
        old.start(Duration::from_secs(60)).await?;
        let streaming = rejoin::wait_streaming(&old.conninfo("postgres"), new_primary, Duration::from_secs(60)).await?;
        // A row written now on the new primary must reach the rejoined standby.
        let marker = format!("{}", unix_now());
        let c = sql::connect(new_primary, Duration::from_secs(5)).await?;
        c.batch_execute(&format!("CREATE TABLE IF NOT EXISTS drill_rejoin (v text); INSERT INTO drill_rejoin VALUES ('{marker}')"))
            .await
            .map_err(|e| sql::pg_err(new_primary, "write after rejoin", &e))?;
        let oc = old.conninfo("postgres");
        let replicates = wait_for("the rejoined standby to replay", Duration::from_secs(30), || {
            let oc = oc.clone();
            let m = marker.clone();
            async move {
                query_value(&oc, &format!("SELECT count(*) FROM drill_rejoin WHERE v = '{m}'"))
                    .await
                    .is_ok_and(|s| s == "1")
            }
        })
        .await
        .is_ok();
        Ok::<_, Error>((report, streaming, replicates))
    }
    .await;
    match r {
        Ok((report, streaming, replicates)) => RejoinResult {
            method: report.method,
            seconds: start.elapsed().as_secs_f64(),
            streaming: true,
            replicates,
            detail: streaming,
        },
        Err(e) => RejoinResult {
            method: None,
            seconds: start.elapsed().as_secs_f64(),
            streaming: false,
            replicates: false,
            detail: e.to_string(),
        },
    }
}

/// Renders a drill report for people.
pub fn render_drill(r: &DrillReport) -> String {
    let mut s = format!(
        "failover drill: health checks every {:.1} s, {} consecutive failures declare the primary dead\n",
        r.health_interval_seconds, r.failures
    );
    for m in &r.modes {
        s.push_str(&format!(
            "\n[{}]\n  detection          {:>7.3} s\n  promotion          {:>7.3} s   (goal < {:?})\n  failover (all)     {:>7.3} s   fence+promote+repoint+verify\n  write downtime     {:>7.3} s   (goal < {:?}; last ack by the old primary -> first by the new)\n  acked writes       {} before kill, {} in all\n  acked writes lost  {}{}\n  unacked, present   {}\n  last known LSN     {}\n  new timeline       {}\n  split brain        {} ({})\n",
            m.mode,
            m.detection_seconds,
            m.promotion_seconds,
            GOAL_PROMOTION,
            m.failover_seconds,
            m.write_downtime_seconds,
            GOAL_DOWNTIME,
            m.acked_before_kill,
            m.acked_total,
            m.acked_lost,
            if m.lost_sample.is_empty() { String::new() } else { format!(" (seq {:?})", m.lost_sample) },
            m.unacked_but_present,
            m.last_known_primary_lsn.map(|l| l.to_string()).unwrap_or("-".into()),
            m.new_timeline.map(|t| t.to_string()).unwrap_or("-".into()),
            if m.old_primary_accepted_write { "YES" } else { "no" },
            m.split_brain_probe,
        ));
        if let Some(j) = &m.rejoin {
            s.push_str(&format!(
                "  rejoin             {:>7.3} s   {:?}, streaming: {}, replicates: {} ({})\n",
                j.seconds, j.method, j.streaming, j.replicates, j.detail
            ));
        }
    }
    let f = r.goal_failures();
    if f.is_empty() {
        s.push_str("\nall goals met\n");
    } else {
        s.push_str("\ngoals NOT met:\n");
        for x in f {
            s.push_str(&format!("  - {x}\n"));
        }
    }
    s
}

/// The default local drill log: `$XDG_STATE_HOME/carta-dr/failover-drills.jsonl`, else
/// `~/.local/state/carta-dr/failover-drills.jsonl`, else `./failover-drills.jsonl`.
pub fn default_local_log() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    match base {
        Some(b) => b.join("carta-dr").join(DRILL_LOG_FILE_NAME),
        None => PathBuf::from(DRILL_LOG_FILE_NAME),
    }
}

/// Appends one JSON line to a local drill log (creating it and its directory).
pub fn append_local_log(path: &Path, report: &DrillReport) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let mut line = serde_json::to_string(report)
        .map_err(|e| Error::invalid_input(format!("drill report: {e}")))?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    f.write_all(line.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("appending to {}", path.display()), e))
}

/// Reads a local drill log; a missing file is an empty log; unparsable lines are skipped
/// with a warning.
pub fn read_local_log(path: &Path) -> Result<Vec<DrillReport>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(parse_log(&t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

fn parse_log(text: &str) -> Vec<DrillReport> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| match serde_json::from_str(l) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "skipping an unreadable drill log line");
                None
            }
        })
        .collect()
}

/// Reads the drill log at [`DRILL_LOG_STORE_PATH`] in a store (sealed in the envelope).
pub async fn read_store_log(store: &dyn Store, key: Option<&Key>) -> Result<Vec<DrillReport>> {
    let path = StorePath::new(DRILL_LOG_STORE_PATH)?;
    match store.get_bytes(&path).await {
        Ok(sealed) => {
            let raw = envelope::open(path.as_str(), &sealed, key)?;
            Ok(parse_log(&String::from_utf8_lossy(&raw)))
        }
        Err(Error::NotFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Appends one JSON line to the drill log in a store: read, open, append, seal, overwrite.
/// (One writer at a time: drills are not run concurrently against one repository.)
pub async fn append_store_log(
    store: &dyn Store,
    opts: &EnvelopeOptions,
    report: &DrillReport,
) -> Result<()> {
    let path = StorePath::new(DRILL_LOG_STORE_PATH)?;
    let mut raw = match store.get_bytes(&path).await {
        Ok(sealed) => envelope::open(path.as_str(), &sealed, opts.key.as_deref())?,
        Err(Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    let line = serde_json::to_string(report)
        .map_err(|e| Error::invalid_input(format!("drill report: {e}")))?;
    raw.extend_from_slice(line.as_bytes());
    raw.push(b'\n');
    let sealed = envelope::seal(opts, &raw)?;
    store
        .put(&path, bytes::Bytes::from(sealed), PutOptions::overwrite())
        .await
}
