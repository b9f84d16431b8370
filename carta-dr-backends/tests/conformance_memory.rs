//! The conformance suite against `MemoryStore`, bare and behind the layers.

use std::sync::Arc;
use std::time::Duration;

use carta_dr_backends::conformance::{run_all, SuiteOptions};
use carta_dr_backends::layers::{
    CircuitBreakerConfig, CircuitBreakerStore, ConcurrencyLimitStore, FaultStore, RetryPolicy,
    RetryStore,
};
use carta_dr_backends::MemoryStore;
use carta_dr_core::Store;

fn layered(inner: MemoryStore) -> Arc<dyn Store> {
    Arc::new(RetryStore::new(
        CircuitBreakerStore::new(
            ConcurrencyLimitStore::new(inner, 64),
            CircuitBreakerConfig {
                failure_threshold: 5,
                cool_down: Duration::from_millis(200),
            },
        ),
        RetryPolicy::default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_bare() {
    run_all(Arc::new(MemoryStore::new()), SuiteOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_behind_retry_breaker_limit() {
    let store = layered(MemoryStore::new());
    assert_eq!(store.to_string(), "Retry(CircuitBreaker(Limit(Memory)))");
    run_all(store, SuiteOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_behind_unarmed_faults() {
    let faults = FaultStore::with_seed(MemoryStore::new(), 1);
    let handle = faults.handle();
    let store: Arc<dyn Store> = Arc::new(faults);
    assert_eq!(store.to_string(), "Faults(Memory)");
    run_all(store, SuiteOptions::default()).await;
    assert_eq!(
        handle.counts(),
        Default::default(),
        "an unarmed FaultStore injected faults"
    );
}
