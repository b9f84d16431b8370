//! The `Store` contract.
//!
//! [`Store`] has only the primitives a backend must provide. Conveniences live in the blanket
//! [`StoreExt`], which backends never implement (the `object_store` crate's
//! `ObjectStore`/`ObjectStoreExt` split is the model). `#[async_trait]` makes
//! `Arc<dyn Store>` work.
//!
//! # Semantics every backend guarantees
//!
//! * **Atomic visibility.** An object is visible under its final path only once it is
//!   complete. A failed, aborted or killed write leaves the previous state (nothing, or the
//!   old object) visible, never a partial object.
//! * **Create-only is atomic.** Of N concurrent [`PutMode::Create`] writers to one path,
//!   exactly one succeeds; the others get [`Error::AlreadyExists`].
//! * **`NotFound` is distinct.** A missing object is [`Error::NotFound`], never a generic
//!   error, so callers (for example `restore_command`) can tell "absent" from "broken".
//! * **Listing is complete and sorted** by path, whatever the backend's page size.
//! * **Delete is idempotent**: deleting a missing object succeeds.
//! * A backend that cannot do something returns [`Error::NotSupported`] and says so in its
//!   [`Capabilities`]; it never quietly degrades.

use std::fmt;
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};

use crate::{Error, Result, StorePath};

/// How a put treats an existing object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PutMode {
    /// Replace any existing object (atomically).
    #[default]
    Overwrite,
    /// Fail with [`Error::AlreadyExists`] if the object exists. Atomic.
    Create,
}

/// Options of [`Store::put`] and [`Store::put_writer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Overwrite or create-only.
    pub mode: PutMode,
}

impl PutOptions {
    /// Create-only.
    pub fn create() -> Self {
        PutOptions {
            mode: PutMode::Create,
        }
    }

    /// Overwrite.
    pub fn overwrite() -> Self {
        PutOptions {
            mode: PutMode::Overwrite,
        }
    }
}

/// What a backend can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// [`PutMode::Create`] is atomic for [`Store::put`].
    pub atomic_create: bool,
    /// [`PutMode::Create`] is supported (and atomic) for [`Store::put_writer`].
    pub atomic_create_streaming: bool,
    /// `get` honours byte ranges without reading the whole object.
    pub range_reads: bool,
    /// Objects written by [`Store::put_writer`] are streamed (multipart or temp file), so
    /// memory stays bounded for objects of many GB.
    pub streaming_writes: bool,
    /// Objects survive the process (false for memory stores).
    pub durable: bool,
}

/// Metadata of a stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its path.
    pub path: StorePath,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, as the backend reports it.
    pub last_modified: SystemTime,
    /// The backend's entity tag, where it has one.
    pub etag: Option<String>,
}

/// The answer of [`Store::get`]: metadata and a stream of the requested bytes.
pub struct GetResult {
    /// The object's metadata (its full size, not the range's).
    pub meta: ObjectMeta,
    /// The byte range being returned.
    pub range: Range<u64>,
    /// The bytes, in order.
    pub stream: BoxStream<'static, Result<Bytes>>,
}

impl fmt::Debug for GetResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetResult")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl GetResult {
    /// Collects the whole stream. Fails with [`Error::Corrupt`] if the stream ends short of
    /// the range it promised.
    pub async fn bytes(mut self) -> Result<Bytes> {
        let want = self.range.end.saturating_sub(self.range.start);
        let mut buf = BytesMut::with_capacity(usize::try_from(want).unwrap_or(0).min(1 << 30));
        while let Some(chunk) = self.stream.next().await {
            buf.extend_from_slice(&chunk?);
        }
        if buf.len() as u64 != want {
            return Err(Error::corrupt(
                &self.meta.path,
                None,
                format!("read {} bytes, expected {want}", buf.len()),
            ));
        }
        Ok(buf.freeze())
    }
}

/// A streaming write of one object. Nothing is visible under the final path until
/// [`ObjectWriter::complete`] returns `Ok`. Dropping a writer without completing it, or
/// calling [`ObjectWriter::abort`], leaves no object behind (a backend may leave an
/// invisible temporary that its cleanup removes).
#[async_trait]
pub trait ObjectWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Makes the object durable and visible. For [`PutMode::Create`] this fails with
    /// [`Error::AlreadyExists`] if another writer won.
    async fn complete(self: Box<Self>) -> Result<()>;
    /// Discards the write.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// The storage contract. See the [module docs](self) for the guarantees.
