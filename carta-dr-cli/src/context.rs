//! What every command receives: the resolved configuration and lazy access to the store.
//!
//! Resolution order for each setting: command-line option, then environment variable, then
//! the configuration file, then the built-in default. Nothing here touches the network or the
//! repository until a command asks for [`Context::store`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use carta_dr_backends::layers::{RetryPolicy, RetryStore};
use carta_dr_core::archive::StoreWalArchive;
use carta_dr_core::envelope::{self, EnvelopeOptions, Key};
use carta_dr_core::Store;

use crate::config::Config;
use crate::error::CliError;
use crate::exit::ErrorClass;
use crate::GlobalArgs;

/// The environment variable holding the key itself (raw 32 bytes are impossible in an
/// environment variable, so: 64 hex digits). Key material is never accepted as a
/// command-line value, where `ps` would show it.
pub const KEY_ENV: &str = "CARTA_DR_KEY";

/// Where the encryption key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// A key file (`--key-file`, `CARTA_DR_KEY_FILE`, or `key_file` in the config).
    File(PathBuf),
    /// The `CARTA_DR_KEY` environment variable.
    Env,
}

/// The context every command runs in.
#[derive(Debug)]
pub struct Context {
    /// The configuration file's contents (defaults when there is none).
    pub config: Config,
    /// The repository URL, if one was given anywhere.
    pub repo: Option<String>,
    /// Where the key comes from, if encryption is configured.
    pub key_source: Option<KeySource>,
    /// How many `-v` were given (commands may print more detail).
    #[allow(dead_code)] // part of the command API
    pub verbosity: u8,
}

impl Context {
    /// Resolves the global options against the environment and the configuration file.
    pub fn load(global: &GlobalArgs) -> Result<Context, CliError> {
        let config = match &global.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        let repo = global.repo.clone().or_else(|| config.repo.clone());
        let key_source = if let Some(p) = &global.key_file {
            Some(KeySource::File(p.clone()))
        } else if std::env::var_os(KEY_ENV).is_some() {
            Some(KeySource::Env)
        } else {
            config.key_file.clone().map(KeySource::File)
        };
        Ok(Context {
            config,
            repo,
            key_source,
            verbosity: global.verbose,
        })
    }

    /// The repository URL, or a configuration error saying how to give one.
    pub fn repo_url(&self) -> Result<&str, CliError> {
        self.repo.as_deref().ok_or_else(|| {
            CliError::config(
                "no repository given: use --repo URL, CARTA_DR_REPO, or `repo` in the config file",
            )
        })
    }

    /// Opens the repository's store, wrapped in a retry layer (`wal.store_attempts` tries,
    /// jittered backoff, at most `max_elapsed` in all).
    pub fn store(&self, max_elapsed: Duration) -> Result<Arc<dyn Store>, CliError> {
        let url = self.repo_url()?;
        let backend = carta_dr_backends::open(url).map_err(|e| {
            let class = match e {
                carta_dr_core::Error::Invalid { .. } => ErrorClass::Config,
                ref other => ErrorClass::of(other),
            };
            CliError::new(class, format!("opening repository {url}: {e}"))
        })?;
        let policy = RetryPolicy {
            max_attempts: self.config.wal.store_attempts,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            max_elapsed,
        };
        Ok(Arc::new(RetryStore::new(backend, policy)))
    }

    /// The encryption key, if one is configured.
    pub fn key(&self) -> Result<Option<Arc<Key>>, CliError> {
        let key = match &self.key_source {
            None => return Ok(None),
            Some(KeySource::File(p)) => Key::from_file(p),
            Some(KeySource::Env) => Key::from_env(KEY_ENV),
        };
        key.map(|k| Some(Arc::new(k)))
            .map_err(|e| CliError::config(format!("loading the encryption key: {e}")))
    }

    /// How objects are sealed: zstd at the configured level, encrypted when a key is set.
    pub fn envelope_options(&self) -> Result<EnvelopeOptions, CliError> {
        let level = self
            .config
            .compression_level
            .unwrap_or(envelope::DEFAULT_ZSTD_LEVEL);
        let opts = EnvelopeOptions::zstd(level);
        Ok(match self.key()? {
            Some(k) => opts.with_key(k),
            None => opts,
        })
    }

    /// The WAL archive in the repository.
    pub fn wal_archive(&self, max_elapsed: Duration) -> Result<Arc<StoreWalArchive>, CliError> {
        Ok(Arc::new(StoreWalArchive::new(
            self.store(max_elapsed)?,
            self.envelope_options()?,
        )))
    }
}
