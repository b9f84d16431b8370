//! `carta-dr wal-list`: what the WAL archive holds.

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;

/// List the WAL archive: timelines, ranges, gaps, sizes.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `wal-list`.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let _ = (ctx, args);
    Err(CliError::new(
        ErrorClass::NotSupported,
        "wal-list: not built yet",
    ))
}
