//! `carta-dr promote`: fence the old primary, promote the most advanced standby, repoint
//! clients, verify a write. Prints the timed report (`--json` for machines). See
//! `docs/failover.md`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use carta_dr_core::traits::PromoteRequest;
use carta_dr_core::{Lsn, Promoter};
use carta_dr_postgres::local_cluster::PgInstall;
use carta_dr_postgres::promote::{
    clean, promoted, render_report, CommandFencer, CommandRepointer, Fencer, FileRepointer,
    HaproxyRepointer, PgBouncerRepointer, PgCtlStopFencer, PgNode, PgPromoter, ReadOnlyFencer,
    Repointer,
};

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;

/// How the old primary is fenced.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceKind {
    /// `pg_ctl stop` on the local data directory (--primary-data-dir).
    PgCtl,
    /// `default_transaction_read_only = on` and terminate sessions (server must answer).
    ReadOnly,
    /// Run --fence-command (STONITH, cloud API...); exit 0 = fenced.
    Command,
    /// No fence (the old primary may keep taking writes).
    None,
}

/// How clients are repointed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepointKind {
    /// Do not repoint.
    None,
    /// Rewrite --conn-file atomically.
    File,
    /// Rewrite the [databases] entry of --pgbouncer-ini and RELOAD.
    Pgbouncer,
    /// HAProxy runtime API: set server addr/port.
    Haproxy,
    /// Run --repoint-command.
    Command,
}

/// The topology and strategies, shared with `carta-dr runbook`.
#[derive(clap::Args, Debug, Clone)]
pub struct Topology {
    /// The (old) primary's connection string; it may be unreachable.
    #[arg(long, value_name = "CONNINFO")]
    pub primary: String,
    /// The primary's data directory, when local (needed by --fence pg-ctl).
    #[arg(long, value_name = "DIR")]
    pub primary_data_dir: Option<PathBuf>,
    /// A standby, as NAME=CONNINFO (repeatable); the most advanced one is promoted.
    #[arg(long = "standby", value_name = "NAME=CONNINFO", required = true)]
    pub standbys: Vec<String>,
    /// How to fence the old primary.
    #[arg(long, value_enum, default_value = "pg-ctl")]
    pub fence: FenceKind,
    /// The command of --fence command.
    #[arg(long, value_name = "CMD")]
    pub fence_command: Option<String>,
    /// How to repoint clients.
    #[arg(long, value_enum, default_value = "none")]
    pub repoint: RepointKind,
    /// --repoint file: the connection file clients read.
    #[arg(long, value_name = "FILE")]
    pub conn_file: Option<PathBuf>,
    /// --repoint file: its template ({conninfo} {host} {port} {dbname} {name}); default the
    /// connection string on one line.
    #[arg(long, value_name = "TEMPLATE")]
    pub conn_template: Option<String>,
    /// --repoint pgbouncer: the pgbouncer.ini to rewrite.
    #[arg(long, value_name = "FILE")]
    pub pgbouncer_ini: Option<PathBuf>,
    /// --repoint pgbouncer: the [databases] key.
    #[arg(long, value_name = "NAME")]
    pub pgbouncer_db: Option<String>,
    /// --repoint pgbouncer: the admin console (dbname=pgbouncer).
    #[arg(long, value_name = "CONNINFO")]
    pub pgbouncer_admin: Option<String>,
    /// --repoint haproxy: the runtime API socket.
    #[arg(long, value_name = "PATH")]
    pub haproxy_socket: Option<PathBuf>,
    /// --repoint haproxy: BACKEND/SERVER to repoint.
    #[arg(long, value_name = "BACKEND/SERVER")]
    pub haproxy_server: Option<String>,
    /// --repoint command: the command.
    #[arg(long, value_name = "CMD")]
    pub repoint_command: Option<String>,
    /// How a client reaches the primary through the repointed path (pgbouncer, HAProxy,
    /// command), for the write check.
    #[arg(long, value_name = "CONNINFO")]
    pub client_conninfo: Option<String>,
    /// The most WAL bytes the promotion may lose.
    #[arg(long, value_name = "BYTES")]
    pub max_lag: Option<u64>,
    /// PostgreSQL bin directory (pg_ctl).
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// OS user running pg_ctl when carta-dr runs as root (default postgres).
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
}

/// Fence the old primary, promote the best standby, repoint clients, verify a write.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The topology and strategies.
    #[command(flatten)]
    pub topology: Topology,
    /// The primary's last known WAL position, for the loss estimate when it is unreachable
    /// (from the monitor, or the end of the archive's newest segment).
    #[arg(long, value_name = "LSN")]
    pub last_known_lsn: Option<Lsn>,
    /// Go on past the loss budget or a failed fence.
    #[arg(long)]
    pub force: bool,
    /// Only run the pre-checks and say what would happen.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds a server may take to connect or answer.
    #[arg(long, default_value_t = 3, value_name = "SECONDS")]
    pub timeout: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn need<T: Clone>(v: &Option<T>, flag: &str, why: &str) -> Result<T, CliError> {
    v.clone()
        .ok_or_else(|| CliError::new(ErrorClass::Usage, format!("{why} needs {flag}")))
}

