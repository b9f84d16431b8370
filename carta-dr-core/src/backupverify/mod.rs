//! Verification of physical base backups in a repository, with no server needed.
//!
//! [`BackupVerifier`] checks one backup ([`BackupSelection::One`]) or every backup of the
//! catalog ([`BackupSelection::All`]):
//!
//! * **every stored object** the backup references (its record `backups/<id>/backup.json`,
//!   its chunks and bundles) is read whole and decoded: envelope header, every chunk frame
//!   and its CRC-32C, decompression, decryption where sealed with a key, the trailer's chunk
//!   count, length and whole-content CRC-32C. An object shared by several files or backups is
//!   read and decoded once;
//! * **every file's content** is reassembled from its chunks or its bundle slice and its
//!   CRC-32C compared with PostgreSQL's `backup_manifest` and with the record. Chunks are
//!   never held together: a file's CRC-32C is combined from the CRC-32C of each decoded chunk
//!   (`crc32c_combine`, which is exactly the CRC-32C of the concatenation), so memory stays
//!   bounded by the objects in flight, and no byte is decoded twice. A file listed in the
//!   manifest but absent from the record, or the other way round, is a finding;
//! * **the manifest's own SHA-256** (`Manifest-Checksum`), and everything else
//!   [`parse_manifest`] checks;
//! * **the WAL the backup needs**: every segment of each manifest `WAL-Ranges` entry (the
//!   record's start and stop LSN when the manifest is unreadable) must be in the archive and
//!   pass the record-level check of [`crate::walverify`] from the start LSN to the end LSN;
//! * with [`BackupSelection::All`], also the archive's **continuity**: the record-level pass
//!   over every archived segment from the oldest backup's start to the newest segment.
//!
//! Objects are fetched concurrently ([`BackupVerifyOptions::concurrency`] in flight) and
//! decoded on a pool of [`BackupVerifyOptions::threads`] threads, so the caller's runtime
//! only waits.
//!
//! The report's `bytes` are the bytes verified: file content plus WAL segments (what
//! `pg_verifybackup` reads for the same backup), whatever their compressed size in the store.
//!
//! Every finding has a [`Location`] (the object and envelope chunk, the file and byte
//! offset, or the WAL segment and LSN) and a [`Severity`]; the verdict is clean only when
//! everything was checked and found intact. What cannot be read for reasons other than
//! damage (the store is unreachable) is a `could not check` warning, which makes the verdict
//! [`Verdict::Incomplete`](crate::traits::Verdict::Incomplete).
//!
//! ```
//! # use std::sync::Arc;
//! # use carta_dr_core::backupverify::{BackupSelection, BackupVerifier, BackupVerifyOptions};
//! # use carta_dr_core::traits::Verdict;
//! # use carta_dr_core::Verifier;
//! # async fn example(store: Arc<dyn carta_dr_core::Store>) -> carta_dr_core::Result<()> {
//! let v = BackupVerifier::new(store, None, BackupSelection::All, BackupVerifyOptions::default());
//! let report = v.verify().await?;
//! if report.verdict() != Verdict::Clean {
//!     for f in &report.findings {
//!         eprintln!("{:?}: {}: {}", f.severity, f.location, f.what);
//!     }
//! }
//! # Ok(()) }
//! ```

mod object;
mod pool;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;

use crate::archive::{path_of as wal_path_of, StoreWalArchive};
use crate::catalog::{
    bundle_path, chunk_path, record_path, BackupRecord, Content, FileKind, BACKUPS_PREFIX,
};
use crate::envelope::{self, EnvelopeOptions, Key};
use crate::manifest::{parse_manifest, BackupManifest, ChecksumAlgorithm};
use crate::traits::{Location, Severity, Verifier, VerifyReport};
use crate::walverify::{select_segments, WalCheckSummary, WalRecordCheck, WalVerifyOptions};
use crate::{
    BackupId, Error, Lsn, Result, Store, StoreExt, StorePath, TimelineId, WalArchive, WalFileName,
    WalSegmentName, WalSegmentSize,
};

use object::{Decoded, Slice};
use pool::Pool;

