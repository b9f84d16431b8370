//! Test harness for carta-dr: real PostgreSQL 15 clusters, the local S3-compatible server and a
//! loopback TCP proxy that simulates outages.
//!
//! Everything here is meant for tests, so failures panic with a message that says what went wrong
//! and what to install or run, instead of returning errors.
//!
//! * [`PgCluster`] runs `initdb`/`postgres` in a scratch directory on a free port. When the tests
//!   run as root (as CI does), PostgreSQL runs as the unprivileged [`test_user`] `carta-dr-test`.
//! * [`S3Env`] points at the `moto_server` that `scripts/test.sh` starts.
//! * [`TcpProxy`] sits between a client and a server and can be switched down and up.
//! * [`corrupt`] damages files the way disks and networks do.
#![warn(missing_docs)]

mod cluster;
pub mod corrupt;
mod port;
mod proxy;
mod s3;
mod user;
mod wait;

pub use cluster::{pg_bin_dir, PgCluster, PgClusterBuilder};
pub use port::{reserve_port, ReservedPort};
pub use proxy::TcpProxy;
pub use s3::S3Env;
pub use user::{as_test_user, scratch_dir, test_user, ScratchDir, TestUser, TEST_USER_NAME};
pub use wait::wait_for;
