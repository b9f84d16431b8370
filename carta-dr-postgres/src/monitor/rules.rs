//! Prometheus rules and the Alertmanager fragment, generated from a [`MonitorConfig`].
//!
//! * [`replication_rules`] (`replication.yml`): symptom and cause alerts on the exporter's
//!   series, each labelled `severity` = `page`, `ticket` or `info`.
//! * [`slo_rules`] (`slo.yml`): error-ratio recording rules for seven windows, and the
//!   multi-window, multi-burn-rate alerts of the SRE workbook for every SLO: 1h/5m at 14.4x
//!   and 6h/30m at 6x page; 1d/2h at 3x and 3d/6h at 1x open a ticket.
//! * [`alertmanager_fragment`] (`alertmanager.yml`): a route by severity and the inhibit rules
//!   that keep the consequences of a root cause quiet (the primary being down suppresses the
//!   lag, replica, slot, archive and backup alerts it causes). [`alertmanager_full_config`]
//!   embeds it in a minimal complete configuration.
//!
//! Everything is built from typed structs and serialized with `serde_yaml`.

use std::collections::BTreeMap;
use std::path::Path;

use carta_dr_core::{Error, Result};
use serde::Serialize;

use super::config::{
    MonitorConfig, SLO_BACKUP_FRESHNESS, SLO_REPLICATION_LAG, SLO_WAL_ARCHIVE_FRESHNESS,
};

/// A rule file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RuleFile {
    /// Its groups.
    pub groups: Vec<RuleGroup>,
}

/// A rule group.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RuleGroup {
    /// The group's name.
    pub name: String,
    /// Its rules, evaluated in order.
    pub rules: Vec<Rule>,
}

/// An alerting or recording rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Rule {
    /// An alerting rule.
    Alert(AlertRule),
    /// A recording rule.
    Record(RecordRule),
}

/// An alerting rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertRule {
    /// The alert's name.
    pub alert: String,
    /// The PromQL expression.
    pub expr: String,
    /// How long the expression must hold (`for:`), as a Prometheus duration.
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    /// Labels added to the alert (`severity` among them).
    pub labels: BTreeMap<String, String>,
    /// `summary` and `description`.
    pub annotations: BTreeMap<String, String>,
}

/// A recording rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordRule {
    /// The recorded series' name.
    pub record: String,
    /// The PromQL expression.
    pub expr: String,
    /// Labels added to the recorded series.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The `severity` label of alerts that page.
pub const PAGE: &str = "page";
/// The `severity` label of alerts that open a ticket.
pub const TICKET: &str = "ticket";
/// The `severity` label of informational alerts.
pub const INFO: &str = "info";

