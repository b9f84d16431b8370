//! [`WalVerifier`]: the [`Verifier`] of WAL segment files in a directory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use async_trait::async_trait;

use super::parallel::{self, Files, MIN_PART};
use super::{select_segments, WalVerifyOptions};
use crate::traits::{Location, Severity, Verifier, VerifyReport};
use crate::{Error, Result, TimelineId, WalFileName};

/// Verifies every record of the WAL segments in a directory (for example `pg_wal` or a copy
/// of an archive), following one timeline.
#[derive(Clone, Debug)]
pub struct WalVerifier {
    dir: PathBuf,
    timeline: Option<TimelineId>,
    opts: WalVerifyOptions,
}

impl WalVerifier {
    /// A verifier of the segments in `dir`, on `timeline` (the highest present when `None`).
    pub fn new(
        dir: impl Into<PathBuf>,
        timeline: Option<TimelineId>,
        opts: WalVerifyOptions,
    ) -> Self {
        WalVerifier {
            dir: dir.into(),
            timeline,
            opts,
        }
    }
}

/// Verifies the segments in `dir` (blocking I/O; run it off an async runtime), on as many
/// threads as there are cores (see [`verify_wal_dir_threads`]).
pub fn verify_wal_dir(
    dir: &Path,
    timeline: Option<TimelineId>,
    opts: &WalVerifyOptions,
) -> Result<(VerifyReport, super::WalCheckSummary)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    verify_wal_dir_threads(dir, timeline, opts, threads)
}

/// Verifies the segments in `dir` (blocking I/O) on up to `threads` threads, each checking a
/// contiguous run of at least four segments; the report is exactly that of checking them one
/// after another on one thread (see `walverify::parallel`).
pub fn verify_wal_dir_threads(
    dir: &Path,
    timeline: Option<TimelineId>,
    opts: &WalVerifyOptions,
    threads: usize,
) -> Result<(VerifyReport, super::WalCheckSummary)> {
    let started = Instant::now();
    let rd =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let mut names = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        if let Some(n) = ent.file_name().to_str() {
            if let Ok(w) = n.parse::<WalFileName>() {
                names.push(w);
            }
        }
    }
    let chosen = select_segments(&names, timeline);
    let mut report = VerifyReport::new(dir.display().to_string());
    let src = Files {
        files: chosen
            .iter()
            .map(|n| (*n, dir.join(n.to_string())))
            .collect(),
    };
    let (sum, failed) = parallel::check(&src, opts, threads, MIN_PART, false);
    if let Some((i, e)) = failed {
        if let Some((name, path)) = src.files.get(i) {
            report.push(
                Severity::Warning,
                Location::Wal {
                    segment: name.to_string(),
                    lsn: None,
                },
                format!("could not check {}: {e}", path.display()),
            );
        }
    }
    report.bytes = sum.bytes;
    report
        .checked
        .push(format!("{} WAL segments", sum.segments));
    report.checked.push(format!(
        "{} WAL records ({} bytes; {} crossing pages, {} crossing segments, {} switches), timelines {:?}",
        sum.records, sum.record_bytes, sum.page_crossing, sum.segment_crossing, sum.switches, sum.timelines
    ));
    if let (Some(a), Some(b)) = (sum.first_record, sum.end_of_valid_wal) {
        report.checked.push(format!("valid WAL from {a} to {b}"));
    }
    if chosen.is_empty() {
        report.push(
            Severity::Warning,
            Location::Nowhere,
            format!("could not check: no WAL segments in {}", dir.display()),
        );
    }
    report.findings.extend(sum.findings.iter().cloned());
    report.duration = started.elapsed();
    Ok((report, sum))
}

#[async_trait]
impl Verifier for WalVerifier {
    fn name(&self) -> &str {
        "wal"
    }

    async fn verify(&self) -> Result<VerifyReport> {
        let (tx, rx) = futures::channel::oneshot::channel();
        let me = self.clone();
        std::thread::spawn(move || {
            let _ = tx.send(verify_wal_dir(&me.dir, me.timeline, &me.opts).map(|r| r.0));
        });
        rx.await
            .map_err(|_| Error::invalid_input("WAL verification thread failed"))?
    }
}
