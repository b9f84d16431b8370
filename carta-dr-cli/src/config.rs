//! The TOML configuration file (`--config FILE` / `CARTA_DR_CONFIG`).
//!
//! Every key is optional; unknown keys are refused so that a typo cannot silently disable a
//! setting. Command-line options and environment variables override the file. Key material
//! never lives in this file: only the *path* of a key file may (`key_file`).
//!
//! ```toml
//! repo = "s3://bucket/prod?region=eu-west-1"
//! compression_level = 3
//! key_file = "/etc/carta-dr/key"
//!
//! [wal]
//! push_look_ahead = 8        # also push up to 8 segments marked .ready
//! push_concurrency = 2
//! fetch_prefetch = 8         # also fetch the next 8 segments into the spool
//! fetch_concurrency = 4
//! spool_dir = "/var/lib/postgresql/15/main/pg_wal/carta-dr-spool"
//! spool_max_bytes = 536870912
//! # max_pg_wal_bytes = 68719476736   # disk safety valve, off unless set
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::CliError;

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The repository URL (`file:///path`, `s3://bucket/prefix?...`, `memory://`).
    pub repo: Option<String>,
    /// The zstd level for stored objects (1..=19); default 3.
    pub compression_level: Option<i32>,
    /// A file holding the 32-byte encryption key (raw or hex). Objects are encrypted only
    /// when a key is configured.
    pub key_file: Option<PathBuf>,
    /// WAL archiving settings.
    pub wal: WalConfig,
    /// The replication monitor and its alert rules (`carta-dr monitor`, `carta-dr rules`).
    pub monitor: carta_dr_postgres::monitor::MonitorConfig,
}

/// The `[wal]` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WalConfig {
    /// How many further `.ready` segments `wal-push` pushes along with the one asked for
    /// (0 disables look-ahead).
    pub push_look_ahead: usize,
    /// How many uploads `wal-push` runs at once, the requested file included.
    pub push_concurrency: usize,
    /// How many following segments `wal-fetch` keeps in the spool (0 disables prefetch). The
    /// spool is refilled in batches, once fewer than half of them are there.
    pub fetch_prefetch: usize,
    /// How many downloads `wal-fetch` runs at once during prefetch.
    pub fetch_concurrency: usize,
    /// Where prefetched segments wait; default `<pg_wal>/carta-dr-spool` next to the
    /// destination `restore_command` names.
    pub spool_dir: Option<PathBuf>,
    /// The most bytes the spool may hold.
    pub spool_max_bytes: u64,
    /// Disk safety valve (off unless set): when the store is unreachable and the `.ready`
    /// backlog in `pg_wal` exceeds this many bytes, `wal-push` reports the oldest backlog
    /// segments archived *without storing them*, records them as dropped, and says so loudly.
    /// This trades point-in-time recovery over the dropped range for keeping the primary up.
    pub max_pg_wal_bytes: Option<u64>,
    /// How often a store operation is tried before the command gives up.
    pub store_attempts: u32,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            push_look_ahead: 8,
            push_concurrency: 2,
            fetch_prefetch: 8,
            fetch_concurrency: 4,
            spool_dir: None,
            spool_max_bytes: 512 * 1024 * 1024,
            max_pg_wal_bytes: None,
            store_attempts: 3,
        }
    }
}

impl Config {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Config, CliError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::config(format!("reading config {}: {e}", path.display())))?;
        Self::parse(&text)
            .map_err(|e| CliError::config(format!("config {}: {}", path.display(), e.message)))
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<Config, CliError> {
        let c: Config = toml::from_str(text).map_err(|e| CliError::config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), CliError> {
        if let Some(l) = self.compression_level {
            if !(1..=19).contains(&l) {
                return Err(CliError::config(format!(
                    "compression_level {l} is outside 1..=19"
                )));
            }
        }
        if self.wal.push_concurrency == 0 || self.wal.fetch_concurrency == 0 {
            return Err(CliError::config(
                "wal.push_concurrency and wal.fetch_concurrency must be at least 1",
            ));
        }
        if self.wal.store_attempts == 0 {
            return Err(CliError::config("wal.store_attempts must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn full_file() {
        let c = Config::parse(
            r#"
            repo = "file:///r"
            compression_level = 1
            key_file = "/k"
            [wal]
            push_look_ahead = 0
            fetch_prefetch = 3
            spool_dir = "/s"
            spool_max_bytes = 100
            max_pg_wal_bytes = 1000
            "#,
        )
        .unwrap();
        assert_eq!(c.repo.as_deref(), Some("file:///r"));
        assert_eq!(c.wal.push_look_ahead, 0);
        assert_eq!(c.wal.fetch_prefetch, 3);
        assert_eq!(c.wal.max_pg_wal_bytes, Some(1000));
        assert_eq!(
            c.wal.push_concurrency,
            WalConfig::default().push_concurrency
        );
    }

    #[test]
    fn refuses_typos_and_bad_values() {
        assert!(Config::parse("rpeo = \"x\"").is_err());
        assert!(Config::parse("[wal]\nprefetch = 3").is_err());
        assert!(Config::parse("compression_level = 40").is_err());
        assert!(Config::parse("[wal]\npush_concurrency = 0").is_err());
        // Key material is never a config value.
        assert!(Config::parse("key = \"00\"").is_err());
    }
}
