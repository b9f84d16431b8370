//! Fencing the old primary, so that it can no longer accept writes once a standby is promoted.
//!
//! A [`Fencer`] either fences and says what it did (`Ok(detail)`), or fails (`Err`), which
//! stops the promotion unless it is forced. Every strategy handles an unreachable primary
//! explicitly:
//!
//! | strategy | primary reachable | primary dead / unreachable |
//! |---|---|---|
//! | [`PgCtlStopFencer`] (local data directory) | `pg_ctl stop -m fast`, then `-m immediate`; waits until the postmaster is gone | postmaster gone: "fenced: not running" |
//! | [`ReadOnlyFencer`] (SQL) | `default_transaction_read_only = on`, reload, terminate client sessions, verify a write fails | fails: the state of an unreachable server cannot be verified |
//! | [`CommandFencer`] (STONITH, cloud API...) | runs the command; exit 0 = fenced | same: the command decides |

use std::fmt::Debug;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use carta_dr_core::{Error, Result};

use super::sql;
use crate::local_cluster::{process_alive, read_pid_file, PgInstall};

/// The server to fence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceTarget {
    /// Its name in reports.
    pub name: String,
    /// How to reach it (a superuser connection string).
    pub conninfo: String,
    /// Its data directory, when it is on this machine.
    pub data_dir: Option<PathBuf>,
}

/// A way to make the old primary stop accepting writes.
#[async_trait]
pub trait Fencer: Send + Sync + Debug {
    /// A short name for reports (`pg_ctl-stop`, `read-only`, `command`).
    fn name(&self) -> &str;

    /// Fences `target`. `Ok` carries what was done ("fenced: not running" for a server whose
    /// postmaster is gone); `Err` means the server may still accept writes.
    async fn fence(&self, target: &FenceTarget) -> Result<String>;
}

/// Stops a local server with `pg_ctl stop`: `-m fast` first, `-m immediate` when that does
/// not finish in time. Needs the data directory; a postmaster that is not running counts as
/// fenced ("not running").
#[derive(Clone, Debug)]
pub struct PgCtlStopFencer {
    pg: PgInstall,
    timeout: Duration,
}

impl PgCtlStopFencer {
    /// A fencer running `pg_ctl` from `pg`, waiting up to `timeout` for each stop mode.
    pub fn new(pg: PgInstall, timeout: Duration) -> Self {
        PgCtlStopFencer { pg, timeout }
    }
}

#[async_trait]
impl Fencer for PgCtlStopFencer {
    fn name(&self) -> &str {
        "pg_ctl-stop"
    }

    async fn fence(&self, target: &FenceTarget) -> Result<String> {
        let dir = target.data_dir.as_ref().ok_or_else(|| {
            Error::invalid_input(format!(
                "pg_ctl-stop fence of {}: the data directory is not known (give the old \
                 primary's data directory, or use another fence)",
                target.name
            ))
        })?;
        let Some(pid) = postmaster_running(dir) else {
            return Ok(format!(
                "fenced: not running (no live postmaster for {})",
                dir.display()
            ));
        };
        let secs = self.timeout.as_secs().max(1).to_string();
        for mode in ["fast", "immediate"] {
            let mut cmd = self.pg.command("pg_ctl");
            cmd.arg("-D")
                .arg(dir)
                .args(["-m", mode, "-w", "-t", &secs, "stop"]);
            let out = self.pg.output(cmd, "pg_ctl stop").await?;
            let deadline = Instant::now() + self.timeout;
            while process_alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !process_alive(pid) {
                return Ok(format!(
                    "fenced: stopped postmaster {pid} with pg_ctl stop -m {mode}"
                ));
            }
            tracing::warn!(
                mode,
                status = %out.status,
                stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                "pg_ctl stop did not stop the old primary"
            );
        }
        Err(Error::invalid_input(format!(
            "pg_ctl-stop fence of {}: postmaster {pid} still runs after -m fast and -m immediate",
            target.name
        )))
    }
}

/// Makes a reachable server refuse writes through SQL: `ALTER SYSTEM SET
/// default_transaction_read_only = on`, `pg_reload_conf()`, terminates every other client
/// session, then checks that a new session's write fails with SQLSTATE 25006.
///
/// A soft fence: a superuser can still `SET default_transaction_read_only = off`. Use it
/// where the server cannot be stopped, together with repointing clients away.
#[derive(Clone, Debug)]
pub struct ReadOnlyFencer {
    timeout: Duration,
}

impl ReadOnlyFencer {
    /// A fencer giving the server `timeout` to answer and to apply the reload.
    pub fn new(timeout: Duration) -> Self {
        ReadOnlyFencer { timeout }
    }
}

