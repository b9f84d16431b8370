//! The checks run on a started cluster: row counts against recorded ones, `pg_amcheck`, SQL
//! assertions and the spot check of sampled rows. Each adds findings and a `checked` line to
//! a [`VerifyReport`]; the restore drill and other callers can run them on any cluster they
//! reach as a superuser over loopback.

use std::collections::BTreeMap;

use carta_dr_core::traits::{Location, Severity, VerifyReport};

use super::rowcounts::TABLES_SQL;
use super::{Expected, RowCountMode};
use crate::dump::quote_ident;
use crate::local_cluster::PgInstall;

/// Lines of pg_amcheck output reported, at most.
const MAX_AMCHECK_LINES: usize = 50;

/// Sampled rows listed per failing table, at most.
const MAX_ROWS_LISTED: usize = 10;

/// One user-supplied SQL assertion: a query that must return `true`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assertion {
    /// The database it runs in.
    pub database: String,
    /// The query text.
    pub sql: String,
}

/// Reads an assertion file: SQL queries separated by `;`, each returning one boolean that
/// must be true. A line `-- database: NAME` makes the following queries run in NAME (default
/// `postgres`); other `--` comments are ignored. Semicolons inside quotes (`'...'`, `"..."`,
/// `$$...$$`) do not end a query.
pub fn parse_assertions(text: &str) -> Vec<Assertion> {
    let mut out = Vec::new();
    let mut db = "postgres".to_string();
    let mut cur = String::new();
    let (mut squote, mut dquote, mut dollar) = (false, false, false);
    for line in text.lines() {
        let trimmed = line.trim();
        if !squote && !dquote && !dollar && trimmed.starts_with("--") {
            if let Some(name) = trimmed
                .strip_prefix("--")
                .map(str::trim)
                .and_then(|r| r.strip_prefix("database:"))
            {
                let name = name.trim();
                if !name.is_empty() {
                    db = name.to_string();
                }
            }
            continue;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            if !squote && !dquote && c == '$' && next == Some('$') {
                dollar = !dollar;
                cur.push_str("$$");
                i += 2;
                continue;
            }
            if !dollar {
                if c == '\'' && !dquote {
                    squote = !squote;
                } else if c == '"' && !squote {
                    dquote = !dquote;
                } else if c == '-' && next == Some('-') && !squote && !dquote {
                    break;
                } else if c == ';' && !squote && !dquote {
                    let q = cur.trim().to_string();
                    if !q.is_empty() {
                        out.push(Assertion {
                            database: db.clone(),
                            sql: q,
                        });
                    }
                    cur.clear();
                    i += 1;
                    continue;
                }
            }
            cur.push(c);
            i += 1;
        }
        cur.push('\n');
    }
    let q = cur.trim().to_string();
    if !q.is_empty() {
        out.push(Assertion {
            database: db,
            sql: q,
        });
    }
    out
}

/// The server's message of a query error (`tokio-postgres` prints only "db error").
pub fn pg_msg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!(
            "{}: {} (SQLSTATE {})",
            d.severity(),
            d.message(),
            d.code().code()
        ),
        None => e.to_string(),
    }
}

/// How the checks reach the scratch server: loopback port and superuser.
#[derive(Clone, Debug)]
pub struct Scratch {
    /// Loopback TCP port.
    pub port: u16,
    /// A superuser.
    pub user: String,
}

/// Quotes a libpq connection-string value.
fn conn_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Scratch {
    /// `host=127.0.0.1 port=P user='U' dbname='DB'`.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={} dbname={}",
            self.port,
            conn_value(&self.user),
            conn_value(db)
        )
    }

    /// Connects to database `db` (the connection task is spawned).
    pub async fn connect(&self, db: &str) -> carta_dr_core::Result<tokio_postgres::Client> {
        crate::local_cluster::connect(&self.conninfo(db)).await
    }
}

fn table_loc(db: &str, schema: &str, table: &str) -> Location {
    Location::Dump {
        dump_id: None,
        name: Some(format!("{db}: {schema}.{table}")),
        offset: None,
    }
}

