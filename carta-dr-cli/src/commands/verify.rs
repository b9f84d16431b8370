//! `carta-dr verify`: check a base backup, every backup, a pg_dump archive or WAL, and say
//! loudly what is wrong.
//!
//! Exit statuses (see `docs/verification.md`): 0 clean; 5 corruption found; 4 could not check
//! (store unreachable, read error, data the verifier cannot decode); 2 usage error.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use carta_dr_core::backupverify::{BackupSelection, BackupVerifier, BackupVerifyOptions};
use carta_dr_core::dump::{verify_reader, DumpCheck};
use carta_dr_core::envelope::get_opened_stream;
use carta_dr_core::traits::{Location, Severity, Verdict, VerifyReport};
use carta_dr_core::walverify::{select_segments, verify_wal_dir, WalRecordCheck, WalVerifyOptions};
use carta_dr_core::{BackupId, StorePath, Verifier, WalArchive, WalFileName};
use futures::StreamExt;

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;

/// Verify a base backup (ID, or --all), a pg_dump custom archive (a file, or a dump ID in the
/// repository) or WAL segments.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["id", "all", "wal", "dump", "restore_test"])))]
pub struct Args {
    /// A base backup in the repository: every stored object, every file against
    /// backup_manifest, the manifest's SHA-256 and the WAL the backup needs.
    #[arg(value_name = "ID")]
    pub id: Option<String>,
    /// Every backup in the catalog (shared objects checked once), plus the WAL archive's
    /// continuity from the oldest backup's start to the newest segment.
    #[arg(long)]
    pub all: bool,
    /// With ID or --all: objects fetched or being decoded at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub concurrency: usize,
    /// With ID or --all: skip the WAL checks (objects, files and manifests only).
    #[arg(long)]
    pub no_wal: bool,
    /// Verify WAL: every page header and record (CRC-32C, xl_prev chain) of the segments in
    /// --wal-dir, or of the repository's WAL archive.
    #[arg(long)]
    pub wal: bool,
    /// With --wal: a directory of segment files (for example pg_wal) instead of the archive.
    #[arg(long, value_name = "DIR", requires = "wal")]
    pub wal_dir: Option<PathBuf>,
    /// With --wal: the timeline to follow (default: the highest found).
    #[arg(long, requires = "wal")]
    pub timeline: Option<u32>,
    /// With --wal: the segments are complete archived files, so valid WAL must reach the end
    /// of every one (or an XLOG_SWITCH); a stop inside the last one is corruption too.
    #[arg(long, requires = "wal")]
    pub complete_segments: bool,
    /// A pg_dump custom archive: a file path, or a dump ID (`DB/TIMESTAMP`) in the repository.
    #[arg(long, value_name = "FILE_OR_ID")]
    pub dump: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Restore the newest base backup, backup ID, or dump DB/TIMESTAMP into a scratch cluster,
    /// start it and check it (see docs/verification.md, "Restore test").
    #[arg(long, value_name = "ID", num_args = 0..=1, default_missing_value = "latest")]
    pub restore_test: Option<String>,
    /// Options of --restore-test.
    #[command(flatten)]
    pub restore_test_args: super::verify_restore_test::RestoreTestArgs,
}

/// Runs `verify`.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    if let Some(id) = &args.restore_test {
        return super::verify_restore_test::run(ctx, id, &args.restore_test_args, args.json).await;
    }
    super::verify_restore_test::refuse_stray(&args.restore_test_args)?;
    let (report, from_repo) = if let Some(d) = &args.dump {
        (verify_dump(ctx, d).await?, !Path::new(d).is_file())
    } else if args.id.is_some() || args.all {
        (verify_backups(ctx, &args).await?, true)
    } else {
        (verify_wal(ctx, &args).await?, args.wal_dir.is_none())
    };
    if from_repo {
        record_status(ctx, &report).await;
    }
    finish(&report, args.json)
}

/// Records the outcome of a verification of the repository's contents in the store
/// (`status/verify.json`, sealed), where `carta-dr monitor` exports it as the last
/// verification's result and time. A failure to record is logged; it never changes the
/// verification's own exit status.
pub(crate) async fn record_status(ctx: &Context, report: &VerifyReport) {
    use carta_dr_postgres::monitor::records::{VerificationRecord, VERIFY_RECORD_PATH};
    let result = async {
        let record = VerificationRecord {
            subject: report.subject.clone(),
            finished_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            verdict: report.verdict(),
            findings: report.findings.len() as u64,
        };
        let raw = serde_json::to_vec(&record).map_err(|e| {
            carta_dr_core::Error::invalid_input(format!("encoding {VERIFY_RECORD_PATH}: {e}"))
        })?;
        let path = StorePath::new(VERIFY_RECORD_PATH)?;
        let store =
            ctx.store(Duration::from_secs(30))
                .map_err(|e| carta_dr_core::Error::Unavailable {
                    what: e.to_string(),
                })?;
        let opts = ctx
            .envelope_options()
            .map_err(|e| carta_dr_core::Error::invalid_input(e.to_string()))?;
        carta_dr_core::envelope::put_sealed(store.as_ref(), &path, &raw, &opts, Default::default())
            .await?;
        Ok::<_, carta_dr_core::Error>(())
    };
    if let Err(e) = result.await {
        tracing::warn!(error = %e, "could not record the verification result in the store");
    }
}

