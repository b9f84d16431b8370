use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Lsn, Result};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; not a problem.
    Info,
    /// Suspicious, but restore still works.
    Warning,
    /// Data is damaged or missing: a restore would fail or be wrong.
    Error,
}

/// Where a finding is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Location {
    /// A stored object, and the envelope chunk where known.
    Object {
        /// The store path.
        path: String,
        /// The chunk index.
        chunk: Option<u64>,
    },
    /// A file, at a byte offset or a block.
    File {
        /// The path.
        path: String,
        /// The byte offset.
        offset: Option<u64>,
        /// The 8 KiB block number.
        block: Option<u64>,
    },
    /// A place in WAL.
    Wal {
        /// The segment file name.
        segment: String,
        /// The LSN.
        lsn: Option<Lsn>,
    },
    /// A pg_dump archive entry.
    Dump {
        /// The TOC entry's dump id.
        dump_id: Option<i64>,
        /// The table or object name.
        name: Option<String>,
        /// The byte offset in the archive.
        offset: Option<u64>,
    },
    /// No particular place.
    Nowhere,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Object {
                path,
                chunk: Some(c),
            } => write!(f, "{path} chunk {c}"),
            Location::Object { path, chunk: None } => write!(f, "{path}"),
            Location::File {
                path,
                offset,
                block,
            } => {
                write!(f, "{path}")?;
                if let Some(b) = block {
                    write!(f, " block {b}")?;
                }
                if let Some(o) = offset {
                    write!(f, " offset {o}")?;
                }
                Ok(())
            }
            Location::Wal {
                segment,
                lsn: Some(l),
            } => write!(f, "{segment} at {l}"),
            Location::Wal { segment, lsn: None } => write!(f, "{segment}"),
            Location::Dump {
                dump_id,
                name,
                offset,
            } => {
                write!(f, "dump")?;
                if let Some(i) = dump_id {
                    write!(f, " entry {i}")?;
                }
                if let Some(n) = name {
                    write!(f, " ({n})")?;
                }
                if let Some(o) = offset {
                    write!(f, " offset {o}")?;
                }
                Ok(())
            }
            Location::Nowhere => write!(f, "-"),
        }
    }
}

/// One thing a verifier found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// Where.
    pub location: Location,
    /// What.
    pub what: String,
}

/// The overall result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Everything checked is clean.
    Clean,
    /// Corruption or missing data was found.
    Corrupt,
    /// Something could not be checked (for example the store was unreachable).
    Incomplete,
}

/// A verifier's structured report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// What was verified (a backup id, `wal`, a dump file...).
    pub subject: String,
    /// What was checked, as lines like `1024 WAL records`.
    pub checked: Vec<String>,
    /// Bytes read.
    pub bytes: u64,
    /// How long it took.
    pub duration: Duration,
    /// The findings.
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    /// An empty report for `subject`.
    pub fn new(subject: impl Into<String>) -> Self {
        VerifyReport {
            subject: subject.into(),
            checked: Vec::new(),
            bytes: 0,
            duration: Duration::ZERO,
            findings: Vec::new(),
        }
    }

    /// Records a finding.
    pub fn push(&mut self, severity: Severity, location: Location, what: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            location,
            what: what.into(),
        });
    }

    /// The verdict: corrupt if any error finding, incomplete if anything could not be checked
    /// (a warning whose text starts with `could not check`), clean otherwise.
    pub fn verdict(&self) -> Verdict {
        if self.findings.iter().any(|f| f.severity == Severity::Error) {
            Verdict::Corrupt
        } else if self
            .findings
            .iter()
            .any(|f| f.severity == Severity::Warning && f.what.starts_with("could not check"))
        {
            Verdict::Incomplete
        } else {
            Verdict::Clean
        }
    }
}

/// Verifies something and reports, loudly.
///
/// `verify` returns `Ok` with a report for any state of the data, corrupt included; `Err` is
/// kept for the verifier itself failing to run (bad configuration). A verifier never reports
/// a clean artifact as bad.
#[async_trait]
pub trait Verifier: Send + Sync {
    /// A short name, such as `dump`, `wal` or `backup`.
    fn name(&self) -> &str;
    /// Runs the verification.
    async fn verify(&self) -> Result<VerifyReport>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let mut r = VerifyReport::new("x");
        assert_eq!(r.verdict(), Verdict::Clean);
        r.push(
            Severity::Warning,
            Location::Nowhere,
            "could not check store: down",
        );
        assert_eq!(r.verdict(), Verdict::Incomplete);
        r.push(
            Severity::Error,
            Location::Object {
                path: "a".into(),
                chunk: Some(2),
            },
            "crc",
        );
        assert_eq!(r.verdict(), Verdict::Corrupt);
        assert_eq!(r.findings[1].location.to_string(), "a chunk 2");
    }
}
