//! `carta-dr drill failover`: the failover game-day on throwaway local clusters (async, then
//! sync), with the report printed and appended to the drill log: `drills/failover.jsonl` in
//! the repository when one is given, else a local file. Ctrl-C stops it and removes the
//! clusters.

use std::path::PathBuf;
use std::time::Duration;

use carta_dr_postgres::local_cluster::PgInstall;
use carta_dr_postgres::promote::drill::{
    append_local_log, append_store_log, default_local_log, render_drill, run_failover_drill,
    DrillOptions, ReplicationMode, DRILL_LOG_STORE_PATH,
};

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;

/// Which replication modes to drill.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modes {
    /// Asynchronous, then synchronous.
    Both,
    /// Asynchronous only.
    Async,
    /// Synchronous only.
    Sync,
}

/// Kill a throwaway primary under a live writer; measure detection, promotion, downtime, loss.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Replication modes to drill.
    #[arg(long, value_enum, default_value = "both")]
    pub mode: Modes,
    /// Seconds between health checks.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub interval: f64,
    /// Consecutive failed health checks that declare the primary dead.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub failures: u32,
    /// Seconds the writer runs before the kill.
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    pub warmup: f64,
    /// Do not rejoin the old primary afterwards.
    #[arg(long)]
    pub no_rejoin: bool,
    /// Keep the scratch directories.
    #[arg(long)]
    pub keep: bool,
    /// Where the scratch directories go.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// The local drill log when no repository is given (default
    /// $XDG_STATE_HOME/carta-dr/failover-drills.jsonl).
    #[arg(long, value_name = "FILE")]
    pub drill_log: Option<PathBuf>,
    /// PostgreSQL bin directory.
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// OS user running PostgreSQL when carta-dr runs as root (default postgres).
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the drill.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    if !(args.interval > 0.0 && args.interval.is_finite()) || args.failures == 0 {
        return Err(CliError::new(
            ErrorClass::Usage,
            "--interval must be > 0 and --failures >= 1",
        ));
    }
    let install = PgInstall::discover(args.pg_bin.as_deref(), args.run_as.as_deref())
        .map_err(|e| CliError::config(e.to_string()))?;
    let mut opts = DrillOptions::new(install);
    opts.modes = match args.mode {
        Modes::Both => vec![ReplicationMode::Async, ReplicationMode::Sync],
        Modes::Async => vec![ReplicationMode::Async],
        Modes::Sync => vec![ReplicationMode::Sync],
    };
    opts.health_interval = Duration::from_secs_f64(args.interval);
    opts.failures = args.failures;
    opts.warmup = Duration::from_secs_f64(args.warmup.max(0.5));
    opts.rejoin = !args.no_rejoin;
    opts.keep = args.keep;
    opts.parent_dir = args.work_dir.clone();

    // Ctrl-C drops the drill, whose clusters are killed and directories removed on drop.
    let report = tokio::select! {
        r = run_failover_drill(&opts) => r?,
        _ = tokio::signal::ctrl_c() => {
            return Err(CliError::new(ErrorClass::Internal, "interrupted; the drill's clusters were removed"));
        }
    };
    if args.json {
        let j = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::new(ErrorClass::Internal, e.to_string()))?;
        println!("{j}");
    } else {
        print!("{}", render_drill(&report));
    }
    if ctx.repo.is_some() {
        let store = ctx.store(Duration::from_secs(30))?;
        append_store_log(store.as_ref(), &ctx.envelope_options()?, &report).await?;
        eprintln!("appended to {DRILL_LOG_STORE_PATH} in the repository");
    } else {
        let path = args.drill_log.clone().unwrap_or_else(default_local_log);
        append_local_log(&path, &report)?;
        eprintln!("appended to {}", path.display());
    }
    if report.goals_met {
        Ok(())
    } else {
        Err(CliError::silent(ErrorClass::Internal))
    }
}
