//! Monitor configuration: what to poll, how often, the alert thresholds and the SLOs.
//!
//! The same [`MonitorConfig`] drives the exporter and the rule generator, so the thresholds
//! the exporter's SLI counters use and those the alert rules compare against never drift
//! apart. It deserializes from the `[monitor]` table of the carta-dr TOML configuration;
//! every field has a default, so an empty table is valid. The store the monitor reads is the
//! repository (`repo`, `--repo`), not part of this table.

use std::time::Duration;

use carta_dr_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// One standby the monitor polls directly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbyTarget {
    /// The name used in the `target` label.
    pub name: String,
    /// A libpq-style connection string (`host=... port=... user=... dbname=...`).
    pub conninfo: String,
}

/// Alert thresholds, in base units (seconds, bytes, ratios).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Replay lag above which a ticket (severity `ticket`) is raised.
    pub lag_warning_seconds: f64,
    /// Replay lag above which the on-call is paged.
    pub lag_critical_seconds: f64,
    /// WAL an inactive slot may retain before it is reported as piling up.
    pub slot_retained_bytes: f64,
    /// A slot's `safe_wal_size` below which it is about to be invalidated (page).
    pub slot_safe_wal_size_bytes: f64,
    /// How long a finished WAL segment may wait for archiving before the archive is stale.
    pub wal_archive_stale_seconds: f64,
    /// Age of the newest backup above which backups are stale (25 h for daily backups).
    pub backup_stale_seconds: f64,
    /// Relative size change between the last two backups of a kind that is reported.
    pub backup_size_change_ratio: f64,
    /// Age of the last recovery drill above which a drill is overdue.
    pub drill_max_age_seconds: f64,
    /// How long a condition must hold before an alert fires (`for:`).
    pub alert_for_seconds: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            lag_warning_seconds: 30.0,
            lag_critical_seconds: 300.0,
            slot_retained_bytes: 1024.0 * 1024.0 * 1024.0,
            slot_safe_wal_size_bytes: 256.0 * 1024.0 * 1024.0,
            wal_archive_stale_seconds: 900.0,
            backup_stale_seconds: 25.0 * 3600.0,
            backup_size_change_ratio: 0.2,
            drill_max_age_seconds: 30.0 * 86400.0,
            alert_for_seconds: 120,
        }
    }
}

/// One service-level objective. When a table for an SLO is given, all three fields are
/// required.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// The good fraction promised, for example `0.999`.
    pub objective: f64,
    /// The compliance period in days (the error budget is `1 - objective` of it).
    pub window_days: u32,
    /// The SLI's threshold: an observation is good when the measured value is at most this.
    pub threshold_seconds: f64,
}

/// The three SLOs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SloConfig {
    /// Replay lag of every expected standby stays under the threshold.
    pub replication_lag: Slo,
    /// No finished WAL segment waits for archiving longer than the threshold.
    pub wal_archive_freshness: Slo,
    /// The newest backup is younger than the threshold.
    pub backup_freshness: Slo,
}

impl Default for SloConfig {
    fn default() -> Self {
        SloConfig {
            replication_lag: Slo {
                objective: 0.999,
                window_days: 30,
                threshold_seconds: 60.0,
            },
            wal_archive_freshness: Slo {
                objective: 0.999,
                window_days: 30,
                threshold_seconds: 600.0,
            },
            backup_freshness: Slo {
                objective: 0.99,
                window_days: 30,
                threshold_seconds: 25.0 * 3600.0,
            },
        }
    }
}

/// The `[monitor]` configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// The value of the `cluster` label on every exported series; alert inhibition matches on
    /// it.
    pub cluster: String,
    /// The primary's connection string.
    pub primary: Option<String>,
    /// Standbys polled directly.
    pub standbys: Vec<StandbyTarget>,
    /// `application_name`s that must appear in the primary's `pg_stat_replication`; a missing
    /// one is a replica down.
    pub expected_standbys: Vec<String>,
    /// Seconds between polls of PostgreSQL.
    pub interval_seconds: f64,
    /// Seconds between reads of the store (listing the archive is the expensive part).
    pub store_interval_seconds: f64,
    /// Per-target timeout of one poll, in seconds.
    pub timeout_seconds: f64,
    /// Alert thresholds.
    pub thresholds: Thresholds,
    /// The SLOs.
    pub slo: SloConfig,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            cluster: "main".into(),
            primary: None,
            standbys: Vec::new(),
            expected_standbys: Vec::new(),
            interval_seconds: 5.0,
            store_interval_seconds: 60.0,
            timeout_seconds: 2.0,
            thresholds: Thresholds::default(),
            slo: SloConfig::default(),
        }
    }
}

fn positive(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "monitor config: {name} must be a positive number, got {v}"
        )))
    }
}

