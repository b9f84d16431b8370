//! [`WalVerifier`]: the [`Verifier`] of WAL segment files in a directory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use async_trait::async_trait;

use super::{select_segments, WalRecordCheck, WalVerifyOptions};
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

/// Verifies the segments in `dir` (blocking I/O; run it off an async runtime).
pub fn verify_wal_dir(
    dir: &Path,
    timeline: Option<TimelineId>,
    opts: &WalVerifyOptions,
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
    let mut check = WalRecordCheck::new(opts.clone());
    // One chunk buffer for every segment, small enough for the pages to be checked while
    // they are in the CPU cache.
    let mut buf = Vec::new();
    for name in &chosen {
        let path = dir.join(name.to_string());
        match read_segment(&mut check, name, &path, &mut buf) {
            Ok(()) => {}
            Err(e) => {
                report.push(
                    Severity::Warning,
                    Location::Wal {
                        segment: name.to_string(),
                        lsn: None,
                    },
                    format!("could not check {}: {e}", path.display()),
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

/// Bytes read at a time.
const CHUNK: usize = 256 * 1024;

/// Feeds the segment file at `path` to `check`, read in [`CHUNK`]s into `buf`.
fn read_segment(
    check: &mut WalRecordCheck,
    name: &WalFileName,
    path: &Path,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    check.segment_read(name, len, &mut f, CHUNK, buf)
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
