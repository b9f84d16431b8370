//! [`StoreWalArchive`]: a [`WalArchive`] over any [`Store`].
//!
//! # Layout (see `docs/wal-archive.md`)
//!
//! | object | holds |
//! |---|---|
//! | `wal/cluster.json` | the [`ClusterIdentity`] of the archive, written once by the first segment push |
//! | `wal/<TLI>/<LOG>/<SEGMENT>` | a segment, sealed (zstd + CRC-32C, AES-256-GCM with a key) |
//! | `wal/<TLI>/<LOG>/<SEGMENT>.partial` | a partial segment, next to its segment |
//! | `wal/<TLI>/<LOG>/<SEGMENT>.<OFFSET>.backup` | a backup history file, next to its segment |
//! | `wal/history/<TLI>.history` | a timeline history file |
//! | `wal/dropped/<NAME>.json` | a [`DroppedWal`] record: a file the disk safety valve did not store |
//!
//! `<TLI>` and `<LOG>` are the 8-hex-digit parts of the segment name, so one timeline's
//! 4 GiB of WAL share a prefix and listings stay small.
//!
//! # Pushing
//!
//! [`StoreWalArchive::prepare`] (CPU only: validate, checksum, seal) and
//! [`StoreWalArchive::commit`] (I/O: one create-only put) split a push so callers can run the
//! CPU part on a blocking pool. Every object is written create-only, so of two racing pushers
//! exactly one writes; the other compares checksums. Identical content is
//! [`PushOutcome::AlreadyArchived`]; other content is [`Error::Conflict`] naming both CRC-32C
//! values, and the stored copy is never replaced.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::envelope::{self, EnvelopeOptions, Key};
use crate::traits::{ArchivedWal, PushOutcome, WalArchive};
use crate::wal::{inspect_segment, validate_wal_file, ClusterIdentity, ValidatedWal};
use crate::{
    Error, PutOptions, Result, Store, StoreExt, StorePath, TimelineId, WalFileName, WalSegmentName,
};

/// The prefix of everything the WAL archive stores.
pub const WAL_PREFIX: &str = "wal";
/// The cluster record's path.
pub const CLUSTER_RECORD: &str = "wal/cluster.json";
/// Where timeline history files live.
pub const HISTORY_PREFIX: &str = "wal/history";
/// Where records of dropped files live.
pub const DROPPED_PREFIX: &str = "wal/dropped";

/// The store path of a WAL file.
pub fn path_of(name: &WalFileName) -> Result<StorePath> {
    let text = match name {
        WalFileName::History(t) => format!("{HISTORY_PREFIX}/{}.history", t.to_hex()),
        _ => {
            // Segments, partials and backup history files: under their segment's prefix.
            let s = name.segment().unwrap_or(WalSegmentName {
                timeline: name.timeline(),
                log: 0,
                seg: 0,
            });
            format!("{WAL_PREFIX}/{}/{:08X}/{name}", s.timeline.to_hex(), s.log)
        }
    };
    StorePath::new(text)
}

/// The WAL file a store path holds, if it is one (the inverse of [`path_of`]). A file stored
/// under the wrong prefix is not recognized.
pub fn name_of(path: &StorePath) -> Option<WalFileName> {
    let name: WalFileName = path.file_name().parse().ok()?;
    (path_of(&name).ok()? == *path).then_some(name)
}

/// A record of a WAL file the disk safety valve reported archived without storing it.
/// Point-in-time recovery across it is impossible; verification reports the range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedWal {
    /// The file.
    pub name: WalFileName,
    /// Its size in bytes.
    pub size: u64,
    /// CRC-32C of its content.
    pub crc32c: u32,
    /// When it was dropped, seconds since the Unix epoch.
    pub dropped_at_unix: u64,
    /// Why (the store error, the backlog size and the limit).
    pub reason: String,
}

impl DroppedWal {
    /// The store path of the record.
    pub fn path(&self) -> Result<StorePath> {
        StorePath::new(format!("{DROPPED_PREFIX}/{}.json", self.name))
    }
}

