//! The exported metric families, and how a [`Snapshot`] maps onto them.
//!
//! Every poll rewrites all gauge series from the new snapshot: a target that is down keeps
//! only `carta_dr_target_up{target=...} 0`; none of its other series survive, so nothing
//! stale is ever exported. Only the SLO event counters and the poll counter accumulate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::config::MonitorConfig;
use super::records::{kind_label, verdict_label};
use super::snapshot::{Probe, ReplicationRow, Snapshot};

/// A label set: pairs of label name and value.
type Labels = Vec<(&'static str, String)>;
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;
type CounterFamily = Family<Labels, Counter<u64>>;

/// The WAL states a slot can be in (`pg_replication_slots.wal_status`), exported as a state
/// set so that a change of state does not churn series.
const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];
/// Verification verdicts, exported as a state set.
const VERDICTS: [&str; 3] = ["clean", "corrupt", "incomplete"];
/// The records whose presence `carta_dr_records_found` reports.
const RECORDS: [&str; 4] = ["wal", "backup", "verification", "drill"];

fn unix(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

macro_rules! families {
    ($( $(#[$doc:meta])* $field:ident : $kind:ident = ($name:expr, $help:expr, $unit:expr) ),* $(,)?) => {
        /// The metric families, registered once.
        struct Families { $( $(#[$doc])* $field: $kind, )* }
        impl Families {
            fn register(reg: &mut Registry) -> Families {
                let f = Families { $( $field: <$kind>::default(), )* };
                $(
                    // The encoder ends every help text with a period itself.
                    let help = $help.trim_end_matches('.');
                    match $unit {
                        Some(u) => reg.register_with_unit($name, help, u, f.$field.clone()),
                        None => reg.register($name, help, f.$field.clone()),
                    }
                )*
                f
            }
        }
    };
}

families! {
    target_up: GaugeFamily = ("target_up", "Whether the last poll of the target succeeded (1) or not (0).", None::<Unit>),
    target_in_recovery: GaugeFamily = ("target_in_recovery", "pg_is_in_recovery() of the target.", None),
    poll_duration: GaugeFamily = ("poll_duration", "Duration of the last poll of the target.", Some(Unit::Seconds)),
    primary_wal_lsn: GaugeFamily = ("primary_wal_lsn", "pg_current_wal_lsn() of the primary, as a byte position.", Some(Unit::Bytes)),
    standby_connected: GaugeFamily = ("replication_standby_connected", "Whether an expected or seen standby is in the primary's pg_stat_replication.", None),
    repl_lag_bytes: GaugeFamily = ("replication_lag", "WAL bytes between the primary's current LSN and the standby's sent/write/flush/replay LSN.", Some(Unit::Bytes)),
    repl_lag_seconds: GaugeFamily = ("replication_lag", "write_lag, flush_lag, replay_lag of pg_stat_replication (0 when NULL and caught up).", Some(Unit::Seconds)),
    slot_active: GaugeFamily = ("slot_active", "Whether a consumer is connected to the replication slot.", None),
    slot_retained: GaugeFamily = ("slot_retained", "WAL retained by the slot: current LSN minus restart_lsn.", Some(Unit::Bytes)),
    slot_safe_wal_size: GaugeFamily = ("slot_safe_wal_size", "Bytes that can be written before the slot risks losing WAL (only with max_slot_wal_keep_size).", Some(Unit::Bytes)),
    slot_wal_status: GaugeFamily = ("slot_wal_status", "The slot's wal_status, as a state set.", None),
    archiver_enabled: GaugeFamily = ("archiver_enabled", "Whether archive_mode is on.", None),
    archiver_archived: CounterFamily = ("archiver_archived", "pg_stat_archiver.archived_count.", None),
    archiver_failed: CounterFamily = ("archiver_failed", "pg_stat_archiver.failed_count.", None),
    archiver_last_archived: GaugeFamily = ("archiver_last_archived_timestamp", "pg_stat_archiver.last_archived_time.", Some(Unit::Seconds)),
    archiver_last_failed: GaugeFamily = ("archiver_last_failed_timestamp", "pg_stat_archiver.last_failed_time.", Some(Unit::Seconds)),
    archiver_failing: GaugeFamily = ("archiver_failing", "1 when the archiver's last attempt failed.", None),
    archiver_pending: GaugeFamily = ("archiver_pending_files", "Finished WAL files waiting for archive_command (.ready files).", None),
    archive_lag: GaugeFamily = ("wal_archive_lag", "How long the oldest finished WAL file has waited for archiving (0 when none waits).", Some(Unit::Seconds)),
    standby_receive_lsn: GaugeFamily = ("standby_receive_lsn", "pg_last_wal_receive_lsn() of the standby, as a byte position.", Some(Unit::Bytes)),
    standby_replay_lsn: GaugeFamily = ("standby_replay_lsn", "pg_last_wal_replay_lsn() of the standby, as a byte position.", Some(Unit::Bytes)),
    standby_replay_delay: GaugeFamily = ("standby_replay_delay", "0 when all received WAL is replayed, else now() - pg_last_xact_replay_timestamp().", Some(Unit::Seconds)),
    standby_last_replay: GaugeFamily = ("standby_last_replay_timestamp", "pg_last_xact_replay_timestamp() of the standby.", Some(Unit::Seconds)),
    standby_receiver_streaming: GaugeFamily = ("standby_wal_receiver_streaming", "1 when the standby's WAL receiver status is streaming.", None),
    standby_receiver_age: GaugeFamily = ("standby_wal_receiver_last_message_age", "Time since the WAL receiver last heard from the primary.", Some(Unit::Seconds)),
    wal_newest: GaugeFamily = ("wal_archive_newest_timestamp", "Modification time of the newest WAL segment in the store.", Some(Unit::Seconds)),
    wal_newest_age: GaugeFamily = ("wal_archive_newest_age", "Age of the newest WAL segment in the store at the last store read.", Some(Unit::Seconds)),
    wal_objects: GaugeFamily = ("wal_archive_segments", "WAL segments in the store.", None),
    wal_stored: GaugeFamily = ("wal_archive_stored", "Stored size of the WAL segments in the store.", Some(Unit::Bytes)),
    backup_records: GaugeFamily = ("backup_records", "Backup records in the store.", None),
    backup_last: GaugeFamily = ("backup_last_timestamp", "Finish time of the newest backup of the kind.", Some(Unit::Seconds)),
    backup_last_size: GaugeFamily = ("backup_last_size", "Original size of the newest backup of the kind.", Some(Unit::Bytes)),
    backup_prev_size: GaugeFamily = ("backup_previous_size", "Original size of the backup of the kind before the newest.", Some(Unit::Bytes)),
    backup_last_stored: GaugeFamily = ("backup_last_stored", "Bytes the newest backup of the kind newly wrote to the store.", Some(Unit::Bytes)),
    verification_last: GaugeFamily = ("verification_last_timestamp", "Finish time of the last verification.", Some(Unit::Seconds)),
    verification_verdict: GaugeFamily = ("verification_last_verdict", "The last verification's verdict, as a state set.", None),
    verification_findings: GaugeFamily = ("verification_last_findings", "Findings of the last verification.", None),
    drill_last: GaugeFamily = ("drill_last_timestamp", "Finish time of the last recovery drill.", Some(Unit::Seconds)),
    drill_success: GaugeFamily = ("drill_last_success", "Whether the last recovery drill succeeded.", None),
    drill_rto: GaugeFamily = ("drill_last_rto", "Recovery time measured by the last drill.", Some(Unit::Seconds)),
    drill_rpo: GaugeFamily = ("drill_last_rpo", "Data-loss window measured by the last drill.", Some(Unit::Seconds)),
    pitr_start: GaugeFamily = ("pitr_window_start_timestamp", "Earliest point recoverable: the oldest backup's finish time.", Some(Unit::Seconds)),
    pitr_end: GaugeFamily = ("pitr_window_end_timestamp", "Latest point recoverable: the newest archived WAL's modification time.", Some(Unit::Seconds)),
    pitr_window: GaugeFamily = ("pitr_window", "Length of the point-in-time-recovery window.", Some(Unit::Seconds)),
    records_found: GaugeFamily = ("records_found", "Whether the store holds a record of the kind (only when the store was read).", None),
    unreadable_records: GaugeFamily = ("store_unreadable_records", "Records present in the store that could not be parsed.", None),
    slo_events: CounterFamily = ("slo_events", "SLI observations (one per poll where the SLI applies).", None),
    slo_good: CounterFamily = ("slo_good_events", "SLI observations that met the threshold.", None),
    slo_objective: GaugeFamily = ("slo_objective", "The SLO's objective.", Some(Unit::Other("ratio".into()))),
    slo_threshold: GaugeFamily = ("slo_threshold", "The SLI's threshold.", Some(Unit::Seconds)),
    polls: CounterFamily = ("polls", "Polls done by the exporter.", None),
    last_poll: GaugeFamily = ("last_poll_timestamp", "Start time of the last poll.", Some(Unit::Seconds)),
}

/// The exporter's registry and metric families.
pub struct Metrics {
    registry: Registry,
    f: Families,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn l(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

fn set(f: &GaugeFamily, labels: Labels, v: f64) {
    f.get_or_create(&labels).set(v);
}

fn set_counter(f: &CounterFamily, labels: Labels, v: i64) {
    f.get_or_create(&labels)
        .inner()
        .store(u64::try_from(v).unwrap_or(0), Ordering::Relaxed);
}

fn b(v: bool) -> f64 {
    if v {
        1.0
    } else {
        0.0
    }
}

/// Translates the OpenMetrics text the encoder wrote into the classic text format 0.0.4.
///
/// For the counters and gauges this exporter uses, the two formats differ only in metadata:
/// an OpenMetrics counter family `x` has samples `x_total`, while the classic format names
/// the family `x_total`; `# UNIT` and `# EOF` do not exist in the classic format. Sample lines
/// pass through unchanged.
pub fn openmetrics_to_classic(om: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
        }
    }
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (*p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The replay lag in seconds as exported: `replay_lag`, or 0 when it is NULL because the
/// standby has caught up (PostgreSQL shows NULL after a while without WAL activity).
pub fn effective_lag(row: &ReplicationRow, lag: Option<f64>) -> Option<f64> {
    match lag {
        Some(v) => Some(v),
        None => match (row.sent_lsn, row.replay_lsn) {
            (Some(s), Some(r)) if r >= s => Some(0.0),
            _ => None,
        },
    }
}

impl Metrics {
    /// Registers every family; every series carries `cluster="<config.cluster>"`.
    pub fn new(config: &MonitorConfig) -> Metrics {
        let mut registry = Registry::with_prefix_and_labels(
            "carta_dr",
            [(
                std::borrow::Cow::Borrowed("cluster"),
                std::borrow::Cow::Owned(config.cluster.clone()),
            )]
            .into_iter(),
        );
        let f = Families::register(&mut registry);
        for (name, slo) in config.slos() {
            set(&f.slo_objective, l(&[("slo", name)]), slo.objective);
            set(&f.slo_threshold, l(&[("slo", name)]), slo.threshold_seconds);
        }
        Metrics { registry, f }
    }

    /// The exposition in the OpenMetrics text format (what Prometheus asks for first).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The exposition in the classic Prometheus text format 0.0.4 (for scrapers and tools
    /// such as `promtool check metrics` that do not ask for OpenMetrics).
    pub fn encode_classic(&self) -> String {
        openmetrics_to_classic(&self.encode())
    }

    /// Counts one SLI observation.
    pub fn observe_slo(&self, slo: &str, good: bool) {
        let labels = l(&[("slo", slo)]);
        // Create both series together so ratios never see one without the other.
        self.f.slo_events.get_or_create(&labels).inc();
        let g = self.f.slo_good.get_or_create(&labels);
        if good {
            g.inc();
        }
    }

    /// Rewrites every gauge from `snap`.
    pub fn apply(&self, config: &MonitorConfig, snap: &Snapshot) {
        let f = &self.f;
        for fam in [
            &f.target_up,
            &f.target_in_recovery,
            &f.poll_duration,
            &f.primary_wal_lsn,
            &f.standby_connected,
            &f.repl_lag_bytes,
            &f.repl_lag_seconds,
            &f.slot_active,
            &f.slot_retained,
            &f.slot_safe_wal_size,
            &f.slot_wal_status,
            &f.archiver_enabled,
            &f.archiver_last_archived,
            &f.archiver_last_failed,
            &f.archiver_failing,
            &f.archiver_pending,
            &f.archive_lag,
            &f.standby_receive_lsn,
            &f.standby_replay_lsn,
            &f.standby_replay_delay,
            &f.standby_last_replay,
            &f.standby_receiver_streaming,
            &f.standby_receiver_age,
            &f.wal_newest,
            &f.wal_newest_age,
            &f.wal_objects,
            &f.wal_stored,
            &f.backup_records,
            &f.backup_last,
            &f.backup_last_size,
            &f.backup_prev_size,
            &f.backup_last_stored,
            &f.verification_last,
            &f.verification_verdict,
            &f.verification_findings,
            &f.drill_last,
            &f.drill_success,
            &f.drill_rto,
            &f.drill_rpo,
            &f.pitr_start,
            &f.pitr_end,
            &f.pitr_window,
            &f.records_found,
            &f.unreadable_records,
        ] {
            fam.clear();
        }
        f.archiver_archived.clear();
        f.archiver_failed.clear();
        f.polls.get_or_create(&Vec::new()).inc();
        set(&f.last_poll, Vec::new(), unix(snap.taken_at));

        let target = |name: &str, role: &'static str, up: bool, took: f64| {
            set(&f.target_up, l(&[("target", name), ("role", role)]), b(up));
            set(
                &f.poll_duration,
                l(&[("target", name), ("role", role)]),
                took,
            );
        };

        if let Some(p) = &snap.primary {
            target(
                "primary",
                "primary",
                p.status().is_some(),
                p.took().as_secs_f64(),
            );
            if let Some(st) = p.status() {
                self.apply_primary(config, st);
            }
        }
        for (name, probe) in &snap.standbys {
            target(
                name,
                "standby",
                probe.status().is_some(),
                probe.took().as_secs_f64(),
            );
            if let Some(s) = probe.status() {
                let t = l(&[("target", name)]);
                set(
                    &f.target_in_recovery,
                    l(&[("target", name), ("role", "standby")]),
                    b(s.in_recovery),
                );
                if let Some(v) = s.receive_lsn {
                    set(&f.standby_receive_lsn, t.clone(), v.0 as f64);
                }
                if let Some(v) = s.replay_lsn {
                    set(&f.standby_replay_lsn, t.clone(), v.0 as f64);
                }
                if let Some(v) = s.replay_delay_seconds() {
                    set(&f.standby_replay_delay, t.clone(), v);
                }
                if let Some(v) = s.last_replay_time {
                    set(&f.standby_last_replay, t.clone(), v);
                }
                if s.in_recovery {
                    set(
                        &f.standby_receiver_streaming,
                        t.clone(),
                        b(s.receiver_status.as_deref() == Some("streaming")),
                    );
                }
                if let Some(v) = s.receiver_last_message_age {
                    set(&f.standby_receiver_age, t, v.max(0.0));
                }
            }
        }
        if let Some(probe) = &snap.store {
            target(
                "store",
                "store",
                probe.status().is_some(),
                probe.took().as_secs_f64(),
            );
            if let Probe::Up { status, .. } = probe {
                self.apply_store(snap.taken_at, status);
            }
        }
    }

    fn apply_primary(&self, config: &MonitorConfig, st: &super::snapshot::PrimaryStatus) {
        let f = &self.f;
        set(
            &f.target_in_recovery,
            l(&[("target", "primary"), ("role", "primary")]),
            b(st.in_recovery),
        );
        if let Some(cur) = st.current_lsn {
            set(&f.primary_wal_lsn, Vec::new(), cur.0 as f64);
        }
        let mut seen: Vec<&str> = Vec::new();
        for row in st.replication.iter().filter(|r| r.is_standby()) {
            seen.push(&row.application_name);
            let app = row.application_name.as_str();
            let sync = row.sync_state.as_str();
            if let Some(cur) = st.current_lsn {
                for (stage, lsn) in [
                    ("sent", row.sent_lsn),
                    ("write", row.write_lsn),
                    ("flush", row.flush_lsn),
                    ("replay", row.replay_lsn),
                ] {
                    if let Some(lsn) = lsn {
                        set(
                            &f.repl_lag_bytes,
                            l(&[
                                ("application_name", app),
                                ("sync_state", sync),
                                ("stage", stage),
                            ]),
                            cur.bytes_since(lsn) as f64,
                        );
                    }
                }
            }
            for (stage, lag) in [
                ("write", row.write_lag),
                ("flush", row.flush_lag),
                ("replay", row.replay_lag),
            ] {
                if let Some(v) = effective_lag(row, lag) {
                    set(
                        &f.repl_lag_seconds,
                        l(&[
                            ("application_name", app),
                            ("sync_state", sync),
                            ("stage", stage),
                        ]),
                        v,
                    );
                }
            }
        }
        for app in config
            .expected_standbys
            .iter()
            .map(String::as_str)
            .chain(seen.iter().copied())
        {
            set(
                &f.standby_connected,
                l(&[("application_name", app)]),
                b(seen.contains(&app)),
            );
        }
        for s in &st.slots {
            let name = s.slot_name.as_str();
            set(
                &f.slot_active,
                l(&[("slot_name", name), ("slot_type", s.slot_type.as_str())]),
                b(s.active),
            );
            if let Some(v) = s.retained_bytes {
                set(&f.slot_retained, l(&[("slot_name", name)]), v as f64);
            }
            if let Some(v) = s.safe_wal_size {
                set(&f.slot_safe_wal_size, l(&[("slot_name", name)]), v as f64);
            }
            if let Some(ws) = &s.wal_status {
                for state in WAL_STATUSES {
                    set(
                        &f.slot_wal_status,
                        l(&[("slot_name", name), ("wal_status", state)]),
                        b(ws == state),
                    );
                }
            }
        }
        let a = &st.archiver;
        set(&f.archiver_enabled, Vec::new(), b(a.enabled));
        set_counter(&f.archiver_archived, Vec::new(), a.archived_count);
        set_counter(&f.archiver_failed, Vec::new(), a.failed_count);
        if let Some(t) = a.last_archived_time {
            set(&f.archiver_last_archived, Vec::new(), t);
        }
        if let Some(t) = a.last_failed_time {
            set(&f.archiver_last_failed, Vec::new(), t);
        }
        if a.enabled {
            set(&f.archiver_failing, Vec::new(), b(a.failing()));
            set(&f.archiver_pending, Vec::new(), a.pending_files as f64);
            set(
                &f.archive_lag,
                Vec::new(),
                a.oldest_pending_seconds.max(0.0),
            );
        }
    }

    fn apply_store(&self, now: SystemTime, st: &super::snapshot::StoreStatus) {
        let f = &self.f;
        let found = |rec: &str, yes: bool| set(&f.records_found, l(&[("record", rec)]), b(yes));
        for rec in RECORDS {
            let yes = match rec {
                "wal" => st.wal.is_some(),
                "backup" => st.backup_count > 0,
                "verification" => st.verification.is_some(),
                _ => st.drill.is_some(),
            };
            found(rec, yes);
        }
        set(
            &f.unreadable_records,
            Vec::new(),
            st.unreadable.len() as f64,
        );
        if let Some(w) = &st.wal {
            set(&f.wal_newest, Vec::new(), unix(w.newest_modified));
            set(
                &f.wal_newest_age,
                Vec::new(),
                (unix(now) - unix(w.newest_modified)).max(0.0),
            );
            set(&f.wal_objects, Vec::new(), w.objects as f64);
            set(&f.wal_stored, Vec::new(), w.bytes as f64);
        }
        set(&f.backup_records, Vec::new(), st.backup_count as f64);
        let mut kinds_done: Vec<&str> = Vec::new();
        for (i, r) in st.recent_backups.iter().enumerate() {
            let kind = kind_label(r.kind);
            if kinds_done.contains(&kind) {
                continue;
            }
            kinds_done.push(kind);
            let k = l(&[("kind", kind)]);
            set(&f.backup_last, k.clone(), r.stop_time as f64);
            set(&f.backup_last_size, k.clone(), r.original_size as f64);
            set(&f.backup_last_stored, k.clone(), r.stored_size as f64);
            if let Some(prev) = st
                .recent_backups
                .iter()
                .skip(i + 1)
                .find(|p| p.kind == r.kind)
            {
                set(&f.backup_prev_size, k, prev.original_size as f64);
            }
        }
        if let Some(v) = &st.verification {
            set(&f.verification_last, Vec::new(), v.finished_at as f64);
            for verdict in VERDICTS {
                set(
                    &f.verification_verdict,
                    l(&[("verdict", verdict)]),
                    b(verdict_label(v.verdict) == verdict),
                );
            }
            set(&f.verification_findings, Vec::new(), v.findings as f64);
        }
        if let Some(d) = &st.drill {
            set(&f.drill_last, Vec::new(), d.finished_at as f64);
            set(&f.drill_success, Vec::new(), b(d.success));
            set(&f.drill_rto, Vec::new(), d.rto_seconds);
            if let Some(rpo) = d.rpo_seconds {
                set(&f.drill_rpo, Vec::new(), rpo);
            }
        }
        if let (Some(oldest), Some(w)) = (&st.oldest_backup, &st.wal) {
            let start = oldest.stop_time as f64;
            let end = unix(w.newest_modified);
            if end >= start {
                set(&f.pitr_start, Vec::new(), start);
                set(&f.pitr_end, Vec::new(), end);
                set(&f.pitr_window, Vec::new(), end - start);
            }
        }
    }
}