/// Prints `report` and turns its verdict into the exit status.
pub fn finish(report: &VerifyReport, json: bool) -> Result<(), CliError> {
    let verdict = report.verdict();
    if json {
        let v = serde_json::json!({
            "subject": report.subject,
            "verdict": verdict,
            "checked": report.checked,
            "bytes": report.bytes,
            "duration_ms": report.duration.as_millis() as u64,
            "findings": report.findings,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("verify {}", report.subject);
        for c in &report.checked {
            println!("  checked: {c}");
        }
        let secs = report.duration.as_secs_f64().max(1e-9);
        println!(
            "  read {} bytes in {:.3} s ({:.0} MB/s)",
            report.bytes,
            report.duration.as_secs_f64(),
            report.bytes as f64 / secs / 1e6
        );
        print_findings_and_verdict(report);
    }
    match verdict {
        Verdict::Clean => Ok(()),
        Verdict::Corrupt => Err(CliError::silent(ErrorClass::Corrupt)),
        Verdict::Incomplete => Err(CliError::silent(ErrorClass::Unavailable)),
    }
}

/// The store path of dump `id` (`DB/TIMESTAMP`).
pub fn dump_object_path(id: &str) -> Result<StorePath, CliError> {
    let id = id.trim_end_matches(".dump");
    StorePath::new(format!("dumps/{id}.dump"))
        .map_err(|e| CliError::new(ErrorClass::Usage, format!("bad dump ID {id:?}: {e}")))
}

async fn verify_dump(ctx: &Context, what: &str) -> Result<VerifyReport, CliError> {
    let p = Path::new(what);
    if p.is_file() {
        let f = std::fs::File::open(p).map_err(|e| CliError::io("opening", p, e))?;
        let subject = what.to_string();
        let report = tokio::task::spawn_blocking(move || {
            verify_reader(&subject, std::io::BufReader::with_capacity(1 << 20, f)).0
        })
        .await
        .map_err(|e| CliError::new(ErrorClass::Internal, format!("verifier task: {e}")))?;
        return Ok(report);
    }
    if ctx.repo.is_none() {
        return Err(CliError::new(
            ErrorClass::NotFound,
            format!("{what}: no such file, and no repository given to look the dump ID up in"),
        ));
    }
    let path = dump_object_path(what)?;
    let store = ctx.store(Duration::from_secs(60))?;
    let key = ctx.key()?;
    let started = Instant::now();
    let mut check = DumpCheck::new();
    let mut report_err = None;
    match get_opened_stream(store.as_ref(), &path, key.as_deref()).await {
        Ok(mut stream) => {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(b) => check.feed(&b),
                    Err(e) => {
                        report_err = Some(e);
                        break;
                    }
                }
            }
        }
        Err(e) if e.is_not_found() => {
            return Err(CliError::new(
                ErrorClass::NotFound,
                format!("dump {what}: not found at {path}"),
            ))
        }
        Err(e) => report_err = Some(e),
    }
    let summary = check.finish();
    let mut report = VerifyReport::new(path.to_string());
    report.bytes = summary.bytes;
    report.checked.push(format!(
        "{} TOC entries, {} data blocks",
        summary.toc.len(),
        summary.blocks.len()
    ));
    match report_err {
        Some(e @ carta_dr_core::Error::Corrupt { .. })
        | Some(e @ carta_dr_core::Error::Crypto { .. }) => {
            report.push(
                Severity::Error,
                Location::Object {
                    path: path.to_string(),
                    chunk: None,
                },
                format!("stored object failed its envelope check: {e}"),
            );
        }
        Some(e) => {
            report.push(
                Severity::Warning,
                Location::Object {
                    path: path.to_string(),
                    chunk: None,
                },
                format!("could not check {path}: {e}"),
            );
        }
        None => report.findings.extend(summary.findings),
    }
    report.duration = started.elapsed();
    Ok(report)
}