/// A Prometheus duration for a number of seconds (`90s`, `2m`, `25h`, `30d`).
pub fn duration(seconds: u64) -> String {
    match seconds {
        0 => "0s".into(),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A PromQL number. `f64`'s `Display` never uses an exponent.
fn num(v: f64) -> String {
    format!("{v}")
}

fn alert(
    name: &str,
    expr: String,
    for_seconds: u64,
    severity: &str,
    summary: &str,
    description: &str,
) -> Rule {
    Rule::Alert(AlertRule {
        alert: name.into(),
        expr,
        for_: (for_seconds > 0).then(|| duration(for_seconds)),
        labels: BTreeMap::from([("severity".to_string(), severity.to_string())]),
        annotations: BTreeMap::from([
            ("summary".to_string(), summary.to_string()),
            ("description".to_string(), description.to_string()),
        ]),
    })
}

/// Alert names, shared by the rules, the inhibit rules and the docs.
pub mod names {
    /// The monitor cannot reach the primary.
    pub const PRIMARY_DOWN: &str = "CartaDrPrimaryDown";
    /// The configured primary is in recovery.
    pub const PRIMARY_IN_RECOVERY: &str = "CartaDrPrimaryInRecovery";
    /// The monitor cannot reach a standby.
    pub const STANDBY_UNREACHABLE: &str = "CartaDrStandbyUnreachable";
    /// The monitor cannot read the store.
    pub const STORE_UNREACHABLE: &str = "CartaDrStoreUnreachable";
    /// An expected standby is missing from `pg_stat_replication`.
    pub const REPLICA_DOWN: &str = "CartaDrReplicaDown";
    /// Replay lag over the warning (ticket) or critical (page) threshold.
    pub const REPLICATION_LAG: &str = "CartaDrReplicationLag";
    /// An inactive slot retains WAL.
    pub const SLOT_INACTIVE: &str = "CartaDrSlotInactiveRetainingWal";
    /// A slot is about to lose (or has lost) the WAL it needs.
    pub const SLOT_WAL_AT_RISK: &str = "CartaDrSlotWalAtRisk";
    /// The archiver's last attempt failed.
    pub const ARCHIVER_FAILING: &str = "CartaDrArchiverFailing";
    /// WAL waits too long for archiving, or the store stopped receiving it.
    pub const WAL_ARCHIVE_STALE: &str = "CartaDrWalArchiveStale";
    /// No backup newer than the threshold.
    pub const BACKUP_STALE: &str = "CartaDrBackupStale";
    /// The last backup's size differs from the previous one's by more than the ratio.
    pub const BACKUP_SIZE_CHANGED: &str = "CartaDrBackupSizeChanged";
    /// The last verification found corruption.
    pub const VERIFICATION_FAILED: &str = "CartaDrVerificationFailed";
    /// No recent recovery drill.
    pub const DRILL_OVERDUE: &str = "CartaDrDrillOverdue";
    /// The last recovery drill failed.
    pub const DRILL_FAILED: &str = "CartaDrDrillFailed";
    /// Error budget burning at 14.4x over 1h and 5m.
    pub const BURN_1H: &str = "CartaDrErrorBudgetBurn1h";
    /// Error budget burning at 6x over 6h and 30m.
    pub const BURN_6H: &str = "CartaDrErrorBudgetBurn6h";
    /// Error budget burning at 3x over 1d and 2h.
    pub const BURN_1D: &str = "CartaDrErrorBudgetBurn1d";
    /// Error budget burning at 1x over 3d and 6h.
    pub const BURN_3D: &str = "CartaDrErrorBudgetBurn3d";
}

/// The replication, archive, backup, verification and drill alerts (`replication.yml`).
pub fn replication_rules(config: &MonitorConfig) -> RuleFile {
    use names::*;
    let t = &config.thresholds;
    let f = t.alert_for_seconds;
    let rules = vec![
        alert(
            PRIMARY_DOWN,
            r#"carta_dr_target_up{role="primary"} == 0"#.into(),
            f,
            PAGE,
            "PostgreSQL primary of {{ $labels.cluster }} is unreachable",
            "The monitor cannot query the primary. Replication, archiving and backups depend on it; their alerts are inhibited while this fires.",
        ),
        alert(
            PRIMARY_IN_RECOVERY,
            r#"carta_dr_target_in_recovery{role="primary"} == 1"#.into(),
            f,
            TICKET,
            "The configured primary of {{ $labels.cluster }} is in recovery",
            "pg_is_in_recovery() is true on the server configured as primary: after a failover, point the monitor at the new primary.",
        ),
        alert(
            STANDBY_UNREACHABLE,
            r#"carta_dr_target_up{role="standby"} == 0"#.into(),
            f,
            TICKET,
            "Standby {{ $labels.target }} of {{ $labels.cluster }} is unreachable by the monitor",
            "The monitor cannot query this standby directly.",
        ),
        alert(
            STORE_UNREACHABLE,
            r#"carta_dr_target_up{role="store"} == 0"#.into(),
            f,
            TICKET,
            "Backup store of {{ $labels.cluster }} is unreadable",
            "The monitor cannot list or read the store; backup and drill alerts that depend on it are inhibited.",
        ),
        alert(
            REPLICA_DOWN,
            "carta_dr_replication_standby_connected == 0".into(),
            f,
            PAGE,
            "Standby {{ $labels.application_name }} is not replicating from {{ $labels.cluster }}",
            "The standby is missing from the primary's pg_stat_replication.",
        ),
        alert(
            REPLICATION_LAG,
            format!(
                r#"max by (cluster, application_name) (carta_dr_replication_lag_seconds{{stage="replay"}}) > {}"#,
                num(t.lag_warning_seconds)
            ),
            f,
            TICKET,
            "Standby {{ $labels.application_name }} of {{ $labels.cluster }} lags behind",
            &format!("Replay lag is above {} s.", num(t.lag_warning_seconds)),
        ),
        alert(
            REPLICATION_LAG,
            format!(
                r#"max by (cluster, application_name) (carta_dr_replication_lag_seconds{{stage="replay"}}) > {}"#,
                num(t.lag_critical_seconds)
            ),
            f,
            PAGE,
            "Standby {{ $labels.application_name }} of {{ $labels.cluster }} lags far behind",
            &format!("Replay lag is above {} s.", num(t.lag_critical_seconds)),
        ),
        alert(
            SLOT_INACTIVE,
            format!(
                "carta_dr_slot_active == 0 and on (cluster, slot_name) carta_dr_slot_retained_bytes > {}",
                num(t.slot_retained_bytes)
            ),
            f,
            TICKET,
            "Inactive replication slot {{ $labels.slot_name }} retains WAL on {{ $labels.cluster }}",
            &format!(
                "No consumer is connected and the slot holds more than {} bytes of WAL on the primary's disk.",
                num(t.slot_retained_bytes)
            ),
        ),
        alert(
            SLOT_WAL_AT_RISK,
            format!(
                r#"carta_dr_slot_safe_wal_size_bytes < {} or carta_dr_slot_wal_status{{wal_status=~"unreserved|lost"}} == 1"#,
                num(t.slot_safe_wal_size_bytes)
            ),
            f,
            PAGE,
            "Replication slot {{ $labels.slot_name }} on {{ $labels.cluster }} is about to lose its WAL",
            "safe_wal_size is near zero or wal_status is unreserved/lost: the standby using it will need a new base backup.",
        ),
        alert(
            ARCHIVER_FAILING,
            "carta_dr_archiver_failing == 1".into(),
            f,
            PAGE,
            "WAL archiving fails on {{ $labels.cluster }}",
            "archive_command's last attempt failed (pg_stat_archiver.last_failed_time is after last_archived_time). Stale-archive alerts are inhibited while this fires.",
        ),
        alert(
            WAL_ARCHIVE_STALE,
            format!(
                "carta_dr_wal_archive_lag_seconds > {s} \
                 or ((time() - max by (cluster) (carta_dr_wal_archive_newest_timestamp_seconds)) > {s} \
                 and on (cluster) (time() - max by (cluster) (carta_dr_archiver_last_archived_timestamp_seconds)) < {s})",
                s = num(t.wal_archive_stale_seconds)
            ),
            f,
            PAGE,
            "WAL archive of {{ $labels.cluster }} is stale",
            &format!(
                "A finished WAL file has waited more than {} s for archiving, or the archiver reports successes but the store received no WAL for that long.",
                num(t.wal_archive_stale_seconds)
            ),
        ),
        alert(
            BACKUP_STALE,
            format!(
                r#"(time() - max by (cluster) (carta_dr_backup_last_timestamp_seconds)) > {} or max by (cluster) (carta_dr_records_found{{record="backup"}}) == 0"#,
                num(t.backup_stale_seconds)
            ),
            f,
            TICKET,
            "No recent backup of {{ $labels.cluster }}",
            &format!(
                "The newest backup finished more than {} s ago, or there is none.",
                num(t.backup_stale_seconds)
            ),
        ),
        alert(
            BACKUP_SIZE_CHANGED,
            format!(
                "abs(carta_dr_backup_last_size_bytes - carta_dr_backup_previous_size_bytes) > {} * carta_dr_backup_previous_size_bytes",
                num(t.backup_size_change_ratio)
            ),
            0,
            INFO,
            "Size of the last {{ $labels.kind }} backup of {{ $labels.cluster }} changed a lot",
            &format!(
                "The newest backup's size differs from the previous one's by more than {}%.",
                num(t.backup_size_change_ratio * 100.0)
            ),
        ),
        alert(
            VERIFICATION_FAILED,
            r#"carta_dr_verification_last_verdict{verdict="corrupt"} == 1"#.into(),
            0,
            PAGE,
            "Verification found corruption in the backups of {{ $labels.cluster }}",
            "The last `carta-dr verify` run reported corrupt or missing data: restores may fail.",
        ),
        alert(
            DRILL_OVERDUE,
            format!(
                r#"(time() - carta_dr_drill_last_timestamp_seconds) > {} or carta_dr_records_found{{record="drill"}} == 0"#,
                num(t.drill_max_age_seconds)
            ),
            f,
            TICKET,
            "Recovery drill overdue for {{ $labels.cluster }}",
            &format!(
                "No recovery drill in the last {} s (or none recorded).",
                num(t.drill_max_age_seconds)
            ),
        ),
        alert(
            DRILL_FAILED,
            "carta_dr_drill_last_success == 0".into(),
            0,
            TICKET,
            "The last recovery drill of {{ $labels.cluster }} failed",
            "The restored server did not come up or failed its checks.",
        ),
    ];
    RuleFile {
        groups: vec![RuleGroup {
            name: "carta-dr-replication".into(),
            rules,
        }],
    }
}

/// The error-ratio windows recorded for the burn-rate alerts.
pub const SLO_WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// One burn-rate alert: (name, long window, short window, burn factor, severity).
pub const BURN_ALERTS: [(&str, &str, &str, f64, &str); 4] = [
    (names::BURN_1H, "1h", "5m", 14.4, PAGE),
    (names::BURN_6H, "6h", "30m", 6.0, PAGE),
    (names::BURN_1D, "1d", "2h", 3.0, TICKET),
    (names::BURN_3D, "3d", "6h", 1.0, TICKET),
];

/// The recorded error ratio over `window`.
pub fn error_ratio_series(window: &str) -> String {
    format!("carta_dr:slo_error_ratio:rate{window}")
}

/// The SLO recording rules and burn-rate alerts (`slo.yml`).
pub fn slo_rules(config: &MonitorConfig) -> RuleFile {
    let mut recording: Vec<Rule> = SLO_WINDOWS
        .iter()
        .map(|w| {
            Rule::Record(RecordRule {
                record: error_ratio_series(w),
                expr: format!(
                    "1 - (sum by (cluster, slo) (rate(carta_dr_slo_good_events_total[{w}])) \
                     / sum by (cluster, slo) (rate(carta_dr_slo_events_total[{w}])))"
                ),
                labels: BTreeMap::new(),
            })
        })
        .collect();
    for (slo, s) in config.slos() {
        let window = duration(u64::from(s.window_days) * 86400);
        recording.push(Rule::Record(RecordRule {
            record: "carta_dr:slo_error_budget_remaining:ratio".into(),
            expr: format!(
                "1 - (1 - sum by (cluster, slo) (increase(carta_dr_slo_good_events_total{{slo=\"{slo}\"}}[{window}])) \
                 / sum by (cluster, slo) (increase(carta_dr_slo_events_total{{slo=\"{slo}\"}}[{window}]))) \
                 / (1 - {})",
                num(s.objective)
            ),
            // Distinguishes the per-SLO rules recording the same name.
            labels: BTreeMap::from([("slo".to_string(), slo.to_string())]),
        }));
    }
    let mut alerts = Vec::new();
    for (slo, s) in config.slos() {
        let what = match slo {
            SLO_REPLICATION_LAG => "replication lag",
            SLO_WAL_ARCHIVE_FRESHNESS => "WAL archive freshness",
            SLO_BACKUP_FRESHNESS => "backup freshness",
            other => other,
        };
        for (name, long, short, factor, severity) in BURN_ALERTS {
            let bound = format!("({} * (1 - {}))", num(factor), num(s.objective));
            let mut rule = alert(
                name,
                format!(
                    "{} > {bound} and {} > {bound}",
                    sel(&error_ratio_series(long), slo),
                    sel(&error_ratio_series(short), slo),
                ),
                0,
                severity,
                &format!(
                    "{what} SLO of {{{{ $labels.cluster }}}} burns its error budget at {}x",
                    num(factor)
                ),
                &format!(
                    "Over {long} and {short} the error ratio exceeds {}x the budget of a {} objective over {} days.",
                    num(factor),
                    num(s.objective),
                    s.window_days
                ),
            );
            if let Rule::Alert(a) = &mut rule {
                a.labels.insert("slo".into(), slo.into());
                a.labels.insert("window".into(), format!("{long}/{short}"));
            }
            alerts.push(rule);
        }
    }
    RuleFile {
        groups: vec![
            RuleGroup {
                name: "carta-dr-slo-recording".into(),
                rules: recording,
            },
            RuleGroup {
                name: "carta-dr-slo-alerts".into(),
                rules: alerts,
            },
        ],
    }
}

fn sel(series: &str, slo: &str) -> String {
    format!("{series}{{slo=\"{slo}\"}}")
}

/// An Alertmanager route.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Route {
    /// The receiver.
    pub receiver: String,
    /// Matchers (`severity="page"`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matchers: Vec<String>,
    /// Grouping labels.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    /// `group_wait`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_wait: Option<String>,
    /// `group_interval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_interval: Option<String>,
    /// `repeat_interval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat_interval: Option<String>,
    /// Child routes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// An Alertmanager inhibit rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InhibitRule {
    /// Matchers of the alert that inhibits (the root cause).
    pub source_matchers: Vec<String>,
    /// Matchers of the alerts it inhibits (the consequences).
    pub target_matchers: Vec<String>,
    /// Labels that must be equal in both.
    pub equal: Vec<String>,
}

/// An Alertmanager receiver (named only: integrations are the operator's).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Receiver {
    /// The name routes refer to.
    pub name: String,
}

