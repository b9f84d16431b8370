//! Replication monitor. Being written.
