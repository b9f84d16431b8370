//! # carta-dr-postgres
//!
//! Everything in carta-dr that talks to a live PostgreSQL:
//!
//! * [`replication`]: our own replication-protocol client on `postgres-protocol` over tokio
//!   (`IDENTIFY_SYSTEM`, `BASE_BACKUP`), the physical base backup and its restore.
//! * [`restore`]: restore of a physical backup with its recovery configuration.
//! * [`restore_test`]: `verify --restore-test`: restore into a scratch cluster and check it.
//! * [`drill`]: the restore drill — RTO and RPO measured with a stopwatch.
//! * [`local_cluster`]: throwaway local clusters (initdb, start, stop, crash) as product code.
//! * [`monitor`]: the replication monitor, its Prometheus exporter and alert rules.
//! * [`promote`]: failover: promotion, fencing, repointing, rejoin and the failover drill.

#![warn(missing_docs)]

pub mod drill;
pub mod dump;
pub mod local_cluster;
pub mod monitor;
pub mod promote;
pub mod replication;
pub mod restore;
pub mod restore_test;