/// Which backups to verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupSelection {
    /// One backup.
    One(BackupId),
    /// Every backup of the catalog, plus the archive's WAL continuity from the oldest
    /// backup's start.
    All,
}

/// How to verify.
#[derive(Clone, Debug)]
pub struct BackupVerifyOptions {
    /// Objects fetched or being decoded at once (memory: about this many times 5 MiB).
    pub concurrency: usize,
    /// Decoding threads (default: the available cores).
    pub threads: usize,
    /// Check the WAL each backup needs (and, for [`BackupSelection::All`], the archive's
    /// continuity).
    pub check_wal: bool,
}

impl Default for BackupVerifyOptions {
    fn default() -> Self {
        BackupVerifyOptions {
            concurrency: 16,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            check_wal: true,
        }
    }
}

/// The [`Verifier`] of base backups. See the [module docs](self).
pub struct BackupVerifier {
    store: Arc<dyn Store>,
    key: Option<Arc<Key>>,
    selection: BackupSelection,
    opts: BackupVerifyOptions,
}

impl std::fmt::Debug for BackupVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupVerifier")
            .field("store", &self.store.to_string())
            .field("selection", &self.selection)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// The outcome of one stored object.
enum ObjState {
    /// Decoded and intact.
    Ok(Decoded),
    /// Damaged or missing (a finding was made).
    Bad,
    /// Could not be read (a `could not check` warning was made).
    Unchecked,
}

/// What one backup needs checked, and what its record and manifest say.
struct Loaded {
    record: BackupRecord,
    manifest: Option<BackupManifest>,
}

impl BackupVerifier {
    /// A verifier of `selection` in the repository `store`, opening objects with `key` when
    /// the repository is encrypted.
    pub fn new(
        store: Arc<dyn Store>,
        key: Option<Arc<Key>>,
        selection: BackupSelection,
        opts: BackupVerifyOptions,
    ) -> Self {
        BackupVerifier {
            store,
            key,
            selection,
            opts,
        }
    }

    /// The ids of the catalog, oldest first.
    async fn list_ids(&self) -> Result<Vec<BackupId>> {
        let prefix = StorePath::new(BACKUPS_PREFIX)?;
        let mut ids: Vec<BackupId> = self
            .store
            .list_paths(Some(&prefix))
            .await?
            .into_iter()
            .filter(|p| p.file_name() == "backup.json")
            .filter_map(|p| p.segments().nth(1).and_then(|s| s.parse().ok()))
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Reads, decodes and parses a record. `Ok(None)` after a finding was made.
    async fn load_record(
        &self,
        pool: &Pool,
        id: BackupId,
        report: &mut VerifyReport,
    ) -> Result<Option<BackupRecord>> {
        let path = record_path(id)?;
        let sealed = match self.store.get_bytes(&path).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() && self.selection == BackupSelection::One(id) => {
                return Err(Error::NotFound {
                    path: format!("backup {id} ({path})"),
                })
            }
            Err(e) => {
                object_error(report, &path, e, "the backup record");
                return Ok(None);
            }
        };
        let key = self.key.clone();
        let p = path.clone();
        let parsed = pool
            .run(move || {
                let raw = envelope::open(p.as_str(), &sealed, key.as_deref())?;
                BackupRecord::from_json(&p, &raw)
            })
            .await?;
        match parsed {
            Ok(r) if r.id == id => Ok(Some(r)),
            Ok(r) => {
                report.push(
                    Severity::Error,
                    object_loc(&path, None),
                    format!("the record names backup {}, not {id}", r.id),
                );
                Ok(None)
            }
            Err(e) => {
                object_error(report, &path, e, "the backup record");
                Ok(None)
            }
        }
    }

