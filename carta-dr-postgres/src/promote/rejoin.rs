//! Rejoining an old primary as a standby of the new one.
//!
//! 1. The old primary must not be running (a fence stopped it, or it crashed).
//! 2. `pg_controldata` tells whether `pg_rewind` can work: it needs data page checksums or
//!    `wal_log_hints = on` (otherwise hint-bit-only page changes are not WAL-logged and the
//!    rewind could miss them). An unclean shutdown is fine: PostgreSQL 15's `pg_rewind`
//!    runs the target in single-user mode to finish crash recovery first (unless
//!    `--no-ensure-shutdown`).
//! 3. `pg_rewind --target-pgdata=DIR --source-server=NEW_PRIMARY --write-recovery-conf`:
//!    copies what changed since the timelines diverged and writes `standby.signal` and
//!    `primary_conninfo`.
//! 4. When a rewind is impossible (neither checksums nor `wal_log_hints`, or `pg_rewind`
//!    failed), and only with [`RejoinOptions::allow_delete_datadir`], the data directory is
//!    emptied and refilled:
//!    - with a repository ([`RejoinOptions::from_store`]): the newest backup is restored from
//!      the store as a standby (`standby.signal`, the store's `restore_command`, recovery to
//!      the end of the archive on the latest timeline) and `primary_conninfo` names the new
//!      primary, so the server replays the archived WAL and then streams
//!      ([`RejoinMethod::StoreRestore`]); the restored files are handed to the PostgreSQL OS
//!      user;
//!    - without one: `pg_basebackup -R -X stream` from the new primary
//!      ([`RejoinMethod::BaseBackup`]).
//!
//!    Without the flag the rejoin stops and says why: a data directory is never deleted
//!    unasked.
//!
//! Starting the server and waiting until it streams is left to the caller
//! ([`wait_streaming`]), which knows how the server is run (`pg_ctl`, systemd, a drill).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use carta_dr_core::traits::{StepOutcome, TimedStep};
use carta_dr_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::fence::postmaster_running;
use super::sql;
use crate::local_cluster::{conf_quote, PgInstall};
use crate::replication::Repo;
use crate::restore::{restore, BackupSelector, RecoveryTarget, RestoreOptions};

/// What `pg_controldata` says about rewinding a data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewindCheck {
    /// `Data page checksum version` is not 0.
    pub data_checksums: bool,
    /// `wal_log_hints setting: on`.
    pub wal_log_hints: bool,
    /// `Database cluster state` (`shut down`, `in production` after a crash, ...).
    pub cluster_state: String,
}

impl RewindCheck {
    /// Whether `pg_rewind` can be used.
    pub fn rewindable(&self) -> bool {
        self.data_checksums || self.wal_log_hints
    }

    /// Why a rewind is impossible, for people.
    pub fn explain(&self) -> String {
        if self.rewindable() {
            format!(
                "pg_rewind possible ({}; cluster state: {})",
                if self.data_checksums {
                    "data checksums on"
                } else {
                    "wal_log_hints on"
                },
                self.cluster_state
            )
        } else {
            "pg_rewind impossible: neither data checksums nor wal_log_hints are on in the old \
             primary (pg_controldata), so pages changed only by hint bits are not in the WAL \
             and a rewind could leave them stale; set wal_log_hints = on (restart needed) or \
             initialise with --data-checksums for next time, and rejoin now with a fresh copy \
             (--allow-delete-datadir)"
                .to_string()
        }
    }
}

/// Parses `pg_controldata` output.
pub fn parse_controldata(text: &str) -> Result<RewindCheck> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches(':').trim().to_string())
    };
    let checksum = field("Data page checksum version")
        .ok_or_else(|| Error::invalid_input("pg_controldata: no `Data page checksum version`"))?;
    let hints = field("wal_log_hints setting")
        .ok_or_else(|| Error::invalid_input("pg_controldata: no `wal_log_hints setting`"))?;
    Ok(RewindCheck {
        data_checksums: checksum != "0",
        wal_log_hints: hints == "on",
        cluster_state: field("Database cluster state").unwrap_or_default(),
    })
}

