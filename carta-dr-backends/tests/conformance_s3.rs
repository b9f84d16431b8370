//! The conformance suite against `S3Store` on the local S3-compatible server (moto_server,
//! started by `scripts/test.sh`), bare and behind the layers, at the full sizes (16 MiB and
//! 200 MiB objects, 10,000 keys). Each test works under its own unique prefix.
//!
//! The tests take turns: moto_server is not safe against a listing that runs while another
//! client deletes keys (it answers 500), and the suite's bare run must not need retries to
//! pass.

use std::sync::Arc;
use std::time::Duration;

use carta_dr_backends::conformance::{run_all, SuiteOptions};
use carta_dr_backends::layers::{
    CircuitBreakerConfig, CircuitBreakerStore, ConcurrencyLimitStore, FaultStore, RetryPolicy,
    RetryStore,
};
use carta_dr_core::Store;
use carta_dr_testkit::S3Env;

/// Held by each test for its whole run.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn s3(label: &str) -> Arc<dyn Store> {
    let url = S3Env::require().unique_url(label);
    carta_dr_backends::open(&url).unwrap_or_else(|e| panic!("open {url}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_bare() {
    let _turn = ONE_AT_A_TIME.lock().await;
    run_all(s3("conformance-bare"), SuiteOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_behind_retry_breaker_limit() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let backend = s3("conformance-layered");
    let shown = format!("Retry(CircuitBreaker(Limit({backend})))");
    let store: Arc<dyn Store> = Arc::new(RetryStore::new(
        CircuitBreakerStore::new(
            ConcurrencyLimitStore::new(backend, 16),
            CircuitBreakerConfig {
                failure_threshold: 5,
                cool_down: Duration::from_millis(500),
            },
        ),
        RetryPolicy::default(),
    ));
    assert_eq!(store.to_string(), shown);
    run_all(store, SuiteOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_behind_unarmed_faults() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let faults = FaultStore::with_seed(s3("conformance-faults"), 3);
    let handle = faults.handle();
    let store: Arc<dyn Store> = Arc::new(faults);
    assert!(store.to_string().starts_with("Faults("), "{store}");
    run_all(store, SuiteOptions::default()).await;
    assert_eq!(
        handle.counts(),
        Default::default(),
        "an unarmed FaultStore injected faults"
    );
}
