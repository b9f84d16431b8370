//! [`MemoryStore`]: an in-memory store for tests.
//!
//! It honours every point of the [`Store`] contract (atomic create-only puts, complete sorted
//! listings, ranges, a distinct `NotFound`, idempotent delete), so code tested against it
//! behaves the same against a durable backend. Objects live only as long as the process.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::{Bound, Range};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use carta_dr_core::store::clamp_range;
use carta_dr_core::{
    Capabilities, Error, GetResult, ObjectMeta, ObjectWriter, PutMode, PutOptions, Result, Store,
    StorePath,
};
use futures::stream::{self, StreamExt};

/// The size of the chunks a [`MemoryStore`] get streams.
const CHUNK: usize = 1 << 20;

#[derive(Clone, Debug)]
struct Entry {
    data: Bytes,
    last_modified: SystemTime,
    etag: String,
}

#[derive(Debug, Default)]
struct Inner {
    objects: Mutex<BTreeMap<StorePath, Entry>>,
    version: AtomicU64,
}

/// An in-memory [`Store`], for tests. Cloning it yields another handle to the same objects.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use bytes::Bytes;
/// use carta_dr_backends::MemoryStore;
/// use carta_dr_core::{PutOptions, Store, StoreExt, StorePath};
///
/// let store = MemoryStore::new();
/// let path = StorePath::new("wal/000000010000000000000001")?;
/// store.put(&path, Bytes::from_static(b"segment"), PutOptions::create()).await?;
/// assert_eq!(store.get_bytes(&path).await?, Bytes::from_static(b"segment"));
/// assert!(!store.put_if_absent(&path, Bytes::new()).await?);
/// assert_eq!(store.to_string(), "Memory");
/// # Ok::<(), carta_dr_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl MemoryStore {
    /// A new, empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store registered under `name` in this process, created empty on first use. Every
    /// call with the same name returns a handle to the same objects (`memory://NAME` URLs).
    pub fn named(name: &str) -> Self {
        static REGISTRY: OnceLock<Mutex<HashMap<String, MemoryStore>>> = OnceLock::new();
        let registry = REGISTRY.get_or_init(Default::default);
        let mut map = registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(name.to_string()).or_default().clone()
    }

    /// How many objects the store holds.
    pub fn len(&self) -> usize {
        self.objects().len()
    }

    /// Whether the store holds no objects.
    pub fn is_empty(&self) -> bool {
        self.objects().is_empty()
    }

    /// Removes every object.
    pub fn clear(&self) {
        self.objects().clear();
    }

    fn objects(&self) -> MutexGuard<'_, BTreeMap<StorePath, Entry>> {
        // No code path panics while holding the lock, but a poisoned map is still consistent
        // (every mutation is a single insert or remove), so recover rather than panic.
        self.inner
            .objects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert(&self, path: &StorePath, data: Bytes, mode: PutMode) -> Result<()> {
        let version = self.inner.version.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Entry {
            data,
            last_modified: SystemTime::now(),
            etag: format!("\"{version:x}\""),
        };
        let mut objects = self.objects();
        if mode == PutMode::Create && objects.contains_key(path) {
            return Err(Error::AlreadyExists {
                path: path.to_string(),
            });
        }
        objects.insert(path.clone(), entry);
        Ok(())
    }
}

fn meta(path: &StorePath, e: &Entry) -> ObjectMeta {
    ObjectMeta {
        path: path.clone(),
        size: e.data.len() as u64,
        last_modified: e.last_modified,
        etag: Some(e.etag.clone()),
    }
}

fn not_found(path: &StorePath) -> Error {
    Error::NotFound {
        path: path.to_string(),
    }
}

impl fmt::Display for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Memory")
    }
}

/// A streaming write to a [`MemoryStore`]: buffered, and inserted atomically on completion.
struct MemoryWriter {
    store: MemoryStore,
    path: StorePath,
    mode: PutMode,
    buf: BytesMut,
}