    /// Checks the stored manifest of `rec`: its SHA-256 and everything the parser checks,
    /// the system identifier, the WAL range against the record.
    fn check_manifest(rec: &BackupRecord, report: &mut VerifyReport) -> Option<BackupManifest> {
        let path = record_path(rec.id)
            .map(|p| p.to_string())
            .unwrap_or_default();
        let loc = || Location::Object {
            path: format!("{path} (backup_manifest)"),
            chunk: None,
        };
        let m = match parse_manifest(rec.backup_manifest.as_bytes()) {
            Ok(m) => m,
            Err(e) => {
                report.push(
                    Severity::Error,
                    loc(),
                    format!(
                        "backup {}: the stored backup_manifest fails its check: {e}",
                        rec.id
                    ),
                );
                return None;
            }
        };
        if let Some(s) = m.system_identifier {
            if s != rec.system_identifier {
                report.push(
                    Severity::Error,
                    loc(),
                    format!(
                        "backup_manifest names system {s}, the record {}",
                        rec.system_identifier
                    ),
                );
            }
        }
        let start = m.wal_ranges.iter().map(|r| r.start).min();
        let end = m.wal_ranges.iter().map(|r| r.end).max();
        if start != Some(rec.start_lsn) || end != Some(rec.stop_lsn) {
            report.push(
                Severity::Error,
                loc(),
                format!(
                    "backup_manifest WAL-Ranges ({}..{}) disagree with the record ({}..{})",
                    start.map(|l| l.to_string()).unwrap_or_default(),
                    end.map(|l| l.to_string()).unwrap_or_default(),
                    rec.start_lsn,
                    rec.stop_lsn
                ),
            );
        }
        Some(m)
    }

    /// Fetches and decodes every object in `objects` (each once), `concurrency` at a time.
    async fn check_objects(
        &self,
        pool: &Pool,
        objects: BTreeMap<StorePath, Vec<Slice>>,
        report: &mut VerifyReport,
    ) -> HashMap<StorePath, ObjState> {
        let results: Vec<(StorePath, Result<Decoded>)> = futures::stream::iter(objects)
            .map(|(path, slices)| async move {
                let sealed = match self.store.get_bytes(&path).await {
                    Ok(b) => b,
                    Err(e) => return (path, Err(e)),
                };
                let key = self.key.clone();
                let p = path.to_string();
                let r = pool
                    .run(move || object::decode(&p, &sealed, key.as_deref(), &slices))
                    .await
                    .and_then(|r| r);
                (path, r)
            })
            .buffer_unordered(self.opts.concurrency.max(1))
            .collect()
            .await;
        let mut out = HashMap::with_capacity(results.len());
        for (path, r) in results {
            let state = match r {
                Ok(d) => ObjState::Ok(d),
                Err(e) => {
                    if object_error(report, &path, e, "a stored object") {
                        ObjState::Bad
                    } else {
                        ObjState::Unchecked
                    }
                }
            };
            out.insert(path, state);
        }
        out
    }

