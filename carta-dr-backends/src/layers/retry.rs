//! [`RetryStore`]: retries with capped exponential backoff and full jitter.

use std::fmt;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use carta_dr_core::{
    Capabilities, Error, GetResult, ObjectMeta, ObjectWriter, PutMode, PutOptions, Result, Store,
    StorePath,
};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// When and how often [`RetryStore`] tries again.
///
/// The delay before retry number `n` (counting from 1) is drawn uniformly from
/// `0..=min(max_delay, base_delay * 2^(n-1))`: exponential backoff with "full jitter", which
/// spreads the retries of many clients hit by one outage instead of having them return in
/// lock-step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 disables retrying). At least 1.
    pub max_attempts: u32,
    /// The backoff of the first retry, before jitter.
    pub base_delay: Duration,
    /// The largest backoff, before jitter.
    pub max_delay: Duration,
    /// No retry starts once this much time has passed since the first attempt (and a retry
    /// whose delay would end past it is not made).
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// 8 attempts, 100 ms doubling to at most 10 s, within 2 minutes.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the jittered delay before retry number `retry` (1-based).
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1).min(31);
        self.base_delay
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// Retries the calls of an inner store that fail with a retryable error
/// ([`Error::is_retryable`]), with capped exponential backoff and full jitter, bounded by
/// [`RetryPolicy::max_attempts`] and [`RetryPolicy::max_elapsed`]. When it gives up it
/// returns the last error unchanged. Non-retryable errors (`NotFound`, `AlreadyExists`,
/// `Corrupt`, ...) are returned at once. Each retry is logged at `warn` level.
///
/// What is retried:
///
/// * `head`, `list`, `delete` (delete is idempotent) and overwriting `put`s: the whole call.
/// * `get`: the call that opens the read. Errors in the middle of the returned stream are
///   the caller's (it may re-read the remaining range).
/// * `put_writer`: only the opening of the writer. Bytes already streamed into a writer are
///   not replayed; a failed `write` or `complete` is the caller's to redo.
/// * **Create-only `put`**: a create-only put that failed with a retryable error may still
///   have succeeded (the request reached the backend, the answer was lost). If a retry of it
///   then gets [`Error::AlreadyExists`], the layer reads the stored object back and compares
///   it with the bytes it was writing: identical content means the earlier attempt (or
///   another writer of the very same bytes) created it, and the put returns `Ok`; different
///   content returns the `AlreadyExists`. `AlreadyExists` on the first attempt is returned
///   as is, so a create-only race still has exactly one winner among writers of different
///   bytes.
pub struct RetryStore<S> {
    inner: S,
    policy: RetryPolicy,
    rng: Mutex<StdRng>,
}

impl<S: Store> RetryStore<S> {
    /// Wraps `inner`, with jitter from OS entropy.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Self::with_rng(inner, policy, StdRng::from_entropy())
    }

    /// Wraps `inner`, with jitter drawn from a generator seeded with `seed` (reproducible
    /// delays, for tests).
    pub fn with_seed(inner: S, policy: RetryPolicy, seed: u64) -> Self {
        Self::with_rng(inner, policy, StdRng::seed_from_u64(seed))
    }

    fn with_rng(inner: S, mut policy: RetryPolicy, rng: StdRng) -> Self {
        policy.max_attempts = policy.max_attempts.max(1);
        RetryStore {
            inner,
            policy,
            rng: Mutex::new(rng),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    fn backoff<'a>(&'a self, op: &'static str, path: Option<&'a StorePath>) -> Backoff<'a, S> {
        Backoff {
            store: self,
            op,
            path,
            start: Instant::now(),
            attempt: 1,
        }
    }

    fn jitter(&self, cap: Duration) -> Duration {
        let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        if cap_nanos == 0 {
            return Duration::ZERO;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        Duration::from_nanos(rng.gen_range(0..=cap_nanos))
    }

    /// Whether the object at `path` holds exactly `data`.
    async fn same_content(&self, path: &StorePath, data: &Bytes) -> Result<bool> {
        let got = self.inner.get(path, None).await?;
        if got.meta.size != data.len() as u64 {
            return Ok(false);
        }
        let mut stream = got.stream;
        let mut offset = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let end = offset.saturating_add(chunk.len());
            match data.get(offset..end) {
                Some(expected) if expected == &chunk[..] => offset = end,
                _ => return Ok(false),
            }
        }
        Ok(offset == data.len())
    }
}

/// The retry state of one logical call.
struct Backoff<'a, S> {
    store: &'a RetryStore<S>,
    op: &'static str,
    path: Option<&'a StorePath>,
    start: Instant,
    /// The number of the attempt that just failed (1-based).
    attempt: u32,
}