/// Compares per-table row counts; returns how exact the comparison was.
pub async fn row_counts(
    cluster: &Scratch,
    expected: &[Expected],
    report: &mut VerifyReport,
) -> RowCountMode {
    let mut mode = RowCountMode::Exact;
    let mut compared = 0usize;
    for exp in expected {
        let client = match cluster.connect(&exp.database).await {
            Ok(c) => c,
            Err(e) => {
                report.push(
                    Severity::Error,
                    Location::Nowhere,
                    format!(
                        "database {} recorded with the counts is missing or unreachable: {e}",
                        exp.database
                    ),
                );
                continue;
            }
        };
        // Transactions the counting snapshot did not see but the restore holds.
        let mut racing: Vec<String> = Vec::new();
        if let Some(s) = &exp.snapshot {
            let xip: Vec<String> = s.xip.iter().map(|x| x.to_string()).collect();
            let q = "SELECT x::text FROM (
                       SELECT unnest($1::text[])::xid8 AS x
                       UNION ALL
                       SELECT g::text::xid8 FROM generate_series($2::bigint,
                           (pg_snapshot_xmax(pg_current_snapshot())::text::bigint) - 1) g
                     ) s WHERE pg_xact_status(x) = 'committed' ORDER BY 1 LIMIT 20";
            let xmax = i64::try_from(s.xmax).unwrap_or(i64::MAX);
            match client.query(q, &[&xip, &xmax]).await {
                Ok(rows) => racing = rows.iter().map(|r| r.get::<_, String>(0)).collect(),
                Err(e) => {
                    report.push(
                        Severity::Warning,
                        Location::Nowhere,
                        format!(
                            "could not check which transactions committed while {} was counted: {}",
                            exp.database,
                            pg_msg(&e)
                        ),
                    );
                    return RowCountMode::NotCompared;
                }
            }
        }
        let exact = racing.is_empty();
        if !exact {
            mode = RowCountMode::Approximate;
            report.push(
                Severity::Info,
                Location::Nowhere,
                format!(
                    "database {}: transactions committed while the row counts were taken \
                     (xids {}): differences there are warnings, not errors",
                    exp.database,
                    racing.join(", ")
                ),
            );
        }
        for t in &exp.tables {
            let q = format!(
                "SELECT count(*) FROM {}.{}",
                quote_ident(&t.schema),
                quote_ident(&t.table)
            );
            let loc = table_loc(&exp.database, &t.schema, &t.table);
            let sev = if exact {
                Severity::Error
            } else {
                Severity::Warning
            };
            match client.query_one(&q, &[]).await {
                Ok(row) => {
                    let n: i64 = row.get(0);
                    compared += 1;
                    if n != t.rows {
                        report.push(
                            sev,
                            loc,
                            format!("row count {n} after restore, {} recorded", t.rows),
                        );
                    }
                }
                Err(e) => report.push(
                    sev,
                    loc,
                    format!("cannot count rows after restore: {}", pg_msg(&e)),
                ),
            }
        }
    }
    report.checked.push(format!(
        "row counts of {compared} tables compared ({})",
        match mode {
            RowCountMode::Exact => "exact",
            RowCountMode::Approximate => "concurrent commits: differences are warnings",
            RowCountMode::NotCompared => "not compared",
        }
    ));
    mode
}