    /// Checks every file of `l` against the decoded objects, the record and the manifest.
    fn check_files(
        l: &Loaded,
        objects: &HashMap<StorePath, ObjState>,
        slice_index: &HashMap<(StorePath, Slice), usize>,
        report: &mut VerifyReport,
    ) -> (u64, u64) {
        let rec = &l.record;
        let mut files = 0u64;
        let mut bytes = 0u64;
        let mut manifest: HashMap<String, &crate::manifest::ManifestFile> = l
            .manifest
            .iter()
            .flat_map(|m| m.files.iter())
            .map(|f| (f.path_str(), f))
            .collect();
        let have_manifest = l.manifest.is_some();
        for f in &rec.files {
            if f.kind != FileKind::File {
                continue;
            }
            files += 1;
            let floc = |offset: Option<u64>| Location::File {
                path: f.path.clone(),
                offset,
                block: None,
            };
            // The content, from storage.
            let actual: Option<(u64, u32)> = match &f.content {
                Content::None => Some((0, 0)),
                Content::Chunks { chunks } => {
                    let mut crc = 0u32;
                    let mut len = 0u64;
                    let mut ok = true;
                    for (i, c) in chunks.iter().enumerate() {
                        let Ok(p) = chunk_path(&c.sha256) else {
                            ok = false;
                            break;
                        };
                        match objects.get(&p) {
                            Some(ObjState::Ok(d)) => {
                                if d.raw_len != c.len {
                                    report.push(
                                        Severity::Error,
                                        floc(Some(len)),
                                        format!(
                                            "chunk {i} ({p}) holds {} bytes, the record says {}",
                                            d.raw_len, c.len
                                        ),
                                    );
                                    ok = false;
                                    break;
                                }
                                crc = crc32c::crc32c_combine(crc, d.crc32c, d.raw_len as usize);
                                len += d.raw_len;
                            }
                            Some(ObjState::Bad) => {
                                report.push(
                                    Severity::Error,
                                    floc(Some(len)),
                                    format!(
                                        "cannot be restored: chunk {i} ({p}) is damaged or missing"
                                    ),
                                );
                                ok = false;
                                break;
                            }
                            _ => {
                                ok = false;
                                break;
                            }
                        }
                    }
                    ok.then_some((len, crc))
                }
                Content::Bundled { bundle, offset, .. } => {
                    let slice = Slice {
                        offset: *offset,
                        len: f.size,
                    };
                    match bundle_path(bundle) {
                        Ok(p) => match objects.get(&p) {
                            Some(ObjState::Ok(d)) => {
                                let crc = slice_index
                                    .get(&(p.clone(), slice))
                                    .and_then(|&i| d.slices.get(i).copied().flatten());
                                match crc {
                                    Some(c) => Some((f.size, c)),
                                    None => {
                                        report.push(
                                            Severity::Error,
                                            floc(None),
                                            format!(
                                                "bytes {}..{} of bundle {p} do not exist (it holds {})",
                                                offset,
                                                offset.saturating_add(f.size),
                                                d.raw_len
                                            ),
                                        );
                                        None
                                    }
                                }
                            }
                            Some(ObjState::Bad) => {
                                report.push(
                                    Severity::Error,
                                    floc(None),
                                    format!(
                                        "cannot be restored: its bundle {p} is damaged or missing"
                                    ),
                                );
                                None
                            }
                            _ => None,
                        },
                        Err(_) => None,
                    }
                }
            };
            let mf = manifest.remove(&f.path);
            if have_manifest && mf.is_none() {
                report.push(
                    Severity::Error,
                    floc(None),
                    "in the backup record but not in backup_manifest",
                );
            }
            let Some((len, crc)) = actual else { continue };
            bytes += len;
            let mut wrong = Vec::new();
            if len != f.size || crc != f.crc32c {
                wrong.push(format!(
                    "the record says {} bytes, CRC-32C {:08x}",
                    f.size, f.crc32c
                ));
            }
            if let Some(mf) = mf {
                let bad_size = mf.size != len;
                let bad_crc = match mf.crc32c() {
                    Some(c) => c != crc,
                    None => false,
                };
                if bad_size || bad_crc {
                    let sum = mf
                        .crc32c()
                        .map(|c| format!(", CRC-32C {c:08x}"))
                        .unwrap_or_default();
                    wrong.push(format!("backup_manifest says {} bytes{sum}", mf.size));
                }
                if let Some((alg, _)) = &mf.checksum {
                    if *alg != ChecksumAlgorithm::Crc32c {
                        report.push(
                            Severity::Info,
                            floc(None),
                            format!(
                                "backup_manifest checksum {alg:?} not recomputed (size checked)"
                            ),
                        );
                    }
                }
            }
            if !wrong.is_empty() {
                report.push(
                    Severity::Error,
                    floc(None),
                    format!(
                        "restored content would be {len} bytes with CRC-32C {crc:08x}, but {}",
                        wrong.join("; ")
                    ),
                );
            }
        }
        let mut absent: Vec<String> = manifest.into_keys().collect();
        absent.sort();
        for p in absent {
            report.push(
                Severity::Error,
                Location::File {
                    path: p,
                    offset: None,
                    block: None,
                },
                format!(
                    "listed in backup_manifest but absent from the record of backup {}",
                    rec.id
                ),
            );
        }
        (files, bytes)
    }

