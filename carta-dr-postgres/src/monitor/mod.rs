//! Replication monitor: polls the primary, its standbys and the store, exports Prometheus
//! metrics and SLI counters, and generates the alert rules that page on the root cause.
//!
//! * [`config`]: the `[monitor]` configuration shared by exporter and rule generator.
//! * [`pg`]: the SQL polls of a primary and of a standby.
//! * [`store`] and [`records`]: what is read from the store, and the JSON record shapes.
//! * [`snapshot`]: what one poll observed, as plain data.
//! * [`metrics`]: the metric families and how a snapshot maps onto them.
//! * [`sli`]: the three SLIs.
//! * [`exporter`]: the [`Monitor`] (poller and HTTP endpoint).
//! * [`rules`]: Prometheus alerting and recording rules, and the Alertmanager fragment.
//!
//! See `docs/monitoring.md` for the metric list, the refresh model and the alert design.

pub mod config;
pub mod exporter;
pub mod metrics;
pub mod pg;
pub mod records;
pub mod rules;
pub mod sli;
pub mod snapshot;
pub mod store;

pub use config::{MonitorConfig, Slo, SloConfig, StandbyTarget, Thresholds};
pub use exporter::{serve, Monitor};
pub use snapshot::Snapshot;