/// `pg_amcheck --all --install-missing --heapallindexed`: heap and btree checks.
pub async fn amcheck(install: &PgInstall, target: &Scratch, report: &mut VerifyReport) {
    if !install.has("pg_amcheck") {
        report.push(
            Severity::Warning,
            Location::Nowhere,
            format!(
                "could not check with pg_amcheck: not found in {}",
                install.bin_dir.display()
            ),
        );
        return;
    }
    let mut cmd = install.command("pg_amcheck");
    cmd.args(["-h", "127.0.0.1", "-p", &target.port.to_string()])
        .args(["-U", &target.user, "--maintenance-db", "template1"])
        .args(["--all", "--install-missing", "--heapallindexed"]);
    let out = match install.output(cmd, "pg_amcheck").await {
        Ok(o) => o,
        Err(e) => {
            report.push(
                Severity::Warning,
                Location::Nowhere,
                format!("could not check with pg_amcheck: {e}"),
            );
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && stdout.trim().is_empty() {
        report
            .checked
            .push("pg_amcheck: heap and btree of every database, no corruption".into());
        return;
    }
    if stdout.trim().is_empty() {
        report.push(
            Severity::Warning,
            Location::Nowhere,
            format!(
                "could not check with pg_amcheck ({}): {}",
                out.status,
                stderr.trim()
            ),
        );
        return;
    }
    // pg_amcheck prints what it finds on stdout: each report starts with a line naming the
    // relation and block, followed by indented detail.
    let mut reports: Vec<String> = Vec::new();
    for line in stdout.lines() {
        if line.starts_with(char::is_whitespace) {
            if let Some(last) = reports.last_mut() {
                last.push_str(" / ");
                last.push_str(line.trim());
                continue;
            }
        }
        if !line.trim().is_empty() {
            reports.push(line.trim().to_string());
        }
    }
    for r in reports.iter().take(MAX_AMCHECK_LINES) {
        report.push(
            Severity::Error,
            Location::Nowhere,
            format!("pg_amcheck: {r}"),
        );
    }
    if reports.len() > MAX_AMCHECK_LINES {
        report.push(
            Severity::Error,
            Location::Nowhere,
            format!(
                "pg_amcheck: {} more reports",
                reports.len() - MAX_AMCHECK_LINES
            ),
        );
    }
}

/// Runs each assertion in a read-only transaction; it must return one row whose first
/// column is `true`.
pub async fn assertions(cluster: &Scratch, list: &[super::Assertion], report: &mut VerifyReport) {
    let mut clients: BTreeMap<String, tokio_postgres::Client> = BTreeMap::new();
    let mut passed = 0usize;
    for a in list {
        let loc = Location::Dump {
            dump_id: None,
            name: Some(format!("assertion in {}", a.database)),
            offset: None,
        };
        if !clients.contains_key(&a.database) {
            match cluster.connect(&a.database).await {
                Ok(c) => {
                    clients.insert(a.database.clone(), c);
                }
                Err(e) => {
                    report.push(
                        Severity::Error,
                        loc,
                        format!(
                            "assertion failed: cannot connect to {}: {e}: {}",
                            a.database, a.sql
                        ),
                    );
                    continue;
                }
            }
        }
        let Some(client) = clients.get(&a.database) else {
            continue;
        };
        let outcome: Result<Option<bool>, String> = async {
            client
                .batch_execute("BEGIN READ ONLY")
                .await
                .map_err(|e| pg_msg(&e))?;
            let r = client.simple_query(&a.sql).await.map_err(|e| e.to_string());
            let _ = client.batch_execute("ROLLBACK").await;
            let msgs = r?;
            let first = msgs.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(|v| v == "t")),
                _ => None,
            });
            Ok(first.flatten())
        }
        .await;
        match outcome {
            Ok(Some(true)) => passed += 1,
            Ok(Some(false)) => report.push(
                Severity::Error,
                loc,
                format!("assertion failed (returned false): {}", a.sql),
            ),
            Ok(None) => report.push(
                Severity::Error,
                loc,
                format!("assertion failed (returned no row or NULL): {}", a.sql),
            ),
            Err(e) => report.push(
                Severity::Error,
                loc,
                format!("assertion failed with an error ({e}): {}", a.sql),
            ),
        }
    }
    report
        .checked
        .push(format!("SQL assertions: {passed} of {} true", list.len()));
}

