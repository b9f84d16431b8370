//! `carta-dr`: the command-line tool.
//!
//! # Layout
//!
//! * `main.rs` (this file): the top-level [`Cli`], the [`Command`] enum, start-up and dispatch.
//! * `commands/<name>.rs`: one module per subcommand.
//! * `context.rs`: [`Context`], what every command receives (config, repository, key source).
//! * `config.rs`: the TOML configuration file.
//! * `error.rs` / `exit.rs`: [`CliError`] and the one table of exit statuses.
//!
//! # Adding a subcommand
//!
//! 1. Create `src/commands/<name>.rs` with
//!
//!    ```ignore
//!    /// One line of help.
//!    #[derive(clap::Args, Debug)]
//!    pub struct Args { /* the command's own options */ }
//!
//!    pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> { ... }
//!    ```
//!
//!    Return `Err(CliError)` for any failure: its [`ErrorClass`](exit::ErrorClass) picks the
//!    exit status from [`exit::TABLE`], its message goes to stderr. A command that has printed
//!    its own report (for example `verify` listing findings) returns
//!    `Err(CliError::silent(class))`. Core errors convert with `?`; add where with
//!    [`ResultExt::context`](error::ResultExt::context).
//! 2. Add `pub mod <name>;` to `src/commands/mod.rs`.
//! 3. Add a variant to [`Command`] (its doc comment is the help line) and a match arm in
//!    [`dispatch`].
//! 4. Document it in `docs/cli.md`.
//!
//! Start-up stays small because PostgreSQL starts one process per WAL segment: no work before
//! the arguments are parsed, a current-thread tokio runtime (only `backup` and `restore` run a
//! worker per core), tracing only to stderr, the store opened lazily by the command that needs it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod config;
mod context;
mod error;
mod exit;
mod spool;

use context::Context;
use error::CliError;

/// carta-dr: PostgreSQL disaster recovery.
#[derive(Parser, Debug)]
#[command(name = "carta-dr", version, about, propagate_version = true)]
pub struct Cli {
    /// Options every command accepts.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(clap::Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Repository URL: file:///path, s3://bucket/prefix?endpoint=...&region=..., memory://
    #[arg(long, global = true, env = "CARTA_DR_REPO", value_name = "URL")]
    pub repo: Option<String>,
    /// TOML configuration file.
    #[arg(long, global = true, env = "CARTA_DR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// File holding the encryption key (the key itself may come from CARTA_DR_KEY; it is
    /// never accepted on the command line).
    #[arg(long, global = true, env = "CARTA_DR_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// More log output on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Archive a WAL file (archive_command = 'carta-dr wal-push %p').
    WalPush(commands::wal_push::Args),
    /// Restore a WAL file (restore_command = 'carta-dr wal-fetch %f %p').
    WalFetch(commands::wal_fetch::Args),
    /// List the WAL archive: timelines, ranges, gaps, sizes.
    WalList(commands::wal_list::Args),
    /// Take a base backup; `backup list`, `backup info ID` show the catalog.
    Backup(commands::backup::Args),
    /// Restore a backup into a data directory and configure recovery.
    Restore(commands::restore::Args),
    /// Apply retention: expire backups, their WAL and unreferenced chunks.
    Expire(commands::expire::Args),
    /// Rehearse a disaster and measure the recovery: `drill restore`, `drill history`.
    Drill(commands::drill::Args),
    /// Serve replication, archive and backup metrics for Prometheus.
    Monitor(commands::monitor::Args),
    /// Write the Prometheus alert rules and the Alertmanager fragment.
    Rules(commands::rules::Args),
    /// Verify a base backup (ID, --all), a pg_dump archive (--dump FILE_OR_ID) or WAL (--wal).
    Verify(commands::verify::Args),
    /// Logical backups with pg_dump: `dump --db NAME`, `dump list`, `dump restore ID --into DB`.
    Dump(commands::dump::Args),
    /// Fail over: fence the old primary, promote the best standby, repoint clients, verify.
    Promote(commands::promote::Args),
    /// Turn the old primary into a standby of the new one (pg_rewind).
    Rejoin(commands::rejoin::Args),
    /// Render the Markdown failover runbook with the last drill's timings.
    Runbook(commands::runbook::Args),
}