/// Runs `pg_controldata` on `data_dir`.
pub async fn rewind_check(install: &PgInstall, data_dir: &Path) -> Result<RewindCheck> {
    let mut cmd = install.command("pg_controldata");
    cmd.arg("-D").arg(data_dir).env("LC_ALL", "C");
    let out = install.run_checked(cmd, "pg_controldata").await?;
    parse_controldata(&String::from_utf8_lossy(&out.stdout))
}

/// How to rejoin.
#[derive(Clone, Debug)]
pub struct RejoinOptions {
    /// The old primary's data directory.
    pub data_dir: PathBuf,
    /// A superuser connection string of the new primary (`pg_rewind --source-server`,
    /// `pg_basebackup`).
    pub source_conninfo: String,
    /// The `primary_conninfo` the rejoined standby streams with (default: `source_conninfo`).
    pub primary_conninfo: Option<String>,
    /// Allow emptying the data directory for a fresh copy when a rewind is impossible.
    pub allow_delete_datadir: bool,
    /// Where the fresh copy comes from when a rewind is impossible: the newest backup of this
    /// repository (`None`: `pg_basebackup` from the new primary).
    pub from_store: Option<StoreRejoin>,
}

/// A fresh copy restored from a repository instead of copied from the new primary.
#[derive(Clone, Debug)]
pub struct StoreRejoin {
    /// The repository holding the backups and the WAL archive.
    pub repo: Repo,
    /// The `restore_command` the standby fetches archived WAL with (e.g.
    /// `/usr/bin/carta-dr --repo URL wal-fetch %f %p`).
    pub restore_command: String,
    /// Files restored at once.
    pub concurrency: usize,
}

/// How the old primary was brought back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejoinMethod {
    /// `pg_rewind`.
    PgRewind,
    /// A fresh `pg_basebackup` from the new primary.
    BaseBackup,
    /// The newest backup restored from the store, replaying the archive, then streaming.
    StoreRestore,
}

/// What a rejoin did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejoinReport {
    /// How.
    pub method: Option<RejoinMethod>,
    /// The prerequisites found.
    pub check: Option<RewindCheck>,
    /// Every step, timed.
    pub steps: Vec<TimedStep>,
}

fn timed(name: &str, start: Instant, r: &Result<String>) -> TimedStep {
    TimedStep {
        name: name.to_string(),
        duration: start.elapsed(),
        outcome: match r {
            Ok(_) => StepOutcome::Ok,
            Err(e) => StepOutcome::Failed { why: e.to_string() },
        },
        detail: r.as_ref().ok().cloned().unwrap_or_default(),
    }
}

/// Turns the stopped old primary into a standby of the new one (rewind, else a fresh copy
/// when allowed). Does not start it. `Err` when it could not be prepared; the report's steps
/// say what was tried.
pub async fn prepare_standby(
    install: &PgInstall,
    opts: &RejoinOptions,
) -> std::result::Result<RejoinReport, (RejoinReport, Error)> {
    let mut report = RejoinReport {
        method: None,
        check: None,
        steps: Vec::new(),
    };
    if let Some(pid) = postmaster_running(&opts.data_dir) {
        let e = Error::invalid(
            "data directory",
            opts.data_dir.display().to_string(),
            format!("a postmaster (pid {pid}) still runs on it: fence or stop it first"),
        );
        return Err((report, e));
    }
    let start = Instant::now();
    let check = rewind_check(install, &opts.data_dir).await;
    let check_r = check
        .as_ref()
        .map(|c| c.explain())
        .map_err(|e| Error::invalid_input(e.to_string()));
    report.steps.push(timed("check", start, &check_r));
    let check = match check {
        Ok(c) => c,
        Err(e) => return Err((report, e)),
    };
    report.check = Some(check.clone());

    if check.rewindable() {
        let start = Instant::now();
        let r = rewind(install, opts).await;
        report.steps.push(timed("pg_rewind", start, &r));
        match r {
            Ok(_) => {
                report.method = Some(RejoinMethod::PgRewind);
                return Ok(report);
            }
            Err(e) if !opts.allow_delete_datadir => {
                return Err((
                    report,
                    Error::invalid_input(format!(
                        "{e}; a fresh copy would replace the data directory: rerun with \
                         --allow-delete-datadir to allow that"
                    )),
                ))
            }
            Err(_) => {}
        }
    } else if !opts.allow_delete_datadir {
        let e = Error::invalid_input(check.explain());
        return Err((report, e));
    }
    let start = Instant::now();
    let (step, method, r) = match &opts.from_store {
        Some(store) => (
            "store_restore",
            RejoinMethod::StoreRestore,
            store_copy(install, opts, store).await,
        ),
        None => (
            "pg_basebackup",
            RejoinMethod::BaseBackup,
            fresh_copy(install, opts).await,
        ),
    };
    report.steps.push(timed(step, start, &r));
    match r {
        Ok(_) => {
            report.method = Some(method);
            Ok(report)
        }
        Err(e) => Err((report, e)),
    }
}