/// The Alertmanager fragment: a route to put under the operator's root route, the inhibit
/// rules and the receivers it names.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertmanagerFragment {
    /// The carta-dr route (matches `alertname=~"CartaDr.*"`, splits by severity).
    pub route: Route,
    /// The dependency-encoding inhibit rules.
    pub inhibit_rules: Vec<InhibitRule>,
    /// The receivers (`carta-dr-page`, `carta-dr-ticket`, `carta-dr-info`): give them
    /// integrations in the full configuration.
    pub receivers: Vec<Receiver>,
}

/// A minimal complete Alertmanager configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertmanagerConfig {
    /// The root route.
    pub route: Route,
    /// The inhibit rules.
    pub inhibit_rules: Vec<InhibitRule>,
    /// The receivers.
    pub receivers: Vec<Receiver>,
}

fn matcher_re(names: &[&str]) -> String {
    format!("alertname=~\"{}\"", names.join("|"))
}

fn inhibit(source: &[String], target: &[String], equal: &[&str]) -> InhibitRule {
    InhibitRule {
        source_matchers: source.to_vec(),
        target_matchers: target.to_vec(),
        equal: equal.iter().map(|s| s.to_string()).collect(),
    }
}

/// The Alertmanager fragment (`alertmanager.yml`).
pub fn alertmanager_fragment() -> AlertmanagerFragment {
    use names::*;
    let alertname = |n: &str| format!("alertname=\"{n}\"");
    let burn = || matcher_re(&[BURN_1H, BURN_6H, BURN_1D, BURN_3D]);
    let child = |sev: &str, repeat: &str| Route {
        receiver: format!("carta-dr-{sev}"),
        matchers: vec![format!("severity=\"{sev}\"")],
        group_by: vec![],
        group_wait: None,
        group_interval: None,
        repeat_interval: Some(repeat.into()),
        routes: vec![],
    };
    let inhibit_rules = vec![
        // The primary down causes lag, missing replicas, slot growth, archive and backup
        // staleness, and burns the SLOs that depend on it.
        inhibit(
            &[alertname(PRIMARY_DOWN)],
            &[matcher_re(&[
                REPLICATION_LAG,
                REPLICA_DOWN,
                SLOT_INACTIVE,
                SLOT_WAL_AT_RISK,
                ARCHIVER_FAILING,
                WAL_ARCHIVE_STALE,
                BACKUP_STALE,
            ])],
            &["cluster"],
        ),
        inhibit(&[alertname(PRIMARY_DOWN)], &[burn()], &["cluster"]),
        // A failing archiver is why the archive is stale.
        inhibit(
            &[alertname(ARCHIVER_FAILING)],
            &[alertname(WAL_ARCHIVE_STALE)],
            &["cluster"],
        ),
        inhibit(
            &[alertname(ARCHIVER_FAILING)],
            &[burn(), format!("slo=\"{SLO_WAL_ARCHIVE_FRESHNESS}\"")],
            &["cluster"],
        ),
        // A standby that is down lags, and burns the lag SLO.
        inhibit(
            &[alertname(REPLICA_DOWN)],
            &[alertname(REPLICATION_LAG)],
            &["cluster", "application_name"],
        ),
        inhibit(
            &[alertname(REPLICA_DOWN)],
            &[burn(), format!("slo=\"{SLO_REPLICATION_LAG}\"")],
            &["cluster"],
        ),
        // An unreadable store hides backups and drills.
        inhibit(
            &[alertname(STORE_UNREACHABLE)],
            &[matcher_re(&[BACKUP_STALE, DRILL_OVERDUE])],
            &["cluster"],
        ),
        inhibit(
            &[alertname(STORE_UNREACHABLE)],
            &[burn(), format!("slo=\"{SLO_BACKUP_FRESHNESS}\"")],
            &["cluster"],
        ),
        // The page-level instance of an alert makes its ticket-level twin redundant.
        inhibit(
            &[format!("severity=\"{PAGE}\"")],
            &[format!("severity=\"{TICKET}\"")],
            &[
                "alertname",
                "cluster",
                "application_name",
                "slot_name",
                "slo",
            ],
        ),
    ];
    AlertmanagerFragment {
        route: Route {
            receiver: "carta-dr-ticket".into(),
            matchers: vec!["alertname=~\"CartaDr.*\"".into()],
            group_by: vec!["alertname".into(), "cluster".into()],
            group_wait: Some("30s".into()),
            group_interval: Some("5m".into()),
            repeat_interval: Some("4h".into()),
            routes: vec![child(PAGE, "1h"), child(TICKET, "1d"), child(INFO, "7d")],
        },
        inhibit_rules,
        receivers: [PAGE, TICKET, INFO]
            .iter()
            .map(|s| Receiver {
                name: format!("carta-dr-{s}"),
            })
            .collect(),
    }
}

