//! Row counts recorded right after a base backup, for the restore test to compare with.
//!
//! [`record_row_counts`] connects to every database that accepts connections (templates
//! left out), and in each opens one `REPEATABLE READ READ ONLY` transaction whose first
//! statement reads the snapshot (`pg_current_snapshot()`) and the WAL insert position
//! (`pg_current_wal_insert_lsn()`). Every commit visible in that snapshot wrote its commit
//! record before that position, so a recovery that stops just before the position (the
//! largest over all databases) holds at least what each snapshot saw. It can hold more:
//! transactions committing while the counts were taken. The restore test tells those apart
//! exactly (see [`super`]). Then it forces a WAL segment switch so the WAL up to that point
//! reaches the archive, and stores the counts as a sealed sidecar object
//! `backups/<id>/rowcounts.json` beside the backup's record.

use bytes::Bytes;
use carta_dr_core::catalog::BACKUPS_PREFIX;
use carta_dr_core::{BackupId, Error, Lsn, Result, StorePath};
use serde::{Deserialize, Serialize};

use crate::dump::{quote_ident, TableRows};
use crate::replication::{ConnParams, Repo};

/// Counts of one database, taken in one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseCounts {
    /// The database.
    pub database: String,
    /// `pg_current_snapshot()` of the counting transaction (`xmin:xmax:xip,...`).
    pub snapshot: String,
    /// `pg_current_wal_insert_lsn()` read in the snapshot's first statement.
    pub lsn: Lsn,
    /// Rows of every permanent table and materialized view (unlogged ones are empty after a
    /// restore and are left out), in that snapshot.
    pub tables: Vec<TableRows>,
}

/// The sidecar object of a backup (`backups/<id>/rowcounts.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCountRecord {
    /// The backup.
    pub backup_id: String,
    /// When the counts were taken (seconds since the epoch).
    pub taken_at: u64,
    /// The point to recover to: the largest [`DatabaseCounts::lsn`]; recovery stops just
    /// before the record that starts there.
    pub target_lsn: Lsn,
    /// Per database.
    pub databases: Vec<DatabaseCounts>,
    /// The bootstrap superuser (role oid 10), whom the restore test connects as.
    #[serde(default)]
    pub superuser: Option<String>,
}

/// The store path of backup `id`'s row counts.
pub fn rowcounts_path(id: BackupId) -> Result<StorePath> {
    StorePath::new(format!("{BACKUPS_PREFIX}/{id}/rowcounts.json"))
}

fn pg_err(what: &str, e: tokio_postgres::Error) -> Error {
    Error::Backend {
        backend: "postgresql",
        context: what.to_string(),
        message: e.to_string(),
        retryable: false,
    }
}

/// A `tokio-postgres` configuration for `conn` and database `db`.
pub fn pg_config(conn: &ConnParams, db: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(&conn.host)
        .port(conn.port)
        .user(&conn.user)
        .dbname(db)
        .application_name("carta-dr row counts")
        .connect_timeout(conn.connect_timeout);
    if let Some(p) = &conn.password {
        c.password(p);
    }
    c
}

