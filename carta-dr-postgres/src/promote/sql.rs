//! Small SQL helpers shared by the promoter, the fences and the drill: one-shot connections
//! with a deadline, error mapping, and the new-timeline query.

use std::time::Duration;

use carta_dr_core::{Error, Lsn, Result, TimelineId};
use tokio_postgres::{Client, NoTls};

/// The `application_name` carta-dr's failover sessions use unless the conninfo sets one.
pub const APPLICATION_NAME: &str = "carta-dr-failover";

/// Maps a tokio-postgres error, keeping the SQLSTATE and the server's message.
pub fn pg_err(target: &str, what: &str, e: &tokio_postgres::Error) -> Error {
    let message = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            // The source usually holds the useful part ("Connection refused").
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    };
    Error::Backend {
        backend: "postgresql",
        context: format!("{what} on {target}"),
        message,
        retryable: true,
    }
}

/// The SQLSTATE of a server error, if it is one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// Parses a libpq-style connection string, setting [`APPLICATION_NAME`] and `timeout` as the
/// connect timeout unless it sets them.
pub fn config(conninfo: &str, timeout: Duration) -> Result<tokio_postgres::Config> {
    let mut cfg: tokio_postgres::Config = conninfo
        .parse()
        .map_err(|e| Error::invalid("connection string", redact(conninfo), format!("{e}")))?;
    if cfg.get_application_name().is_none() {
        cfg.application_name(APPLICATION_NAME);
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(timeout);
    }
    Ok(cfg)
}

pub use crate::local_cluster::redact;

/// Connects within `timeout`; the connection task runs in the background and ends with the
/// client.
pub async fn connect(conninfo: &str, timeout: Duration) -> Result<Client> {
    let cfg = config(conninfo, timeout)?;
    let target = redact(conninfo);
    let fut = cfg.connect(NoTls);
    let (client, connection) = match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(pg_err(&target, "connect", &e)),
        Err(_) => {
            return Err(Error::Timeout {
                what: format!("connecting to {target} ({timeout:?})"),
            })
        }
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "failover session closed");
        }
    });
    Ok(client)
}

/// Runs `sql` (simple protocol, so it also works through pgbouncer and its admin console)
/// within `timeout`; returns the first column of each row.
pub async fn simple_column(
    client: &Client,
    sql: &str,
    timeout: Duration,
    target: &str,
) -> Result<Vec<Option<String>>> {
    let msgs = match tokio::time::timeout(timeout, client.simple_query(sql)).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return Err(pg_err(target, sql, &e)),
        Err(_) => {
            return Err(Error::Timeout {
                what: format!("{sql} on {target} ({timeout:?})"),
            })
        }
    };
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })
        .collect())
}

/// The single value `sql` returns.
pub async fn simple_value(
    client: &Client,
    sql: &str,
    timeout: Duration,
    target: &str,
) -> Result<String> {
    simple_column(client, sql, timeout, target)
        .await?
        .into_iter()
        .next()
        .flatten()
        .ok_or_else(|| Error::invalid_input(format!("{sql} on {target} returned no value")))
}

/// The SQL whose result is the timeline new WAL is written on: the first 8 hex digits of
/// `pg_walfile_name(pg_current_wal_lsn())`. In PostgreSQL 15 `pg_walfile_name` names the
/// file on the WAL insertion timeline (`GetWALInsertionTimeLine()`, `xlogfuncs.c`), so the
/// value changes the moment a promotion ends, without waiting for the checkpoint that would
/// update `pg_control_checkpoint()`; it fails during recovery.
pub const TIMELINE_SQL: &str = "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)";

/// Reads the insertion timeline (see [`TIMELINE_SQL`]).
pub async fn insertion_timeline(
    client: &Client,
    timeout: Duration,
    target: &str,
) -> Result<TimelineId> {
    let hex = simple_value(client, TIMELINE_SQL, timeout, target).await?;
    TimelineId::from_hex(&hex)
}

/// Parses an LSN column value.
pub fn parse_lsn(s: &str) -> Result<Lsn> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_sets_application_name_and_timeout() {
        let c = config("host=127.0.0.1 port=5 user=u", Duration::from_secs(2)).unwrap();
        assert_eq!(c.get_application_name(), Some(APPLICATION_NAME));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert!(config("host='unterminated", Duration::from_secs(1)).is_err());
    }
}
