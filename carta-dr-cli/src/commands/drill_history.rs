//! `carta-dr drill history`: past drills from the drill log, with the trend of RTO and RPO.

use std::time::Duration;

use carta_dr_postgres::drill::history;
use carta_dr_postgres::replication::Repo;

use crate::context::Context;
use crate::error::CliError;

/// List past drills with the trend of RTO and RPO.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the drill records as a JSON array.
    #[arg(long)]
    pub json: bool,
    /// The store holding the drill log (default: --repo, else the local state store that
    /// `drill restore` uses when it runs on its own throwaway cluster).
    #[arg(long, value_name = "URL")]
    pub history: Option<String>,
}

/// Runs `drill history`.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let url = super::drill_restore::history_url(ctx, args.history.as_deref())?;
    let store = super::drill_restore::open_store(ctx, &url, Duration::from_secs(60))?;
    let repo = Repo::new(store, ctx.envelope_options()?);
    let (drills, bad) = history::list(&repo).await?;
    for b in &bad {
        eprintln!("warning: unreadable drill record {}: {}", b.path, b.error);
    }
    if args.json {
        let text = serde_json::to_string_pretty(&drills)
            .map_err(|e| CliError::new(crate::exit::ErrorClass::Internal, e.to_string()))?;
        println!("{text}");
    } else if drills.is_empty() {
        println!("no drills recorded in {url}");
    } else {
        print!("{}", history::render_table(&drills));
    }
    Ok(())
}
