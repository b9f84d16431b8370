//! Polling PostgreSQL with plain SQL over tokio-postgres.
//!
//! Each target keeps one connection, opened on first use and dropped on any error, and its
//! statements prepared once per connection, so a poll costs one round trip per statement.
//! The primary's three statements are pipelined on its connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carta_dr_core::{Error, Lsn, Result};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::snapshot::{
    ArchiverStatus, PrimaryStatus, Probe, ReplicationRow, SlotRow, StandbyStatus,
};

/// The `application_name` the monitor's sessions use unless the connection string sets one.
pub const MONITOR_APPLICATION_NAME: &str = "carta-dr-monitor";

const PRIMARY_INFO_SQL: &str = "\
WITH ready AS (
  SELECT modification FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'
)
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
       current_setting('archive_mode') <> 'off',
       a.archived_count, a.failed_count,
       EXTRACT(EPOCH FROM a.last_archived_time)::float8,
       EXTRACT(EPOCH FROM a.last_failed_time)::float8,
       (SELECT count(*) FROM ready),
       COALESCE((SELECT EXTRACT(EPOCH FROM now() - min(modification))::float8 FROM ready), 0)
FROM pg_stat_archiver a";

const REPLICATION_SQL: &str = "\
SELECT COALESCE(application_name, ''), COALESCE(state, ''), COALESCE(sync_state, ''),
       sent_lsn::text, write_lsn::text, flush_lsn::text, replay_lsn::text,
       EXTRACT(EPOCH FROM write_lag)::float8,
       EXTRACT(EPOCH FROM flush_lag)::float8,
       EXTRACT(EPOCH FROM replay_lag)::float8
FROM pg_stat_replication
ORDER BY application_name, pid";

const SLOTS_SQL: &str = "\
SELECT slot_name::text, slot_type, active, wal_status, safe_wal_size,
       CASE WHEN pg_is_in_recovery() OR restart_lsn IS NULL THEN NULL
            ELSE GREATEST(pg_current_wal_lsn() - restart_lsn, 0)::float8 END
FROM pg_replication_slots
ORDER BY slot_name";

const STANDBY_SQL: &str = "\
SELECT pg_is_in_recovery(),
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       EXTRACT(EPOCH FROM pg_last_xact_replay_timestamp())::float8,
       EXTRACT(EPOCH FROM now())::float8,
       r.status,
       EXTRACT(EPOCH FROM now() - r.last_msg_receipt_time)::float8
FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver r ON true";

struct Conn {
    client: Arc<Client>,
    statements: Vec<Statement>,
}

/// One PostgreSQL server the monitor polls, with its cached connection.
pub struct PgTarget {
    name: String,
    config: tokio_postgres::Config,
    conn: Mutex<Option<Conn>>,
    queries: Arc<AtomicU64>,
    was_up: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn pg_err(target: &str, what: &str, e: tokio_postgres::Error) -> Error {
    Error::Backend {
        backend: "postgresql",
        context: format!("{what} on target {target}"),
        message: e.to_string(),
        retryable: true,
    }
}

fn lsn(row: &Row, idx: usize, target: &str) -> Result<Option<Lsn>> {
    let text: Option<String> = get(row, idx, target)?;
    text.map(|t| t.parse::<Lsn>()).transpose()
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
    target: &str,
) -> Result<T> {
    row.try_get(idx).map_err(|e| Error::Backend {
        backend: "postgresql",
        context: format!("reading column {idx} from target {target}"),
        message: e.to_string(),
        retryable: false,
    })
}

impl PgTarget {
    /// A target named `name` reached through the libpq-style `conninfo`. `queries` counts
    /// every statement executed (shared by all targets of one monitor).
    pub fn new(name: &str, conninfo: &str, queries: Arc<AtomicU64>) -> Result<PgTarget> {
        let mut config: tokio_postgres::Config = conninfo.parse().map_err(|e| {
            Error::invalid_input(format!("connection string of target {name}: {e}"))
        })?;
        if config.get_application_name().is_none() {
            config.application_name(MONITOR_APPLICATION_NAME);
        }
        Ok(PgTarget {
            name: name.to_string(),
            config,
            conn: Mutex::new(None),
            queries,
            was_up: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// The target's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn connect(&self, sql: &[&str]) -> Result<Conn> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| pg_err(&self.name, "connect", e))?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(target_name = %name, error = %e, "monitor connection closed");
            }
        });
        let mut statements = Vec::with_capacity(sql.len());
        for s in sql {
            statements.push(
                client
                    .prepare(s)
                    .await
                    .map_err(|e| pg_err(&self.name, "prepare", e))?,
            );
        }
        Ok(Conn {
            client: Arc::new(client),
            statements,
        })
    }

