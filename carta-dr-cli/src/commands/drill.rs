//! `carta-dr drill ...`: rehearse disasters and measure the recovery.

use crate::context::Context;
use crate::error::CliError;

/// Rehearse a disaster: `drill restore`, `drill history`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which drill.
    #[command(subcommand)]
    pub command: DrillCommand,
}

/// The drills.
#[derive(clap::Subcommand, Debug)]
pub enum DrillCommand {
    /// Lose the primary and restore it from the store alone; report RTO (by phase) and RPO.
    Restore(Box<super::drill_restore::Args>),
    /// List past drills with the trend of RTO and RPO.
    History(super::drill_history::Args),
    /// Kill a throwaway primary under a live writer: detection, promotion, downtime, loss.
    Failover(super::drill_failover::Args),
    /// The restore_command of a drill against a running cluster: `wal-fetch` limited to what
    /// the archive held at the declared disaster.
    WalFetch(super::drill_wal_fetch::Args),
}

impl Args {
    /// Whether the subcommand wants a worker per core: `drill restore` restores a base backup
    /// in-process (decompression, checksums and file writes overlap) and `drill failover` runs
    /// servers; `drill wal-fetch` (started once per WAL segment) stays small.
    pub fn wants_workers(&self) -> bool {
        matches!(
            self.command,
            DrillCommand::Restore(_) | DrillCommand::Failover(_)
        )
    }
}

/// Runs a drill subcommand.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    match args.command {
        DrillCommand::Restore(a) => super::drill_restore::run(ctx, *a).await,
        DrillCommand::History(a) => super::drill_history::run(ctx, a).await,
        DrillCommand::Failover(a) => super::drill_failover::run(ctx, a).await,
        DrillCommand::WalFetch(a) => super::drill_wal_fetch::run(ctx, a).await,
    }
}