impl<S: Store> Backoff<'_, S> {
    /// Called with the error of the attempt that just failed: sleeps and returns `Ok` if the
    /// call should be tried again, or returns the error to give up with.
    async fn retry_after(&mut self, err: Error) -> Result<()> {
        let path = self.path.map(StorePath::as_str).unwrap_or("");
        if !err.is_retryable() {
            return Err(err);
        }
        let policy = &self.store.policy;
        if self.attempt >= policy.max_attempts {
            tracing::warn!(
                store = %self.store.inner, op = self.op, path, attempts = self.attempt,
                error = %err, "giving up: attempts exhausted"
            );
            return Err(err);
        }
        let delay = self.store.jitter(policy.backoff_cap(self.attempt));
        let elapsed = self.start.elapsed();
        if elapsed.saturating_add(delay) > policy.max_elapsed {
            tracing::warn!(
                store = %self.store.inner, op = self.op, path, attempts = self.attempt,
                elapsed_ms = elapsed.as_millis() as u64, error = %err,
                "giving up: retry time budget exhausted"
            );
            return Err(err);
        }
        tracing::warn!(
            store = %self.store.inner, op = self.op, path, attempt = self.attempt,
            delay_ms = delay.as_millis() as u64, error = %err, "retrying"
        );
        tokio::time::sleep(delay).await;
        self.attempt += 1;
        Ok(())
    }
}

impl<S: Store> fmt::Debug for RetryStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryStore")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S: Store> fmt::Display for RetryStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retry({})", self.inner)
    }
}

#[async_trait]
impl<S: Store> Store for RetryStore<S> {
    async fn put(&self, path: &StorePath, data: Bytes, opts: PutOptions) -> Result<()> {
        let mut backoff = self.backoff("put", Some(path));
        // Whether an earlier attempt failed in a way that may have stored the object.
        let mut ambiguous = false;
        loop {
            match self.inner.put(path, data.clone(), opts).await {
                Ok(()) => return Ok(()),
                Err(e @ Error::AlreadyExists { .. })
                    if ambiguous && opts.mode == PutMode::Create =>
                {
                    // Resolve by content; the read-back itself is retried under the same
                    // budget.
                    loop {
                        match self.same_content(path, &data).await {
                            Ok(true) => {
                                tracing::info!(
                                    store = %self.inner, path = path.as_str(),
                                    "create-only put: an earlier attempt had stored identical content"
                                );
                                return Ok(());
                            }
                            Ok(false) => return Err(e),
                            // Deleted between the two calls: report what the put saw.
                            Err(Error::NotFound { .. }) => return Err(e),
                            Err(read_err) => backoff.retry_after(read_err).await?,
                        }
                    }
                }
                Err(e) => {
                    if e.is_retryable() {
                        ambiguous = true;
                    }
                    backoff.retry_after(e).await?;
                }
            }
        }
    }

    async fn put_writer(
        &self,
        path: &StorePath,
        opts: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>> {
        let mut backoff = self.backoff("put_writer", Some(path));
        loop {
            match self.inner.put_writer(path, opts).await {
                Ok(w) => return Ok(w),
                Err(e) => backoff.retry_after(e).await?,
            }
        }
    }

    async fn get(&self, path: &StorePath, range: Option<Range<u64>>) -> Result<GetResult> {
        let mut backoff = self.backoff("get", Some(path));
        loop {
            match self.inner.get(path, range.clone()).await {
                Ok(r) => return Ok(r),
                Err(e) => backoff.retry_after(e).await?,
            }
        }
    }

    async fn head(&self, path: &StorePath) -> Result<ObjectMeta> {
        let mut backoff = self.backoff("head", Some(path));
        loop {
            match self.inner.head(path).await {
                Ok(m) => return Ok(m),
                Err(e) => backoff.retry_after(e).await?,
            }
        }
    }

    async fn list(&self, prefix: Option<&StorePath>) -> Result<Vec<ObjectMeta>> {
        let mut backoff = self.backoff("list", prefix);
        loop {
            match self.inner.list(prefix).await {
                Ok(l) => return Ok(l),
                Err(e) => backoff.retry_after(e).await?,
            }
        }
    }

    async fn delete(&self, path: &StorePath) -> Result<()> {
        let mut backoff = self.backoff("delete", Some(path));
        loop {
            match self.inner.delete(path).await {
                Ok(()) => return Ok(()),
                Err(e) => backoff.retry_after(e).await?,
            }
        }
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_cap_doubles_then_saturates() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(60),
        };
        assert_eq!(p.backoff_cap(1), Duration::from_millis(100));
        assert_eq!(p.backoff_cap(2), Duration::from_millis(200));
        assert_eq!(p.backoff_cap(4), Duration::from_millis(800));
        assert_eq!(p.backoff_cap(5), Duration::from_secs(1));
        assert_eq!(p.backoff_cap(1000), Duration::from_secs(1));
    }
}
