//! [`ConcurrencyLimitStore`]: a bound on calls in flight.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use carta_dr_core::{
    Capabilities, Error, GetResult, ObjectMeta, ObjectWriter, PutOptions, Result, Store, StorePath,
};
use futures::stream::{BoxStream, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bounds how many calls to the inner store are in flight at once, with a tokio
/// [`Semaphore`]; calls over the bound wait (first come, first served) for a permit.
///
/// A call holds its permit while it runs. A `get` holds it until the returned stream ends or
/// is dropped, and a `put_writer` until the writer is completed, aborted or dropped, since
/// those are the times the backend is busy with them. A caller that keeps `max` streams or
/// writers open and then makes another call waits for itself: size the limit above the
/// number of streams and writers one task keeps open.
pub struct ConcurrencyLimitStore<S> {
    inner: S,
    max: usize,
    semaphore: Arc<Semaphore>,
}

impl<S: Store> ConcurrencyLimitStore<S> {
    /// Wraps `inner`, allowing at most `max` calls in flight (at least 1).
    pub fn new(inner: S, max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        ConcurrencyLimitStore {
            inner,
            max,
            semaphore: Arc::new(Semaphore::new(max)),
        }
    }

    /// The bound.
    pub fn max_concurrency(&self) -> usize {
        self.max
    }

    /// Permits free right now.
    pub fn available_permits(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit> {
        Arc::clone(&self.semaphore)
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable {
                what: format!("concurrency limit of {} closed", self.inner),
            })
    }
}

impl<S: Store> fmt::Debug for ConcurrencyLimitStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitStore")
            .field("inner", &self.inner)
            .field("max", &self.max)
            .field("available", &self.available_permits())
            .finish()
    }
}

impl<S: Store> fmt::Display for ConcurrencyLimitStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Limit({})", self.inner)
    }
}

/// A read stream that releases its permit when it ends or is dropped.
struct PermitStream {
    inner: BoxStream<'static, Result<Bytes>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Stream for PermitStream {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(None) = polled {
            self.permit = None;
        }
        polled
    }
}

/// A writer that releases its permit when completed, aborted or dropped.
struct PermitWriter {
    inner: Box<dyn ObjectWriter>,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl ObjectWriter for PermitWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.inner.write(data).await
    }
    async fn complete(self: Box<Self>) -> Result<()> {
        self.inner.complete().await
    }
    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl<S: Store> Store for ConcurrencyLimitStore<S> {
    async fn put(&self, path: &StorePath, data: Bytes, opts: PutOptions) -> Result<()> {
        let _permit = self.permit().await?;
        self.inner.put(path, data, opts).await
    }

    async fn put_writer(
        &self,
        path: &StorePath,
        opts: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>> {
        let permit = self.permit().await?;
        let inner = self.inner.put_writer(path, opts).await?;
        Ok(Box::new(PermitWriter {
            inner,
            _permit: permit,
        }))
    }

    async fn get(&self, path: &StorePath, range: Option<Range<u64>>) -> Result<GetResult> {
        let permit = self.permit().await?;
        let mut got = self.inner.get(path, range).await?;
        got.stream = PermitStream {
            inner: got.stream,
            permit: Some(permit),
        }
        .boxed();
        Ok(got)
    }

    async fn head(&self, path: &StorePath) -> Result<ObjectMeta> {
        let _permit = self.permit().await?;
        self.inner.head(path).await
    }

    async fn list(&self, prefix: Option<&StorePath>) -> Result<Vec<ObjectMeta>> {
        let _permit = self.permit().await?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, path: &StorePath) -> Result<()> {
        let _permit = self.permit().await?;
        self.inner.delete(path).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
