//! The three SLIs, evaluated once per poll.
//!
//! The poller runs at a fixed interval, so one observation stands for one interval of time
//! and `good / total` over a window is the fraction of time the SLI was met. The exporter
//! counts observations in `carta_dr_slo_events_total{slo}` and the good ones in
//! `carta_dr_slo_good_events_total{slo}`; the burn-rate rules divide their rates.
//!
//! | SLI | an observation is good when | no observation when |
//! |---|---|---|
//! | `replication_lag` | every expected standby (or, with none configured, every standby seen) is in `pg_stat_replication` with replay lag ≤ threshold. The primary being down, a missing standby, or an unknown lag count as bad. | no primary configured, or no standby expected nor seen |
//! | `wal_archive_freshness` | no finished WAL file has waited for archiving longer than the threshold | no primary configured, the primary is down (it writes no WAL then), or `archive_mode=off` |
//! | `backup_freshness` | the newest backup finished at most the threshold ago (no backup at all is bad) | no store configured, or the store could not be read |

use std::time::SystemTime;

use super::config::{
    MonitorConfig, SLO_BACKUP_FRESHNESS, SLO_REPLICATION_LAG, SLO_WAL_ARCHIVE_FRESHNESS,
};
use super::metrics::effective_lag;
use super::snapshot::{Probe, Snapshot};

/// One SLI's verdict for one poll: `None` when the SLI does not apply.
pub type Observation = (&'static str, Option<bool>);

/// Evaluates the three SLIs on a snapshot.
pub fn evaluate(config: &MonitorConfig, snap: &Snapshot) -> [Observation; 3] {
    [
        (SLO_REPLICATION_LAG, replication_lag(config, snap)),
        (
            SLO_WAL_ARCHIVE_FRESHNESS,
            wal_archive_freshness(config, snap),
        ),
        (SLO_BACKUP_FRESHNESS, backup_freshness(config, snap)),
    ]
}

fn replication_lag(config: &MonitorConfig, snap: &Snapshot) -> Option<bool> {
    let threshold = config.slo.replication_lag.threshold_seconds;
    let primary = snap.primary.as_ref()?;
    let Some(st) = primary.status() else {
        return if config.expected_standbys.is_empty() && config.standbys.is_empty() {
            None
        } else {
            Some(false)
        };
    };
    let rows: Vec<_> = st.replication.iter().filter(|r| r.is_standby()).collect();
    let lag_ok = |row: &&super::snapshot::ReplicationRow| {
        effective_lag(row, row.replay_lag).is_some_and(|v| v <= threshold)
    };
    if config.expected_standbys.is_empty() {
        if rows.is_empty() {
            return None;
        }
        return Some(rows.iter().all(lag_ok));
    }
    Some(config.expected_standbys.iter().all(|app| {
        rows.iter()
            .filter(|r| &r.application_name == app)
            .any(&lag_ok)
    }))
}

fn wal_archive_freshness(config: &MonitorConfig, snap: &Snapshot) -> Option<bool> {
    let st = snap.primary.as_ref()?.status()?;
    if !st.archiver.enabled {
        return None;
    }
    Some(st.archiver.oldest_pending_seconds <= config.slo.wal_archive_freshness.threshold_seconds)
}

fn backup_freshness(config: &MonitorConfig, snap: &Snapshot) -> Option<bool> {
    let Probe::Up { status, .. } = snap.store.as_ref()? else {
        return None;
    };
    let newest = status.recent_backups.iter().map(|b| b.stop_time).max();
    let now = snap
        .taken_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    Some(newest.is_some_and(|t| {
        (now - t as f64).max(0.0) <= config.slo.backup_freshness.threshold_seconds
    }))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::snapshot::{ArchiverStatus, PrimaryStatus, ReplicationRow};
    use carta_dr_core::Lsn;
    use std::time::Duration;

    fn row(app: &str, lag: Option<f64>, sent: u64, replay: u64) -> ReplicationRow {
        ReplicationRow {
            application_name: app.into(),
            state: "streaming".into(),
            sync_state: "async".into(),
            sent_lsn: Some(Lsn(sent)),
            write_lsn: Some(Lsn(replay)),
            flush_lsn: Some(Lsn(replay)),
            replay_lsn: Some(Lsn(replay)),
            write_lag: lag,
            flush_lag: lag,
            replay_lag: lag,
        }
    }

    fn snap(rows: Vec<ReplicationRow>, pending_age: f64) -> Snapshot {
        Snapshot {
            taken_at: SystemTime::now(),
            primary: Some(Probe::Up {
                status: PrimaryStatus {
                    in_recovery: false,
                    current_lsn: Some(Lsn(100)),
                    replication: rows,
                    slots: vec![],
                    archiver: ArchiverStatus {
                        enabled: true,
                        archived_count: 1,
                        failed_count: 0,
                        last_archived_time: None,
                        last_failed_time: None,
                        pending_files: 1,
                        oldest_pending_seconds: pending_age,
                    },
                },
                took: Duration::ZERO,
            }),
            standbys: vec![],
            store: None,
        }
    }

    #[test]
    fn lag_sli_needs_every_expected_standby_under_threshold() {
        let c = MonitorConfig {
            expected_standbys: vec!["a".into(), "b".into()],
            ..MonitorConfig::default()
        };
        let ok = snap(
            vec![row("a", Some(1.0), 10, 10), row("b", None, 10, 10)],
            0.0,
        );
        assert_eq!(evaluate(&c, &ok)[0].1, Some(true));
        let missing = snap(vec![row("a", Some(1.0), 10, 10)], 0.0);
        assert_eq!(evaluate(&c, &missing)[0].1, Some(false));
        let slow = snap(
            vec![row("a", Some(61.0), 10, 5), row("b", None, 10, 10)],
            0.0,
        );
        assert_eq!(evaluate(&c, &slow)[0].1, Some(false));
        // NULL lag while not caught up is unknown, hence bad.
        let unknown = snap(vec![row("a", None, 10, 5), row("b", None, 10, 10)], 0.0);
        assert_eq!(evaluate(&c, &unknown)[0].1, Some(false));
        let mut down = ok.clone();
        down.primary = Some(Probe::Down {
            error: "x".into(),
            took: Duration::ZERO,
        });
        assert_eq!(evaluate(&c, &down)[0].1, Some(false));
        assert_eq!(evaluate(&c, &down)[1].1, None);
    }

    #[test]
    fn archive_freshness_and_backup_sli() {
        let c = MonitorConfig::default();
        assert_eq!(evaluate(&c, &snap(vec![], 10.0))[1].1, Some(true));
        assert_eq!(evaluate(&c, &snap(vec![], 601.0))[1].1, Some(false));
        // No standby expected nor seen: no lag observation.
        assert_eq!(evaluate(&c, &snap(vec![], 0.0))[0].1, None);
        // No store: no backup observation.
        assert_eq!(evaluate(&c, &snap(vec![], 0.0))[2].1, None);
    }
}
