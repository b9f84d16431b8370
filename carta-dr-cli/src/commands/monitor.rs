//! `carta-dr monitor`: the replication monitor and Prometheus exporter.
//!
//! Polls the primary, the standbys and the repository at the `[monitor]` interval and serves
//! the metrics at `http://LISTEN/metrics` until interrupted. Command-line options override
//! the `[monitor]` table of the configuration file. See `docs/monitoring.md`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use carta_dr_postgres::monitor::{serve, Monitor, MonitorConfig, StandbyTarget};

use crate::context::Context;
use crate::error::CliError;

/// Serve replication, archive and backup metrics for Prometheus.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to serve /metrics on (keep it on loopback or a private network).
    #[arg(long, default_value = "127.0.0.1:9187", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The primary's connection string (`host=... port=... user=... dbname=...`).
    #[arg(long, value_name = "CONNINFO")]
    pub primary: Option<String>,
    /// A standby to poll directly, as NAME=CONNINFO (repeatable).
    #[arg(long = "standby", value_name = "NAME=CONNINFO")]
    pub standbys: Vec<String>,
    /// An application_name that must be in the primary's pg_stat_replication (repeatable).
    #[arg(long = "expect-standby", value_name = "APPLICATION_NAME")]
    pub expect_standbys: Vec<String>,
    /// The `cluster` label of every series.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Seconds between polls.
    #[arg(long, value_name = "SECONDS")]
    pub interval: Option<f64>,
    /// Do not read the repository even if one is configured.
    #[arg(long)]
    pub no_repo: bool,
}

/// The `[monitor]` configuration with the command line applied.
pub fn effective_config(base: &MonitorConfig, args: &Args) -> Result<MonitorConfig, CliError> {
    let mut c = base.clone();
    if let Some(p) = &args.primary {
        c.primary = Some(p.clone());
    }
    if !args.standbys.is_empty() {
        c.standbys = args
            .standbys
            .iter()
            .map(|s| {
                let (name, conninfo) = s.split_once('=').ok_or_else(|| {
                    CliError::config(format!("--standby {s:?}: expected NAME=CONNINFO"))
                })?;
                Ok(StandbyTarget {
                    name: name.trim().to_string(),
                    conninfo: conninfo.to_string(),
                })
            })
            .collect::<Result<_, CliError>>()?;
    }
    if !args.expect_standbys.is_empty() {
        c.expected_standbys = args.expect_standbys.clone();
    }
    if let Some(name) = &args.cluster {
        c.cluster = name.clone();
    }
    if let Some(i) = args.interval {
        c.interval_seconds = i;
    }
    c.validate().map_err(|e| CliError::config(e.to_string()))?;
    if c.primary.is_none() && c.standbys.is_empty() {
        return Err(CliError::config(
            "nothing to monitor: give --primary and/or --standby, or [monitor] primary/standbys",
        ));
    }
    Ok(c)
}

/// Runs the exporter until Ctrl-C or SIGTERM.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let config = effective_config(&ctx.config.monitor, &args)?;
    let (store, key) = if ctx.repo.is_some() && !args.no_repo {
        (Some(ctx.store(Duration::from_secs(10))?), ctx.key()?)
    } else {
        (None, None)
    };
    let monitor = Arc::new(Monitor::new(config, store)?.with_key(key));
    let shutdown = async {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async {
                    match term.as_mut() {
                        Some(t) => { t.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    serve(monitor, args.listen, shutdown, |addr| {
        eprintln!("carta-dr monitor: serving http://{addr}/metrics");
    })
    .await?;
    Ok(())
}