///
/// `Display` prints the backend and its layers, for example `Retry(Local(/repo))`.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + fmt::Display {
    /// Writes a whole object durably and atomically.
    async fn put(&self, path: &StorePath, data: Bytes, opts: PutOptions) -> Result<()>;

    /// Starts a streaming write, for objects too large to hold in memory.
    async fn put_writer(&self, path: &StorePath, opts: PutOptions)
        -> Result<Box<dyn ObjectWriter>>;

    /// Reads an object, or the byte range `range` of it. A range past the end is clamped to
    /// the object's size; a range starting past the end is [`Error::InvalidInput`].
    async fn get(&self, path: &StorePath, range: Option<Range<u64>>) -> Result<GetResult>;

    /// The object's metadata, or [`Error::NotFound`].
    async fn head(&self, path: &StorePath) -> Result<ObjectMeta>;

    /// Every object whose path is `prefix` or lies under it (segment-wise), sorted by path.
    /// `None` lists the whole store. Complete, whatever the backend's page size.
    async fn list(&self, prefix: Option<&StorePath>) -> Result<Vec<ObjectMeta>>;

    /// Deletes an object. Deleting a missing object succeeds.
    async fn delete(&self, path: &StorePath) -> Result<()>;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;
}

/// Conveniences over any [`Store`]. Implemented for every store; backends never implement it.
#[async_trait]
pub trait StoreExt: Store {
    /// Reads a whole object into memory.
    async fn get_bytes(&self, path: &StorePath) -> Result<Bytes> {
        self.get(path, None).await?.bytes().await
    }

    /// Reads `range` of an object into memory.
    async fn get_range(&self, path: &StorePath, range: Range<u64>) -> Result<Bytes> {
        self.get(path, Some(range)).await?.bytes().await
    }

    /// Whether an object exists.
    async fn exists(&self, path: &StorePath) -> Result<bool> {
        match self.head(path).await {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Create-only put: `Ok(true)` if this call created the object, `Ok(false)` if it
    /// already existed.
    async fn put_if_absent(&self, path: &StorePath, data: Bytes) -> Result<bool> {
        match self.put(path, data, PutOptions::create()).await {
            Ok(()) => Ok(true),
            Err(Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Lists the paths (without metadata) under `prefix`.
    async fn list_paths(&self, prefix: Option<&StorePath>) -> Result<Vec<StorePath>> {
        Ok(self
            .list(prefix)
            .await?
            .into_iter()
            .map(|m| m.path)
            .collect())
    }

    /// Deletes every object under `prefix`; returns how many were deleted.
    async fn delete_prefix(&self, prefix: &StorePath) -> Result<usize> {
        let items = self.list(Some(prefix)).await?;
        for m in &items {
            self.delete(&m.path).await?;
        }
        Ok(items.len())
    }
}

impl<T: Store + ?Sized> StoreExt for T {}

#[async_trait]
impl<T: Store + ?Sized> Store for std::sync::Arc<T> {
    async fn put(&self, path: &StorePath, data: Bytes, opts: PutOptions) -> Result<()> {
        (**self).put(path, data, opts).await
    }
    async fn put_writer(
        &self,
        path: &StorePath,
        opts: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>> {
        (**self).put_writer(path, opts).await
    }
    async fn get(&self, path: &StorePath, range: Option<Range<u64>>) -> Result<GetResult> {
        (**self).get(path, range).await
    }
    async fn head(&self, path: &StorePath) -> Result<ObjectMeta> {
        (**self).head(path).await
    }
    async fn list(&self, prefix: Option<&StorePath>) -> Result<Vec<ObjectMeta>> {
        (**self).list(prefix).await
    }
    async fn delete(&self, path: &StorePath) -> Result<()> {
        (**self).delete(path).await
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
}

/// Clamps a requested range to an object of `size` bytes, as every backend must.
pub fn clamp_range(path: &StorePath, range: Option<Range<u64>>, size: u64) -> Result<Range<u64>> {
    match range {
        None => Ok(0..size),
        Some(r) if r.start > r.end => Err(Error::invalid_input(format!(
            "range {}..{} of {path} is reversed",
            r.start, r.end
        ))),
        Some(r) if r.start > size || (r.start == size && size > 0 && r.end > r.start) => {
            Err(Error::invalid_input(format!(
                "range {}..{} of {path} starts past its end ({size} bytes)",
                r.start, r.end
            )))
        }
        Some(r) => Ok(r.start..r.end.min(size)),
    }
}