    /// The record-level pass over `names` (in LSN order; `None` marks a segment the caller
    /// knows is needed and that is to be looked up as a segment, then as a `.partial`).
    async fn check_wal(
        &self,
        pool: &Pool,
        names: Vec<WalSegmentName>,
        wal_opts: WalVerifyOptions,
        report: &mut VerifyReport,
        what: &str,
    ) -> Result<WalCheckSummary> {
        let key = self.key.clone();
        let store = self.store.clone();
        // Fetch and decode ahead (in parallel on the pool) while the record check, which
        // must see segments in order, runs on the previous one.
        let mut fetched = futures::stream::iter(names)
            .map(|seg| {
                let store = store.clone();
                let key = key.clone();
                async move {
                    for name in [WalFileName::Segment(seg), WalFileName::Partial(seg)] {
                        let path = wal_path_of(&name).map_err(|e| (seg, e))?;
                        match store.get_bytes(&path).await {
                            Ok(sealed) => {
                                let p = path.clone();
                                let raw = pool
                                    .run(move || {
                                        envelope::open(p.as_str(), &sealed, key.as_deref())
                                    })
                                    .await
                                    .map_err(|e| (seg, e))?;
                                return Ok((seg, Some((name, path, raw))));
                            }
                            Err(e) if e.is_not_found() => continue,
                            Err(e) => return Err((seg, e)),
                        }
                    }
                    Ok((seg, None))
                }
            })
            .buffered(3);
        let mut check = Some(WalRecordCheck::new(wal_opts));
        while let Some(item) = fetched.next().await {
            let (seg, found) = match item {
                Ok(v) => v,
                Err((seg, e)) => {
                    report.push(
                        Severity::Warning,
                        Location::Wal {
                            segment: seg.to_string(),
                            lsn: None,
                        },
                        format!("could not check {seg}: {e}"),
                    );
                    break;
                }
            };
            let Some((name, path, raw)) = found else {
                report.push(
                    Severity::Error,
                    Location::Wal {
                        segment: seg.to_string(),
                        lsn: None,
                    },
                    format!("WAL segment {seg}, needed by {what}, is missing from the archive"),
                );
                continue;
            };
            let mut c = check
                .take()
                .ok_or_else(|| Error::invalid_input("WAL check lost"))?;
            let (c, err) = pool
                .run(move || match raw {
                    Ok(raw) => {
                        c.segment(&name, &raw);
                        (c, None)
                    }
                    Err(e) => {
                        // Later segments are checked from their own start.
                        c.segment(&name, &[]);
                        (c, Some((path, e)))
                    }
                })
                .await?;
            check = Some(c);
            if let Some((path, e)) = err {
                object_error(report, &path, e, "a WAL segment");
            }
        }
        let check = check.ok_or_else(|| Error::invalid_input("WAL check lost"))?;
        let sum = check.finish();
        report.bytes += sum.bytes;
        Ok(sum)
    }