/// Samples up to `n` rows of every user table, detoasts every column (the row as text), and for
/// tables with a primary key re-reads each sampled row through the key's index (sequential
/// and TID scans off) and compares it with the heap's.
pub async fn spot_check(cluster: &Scratch, n: u32, report: &mut VerifyReport) {
    let dbs: Vec<String> = match cluster.connect("template1").await {
        Ok(c) => match c
            .query(
                "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate \
                 ORDER BY 1",
                &[],
            )
            .await
        {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(e) => {
                report.push(
                    Severity::Warning,
                    Location::Nowhere,
                    format!(
                        "could not check sampled rows: listing databases: {}",
                        pg_msg(&e)
                    ),
                );
                return;
            }
        },
        Err(e) => {
            report.push(
                Severity::Warning,
                Location::Nowhere,
                format!("could not check sampled rows: {e}"),
            );
            return;
        }
    };
    let (mut tables, mut rows, mut via_index) = (0u64, 0u64, 0u64);
    for db in dbs {
        let Ok(client) = cluster.connect(&db).await else {
            report.push(
                Severity::Warning,
                Location::Nowhere,
                format!("could not check sampled rows of {db}: cannot connect"),
            );
            continue;
        };
        let _ = client
            .batch_execute(
                "SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_tidscan = off",
            )
            .await;
        let list = match client.query(TABLES_SQL, &[]).await {
            Ok(l) => l,
            Err(e) => {
                report.push(
                    Severity::Warning,
                    Location::Nowhere,
                    format!("could not check sampled rows of {db}: {}", pg_msg(&e)),
                );
                continue;
            }
        };
        for t in list {
            let schema: String = t.get(0);
            let table: String = t.get(1);
            let qname = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
            let loc = table_loc(&db, &schema, &table);
            let meta = client
                .query_one(
                    "SELECT greatest(c.reltuples, 0)::float8,
                            (SELECT array_agg(a.attname::text ORDER BY k.ord)
                               FROM pg_index i
                               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                              WHERE i.indrelid = c.oid AND i.indisprimary)
                       FROM pg_class c WHERE c.oid = $1::text::regclass",
                    &[&qname],
                )
                .await;
            let (reltuples, pk): (f64, Option<Vec<String>>) = match meta {
                Ok(r) => (r.get(0), r.get(1)),
                Err(e) => {
                    report.push(
                        Severity::Warning,
                        loc,
                        format!("could not check sampled rows: {}", pg_msg(&e)),
                    );
                    continue;
                }
            };
            // Enough of a fraction to find about twice `n` rows; the LIMIT keeps `n`.
            let pct = if reltuples <= f64::from(n) {
                100.0
            } else {
                (200.0 * f64::from(n) / reltuples).clamp(0.0001, 100.0)
            };
            let seed: i32 = i32::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos() % 1_000_000)
                    .unwrap_or(1),
            )
            .unwrap_or(1);
            let sample = format!(
                "SELECT t.ctid AS c, md5(t::text) AS h FROM {qname} AS t \
                 TABLESAMPLE BERNOULLI ({pct}) REPEATABLE ({seed}) LIMIT {n}"
            );
            let q = match &pk {
                Some(cols) if !cols.is_empty() => {
                    let keys = cols
                        .iter()
                        .map(|c| format!("u.{0} = (s.r).{0}", quote_ident(c)))
                        .collect::<Vec<_>>()
                        .join(" AND ");
                    let keys_text = cols
                        .iter()
                        .map(|c| format!("(s.r).{}::text", quote_ident(c)))
                        .collect::<Vec<_>>()
                        .join(" || ',' || ");
                    format!(
                        "WITH s AS (SELECT t.ctid AS c, md5(t::text) AS h, t AS r FROM {qname} AS t \
                         TABLESAMPLE BERNOULLI ({pct}) REPEATABLE ({seed}) LIMIT {n}) \
                         SELECT count(*), coalesce(array_agg(s.c::text || ' key (' || {keys_text} || ')') \
                           FILTER (WHERE NOT EXISTS (SELECT 1 FROM {qname} AS u WHERE {keys} \
                                   AND u.ctid = s.c AND md5(u::text) = s.h)), '{{}}') FROM s"
                    )
                }
                _ => format!("SELECT count(*), '{{}}'::text[] FROM ({sample}) s"),
            };
            match client.query_one(&q, &[]).await {
                Ok(r) => {
                    let sampled: i64 = r.get(0);
                    let bad: Vec<String> = r.get(1);
                    tables += 1;
                    rows += u64::try_from(sampled).unwrap_or(0);
                    if pk.as_ref().is_some_and(|c| !c.is_empty()) {
                        via_index += u64::try_from(sampled).unwrap_or(0);
                    }
                    if !bad.is_empty() {
                        report.push(
                            Severity::Error,
                            loc,
                            format!(
                                "{} of {sampled} sampled rows not found identical through the \
                                 primary key's index: {}",
                                bad.len(),
                                bad.iter()
                                    .take(MAX_ROWS_LISTED)
                                    .cloned()
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            ),
                        );
                    }
                }
                Err(e) => {
                    // Class XX (internal error, data corrupted) comes from damaged data;
                    // anything else is a failure to check.
                    let corrupt = e.code().is_some_and(|c| c.code().starts_with("XX"));
                    if corrupt {
                        report.push(
                            Severity::Error,
                            loc,
                            format!("reading sampled rows failed: {}", pg_msg(&e)),
                        );
                    } else {
                        report.push(
                            Severity::Warning,
                            loc,
                            format!("could not check sampled rows: {}", pg_msg(&e)),
                        );
                    }
                }
            }
        }
    }
    report.checked.push(format!(
        "spot check: {rows} sampled rows of {tables} tables detoasted, {via_index} re-read \
         through their primary key"
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_conninfo_quotes_names() {
        let t = Scratch {
            port: 5433,
            user: "o'neil".into(),
        };
        assert_eq!(
            t.conninfo("my db"),
            "host=127.0.0.1 port=5433 user='o\\'neil' dbname='my db'"
        );
    }

    #[test]
    fn assertion_files() {
        let text = "-- checks\n\
                    SELECT count(*) > 0 FROM t;\n\
                    -- database: shop\n\
                    SELECT 'a;b' = 'a;b'; SELECT $$x;y$$ <> ''\n\
                    ;\n\
                    SELECT true -- trailing; comment\n";
        let a = parse_assertions(text);
        assert_eq!(a.len(), 4, "{a:?}");
        assert_eq!(a[0].database, "postgres");
        assert_eq!(a[0].sql, "SELECT count(*) > 0 FROM t");
        assert_eq!(a[1].database, "shop");
        assert_eq!(a[1].sql, "SELECT 'a;b' = 'a;b'");
        assert_eq!(a[2].sql, "SELECT $$x;y$$ <> ''");
        assert_eq!(a[3].sql, "SELECT true");
    }
}
