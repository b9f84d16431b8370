//! `carta-dr rules`: writes the Prometheus rules and the Alertmanager fragment generated from
//! the `[monitor]` configuration (thresholds, SLOs). See `docs/monitoring.md`.

use std::path::PathBuf;

use carta_dr_postgres::monitor::rules;

use crate::context::Context;
use crate::error::CliError;

/// Write replication.yml, slo.yml (Prometheus) and alertmanager.yml (a fragment).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory to write the files into (created if needed).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Writes the files and lists them on stdout.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let written = rules::write_all(&ctx.config.monitor, &args.out)?;
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}