async fn rewind(install: &PgInstall, opts: &RejoinOptions) -> Result<String> {
    // A just-promoted server records its new timeline in pg_control only at its next
    // checkpoint; until then pg_rewind reads the old timeline from it, concludes "same
    // timeline, no rewind required" and the old primary cannot follow. Checkpoint first.
    let src = sql::redact(&opts.source_conninfo);
    let c = sql::connect(&opts.source_conninfo, Duration::from_secs(5)).await?;
    sql::simple_column(&c, "CHECKPOINT", Duration::from_secs(300), &src).await?;
    drop(c);
    let mut cmd = install.command("pg_rewind");
    cmd.arg("--target-pgdata")
        .arg(&opts.data_dir)
        .arg(format!("--source-server={}", opts.source_conninfo))
        .arg("--write-recovery-conf")
        .env("LC_ALL", "C");
    let out = install.run_checked(cmd, "pg_rewind").await?;
    set_primary_conninfo(install, opts)?;
    let text = String::from_utf8_lossy(&out.stderr);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("done");
    Ok(format!(
        "pg_rewind from {}: {last}",
        sql::redact(&opts.source_conninfo)
    ))
}

fn set_primary_conninfo(install: &PgInstall, opts: &RejoinOptions) -> Result<()> {
    let signal = opts.data_dir.join("standby.signal");
    if !signal.exists() {
        std::fs::write(&signal, b"")
            .map_err(|e| Error::io(format!("writing {}", signal.display()), e))?;
        install.give(&signal)?;
    }
    if let Some(pc) = &opts.primary_conninfo {
        let auto = opts.data_dir.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        text.push_str(&format!("primary_conninfo = {}\n", conf_quote(pc)));
        std::fs::write(&auto, text)
            .map_err(|e| Error::io(format!("writing {}", auto.display()), e))?;
        install.give(&auto)?;
    }
    Ok(())
}

/// Empties the data directory, keeping the directory itself (its owner and mode); only with
/// [`RejoinOptions::allow_delete_datadir`].
fn empty_data_dir(opts: &RejoinOptions) -> Result<()> {
    if !opts.allow_delete_datadir {
        return Err(Error::invalid_input(
            "a fresh copy replaces the data directory: --allow-delete-datadir is required",
        ));
    }
    let dir = &opts.data_dir;
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let p = e.path();
        let r = if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(|err| Error::io(format!("removing {}", p.display()), err))?;
    }
    Ok(())
}

