//! [`FaultStore`]: programmable fault injection, for tests.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use carta_dr_core::{
    Capabilities, Error, GetResult, ObjectMeta, ObjectWriter, PutOptions, Result, Store, StorePath,
};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The store operations faults can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// [`Store::put`].
    Put,
    /// [`Store::put_writer`] (opening the writer).
    PutWriter,
    /// [`Store::get`] (opening the read).
    Get,
    /// [`Store::head`].
    Head,
    /// [`Store::list`].
    List,
    /// [`Store::delete`].
    Delete,
}

impl FaultOp {
    /// Every operation.
    pub const ALL: [FaultOp; 6] = [
        FaultOp::Put,
        FaultOp::PutWriter,
        FaultOp::Get,
        FaultOp::Head,
        FaultOp::List,
        FaultOp::Delete,
    ];

    fn index(self) -> usize {
        match self {
            FaultOp::Put => 0,
            FaultOp::PutWriter => 1,
            FaultOp::Get => 2,
            FaultOp::Head => 3,
            FaultOp::List => 4,
            FaultOp::Delete => 5,
        }
    }

    /// The operation's name (`put`, `put_writer`, `get`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FaultOp::Put => "put",
            FaultOp::PutWriter => "put_writer",
            FaultOp::Get => "get",
            FaultOp::Head => "head",
            FaultOp::List => "list",
            FaultOp::Delete => "delete",
        }
    }
}

impl fmt::Display for FaultOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which bit of a read to flip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitFlip {
    /// The lowest bit of the byte at this offset of the object. A read whose range does not
    /// cover the offset is returned intact (and the flip stays armed for the next read).
    At(u64),
    /// A random bit of a random byte of the returned range (drawn from the store's seeded
    /// generator). An empty read is returned intact (and the flip stays armed).
    Random,
}

/// How many faults a [`FaultStore`] has injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Calls failed with an injected error.
    pub failed: u64,
    /// Calls delayed by injected latency.
    pub delayed: u64,
    /// Reads returned with a flipped bit.
    pub flipped: u64,
    /// Writes dropped (reported `Ok`, nothing stored).
    pub dropped: u64,
    /// Writes torn (half stored, an error reported).
    pub torn: u64,
    /// Writes stored whole but reported as failed (a lost acknowledgement).
    pub acks_lost: u64,
}

/// Builds the error of an injected failure from the operation and the path (empty for a
/// listing of the whole store).
pub type ErrorFactory = Arc<dyn Fn(FaultOp, &str) -> Error + Send + Sync>;

fn default_error(op: FaultOp, path: &str) -> Error {
    Error::Unavailable {
        what: format!("injected fault: {op} {path}"),
    }
}

#[derive(Default)]
struct OpFaults {
    calls: u64,
    fail_next: u32,
    error: Option<ErrorFactory>,
    failure_rate: f64,
    latency: Duration,
}

struct State {
    ops: [OpFaults; 6],
    flips: u32,
    flip: BitFlip,
    drop_writes: u32,
    tear_writes: u32,
    lose_acks: u32,
    counts: FaultCounts,
    rng: StdRng,
}

