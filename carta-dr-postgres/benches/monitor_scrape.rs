//! Cost of one monitor refresh (the poll a scrape would trigger) with 10 standby targets and
//! 10 replication slots, against a real PostgreSQL 15, and of serving one scrape.
//!
//! Setup: one primary, one real streaming standby on slot `slot0`, nine more physical slots
//! reserving WAL (`slot1`..`slot9`), and ten standby targets that all point at the one real
//! standby (two real standbys already saturate a 2-core machine). Each target keeps its own
//! connection, so PostgreSQL sees ten standby sessions.
//!
//! Reported: ms per refresh (poll of all 11 targets + metrics rewrite), ms per scrape
//! (encoding only: scrapes never touch PostgreSQL), and SQL statements per refresh.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use carta_dr_postgres::monitor::{Monitor, MonitorConfig, StandbyTarget};
use carta_dr_testkit::PgCluster;
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let primary = PgCluster::builder()
        .conf("max_replication_slots", "20")
        .conf("archive_mode", "on")
        .conf("archive_command", "'true'")
        .start();
    let standby = primary.create_standby(Some("slot0"));
    for i in 1..10 {
        primary.psql(
            "postgres",
            &format!("SELECT pg_create_physical_replication_slot('slot{i}', true)"),
        );
    }
    let config = MonitorConfig {
        cluster: "bench".into(),
        primary: Some(primary.conninfo("postgres")),
        standbys: (0..10)
            .map(|i| StandbyTarget {
                name: format!("s{i}"),
                conninfo: standby.conninfo("postgres"),
            })
            .collect(),
        expected_standbys: vec!["walreceiver".into()],
        ..MonitorConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let monitor = Arc::new(Monitor::new(config, None).expect("monitor"));
    // Warm up: open the connections and prepare the statements once.
    let snap = rt.block_on(monitor.refresh(true));
    assert!(
        snap.standbys.iter().all(|(_, p)| p.status().is_some()),
        "every standby target must be up"
    );
    let slots = snap
        .primary
        .as_ref()
        .and_then(|p| p.status())
        .map(|s| s.slots.len())
        .unwrap_or(0);
    assert_eq!(slots, 10, "ten slots");

    let before = monitor.queries_executed();
    let mut refreshes = 0u64;
    let mut g = c.benchmark_group("monitor");
    g.sample_size(30).measurement_time(Duration::from_secs(10));
    g.bench_function("refresh_10_standbys_10_slots", |b| {
        b.iter(|| {
            refreshes += 1;
            rt.block_on(monitor.refresh(false))
        })
    });
    g.bench_function("scrape_encode", |b| b.iter(|| monitor.encode_classic()));
    g.finish();
    let per = (monitor.queries_executed() - before) as f64 / refreshes.max(1) as f64;
    eprintln!(
        "SQL statements per refresh: {per:.1} (primary 3, pipelined; 1 per standby target); \
         exposition size {} bytes",
        monitor.encode_classic().len()
    );
    drop(standby);
    drop(primary);
}

criterion_group!(benches, bench);
criterion_main!(benches);
