//! The backup repository: reading and writing sealed objects (records, chunks, bundles) in a
//! [`Store`], and listing the catalog. Every object goes through the envelope
//! ([`carta_dr_core::envelope`]): compressed, checksummed, optionally encrypted.

use std::sync::Arc;

use bytes::Bytes;
use carta_dr_core::catalog::{record_path, BackupRecord, BACKUPS_PREFIX};
use carta_dr_core::envelope::{self, EnvelopeOptions};
use carta_dr_core::{BackupId, Error, Result, Store, StoreExt, StorePath};

/// Sealed-object access to a store.
#[derive(Clone, Debug)]
pub struct Repo {
    store: Arc<dyn Store>,
    opts: Arc<EnvelopeOptions>,
}

impl Repo {
    /// A repository over `store`, sealing with `opts` (whose key, if any, also opens).
    pub fn new(store: Arc<dyn Store>, opts: EnvelopeOptions) -> Self {
        Repo {
            store,
            opts: Arc::new(opts),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Seals `raw` and writes it create-only. Returns the stored size, or `None` when an
    /// object already exists at `path` (content-addressed objects are then identical).
    pub async fn put_create(&self, path: &StorePath, raw: Bytes) -> Result<Option<u64>> {
        let opts = self.opts.clone();
        let sealed = tokio::task::spawn_blocking(move || envelope::seal(&opts, &raw))
            .await
            .map_err(|e| Error::invalid_input(format!("sealing {path}: {e}")))??;
        self.put_sealed_create(path, Bytes::from(sealed)).await
    }

    /// Seals `raw` on the calling thread (compression, checksums, encryption): for callers
    /// that already run on a blocking thread.
    pub fn seal_blocking(&self, raw: &[u8]) -> Result<Bytes> {
        envelope::seal(&self.opts, raw).map(Bytes::from)
    }

    /// Writes an object sealed by [`Repo::seal_blocking`] create-only. Returns the stored
    /// size, or `None` when an object already exists at `path`.
    pub async fn put_sealed_create(&self, path: &StorePath, sealed: Bytes) -> Result<Option<u64>> {
        let n = sealed.len() as u64;
        if self.store.put_if_absent(path, sealed).await? {
            Ok(Some(n))
        } else {
            Ok(None)
        }
    }

    /// Whether an object exists.
    pub async fn exists(&self, path: &StorePath) -> Result<bool> {
        self.store.exists(path).await
    }

    /// Reads a sealed object without opening it (see [`Repo::open_blocking`]).
    pub async fn get_sealed(&self, path: &StorePath) -> Result<Bytes> {
        self.store.get_bytes(path).await
    }

    /// Opens a sealed object on the calling thread, verifying its integrity: for callers
    /// that already run on a blocking thread.
    pub fn open_blocking(&self, path: &StorePath, sealed: &[u8]) -> Result<Vec<u8>> {
        envelope::open(path.as_ref(), sealed, self.opts.key.as_deref())
    }

    /// Reads and opens a sealed object, verifying its integrity.
    pub async fn get(&self, path: &StorePath) -> Result<Bytes> {
        let sealed = self.store.get_bytes(path).await?;
        let opts = self.opts.clone();
        let name = path.to_string();
        let raw = tokio::task::spawn_blocking(move || {
            envelope::open(&name, &sealed, opts.key.as_deref())
        })
        .await
        .map_err(|e| Error::invalid_input(format!("opening {path}: {e}")))??;
        Ok(Bytes::from(raw))
    }

    /// Ids of the backups listed in the catalog, oldest first.
    pub async fn list_ids(&self) -> Result<Vec<BackupId>> {
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

    /// Loads and validates one record.
    pub async fn load(&self, id: BackupId) -> Result<BackupRecord> {
        let path = record_path(id)?;
        let bytes = self.get(&path).await?;
        let r = BackupRecord::from_json(&path, &bytes)?;
        if r.id != id {
            return Err(Error::corrupt(
                &path,
                None,
                format!("record names backup {}", r.id),
            ));
        }
        Ok(r)
    }

    /// Every record, oldest first.
    pub async fn load_all(&self) -> Result<Vec<BackupRecord>> {
        let mut out = Vec::new();
        for id in self.list_ids().await? {
            out.push(self.load(id).await?);
        }
        Ok(out)
    }

    /// The newest record, if any.
    pub async fn latest(&self) -> Result<Option<BackupRecord>> {
        match self.list_ids().await?.last() {
            Some(id) => Ok(Some(self.load(*id).await?)),
            None => Ok(None),
        }
    }

    /// Writes a record (create-only: a backup id is never reused). This makes it visible.
    pub async fn save(&self, rec: &BackupRecord) -> Result<u64> {
        let path = record_path(rec.id)?;
        let json = Bytes::from(rec.to_json()?);
        match self.put_create(&path, json).await? {
            Some(n) => Ok(n),
            None => Err(Error::AlreadyExists {
                path: path.to_string(),
            }),
        }
    }
}
