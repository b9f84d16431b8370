//! One module per subcommand; each exposes `Args` (clap) and `async fn run(ctx, args)`.

pub mod backup;
pub mod drill;
pub mod drill_failover;
pub mod drill_history;
pub mod drill_restore;
pub mod drill_wal_fetch;
pub mod dump;
pub mod expire;
pub mod monitor;
pub mod promote;
pub mod rejoin;
pub mod restore;
pub mod rules;
pub mod runbook;
pub mod verify;
pub mod verify_restore_test;
pub mod wal_fetch;
pub mod wal_list;
pub mod wal_push;
