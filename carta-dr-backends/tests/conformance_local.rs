//! The conformance suite against `LocalStore` on a real directory, bare and behind the
//! layers.

use std::sync::Arc;
use std::time::Duration;

use carta_dr_backends::conformance::{run_all, SuiteOptions};
use carta_dr_backends::layers::{
    CircuitBreakerConfig, CircuitBreakerStore, ConcurrencyLimitStore, FaultStore, RetryPolicy,
    RetryStore,
};
use carta_dr_backends::LocalStore;
use carta_dr_core::Store;

fn local(dir: &tempfile::TempDir) -> LocalStore {
    LocalStore::open(dir.path().join("repo"))
        .unwrap_or_else(|e| panic!("open a local store in {}: {e}", dir.path().display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_bare() {
    let dir = tempfile::tempdir().unwrap();
    run_all(Arc::new(local(&dir)), SuiteOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_behind_retry_breaker_limit() {
    let dir = tempfile::tempdir().unwrap();
    let backend = local(&dir);
    let shown = format!("Retry(CircuitBreaker(Limit({backend})))");
    let store: Arc<dyn Store> = Arc::new(RetryStore::new(
        CircuitBreakerStore::new(
            ConcurrencyLimitStore::new(backend, 16),
            CircuitBreakerConfig {
                failure_threshold: 5,
                cool_down: Duration::from_millis(200),
            },
        ),
        RetryPolicy::default(),
    ));
    assert_eq!(store.to_string(), shown);
    run_all(store, SuiteOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_behind_unarmed_faults() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultStore::with_seed(local(&dir), 2);
    let handle = faults.handle();
    let store: Arc<dyn Store> = Arc::new(faults);
    assert!(store.to_string().starts_with("Faults(Local("), "{store}");
    run_all(store, SuiteOptions::default()).await;
    assert_eq!(
        handle.counts(),
        Default::default(),
        "an unarmed FaultStore injected faults"
    );
}
