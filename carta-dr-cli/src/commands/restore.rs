//! `carta-dr restore --to DIR`: writes a data directory from a backup and configures recovery
//! (`restore_command` = this carta-dr's `wal-fetch`, the recovery target, the signal file).
//!
//! The `restore_command` names the repository (`--repo`), the configuration file and the key
//! *file* this command was given; key material itself never lands in the configuration. A key
//! given through `CARTA_DR_KEY` must be in the server's environment too.

use std::path::PathBuf;
use std::time::Duration;

use carta_dr_core::{BackupId, Lsn};
use carta_dr_postgres::replication::Repo;
use carta_dr_postgres::restore::{
    restore_with_tablespaces, BackupSelector, RecoveryTarget, RestoreOptions, TablespaceRelocation,
    TargetAction,
};

use crate::context::{Context, KeySource};
use crate::error::CliError;
use crate::exit::ErrorClass;

const STORE_PATIENCE: Duration = Duration::from_secs(120);

/// Restore a backup into a data directory and configure point-in-time recovery.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The data directory to write (created with mode 0700; must be empty unless --delta).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// The backup id, or `latest` (the newest that ends before the target).
    #[arg(long, default_value = "latest", value_name = "ID")]
    pub backup: String,
    /// Recover to this time (PostgreSQL timestamp, e.g. `2026-11-23 12:00:00+00`).
    #[arg(long, value_name = "T", group = "target_kind")]
    pub target_time: Option<String>,
    /// Recover to this LSN.
    #[arg(long, value_name = "L", group = "target_kind")]
    pub target_lsn: Option<String>,
    /// Recover to this transaction id.
    #[arg(long, value_name = "X", group = "target_kind")]
    pub target_xid: Option<u64>,
    /// Recover to this named restore point.
    #[arg(long, value_name = "N", group = "target_kind")]
    pub target_name: Option<String>,
    /// `immediate`: stop as soon as the backup is consistent.
    #[arg(long, value_name = "immediate", group = "target_kind")]
    pub target: Option<String>,
    /// What the server does at the target.
    #[arg(long, value_enum)]
    pub target_action: Option<ActionArg>,
    /// Write standby.signal: the server follows the archive as a standby.
    #[arg(long)]
    pub standby: bool,
    /// Restore over an existing directory, rewriting only files whose checksum differs.
    #[arg(long)]
    pub delta: bool,
    /// Chunks and bundles restored at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Restore a tablespace elsewhere: `OLD=NEW`, OLD its OID or original directory, NEW an
    /// absolute directory (repeatable). The pg_tblspc link and tablespace_map follow.
    #[arg(long = "tablespace-map", value_name = "OLD=NEW")]
    pub tablespace_map: Vec<String>,
    /// Extra `key=value` for postgresql.auto.conf (repeatable; e.g. port=5433).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
}

/// `recovery_target_action`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ActionArg {
    /// Promote.
    Promote,
    /// Pause.
    Pause,
    /// Shut down.
    Shutdown,
}

