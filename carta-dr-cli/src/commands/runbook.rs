//! `carta-dr runbook`: renders the Markdown failover runbook for a topology, with the last
//! failover drill's timings (from the repository's drill log, else the local one).

use std::path::PathBuf;
use std::time::Duration;

use carta_dr_postgres::promote::drill::{default_local_log, read_local_log, read_store_log};
use carta_dr_postgres::promote::runbook::{render_runbook, RunbookInput};

use super::promote::{FenceKind, RepointKind, Topology};
use crate::context::Context;
use crate::error::CliError;

/// Render a Markdown failover runbook for the topology, with the last drill's timings.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The topology and strategies (the same options as `carta-dr promote`).
    #[command(flatten)]
    pub topology: Topology,
    /// The cluster's name in the title.
    #[arg(long, default_value = "postgresql")]
    pub cluster: String,
    /// The local drill log to read when no repository is given.
    #[arg(long, value_name = "FILE")]
    pub drill_log: Option<PathBuf>,
    /// Write the runbook here instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:=@,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The promote options, as typed.
fn promote_flags(t: &Topology) -> Vec<String> {
    let mut f = vec!["--primary".to_string(), shell_quote(&t.primary)];
    let mut opt = |flag: &str, v: Option<String>| {
        if let Some(v) = v {
            f.push(flag.to_string());
            f.push(shell_quote(&v));
        }
    };
    opt(
        "--primary-data-dir",
        t.primary_data_dir.as_ref().map(|p| p.display().to_string()),
    );
    for s in &t.standbys {
        opt("--standby", Some(s.clone()));
    }
    let fence = match t.fence {
        FenceKind::PgCtl => "pg-ctl",
        FenceKind::ReadOnly => "read-only",
        FenceKind::Command => "command",
        FenceKind::None => "none",
    };
    opt("--fence", Some(fence.into()));
    opt("--fence-command", t.fence_command.clone());
    let repoint = match t.repoint {
        RepointKind::None => "none",
        RepointKind::File => "file",
        RepointKind::Pgbouncer => "pgbouncer",
        RepointKind::Haproxy => "haproxy",
        RepointKind::Command => "command",
    };
    opt("--repoint", Some(repoint.into()));
    opt(
        "--conn-file",
        t.conn_file.as_ref().map(|p| p.display().to_string()),
    );
    opt("--conn-template", t.conn_template.clone());
    opt(
        "--pgbouncer-ini",
        t.pgbouncer_ini.as_ref().map(|p| p.display().to_string()),
    );
    opt("--pgbouncer-db", t.pgbouncer_db.clone());
    opt("--pgbouncer-admin", t.pgbouncer_admin.clone());
    opt(
        "--haproxy-socket",
        t.haproxy_socket.as_ref().map(|p| p.display().to_string()),
    );
    opt("--haproxy-server", t.haproxy_server.clone());
    opt("--repoint-command", t.repoint_command.clone());
    opt("--client-conninfo", t.client_conninfo.clone());
    opt("--max-lag", t.max_lag.map(|b| b.to_string()));
    opt(
        "--pg-bin",
        t.pg_bin.as_ref().map(|p| p.display().to_string()),
    );
    opt("--run-as", t.run_as.clone());
    f
}

/// Renders the runbook.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let t = &args.topology;
    let standbys = t.standby_nodes()?;
    let flags = promote_flags(t).join(" ");
    let first = standbys
        .first()
        .map(|s| s.conninfo.clone())
        .unwrap_or_default();
    let rejoin = format!(
        "carta-dr rejoin --data-dir {} --source {} --conninfo {}",
        t.primary_data_dir
            .as_ref()
            .map(|p| shell_quote(&p.display().to_string()))
            .unwrap_or_else(|| "OLD_PRIMARY_DATA_DIR".into()),
        shell_quote(&first),
        shell_quote(&t.primary),
    );
    let input = RunbookInput {
        cluster: args.cluster.clone(),
        primary: t.primary_node(),
        standbys,
        fence: format!("{:?}", t.fence).to_lowercase(),
        repoint: format!("{:?}", t.repoint).to_lowercase(),
        dry_run_command: format!("carta-dr promote {flags} --dry-run"),
        promote_command: format!("carta-dr promote {flags}"),
        rejoin_command: rejoin,
        max_lag: t.max_lag,
    };
    let drills = if ctx.repo.is_some() {
        let store = ctx.store(Duration::from_secs(30))?;
        let key = ctx.key()?;
        read_store_log(store.as_ref(), key.as_deref()).await?
    } else {
        read_local_log(&args.drill_log.clone().unwrap_or_else(default_local_log))?
    };
    let md = render_runbook(&input, drills.last());
    match &args.output {
        Some(p) => std::fs::write(p, md).map_err(|e| CliError::io("writing", p, e))?,
        None => print!("{md}"),
    }
    Ok(())
}