impl Command {
    /// The subcommand's name as typed, for error messages.
    fn name(&self) -> &'static str {
        match self {
            Command::WalPush(_) => "wal-push",
            Command::WalFetch(_) => "wal-fetch",
            Command::WalList(_) => "wal-list",
            Command::Backup(_) => "backup",
            Command::Restore(_) => "restore",
            Command::Expire(_) => "expire",
            Command::Drill(_) => "drill",
            Command::Monitor(_) => "monitor",
            Command::Rules(_) => "rules",
            Command::Verify(_) => "verify",
            Command::Dump(_) => "dump",
            Command::Promote(_) => "promote",
            Command::Rejoin(_) => "rejoin",
            Command::Runbook(_) => "runbook",
        }
    }
}

/// Runs one command.
async fn dispatch(ctx: &Context, command: Command) -> Result<(), CliError> {
    match command {
        Command::WalPush(a) => commands::wal_push::run(ctx, a).await,
        Command::WalFetch(a) => commands::wal_fetch::run(ctx, a).await,
        Command::WalList(a) => commands::wal_list::run(ctx, a).await,
        Command::Backup(a) => commands::backup::run(ctx, a).await,
        Command::Restore(a) => commands::restore::run(ctx, a).await,
        Command::Expire(a) => commands::expire::run(ctx, a).await,
        Command::Drill(a) => commands::drill::run(ctx, a).await,
        Command::Monitor(a) => commands::monitor::run(ctx, a).await,
        Command::Rules(a) => commands::rules::run(ctx, a).await,
        Command::Verify(a) => commands::verify::run(ctx, a).await,
        Command::Dump(a) => commands::dump::run(ctx, a).await,
        Command::Promote(a) => commands::promote::run(ctx, a).await,
        Command::Rejoin(a) => commands::rejoin::run(ctx, a).await,
        Command::Runbook(a) => commands::runbook::run(ctx, a).await,
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_tracing(cli.global.verbose);
    let name = cli.command.name();
    // Backup and restore hash, compress and write gigabytes: they get a worker per core so
    // the socket, the checksums and the file writes overlap. Every other command (above all
    // wal-push and wal-fetch, started once per segment) keeps the small current-thread runtime.
    let mut builder = match cli.command {
        Command::Backup(_) | Command::Restore(_) => {
            // Their multi-MiB buffers are freed on other threads than they were allocated on:
            // with glibc's default of one arena per thread, freed buffers pile up per arena.
            // Two arenas keep the peak RSS near what is actually in flight.
            // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
            tokio::runtime::Builder::new_multi_thread()
        }
        Command::Drill(ref d) if d.wants_workers() => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let result = builder
        .enable_all()
        .build()
        .map_err(|e| CliError::new(exit::ErrorClass::Internal, format!("starting runtime: {e}")))
        .and_then(|rt| {
            let r = rt.block_on(async {
                let ctx = Context::load(&cli.global)?;
                dispatch(&ctx, cli.command).await
            });
            // Do not wait for idle blocking threads at exit.
            rt.shutdown_background();
            r
        });
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            if !e.message.is_empty() {
                tracing::debug!(class = ?e.class, "command failed");
                eprintln!("carta-dr {name}: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Reports a command-line error. `--help` and `--version` exit 0. A bad `wal-fetch` command
/// line aborts recovery (exit [`exit::RECOVERY_ABORT`]) rather than looking like a missing
/// file to PostgreSQL.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let _ = e.print();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::from(exit::OK),
        _ if std::env::args().any(|a| a == "wal-fetch") => ExitCode::from(exit::RECOVERY_ABORT),
        _ => ExitCode::from(exit::ErrorClass::Usage.exit_code()),
    }
}

/// Logs to stderr; nothing is set up unless asked for (`-v` or `RUST_LOG`), except errors.
fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.is_empty() => EnvFilter::new(s),
        _ => EnvFilter::new(match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
