//! The one table mapping error classes to exit statuses.
//!
//! Every failure of every command is classified into an [`ErrorClass`]; the class alone picks
//! the exit status. `docs/cli.md` reproduces [`TABLE`]; a test keeps the two in step.
//!
//! Two callers read these statuses mechanically and shape the table:
//!
//! * PostgreSQL's `archive_command` (`src/backend/postmaster/pgarch.c`): any non-zero status
//!   means "not archived, try again later"; a status above 125 (or death by a signal) makes
//!   the archiver process exit with FATAL and be restarted. `wal-push` therefore only ever
//!   uses statuses from 1 to 125.
//! * PostgreSQL's `restore_command` (`src/backend/access/transam/xlogarchive.c`,
//!   `RestoreArchivedFile`): a status from 1 to 125 means "this file is not in the archive",
//!   after which recovery ends or moves on to `pg_wal`/streaming. A status above 125 (checked
//!   by `wait_result_is_any_signal(rc, true)` in `src/common/wait_error.c`) makes the startup
//!   process exit with FATAL, aborting recovery; exactly `128 + SIGTERM` (143) is read as a
//!   fast shutdown instead. `wal-fetch` therefore exits 1 only when the file is truly absent
//!   and [`RECOVERY_ABORT`] (200) for every other failure, so that an unreachable store or a
//!   corrupt object can never be mistaken for the end of the archive.

use carta_dr_core::Error;

/// Success.
pub const OK: u8 = 0;

/// The status `wal-fetch` (and any command serving `restore_command`) exits with on every
/// failure other than "not in the archive": above 125 so PostgreSQL aborts recovery, not 126
/// or 127 (the shell's "not executable" / "not found", which PostgreSQL logs as such), not
/// `128 + n` for a signal `n` (PostgreSQL reads 143 as SIGTERM and people read 129..=159 as
/// signals).
pub const RECOVERY_ABORT: u8 = 200;

/// What kind of failure ended a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The requested object or file does not exist (for `wal-fetch`: not in the archive).
    NotFound,
    /// The command line is wrong (clap's own status).
    Usage,
    /// The configuration file, the repository URL or the key is missing or wrong.
    Config,
    /// The store could not be reached or timed out, after retries.
    Unavailable,
    /// Stored or local data failed an integrity check.
    Corrupt,
    /// The content conflicts with what is stored (same name, other bytes; another cluster).
    Conflict,
    /// An input file (a WAL segment, a history file...) is not acceptable.
    InvalidInput,
    /// A local file-system operation failed.
    Io,
    /// Decryption or authentication failed.
    Crypto,
    /// The store cannot do what was asked.
    NotSupported,
    /// Anything else (cancellation, an unexpected state).
    Internal,
    /// A `restore_command` failure that must abort recovery (see [`RECOVERY_ABORT`]).
    RecoveryAbort,
}

/// The table: class, exit status, what it means. `docs/cli.md` shows the same table.
pub const TABLE: &[(ErrorClass, u8, &str)] = &[
    (
        ErrorClass::NotFound,
        1,
        "not found (wal-fetch: the file is not in the archive)",
    ),
    (ErrorClass::Usage, 2, "bad command line"),
    (
        ErrorClass::Config,
        3,
        "bad or missing configuration, repository URL or key",
    ),
    (
        ErrorClass::Unavailable,
        4,
        "store unreachable or timed out after retries",
    ),
    (ErrorClass::Corrupt, 5, "data failed an integrity check"),
    (
        ErrorClass::Conflict,
        6,
        "content conflicts with what is stored",
    ),
    (
        ErrorClass::InvalidInput,
        7,
        "input file refused by validation",
    ),
    (ErrorClass::Io, 8, "local file-system error"),
    (ErrorClass::Crypto, 9, "decryption or authentication failed"),
    (ErrorClass::NotSupported, 10, "the store cannot do this"),
    (ErrorClass::Internal, 11, "other failure"),
    (
        ErrorClass::RecoveryAbort,
        RECOVERY_ABORT,
        "wal-fetch failed for a reason other than absence: PostgreSQL aborts recovery",
    ),
];

impl ErrorClass {
    /// The exit status of this class.
    pub fn exit_code(self) -> u8 {
        TABLE
            .iter()
            .find(|(c, _, _)| *c == self)
            .map(|(_, code, _)| *code)
            .unwrap_or(11)
    }

    /// The class of a core error.
    pub fn of(e: &Error) -> Self {
        match e {
            Error::NotFound { .. } => ErrorClass::NotFound,
            Error::AlreadyExists { .. } | Error::Conflict { .. } => ErrorClass::Conflict,
            Error::Invalid { .. } | Error::InvalidInput { .. } => ErrorClass::InvalidInput,
            Error::Corrupt { .. } => ErrorClass::Corrupt,
            Error::Crypto { .. } => ErrorClass::Crypto,
            Error::Io { .. } => ErrorClass::Io,
            Error::Backend { .. } | Error::Unavailable { .. } | Error::Timeout { .. } => {
                ErrorClass::Unavailable
            }
            Error::NotSupported { .. } => ErrorClass::NotSupported,
            _ => ErrorClass::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_shell_safe() {
        let mut seen = std::collections::HashSet::new();
        for (class, code, _) in TABLE {
            assert!(seen.insert(*code), "{class:?} reuses exit status {code}");
            assert_eq!(class.exit_code(), *code);
            if *class != ErrorClass::RecoveryAbort {
                assert!(
                    (1..=125).contains(code),
                    "{class:?}: {code} outside 1..=125"
                );
            }
        }
    }

    // Above 125 so PostgreSQL aborts recovery; not a shell or signal status. Checked at
    // compile time.
    const _: () = assert!(
        RECOVERY_ABORT > 125
            && !(RECOVERY_ABORT >= 126 && RECOVERY_ABORT <= 127)
            && !(RECOVERY_ABORT >= 129 && RECOVERY_ABORT <= 159)
    );

    #[test]
    fn docs_show_the_same_table() {
        let doc = include_str!("../../docs/cli.md");
        for (class, code, _) in TABLE {
            let row = format!("| {code} | `{class:?}` |");
            assert!(doc.contains(&row), "docs/cli.md lacks the row {row:?}");
        }
    }
}