impl MonitorConfig {
    /// Checks the values: positive durations and thresholds, objectives strictly between 0
    /// and 1, unique standby names, a cluster name usable as a label value.
    pub fn validate(&self) -> Result<()> {
        if self.cluster.is_empty() {
            return Err(Error::invalid_input(
                "monitor config: cluster must not be empty",
            ));
        }
        positive("interval_seconds", self.interval_seconds)?;
        positive("store_interval_seconds", self.store_interval_seconds)?;
        positive("timeout_seconds", self.timeout_seconds)?;
        let t = &self.thresholds;
        positive("thresholds.lag_warning_seconds", t.lag_warning_seconds)?;
        positive("thresholds.lag_critical_seconds", t.lag_critical_seconds)?;
        positive("thresholds.slot_retained_bytes", t.slot_retained_bytes)?;
        positive(
            "thresholds.slot_safe_wal_size_bytes",
            t.slot_safe_wal_size_bytes,
        )?;
        positive(
            "thresholds.wal_archive_stale_seconds",
            t.wal_archive_stale_seconds,
        )?;
        positive("thresholds.backup_stale_seconds", t.backup_stale_seconds)?;
        positive(
            "thresholds.backup_size_change_ratio",
            t.backup_size_change_ratio,
        )?;
        positive("thresholds.drill_max_age_seconds", t.drill_max_age_seconds)?;
        for (name, slo) in self.slos() {
            if !(slo.objective > 0.0 && slo.objective < 1.0) {
                return Err(Error::invalid_input(format!(
                    "monitor config: slo.{name}.objective must lie strictly between 0 and 1, got {}",
                    slo.objective
                )));
            }
            if slo.window_days == 0 {
                return Err(Error::invalid_input(format!(
                    "monitor config: slo.{name}.window_days must be at least 1"
                )));
            }
            positive(
                &format!("slo.{name}.threshold_seconds"),
                slo.threshold_seconds,
            )?;
        }
        let mut names: Vec<&str> = self.standbys.iter().map(|s| s.name.as_str()).collect();
        names.push("primary");
        names.push("store");
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::invalid_input(format!(
                "monitor config: target name {:?} is used twice (primary and store are reserved)",
                w[0]
            )));
        }
        Ok(())
    }

    /// The SLOs with their label values, in a fixed order.
    pub fn slos(&self) -> [(&'static str, &Slo); 3] {
        [
            (SLO_REPLICATION_LAG, &self.slo.replication_lag),
            (SLO_WAL_ARCHIVE_FRESHNESS, &self.slo.wal_archive_freshness),
            (SLO_BACKUP_FRESHNESS, &self.slo.backup_freshness),
        ]
    }

    /// The poll interval.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval_seconds.max(0.001))
    }

    /// The store read interval.
    pub fn store_interval(&self) -> Duration {
        Duration::from_secs_f64(self.store_interval_seconds.max(0.001))
    }

    /// The per-target timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_seconds.max(0.001))
    }
}

/// The `slo` label value of the replication-lag SLO.
pub const SLO_REPLICATION_LAG: &str = "replication_lag";
/// The `slo` label value of the WAL-archive freshness SLO.
pub const SLO_WAL_ARCHIVE_FRESHNESS: &str = "wal_archive_freshness";
/// The `slo` label value of the backup freshness SLO.
pub const SLO_BACKUP_FRESHNESS: &str = "backup_freshness";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_refused() {
        let c = MonitorConfig::default();
        c.validate().unwrap();
        let mut bad = c.clone();
        bad.slo.replication_lag.objective = 1.0;
        assert!(bad.validate().is_err());
        let mut bad = c.clone();
        bad.interval_seconds = 0.0;
        assert!(bad.validate().is_err());
        let mut bad = c;
        bad.standbys.push(StandbyTarget {
            name: "primary".into(),
            conninfo: "host=x".into(),
        });
        assert!(bad.validate().is_err());
    }

    #[test]
    fn parses_from_toml_like_json_with_defaults() {
        let c: MonitorConfig = serde_json::from_str(
            r#"{"cluster":"prod","primary":"host=a","standbys":[{"name":"s1","conninfo":"host=b"}],
                "thresholds":{"lag_warning_seconds":10},"slo":{"replication_lag":{"objective":0.99,"window_days":7,"threshold_seconds":5}}}"#,
        )
        .unwrap();
        assert_eq!(c.cluster, "prod");
        assert_eq!(c.thresholds.lag_warning_seconds, 10.0);
        assert_eq!(c.thresholds.lag_critical_seconds, 300.0);
        assert_eq!(c.slo.replication_lag.objective, 0.99);
        assert_eq!(c.slo.replication_lag.window_days, 7);
        assert_eq!(c.slo.backup_freshness.threshold_seconds, 90000.0);
        assert!(serde_json::from_str::<MonitorConfig>(r#"{"nope":1}"#).is_err());
    }
}
