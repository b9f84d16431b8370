//! Store layers: wrappers that take any [`Store`](carta_dr_core::Store) (including an
//! `Arc<dyn Store>`) and are a `Store` themselves.
//!
//! | layer | prints as | does |
//! |---|---|---|
//! | [`RetryStore`] | `Retry(..)` | retries retryable errors with capped exponential backoff and full jitter, bounded by attempts and elapsed time |
//! | [`CircuitBreakerStore`] | `CircuitBreaker(..)` | after N consecutive retryable failures fails fast with `Unavailable` until a cool-down probe succeeds |
//! | [`ConcurrencyLimitStore`] | `Limit(..)` | bounds the number of calls (and open read streams and writers) in flight |
//! | [`FaultStore`] | `Faults(..)` | injects failures, latency, bit flips, dropped and torn writes, for tests |
//!
//! # The safe order
//!
//! From the outside in:
//!
//! ```text
//! Retry( CircuitBreaker( Limit( backend ) ) )          production
//! Retry( CircuitBreaker( Limit( Faults( backend ) ) ) ) tests
//! ```
//!
//! * **Retry outside the breaker.** Each retry attempt passes through the breaker, so the
//!   breaker counts every failed attempt, and once it opens the retry layer's next attempt
//!   fails fast with `Unavailable` (itself retryable, so the retry layer backs off and tries
//!   again after its jittered delay, which is when the breaker's cool-down lets a probe
//!   through). With the breaker outside the retry layer, one logical call would burn all its
//!   attempts against a dead backend before the breaker ever saw a single failure.
//! * **Limit innermost of the production layers.** A permit is held only while a call is
//!   really talking to the backend, not while the retry layer sleeps between attempts, and
//!   calls the breaker rejects never queue for a permit.
//! * **Faults innermost.** Injected faults then look exactly like backend faults to every
//!   other layer, which is what a test of those layers wants. A `FaultStore` with no faults
//!   armed is a transparent pass-through.
//!
//! `Display` prints the chain, for example `Retry(CircuitBreaker(Limit(Local(/repo))))`.
//!
//! ```
//! use std::sync::Arc;
//! use carta_dr_backends::MemoryStore;
//! use carta_dr_backends::layers::{
//!     CircuitBreakerConfig, CircuitBreakerStore, ConcurrencyLimitStore, RetryPolicy, RetryStore,
//! };
//!
//! let backend = MemoryStore::new();
//! let store = RetryStore::new(
//!     CircuitBreakerStore::new(
//!         ConcurrencyLimitStore::new(backend, 16),
//!         CircuitBreakerConfig::default(),
//!     ),
//!     RetryPolicy::default(),
//! );
//! assert_eq!(store.to_string(), "Retry(CircuitBreaker(Limit(Memory)))");
//! let _shared: Arc<dyn carta_dr_core::Store> = Arc::new(store);
//! ```

mod circuit;
mod fault;
mod limit;
mod retry;

pub use circuit::{CircuitBreakerConfig, CircuitBreakerStore, CircuitState};
pub use fault::{BitFlip, FaultCounts, FaultHandle, FaultOp, FaultStore};
pub use limit::ConcurrencyLimitStore;
pub use retry::{RetryPolicy, RetryStore};