/// A cloneable handle that arms, disarms and counts the faults of one [`FaultStore`].
/// Changes take effect on the next call.
#[derive(Clone)]
pub struct FaultHandle {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FaultHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultHandle")
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl FaultHandle {
    fn new(rng: StdRng) -> Self {
        FaultHandle {
            state: Arc::new(Mutex::new(State {
                ops: Default::default(),
                flips: 0,
                flip: BitFlip::Random,
                drop_writes: 0,
                tear_writes: 0,
                lose_acks: 0,
                counts: FaultCounts::default(),
                rng,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails the next `n` calls of `op` with a retryable [`Error::Unavailable`].
    pub fn fail_next(&self, op: FaultOp, n: u32) {
        let mut s = self.lock();
        let o = &mut s.ops[op.index()];
        o.fail_next = n;
        o.error = None;
    }

    /// Fails the next `n` calls of `op` with the error `make(op, path)` builds.
    pub fn fail_next_with(
        &self,
        op: FaultOp,
        n: u32,
        make: impl Fn(FaultOp, &str) -> Error + Send + Sync + 'static,
    ) {
        let mut s = self.lock();
        let o = &mut s.ops[op.index()];
        o.fail_next = n;
        o.error = Some(Arc::new(make));
    }

    /// Fails each call of `op` with probability `rate` (0 to 1), with the error set by
    /// [`FaultHandle::fail_next_with`] or else a retryable `Unavailable`. Draws come from the
    /// store's seeded generator, so a seeded store fails the same calls on every run.
    pub fn set_failure_rate(&self, op: FaultOp, rate: f64) {
        self.lock().ops[op.index()].failure_rate = rate.clamp(0.0, 1.0);
    }

    /// Delays every call of `op` by `latency` before it reaches the inner store
    /// (`Duration::ZERO` removes the delay).
    pub fn set_latency(&self, op: FaultOp, latency: Duration) {
        self.lock().ops[op.index()].latency = latency;
    }

    /// Flips one bit in each of the next `n` reads (`get` streams), as `flip` says.
    pub fn flip_next_reads(&self, n: u32, flip: BitFlip) {
        let mut s = self.lock();
        s.flips = n;
        s.flip = flip;
    }

    /// Drops the next `n` writes (`put`, or a `put_writer` opened while armed): they report
    /// success and store nothing.
    pub fn drop_next_writes(&self, n: u32) {
        self.lock().drop_writes = n;
    }

    /// Tears the next `n` writes (`put`, or a `put_writer` opened while armed): only the
    /// first half of the bytes is stored, under the final path, and the write reports a
    /// retryable `Unavailable`. This simulates a backend without atomic visibility. A torn
    /// streaming write holds its bytes in memory until `complete`.
    pub fn tear_next_writes(&self, n: u32) {
        self.lock().tear_writes = n;
    }

    /// Makes the next `n` writes (`put`, or a `put_writer` opened while armed) store the
    /// object whole and then report a retryable `Unavailable`, as when a backend's answer
    /// is lost after the write took effect: the ambiguous failure a retry must resolve.
    pub fn lose_next_acks(&self, n: u32) {
        self.lock().lose_acks = n;
    }

    /// Disarms every fault (counters are kept).
    pub fn clear(&self) {
        let mut s = self.lock();
        s.ops = Default::default();
        s.flips = 0;
        s.drop_writes = 0;
        s.tear_writes = 0;
        s.lose_acks = 0;
    }

    /// The faults injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.lock().counts
    }

    /// How many calls of `op` this store has received (faulted or not).
    pub fn calls(&self, op: FaultOp) -> u64 {
        self.lock().ops[op.index()].calls
    }

    /// Counts the call, applies latency, and decides whether it fails.
    async fn enter(&self, op: FaultOp, path: &str) -> Result<()> {
        let latency = {
            let mut s = self.lock();
            let o = &mut s.ops[op.index()];
            o.calls += 1;
            let latency = o.latency;
            if !latency.is_zero() {
                s.counts.delayed += 1;
            }
            latency
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut s = self.lock();
        let State {
            ops, rng, counts, ..
        } = &mut *s;
        let o = &mut ops[op.index()];
        let fail = if o.fail_next > 0 {
            o.fail_next -= 1;
            true
        } else {
            o.failure_rate > 0.0 && rng.gen_bool(o.failure_rate)
        };
        if fail {
            counts.failed += 1;
            let err = match &o.error {
                Some(make) => make(op, path),
                None => default_error(op, path),
            };
            tracing::debug!(op = op.name(), path, error = %err, "injecting failure");
            return Err(err);
        }
        Ok(())
    }

    /// Takes one armed write fault: dropping before tearing before losing the answer.
    fn take_write_fault(&self) -> WriteFault {
        let mut s = self.lock();
        if s.drop_writes > 0 {
            s.drop_writes -= 1;
            s.counts.dropped += 1;
            WriteFault::Drop
        } else if s.tear_writes > 0 {
            s.tear_writes -= 1;
            s.counts.torn += 1;
            WriteFault::Tear
        } else if s.lose_acks > 0 {
            s.lose_acks -= 1;
            s.counts.acks_lost += 1;
            WriteFault::LoseAck
        } else {
            WriteFault::None
        }
    }

    /// The offset and mask to flip in a read of `range`, if a flip is armed and applies.
    fn take_flip(&self, range: &Range<u64>) -> Option<(u64, u8)> {
        let mut s = self.lock();
        if s.flips == 0 {
            return None;
        }
        let target = match s.flip {
            BitFlip::At(off) if range.contains(&off) => (off, 1u8),
            BitFlip::At(_) => return None,
            BitFlip::Random if range.is_empty() => return None,
            BitFlip::Random => {
                let off = s.rng.gen_range(range.clone());
                let bit = s.rng.gen_range(0..8u32);
                (off, 1u8 << bit)
            }
        };
        s.flips -= 1;
        s.counts.flipped += 1;
        Some(target)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteFault {
    None,
    Drop,
    Tear,
    LoseAck,
}

fn lost_ack_error(path: &StorePath) -> Error {
    Error::Unavailable {
        what: format!("injected fault: the answer to the write of {path} was lost"),
    }
}

fn torn_error(path: &StorePath, stored: usize, total: usize) -> Error {
    Error::Unavailable {
        what: format!("injected fault: write of {path} torn after {stored} of {total} bytes"),
    }
}

/// Injects faults into the calls of an inner store, as armed through its [`FaultHandle`]:
/// failed calls, latency, flipped bits in reads, dropped, torn and unacknowledged writes. With
/// nothing armed it is a transparent pass-through (it still counts calls).
///
/// Put it innermost, directly around the backend, so that injected faults look like backend
/// faults to every other layer. Give it a seed ([`FaultStore::with_seed`]) to make random
/// faults reproducible.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use bytes::Bytes;
/// use carta_dr_backends::MemoryStore;
/// use carta_dr_backends::layers::{FaultOp, FaultStore};
/// use carta_dr_core::{PutOptions, Store, StorePath};
///
/// let store = FaultStore::with_seed(MemoryStore::new(), 7);
/// let faults = store.handle();
/// let path = StorePath::new("a/b").unwrap();
/// faults.fail_next(FaultOp::Put, 1);
/// assert!(store.put(&path, Bytes::from_static(b"x"), PutOptions::default()).await.is_err());
/// assert!(store.put(&path, Bytes::from_static(b"x"), PutOptions::default()).await.is_ok());
/// assert_eq!(faults.counts().failed, 1);
/// # });
/// ```
pub struct FaultStore<S> {
    inner: S,
    handle: FaultHandle,
}

impl<S: Store> FaultStore<S> {
    /// Wraps `inner`, with random choices seeded from OS entropy.
    pub fn new(inner: S) -> Self {
        FaultStore {
            inner,
            handle: FaultHandle::new(StdRng::from_entropy()),
        }
    }

    /// Wraps `inner`, with random choices drawn from a generator seeded with `seed`.
    pub fn with_seed(inner: S, seed: u64) -> Self {
        FaultStore {
            inner,
            handle: FaultHandle::new(StdRng::seed_from_u64(seed)),
        }
    }

    /// A handle to arm faults and read counters; clones share the same state.
    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Store> fmt::Debug for FaultStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultStore")
            .field("inner", &self.inner)
            .field("counts", &self.handle.counts())
            .finish()
    }
}

impl<S: Store> fmt::Display for FaultStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faults({})", self.inner)
    }
}

/// A writer that discards everything and reports success.
struct DroppedWriter;

#[async_trait]
impl ObjectWriter for DroppedWriter {
    async fn write(&mut self, _data: Bytes) -> Result<()> {
        Ok(())
    }
    async fn complete(self: Box<Self>) -> Result<()> {
        Ok(())
    }
    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl<S: Store> Store for FaultStore<S> {
    async fn put(&self, path: &StorePath, data: Bytes, opts: PutOptions) -> Result<()> {
        self.handle.enter(FaultOp::Put, path.as_str()).await?;
        match self.handle.take_write_fault() {
            WriteFault::None => self.inner.put(path, data, opts).await,
            WriteFault::Drop => {
                tracing::debug!(path = path.as_str(), "injected fault: dropping write");
                Ok(())
            }
            WriteFault::Tear => {
                let half = data.slice(..data.len() / 2);
                let stored = half.len();
                self.inner.put(path, half, opts).await?;
                Err(torn_error(path, stored, data.len()))
            }
            WriteFault::LoseAck => {
                self.inner.put(path, data, opts).await?;
                Err(lost_ack_error(path))
            }
        }
    }

    async fn put_writer(
        &self,
        path: &StorePath,
        opts: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>> {
        self.handle.enter(FaultOp::PutWriter, path.as_str()).await?;
        match self.handle.take_write_fault() {
            WriteFault::None => self.inner.put_writer(path, opts).await,
            WriteFault::Drop => Ok(Box::new(DroppedWriter)),
            WriteFault::Tear => {
                // The torn write lands through a writer of the inner store opened now, so
                // that it needs no handle on the inner store later.
                let inner = self.inner.put_writer(path, opts).await?;
                Ok(Box::new(TearingWriter {
                    inner: Some(inner),
                    path: path.clone(),
                    buf: BytesMut::new(),
                }))
            }
            WriteFault::LoseAck => {
                let inner = self.inner.put_writer(path, opts).await?;
                Ok(Box::new(AckLosingWriter {
                    inner,
                    path: path.clone(),
                }))
            }
        }
    }

    async fn get(&self, path: &StorePath, range: Option<Range<u64>>) -> Result<GetResult> {
        self.handle.enter(FaultOp::Get, path.as_str()).await?;
        let mut got = self.inner.get(path, range).await?;
        if let Some((target, mask)) = self.handle.take_flip(&got.range) {
            tracing::debug!(
                path = path.as_str(),
                offset = target,
                "injected fault: flipping a bit"
            );
            let mut pos = got.range.start;
            got.stream = got
                .stream
                .map(move |chunk| {
                    chunk.map(|b| {
                        let start = pos;
                        pos = pos.saturating_add(b.len() as u64);
                        if (start..pos).contains(&target) {
                            let mut v = BytesMut::from(&b[..]);
                            let idx = usize::try_from(target - start).unwrap_or(usize::MAX);
                            if let Some(byte) = v.get_mut(idx) {
                                *byte ^= mask;
                            }
                            v.freeze()
                        } else {
                            b
                        }
                    })
                })
                .boxed();
        }
        Ok(got)
    }

    async fn head(&self, path: &StorePath) -> Result<ObjectMeta> {
        self.handle.enter(FaultOp::Head, path.as_str()).await?;
        self.inner.head(path).await
    }

    async fn list(&self, prefix: Option<&StorePath>) -> Result<Vec<ObjectMeta>> {
        self.handle
            .enter(FaultOp::List, prefix.map(StorePath::as_str).unwrap_or(""))
            .await?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, path: &StorePath) -> Result<()> {
        self.handle.enter(FaultOp::Delete, path.as_str()).await?;
        self.inner.delete(path).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// A torn streaming write: collects the bytes, and at `complete` writes the first half
/// through the inner store's writer, completes it, and reports a failure.
struct TearingWriter {
    inner: Option<Box<dyn ObjectWriter>>,
    path: StorePath,
    buf: BytesMut,
}

#[async_trait]
impl ObjectWriter for TearingWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.buf.extend_from_slice(&data);
        Ok(())
    }
    async fn complete(mut self: Box<Self>) -> Result<()> {
        let total = self.buf.len();
        let half = self.buf.split_to(total / 2).freeze();
        let stored = half.len();
        if let Some(mut w) = self.inner.take() {
            w.write(half).await?;
            w.complete().await?;
        }
        Err(torn_error(&self.path, stored, total))
    }
    async fn abort(mut self: Box<Self>) -> Result<()> {
        match self.inner.take() {
            Some(w) => w.abort().await,
            None => Ok(()),
        }
    }
}

/// A streaming write whose completion takes effect but is reported as failed.
struct AckLosingWriter {
    inner: Box<dyn ObjectWriter>,
    path: StorePath,
}

#[async_trait]
impl ObjectWriter for AckLosingWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.inner.write(data).await
    }
    async fn complete(self: Box<Self>) -> Result<()> {
        self.inner.complete().await?;
        Err(lost_ack_error(&self.path))
    }
    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}
