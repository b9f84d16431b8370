//! The physical base backup: `BASE_BACKUP` over our replication client, streamed into the
//! store as content-addressed chunks and bundles, then recorded in the catalog once every file
//! and the WAL range it needs are durable.
//!
//! Plan, job, orchestrator: the reader loop turns the tar stream into jobs (one chunk of a
//! large file, or one bundle of small files); a job hashes, seals and stores its bytes; at most
//! `concurrency` jobs run at once, and the reader waits for a free slot before reading on, so
//! memory stays bounded (about `concurrency x 5 MiB`) whatever the database size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use carta_dr_core::catalog::{
    bundle_path, chunk_path, time_to_secs, validate_relative_path, BackupRecord, ChunkRef, Content,
    FileKind, FileRecord, TablespaceRecord, BUNDLE_FILE_MAX, BUNDLE_TARGET, FORMAT_VERSION,
};
use carta_dr_core::manifest::parse_manifest;
use carta_dr_core::traits::{BackupKind, BackupRequest, CatalogEntry};
use carta_dr_core::{
    Backup, BackupId, Error, Lsn, Result, TimelineId, WalArchive, WalFileName, WalSegmentName,
    WalSegmentSize,
};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::conn::{parse_size_setting, ConnParams, ReplicationConnection};
use super::copy::CopyEvent;
use super::repo::Repo;
use super::stream::{BaseBackupOptions, BaseBackupStream, StreamItem};
use super::tar::{EntryKind, TarEvent, TarReader};

/// Bytes per chunk of a large file: 4 MiB. Every chunk is one object (a file, an fsync and a
/// directory entry on a local store, a request on S3), and at 1 MiB creating them cost more
/// than hashing and compressing them; a change still costs only the chunks it touches. The
/// record names each chunk's length, so backups cut at other sizes restore the same way.
pub const BACKUP_CHUNK_SIZE: usize = carta_dr_core::catalog::CHUNK_SIZE;

/// Largest `backup_manifest` accepted (a manifest line is about 150 bytes per file).
const MAX_MANIFEST: usize = 512 << 20;

/// Progress of a running backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupProgress {
    /// Bytes of file content read so far.
    pub bytes_done: u64,
    /// The server's size estimate, where known.
    pub bytes_total: Option<u64>,
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(BackupProgress) + Send + Sync>;

