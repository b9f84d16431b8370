//! `carta-dr verify --restore-test [ID]`: restore a base backup or a dump into a scratch
//! cluster, start it, check it, tear it down, and time each phase
//! (`carta_dr_postgres::restore_test`).
//!
//! `ID` is empty or `latest` (the newest base backup), a backup id (`YYYYMMDDTHHMMSSZ`), or a
//! dump id (`DB/TIMESTAMP`: the slash tells it apart).
//!
//! Exit statuses as for the rest of `verify`: 0 clean; 5 a check failed (corruption, a
//! difference, a failing assertion, a backup that does not restore or start); 4 something could
//! not be checked; 2 usage; 1 no such backup or dump.

use std::path::PathBuf;
use std::time::Duration;

use carta_dr_core::traits::Verdict;
use carta_dr_postgres::replication::{ConnParams, Repo};
use carta_dr_postgres::restore_test::{
    self, parse_assertions, RestoreTestOptions, RestoreTestOutcome, Subject,
};

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;

/// Options of `verify --restore-test`.
#[derive(clap::Args, Debug, Default)]
pub struct RestoreTestArgs {
    /// With --restore-test: a file of SQL queries (separated by `;`) that must each return
    /// true on the restored cluster; `-- database: NAME` picks the database of the next ones.
    #[arg(long = "assert", value_name = "FILE")]
    pub assert_file: Option<PathBuf>,
    /// With --restore-test: rows sampled per table by the spot check (default 100; 0: none).
    #[arg(long, value_name = "N")]
    pub sample_rows: Option<u32>,
    /// With --restore-test: PostgreSQL bin directory (default: $CARTA_DR_PG_BIN, else
    /// `pg_config --bindir`, else /usr/lib/postgresql/15/bin).
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// With --restore-test, as root: the OS user PostgreSQL runs as (default `postgres`).
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// With --restore-test: where the scratch directory goes.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

/// A usage error when options of `--restore-test` are given without it (clap's `requires`
/// is met by any member of `verify`'s argument group, so it cannot say this).
pub fn refuse_stray(args: &RestoreTestArgs) -> Result<(), CliError> {
    let given = [
        ("--assert", args.assert_file.is_some()),
        ("--sample-rows", args.sample_rows.is_some()),
        ("--pg-bin", args.pg_bin.is_some()),
        ("--run-as", args.run_as.is_some()),
        ("--work-dir", args.work_dir.is_some()),
    ];
    match given.iter().find(|g| g.1) {
        Some((flag, _)) => Err(CliError::new(
            ErrorClass::Usage,
            format!("{flag} is an option of --restore-test"),
        )),
        None => Ok(()),
    }
}

/// Runs the restore test of `id` (`latest`, a backup id or a dump id).
pub async fn run(
    ctx: &Context,
    id: &str,
    args: &RestoreTestArgs,
    json: bool,
) -> Result<(), CliError> {
    let subject = Subject::parse(Some(id))
        .map_err(|e| CliError::new(ErrorClass::Usage, format!("--restore-test {id}: {e}")))?;
    let mut opts = RestoreTestOptions::new(subject);
    if let Some(f) = &args.assert_file {
        let text = std::fs::read_to_string(f).map_err(|e| CliError::io("reading", f, e))?;
        opts.assertions = parse_assertions(&text);
        if opts.assertions.is_empty() {
            return Err(CliError::new(
                ErrorClass::Usage,
                format!("--assert {}: no queries in the file", f.display()),
            ));
        }
    }
    if let Some(n) = args.sample_rows {
        opts.sample_rows = n;
    }
    opts.pg_bin = args
        .pg_bin
        .clone()
        .or_else(|| std::env::var_os("CARTA_DR_PG_BIN").map(PathBuf::from));
    opts.run_as = args.run_as.clone();
    opts.work_parent = args.work_dir.clone();
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(ErrorClass::Internal, format!("locating carta-dr: {e}")))?;
    opts.restore_command = Some(format!(
        "{} --repo {} wal-fetch %f %p",
        sh_quote(&exe.display().to_string()),
        sh_quote(ctx.repo_url()?)
    ));
    let envelope = ctx.envelope_options()?;
    let repo = Repo::new(ctx.store(Duration::from_secs(120))?, envelope.clone());
    let outcome = tokio::select! {
        r = restore_test::run(&repo, &envelope, &opts) => r.map_err(|e| CliError::from(e).context("restore test"))?,
        _ = tokio::signal::ctrl_c() => {
            // Dropping the test's future killed its server and removed its directory.
            return Err(CliError::new(
                ErrorClass::Internal,
                "interrupted: the scratch cluster was stopped and its directory removed",
            ));
        }
    };
    print(&outcome, json);
    super::verify::record_status(ctx, &outcome.report).await;
    match outcome.report.verdict() {
        Verdict::Clean => Ok(()),
        Verdict::Corrupt => Err(CliError::silent(ErrorClass::Corrupt)),
        Verdict::Incomplete => Err(CliError::silent(ErrorClass::Unavailable)),
    }
}

fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=+,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn print(o: &RestoreTestOutcome, json: bool) {
    let report = &o.report;
    let verdict = report.verdict();
    if json {
        let v = serde_json::json!({
            "subject": report.subject,
            "verdict": verdict,
            "checked": report.checked,
            "bytes": report.bytes,
            "duration_ms": report.duration.as_millis() as u64,
            "phases": o.phases,
            "row_counts": o.row_counts,
            "findings": report.findings,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    println!("verify {}", report.subject);
    for c in &report.checked {
        println!("  checked: {c}");
    }
    println!("  phases:");
    for p in &o.phases {
        println!("    {:<15} {:>9.3} s", p.name, p.duration.as_secs_f64());
    }
    println!(
        "    {:<15} {:>9.3} s",
        "total",
        report.duration.as_secs_f64()
    );
    super::verify::print_findings_and_verdict(report);
}

/// Called by `carta-dr backup` after a successful backup: records per-table row counts
/// beside it (`backups/<id>/rowcounts.json`) for the restore test. A failure is a warning;
/// the backup itself stands. `CARTA_DR_ROW_COUNTS=off` leaves them out (counting reads every
/// table once).
pub async fn after_backup(repo: &Repo, id: carta_dr_core::BackupId, conn: &ConnParams) {
    if std::env::var("CARTA_DR_ROW_COUNTS").is_ok_and(|v| matches!(v.as_str(), "off" | "0")) {
        tracing::info!(backup = %id, "row counts not recorded (CARTA_DR_ROW_COUNTS=off)");
        return;
    }
    match restore_test::rowcounts::record_row_counts(repo, id, conn).await {
        Ok(r) => tracing::info!(
            backup = %id,
            databases = r.databases.len(),
            lsn = %r.target_lsn,
            "row counts recorded for the restore test"
        ),
        Err(e) => {
            tracing::warn!(backup = %id, error = %e, "could not record row counts for the restore test")
        }
    }
}