async fn store_copy(
    install: &PgInstall,
    opts: &RejoinOptions,
    store: &StoreRejoin,
) -> Result<String> {
    empty_data_dir(opts)?;
    let dir = &opts.data_dir;
    let ropts = RestoreOptions {
        target_dir: dir.clone(),
        backup: BackupSelector::Latest,
        target: RecoveryTarget::EndOfWal,
        action: None,
        standby: true,
        delta: false,
        restore_command: Some(store.restore_command.clone()),
        extra_settings: Vec::new(),
        concurrency: store.concurrency.max(1),
    };
    let r = restore(&store.repo, &ropts).await?;
    // Restored by this process (root, say); the server runs as the PostgreSQL OS user.
    install.give_tree(dir)?;
    // Unlike `pg_rewind -R` and `pg_basebackup -R`, a restore writes no `primary_conninfo`.
    let streaming = RejoinOptions {
        primary_conninfo: Some(
            opts.primary_conninfo
                .clone()
                .unwrap_or_else(|| opts.source_conninfo.clone()),
        ),
        ..opts.clone()
    };
    set_primary_conninfo(install, &streaming)?;
    Ok(format!(
        "emptied {} and restored backup {} from the store ({} files, {} bytes); it replays \
         the archive, then streams from {}",
        dir.display(),
        r.backup.map(|b| b.to_string()).unwrap_or_default(),
        r.files_written,
        r.bytes_written,
        sql::redact(
            opts.primary_conninfo
                .as_deref()
                .unwrap_or(&opts.source_conninfo)
        )
    ))
}

async fn fresh_copy(install: &PgInstall, opts: &RejoinOptions) -> Result<String> {
    empty_data_dir(opts)?;
    let dir = &opts.data_dir;
    let mut cmd = install.command("pg_basebackup");
    cmd.arg("-D")
        .arg(dir)
        .args(["-R", "-X", "stream", "-c", "fast", "-d"])
        .arg(&opts.source_conninfo);
    install.run_checked(cmd, "pg_basebackup").await?;
    set_primary_conninfo(install, opts)?;
    Ok(format!(
        "emptied {} and copied it afresh with pg_basebackup from {}",
        dir.display(),
        sql::redact(&opts.source_conninfo)
    ))
}

/// Waits until the server at `conninfo` is in recovery with its WAL receiver `streaming` on
/// the timeline the new primary (`source_conninfo`) writes: a standby that is still on the
/// old timeline streams briefly and then stops, so the state alone proves nothing.
pub async fn wait_streaming(
    conninfo: &str,
    source_conninfo: &str,
    timeout: Duration,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let t = sql::redact(conninfo);
    let src = sql::redact(source_conninfo);
    let c = sql::connect(source_conninfo, Duration::from_secs(5)).await?;
    let tli = sql::insertion_timeline(&c, Duration::from_secs(5), &src).await?;
    drop(c);
    let want = format!("true streaming {}", tli.get());
    loop {
        let r = async {
            let c = sql::connect(conninfo, Duration::from_secs(2)).await?;
            sql::simple_value(
                &c,
                "SELECT pg_is_in_recovery()::text || ' ' || COALESCE((SELECT status || ' ' || \
                 received_tli || ' ' || COALESCE(sender_host, '') || ':' || \
                 COALESCE(sender_port::text, '') FROM pg_stat_wal_receiver), 'none')",
                Duration::from_secs(2),
                &t,
            )
            .await
        }
        .await;
        let last = match r {
            Ok(s) if s.starts_with(&format!("{want} ")) => {
                return Ok(format!(
                    "{t}: in recovery, streaming timeline {tli} from {}",
                    s.trim_start_matches(&format!("{want} "))
                ))
            }
            Ok(s) => s,
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("{t} to stream from the new primary ({timeout:?}); last: {last}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "pg_control version number:            1300\n\
Database cluster state:               in production\n\
wal_log_hints setting:                on\n\
Data page checksum version:           0\n";

    #[test]
    fn controldata_is_parsed() {
        let c = parse_controldata(SAMPLE).unwrap();
        assert!(c.wal_log_hints && !c.data_checksums && c.rewindable());
        assert_eq!(c.cluster_state, "in production");
        let none = SAMPLE.replace("setting:                on", "setting:                off");
        let c = parse_controldata(&none).unwrap();
        assert!(!c.rewindable());
        assert!(c
            .explain()
            .contains("neither data checksums nor wal_log_hints"));
        assert!(parse_controldata("garbage").is_err());
    }
}
