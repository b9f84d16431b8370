//! The monitor against a real PostgreSQL 15 primary with a streaming standby on a slot, and a
//! real Prometheus scraping it with the generated rules loaded.
//!
//! * under pgbench load the lag metrics move, and drain back to zero when the load stops;
//! * stopping the standby raises replica-down and the slot's retained WAL grows;
//! * the exposition passes `promtool check metrics`, Prometheus scrapes the OpenMetrics form,
//!   and its `CartaDrReplicaDown` alert reaches `firing` while the standby is stopped.

mod monitor_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use carta_dr_postgres::monitor::{rules, serve, Monitor, MonitorConfig, StandbyTarget};
use carta_dr_testkit::PgCluster;
use monitor_support::{http, wait_for, KillOnDrop};

/// One parsed sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest.trim_end_matches('}');
                let mut m = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    if let Some((k, v)) = pair.split_once("=\"") {
                        m.insert(k.to_string(), v.trim_end_matches('"').to_string());
                    }
                }
                (n.to_string(), m)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        out.push((name, labels, v));
    }
    out
}

fn find(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

fn scrape(addr: &str) -> (String, Vec<Sample>) {
    let (status, body) = http("GET", addr, "/metrics", None).expect("scraping the monitor");
    assert_eq!(status, 200, "{body}");
    let samples = parse(&body);
    (body, samples)
}

fn promtool_check(text: &str) {
    let mut child = Command::new(monitor_support::promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool");
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && msg.trim().is_empty(),
        "promtool check metrics: {msg}"
    );
}

/// The state of `alertname` in Prometheus (`pending`, `firing`), if it is active.
fn prometheus_alert_state(addr: &str, alertname: &str) -> Option<String> {
    let (status, body) = http("GET", addr, "/api/v1/alerts", None).ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == alertname)
        .and_then(|a| a["state"].as_str().map(str::to_string))
}

