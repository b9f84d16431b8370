//! `carta-dr wal-fetch <name> <dest>`: PostgreSQL's `restore_command`.

use std::path::PathBuf;

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;

/// Restore one WAL file (`restore_command = 'carta-dr wal-fetch %f %p'`).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The file name PostgreSQL asks for (`%f`).
    pub name: String,
    /// Where to write it (`%p`).
    pub dest: PathBuf,
    /// Prefetch up to N following segments (overrides `wal.fetch_prefetch`).
    #[arg(long, value_name = "N")]
    pub prefetch: Option<usize>,
}

/// Runs `wal-fetch`.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let _ = (ctx, args);
    Err(CliError::new(
        ErrorClass::RecoveryAbort,
        "wal-fetch: not built yet",
    ))
}
