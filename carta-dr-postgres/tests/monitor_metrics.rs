//! The exposition: every family set from a full snapshot passes `promtool check metrics`;
//! a target that goes down keeps only its `up` series; absent records export nothing; the
//! store records are read from a store.

mod monitor_support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use carta_dr_backends::MemoryStore;
use carta_dr_core::envelope::{self, EnvelopeOptions};
use carta_dr_core::traits::{BackupKind, Verdict};
use carta_dr_core::{BackupId, Lsn, PutOptions, Store, StorePath};
use carta_dr_postgres::monitor::metrics::Metrics;
use carta_dr_postgres::monitor::records::{BackupRecord, DrillRecord, VerificationRecord};
use carta_dr_postgres::monitor::snapshot::{
    ArchiverStatus, PrimaryStatus, Probe, ReplicationRow, SlotRow, StandbyStatus, StoreStatus,
    WalArchiveStatus,
};
use carta_dr_postgres::monitor::store::read_store;
use carta_dr_postgres::monitor::{Monitor, MonitorConfig, Snapshot, StandbyTarget};

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn backup(secs: u64, kind: BackupKind, size: u64) -> BackupRecord {
    BackupRecord {
        id: BackupId::from_time(t(secs)),
        kind,
        start_time: secs - 60,
        stop_time: secs,
        original_size: size,
        stored_size: size / 2,
    }
}

fn full_snapshot() -> Snapshot {
    let now = SystemTime::now();
    Snapshot {
        taken_at: now,
        primary: Some(Probe::Up {
            status: PrimaryStatus {
                in_recovery: false,
                current_lsn: Some(Lsn(0x3000_0000)),
                replication: vec![ReplicationRow {
                    application_name: "s1".into(),
                    state: "streaming".into(),
                    sync_state: "async".into(),
                    sent_lsn: Some(Lsn(0x3000_0000)),
                    write_lsn: Some(Lsn(0x2FFF_0000)),
                    flush_lsn: Some(Lsn(0x2FFF_0000)),
                    replay_lsn: Some(Lsn(0x2FF0_0000)),
                    write_lag: Some(0.001),
                    flush_lag: Some(0.002),
                    replay_lag: Some(0.5),
                }],
                slots: vec![
                    SlotRow {
                        slot_name: "s1".into(),
                        slot_type: "physical".into(),
                        active: true,
                        wal_status: Some("reserved".into()),
                        safe_wal_size: Some(1 << 30),
                        retained_bytes: Some(0x10_0000),
                    },
                    SlotRow {
                        slot_name: "gone".into(),
                        slot_type: "physical".into(),
                        active: false,
                        wal_status: None,
                        safe_wal_size: None,
                        retained_bytes: None,
                    },
                ],
                archiver: ArchiverStatus {
                    enabled: true,
                    archived_count: 42,
                    failed_count: 3,
                    last_archived_time: Some(1_700_000_100.0),
                    last_failed_time: Some(1_700_000_000.0),
                    pending_files: 1,
                    oldest_pending_seconds: 2.5,
                },
            },
            took: Duration::from_millis(3),
        }),
        standbys: vec![
            (
                "s1".into(),
                Probe::Up {
                    status: StandbyStatus {
                        in_recovery: true,
                        receive_lsn: Some(Lsn(0x2FFF_0000)),
                        replay_lsn: Some(Lsn(0x2FF0_0000)),
                        last_replay_time: Some(1_700_000_000.0),
                        now: 1_700_000_010.0,
                        receiver_status: Some("streaming".into()),
                        receiver_last_message_age: Some(0.1),
                    },
                    took: Duration::from_millis(2),
                },
            ),
            (
                "s2".into(),
                Probe::Down {
                    error: "connection refused".into(),
                    took: Duration::from_millis(1),
                },
            ),
        ],
        store: Some(Probe::Up {
            status: StoreStatus {
                wal: Some(WalArchiveStatus {
                    newest_path: "wal/00000001/00000000/000000010000000000000003".into(),
                    newest_modified: t(1_700_000_100),
                    objects: 3,
                    bytes: 3 << 24,
                }),
                backup_count: 3,
                recent_backups: vec![
                    backup(1_700_000_050, BackupKind::Full, 1300),
                    backup(1_699_990_000, BackupKind::Full, 1000),
                    backup(1_699_980_000, BackupKind::Logical, 500),
                ],
                oldest_backup: Some(backup(1_699_980_000, BackupKind::Logical, 500)),
                verification: Some(VerificationRecord {
                    subject: "wal".into(),
                    finished_at: 1_700_000_060,
                    verdict: Verdict::Clean,
                    findings: 0,
                }),
                drill: Some(DrillRecord {
                    finished_at: 1_700_000_070,
                    success: true,
                    rto_seconds: 42.0,
                    rpo_seconds: Some(1.5),
                }),
                unreadable: vec![],
            },
            took: Duration::from_millis(4),
        }),
    }
}

