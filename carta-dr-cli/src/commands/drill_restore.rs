//! `carta-dr drill restore`: lose the primary on purpose and restore it from the store alone,
//! with a stopwatch. With no target it builds its own throwaway cluster; with
//! `--target-conninfo` it restores beside a running cluster without touching it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use carta_dr_backends::layers::{RetryPolicy, RetryStore};
use carta_dr_core::Store;
use carta_dr_postgres::drill::report::parse_duration;
use carta_dr_postgres::drill::restore_drill::default_report_path;
use carta_dr_postgres::drill::{history, DrillTarget, PitrBy, RestoreDrillOptions, Scenario};
use carta_dr_postgres::replication::Repo;

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;

/// Lose the primary and restore it from the store alone; report RTO (by phase) and RPO.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to rehearse: crash (kill the primary, remove its data directory, restore to the
    /// end of the archive), delete (an accidental DELETE, point-in-time recovery to just
    /// before it; against --target-conninfo it deletes only rows of the drill's own ledger
    /// table, carta_dr_drill.ledger, never the target's data), corrupt-latest (the newest
    /// backup is damaged: detect it and fall back; embedded cluster only).
    #[arg(long, default_value = "crash", value_parser = parse_scenario)]
    pub scenario: Scenario,
    /// Scenario delete: recover to just before the DELETE by its transaction id (nothing
    /// else lost), by the time or by the WAL position read just before it.
    #[arg(long, default_value = "xid", value_parser = parse_pitr_by)]
    pub pitr_by: PitrBy,
    /// RTO target (30s, 10m, 1h).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub rto: Duration,
    /// RPO target.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub rpo: Duration,
    /// Drill against this running cluster (libpq key=value string; needs --repo, the store it
    /// archives to). It is never stopped: the restore runs beside it on another port.
    #[arg(long, value_name = "CONNINFO")]
    pub target_conninfo: Option<String>,
    /// The target's data directory (on this machine): the drill refuses to write inside it.
    #[arg(long, value_name = "DIR", requires = "target_conninfo")]
    pub target_data_dir: Option<PathBuf>,
    /// pgbench scale of the throwaway cluster (1 = 100 000 accounts, about 16 MB).
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// archive_timeout of the throwaway cluster.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub archive_timeout: Duration,
    /// How long heartbeats are written before the disaster.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub writes_for: Duration,
    /// Keep the killed primary's data directory (default: remove it, as a lost disk would).
    #[arg(long)]
    pub keep_primary_data: bool,
    /// Skip pg_amcheck on the restored server.
    #[arg(long)]
    pub no_amcheck: bool,
    /// pg_amcheck checks every heap page (default: the pages not marked all-visible, that is
    /// those the WAL replay wrote; the others are the backup's checksummed bytes, read again
    /// by the row count).
    #[arg(long, conflicts_with = "no_amcheck")]
    pub amcheck_full: bool,
    /// PostgreSQL bin directory (default: pg_config --bindir, else /usr/lib/postgresql/15/bin).
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// OS user PostgreSQL runs as when carta-dr runs as root (default: postgres).
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// Parent of the drill's temporary directory.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Write the Markdown report here (default: <state dir>/drills/<id>.md).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// The store keeping the drill log (default: --repo, else a local state store).
    #[arg(long, value_name = "URL")]
    pub history: Option<String>,
    /// Print the report as JSON on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Leave the drill's directory on disk (the store, the restored data directory, the
    /// heartbeat log, server logs) for inspection; the restored server is stopped.
    #[arg(long)]
    pub keep_work_dir: bool,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    s.parse()
}

fn parse_pitr_by(s: &str) -> Result<PitrBy, String> {
    s.parse()
}

/// carta-dr's local state directory: `$CARTA_DR_STATE_DIR`, else `$XDG_STATE_HOME/carta-dr`,
/// else `$HOME/.local/state/carta-dr`.
pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARTA_DR_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("carta-dr");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    home.join(".local/state/carta-dr")
}

/// The store keeping the drill log: `explicit`, else `--repo`, else
/// `file://<state dir>/drill-history`.
pub fn history_url(ctx: &Context, explicit: Option<&str>) -> Result<String, CliError> {
    if let Some(u) = explicit {
        return Ok(u.to_string());
    }
    if let Some(u) = &ctx.repo {
        return Ok(u.clone());
    }
    let dir = state_dir().join("drill-history");
    std::fs::create_dir_all(&dir).map_err(|e| CliError::io("creating", &dir, e))?;
    Ok(format!("file://{}", dir.display()))
}