/// A push whose CPU work (validation, checksum, sealing) is done; see
/// [`StoreWalArchive::commit`].
#[derive(Clone, Debug)]
pub struct PreparedPush {
    /// The file.
    pub name: WalFileName,
    /// CRC-32C of its content.
    pub crc32c: u32,
    /// Its size.
    pub raw_len: u64,
    /// The sealed object.
    pub sealed: Bytes,
    /// The cluster identity from the segment's header (segments and partials only).
    pub identity: Option<ClusterIdentity>,
}

/// A [`WalArchive`] over any [`Store`]. See the [module docs](self).
pub struct StoreWalArchive {
    store: Arc<dyn Store>,
    opts: EnvelopeOptions,
    cluster: Mutex<Option<ClusterIdentity>>,
    threads: usize,
}

impl std::fmt::Debug for StoreWalArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWalArchive")
            .field("store", &self.store.to_string())
            .field("codec", &self.opts.codec)
            .field("encrypted", &self.opts.key.is_some())
            .field("threads", &self.threads)
            .finish()
    }
}

impl StoreWalArchive {
    /// An archive in `store`, sealing with `opts` (whose key, if any, also opens). Each
    /// object is sealed and opened on up to [`envelope::default_threads`] threads.
    pub fn new(store: Arc<dyn Store>, opts: EnvelopeOptions) -> Self {
        StoreWalArchive {
            store,
            opts,
            cluster: Mutex::new(None),
            threads: envelope::default_threads(),
        }
    }

