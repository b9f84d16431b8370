//! [`CircuitBreakerStore`]: fail fast while a backend is down.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use carta_dr_core::{
    Capabilities, Error, GetResult, ObjectMeta, ObjectWriter, PutOptions, Result, Store, StorePath,
};
use tokio::time::Instant;

/// When [`CircuitBreakerStore`] opens and how long it stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitBreakerConfig {
    /// Consecutive retryable failures that open the circuit. At least 1.
    pub failure_threshold: u32,
    /// How long the circuit stays open before one probe call is let through.
    pub cool_down: Duration,
}

impl Default for CircuitBreakerConfig {
    /// Opens after 5 consecutive failures, probes after 10 s.
    fn default() -> Self {
        CircuitBreakerConfig {
            failure_threshold: 5,
            cool_down: Duration::from_secs(10),
        }
    }
}

/// The state of a [`CircuitBreakerStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through; consecutive failures are counted.
    Closed,
    /// Calls fail fast with [`Error::Unavailable`]. The first call after the cool-down
    /// becomes the probe.
    Open,
    /// One probe call is in flight; other calls fail fast until it ends.
    HalfOpen,
}

#[derive(Debug)]
struct Breaker {
    state: CircuitState,
    consecutive_failures: u32,
    opened_at: Instant,
}

/// What a call's outcome says about the backend.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The backend answered (success, or an answer about the data such as `NotFound`).
    Healthy,
    /// A retryable failure: the backend may be down.
    Failed,
}

fn outcome<T>(r: &Result<T>) -> Outcome {
    match r {
        Err(e) if e.is_retryable() => Outcome::Failed,
        _ => Outcome::Healthy,
    }
}

/// Shared state, also held by open writers.
#[derive(Debug)]
struct Shared {
    config: CircuitBreakerConfig,
    breaker: Mutex<Breaker>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a call, or fails it fast. Returns whether the call is the half-open probe.
    fn admit(&self, store: &dyn fmt::Display, op: &str) -> Result<bool> {
        let mut b = self.lock();
        match b.state {
            CircuitState::Closed => Ok(false),
            CircuitState::Open if b.opened_at.elapsed() >= self.config.cool_down => {
                tracing::info!(store = %store, op, "circuit half-open: letting one probe call through");
                b.state = CircuitState::HalfOpen;
                Ok(true)
            }
            CircuitState::Open => {
                let left = self.config.cool_down.saturating_sub(b.opened_at.elapsed());
                Err(Error::Unavailable {
                    what: format!(
                        "circuit breaker of {store} is open after {} consecutive failures \
                         (next probe in {} ms); {op} not attempted",
                        b.consecutive_failures,
                        left.as_millis()
                    ),
                })
            }
            CircuitState::HalfOpen => Err(Error::Unavailable {
                what: format!(
                    "circuit breaker of {store} is half-open and probing; {op} not attempted"
                ),
            }),
        }
    }

    fn record(&self, store: &dyn fmt::Display, probe: bool, outcome: Outcome) {
        let mut b = self.lock();
        match outcome {
            Outcome::Healthy => {
                if b.state != CircuitState::Closed && probe {
                    tracing::info!(store = %store, "circuit closed: probe succeeded");
                }
                if probe || b.state == CircuitState::Closed {
                    b.state = CircuitState::Closed;
                    b.consecutive_failures = 0;
                }
            }
            Outcome::Failed => {
                b.consecutive_failures = b.consecutive_failures.saturating_add(1);
                let trip = if probe {
                    true
                } else {
                    b.state == CircuitState::Closed
                        && b.consecutive_failures >= self.config.failure_threshold
                };
                if trip {
                    tracing::warn!(
                        store = %store, failures = b.consecutive_failures, probe,
                        cool_down_ms = self.config.cool_down.as_millis() as u64,
                        "circuit open"
                    );
                    b.state = CircuitState::Open;
                    b.opened_at = Instant::now();
                }
            }
        }
    }

    /// A probe that never finished (its future was dropped) re-opens the circuit so that the
    /// next call after the cool-down probes again.
    fn abandon_probe(&self) {
        let mut b = self.lock();
        if b.state == CircuitState::HalfOpen {
            b.state = CircuitState::Open;
            b.opened_at = Instant::now();
        }
    }
}

/// Records a call's outcome; re-opens the circuit if a probe is dropped unfinished.
struct CallGuard<'a> {
    shared: &'a Shared,
    store: &'a (dyn fmt::Display + Sync),
    probe: bool,
    done: bool,
}

impl CallGuard<'_> {
    fn finish<T>(mut self, r: Result<T>) -> Result<T> {
        self.done = true;
        self.shared.record(self.store, self.probe, outcome(&r));
        r
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.shared.abandon_probe();
        }
    }
}