/// The fragment embedded in a minimal complete configuration: a root route to a `default`
/// receiver with the carta-dr route under it.
pub fn alertmanager_full_config(fragment: &AlertmanagerFragment) -> AlertmanagerConfig {
    let mut receivers = vec![Receiver {
        name: "default".into(),
    }];
    receivers.extend(fragment.receivers.iter().cloned());
    AlertmanagerConfig {
        route: Route {
            receiver: "default".into(),
            matchers: vec![],
            group_by: vec![],
            group_wait: None,
            group_interval: None,
            repeat_interval: None,
            routes: vec![fragment.route.clone()],
        },
        inhibit_rules: fragment.inhibit_rules.clone(),
        receivers,
    }
}

/// YAML text with a header comment.
pub fn to_yaml<T: Serialize>(value: &T, header: &str) -> Result<String> {
    let body = serde_yaml::to_string(value)
        .map_err(|e| Error::invalid_input(format!("serializing rules: {e}")))?;
    let mut out = String::new();
    for line in header.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&body);
    Ok(out)
}

/// The files `carta-dr rules` writes, as (file name, contents).
pub fn render_all(config: &MonitorConfig) -> Result<Vec<(&'static str, String)>> {
    config.validate()?;
    let gen = "Generated by `carta-dr rules` from the [monitor] configuration; regenerate rather than edit.";
    Ok(vec![
        ("replication.yml", to_yaml(&replication_rules(config), gen)?),
        ("slo.yml", to_yaml(&slo_rules(config), gen)?),
        (
            "alertmanager.yml",
            to_yaml(
                &alertmanager_fragment(),
                &format!(
                    "{gen}\nA fragment: put `route` under your root route's `routes`, and append \
                     `inhibit_rules` and `receivers` (give the receivers integrations)."
                ),
            )?,
        ),
    ])
}

/// Writes [`render_all`]'s files into `dir` (created if needed); returns their paths.
pub fn write_all(config: &MonitorConfig, dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut written = Vec::new();
    for (name, text) in render_all(config)? {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(120), "2m");
        assert_eq!(duration(90), "90s");
        assert_eq!(duration(90000), "25h");
        assert_eq!(duration(30 * 86400), "30d");
    }

    #[test]
    fn every_slo_gets_four_burn_alerts() {
        let f = slo_rules(&MonitorConfig::default());
        let alerts = f.groups[1].rules.len();
        assert_eq!(alerts, 12);
        let yaml = to_yaml(&f, "x").unwrap();
        assert!(yaml.contains("(14.4 * (1 - 0.999))"));
    }
}
