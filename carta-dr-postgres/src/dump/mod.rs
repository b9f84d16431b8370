//! Logical backups: `pg_dump -Fc` streamed into the store through the envelope.
//!
//! [`logical_backup`] opens a `REPEATABLE READ` transaction, exports its snapshot
//! (`pg_export_snapshot()`), counts the rows of every table in that transaction, and runs
//! `pg_dump -Fc --snapshot=...` so the dump and the counts describe the same instant. pg_dump's
//! stdout is sealed chunk by chunk into `dumps/<db>/<timestamp>.dump` (a create-only streaming
//! write: nothing is visible until it completes) while [`DumpCheck`] verifies the archive as it
//! passes. Only when pg_dump exits 0 **and** the archive verifies is the object completed and the
//! record `dumps/<db>/<timestamp>.json` written, last. A failure leaves no dump object and no
//! record.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use carta_dr_core::dump::DumpCheck;
use carta_dr_core::envelope::{
    get_opened, get_opened_stream, put_sealed, EnvelopeOptions, Key, SealedWriter,
};
use carta_dr_core::{Error, PutOptions, Result, Store, StoreExt, StorePath};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

/// What to dump.
#[derive(Clone, Debug)]
pub struct DumpRequest {
    /// A libpq connection string without `dbname` (empty: the libpq environment, `PGHOST`...).
    pub conninfo: String,
    /// The database.
    pub database: String,
    /// The directory of `pg_dump` and `pg_restore` (`None`: found on `PATH`).
    pub bin_dir: Option<PathBuf>,
}

impl DumpRequest {
    fn conninfo_for(&self, db: &str) -> String {
        let db = db.replace('\\', "\\\\").replace('\'', "\\'");
        format!("{} dbname='{db}'", self.conninfo)
            .trim()
            .to_string()
    }

    fn bin(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }
}

/// Rows of one table in the dump's snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Rows.
    pub rows: i64,
}

/// The record written after a successful logical backup (`dumps/<db>/<timestamp>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpRecord {
    /// `<db>/<timestamp>`.
    pub id: String,
    /// The database.
    pub database: String,
    /// The store path of the archive.
    pub object: String,
    /// When the dump started, UTC, `YYYYMMDDTHHMMSSZ`, with a `-N` suffix for the N+1th dump of
    /// the database in that second (the stamp in its id).
    pub started: String,
    /// `pg_dump --version`.
    pub pg_dump_version: String,
    /// The server's `server_version`.
    pub server_version: String,
    /// The archive's size in bytes.
    pub size: u64,
    /// Its size in the store.
    pub stored_size: u64,
    /// CRC-32C of the archive, hex.
    pub crc32c: String,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// The snapshot pg_dump used.
    pub snapshot: String,
    /// Row counts taken in the same snapshot.
    pub tables: Vec<TableRows>,
}

fn pg_err(what: &str, e: tokio_postgres::Error) -> Error {
    Error::Backend {
        backend: "postgresql",
        context: what.to_string(),
        message: e.to_string(),
        retryable: false,
    }
}

fn path(s: String) -> Result<StorePath> {
    StorePath::new(s)
}

/// The stamp, id, object and record paths for a dump of `db` started at `started_at`.
///
/// Two dumps of one database started within the same second get `-1`, `-2`, ... suffixes, as
/// backup ids do. A concurrent dump racing for the same name still loses cleanly: the
/// create-only writes refuse to replace what the other one stored.
async fn free_dump_name(
    store: &dyn Store,
    db: &str,
    started_at: SystemTime,
) -> Result<(String, String, StorePath, StorePath)> {
    let mut stamp_id = carta_dr_core::BackupId::from_time(started_at);
    loop {
        let stamp = stamp_id.to_string();
        let id = format!("{db}/{stamp}");
        let object = path(format!("dumps/{id}.dump"))?;
        let record_path = path(format!("dumps/{id}.json"))?;
        if !store.exists(&object).await? && !store.exists(&record_path).await? {
            return Ok((stamp, id, object, record_path));
        }
        stamp_id = stamp_id.with_seq(stamp_id.seq() + 1);
    }
}