/// A circuit breaker in front of an inner store.
///
/// * **Closed**: calls go through. A call that fails with a retryable error
///   ([`Error::is_retryable`]) counts as a failure; any other outcome, including
///   `NotFound`, `AlreadyExists` and other answers about the data, shows the backend is
///   answering and resets the count.
/// * **Open**: after [`CircuitBreakerConfig::failure_threshold`] consecutive failures, every
///   call fails at once with [`Error::Unavailable`], without touching the backend.
/// * **Half-open**: the first call after [`CircuitBreakerConfig::cool_down`] is let through
///   as a probe while other calls keep failing fast. If the probe's outcome is healthy the
///   circuit closes; if it fails the circuit opens for another cool-down. A probe whose
///   future is dropped before it ends re-opens the circuit.
///
/// The outcome of a `get` is the outcome of opening the read (errors inside the returned
/// stream are not counted). For `put_writer`, opening the writer is the gated call; the
/// outcomes of the writer's `write` and `complete` are counted too, but never gated (a
/// write in progress is not cut off).
pub struct CircuitBreakerStore<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Store> CircuitBreakerStore<S> {
    /// Wraps `inner`; the circuit starts closed.
    pub fn new(inner: S, mut config: CircuitBreakerConfig) -> Self {
        config.failure_threshold = config.failure_threshold.max(1);
        CircuitBreakerStore {
            inner,
            shared: Arc::new(Shared {
                config,
                breaker: Mutex::new(Breaker {
                    state: CircuitState::Closed,
                    consecutive_failures: 0,
                    opened_at: Instant::now(),
                }),
            }),
        }
    }

    /// The current state. An open circuit reports [`CircuitState::Open`] until a call after
    /// the cool-down becomes the probe.
    pub fn state(&self) -> CircuitState {
        self.shared.lock().state
    }

    /// The current count of consecutive retryable failures.
    pub fn consecutive_failures(&self) -> u32 {
        self.shared.lock().consecutive_failures
    }

    /// The configuration in force.
    pub fn config(&self) -> CircuitBreakerConfig {
        self.shared.config
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn admit(&self, op: &str) -> Result<CallGuard<'_>> {
        let probe = self.shared.admit(&self.inner, op)?;
        Ok(CallGuard {
            shared: &self.shared,
            store: &self.inner,
            probe,
            done: false,
        })
    }
}

impl<S: Store> fmt::Debug for CircuitBreakerStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerStore")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .field("state", &self.state())
            .finish()
    }
}

impl<S: Store> fmt::Display for CircuitBreakerStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CircuitBreaker({})", self.inner)
    }
}

/// A writer whose outcomes feed the breaker.
struct BreakerWriter {
    inner: Box<dyn ObjectWriter>,
    shared: Arc<Shared>,
    store: String,
}

impl BreakerWriter {
    fn record<T>(&self, r: Result<T>) -> Result<T> {
        let o = outcome(&r);
        self.shared.record(&self.store, false, o);
        r
    }
}

#[async_trait]
impl ObjectWriter for BreakerWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let r = self.inner.write(data).await;
        self.record(r)
    }

    async fn complete(self: Box<Self>) -> Result<()> {
        let this = *self;
        let r = this.inner.complete().await;
        let o = outcome(&r);
        this.shared.record(&this.store, false, o);
        r
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl<S: Store> Store for CircuitBreakerStore<S> {
    async fn put(&self, path: &StorePath, data: Bytes, opts: PutOptions) -> Result<()> {
        let guard = self.admit("put")?;
        guard.finish(self.inner.put(path, data, opts).await)
    }

    async fn put_writer(
        &self,
        path: &StorePath,
        opts: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>> {
        let guard = self.admit("put_writer")?;
        let w = guard.finish(self.inner.put_writer(path, opts).await)?;
        Ok(Box::new(BreakerWriter {
            inner: w,
            shared: Arc::clone(&self.shared),
            store: self.inner.to_string(),
        }))
    }

    async fn get(&self, path: &StorePath, range: Option<Range<u64>>) -> Result<GetResult> {
        let guard = self.admit("get")?;
        guard.finish(self.inner.get(path, range).await)
    }

    async fn head(&self, path: &StorePath) -> Result<ObjectMeta> {
        let guard = self.admit("head")?;
        guard.finish(self.inner.head(path).await)
    }

    async fn list(&self, prefix: Option<&StorePath>) -> Result<Vec<ObjectMeta>> {
        let guard = self.admit("list")?;
        guard.finish(self.inner.list(prefix).await)
    }

    async fn delete(&self, path: &StorePath) -> Result<()> {
        let guard = self.admit("delete")?;
        guard.finish(self.inner.delete(path).await)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