/// The statement a write check runs, rolled back: it needs no table of the application's.
pub const WRITE_PROBE_SQL: &str = "BEGIN; CREATE TABLE carta_dr_fence_probe (x int); ROLLBACK";

#[async_trait]
impl Fencer for ReadOnlyFencer {
    fn name(&self) -> &str {
        "read-only"
    }

    async fn fence(&self, target: &FenceTarget) -> Result<String> {
        let t = sql::redact(&target.conninfo);
        let client = sql::connect(&target.conninfo, self.timeout)
            .await
            .map_err(|e| {
                Error::invalid_input(format!(
                    "read-only fence of {}: cannot reach it, so whether it still accepts writes \
                     is unknown ({e})",
                    target.name
                ))
            })?;
        sql::simple_column(
            &client,
            "ALTER SYSTEM SET default_transaction_read_only = on",
            self.timeout,
            &t,
        )
        .await?;
        sql::simple_column(&client, "SELECT pg_reload_conf()", self.timeout, &t).await?;
        // The postmaster applies the reload asynchronously: wait until new sessions see it.
        let deadline = Instant::now() + self.timeout;
        loop {
            let fresh = sql::connect(&target.conninfo, self.timeout).await?;
            let v = sql::simple_value(
                &fresh,
                "SHOW default_transaction_read_only",
                self.timeout,
                &t,
            )
            .await?;
            if v == "on" {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "read-only fence of {}: the reload was not applied",
                        target.name
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let killed = sql::simple_value(
            &client,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            self.timeout,
            &t,
        )
        .await?;
        drop(client);
        let probe = sql::connect(&target.conninfo, self.timeout).await?;
        match probe.batch_execute(WRITE_PROBE_SQL).await {
            Err(e) if sql::sqlstate(&e).as_deref() == Some("25006") => Ok(format!(
                "fenced: default_transaction_read_only = on, {killed} client session(s) \
                 terminated, a new session's write fails (25006 read_only_sql_transaction)"
            )),
            Err(e) => Err(sql::pg_err(&t, "read-only fence write check", &e)),
            Ok(()) => Err(Error::invalid_input(format!(
                "read-only fence of {}: a write still succeeds after the reload",
                target.name
            ))),
        }
    }
}

/// Runs a user command through `sh -c` (STONITH, a cloud API call, a firewall rule). Exit
/// status 0 means fenced; anything else, or running past the timeout, is a failure.
///
/// The command sees `CARTA_DR_FENCE_NAME`, `CARTA_DR_FENCE_CONNINFO` and, when known,
/// `CARTA_DR_FENCE_DATA_DIR`.
#[derive(Clone, Debug)]
pub struct CommandFencer {
    command: String,
    timeout: Duration,
}

impl CommandFencer {
    /// A fencer running `command` with `timeout`.
    pub fn new(command: impl Into<String>, timeout: Duration) -> Self {
        CommandFencer {
            command: command.into(),
            timeout,
        }
    }
}

#[async_trait]
impl Fencer for CommandFencer {
    fn name(&self) -> &str {
        "command"
    }

    async fn fence(&self, target: &FenceTarget) -> Result<String> {
        let mut env = vec![
            ("CARTA_DR_FENCE_NAME", target.name.clone()),
            ("CARTA_DR_FENCE_CONNINFO", target.conninfo.clone()),
        ];
        if let Some(d) = &target.data_dir {
            env.push(("CARTA_DR_FENCE_DATA_DIR", d.display().to_string()));
        }
        run_shell(&self.command, &env, self.timeout, "fence command").await
    }
}

/// The pid of a live postmaster on `data_dir`, from its `postmaster.pid`.
pub fn postmaster_running(data_dir: &std::path::Path) -> Option<u32> {
    read_pid_file(data_dir)
        .filter(|pf| process_alive(pf.pid))
        .map(|pf| pf.pid)
}

/// Runs `sh -c command` with `env`; `Ok(summary)` on exit 0, else an error with its output.
pub(crate) async fn run_shell(
    command: &str,
    env: &[(&str, String)],
    timeout: Duration,
    what: &str,
) -> Result<String> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(command).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(r) => r.map_err(|e| Error::io(format!("running {what} `{command}`"), e))?,
        Err(_) => {
            return Err(Error::Timeout {
                what: format!("{what} `{command}` ({timeout:?})"),
            })
        }
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    if out.status.success() {
        Ok(format!(
            "{what} `{command}` exited 0{}",
            match text(&out.stdout) {
                s if s.is_empty() => String::new(),
                s => format!(": {s}"),
            }
        ))
    } else {
        Err(Error::invalid_input(format!(
            "{what} `{command}` failed ({}): {} {}",
            out.status,
            text(&out.stderr),
            text(&out.stdout)
        )))
    }
}