    /// Runs `f` on the cached connection (opening it first if needed), within `timeout`.
    /// Any failure drops the connection so the next poll reconnects.
    async fn probe<T, F, Fut>(&self, sql: &[&str], timeout: Duration, f: F) -> Probe<T>
    where
        F: FnOnce(Arc<Client>, Vec<Statement>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let start = Instant::now();
        let mut guard = self.conn.lock().await;
        let attempt = async {
            if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
                *guard = Some(self.connect(sql).await?);
            }
            let conn = guard
                .as_ref()
                .ok_or_else(|| Error::invalid_input("connection vanished"))?;
            f(conn.client.clone(), conn.statements.clone()).await
        };
        let outcome = match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                what: format!("polling target {} ({timeout:?})", self.name),
            }),
        };
        match outcome {
            Ok(status) => {
                if !self.was_up.swap(true, Ordering::Relaxed) {
                    tracing::info!(target_name = %self.name, "monitor target up again");
                }
                Probe::Up {
                    status,
                    took: start.elapsed(),
                }
            }
            Err(e) => {
                *guard = None;
                // Say it once per outage, not once per poll.
                if self.was_up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(target_name = %self.name, error = %e, "monitor target down");
                } else {
                    tracing::debug!(target_name = %self.name, error = %e, "monitor target still down");
                }
                Probe::Down {
                    error: e.to_string(),
                    took: start.elapsed(),
                }
            }
        }
    }

    /// Polls the server as a primary: `pg_stat_replication`, `pg_replication_slots`,
    /// `pg_stat_archiver`, `pg_current_wal_lsn()`. Three statements, pipelined.
    pub async fn poll_primary(&self, timeout: Duration) -> Probe<PrimaryStatus> {
        let name = self.name.clone();
        let queries = self.queries.clone();
        self.probe(
            &[PRIMARY_INFO_SQL, REPLICATION_SQL, SLOTS_SQL],
            timeout,
            |client, st| async move {
                let (Some(info_st), Some(repl_st), Some(slot_st)) =
                    (st.first(), st.get(1), st.get(2))
                else {
                    return Err(Error::invalid_input("primary statements not prepared"));
                };
                queries.fetch_add(3, Ordering::Relaxed);
                let (info, repl, slots) = futures::try_join!(
                    client.query_one(info_st, &[]),
                    client.query(repl_st, &[]),
                    client.query(slot_st, &[]),
                )
                .map_err(|e| pg_err(&name, "query", e))?;
                parse_primary(&name, &info, &repl, &slots)
            },
        )
        .await
    }

    /// Polls the server as a standby: `pg_is_in_recovery()`, receive and replay LSNs, the
    /// last replayed transaction's time and `pg_stat_wal_receiver`. One statement.
    pub async fn poll_standby(&self, timeout: Duration) -> Probe<StandbyStatus> {
        let name = self.name.clone();
        let queries = self.queries.clone();
        self.probe(&[STANDBY_SQL], timeout, |client, st| async move {
            let Some(s) = st.first() else {
                return Err(Error::invalid_input("standby statement not prepared"));
            };
            queries.fetch_add(1, Ordering::Relaxed);
            let row = client
                .query_one(s, &[])
                .await
                .map_err(|e| pg_err(&name, "query", e))?;
            Ok(StandbyStatus {
                in_recovery: get(&row, 0, &name)?,
                receive_lsn: lsn(&row, 1, &name)?,
                replay_lsn: lsn(&row, 2, &name)?,
                last_replay_time: get(&row, 3, &name)?,
                now: get(&row, 4, &name)?,
                receiver_status: get(&row, 5, &name)?,
                receiver_last_message_age: get(&row, 6, &name)?,
            })
        })
        .await
    }
}

fn parse_primary(name: &str, info: &Row, repl: &[Row], slots: &[Row]) -> Result<PrimaryStatus> {
    let archiver = ArchiverStatus {
        enabled: get(info, 2, name)?,
        archived_count: get(info, 3, name)?,
        failed_count: get(info, 4, name)?,
        last_archived_time: get(info, 5, name)?,
        last_failed_time: get(info, 6, name)?,
        pending_files: get(info, 7, name)?,
        oldest_pending_seconds: get(info, 8, name)?,
    };
    let replication = repl
        .iter()
        .map(|r| {
            Ok(ReplicationRow {
                application_name: get(r, 0, name)?,
                state: get(r, 1, name)?,
                sync_state: get(r, 2, name)?,
                sent_lsn: lsn(r, 3, name)?,
                write_lsn: lsn(r, 4, name)?,
                flush_lsn: lsn(r, 5, name)?,
                replay_lsn: lsn(r, 6, name)?,
                write_lag: get(r, 7, name)?,
                flush_lag: get(r, 8, name)?,
                replay_lag: get(r, 9, name)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let slots = slots
        .iter()
        .map(|r| {
            let retained: Option<f64> = get(r, 5, name)?;
            Ok(SlotRow {
                slot_name: get(r, 0, name)?,
                slot_type: get(r, 1, name)?,
                active: get(r, 2, name)?,
                wal_status: get(r, 3, name)?,
                safe_wal_size: get(r, 4, name)?,
                // Exact for any retention below 2^53 bytes (8 PiB).
                retained_bytes: retained.map(|b| b.max(0.0) as u64),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PrimaryStatus {
        in_recovery: get(info, 0, name)?,
        current_lsn: lsn(info, 1, name)?,
        replication,
        slots,
        archiver,
    })
}
