//! `carta-dr rejoin`: the old primary back as a standby of the new one (`pg_rewind`, else a
//! fresh copy with `--allow-delete-datadir`), started with `pg_ctl`, until it streams.
//!
//! The fresh copy is the newest backup restored from the repository when one is configured
//! (`--repo`, `CARTA_DR_REPO`, the config file): the server replays the archive with
//! `carta-dr wal-fetch`, then streams from the new primary. Without a repository it is a
//! `pg_basebackup` from the new primary.

use std::path::PathBuf;
use std::time::Duration;

use carta_dr_core::traits::StepOutcome;
use carta_dr_postgres::local_cluster::PgInstall;
use carta_dr_postgres::promote::rejoin::{
    prepare_standby, wait_streaming, RejoinMethod, RejoinOptions, StoreRejoin,
};
use carta_dr_postgres::replication::Repo;

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;

const STORE_PATIENCE: Duration = Duration::from_secs(120);

/// Turn the old primary into a standby of the new primary (pg_rewind, else a fresh copy).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The old primary's data directory (it must be stopped).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The new primary (superuser connection string), source of the rewind.
    #[arg(long, value_name = "CONNINFO")]
    pub source: String,
    /// The primary_conninfo to stream with (default: --source).
    #[arg(long, value_name = "CONNINFO")]
    pub primary_conninfo: Option<String>,
    /// Allow emptying the data directory for a fresh copy when a rewind is impossible (the
    /// newest backup of --repo when one is configured, else pg_basebackup from --source).
    #[arg(long)]
    pub allow_delete_datadir: bool,
    /// Prepare only; do not start the server.
    #[arg(long)]
    pub no_start: bool,
    /// How to reach the rejoined server once started (to wait until it streams).
    #[arg(long, value_name = "CONNINFO")]
    pub conninfo: Option<String>,
    /// The server log for `pg_ctl start -l` (default DATA_DIR/../rejoin.log).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// PostgreSQL bin directory.
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// OS user running PostgreSQL when carta-dr runs as root (default postgres).
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// Seconds to wait until it streams.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub timeout: u64,
}

/// Runs the rejoin.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    if !args.no_start && args.conninfo.is_none() {
        return Err(CliError::new(
            ErrorClass::Usage,
            "give --conninfo of the rejoined server (to wait until it streams), or --no-start",
        ));
    }
    let install = PgInstall::discover(args.pg_bin.as_deref(), args.run_as.as_deref())
        .map_err(|e| CliError::config(e.to_string()))?;
    let opts = RejoinOptions {
        data_dir: args.data_dir.clone(),
        source_conninfo: args.source.clone(),
        primary_conninfo: args.primary_conninfo.clone(),
        allow_delete_datadir: args.allow_delete_datadir,
        from_store: match &ctx.repo {
            Some(_) => Some(StoreRejoin {
                repo: Repo::new(ctx.store(STORE_PATIENCE)?, ctx.envelope_options()?),
                restore_command: super::restore::wal_fetch_command(ctx)?,
                concurrency: 4,
            }),
            None => None,
        },
    };
    let (report, err) = match prepare_standby(&install, &opts).await {
        Ok(r) => (r, None),
        Err((r, e)) => (r, Some(e)),
    };
    for s in &report.steps {
        let o = match &s.outcome {
            StepOutcome::Ok => "ok".to_string(),
            StepOutcome::Skipped { why } => format!("skipped ({why})"),
            StepOutcome::Failed { why } => format!("FAILED: {why}"),
        };
        println!("{:<14} {:>8.3} s  {o}", s.name, s.duration.as_secs_f64());
        if !s.detail.is_empty() {
            println!("               {}", s.detail);
        }
    }
    if let Some(m) = report.method {
        let name = match m {
            RejoinMethod::PgRewind => "pg_rewind",
            RejoinMethod::BaseBackup => "pg_basebackup",
            RejoinMethod::StoreRestore => "store_restore",
        };
        println!("method: {name}");
    }
    if let Some(e) = err {
        return Err(CliError::new(ErrorClass::of(&e), e.to_string()).context("rejoin"));
    }
    if args.no_start {
        println!("prepared as a standby; start it and check pg_stat_wal_receiver");
        return Ok(());
    }
    let log = args.log.clone().unwrap_or_else(|| {
        args.data_dir
            .parent()
            .unwrap_or(&args.data_dir)
            .join("rejoin.log")
    });
    let mut cmd = install.command("pg_ctl");
    cmd.arg("-D")
        .arg(&args.data_dir)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "120", "start"]);
    install
        .run_checked(cmd, "pg_ctl start")
        .await
        .map_err(|e| CliError::from(e).context("starting the rejoined server"))?;
    let conninfo = args.conninfo.unwrap_or_default();
    let msg = wait_streaming(&conninfo, &args.source, Duration::from_secs(args.timeout))
        .await
        .map_err(|e| CliError::from(e).context("waiting for the rejoined server to stream"))?;
    println!("rejoined: {msg}");
    Ok(())
}