/// Runs a logical backup of `req.database` into `store`. See the [module docs](self).
pub async fn logical_backup(
    store: &dyn Store,
    opts: &EnvelopeOptions,
    req: &DumpRequest,
) -> Result<DumpRecord> {
    let started_at = SystemTime::now();
    let t0 = Instant::now();
    let db = req.database.clone();
    let (stamp, id, object, record_path) = free_dump_name(store, &db, started_at).await?;

    let version = tokio::process::Command::new(req.bin("pg_dump"))
        .arg("--version")
        .output()
        .await
        .map_err(|e| Error::io(format!("running {}", req.bin("pg_dump").display()), e))?;
    let pg_dump_version = String::from_utf8_lossy(&version.stdout).trim().to_string();

    let (client, conn) = tokio_postgres::connect(&req.conninfo_for(&db), NoTls)
        .await
        .map_err(|e| pg_err(&format!("connecting to database {db}"), e))?;
    let conn_task = tokio::spawn(conn);
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| pg_err("starting the snapshot transaction", e))?;
    let row = client
        .query_one(
            "SELECT pg_export_snapshot(), current_setting('server_version')",
            &[],
        )
        .await
        .map_err(|e| pg_err("exporting the snapshot", e))?;
    let snapshot: String = row.get(0);
    let server_version: String = row.get(1);
    let tables = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname NOT LIKE 'pg\\_toast%'
              ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| pg_err("listing tables", e))?;
    let mut counts = Vec::with_capacity(tables.len());
    for t in &tables {
        let schema: String = t.get(0);
        let table: String = t.get(1);
        let q = format!(
            "SELECT count(*) FROM {}.{}",
            quote_ident(&schema),
            quote_ident(&table)
        );
        let rows: i64 = client
            .query_one(&q, &[])
            .await
            .map_err(|e| pg_err(&format!("counting rows of {schema}.{table}"), e))?
            .get(0);
        counts.push(TableRows {
            schema,
            table,
            rows,
        });
    }

    let mut child = tokio::process::Command::new(req.bin("pg_dump"))
        .arg("-Fc")
        .arg(format!("--snapshot={snapshot}"))
        .arg("-d")
        .arg(req.conninfo_for(&db))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io(format!("starting {}", req.bin("pg_dump").display()), e))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::invalid_input("pg_dump has no stdout"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| Error::invalid_input("pg_dump has no stderr"))?;
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });

    let mut writer = SealedWriter::new(store, &object, opts, PutOptions::create()).await?;
    let mut check = DumpCheck::new();
    let mut buf = vec![0u8; 1 << 20];
    let copy: Result<()> = async {
        loop {
            let n = stdout
                .read(&mut buf)
                .await
                .map_err(|e| Error::io("reading pg_dump's output", e))?;
            if n == 0 {
                return Ok(());
            }
            let piece = buf.get(..n).unwrap_or(&[]);
            check.feed(piece);
            writer.write(piece).await?;
        }
    }
    .await;
    let status = child
        .wait()
        .await
        .map_err(|e| Error::io("waiting for pg_dump", e))?;
    let stderr_text = err_task.await.unwrap_or_default();
    // The snapshot is no longer needed once pg_dump has finished.
    let _ = client.batch_execute("COMMIT").await;
    drop(client);
    let _ = conn_task.await;

    let summary = check.finish();
    let failure = if let Err(e) = copy {
        Some(e)
    } else if !status.success() {
        Some(Error::Backend {
            backend: "pg_dump",
            context: format!("dumping database {db}"),
            message: format!("{status}: {}", stderr_text.trim()),
            retryable: false,
        })
    } else if summary.is_corrupt() {
        let first = summary
            .findings
            .iter()
            .find(|f| f.severity == carta_dr_core::traits::Severity::Error)
            .map(|f| format!("{}: {}", f.location, f.what))
            .unwrap_or_default();
        Some(Error::corrupt(
            &object,
            None,
            format!("pg_dump output fails verification: {first}"),
        ))
    } else {
        None
    };
    if let Some(e) = failure {
        // Nothing becomes visible: the streaming write is discarded.
        let _ = writer.abort().await;
        return Err(e);
    }
    let stats = writer.finish().await?;
    let record = DumpRecord {
        id: id.clone(),
        database: db,
        object: object.to_string(),
        started: stamp,
        pg_dump_version,
        server_version,
        size: stats.raw_len,
        stored_size: stats.stored_len,
        crc32c: format!("{:08x}", stats.crc32c),
        duration_ms: t0.elapsed().as_millis() as u64,
        snapshot,
        tables: counts,
    };
    let json = serde_json::to_vec_pretty(&record)
        .map_err(|e| Error::invalid_input(format!("encoding the dump record: {e}")))?;
    if let Err(e) = put_sealed(store, &record_path, &json, opts, PutOptions::create()).await {
        // Without its record the dump must not look complete.
        let _ = store.delete(&object).await;
        return Err(e);
    }
    tracing::info!(id = %record.id, size = record.size, "logical backup stored");
    Ok(record)
}

