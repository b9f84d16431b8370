//! `carta-dr backup`: takes a physical base backup over the replication protocol;
//! `carta-dr backup list` and `carta-dr backup info ID` show the catalog and the
//! point-in-time-recovery window.
//!
//! The connection comes from `--pg 'key=value ...'` on top of libpq's `PGHOST`, `PGPORT`,
//! `PGUSER`, `PGPASSWORD` and `PGDATABASE`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use carta_dr_core::catalog::{pitr_window, secs_to_time, BackupRecord, PitrWindow};
use carta_dr_core::traits::BackupRequest;
use carta_dr_core::{BackupId, WalArchive, WalFileName, WalSegmentSize};
use carta_dr_postgres::replication::{BackupProgress, ConnParams, PgBackup, PgBackupConfig, Repo};
use serde::Serialize;

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;

/// How long store calls keep retrying.
const STORE_PATIENCE: Duration = Duration::from_secs(120);

/// Take a base backup, or show the backup catalog.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// `list` or `info`; without one, takes a backup.
    #[command(subcommand)]
    pub action: Option<Action>,
    /// Options of taking a backup.
    #[command(flatten)]
    pub take: TakeArgs,
}

/// Catalog commands.
#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// List the backups and the recoverable window.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one backup.
    Info {
        /// The backup id (or `latest`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Options of taking a backup.
#[derive(clap::Args, Debug)]
pub struct TakeArgs {
    /// Connection string (`host=... port=... user=...`), on top of PGHOST, PGPORT, PGUSER,
    /// PGPASSWORD, PGDATABASE.
    #[arg(long, value_name = "CONNINFO")]
    pub pg: Option<String>,
    /// The backup label.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Spread the starting checkpoint instead of forcing it at once.
    #[arg(long)]
    pub spread_checkpoint: bool,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Seconds to wait for the backup's WAL to reach the archive.
    #[arg(long, default_value_t = 300)]
    pub wal_timeout: u64,
    /// Use this backup id (resuming an interrupted run reuses what is stored).
    #[arg(long, value_name = "ID")]
    pub resume: Option<String>,
    /// Print the record as JSON when done.
    #[arg(long)]
    pub json: bool,
}

/// Runs `backup`, `backup list` or `backup info`.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    match args.action {
        Some(Action::List { json }) => list(ctx, json).await,
        Some(Action::Info { id, json }) => info(ctx, &id, json).await,
        None => take(ctx, args.take).await,
    }
}

/// The zstd level of backup objects when the configuration names none: on relation files,
/// in 1 MiB frames, level 1 is both faster and no larger than level 3 (pgbench scale 100:
/// 67 MB against 68 MB, 40% less CPU; docs/backup.md).
const BACKUP_ZSTD_LEVEL: i32 = 1;

fn repo(ctx: &Context) -> Result<Repo, CliError> {
    let mut opts = ctx.envelope_options()?;
    if ctx.config.compression_level.is_none() {
        opts.codec = carta_dr_core::envelope::Codec::Zstd {
            level: BACKUP_ZSTD_LEVEL,
        };
    }
    Ok(Repo::new(ctx.store(STORE_PATIENCE)?, opts))
}

async fn take(ctx: &Context, a: TakeArgs) -> Result<(), CliError> {
    let mut conn = ConnParams::from_env();
    if let Some(ci) = &a.pg {
        conn = conn.apply_conninfo(ci)?;
    }
    let archive = ctx.wal_archive(STORE_PATIENCE)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let progress = bar.clone().map(|b| {
        Arc::new(move |p: BackupProgress| {
            if let Some(t) = p.bytes_total {
                b.set_length(t.max(p.bytes_done));
            }
            b.set_position(p.bytes_done);
        }) as Arc<dyn Fn(BackupProgress) + Send + Sync>
    });
    let counts_conn = conn.clone();
    let backup = PgBackup::new(
        repo(ctx)?,
        PgBackupConfig {
            conn,
            archive,
            wal_deadline: Duration::from_secs(a.wal_timeout),
            concurrency: a.concurrency.max(1),
            progress,
        },
    );
    let resume = a
        .resume
        .as_deref()
        .map(|s| s.parse::<BackupId>())
        .transpose()?;
    let rec = backup
        .run_record(&BackupRequest {
            label: a.label,
            fast_checkpoint: !a.spread_checkpoint,
            resume,
        })
        .await
        .map_err(|e| CliError::from(e).context("backup"));
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let rec = rec?;
    super::verify_restore_test::after_backup(&repo(ctx)?, rec.id, &counts_conn).await;
    if a.json {
        print_json(&Info::of(&rec, None))?;
    } else {
        println!(
            "backup {} complete: {} .. {} (timeline {}), {} read, {} newly stored",
            rec.id,
            rec.start_lsn,
            rec.stop_lsn,
            rec.timeline,
            human(rec.original_size),
            human(rec.stored_size)
        );
    }
    Ok(())
}

/// One backup, as `list` and `info` print it.
#[derive(Serialize)]
struct Info {
    id: String,
    kind: carta_dr_core::traits::BackupKind,
    label: String,
    start_lsn: String,
    stop_lsn: String,
    timeline: u32,
    system_identifier: String,
    pg_version: u32,
    start_time: String,
    stop_time: String,
    original_size: u64,
    stored_size: u64,
    files: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    restorable: Option<bool>,
}