/// How to take physical backups.
#[derive(Clone)]
pub struct PgBackupConfig {
    /// Where the server is.
    pub conn: ConnParams,
    /// The WAL archive that must hold the backup's WAL range before it is listed.
    pub archive: Arc<dyn WalArchive>,
    /// How long to wait for the archiver to store the WAL range.
    pub wal_deadline: Duration,
    /// Jobs (chunk or bundle uploads) in flight at once.
    pub concurrency: usize,
    /// Called as bytes arrive.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for PgBackupConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackupConfig")
            .field("conn", &self.conn)
            .field("wal_deadline", &self.wal_deadline)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// A PostgreSQL physical backup into a repository.
#[derive(Debug, Clone)]
pub struct PgBackup {
    repo: Repo,
    cfg: PgBackupConfig,
}

type ChunkJob = JoinHandle<Result<(ChunkRef, u64)>>;
type BundleJob = JoinHandle<Result<(String, u64)>>;

/// Where a file's content will be once its jobs finish.
enum Pending {
    None,
    Chunks(Vec<ChunkJob>),
    /// A slice of the bundle with this sequence number.
    Bundle {
        seq: usize,
        offset: u64,
        sha256: String,
    },
    /// Content already stored in an earlier backup's bundle.
    Reused(Content),
}

struct OpenFile {
    rec: FileRecord,
    received: u64,
    crc: u32,
    chunk: BytesMut,
    jobs: Vec<ChunkJob>,
    small: Option<(u64, Sha256)>,
}

/// Sealed bytes on their way to the store at once, in MiB: stores are slow to acknowledge
/// (an fsync per object on a local store, a round trip on S3), so many small uploads overlap
/// while the hashing and compression jobs, bounded by `concurrency`, keep the cores busy.
const IO_BUDGET_MIB: u32 = 16;

/// What every job shares.
struct Shared {
    repo: Repo,
    /// Bounds the sealed bytes in flight to the store (permits are MiB).
    io: Arc<Semaphore>,
    failed: Mutex<Option<String>>,
    stored: AtomicU64,
    /// Whether chunks are looked up before they are compressed: on for an incremental or a
    /// resumed backup, and as soon as an upload finds its chunk already stored. A first full
    /// backup hashes and compresses in one pass instead.
    check_first: AtomicBool,
}

impl Shared {
    /// Hashes `data`, and unless the store already holds it, seals and uploads it under
    /// `chunks/` or `bundles/`. Returns the SHA-256 and the stored size (0 when it was
    /// already stored). `cpu` is released once the raw bytes are no longer needed.
    async fn store_object(
        self: Arc<Self>,
        data: Bytes,
        cpu: OwnedSemaphorePermit,
        bundle: bool,
    ) -> Result<(String, u64)> {
        let check = !bundle && self.check_first.load(Ordering::Relaxed);
        let repo = self.repo.clone();
        let (hash, sealed, raw) = blocking(move || {
            let hash = sha_hex(&data);
            if check {
                Ok((hash, None, Some(data)))
            } else {
                let sealed = repo.seal_blocking(&data)?;
                Ok((hash, Some(sealed), None))
            }
        })
        .await?;
        let path = if bundle {
            bundle_path(&hash)?
        } else {
            chunk_path(&hash)?
        };
        let sealed = match (sealed, raw) {
            (Some(s), _) => s,
            (None, Some(raw)) => {
                if self.repo.exists(&path).await? {
                    return Ok((hash, 0));
                }
                let repo = self.repo.clone();
                blocking(move || repo.seal_blocking(&raw)).await?
            }
            (None, None) => return Err(Error::invalid_input("backup job state")),
        };
        drop(cpu);
        let mib = u32::try_from(sealed.len() >> 20)
            .unwrap_or(u32::MAX)
            .saturating_add(1)
            .min(IO_BUDGET_MIB);
        let _io = self
            .io
            .clone()
            .acquire_many_owned(mib)
            .await
            .map_err(|_| Error::Cancelled {
                what: "backup".into(),
            })?;
        let n = match self.repo.put_sealed_create(&path, sealed).await? {
            Some(n) => n,
            None => {
                self.check_first.store(true, Ordering::Relaxed);
                0
            }
        };
        self.stored.fetch_add(n, Ordering::Relaxed);
        Ok((hash, n))
    }

    fn record_failure(&self, e: &Error) {
        if let Ok(mut g) = self.failed.lock() {
            g.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Runs CPU-heavy work (hashing, compression) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::invalid_input(format!("backup task: {e}")))?
}

struct Builder {
    shared: Arc<Shared>,
    /// Bounds the hashing and compression jobs (and their raw bytes) in flight.
    sem: Arc<Semaphore>,
    prefix: String,
    reader: Option<TarReader>,
    open: Option<OpenFile>,
    files: Vec<(FileRecord, Pending)>,
    bundle: BytesMut,
    bundle_jobs: Vec<BundleJob>,
    reuse: HashMap<String, Content>,
    original: u64,
}

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl Builder {
    fn check_failed(&self) -> Result<()> {
        match self.shared.failed.lock() {
            Ok(g) => match g.as_ref() {
                Some(e) => Err(Error::invalid_input(format!("backup job failed: {e}"))),
                None => Ok(()),
            },
            Err(_) => Err(Error::invalid_input("backup job state poisoned")),
        }
    }

    async fn cpu_permit(&self) -> Result<OwnedSemaphorePermit> {
        self.check_failed()?;
        self.sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Cancelled {
                what: "backup".into(),
            })
    }

    async fn spawn_chunk(&mut self, data: Bytes) -> Result<ChunkJob> {
        let permit = self.cpu_permit().await?;
        let shared = self.shared.clone();
        Ok(tokio::spawn(async move {
            let len = data.len() as u64;
            let r = shared.clone().store_object(data, permit, false).await;
            if let Err(e) = &r {
                shared.record_failure(e);
            }
            r.map(|(sha256, n)| (ChunkRef { sha256, len }, n))
        }))
    }