async fn connect(conn: &ConnParams, db: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = pg_config(conn, db)
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| Error::Unavailable {
            what: format!("connecting to database {db} on {}: {e}", conn.target()),
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// Lists user tables (`r`, `m`) of the connected database with the given persistence
/// filter, as `(schema, table)`.
pub(crate) const TABLES_SQL: &str = "SELECT n.nspname::text, c.relname::text FROM pg_class c
       JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p'
        AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        AND n.nspname NOT LIKE 'pg\\_toast%'
      ORDER BY 1, 2";

/// Counts the rows of every database in one snapshot each; see the [module docs](self).
pub async fn take_row_counts(
    conn: &ConnParams,
) -> Result<(Lsn, Vec<DatabaseCounts>, Option<String>)> {
    let first_db = conn.dbname.clone().unwrap_or_else(|| "postgres".into());
    let client = connect(conn, &first_db).await?;
    let dbs: Vec<String> = client
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| pg_err("listing databases", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let superuser: Option<String> = client
        .query_opt("SELECT rolname::text FROM pg_roles WHERE oid = 10", &[])
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0));
    let mut out = Vec::with_capacity(dbs.len());
    let mut target = Lsn(0);
    for db in dbs {
        let c = connect(conn, &db).await?;
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| pg_err("starting the counting transaction", e))?;
        let row = c
            .query_one(
                "SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text",
                &[],
            )
            .await
            .map_err(|e| pg_err(&format!("reading the snapshot of {db}"), e))?;
        let snapshot: String = row.get(0);
        let lsn_text: String = row.get(1);
        let lsn: Lsn = lsn_text
            .parse()
            .map_err(|_| Error::invalid("WAL position", &lsn_text, "not an LSN"))?;
        let mut tables = Vec::new();
        for t in c
            .query(TABLES_SQL, &[])
            .await
            .map_err(|e| pg_err(&format!("listing the tables of {db}"), e))?
        {
            let schema: String = t.get(0);
            let table: String = t.get(1);
            let q = format!(
                "SELECT count(*) FROM {}.{}",
                quote_ident(&schema),
                quote_ident(&table)
            );
            let rows: i64 = c
                .query_one(&q, &[])
                .await
                .map_err(|e| pg_err(&format!("counting rows of {db}: {schema}.{table}"), e))?
                .get(0);
            tables.push(TableRows {
                schema,
                table,
                rows,
            });
        }
        let _ = c.batch_execute("COMMIT").await;
        target = target.max(lsn);
        out.push(DatabaseCounts {
            database: db,
            snapshot,
            lsn,
            tables,
        });
    }
    // Push the WAL holding the counts' point to the archive now rather than at the next
    // archive_timeout; without the privilege it arrives later, which only delays checks.
    if let Err(e) = client.batch_execute("SELECT pg_switch_wal()").await {
        tracing::warn!(error = %e, "pg_switch_wal() after counting rows failed");
    }
    Ok((target, out, superuser))
}

/// Takes the row counts ([`take_row_counts`]) and stores them beside backup `id`.
pub async fn record_row_counts(
    repo: &Repo,
    id: BackupId,
    conn: &ConnParams,
) -> Result<RowCountRecord> {
    let (target_lsn, databases, superuser) = take_row_counts(conn).await?;
    let rec = RowCountRecord {
        backup_id: id.to_string(),
        taken_at: carta_dr_core::catalog::time_to_secs(std::time::SystemTime::now()),
        target_lsn,
        databases,
        superuser,
    };
    let json = serde_json::to_vec_pretty(&rec)
        .map_err(|e| Error::invalid_input(format!("encoding row counts: {e}")))?;
    let path = rowcounts_path(id)?;
    if repo.put_create(&path, Bytes::from(json)).await?.is_none() {
        return Err(Error::AlreadyExists {
            path: path.to_string(),
        });
    }
    Ok(rec)
}

/// Loads backup `id`'s row counts; `None` when none were recorded.
pub async fn load_row_counts(repo: &Repo, id: BackupId) -> Result<Option<RowCountRecord>> {
    let path = rowcounts_path(id)?;
    match repo.get(&path).await {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::corrupt(&path, None, format!("bad row-count record: {e}"))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// A `pg_snapshot` in text form: `xmin:xmax:xip,...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Oldest transaction still running.
    pub xmin: u64,
    /// First transaction not yet completed.
    pub xmax: u64,
    /// Transactions running at the snapshot.
    pub xip: Vec<u64>,
}

impl Snapshot {
    /// Parses `xmin:xmax:xip,...`.
    pub fn parse(s: &str) -> Option<Snapshot> {
        let mut it = s.split(':');
        let xmin = it.next()?.parse().ok()?;
        let xmax = it.next()?.parse().ok()?;
        let xip_text = it.next()?;
        if it.next().is_some() {
            return None;
        }
        let xip = if xip_text.is_empty() {
            Vec::new()
        } else {
            xip_text
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?
        };
        Some(Snapshot { xmin, xmax, xip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_parse() {
        assert_eq!(
            Snapshot::parse("740:745:740,742"),
            Some(Snapshot {
                xmin: 740,
                xmax: 745,
                xip: vec![740, 742]
            })
        );
        assert_eq!(Snapshot::parse("10:10:").map(|s| s.xip.len()), Some(0));
        assert_eq!(Snapshot::parse("10:x:"), None);
        assert_eq!(Snapshot::parse("10:11"), None);
    }

    #[test]
    fn sidecar_sits_beside_the_record() {
        let id: BackupId = "20261123T160000Z".parse().expect("id");
        assert_eq!(
            rowcounts_path(id).expect("path").to_string(),
            "backups/20261123T160000Z/rowcounts.json"
        );
    }
}