    /// The same archive, sealing and opening each object on up to `threads` threads (1:
    /// sequentially, on the calling thread).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn key(&self) -> Option<&Key> {
        self.opts.key.as_deref()
    }

    fn cached_cluster(&self) -> Option<ClusterIdentity> {
        self.cluster.lock().ok().and_then(|g| *g)
    }

    fn cache_cluster(&self, c: ClusterIdentity) {
        if let Ok(mut g) = self.cluster.lock() {
            *g = Some(c);
        }
    }

    /// The archive's cluster identity, or `None` before the first segment was pushed.
    pub async fn cluster(&self) -> Result<Option<ClusterIdentity>> {
        if let Some(c) = self.cached_cluster() {
            return Ok(Some(c));
        }
        let path = StorePath::new(CLUSTER_RECORD)?;
        match self.store.get_bytes(&path).await {
            Ok(b) => {
                let c: ClusterIdentity = serde_json::from_slice(&b).map_err(|e| {
                    Error::corrupt(&path, None, format!("unreadable cluster record: {e}"))
                })?;
                self.cache_cluster(c);
                Ok(Some(c))
            }
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records the cluster identity if none is recorded yet (create-only), or checks it
    /// against the recorded one.
    async fn ensure_cluster(&self, file: &str, found: &ClusterIdentity) -> Result<()> {
        if let Some(c) = self.cluster().await? {
            return c.check(file, found);
        }
        let path = StorePath::new(CLUSTER_RECORD)?;
        let json = serde_json::to_vec_pretty(found)
            .map_err(|e| Error::invalid_input(format!("encoding cluster record: {e}")))?;
        if self.store.put_if_absent(&path, Bytes::from(json)).await? {
            tracing::info!(
                system_identifier = found.system_identifier,
                pg_major = found.pg_major,
                "recorded the archive's cluster"
            );
            self.cache_cluster(*found);
            return Ok(());
        }
        // Another pusher recorded it first: check against theirs.
        match self.cluster().await? {
            Some(c) => c.check(file, found),
            None => Err(Error::corrupt(
                &path,
                None,
                "the cluster record exists but cannot be read",
            )),
        }
    }

    /// CPU part of a push: validates `data` as `name` against the archive's cluster
    /// (`cluster`, from [`StoreWalArchive::cluster`]), computes its CRC-32C and seals it.
    pub fn prepare(
        &self,
        name: &WalFileName,
        data: &[u8],
        cluster: Option<&ClusterIdentity>,
    ) -> Result<PreparedPush> {
        let validated = validate_wal_file(name, data, cluster)?;
        let (sealed, stats) = envelope::seal_parallel(&self.opts, data, self.threads)?;
        Ok(PreparedPush {
            name: *name,
            crc32c: stats.crc32c,
            raw_len: data.len() as u64,
            sealed: Bytes::from(sealed),
            identity: match validated {
                ValidatedWal::Segment(s) => Some(s.identity),
                _ => None,
            },
        })
    }

    /// CPU part of a push, reading the file itself: like [`StoreWalArchive::prepare`] for the
    /// `len` bytes of `file`, sealed on up to `threads` threads (1: on the calling thread).
    ///
    /// A segment (or `.partial`) is never read into one buffer: its first page is read and
    /// validated, then each thread reads its chunks into one reused chunk-sized buffer and
    /// seals them, so memory stays at a chunk per thread plus the sealed object. The first
    /// page sealed must be the page validated and the file must still be `len` bytes long
    /// afterwards, or the push fails. Other files (history, backup history) are small and
    /// read whole.
    pub fn prepare_file(
        &self,
        name: &WalFileName,
        file: &std::fs::File,
        len: u64,
        cluster: Option<&ClusterIdentity>,
        threads: usize,
    ) -> Result<PreparedPush> {
        use std::os::unix::fs::FileExt;
        let read_err = |e| Error::io(format!("reading {name}"), e);
        let n = usize::try_from(len)
            .map_err(|_| Error::invalid_input(format!("{name}: {len} bytes is too large")))?;
        if !matches!(name, WalFileName::Segment(_) | WalFileName::Partial(_)) {
            let mut data = vec![0u8; n];
            file.read_exact_at(&mut data, 0).map_err(read_err)?;
            let validated = validate_wal_file(name, &data, cluster)?;
            let (sealed, stats) = envelope::seal_parallel(&self.opts, &data, threads)?;
            return Ok(PreparedPush {
                name: *name,
                crc32c: stats.crc32c,
                raw_len: len,
                sealed: Bytes::from(sealed),
                identity: match validated {
                    ValidatedWal::Segment(s) => Some(s.identity),
                    _ => None,
                },
            });
        }
        // `inspect_segment` reads the first page and the length: a lazily zeroed buffer of
        // the file's length (pages never touched cost nothing) holds the first page.
        let head_len = n.min(crate::wal::XLOG_BLCKSZ as usize);
        let mut probe = vec![0u8; n];
        file.read_exact_at(&mut probe[..head_len], 0)
            .map_err(read_err)?;
        let validated = validate_wal_file(name, &probe, cluster)?;
        probe.truncate(head_len);
        let first_page = probe;
        let read_at = |offset: u64, buf: &mut [u8]| -> std::io::Result<()> {
            file.read_exact_at(buf, offset)?;
            if offset == 0 {
                let k = buf.len().min(first_page.len());
                if buf.get(..k) != first_page.get(..k) {
                    return Err(std::io::Error::other(
                        "the first page changed while the file was read",
                    ));
                }
            }
            Ok(())
        };
        let (sealed, stats) = envelope::seal_parallel_read(&self.opts, len, &read_at, threads)?;
        let now = file.metadata().map_err(read_err)?.len();
        if now != len {
            return Err(Error::invalid_input(format!(
                "{name} changed size while it was read ({len} bytes, then {now})"
            )));
        }
        Ok(PreparedPush {
            name: *name,
            crc32c: stats.crc32c,
            raw_len: len,
            sealed: Bytes::from(sealed),
            identity: match validated {
                ValidatedWal::Segment(s) => Some(s.identity),
                _ => None,
            },
        })
    }

    /// I/O part of a push: records the cluster on the first segment, then stores the object
    /// create-only. Returns only once the object is durable. If the name is taken, compares
    /// the stored content's CRC-32C with the pushed one.
    pub async fn commit(&self, p: PreparedPush) -> Result<PushOutcome> {
        let file = p.name.to_string();
        if let Some(id) = &p.identity {
            self.ensure_cluster(&file, id).await?;
        }
        let path = path_of(&p.name)?;
        match self.store.put(&path, p.sealed, PutOptions::create()).await {
            Ok(()) => Ok(PushOutcome::Stored),
            Err(Error::AlreadyExists { .. }) => {
                self.compare_stored(&p.name, p.crc32c, p.raw_len).await
            }
            Err(e) => Err(e),
        }
    }

    /// Compares the stored copy of `name` with content of CRC-32C `crc` and length `len`.
    pub async fn compare_stored(
        &self,
        name: &WalFileName,
        crc: u32,
        len: u64,
    ) -> Result<PushOutcome> {
        let path = path_of(name)?;
        let (stored_len, stored_crc) = self.fetch_at(&path).await.map_err(|e| match e {
            Error::Corrupt { path, chunk, what } => Error::Corrupt {
                path,
                chunk,
                what: format!(
                    "{what}; the stored copy of {name} is damaged and is not replaced \
                     automatically: compare it with the local file (CRC-32C {crc:08x}) and \
                     repair the archive by hand"
                ),
            },
            other => other,
        })?;
        if stored_crc == crc && stored_len == len {
            tracing::debug!(file = %name, "already archived with identical content");
            Ok(PushOutcome::AlreadyArchived)
        } else {
            Err(Error::Conflict {
                path: path.to_string(),
                what: format!(
                    "{name} is already archived with different content: stored CRC-32C \
                     {stored_crc:08x} ({stored_len} bytes), pushed CRC-32C {crc:08x} ({len} \
                     bytes); the stored copy is kept"
                ),
            })
        }
    }

    /// The length and CRC-32C of the verified content at `path`.
    async fn fetch_at(&self, path: &StorePath) -> Result<(u64, u32)> {
        let sealed = self.store.get_bytes(path).await?;
        let (_, stats) = envelope::open_parallel(path.as_str(), &sealed, self.key(), self.threads)?;
        Ok((stats.raw_len, stats.crc32c))
    }

    /// Fetches and verifies `name`, returning its content and CRC-32C. Every envelope
    /// checksum is verified; a segment's first page is checked against its name again.
    /// A file that is not archived is [`Error::NotFound`]; nothing else is.
    pub async fn fetch_verified(&self, name: &WalFileName) -> Result<(Bytes, u32)> {
        let sealed = self.fetch_sealed(name).await?;
        self.open_verified(name, &sealed)
    }

    /// I/O part of a fetch: the sealed object of `name`, unverified.
    pub async fn fetch_sealed(&self, name: &WalFileName) -> Result<Bytes> {
        self.store.get_bytes(&path_of(name)?).await
    }

    /// CPU part of a fetch: opens and verifies the sealed object of `name` (every envelope
    /// checksum; for segments, the first page against the name).
    pub fn open_verified(&self, name: &WalFileName, sealed: &[u8]) -> Result<(Bytes, u32)> {
        let path = path_of(name)?;
        let (data, stats) =
            envelope::open_parallel(path.as_str(), sealed, self.key(), self.threads)?;
        if let WalFileName::Segment(s) | WalFileName::Partial(s) = name {
            inspect_segment(s, matches!(name, WalFileName::Partial(_)), &data).map_err(|e| {
                Error::corrupt(&path, None, format!("stored content fails validation: {e}"))
            })?;
        }
        Ok((Bytes::from(data), stats.crc32c))
    }

    /// CPU part of a fetch, into a file: opens the sealed object of `name` on up to the
    /// archive's thread count, writing each verified chunk at its offset in `file` (opened
    /// for reading and writing, empty), then checks a segment's first page against its name
    /// as [`StoreWalArchive::open_verified`] does. Memory stays at one chunk per thread.
    /// Returns the content's length and CRC-32C; on error the file's content is garbage and
    /// must be discarded.
    pub fn open_verified_into(
        &self,
        name: &WalFileName,
        sealed: &[u8],
        file: &std::fs::File,
    ) -> Result<(u64, u32)> {
        use std::os::unix::fs::FileExt;
        let path = path_of(name)?;
        let write_at = |offset: u64, buf: &[u8]| file.write_all_at(buf, offset);
        let stats =
            envelope::open_parallel_to(path.as_str(), sealed, self.key(), self.threads, &write_at)?;
        if let WalFileName::Segment(s) | WalFileName::Partial(s) = name {
            // `inspect_segment` reads the first page and the length: the first page is read
            // back, and a lazily zeroed buffer (pages never touched cost nothing) of the
            // content's length holds it.
            let len = usize::try_from(stats.raw_len)
                .map_err(|_| Error::corrupt(&path, None, "content too large for this platform"))?;
            let mut probe = vec![0u8; len];
            let head = len.min(crate::wal::XLOG_BLCKSZ as usize);
            file.read_exact_at(&mut probe[..head], 0)
                .map_err(|e| Error::io(format!("reading back the restored {name}"), e))?;
            inspect_segment(s, matches!(name, WalFileName::Partial(_)), &probe).map_err(|e| {
                Error::corrupt(&path, None, format!("stored content fails validation: {e}"))
            })?;
        }
        Ok((stats.raw_len, stats.crc32c))
    }

    /// CPU part of a fetch, streamed: opens the sealed object of `name` chunk by chunk,
    /// writing each verified chunk to `out`, with memory bounded to about one chunk. Returns
    /// the content's statistics (length, CRC-32C) once the trailer verified; on error `out`
    /// holds a prefix of the content and must be discarded. Unlike
    /// [`StoreWalArchive::open_verified`] it does not check a segment's first page (the
    /// caller does when it uses the content).
    pub fn open_to_writer(
        &self,
        name: &WalFileName,
        sealed: &[u8],
        out: &mut dyn std::io::Write,
    ) -> Result<envelope::SealStats> {
        let path = path_of(name)?;
        let mut dec = envelope::Decoder::new(path.as_str(), self.key());
        for piece in sealed.chunks(1 << 20) {
            dec.feed(piece);
            while let Some(chunk) = dec.next_chunk()? {
                out.write_all(chunk)
                    .map_err(|e| Error::io(format!("writing the content of {name}"), e))?;
            }
        }
        dec.finish()
    }

    /// Records a file the disk safety valve dropped (create-only; a second record of the same
    /// file is kept as it was).
    pub async fn record_dropped(&self, rec: &DroppedWal) -> Result<()> {
        let json = serde_json::to_vec_pretty(rec)
            .map_err(|e| Error::invalid_input(format!("encoding drop record: {e}")))?;
        self.store
            .put_if_absent(&rec.path()?, Bytes::from(json))
            .await?;
        Ok(())
    }

    /// Every drop record, sorted by file name.
    pub async fn dropped(&self) -> Result<Vec<DroppedWal>> {
        let prefix = StorePath::new(DROPPED_PREFIX)?;
        let mut out = Vec::new();
        for m in self.store.list(Some(&prefix)).await? {
            let b = self.store.get_bytes(&m.path).await?;
            let rec: DroppedWal = serde_json::from_slice(&b).map_err(|e| {
                Error::corrupt(&m.path, None, format!("unreadable drop record: {e}"))
            })?;
            out.push(rec);
        }
        out.sort_by_cached_key(|r| r.name.to_string());
        Ok(out)
    }
}

#[async_trait]
impl WalArchive for StoreWalArchive {
    async fn push(&self, name: &WalFileName, data: Bytes) -> Result<PushOutcome> {
        let cluster = self.cluster().await?;
        let prepared = self.prepare(name, &data, cluster.as_ref())?;
        self.commit(prepared).await
    }

    async fn fetch(&self, name: &WalFileName) -> Result<Bytes> {
        Ok(self.fetch_verified(name).await?.0)
    }

    async fn exists(&self, name: &WalFileName) -> Result<bool> {
        self.store.exists(&path_of(name)?).await
    }

    async fn list(&self, timeline: Option<TimelineId>) -> Result<Vec<ArchivedWal>> {
        let prefix = StorePath::new(WAL_PREFIX)?;
        let seg_size = self.cluster().await?.map(|c| c.wal_segment_size.bytes());
        let mut out: Vec<ArchivedWal> = self
            .store
            .list(Some(&prefix))
            .await?
            .into_iter()
            .filter_map(|m| {
                let name = name_of(&m.path)?;
                if timeline.is_some_and(|t| t != name.timeline()) {
                    return None;
                }
                Some(ArchivedWal {
                    name,
                    size: match name {
                        WalFileName::Segment(_) => seg_size,
                        _ => None,
                    },
                    stored_size: m.size,
                })
            })
            .collect();
        out.sort_by_cached_key(|a| a.name.to_string());
        Ok(out)
    }
}