impl Topology {
    /// The standby nodes.
    pub fn standby_nodes(&self) -> Result<Vec<PgNode>, CliError> {
        self.standbys
            .iter()
            .map(|s| {
                let (name, conninfo) = s.split_once('=').ok_or_else(|| {
                    CliError::new(
                        ErrorClass::Usage,
                        format!("--standby {s:?}: expected NAME=CONNINFO"),
                    )
                })?;
                Ok(PgNode::new(name.trim(), conninfo))
            })
            .collect()
    }

    /// The primary node.
    pub fn primary_node(&self) -> PgNode {
        let mut n = PgNode::new("primary", &self.primary);
        if let Some(d) = &self.primary_data_dir {
            n = n.data_dir(d);
        }
        n
    }

    /// The fencer, if any.
    pub fn fencer(&self, timeout: Duration) -> Result<Option<Arc<dyn Fencer>>, CliError> {
        Ok(match self.fence {
            FenceKind::PgCtl => {
                need(
                    &self.primary_data_dir,
                    "--primary-data-dir",
                    "--fence pg-ctl",
                )?;
                let install = PgInstall::discover(self.pg_bin.as_deref(), self.run_as.as_deref())
                    .map_err(|e| CliError::config(e.to_string()))?;
                Some(Arc::new(PgCtlStopFencer::new(
                    install,
                    Duration::from_secs(60),
                )))
            }
            FenceKind::ReadOnly => Some(Arc::new(ReadOnlyFencer::new(timeout))),
            FenceKind::Command => Some(Arc::new(CommandFencer::new(
                need(&self.fence_command, "--fence-command", "--fence command")?,
                Duration::from_secs(120),
            ))),
            FenceKind::None => None,
        })
    }

    /// The repointer, if any.
    pub fn repointer(&self) -> Result<Option<Arc<dyn Repointer>>, CliError> {
        Ok(match self.repoint {
            RepointKind::None => None,
            RepointKind::File => {
                let path = need(&self.conn_file, "--conn-file", "--repoint file")?;
                Some(Arc::new(match &self.conn_template {
                    Some(t) => FileRepointer::with_template(path, t.replace("\\n", "\n")),
                    None => FileRepointer::new(path),
                }))
            }
            RepointKind::Pgbouncer => {
                let mut r = PgBouncerRepointer::new(
                    need(
                        &self.pgbouncer_ini,
                        "--pgbouncer-ini",
                        "--repoint pgbouncer",
                    )?,
                    need(&self.pgbouncer_db, "--pgbouncer-db", "--repoint pgbouncer")?,
                    need(
                        &self.pgbouncer_admin,
                        "--pgbouncer-admin",
                        "--repoint pgbouncer",
                    )?,
                );
                if let Some(c) = &self.client_conninfo {
                    r = r.client_conninfo(c);
                }
                Some(Arc::new(r))
            }
            RepointKind::Haproxy => {
                let slot = need(
                    &self.haproxy_server,
                    "--haproxy-server",
                    "--repoint haproxy",
                )?;
                let (b, s) = slot.split_once('/').ok_or_else(|| {
                    CliError::new(
                        ErrorClass::Usage,
                        "--haproxy-server: expected BACKEND/SERVER",
                    )
                })?;
                let mut r = HaproxyRepointer::new(
                    need(
                        &self.haproxy_socket,
                        "--haproxy-socket",
                        "--repoint haproxy",
                    )?,
                    b,
                    s,
                );
                if let Some(c) = &self.client_conninfo {
                    r = r.client_conninfo(c);
                }
                Some(Arc::new(r))
            }
            RepointKind::Command => {
                let mut r = CommandRepointer::new(
                    need(
                        &self.repoint_command,
                        "--repoint-command",
                        "--repoint command",
                    )?,
                    Duration::from_secs(120),
                );
                if let Some(c) = &self.client_conninfo {
                    r = r.client_conninfo(c);
                }
                Some(Arc::new(r))
            }
        })
    }
}

/// Runs the promotion and prints its report.
pub async fn run(_ctx: &Context, args: Args) -> Result<(), CliError> {
    let t = &args.topology;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let mut promoter = PgPromoter::new(t.primary_node(), t.standby_nodes()?)
        .last_known_primary_lsn(args.last_known_lsn)
        .connect_timeout(timeout);
    if let Some(f) = t.fencer(timeout)? {
        promoter = promoter.fencer(f);
    }
    if let Some(r) = t.repointer()? {
        promoter = promoter.repointer(r);
    }
    let report = promoter
        .promote(PromoteRequest {
            max_lag_bytes: t.max_lag,
            force: args.force,
            dry_run: args.dry_run,
        })
        .await?;
    if args.json {
        let j = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::new(ErrorClass::Internal, e.to_string()))?;
        println!("{j}");
    } else {
        print!("{}", render_report(&report));
    }
    if args.dry_run {
        return if clean(&report) {
            Ok(())
        } else {
            Err(CliError::silent(ErrorClass::Conflict))
        };
    }
    match (promoted(&report), clean(&report)) {
        (true, true) => Ok(()),
        (true, false) => Err(CliError::silent(ErrorClass::Internal)),
        (false, _) => Err(CliError::silent(ErrorClass::Conflict)),
    }
}