fn config() -> MonitorConfig {
    MonitorConfig {
        cluster: "test".into(),
        primary: Some("host=127.0.0.1 port=1 user=postgres".into()),
        standbys: vec![
            StandbyTarget {
                name: "s1".into(),
                conninfo: "host=127.0.0.1 port=1".into(),
            },
            StandbyTarget {
                name: "s2".into(),
                conninfo: "host=127.0.0.1 port=1".into(),
            },
        ],
        expected_standbys: vec!["s1".into(), "s2".into()],
        ..MonitorConfig::default()
    }
}

fn promtool_check(text: &str) -> (bool, String) {
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
    let out = child.wait_with_output().expect("promtool output");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn full_exposition_passes_promtool_check_metrics() {
    let c = config();
    let m = Metrics::new(&c);
    m.apply(&c, &full_snapshot());
    m.observe_slo("replication_lag", true);
    let text = m.encode_classic();
    let (ok, out) = promtool_check(&text);
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}\n---\n{text}"
    );

    // Spot-check the mapping.
    assert_eq!(
        value(
            &text,
            r#"carta_dr_target_up{cluster="test",target="s2",role="standby"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            r#"carta_dr_replication_lag_bytes{cluster="test",application_name="s1",sync_state="async",stage="replay"}"#
        ),
        Some((0x3000_0000u64 - 0x2FF0_0000) as f64)
    );
    assert_eq!(
        value(
            &text,
            r#"carta_dr_replication_standby_connected{cluster="test",application_name="s2"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&text, r#"carta_dr_archiver_archived_total{cluster="test"}"#),
        Some(42.0)
    );
    assert_eq!(
        value(&text, r#"carta_dr_archiver_failing{cluster="test"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            r#"carta_dr_backup_previous_size_bytes{cluster="test",kind="full"}"#
        ),
        Some(1000.0)
    );
    assert!(!text.contains(r#"carta_dr_backup_previous_size_bytes{cluster="test",kind="logical"}"#));
    assert_eq!(
        value(
            &text,
            r#"carta_dr_slot_wal_status{cluster="test",slot_name="s1",wal_status="reserved"}"#
        ),
        Some(1.0)
    );
    // The slot with NULL wal_status/restart_lsn exports no invented values.
    assert!(!text.contains(r#"slot_name="gone",wal_status"#));
    assert!(!text.contains(r#"carta_dr_slot_retained_bytes{cluster="test",slot_name="gone"}"#));
    assert_eq!(
        value(
            &text,
            r#"carta_dr_standby_replay_delay_seconds{cluster="test",target="s1"}"#
        ),
        Some(10.0)
    );
    assert_eq!(
        value(
            &text,
            r#"carta_dr_slo_events_total{cluster="test",slo="replication_lag"}"#
        ),
        Some(1.0)
    );
}

#[test]
fn a_target_that_goes_down_keeps_only_its_up_series() {
    let c = config();
    let m = Metrics::new(&c);
    let mut snap = full_snapshot();
    m.apply(&c, &snap);
    assert!(m.encode().contains("carta_dr_replication_lag_bytes{"));
    snap.primary = Some(Probe::Down {
        error: "timeout".into(),
        took: Duration::from_secs(2),
    });
    snap.standbys[0].1 = Probe::Down {
        error: "refused".into(),
        took: Duration::ZERO,
    };
    m.apply(&c, &snap);
    let text = m.encode_classic();
    assert_eq!(
        value(
            &text,
            r#"carta_dr_target_up{cluster="test",target="primary",role="primary"}"#
        ),
        Some(0.0)
    );
    for gone in [
        "carta_dr_replication_lag_bytes{",
        "carta_dr_replication_standby_connected{",
        "carta_dr_slot_",
        "carta_dr_archiver_archived_total{",
        "carta_dr_primary_wal_lsn_bytes{",
        "carta_dr_standby_replay_lsn_bytes{",
    ] {
        assert!(
            !text.contains(gone),
            "{gone} survived the target going down:\n{text}"
        );
    }
    let (ok, out) = promtool_check(&text);
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}"
    );
}

#[test]
fn absent_records_export_nothing() {
    let c = config();
    let m = Metrics::new(&c);
    let mut snap = full_snapshot();
    snap.store = Some(Probe::Up {
        status: StoreStatus::default(),
        took: Duration::ZERO,
    });
    m.apply(&c, &snap);
    let text = m.encode_classic();
    for rec in ["wal", "backup", "verification", "drill"] {
        assert_eq!(
            value(
                &text,
                &format!(r#"carta_dr_records_found{{cluster="test",record="{rec}"}}"#)
            ),
            Some(0.0),
            "{rec}"
        );
    }
    for absent in [
        "carta_dr_backup_last_timestamp_seconds{",
        "carta_dr_verification_last_verdict{",
        "carta_dr_drill_last_timestamp_seconds{",
        "carta_dr_pitr_window_seconds{",
        "carta_dr_wal_archive_newest_timestamp_seconds{",
    ] {
        assert!(!text.contains(absent), "{absent} exported without a record");
    }
}

#[tokio::test]
async fn records_are_read_from_the_store() {
    let store = MemoryStore::new();
    let opts = EnvelopeOptions::zstd(3);
    // Records are sealed like every object carta-dr writes; `raw` writes bytes as they are.
    let raw = |p: &str, v: Vec<u8>| {
        let store = &store;
        let p = StorePath::new(p).unwrap();
        async move {
            store
                .put(&p, Bytes::from(v), PutOptions::overwrite())
                .await
                .unwrap()
        }
    };
    let put = |p: &'static str, v: String| {
        let sealed = envelope::seal(&opts, v.as_bytes()).unwrap();
        raw(p, sealed)
    };
    raw("wal/00000001/00000000/000000010000000000000001", vec![1]).await;
    raw("wal/00000001/00000000/000000010000000000000002", vec![1, 2]).await;
    // Not segments: they do not count as archived WAL.
    raw("wal/cluster.json", vec![0; 100]).await;
    raw("wal/history/00000002.history", vec![0; 100]).await;
    let older = backup(1_699_000_000, BackupKind::Full, 1000);
    let newer = backup(1_700_000_000, BackupKind::Full, 1500);
    for b in [&older, &newer] {
        let path: &'static str = format!("backups/{}/backup.json", b.id).leak();
        put(path, serde_json::to_string(b).unwrap()).await;
    }
    put("backups/not-an-id/backup.json", "{}".into()).await;
    put(
        "status/verify.json",
        serde_json::to_string(&VerificationRecord {
            subject: "wal".into(),
            finished_at: 1_700_000_000,
            verdict: Verdict::Corrupt,
            findings: 2,
        })
        .unwrap(),
    )
    .await;
    put("status/drill.json", "not json".into()).await;

    let st = read_store(&store, None).await.unwrap();
    let wal = st.wal.as_ref().unwrap();
    assert_eq!((wal.objects, wal.bytes), (2, 3));
    assert_eq!(st.backup_count, 2);
    assert_eq!(st.recent_backups, vec![newer, older.clone()]);
    assert_eq!(st.oldest_backup, Some(older));
    assert_eq!(st.verification.as_ref().unwrap().verdict, Verdict::Corrupt);
    assert!(st.drill.is_none());
    assert_eq!(st.unreadable, vec!["status/drill.json".to_string()]);

    // Through a Monitor with unreachable databases: the store series are there, the
    // databases are down, and nothing crashes.
    let mut c = config();
    c.timeout_seconds = 1.0;
    let monitor = Monitor::new(c, Some(Arc::new(store) as Arc<dyn Store>)).unwrap();
    monitor.refresh(true).await;
    let text = monitor.encode_classic();
    assert_eq!(
        value(
            &text,
            r#"carta_dr_target_up{cluster="test",target="primary",role="primary"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            r#"carta_dr_target_up{cluster="test",target="store",role="store"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            r#"carta_dr_verification_last_verdict{cluster="test",verdict="corrupt"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            r#"carta_dr_store_unreadable_records{cluster="test"}"#
        ),
        Some(1.0)
    );
    let (ok, out) = promtool_check(&text);
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}"
    );
}
