//! `carta-dr expire`: applies retention. Keeps the newest `--keep-full` backups and every
//! backup newer than `--keep-newer-than` days (default: 1 and 30); removes the rest, the WAL
//! older than the oldest retained backup's start, and chunks and bundles no retained backup
//! references.

use std::time::{Duration, SystemTime};

use carta_dr_core::archive::path_of;
use carta_dr_core::catalog::RetentionPolicy;
use carta_dr_postgres::replication::expire::{expire, ExpireOptions};
use carta_dr_postgres::replication::Repo;
use serde::Serialize;

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;

const STORE_PATIENCE: Duration = Duration::from_secs(120);

/// Remove expired backups, the WAL they alone needed, and unreferenced chunks.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keep at least this many newest backups.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub keep_full: usize,
    /// Keep every backup newer than this many days.
    #[arg(long, default_value_t = 30.0, value_name = "DAYS")]
    pub keep_newer_than: f64,
    /// Keep unreferenced chunks younger than this many seconds (a backup may be running).
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub gc_grace: u64,
    /// Report what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Out {
    dry_run: bool,
    kept: Vec<String>,
    expired: Vec<String>,
    wal_removed: Vec<String>,
    objects_removed: u64,
    bytes_removed: u64,
}

/// Runs `expire`.
pub async fn run(ctx: &Context, a: Args) -> Result<(), CliError> {
    if !(a.keep_newer_than.is_finite() && a.keep_newer_than >= 0.0) {
        return Err(CliError::new(
            ErrorClass::Usage,
            "--keep-newer-than must be >= 0",
        ));
    }
    let store = ctx.store(STORE_PATIENCE)?;
    let repo = Repo::new(store, ctx.envelope_options()?);
    let archive = ctx.wal_archive(STORE_PATIENCE)?;
    let opts = ExpireOptions {
        policy: RetentionPolicy {
            keep_full: a.keep_full.max(1),
            keep_newer_than: Duration::from_secs_f64(a.keep_newer_than * 86_400.0),
        },
        dry_run: a.dry_run,
        gc_grace: Duration::from_secs(a.gc_grace),
    };
    let r = expire(&repo, archive.as_ref(), &path_of, &opts, SystemTime::now()).await?;
    let out = Out {
        dry_run: a.dry_run,
        kept: r.kept.iter().map(|i| i.to_string()).collect(),
        expired: r.expired.iter().map(|i| i.to_string()).collect(),
        wal_removed: r.wal_removed.iter().map(|w| w.to_string()).collect(),
        objects_removed: r.objects_removed,
        bytes_removed: r.bytes_removed,
    };
    if a.json {
        let s = serde_json::to_string_pretty(&out)
            .map_err(|e| CliError::new(ErrorClass::Internal, format!("JSON: {e}")))?;
        println!("{s}");
    } else {
        let verb = if a.dry_run { "would remove" } else { "removed" };
        println!(
            "kept {} backups; {verb} {} backups ({}), {} WAL files, {} chunks/bundles ({})",
            out.kept.len(),
            out.expired.len(),
            out.expired.join(", "),
            out.wal_removed.len(),
            out.objects_removed,
            super::backup::human(out.bytes_removed)
        );
    }
    Ok(())
}