    async fn flush_bundle(&mut self) -> Result<()> {
        if self.bundle.is_empty() {
            return Ok(());
        }
        let permit = self.cpu_permit().await?;
        let data = self.bundle.split().freeze();
        self.bundle
            .reserve(BUNDLE_TARGET + BUNDLE_FILE_MAX as usize);
        let shared = self.shared.clone();
        self.bundle_jobs.push(tokio::spawn(async move {
            let r = shared.clone().store_object(data, permit, true).await;
            if let Err(e) = &r {
                shared.record_failure(e);
            }
            r
        }));
        Ok(())
    }

    async fn tar_event(&mut self, ev: TarEvent) -> Result<()> {
        match ev {
            TarEvent::Entry(e) => {
                // PostgreSQL names a few members `./pg_wal/...`.
                let mut rel = e.path.as_str();
                while let Some(r) = rel.strip_prefix("./") {
                    rel = r;
                }
                let path = format!("{}{}", self.prefix, rel);
                validate_relative_path(&path)?;
                let kind = match e.kind {
                    EntryKind::File => FileKind::File,
                    EntryKind::Dir => FileKind::Dir,
                    EntryKind::Symlink => FileKind::Symlink,
                };
                let small = (kind == FileKind::File && e.size > 0 && e.size <= BUNDLE_FILE_MAX)
                    .then(|| (self.bundle.len() as u64, Sha256::new()));
                self.open = Some(OpenFile {
                    rec: FileRecord {
                        path,
                        kind,
                        mode: e.mode,
                        mtime: e.mtime,
                        size: e.size,
                        crc32c: 0,
                        link_target: e.link_target,
                        content: Content::None,
                    },
                    received: 0,
                    crc: 0,
                    chunk: BytesMut::new(),
                    jobs: Vec::new(),
                    small,
                });
            }
            TarEvent::Data(d) => {
                let Some(f) = self.open.as_mut() else {
                    return Err(Error::invalid_input("tar data outside a member"));
                };
                f.crc = crc32c::crc32c_append(f.crc, &d);
                f.received += d.len() as u64;
                self.original += d.len() as u64;
                if let Some((_, h)) = f.small.as_mut() {
                    h.update(&d);
                    self.bundle.extend_from_slice(&d);
                } else {
                    let mut rest = d;
                    while !rest.is_empty() {
                        let f = self
                            .open
                            .as_mut()
                            .ok_or_else(|| Error::invalid_input("tar state"))?;
                        if f.chunk.is_empty() {
                            f.chunk.reserve(
                                BACKUP_CHUNK_SIZE.min(
                                    usize::try_from(
                                        f.rec
                                            .size
                                            .saturating_sub(f.received)
                                            .saturating_add(rest.len() as u64),
                                    )
                                    .unwrap_or(BACKUP_CHUNK_SIZE),
                                ),
                            );
                        }
                        let room = BACKUP_CHUNK_SIZE - f.chunk.len();
                        let take = room.min(rest.len());
                        f.chunk.extend_from_slice(&rest.split_to(take));
                        if f.chunk.len() == BACKUP_CHUNK_SIZE {
                            let data = f.chunk.split().freeze();
                            let job = self.spawn_chunk(data).await?;
                            if let Some(f) = self.open.as_mut() {
                                f.jobs.push(job);
                            }
                        }
                    }
                }
            }
            TarEvent::EntryEnd => {
                let Some(mut f) = self.open.take() else {
                    return Err(Error::invalid_input("tar member end without a member"));
                };
                if f.received != f.rec.size {
                    return Err(Error::invalid_input(format!(
                        "{}: received {} of {} bytes",
                        f.rec.path, f.received, f.rec.size
                    )));
                }
                f.rec.crc32c = f.crc;
                let pending = if let Some((offset, h)) = f.small.take() {
                    let sha = hex::encode(h.finalize());
                    if let Some(c) = self.reuse.get(&sha) {
                        self.bundle.truncate(offset as usize);
                        Pending::Reused(c.clone())
                    } else {
                        Pending::Bundle {
                            seq: self.bundle_jobs.len(),
                            offset,
                            sha256: sha,
                        }
                    }
                } else if f.rec.kind == FileKind::File && f.rec.size > 0 {
                    if !f.chunk.is_empty() {
                        let data = f.chunk.split().freeze();
                        let job = self.spawn_chunk(data).await?;
                        f.jobs.push(job);
                    }
                    Pending::Chunks(std::mem::take(&mut f.jobs))
                } else {
                    Pending::None
                };
                self.files.push((f.rec, pending));
                if self.bundle.len() >= BUNDLE_TARGET {
                    self.flush_bundle().await?;
                }
            }
            TarEvent::End => {}
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<(Vec<FileRecord>, u64)> {
        self.flush_bundle().await?;
        let mut bundles = Vec::with_capacity(self.bundle_jobs.len());
        for j in self.bundle_jobs.drain(..) {
            let (hash, _) = j
                .await
                .map_err(|e| Error::invalid_input(format!("bundle task: {e}")))??;
            bundles.push(hash);
        }
        let mut out = Vec::with_capacity(self.files.len());
        for (mut rec, pending) in self.files.drain(..) {
            rec.content = match pending {
                Pending::None => Content::None,
                Pending::Reused(c) => c,
                Pending::Bundle {
                    seq,
                    offset,
                    sha256,
                } => Content::Bundled {
                    bundle: bundles
                        .get(seq)
                        .cloned()
                        .ok_or_else(|| Error::invalid_input("bundle sequence out of range"))?,
                    offset,
                    sha256,
                },
                Pending::Chunks(jobs) => {
                    let mut chunks = Vec::with_capacity(jobs.len());
                    for j in jobs {
                        let (c, _) = j
                            .await
                            .map_err(|e| Error::invalid_input(format!("chunk task: {e}")))??;
                        chunks.push(c);
                    }
                    Content::Chunks { chunks }
                }
            };
            out.push(rec);
        }
        Ok((out, self.shared.stored.load(Ordering::Relaxed)))
    }
}

/// The WAL segments from the one holding `start` to the one holding `stop` on `tli`.
pub fn wal_range(
    tli: TimelineId,
    start: Lsn,
    stop: Lsn,
    seg: WalSegmentSize,
) -> Vec<WalSegmentName> {
    let (a, b) = (start.segment_number(seg), stop.segment_number(seg));
    (a..=b)
        .filter_map(|n| WalSegmentName::from_segno(tli, n, seg))
        .collect()
}

/// Polls `archive` until every segment of `range` is archived, or `deadline` passes.
pub async fn wait_for_wal(
    archive: &dyn WalArchive,
    range: &[WalSegmentName],
    deadline: Duration,
) -> Result<()> {
    let until = Instant::now() + deadline;
    let mut delay = Duration::from_millis(50);
    for seg in range {
        loop {
            if archive.exists(&WalFileName::Segment(*seg)).await? {
                break;
            }
            if Instant::now() >= until {
                return Err(Error::Timeout {
                    what: format!(
                        "WAL segment {seg} (needed by the backup, range {}..{}) is not in the \
                         archive after {:?}; check archive_mode and archive_command",
                        range.first().map(|s| s.to_string()).unwrap_or_default(),
                        range.last().map(|s| s.to_string()).unwrap_or_default(),
                        deadline
                    ),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
    Ok(())
}

impl PgBackup {
    /// A backup into `repo` with `cfg`.
    pub fn new(repo: Repo, cfg: PgBackupConfig) -> Self {
        PgBackup { repo, cfg }
    }

    /// Takes one backup and returns its record, once it is listed in the catalog.
    pub async fn run_record(&self, request: &BackupRequest) -> Result<BackupRecord> {
        let start_time = SystemTime::now();
        let mut conn = ReplicationConnection::connect(&self.cfg.conn).await?;
        let ident = conn.identify_system().await?;
        let pg_version = conn.server_version_num().unwrap_or(0);
        if pg_version < 150000 {
            return Err(Error::invalid_input(format!(
                "server {} runs PostgreSQL {pg_version}; carta-dr needs 15 or newer",
                conn.target()
            )));
        }
        let seg_text = conn.show("wal_segment_size").await?;
        let seg_size = parse_size_setting(&seg_text)
            .ok_or_else(|| Error::invalid("wal_segment_size", seg_text.clone(), "unparsable"))
            .and_then(WalSegmentSize::new)?;

        let ids = self.repo.list_ids().await?;
        let mut id = match request.resume {
            Some(id) => id,
            None => BackupId::from_time(start_time),
        };
        while ids.contains(&id) {
            if request.resume.is_some() {
                return Err(Error::AlreadyExists {
                    path: format!("backup {id}"),
                });
            }
            id = id.with_seq(id.seq() + 1);
        }
        // Small files already stored in the newest backup of this system are referenced,
        // not stored again.
        let mut reuse = HashMap::new();
        let mut previous = false;
        if let Some(last) = ids.last() {
            let prev = self.repo.load(*last).await?;
            if prev.system_identifier == ident.system_identifier {
                previous = true;
                for f in prev.files {
                    if let Content::Bundled { sha256, .. } = &f.content {
                        reuse.insert(sha256.clone(), f.content.clone());
                    }
                }
            }
        }

        let opts = BaseBackupOptions {
            label: if request.label.is_empty() {
                format!("carta-dr {id}")
            } else {
                request.label.clone()
            },
            fast_checkpoint: request.fast_checkpoint,
            ..Default::default()
        };
        let (mut stream, start) = BaseBackupStream::start(&mut conn, &opts).await?;
        tracing::info!(%id, start_lsn = %start.start_lsn, timeline = %start.timeline, "base backup started");
        let total: Option<u64> = start
            .tablespaces
            .iter()
            .map(|t| t.size)
            .sum::<Option<u64>>();
        let tablespaces: Vec<TablespaceRecord> = start
            .tablespaces
            .iter()
            .filter_map(|t| {
                Some(TablespaceRecord {
                    oid: t.oid?,
                    location: t.location.clone()?,
                })
            })
            .collect();

        let mut b = Builder {
            shared: Arc::new(Shared {
                repo: self.repo.clone(),
                io: Arc::new(Semaphore::new(IO_BUDGET_MIB as usize)),
                failed: Mutex::new(None),
                stored: AtomicU64::new(0),
                check_first: AtomicBool::new(previous || request.resume.is_some()),
            }),
            sem: Arc::new(Semaphore::new(self.cfg.concurrency.max(1))),
            prefix: String::new(),
            reader: None,
            open: None,
            files: Vec::new(),
            bundle: BytesMut::with_capacity(BUNDLE_TARGET + BUNDLE_FILE_MAX as usize),
            bundle_jobs: Vec::new(),
            reuse,
            original: 0,
        };
        let mut manifest: Option<Vec<u8>> = None;
        let mut events = Vec::new();
        let (stop_lsn, stop_tli) = loop {
            match stream.next().await? {
                StreamItem::Event(CopyEvent::NewArchive { name, location }) => {
                    if let Some(r) = &b.reader {
                        if !r.is_done() {
                            return Err(Error::invalid_input(format!(
                                "archive before {name} ended early"
                            )));
                        }
                    }
                    b.prefix = match name.as_str() {
                        "base.tar" => String::new(),
                        other => {
                            let oid = other
                                .strip_suffix(".tar")
                                .and_then(|o| o.parse::<u32>().ok())
                                .ok_or_else(|| {
                                    Error::invalid_input(format!(
                                        "unexpected archive {other:?} (server-side compression is not used)"
                                    ))
                                })?;
                            tracing::debug!(oid, %location, "tablespace archive");
                            format!("pg_tblspc/{oid}/")
                        }
                    };
                    b.reader = Some(TarReader::new());
                }
                StreamItem::Event(CopyEvent::Data(d)) => {
                    if let Some(m) = manifest.as_mut() {
                        if m.len() + d.len() > MAX_MANIFEST {
                            return Err(Error::invalid_input("backup_manifest exceeds 512 MiB"));
                        }
                        m.extend_from_slice(&d);
                        continue;
                    }
                    let r = b
                        .reader
                        .as_mut()
                        .ok_or_else(|| Error::invalid_input("archive data before any archive"))?;
                    r.feed(d, &mut events)?;
                    for ev in events.drain(..) {
                        b.tar_event(ev).await?;
                    }
                    if let Some(p) = &self.cfg.progress {
                        p(BackupProgress {
                            bytes_done: b.original,
                            bytes_total: total,
                        });
                    }
                }
                StreamItem::Event(CopyEvent::Progress(_)) => {}
                StreamItem::Event(CopyEvent::ManifestStart) => manifest = Some(Vec::new()),
                StreamItem::End { stop_lsn, timeline } => break (stop_lsn, timeline),
            }
        };
        if let Some(r) = &b.reader {
            if !r.is_done() {
                return Err(Error::invalid_input("the last archive ended early"));
            }
        }
        let _ = conn.close().await;
        let original = b.original;
        let (files, stored_files) = b.finish().await?;

        // Cross-check every file against PostgreSQL's own manifest.
        let manifest =
            manifest.ok_or_else(|| Error::invalid_input("the server sent no backup_manifest"))?;
        let parsed = parse_manifest(&manifest)?;
        let by_path: HashMap<&str, &FileRecord> =
            files.iter().map(|f| (f.path.as_str(), f)).collect();
        for mf in &parsed.files {
            let p = mf.path_str();
            let f = by_path.get(p.as_str()).ok_or_else(|| {
                Error::invalid_input(format!("backup_manifest lists {p}, the archive lacks it"))
            })?;
            if f.size != mf.size || mf.crc32c().is_some_and(|c| c != f.crc32c) {
                return Err(Error::corrupt(
                    &p,
                    None,
                    "size or CRC-32C differs from backup_manifest",
                ));
            }
        }
        let manifest = String::from_utf8(manifest)
            .map_err(|_| Error::invalid_input("backup_manifest is not UTF-8"))?;

        // The backup is usable only with its WAL range.
        let range = wal_range(start.timeline, start.start_lsn, stop_lsn, seg_size);
        wait_for_wal(self.cfg.archive.as_ref(), &range, self.cfg.wal_deadline).await?;

        let rec = BackupRecord {
            format_version: FORMAT_VERSION,
            id,
            kind: if previous {
                BackupKind::Incremental
            } else {
                BackupKind::Full
            },
            label: opts.label,
            start_lsn: start.start_lsn,
            stop_lsn,
            timeline: start.timeline,
            stop_timeline: stop_tli,
            system_identifier: ident.system_identifier,
            pg_version,
            wal_segment_size: seg_size.bytes(),
            start_time: time_to_secs(start_time),
            stop_time: time_to_secs(SystemTime::now()),
            original_size: original,
            stored_size: stored_files,
            tablespaces,
            files,
            backup_manifest: manifest,
        };
        rec.validate()?;
        // Every object the record names must still be there: a chunk found already stored
        // (by an earlier backup) may have been removed by a concurrent `expire` since.
        let objects = rec.referenced_objects()?;
        let missing: Vec<_> = futures::stream::iter(objects)
            .map(|p| {
                let repo = self.repo.clone();
                async move { repo.exists(&p).await.map(|ok| (!ok).then_some(p)) }
            })
            .buffer_unordered(self.cfg.concurrency.max(1) * 4)
            .try_filter_map(|m| async move { Ok(m) })
            .try_collect()
            .await?;
        if let Some(p) = missing.first() {
            return Err(Error::NotFound {
                path: format!(
                    "{p} (and {} more objects) referenced by backup {id} vanished before it                      was recorded; run the backup again",
                    missing.len() - 1
                ),
            });
        }
        let n = self.repo.save(&rec).await?;
        tracing::info!(%id, stop_lsn = %stop_lsn, original, stored = stored_files + n, "backup complete");
        Ok(rec)
    }
}

#[async_trait]
impl Backup for PgBackup {
    async fn run(&self, request: BackupRequest) -> Result<CatalogEntry> {
        Ok(self.run_record(&request).await?.to_entry())
    }
}