impl Info {
    fn of(r: &BackupRecord, restorable: Option<bool>) -> Info {
        Info {
            id: r.id.to_string(),
            kind: r.kind,
            label: r.label.clone(),
            start_lsn: r.start_lsn.to_string(),
            stop_lsn: r.stop_lsn.to_string(),
            timeline: r.timeline.get(),
            system_identifier: r.system_identifier.to_string(),
            pg_version: r.pg_version,
            start_time: BackupId::from_time(secs_to_time(r.start_time)).to_string(),
            stop_time: BackupId::from_time(secs_to_time(r.stop_time)).to_string(),
            original_size: r.original_size,
            stored_size: r.stored_size,
            files: r.files.len(),
            restorable,
        }
    }
}

/// The recoverable window, printable.
#[derive(Serialize)]
struct Window {
    earliest_backup: String,
    earliest_lsn: String,
    earliest_time: String,
    latest_backup: String,
    latest_lsn: String,
}

impl Window {
    fn of(w: &PitrWindow) -> Window {
        Window {
            earliest_backup: w.earliest_backup.to_string(),
            earliest_lsn: w.earliest_lsn.to_string(),
            earliest_time: BackupId::from_time(secs_to_time(w.earliest_time)).to_string(),
            latest_backup: w.latest_backup.to_string(),
            latest_lsn: w.latest_lsn.to_string(),
        }
    }
}

#[derive(Serialize)]
struct Listing {
    backups: Vec<Info>,
    pitr_window: Option<Window>,
}

async fn catalog(ctx: &Context) -> Result<(Vec<BackupRecord>, Option<PitrWindow>), CliError> {
    let repo = repo(ctx)?;
    let records = repo.load_all().await?;
    let archive = ctx.wal_archive(STORE_PATIENCE)?;
    let wal: Vec<WalFileName> = archive
        .list(None)
        .await?
        .into_iter()
        .map(|w| w.name)
        .collect();
    let seg = records
        .last()
        .map(|r| WalSegmentSize::new(r.wal_segment_size))
        .transpose()?
        .unwrap_or_default();
    let summaries: Vec<_> = records.iter().map(|r| r.summary()).collect();
    let window = pitr_window(&summaries, &wal, seg);
    Ok((records, window))
}

async fn list(ctx: &Context, json: bool) -> Result<(), CliError> {
    let (records, window) = catalog(ctx).await?;
    if json {
        return print_json(&Listing {
            backups: records.iter().map(|r| Info::of(r, None)).collect(),
            pitr_window: window.as_ref().map(Window::of),
        });
    }
    println!(
        "{:<20} {:<11} {:>14} {:>14} {:>3} {:>10} {:>10}",
        "id", "kind", "start", "stop", "tl", "size", "stored"
    );
    for r in &records {
        println!(
            "{:<20} {:<11} {:>14} {:>14} {:>3} {:>10} {:>10}",
            r.id.to_string(),
            format!("{:?}", r.kind).to_lowercase(),
            r.start_lsn.to_string(),
            r.stop_lsn.to_string(),
            r.timeline.get(),
            human(r.original_size),
            human(r.stored_size)
        );
    }
    match window {
        Some(w) => println!(
            "recoverable: from {} ({}, backup {}) to {} (end of archived WAL after backup {})",
            BackupId::from_time(secs_to_time(w.earliest_time)),
            w.earliest_lsn,
            w.earliest_backup,
            w.latest_lsn,
            w.latest_backup
        ),
        None => println!("recoverable: nothing (no backup has its WAL range archived)"),
    }
    Ok(())
}

async fn info(ctx: &Context, id: &str, json: bool) -> Result<(), CliError> {
    let (records, window) = catalog(ctx).await?;
    let rec = if id == "latest" {
        records.last()
    } else {
        let id: BackupId = id.parse()?;
        records.iter().find(|r| r.id == id)
    }
    .ok_or_else(|| CliError::new(ErrorClass::NotFound, format!("no backup {id}")))?;
    let restorable = window.as_ref().map(|w| rec.id >= w.earliest_backup);
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            backup: Info,
            pitr_window: Option<Window>,
            files: &'a [carta_dr_core::catalog::FileRecord],
        }
        return print_json(&Out {
            backup: Info::of(rec, Some(restorable.unwrap_or(false))),
            pitr_window: window.as_ref().map(Window::of),
            files: &rec.files,
        });
    }
    let i = Info::of(rec, restorable);
    println!("backup:            {}", i.id);
    println!("label:             {}", i.label);
    println!("kind:              {:?}", i.kind);
    println!("system identifier: {}", i.system_identifier);
    println!("PostgreSQL:        {}", i.pg_version);
    println!("timeline:          {}", i.timeline);
    println!("WAL:               {} .. {}", i.start_lsn, i.stop_lsn);
    println!("time:              {} .. {}", i.start_time, i.stop_time);
    println!("files:             {}", i.files);
    println!(
        "size:              {} ({} newly stored)",
        human(i.original_size),
        human(i.stored_size)
    );
    println!(
        "restorable:        {}",
        if restorable == Some(true) {
            "yes"
        } else {
            "no (WAL range incomplete)"
        }
    );
    if let Some(w) = window {
        println!(
            "recoverable window: {} ({}) .. {}",
            BackupId::from_time(secs_to_time(w.earliest_time)),
            w.earliest_lsn,
            w.latest_lsn
        );
    }
    Ok(())
}

fn print_json<T: Serialize>(v: &T) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::new(ErrorClass::Internal, format!("JSON: {e}")))?;
    println!("{s}");
    Ok(())
}

/// Bytes in binary units.
pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}