#[test]
fn lag_replica_down_and_slot_growth_on_a_real_cluster_scraped_by_prometheus() {
    let prometheus = monitor_support::require_tool("prometheus", "apt-get install -y prometheus");
    let primary = PgCluster::builder()
        .conf("archive_mode", "on")
        .conf("archive_command", "'true'")
        .start();
    let mut standby = primary.create_standby(Some("standby1"));

    let mut config = MonitorConfig {
        cluster: "pgtest".into(),
        primary: Some(primary.conninfo("postgres")),
        standbys: vec![StandbyTarget {
            name: "standby1".into(),
            conninfo: standby.conninfo("postgres"),
        }],
        // pg_basebackup -R leaves application_name unset: the WAL receiver's default.
        expected_standbys: vec!["walreceiver".into()],
        interval_seconds: 0.5,
        timeout_seconds: 2.0,
        ..MonitorConfig::default()
    };
    config.thresholds.alert_for_seconds = 3;

    // The exporter, on a runtime of its own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let monitor = Arc::new(Monitor::new(config.clone(), None).unwrap());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(serve(
        monitor.clone(),
        "127.0.0.1:0".parse().unwrap(),
        async {
            let _ = stop_rx.await;
        },
        move |a| {
            let _ = addr_tx.send(a);
        },
    ));
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the monitor to bind")
        .to_string();

    // Healthy: everything up, the standby streams on its slot.
    let (text, s) = wait_for("a healthy first scrape", Duration::from_secs(30), || {
        let (text, s) = scrape(&addr);
        let ok = find(
            &s,
            "carta_dr_replication_standby_connected",
            &[("application_name", "walreceiver")],
        ) == Some(1.0)
            && find(&s, "carta_dr_target_up", &[("target", "standby1")]) == Some(1.0)
            && find(&s, "carta_dr_slot_active", &[("slot_name", "standby1")]) == Some(1.0);
        ok.then_some((text, s))
    });
    assert_eq!(
        find(&s, "carta_dr_target_up", &[("target", "primary")]),
        Some(1.0)
    );
    assert_eq!(
        find(&s, "carta_dr_target_in_recovery", &[("target", "standby1")]),
        Some(1.0)
    );
    assert_eq!(find(&s, "carta_dr_archiver_enabled", &[]), Some(1.0));
    assert_eq!(
        find(
            &s,
            "carta_dr_standby_wal_receiver_streaming",
            &[("target", "standby1")]
        ),
        Some(1.0)
    );
    promtool_check(&text);

    // Load: the lag metrics move at some poll.
    let init = primary
        .command("pgbench")
        .args(["-i", "-s", "5", "-q", "postgres"])
        .output()
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut bench = KillOnDrop(
        primary
            .command("pgbench")
            .args(["-c", "4", "-j", "2", "-T", "20", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbench"),
    );
    let moved = wait_for(
        "replication lag to show under load",
        Duration::from_secs(25),
        || {
            let (_, s) = scrape(&addr);
            let app = [("application_name", "walreceiver"), ("stage", "replay")];
            let bytes = find(&s, "carta_dr_replication_lag_bytes", &app).unwrap_or(0.0);
            let secs = find(&s, "carta_dr_replication_lag_seconds", &app).unwrap_or(0.0);
            (bytes > 0.0 || secs > 0.0).then_some((bytes, secs))
        },
    );
    eprintln!("under load: replay lag {} bytes, {} s", moved.0, moved.1);
    let _ = bench.0.wait();

    // Load stopped: the lag drains to zero (bytes at every stage, and seconds).
    wait_for("replication lag to drain", Duration::from_secs(60), || {
        let (_, s) = scrape(&addr);
        let zero = ["sent", "write", "flush", "replay"].iter().all(|stage| {
            find(
                &s,
                "carta_dr_replication_lag_bytes",
                &[("application_name", "walreceiver"), ("stage", stage)],
            ) == Some(0.0)
        }) && find(
            &s,
            "carta_dr_replication_lag_seconds",
            &[("application_name", "walreceiver"), ("stage", "replay")],
        ) == Some(0.0)
            && find(
                &s,
                "carta_dr_standby_replay_delay_seconds",
                &[("target", "standby1")],
            ) == Some(0.0);
        zero.then_some(())
    });

    // A real Prometheus scrapes the exporter and evaluates the generated rules.
    let pdir = tempfile::tempdir().unwrap();
    rules::write_all(&config, pdir.path()).unwrap();
    let prom_port = monitor_support::free_port();
    let prom_addr = format!("127.0.0.1:{prom_port}");
    std::fs::write(
        pdir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - replication.yml\n  - slo.yml\n\
             scrape_configs:\n  - job_name: carta-dr\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let _prom = KillOnDrop(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                pdir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                pdir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus"),
    );
    wait_for(
        "Prometheus to scrape the exporter",
        Duration::from_secs(60),
        || {
            let (status, body) = http(
                "GET",
                &prom_addr,
                "/api/v1/query?query=carta_dr_target_up",
                None,
            )
            .ok()?;
            (status == 200 && body.contains("\"primary\"")).then_some(())
        },
    );
    assert_eq!(
        prometheus_alert_state(&prom_addr, "CartaDrReplicaDown"),
        None
    );

    // The standby stops: replica down, the slot goes inactive and its retained WAL grows.
    let (_, s) = scrape(&addr);
    let retained_before = find(
        &s,
        "carta_dr_slot_retained_bytes",
        &[("slot_name", "standby1")],
    )
    .expect("slot retained bytes");
    standby.stop();
    primary.psql(
        "postgres",
        "CREATE TABLE grow AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 50000) g",
    );
    let (text, s) = wait_for(
        "replica down and slot growth in the metrics",
        Duration::from_secs(30),
        || {
            let (text, s) = scrape(&addr);
            let down = find(
                &s,
                "carta_dr_replication_standby_connected",
                &[("application_name", "walreceiver")],
            ) == Some(0.0)
                && find(&s, "carta_dr_target_up", &[("target", "standby1")]) == Some(0.0)
                && find(&s, "carta_dr_slot_active", &[("slot_name", "standby1")]) == Some(0.0);
            let grown = find(
                &s,
                "carta_dr_slot_retained_bytes",
                &[("slot_name", "standby1")],
            )
            .is_some_and(|v| v > retained_before + 1_000_000.0);
            (down && grown).then_some((text, s))
        },
    );
    eprintln!(
        "slot retained WAL: {retained_before} -> {:?} bytes",
        find(
            &s,
            "carta_dr_slot_retained_bytes",
            &[("slot_name", "standby1")]
        )
    );
    // Nothing stale from the stopped standby survives.
    assert!(find(
        &s,
        "carta_dr_standby_replay_lsn_bytes",
        &[("target", "standby1")]
    )
    .is_none());
    promtool_check(&text);

    wait_for(
        "Prometheus to fire CartaDrReplicaDown",
        Duration::from_secs(60),
        || {
            (prometheus_alert_state(&prom_addr, "CartaDrReplicaDown").as_deref() == Some("firing"))
                .then_some(())
        },
    );
    // The root cause of the standby's problems fires; the primary is fine.
    assert_eq!(
        prometheus_alert_state(&prom_addr, "CartaDrPrimaryDown"),
        None
    );

    let _ = stop_tx.send(());
    rt.block_on(server).unwrap().unwrap();
    eprintln!(
        "{} SQL statements executed by the monitor",
        monitor.queries_executed()
    );
}