/// `quote_ident`: double-quotes an identifier unless it is a plain lower-case name.
pub fn quote_ident(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// Every complete logical backup (those with a record), oldest first, optionally of one
/// database.
pub async fn list_dumps(
    store: &dyn Store,
    key: Option<&Key>,
    database: Option<&str>,
) -> Result<Vec<DumpRecord>> {
    let prefix = match database {
        Some(d) => path(format!("dumps/{d}"))?,
        None => path("dumps".to_string())?,
    };
    let mut out = Vec::new();
    for m in store.list(Some(&prefix)).await? {
        if !m.path.as_str().ends_with(".json") {
            continue;
        }
        let bytes = get_opened(store, &m.path, key).await?;
        let r: DumpRecord = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(&m.path, None, format!("bad dump record: {e}")))?;
        out.push(r);
    }
    // By start (`-N` suffixes in numeric order), then id.
    let when = |r: &DumpRecord| r.started.parse::<carta_dr_core::BackupId>().ok();
    out.sort_by(|a, b| (when(a), &a.started, &a.id).cmp(&(when(b), &b.started, &b.id)));
    Ok(out)
}

/// Restores dump `id` into database `target` with `pg_restore`, streaming the verified archive
/// to its stdin. `target` must exist.
pub async fn restore_dump(
    store: &dyn Store,
    key: Option<&Key>,
    req: &DumpRequest,
    id: &str,
    target: &str,
) -> Result<Duration> {
    let t0 = Instant::now();
    let object = path(format!("dumps/{}.dump", id.trim_end_matches(".dump")))?;
    let stream = get_opened_stream(store, &object, key).await?;
    let child = tokio::process::Command::new(req.bin("pg_restore"))
        .arg("--exit-on-error")
        .arg("-d")
        .arg(req.conninfo_for(target))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io(format!("starting {}", req.bin("pg_restore").display()), e))?;
    feed_pg_restore(child, stream, format!("restoring {id} into {target}")).await?;
    Ok(t0.elapsed())
}

/// Feeds a spawned `pg_restore` (stdin and stderr piped) every chunk of `stream` and waits
/// for it. A failing stream kills it and its error is returned; a failing `pg_restore` is
/// returned with its stderr, under `context`. Returns the bytes fed.
pub(crate) async fn feed_pg_restore(
    mut child: tokio::process::Child,
    mut stream: futures::stream::BoxStream<'static, Result<bytes::Bytes>>,
    context: String,
) -> Result<u64> {
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::invalid_input("pg_restore has no stdin"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| Error::invalid_input("pg_restore has no stderr"))?;
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let mut fed: Result<()> = Ok(());
    let mut bytes = 0u64;
    while let Some(item) = stream.next().await {
        match item {
            Ok(b) => {
                bytes += b.len() as u64;
                if let Err(e) = stdin.write_all(&b).await {
                    fed = Err(Error::io("feeding pg_restore", e));
                    break;
                }
            }
            Err(e) => {
                fed = Err(e);
                break;
            }
        }
    }
    drop(stdin);
    if fed.is_err() {
        let _ = child.kill().await;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| Error::io("waiting for pg_restore", e))?;
    let err = err_task.await.unwrap_or_default();
    fed?;
    if !status.success() {
        return Err(Error::Backend {
            backend: "pg_restore",
            context,
            message: format!("{status}: {}", err.trim()),
            retryable: false,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dumps_in_the_same_second_get_distinct_names() {
        use std::time::UNIX_EPOCH;
        let store = carta_dr_backends::MemoryStore::new();
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let (stamp, id, object, record) = free_dump_name(&store, "shop", t).await.unwrap();
        assert_eq!(stamp, "20261118T110640Z");
        assert_eq!(id, "shop/20261118T110640Z");
        assert_eq!(object.as_str(), "dumps/shop/20261118T110640Z.dump");
        assert_eq!(record.as_str(), "dumps/shop/20261118T110640Z.json");
        // A complete dump holds that second: the next one takes `-1`.
        for p in [&object, &record] {
            store
                .put(p, bytes::Bytes::from_static(b"x"), PutOptions::create())
                .await
                .unwrap();
        }
        let (_, id, ..) = free_dump_name(&store, "shop", t).await.unwrap();
        assert_eq!(id, "shop/20261118T110640Z-1");
        // A record alone (its object deleted by hand) still holds the name.
        let lone = StorePath::new("dumps/shop/20261118T110640Z-1.json".to_string()).unwrap();
        store
            .put(&lone, bytes::Bytes::from_static(b"x"), PutOptions::create())
            .await
            .unwrap();
        let (_, id, ..) = free_dump_name(&store, "shop", t).await.unwrap();
        assert_eq!(id, "shop/20261118T110640Z-2");
        // Another database's dumps do not matter.
        let (_, id, ..) = free_dump_name(&store, "crm", t).await.unwrap();
        assert_eq!(id, "crm/20261118T110640Z");
    }

    #[test]
    fn identifiers() {
        assert_eq!(quote_ident("orders"), "orders");
        assert_eq!(quote_ident("Mixed Case"), "\"Mixed Case\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