/// `verify ID` and `verify --all`.
async fn verify_backups(ctx: &Context, args: &Args) -> Result<VerifyReport, CliError> {
    let selection =
        match &args.id {
            Some(id) => BackupSelection::One(id.parse::<BackupId>().map_err(|e| {
                CliError::new(ErrorClass::Usage, format!("bad backup ID {id:?}: {e}"))
            })?),
            None => BackupSelection::All,
        };
    let store = ctx.store(Duration::from_secs(60))?;
    let key = ctx.key()?;
    let opts = BackupVerifyOptions {
        concurrency: args.concurrency.max(1),
        check_wal: !args.no_wal,
        ..Default::default()
    };
    // A backup ID that is not in the catalog fails with the not-found status.
    Ok(BackupVerifier::new(store, key, selection, opts)
        .verify()
        .await?)
}

async fn verify_wal(ctx: &Context, args: &Args) -> Result<VerifyReport, CliError> {
    let timeline = match args.timeline {
        Some(t) => Some(carta_dr_core::TimelineId::new(t).ok_or_else(|| {
            CliError::new(ErrorClass::Usage, "--timeline: timeline 0 does not exist")
        })?),
        None => None,
    };
    let opts = WalVerifyOptions {
        complete_segments: args.complete_segments,
        ..Default::default()
    };
    if let Some(dir) = args.wal_dir.clone() {
        if !dir.is_dir() {
            return Err(CliError::new(
                ErrorClass::NotFound,
                format!("--wal-dir {}: not a directory", dir.display()),
            ));
        }
        return tokio::task::spawn_blocking(move || verify_wal_dir(&dir, timeline, &opts))
            .await
            .map_err(|e| CliError::new(ErrorClass::Internal, format!("verifier task: {e}")))?
            .map(|r| r.0)
            .map_err(CliError::from);
    }
    // The repository's archive: archived segments are complete files.
    let archive = ctx.wal_archive(Duration::from_secs(60))?;
    let started = Instant::now();
    let listed = archive.list(timeline).await?;
    let names: Vec<WalFileName> = listed.iter().map(|a| a.name).collect();
    let chosen = select_segments(&names, timeline);
    let mut check = WalRecordCheck::new(WalVerifyOptions {
        complete_segments: true,
        ..opts
    });
    let mut report = VerifyReport::new(format!("WAL archive {}", ctx.repo_url()?));
    // Up to three segments are fetched and opened ahead while one is checked, so decoding
    // and the record pass overlap on the cores; they are still checked in LSN order.
    let archive = &archive;
    let mut fetched = futures::stream::iter(chosen.iter())
        .map(|name| async move { (name, archive.fetch(name).await) })
        .buffered(3);
    while let Some((name, fetched)) = fetched.next().await {
        match fetched {
            Ok(data) => check.segment(name, &data),
            Err(e @ carta_dr_core::Error::Corrupt { .. }) => {
                report.push(
                    Severity::Error,
                    Location::Wal {
                        segment: name.to_string(),
                        lsn: None,
                    },
                    format!("stored segment failed its envelope check: {e}"),
                );
                // Later segments are checked from their own start.
                check.segment(name, &[]);
            }
            Err(e) => {
                report.push(
                    Severity::Warning,
                    Location::Wal {
                        segment: name.to_string(),
                        lsn: None,
                    },
                    format!("could not check {name}: {e}"),
                );
                break;
            }
        }
    }
    let sum = check.finish();
    report.bytes = sum.bytes;
    report
        .checked
        .push(format!("{} WAL segments", sum.segments));
    report.checked.push(format!(
        "{} WAL records ({} crossing pages, {} crossing segments, {} switches), timelines {:?}",
        sum.records, sum.page_crossing, sum.segment_crossing, sum.switches, sum.timelines
    ));
    if chosen.is_empty() {
        report.push(
            Severity::Warning,
            Location::Nowhere,
            "could not check: the archive holds no WAL segments",
        );
    }
    report.findings.extend(sum.findings);
    report.duration = started.elapsed();
    Ok(report)
}

/// Prints a report's findings, one line each with its severity and location, then its
/// verdict: the tail of every human-readable `verify` output.
pub(crate) fn print_findings_and_verdict(report: &VerifyReport) {
    for f in &report.findings {
        let sev = match f.severity {
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Info => "info",
        };
        println!("  {sev}: {}: {}", f.location, f.what);
    }
    println!(
        "  verdict: {}",
        match report.verdict() {
            Verdict::Clean => "clean",
            Verdict::Corrupt => "CORRUPT",
            Verdict::Incomplete => "INCOMPLETE (could not check everything)",
        }
    );
}
