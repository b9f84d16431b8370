//! `carta-dr wal-push <path>`: PostgreSQL's `archive_command`.

use std::path::PathBuf;

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;

/// Archive one WAL file (`archive_command = 'carta-dr wal-push %p'`).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The file PostgreSQL asks to archive (`%p`, relative to the data directory).
    pub path: PathBuf,
    /// Push up to N further segments marked ready (overrides `wal.push_look_ahead`).
    #[arg(long, value_name = "N")]
    pub look_ahead: Option<usize>,
}

/// Runs `wal-push`.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let _ = (ctx, args);
    Err(CliError::new(
        ErrorClass::NotSupported,
        "wal-push: not built yet",
    ))
}
