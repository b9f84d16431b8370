//! `carta-dr dump`: logical backups with pg_dump, their list, and their restore.

use std::path::PathBuf;
use std::time::Duration;

use carta_dr_postgres::dump::{list_dumps, logical_backup, restore_dump, DumpRequest};

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;

/// Take a logical backup (`dump --db NAME`), list them (`dump list`), restore one
/// (`dump restore ID --into DB`).
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// What to do other than taking a dump.
    #[command(subcommand)]
    pub action: Option<Action>,
    /// The database to dump.
    #[arg(long)]
    pub db: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
    /// Print the record as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How to reach PostgreSQL.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// libpq connection string without dbname (default: the libpq environment, PGHOST...).
    #[arg(long, env = "CARTA_DR_PG", value_name = "CONNINFO", default_value = "")]
    pub pg: String,
    /// Directory of pg_dump and pg_restore (default: PATH).
    #[arg(long, env = "CARTA_DR_PG_BIN", value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
}

/// `dump` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// List the complete logical backups.
    List {
        /// Only this database.
        #[arg(long)]
        db: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a logical backup into an existing database with pg_restore.
    Restore {
        /// The dump ID, `DB/TIMESTAMP`.
        id: String,
        /// The target database (it must exist).
        #[arg(long)]
        into: String,
        #[command(flatten)]
        conn: Conn,
    },
}

fn request(conn: &Conn, db: &str) -> DumpRequest {
    DumpRequest {
        conninfo: conn.pg.clone(),
        database: db.to_string(),
        bin_dir: conn.pg_bin.clone(),
    }
}

/// Runs `dump`.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let store = ctx.store(Duration::from_secs(120))?;
    let key = ctx.key()?;
    match args.action {
        None => {
            let Some(db) = args.db else {
                return Err(CliError::new(
                    ErrorClass::Usage,
                    "dump: --db NAME is required",
                ));
            };
            let opts = ctx.envelope_options()?;
            let rec = logical_backup(store.as_ref(), &opts, &request(&args.conn, &db))
                .await
                .map_err(|e| CliError::from(e).context(format!("dumping database {db}")))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&rec).unwrap_or_default());
            } else {
                println!(
                    "dump {}: {} bytes (CRC-32C {}), {} tables, {} ms",
                    rec.id,
                    rec.size,
                    rec.crc32c,
                    rec.tables.len(),
                    rec.duration_ms
                );
            }
            Ok(())
        }
        Some(Action::List { db, json }) => {
            let list = list_dumps(store.as_ref(), key.as_deref(), db.as_deref()).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                for r in &list {
                    let rows: i64 = r.tables.iter().map(|t| t.rows).sum();
                    println!(
                        "{:<40} {:>12} bytes  {:>4} tables  {:>10} rows  {}",
                        r.id,
                        r.size,
                        r.tables.len(),
                        rows,
                        r.server_version
                    );
                }
            }
            Ok(())
        }
        Some(Action::Restore { id, into, conn }) => {
            let took = restore_dump(
                store.as_ref(),
                key.as_deref(),
                &request(&conn, &into),
                &id,
                &into,
            )
            .await
            .map_err(|e| CliError::from(e).context(format!("restoring dump {id}")))?;
            println!("restored {id} into {into} in {} ms", took.as_millis());
            Ok(())
        }
    }
}
