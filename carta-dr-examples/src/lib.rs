//! Reusable pieces of the carta-dr examples.
//!
//! [`StoreVerifier`] is the piece a service embeds: a [`Verifier`] that opens every sealed
//! object under a prefix of any [`Store`] and reports what it finds, with the object and chunk
//! where the damage is. [`print_report`] prints a [`VerifyReport`] for humans.
//!
//! ```
//! use std::sync::Arc;
//! use carta_dr_backends::MemoryStore;
//! use carta_dr_core::envelope::{put_sealed, EnvelopeOptions};
//! use carta_dr_core::traits::Verdict;
//! use carta_dr_core::{PutOptions, Store, StorePath, Verifier};
//! use carta_dr_examples::StoreVerifier;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
//! let path = StorePath::new("exports/day-1").unwrap();
//! put_sealed(&*store, &path, b"rows", &EnvelopeOptions::default(), PutOptions::create())
//!     .await
//!     .unwrap();
//! let report = StoreVerifier::new(store, None).verify().await.unwrap();
//! assert_eq!(report.verdict(), Verdict::Clean);
//! # });
//! ```
#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use carta_dr_core::envelope::{get_opened, Key};
use carta_dr_core::traits::{Location, Severity, VerifyReport};
use carta_dr_core::{Error, Result, Store, StorePath, Verifier};

/// Verifies every sealed object under a prefix of a store: header, every chunk's checksum (and
/// authentication tag when encrypted), trailer and length.
///
/// Findings:
///
/// * `Error` at the object (and chunk, where known) for corrupt, truncated or unauthentic
///   objects;
/// * `Warning` "could not check ..." when the store failed transiently (the verdict is then
///   `Incomplete`, never `Clean`);
/// * `Warning` for an object that was listed but deleted before it could be read.
#[derive(Debug, Clone)]
pub struct StoreVerifier {
    store: Arc<dyn Store>,
    prefix: Option<StorePath>,
    key: Option<Arc<Key>>,
}

impl StoreVerifier {
    /// Verifies the whole `store`; `key` must be the key the objects were sealed with (`None`
    /// for unencrypted objects).
    pub fn new(store: Arc<dyn Store>, key: Option<Arc<Key>>) -> Self {
        StoreVerifier {
            store,
            prefix: None,
            key,
        }
    }

    /// Verifies only the objects under `prefix`.
    pub fn with_prefix(mut self, prefix: StorePath) -> Self {
        self.prefix = Some(prefix);
        self
    }
}

#[async_trait]
impl Verifier for StoreVerifier {
    fn name(&self) -> &str {
        "store"
    }

    async fn verify(&self) -> Result<VerifyReport> {
        let started = Instant::now();
        let subject = match &self.prefix {
            Some(p) => format!("{}/{}", self.store, p.as_str()),
            None => self.store.to_string(),
        };
        let mut report = VerifyReport::new(subject);
        let listing = match self.store.list(self.prefix.as_ref()).await {
            Ok(l) => l,
            Err(e) => {
                report.push(
                    Severity::Warning,
                    Location::Nowhere,
                    format!("could not check the store: listing failed: {e}"),
                );
                report.duration = started.elapsed();
                return Ok(report);
            }
        };
        let (mut ok, mut content_bytes) = (0u64, 0u64);
        for meta in &listing {
            let at = |chunk| Location::Object {
                path: meta.path.as_str().to_string(),
                chunk,
            };
            match get_opened(&*self.store, &meta.path, self.key.as_deref()).await {
                Ok(content) => {
                    ok += 1;
                    content_bytes += content.len() as u64;
                    report.bytes += meta.size;
                }
                Err(Error::Corrupt { chunk, what, .. }) => {
                    report.bytes += meta.size;
                    report.push(Severity::Error, at(chunk), what);
                }
                Err(Error::Crypto { what, .. }) => {
                    report.bytes += meta.size;
                    report.push(
                        Severity::Error,
                        at(None),
                        format!("authentication failed: {what}"),
                    );
                }
                Err(Error::NotFound { .. }) => report.push(
                    Severity::Warning,
                    at(None),
                    "listed but deleted before it could be read",
                ),
                Err(e) if e.is_retryable() => {
                    report.push(Severity::Warning, at(None), format!("could not check: {e}"))
                }
                Err(e) => report.push(Severity::Error, at(None), e.to_string()),
            }
        }
        report.checked.push(format!("{} objects", listing.len()));
        report.checked.push(format!(
            "{ok} objects opened and verified ({content_bytes} content bytes)"
        ));
        report.duration = started.elapsed();
        Ok(report)
    }
}

/// Prints a report: subject, what was checked, each finding (severity, location, what), verdict.
pub fn print_report(report: &VerifyReport) {
    println!("  verified {} in {:.1?}", report.subject, report.duration);
    for line in &report.checked {
        println!("    checked: {line}");
    }
    println!("    read:    {} stored bytes", report.bytes);
    for f in &report.findings {
        let sev = match f.severity {
            Severity::Info => "info",
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
        };
        println!("    {sev:<7}  {}: {}", f.location, f.what);
    }
    println!("    verdict: {:?}", report.verdict());
}

/// Fails with `msg` unless `cond` holds: how the examples turn a broken promise into a non-zero
/// exit status.
pub fn ensure(
    cond: bool,
    msg: impl Into<String>,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    if cond {
        Ok(())
    } else {
        Err(msg.into().into())
    }
}
