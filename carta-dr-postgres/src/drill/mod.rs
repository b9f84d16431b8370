//! Drills: rehearse a disaster on purpose and measure the recovery with a stopwatch.
//!
//! * [`restore_drill`]: `carta-dr drill restore` — lose the primary (crash, accidental
//!   `DELETE`, or a damaged newest backup) and restore it from the store alone; RTO broken into
//!   phases (`detect`, `fetch_base`, `replay_wal`, `start`, `verify`) on one monotonic clock,
//!   RPO from heartbeats the primary acknowledged versus those the restore holds.
//! * [`writer`]: the heartbeat writer.
//! * [`report`]: the report, its verdict against targets, and its Markdown rendering.
//! * [`replay_guard`]: no `CREATE TABLESPACE` in the WAL replayed beside a running server.
//! * [`history`]: the drill log in the store (`drills/restore/<id>.json`, sealed, create-only).

pub mod history;
pub mod replay_guard;
pub mod report;
pub mod restore_drill;
pub mod writer;

pub use report::{DrillReport, PitrBy, Scenario};
pub use restore_drill::{run, DrillOutcome, DrillTarget, RestoreDrillOptions, StoreOpener};
