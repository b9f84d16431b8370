//! Replication-protocol client and base backups. Being written.