/// Opens a store by URL with the retry layer every command uses.
pub fn open_store(
    ctx: &Context,
    url: &str,
    max_elapsed: Duration,
) -> Result<Arc<dyn Store>, CliError> {
    let backend = carta_dr_backends::open(url)
        .map_err(|e| CliError::new(ErrorClass::Config, format!("opening store {url}: {e}")))?;
    let policy = RetryPolicy {
        max_attempts: ctx.config.wal.store_attempts,
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(2),
        max_elapsed,
    };
    Ok(Arc::new(RetryStore::new(backend, policy)))
}

/// Runs `drill restore`; cleans up (servers killed, temporary directory removed) on Ctrl-C.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(ErrorClass::Internal, format!("locating carta-dr: {e}")))?;
    let opener: carta_dr_postgres::drill::StoreOpener = Arc::new(|url: &str| {
        let backend = carta_dr_backends::open(url)?;
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            max_elapsed: Duration::from_secs(120),
        };
        let s: Arc<dyn Store> = Arc::new(RetryStore::new(backend, policy));
        Ok(s)
    });
    let mut opts = RestoreDrillOptions::embedded(exe, opener);
    opts.scenario = args.scenario;
    opts.pitr_by = args.pitr_by;
    opts.envelope = ctx.envelope_options()?;
    opts.target = match &args.target_conninfo {
        Some(conninfo) => DrillTarget::Existing {
            conninfo: conninfo.clone(),
            repo_url: ctx.repo_url()?.to_string(),
            data_dir: args.target_data_dir.clone(),
        },
        None => DrillTarget::Embedded {
            scale: args.scale.max(1),
            archive_timeout: args.archive_timeout,
        },
    };
    opts.pg_bin = args.pg_bin.clone();
    opts.run_as = args.run_as.clone();
    opts.rto_target = args.rto;
    opts.rpo_target = args.rpo;
    opts.writes_for = args.writes_for;
    opts.keep_primary_data = args.keep_primary_data;
    opts.amcheck = !args.no_amcheck;
    opts.amcheck_full = args.amcheck_full;
    opts.work_parent = args.work_dir.clone();
    opts.keep_restored = args.keep_work_dir;

    let outcome = tokio::select! {
        r = carta_dr_postgres::drill::run(&opts) => r?,
        _ = tokio::signal::ctrl_c() => {
            return Err(CliError::new(
                ErrorClass::Internal,
                "interrupted: the drill's servers were stopped and its directory removed",
            ));
        }
    };
    if let Some(mut kept) = outcome.restored {
        let dir = kept.area.path().to_path_buf();
        let _ = kept.cluster.stop(Duration::from_secs(60)).await;
        eprintln!("drill directory kept: {}", dir.display());
    }
    let mut report = outcome.report;
    report.commands.insert(
        0,
        format!(
            "carta-dr drill restore {}",
            std::env::args().skip(3).collect::<Vec<_>>().join(" ")
        )
        .trim_end()
        .to_string(),
    );

    let md_path = args
        .report
        .clone()
        .unwrap_or_else(|| default_report_path(&state_dir(), &report.id));
    if let Some(parent) = md_path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| CliError::io("creating", parent, e))?;
    }
    std::fs::write(&md_path, report.markdown())
        .map_err(|e| CliError::io("writing", &md_path, e))?;

    let url = history_url(ctx, args.history.as_deref())?;
    let repo = Repo::new(
        open_store(ctx, &url, Duration::from_secs(60))?,
        ctx.envelope_options()?,
    );
    let logged = history::record(&repo, &report).await;

    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::new(ErrorClass::Internal, e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", report.summary());
        println!("  report: {}", md_path.display());
    }
    match logged {
        Ok(p) => eprintln!("drill recorded in {url} as {p}"),
        Err(e) => eprintln!("warning: the drill could not be recorded in {url}: {e}"),
    }
    if report.verdict.pass {
        Ok(())
    } else {
        Err(CliError::new(
            ErrorClass::Internal,
            "drill verdict: FAIL (see the report)",
        ))
    }
}