/// Single-quotes a word for `/bin/sh`, which runs `restore_command`.
fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:=,+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Parses `YYYY-MM-DD HH:MM:SS[.fff][Z|UTC|+HH[:MM]|-HH[:MM]]` to Unix seconds (no offset:
/// UTC). Used only to choose the backup; PostgreSQL parses the text itself.
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, rest) = s.split_at_checked(10)?;
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let rest = rest.trim_start_matches(['T', ' ']);
    let (time, mut tz) = rest.split_at_checked(8)?;
    let mut t = time.split(':');
    let hh: i64 = t.next()?.parse().ok()?;
    let mm: i64 = t.next()?.parse().ok()?;
    let ss: i64 = t.next()?.parse().ok()?;
    if let Some(r) = tz.strip_prefix('.') {
        tz = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let tz = tz.trim();
    let offset: i64 = match tz {
        "" | "Z" | "UTC" | "GMT" | "+00" | "+00:00" => 0,
        _ => {
            let sign = match tz.get(..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let body = tz.get(1..)?;
            let (h, mi) = match body.split_once(':') {
                Some((h, mi)) => (h.parse::<i64>().ok()?, mi.parse::<i64>().ok()?),
                None => (body.parse::<i64>().ok()?, 0),
            };
            sign * (h * 3600 + mi * 60)
        }
    };
    // Days from civil (Howard Hinnant).
    let (yy, mth) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mth + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss - offset;
    u64::try_from(secs).ok()
}

/// The `restore_command` that fetches WAL from this context's repository: this binary's
/// absolute path, `--repo`, the key file and configuration file if any, `wal-fetch %f %p`.
pub fn wal_fetch_command(ctx: &Context) -> Result<String, CliError> {
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .map_err(|e| CliError::new(ErrorClass::Io, format!("locating the carta-dr binary: {e}")))?;
    let mut cmd = vec![sh_quote(&exe.display().to_string())];
    cmd.push("--repo".into());
    cmd.push(sh_quote(ctx.repo_url()?));
    if let Some(KeySource::File(p)) = &ctx.key_source {
        let p = p.canonicalize().unwrap_or_else(|_| p.clone());
        cmd.push("--key-file".into());
        cmd.push(sh_quote(&p.display().to_string()));
    }
    if let Ok(c) = std::env::var("CARTA_DR_CONFIG") {
        cmd.push("--config".into());
        cmd.push(sh_quote(&c));
    }
    cmd.push("wal-fetch %f %p".into());
    Ok(cmd.join(" "))
}

/// Runs `restore`.
pub async fn run(ctx: &Context, a: Args) -> Result<(), CliError> {
    let target = if let Some(t) = &a.target_time {
        let unix = parse_time(t);
        if unix.is_none() {
            tracing::warn!(time = %t, "cannot parse the target time; choosing the newest backup");
        }
        RecoveryTarget::Time {
            text: t.clone(),
            unix,
        }
    } else if let Some(l) = &a.target_lsn {
        RecoveryTarget::Lsn(l.parse::<Lsn>()?)
    } else if let Some(x) = a.target_xid {
        RecoveryTarget::Xid(x)
    } else if let Some(n) = &a.target_name {
        RecoveryTarget::Name(n.clone())
    } else if let Some(t) = &a.target {
        if t != "immediate" {
            return Err(CliError::new(
                ErrorClass::Usage,
                "--target takes only `immediate`",
            ));
        }
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::EndOfWal
    };
    let backup = if a.backup == "latest" {
        BackupSelector::Latest
    } else {
        BackupSelector::Id(a.backup.parse::<BackupId>()?)
    };
    let restore_command = wal_fetch_command(ctx)?;
    let mut extra = Vec::new();
    for s in &a.settings {
        let (k, v) = s.split_once('=').ok_or_else(|| {
            CliError::new(
                ErrorClass::Usage,
                format!("--set {s:?}: expected KEY=VALUE"),
            )
        })?;
        if !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(CliError::new(
                ErrorClass::Usage,
                format!("--set {s:?}: bad key"),
            ));
        }
        extra.push((k.to_string(), v.to_string()));
    }
    let opts = RestoreOptions {
        target_dir: a.to.clone(),
        backup,
        target,
        action: a.target_action.map(|x| match x {
            ActionArg::Promote => TargetAction::Promote,
            ActionArg::Pause => TargetAction::Pause,
            ActionArg::Shutdown => TargetAction::Shutdown,
        }),
        standby: a.standby,
        delta: a.delta,
        restore_command: Some(restore_command),
        extra_settings: extra,
        concurrency: a.concurrency.max(1),
    };
    let repo = Repo::new(ctx.store(STORE_PATIENCE)?, ctx.envelope_options()?);
    let relocate = a
        .tablespace_map
        .iter()
        .map(|s| s.parse::<TablespaceRelocation>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::new(ErrorClass::Usage, format!("--tablespace-map: {e}")))?;
    let r = restore_with_tablespaces(&repo, &opts, &relocate)
        .await
        .map_err(|e| CliError::from(e).context(format!("restoring into {}", a.to.display())))?;
    println!(
        "restored backup {} into {}: {} files written, {} unchanged, {} removed",
        r.backup.map(|b| b.to_string()).unwrap_or_default(),
        a.to.display(),
        r.files_written,
        r.files_unchanged,
        r.files_removed
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_quoting() {
        assert_eq!(parse_time("1970-01-02 00:00:00"), Some(86_400));
        assert_eq!(parse_time("1970-01-02 01:00:00+01"), Some(86_400));
        assert_eq!(parse_time("1970-01-02 00:00:00.123456 UTC"), Some(86_400));
        assert_eq!(parse_time("2026-11-23 12:17:18+00"), Some(1_795_436_238));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(sh_quote("/usr/bin/carta-dr"), "/usr/bin/carta-dr");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }
}