    /// Runs the verification. Damage of any kind is reported in the returned report; the
    /// error is [`Error::NotFound`] when the one selected backup is not in the catalog, and
    /// other errors mean the verifier itself could not run (no thread could be started).
    pub async fn run(&self) -> Result<VerifyReport> {
        let started = Instant::now();
        let pool = Pool::new(self.opts.threads)?;
        let subject = match self.selection {
            BackupSelection::One(id) => format!("backup {id}"),
            BackupSelection::All => "all backups".to_string(),
        };
        let mut report = VerifyReport::new(subject);
        let ids = match self.selection {
            BackupSelection::One(id) => vec![id],
            BackupSelection::All => match self.list_ids().await {
                Ok(ids) => ids,
                Err(e) => {
                    report.push(
                        Severity::Warning,
                        Location::Nowhere,
                        format!("could not check the catalog: {e}"),
                    );
                    report.duration = started.elapsed();
                    return Ok(report);
                }
            },
        };
        if ids.is_empty() {
            report.push(
                Severity::Warning,
                Location::Nowhere,
                "could not check: the catalog holds no backups",
            );
        }

        // Records and manifests.
        let mut loaded = Vec::new();
        for id in &ids {
            if let Some(record) = self.load_record(&pool, *id, &mut report).await? {
                let manifest = Self::check_manifest(&record, &mut report);
                loaded.push(Loaded { record, manifest });
            }
        }

        // Every object once, with the slices files occupy in bundles.
        let mut objects: BTreeMap<StorePath, BTreeSet<Slice>> = BTreeMap::new();
        for l in &loaded {
            for f in &l.record.files {
                match &f.content {
                    Content::None => {}
                    Content::Chunks { chunks } => {
                        for c in chunks {
                            objects.entry(chunk_path(&c.sha256)?).or_default();
                        }
                    }
                    Content::Bundled { bundle, offset, .. } => {
                        objects
                            .entry(bundle_path(bundle)?)
                            .or_default()
                            .insert(Slice {
                                offset: *offset,
                                len: f.size,
                            });
                    }
                }
            }
        }
        let mut slice_index = HashMap::new();
        let work: BTreeMap<StorePath, Vec<Slice>> = objects
            .into_iter()
            .map(|(p, s)| {
                let v: Vec<Slice> = s.into_iter().collect();
                for (i, s) in v.iter().enumerate() {
                    slice_index.insert((p.clone(), *s), i);
                }
                (p, v)
            })
            .collect();
        let n_objects = work.len();
        let n_chunks = work
            .keys()
            .filter(|p| p.as_str().starts_with("chunks/"))
            .count();

        // Objects and WAL at once: WAL goes on while objects decode.
        let mut obj_report = VerifyReport::new("");
        let mut wal_report = VerifyReport::new("");
        let (objs, wal) = futures::join!(
            self.check_objects(&pool, work, &mut obj_report),
            self.check_all_wal(&pool, &loaded, &mut wal_report)
        );
        let wal_lines = wal?;
        report.findings.extend(obj_report.findings);
        let stored: u64 = objs
            .values()
            .map(|s| match s {
                ObjState::Ok(d) => d.stored_len,
                _ => 0,
            })
            .sum();

        let mut raw_total = 0u64;
        for l in &loaded {
            let (files, bytes) = Self::check_files(l, &objs, &slice_index, &mut report);
            raw_total += bytes;
            report.checked.push(format!(
                "backup {}: {files} files ({bytes} bytes) against backup_manifest{} and the record; WAL {}..{} on timeline {}",
                l.record.id,
                if l.manifest.is_some() { " (SHA-256 verified)" } else { "" },
                l.record.start_lsn,
                l.record.stop_lsn,
                l.record.timeline.get(),
            ));
        }
        report.checked.push(format!(
            "{n_objects} stored objects ({n_chunks} chunks, {} bundles; {stored} bytes stored, {raw_total} bytes of file content), each read and decoded once",
            n_objects - n_chunks
        ));
        report.checked.extend(wal_lines);
        report.findings.extend(wal_report.findings);
        // Bytes verified: file content plus WAL, comparable with what pg_verifybackup reads.
        report.bytes = raw_total + wal_report.bytes;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// The WAL of every loaded backup, and for [`BackupSelection::All`] the archive's
    /// continuity. Returns the `checked` lines.
    async fn check_all_wal(
        &self,
        pool: &Pool,
        loaded: &[Loaded],
        report: &mut VerifyReport,
    ) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        if !self.opts.check_wal {
            return Ok(lines);
        }
        for l in loaded {
            let rec = &l.record;
            let seg_size = match WalSegmentSize::new(rec.wal_segment_size) {
                Ok(s) => s,
                Err(e) => {
                    report.push(
                        Severity::Error,
                        object_loc(&record_path(rec.id)?, None),
                        format!("bad WAL segment size in the record: {e}"),
                    );
                    continue;
                }
            };
            let ranges: Vec<(TimelineId, Lsn, Lsn)> = match &l.manifest {
                Some(m) if !m.wal_ranges.is_empty() => {
                    // Oldest first (the manifest lists the newest first).
                    let mut r: Vec<_> = m
                        .wal_ranges
                        .iter()
                        .map(|r| (r.timeline, r.start, r.end))
                        .collect();
                    r.sort_by_key(|r| r.1);
                    r
                }
                _ => vec![(rec.timeline, rec.start_lsn, rec.stop_lsn)],
            };
            for (tli, start, end) in ranges {
                let a = start.segment_number(seg_size);
                let b = Lsn(end.0.saturating_sub(1).max(start.0)).segment_number(seg_size);
                let names: Vec<WalSegmentName> = (a..=b)
                    .filter_map(|n| WalSegmentName::from_segno(tli, n, seg_size))
                    .collect();
                let n = names.len();
                let sum = self
                    .check_wal(
                        pool,
                        names,
                        WalVerifyOptions {
                            complete_segments: true,
                            start_lsn: Some(start),
                            end_lsn: Some(end),
                            system_identifier: Some(rec.system_identifier),
                        },
                        report,
                        &format!(
                            "backup {} ({start}..{end} on timeline {})",
                            rec.id,
                            tli.get()
                        ),
                    )
                    .await?;
                lines.push(format!(
                    "backup {}: WAL {start}..{end} on timeline {}: {n} segments, {} records",
                    rec.id,
                    tli.get(),
                    sum.records
                ));
                report.findings.extend(sum.findings);
            }
        }
        if self.selection == BackupSelection::All {
            let Some(oldest) = loaded.iter().min_by_key(|l| l.record.start_lsn) else {
                return Ok(lines);
            };
            let seg_size = WalSegmentSize::new(oldest.record.wal_segment_size)
                .unwrap_or(WalSegmentSize::DEFAULT);
            let archive = StoreWalArchive::new(
                self.store.clone(),
                EnvelopeOptions {
                    key: self.key.clone(),
                    ..Default::default()
                },
            );
            let listed = match archive.list(None).await {
                Ok(l) => l,
                Err(e) => {
                    report.push(
                        Severity::Warning,
                        Location::Nowhere,
                        format!("could not check the WAL archive: {e}"),
                    );
                    return Ok(lines);
                }
            };
            let names: Vec<WalFileName> = listed.iter().map(|a| a.name).collect();
            let from = oldest.record.start_lsn.segment_number(seg_size);
            let chosen: Vec<WalSegmentName> = select_segments(&names, None)
                .into_iter()
                .filter_map(|n| n.segment())
                .filter(|s| s.segno(seg_size) >= from)
                .collect();
            let n = chosen.len();
            let sum = self
                .check_wal(
                    pool,
                    chosen,
                    WalVerifyOptions {
                        complete_segments: true,
                        start_lsn: Some(oldest.record.start_lsn),
                        end_lsn: None,
                        system_identifier: Some(oldest.record.system_identifier),
                    },
                    report,
                    "the archive's continuity",
                )
                .await?;
            lines.push(format!(
                "WAL archive from {} (oldest backup's start): {n} segments, {} records, timelines {:?}",
                oldest.record.start_lsn, sum.records, sum.timelines
            ));
            report.findings.extend(sum.findings);
        }
        Ok(lines)
    }
}

