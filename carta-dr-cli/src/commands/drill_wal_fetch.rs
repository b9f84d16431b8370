//! `carta-dr drill wal-fetch --until SEGMENT NAME DEST`: the `restore_command` of a restore
//! drill against a running cluster.
//!
//! The cluster keeps archiving while the drill restores beside it, so plain `wal-fetch` would
//! let the restore replay WAL archived after the declared disaster and understate the RPO.
//! This serves only what the archive held at the disaster: segments up to `--until` (the
//! newest one archived then) and history files of timelines up to its timeline; anything
//! newer is answered "not in the archive", which ends recovery there.

use carta_dr_core::WalFileName;

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;

/// Fetch a WAL file for a drill's restore, ignoring what was archived after the disaster.
#[derive(clap::Args, Debug)]
#[group(skip)]
pub struct Args {
    /// The newest WAL segment archived at the declared disaster.
    #[arg(long, value_name = "SEGMENT")]
    pub until: String,
    /// What `wal-fetch` takes.
    #[command(flatten)]
    pub fetch: super::wal_fetch::Args,
}

/// Whether `name` was in the archive when `until` was its newest segment.
pub fn archived_by(name: &WalFileName, until: &WalFileName) -> bool {
    let WalFileName::Segment(until) = until else {
        return false;
    };
    let seg_ok = |s: &carta_dr_core::WalSegmentName| {
        s.timeline <= until.timeline && (s.log, s.seg) <= (until.log, until.seg)
    };
    match name {
        WalFileName::Segment(s) | WalFileName::Partial(s) => seg_ok(s),
        WalFileName::Backup { segment, .. } => seg_ok(segment),
        WalFileName::History(t) => *t <= until.timeline,
    }
}

/// Runs `drill wal-fetch`.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let parse = |s: &str| {
        s.parse::<WalFileName>().map_err(|e| {
            CliError::new(
                ErrorClass::InvalidInput,
                format!("{s:?} is not a WAL file name: {e}"),
            )
        })
    };
    let until = parse(&args.until)?;
    if !matches!(until, WalFileName::Segment(_)) {
        return Err(CliError::new(
            ErrorClass::InvalidInput,
            format!("--until {} is not a WAL segment name", args.until),
        ));
    }
    let name = parse(&args.fetch.name)?;
    if !archived_by(&name, &until) {
        tracing::info!(file = %args.fetch.name, until = %args.until, "archived after the drill's disaster: not served");
        return Err(CliError::new(
            ErrorClass::NotFound,
            format!(
                "{} was archived after the drill's disaster (newest then: {})",
                args.fetch.name, args.until
            ),
        ));
    }
    super::wal_fetch::run(ctx, args.fetch).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> WalFileName {
        s.parse().expect("name")
    }

    #[test]
    fn the_command_line_parses() {
        use clap::{CommandFactory, Parser};
        crate::Cli::command().debug_assert();
        let cli = crate::Cli::try_parse_from([
            "carta-dr",
            "drill",
            "wal-fetch",
            "--until",
            "000000010000000000000003",
            "000000010000000000000002",
            "pg_wal/RECOVERYXLOG",
        ]);
        assert!(cli.is_ok(), "{:?}", cli.err());
    }

    #[test]
    fn serves_only_what_was_archived_at_the_disaster() {
        let until = n("000000010000000200000003");
        assert!(archived_by(&n("000000010000000200000003"), &until));
        assert!(archived_by(&n("0000000100000001000000FF"), &until));
        assert!(!archived_by(&n("000000010000000200000004"), &until));
        assert!(!archived_by(&n("000000010000000300000000"), &until));
        assert!(!archived_by(&n("000000020000000200000001"), &until));
        assert!(archived_by(&n("00000001.history"), &until));
        assert!(!archived_by(&n("00000002.history"), &until));
        assert!(archived_by(
            &n("000000010000000200000001.00000028.backup"),
            &until
        ));
        assert!(!archived_by(
            &n("000000010000000200000009.00000028.backup"),
            &until
        ));
        assert!(!archived_by(
            &n("000000010000000200000003"),
            &n("00000001.history")
        ));
    }
}