#[async_trait]
impl ObjectWriter for MemoryWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.buf.extend_from_slice(&data);
        Ok(())
    }

    async fn complete(self: Box<Self>) -> Result<()> {
        let MemoryWriter {
            store,
            path,
            mode,
            buf,
        } = *self;
        store.insert(&path, buf.freeze(), mode)
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn put(&self, path: &StorePath, data: Bytes, opts: PutOptions) -> Result<()> {
        self.insert(path, data, opts.mode)
    }

    async fn put_writer(
        &self,
        path: &StorePath,
        opts: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(MemoryWriter {
            store: self.clone(),
            path: path.clone(),
            mode: opts.mode,
            buf: BytesMut::new(),
        }))
    }

    async fn get(&self, path: &StorePath, range: Option<Range<u64>>) -> Result<GetResult> {
        let entry = self
            .objects()
            .get(path)
            .cloned()
            .ok_or_else(|| not_found(path))?;
        let meta = meta(path, &entry);
        let range = clamp_range(path, range, meta.size)?;
        // The range is clamped to the object's length, which is a usize.
        let (start, end) = (range.start as usize, range.end as usize);
        let data = entry.data.slice(start..end);
        let chunks: Vec<Result<Bytes>> = (0..data.len())
            .step_by(CHUNK)
            .map(|off| Ok(data.slice(off..(off + CHUNK).min(data.len()))))
            .collect();
        Ok(GetResult {
            meta,
            range,
            stream: stream::iter(chunks).boxed(),
        })
    }

    async fn head(&self, path: &StorePath) -> Result<ObjectMeta> {
        self.objects()
            .get(path)
            .map(|e| meta(path, e))
            .ok_or_else(|| not_found(path))
    }

    async fn list(&self, prefix: Option<&StorePath>) -> Result<Vec<ObjectMeta>> {
        let objects = self.objects();
        Ok(match prefix {
            None => objects.iter().map(|(p, e)| meta(p, e)).collect(),
            Some(prefix) => objects
                .range::<StorePath, _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(p, _)| p.as_str().starts_with(prefix.as_str()))
                .filter(|(p, _)| p.starts_with(prefix))
                .map(|(p, e)| meta(p, e))
                .collect(),
        })
    }

    async fn delete(&self, path: &StorePath) -> Result<()> {
        self.objects().remove(path);
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_create: true,
            atomic_create_streaming: true,
            range_reads: true,
            streaming_writes: false,
            durable: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carta_dr_core::StoreExt;

    fn p(s: &str) -> StorePath {
        StorePath::new(s).unwrap()
    }

    #[tokio::test]
    async fn contract_basics() {
        let s = MemoryStore::new();
        assert!(s.get_bytes(&p("a")).await.unwrap_err().is_not_found());
        assert!(s.head(&p("a")).await.unwrap_err().is_not_found());
        s.delete(&p("a")).await.unwrap();
        for name in ["a-b", "a/b", "a", "ab", "a/c/d", "b"] {
            s.put(
                &p(name),
                Bytes::from(name.to_string()),
                PutOptions::default(),
            )
            .await
            .unwrap();
        }
        let listed = s.list_paths(Some(&p("a"))).await.unwrap();
        let names: Vec<_> = listed.iter().map(StorePath::as_str).collect();
        assert_eq!(names, ["a", "a/b", "a/c/d"]);
        assert_eq!(s.list(None).await.unwrap().len(), 6);
        assert!(matches!(
            s.put(&p("a"), Bytes::new(), PutOptions::create()).await,
            Err(Error::AlreadyExists { .. })
        ));
        assert_eq!(s.get_range(&p("a/c/d"), 2..100).await.unwrap(), "c/d");
        assert!(s.get_range(&p("a"), 5..6).await.is_err());
        s.delete(&p("a")).await.unwrap();
        s.delete(&p("a")).await.unwrap();
        assert!(!s.exists(&p("a")).await.unwrap());
    }

    #[tokio::test]
    async fn writer_is_invisible_until_complete() {
        let s = MemoryStore::new();
        let mut w = s.put_writer(&p("x"), PutOptions::create()).await.unwrap();
        w.write(Bytes::from_static(b"abc")).await.unwrap();
        assert!(!s.exists(&p("x")).await.unwrap());
        w.complete().await.unwrap();
        assert_eq!(s.get_bytes(&p("x")).await.unwrap(), "abc");
        let w = s.put_writer(&p("y"), PutOptions::create()).await.unwrap();
        drop(w);
        assert!(!s.is_empty() && s.len() == 1);
    }

    #[tokio::test]
    async fn create_race_has_one_winner() {
        let s = MemoryStore::new();
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.put_if_absent(&p("race"), Bytes::from(vec![i])).await })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            if t.await.unwrap().unwrap() {
                wins += 1;
            }
        }
        assert_eq!(wins, 1);
    }

    #[test]
    fn named_stores_are_shared() {
        let a = MemoryStore::named("shared-test");
        a.insert(&p("k"), Bytes::new(), PutMode::Create).unwrap();
        assert_eq!(MemoryStore::named("shared-test").len(), 1);
        assert_eq!(MemoryStore::named("other-test").len(), 0);
    }
}
