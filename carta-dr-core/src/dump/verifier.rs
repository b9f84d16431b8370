//! [`DumpVerifier`]: the [`Verifier`] of a pg_dump custom archive.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;

use super::{DumpCheck, DumpSummary};
use crate::traits::{Location, Severity, Verifier, VerifyReport};
use crate::{Error, Result};

/// Where the archive comes from.
#[derive(Clone, Debug)]
pub enum DumpSource {
    /// Bytes in memory.
    Bytes(Bytes),
    /// A file, read in pieces on a thread of its own.
    Path(PathBuf),
}

/// Verifies a pg_dump custom archive: header, TOC and every data block.
#[derive(Clone, Debug)]
pub struct DumpVerifier {
    subject: String,
    source: DumpSource,
}

impl DumpVerifier {
    /// A verifier of `source`, reported under `subject` (a file name or store path).
    pub fn new(subject: impl Into<String>, source: DumpSource) -> Self {
        DumpVerifier {
            subject: subject.into(),
            source,
        }
    }

    /// A verifier of a file.
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        DumpVerifier::new(path.display().to_string(), DumpSource::Path(path))
    }
}

/// Turns a [`DumpSummary`] into a [`VerifyReport`].
pub(crate) fn report(subject: &str, s: &DumpSummary, started: Instant) -> VerifyReport {
    let mut r = VerifyReport::new(subject);
    r.bytes = s.bytes;
    if let Some(h) = &s.header {
        r.checked.push(format!(
            "archive {} ({:?}, {:?}) of database {} from pg_dump {}",
            h.version,
            h.format,
            h.compression,
            h.database.as_deref().unwrap_or("?"),
            h.pg_dump_version.as_deref().unwrap_or("?"),
        ));
    }
    r.checked.push(format!("{} TOC entries", s.toc.len()));
    let data: u64 = s.blocks.iter().map(|b| b.data_bytes).sum();
    r.checked.push(format!(
        "{} data blocks, {} bytes of data",
        s.blocks.len(),
        data
    ));
    r.findings = s.findings.clone();
    r.duration = started.elapsed();
    r
}

/// Verifies an archive held in memory.
pub fn verify_bytes(subject: &str, data: &[u8]) -> (VerifyReport, DumpSummary) {
    let started = Instant::now();
    let mut c = DumpCheck::new();
    for piece in data.chunks(1 << 20) {
        c.feed(piece);
        if c.is_stopped() {
            break;
        }
    }
    let s = c.finish();
    (report(subject, &s, started), s)
}

/// Verifies an archive read from `r` in bounded memory. A read error ends the check with a
/// `could not check` warning (an incomplete verdict), not a corruption finding.
pub fn verify_reader<R: Read>(subject: &str, mut r: R) -> (VerifyReport, DumpSummary) {
    let started = Instant::now();
    let mut c = DumpCheck::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut read_error = None;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                c.feed(buf.get(..n).unwrap_or(&[]));
                if c.is_stopped() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                read_error = Some(e);
                break;
            }
        }
    }
    if let Some(e) = read_error {
        let mut rep = VerifyReport::new(subject);
        rep.push(
            Severity::Warning,
            Location::Nowhere,
            format!("could not check {subject}: read failed: {e}"),
        );
        rep.duration = started.elapsed();
        return (rep, DumpCheck::new().finish());
    }
    let s = c.finish();
    (report(subject, &s, started), s)
}

#[async_trait]
impl Verifier for DumpVerifier {
    fn name(&self) -> &str {
        "dump"
    }

    async fn verify(&self) -> Result<VerifyReport> {
        match &self.source {
            DumpSource::Bytes(b) => Ok(verify_bytes(&self.subject, b).0),
            DumpSource::Path(p) => {
                let (tx, rx) = futures::channel::oneshot::channel();
                let path = p.clone();
                let subject = self.subject.clone();
                std::thread::spawn(move || {
                    let res = std::fs::File::open(&path)
                        .map(|f| verify_reader(&subject, std::io::BufReader::new(f)).0)
                        .map_err(|e| Error::io(format!("open {}", path.display()), e));
                    let _ = tx.send(res);
                });
                rx.await
                    .map_err(|_| Error::invalid_input("dump verification thread failed"))?
            }
        }
    }
}