#[async_trait]
impl Verifier for BackupVerifier {
    fn name(&self) -> &str {
        "backup"
    }

    async fn verify(&self) -> Result<VerifyReport> {
        self.run().await
    }
}

fn object_loc(path: &StorePath, chunk: Option<u64>) -> Location {
    Location::Object {
        path: path.to_string(),
        chunk,
    }
}

/// Turns an error reading or decoding `path` into a finding. Returns whether it was damage
/// (an error finding) rather than a failure to check.
fn object_error(report: &mut VerifyReport, path: &StorePath, e: Error, what: &str) -> bool {
    match e {
        Error::Corrupt { chunk, what: w, .. } => {
            report.push(
                Severity::Error,
                object_loc(path, chunk),
                format!("{what} failed its check: {w}"),
            );
            true
        }
        Error::Crypto { what: w, .. } => {
            report.push(
                Severity::Error,
                object_loc(path, None),
                format!("{what} failed authentication: {w}"),
            );
            true
        }
        e if e.is_not_found() => {
            report.push(
                Severity::Error,
                object_loc(path, None),
                format!("{what} is missing from the store"),
            );
            true
        }
        Error::Invalid { .. } | Error::InvalidInput { .. } => {
            report.push(
                Severity::Error,
                object_loc(path, None),
                format!("{what} is unreadable: {e}"),
            );
            true
        }
        e => {
            report.push(
                Severity::Warning,
                object_loc(path, None),
                format!("could not check {path}: {e}"),
            );
            false
        }
    }
}
