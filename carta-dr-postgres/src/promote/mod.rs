//! Failover: promote a standby, fence the old primary, repoint clients, rejoin the old primary
//! as a standby, and the failover game-day drill.
//!
//! * [`promoter`]: [`PgPromoter`], the [`carta_dr_core::Promoter`] for PostgreSQL.
//! * [`fence`]: the [`Fencer`] trait and its strategies (`pg_ctl stop`, read-only, command).
//! * [`repoint`]: the [`Repointer`] trait and its strategies (file, pgbouncer, HAProxy,
//!   command).
//! * [`sql`]: one-shot SQL sessions and the new-timeline query.
//! * [`rejoin`]: the old primary back as a standby (`pg_rewind`, else a fresh copy).
//! * [`drill`]: the failover game-day and its log.
//! * [`runbook`]: the Markdown failover runbook.
//!
//! PostgreSQL binaries, the OS user that runs them and throwaway clusters come from
//! [`crate::local_cluster`]. See `docs/failover.md`.

pub mod drill;
pub mod fence;
pub mod promoter;
pub mod rejoin;
pub mod repoint;
pub mod runbook;
pub mod sql;

pub use fence::{CommandFencer, FenceTarget, Fencer, PgCtlStopFencer, ReadOnlyFencer};
pub use promoter::{clean, promoted, render_report, PgNode, PgPromoter};
pub use repoint::{
    CommandRepointer, FileRepointer, HaproxyRepointer, PgBouncerRepointer, RepointTarget, Repointer,
};
