//! The one public error type of carta-dr-core.
//!
//! Backends map their private errors into [`Error`]; the CLI maps its classes to documented
//! exit codes in one table. Every variant carries the context needed to act on it: the path,
//! the chunk, the LSN or the offset.

use std::fmt;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in carta-dr.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object or file does not exist.
    #[error("not found: {path}")]
    NotFound {
        /// What was looked for.
        path: String,
    },

    /// A create-only write found an object already there.
    #[error("already exists: {path}")]
    AlreadyExists {
        /// The object that exists.
        path: String,
    },

    /// A path, name or other identifier failed validation.
    #[error("invalid {kind} {value:?}: {reason}")]
    Invalid {
        /// What kind of value it was (`store path`, `LSN`, `WAL file name`, ...).
        kind: &'static str,
        /// The offending value, as given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },

    /// Stored or read data failed an integrity check.
    #[error("corrupt object {path}{}: {what}", chunk.map(|c| format!(" (chunk {c})")).unwrap_or_default())]
    Corrupt {
        /// The object or file.
        path: String,
        /// The chunk index within the object, where known.
        chunk: Option<u64>,
        /// What failed.
        what: String,
    },

    /// Decryption or authentication failed, or a key is missing or malformed.
    #[error("crypto error on {path}: {what}")]
    Crypto {
        /// The object or key source.
        path: String,
        /// What failed.
        what: String,
    },

    /// Contents conflict with what is already stored (for example a WAL segment pushed twice
    /// with different bytes).
    #[error("conflict at {path}: {what}")]
    Conflict {
        /// The object in conflict.
        path: String,
        /// What differs.
        what: String,
    },

    /// An operating-system I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A backend (S3, ...) reported an error that has no better class.
    #[error("{backend} error during {context}: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What was being done, with the path.
        context: String,
        /// The backend's message.
        message: String,
        /// Whether the same call may succeed if tried again.
        retryable: bool,
    },

    /// The store is (deliberately) not taking calls: an open circuit breaker, injected
    /// faults, or a backend that answered "unavailable".
    #[error("unavailable: {what}")]
    Unavailable {
        /// Why.
        what: String,
    },

    /// An operation ran out of time.
    #[error("timed out: {what}")]
    Timeout {
        /// What was being done.
        what: String,
    },

    /// The backend cannot do this at all; it never degrades silently.
    #[error("not supported by {backend}: {what}")]
    NotSupported {
        /// The backend.
        backend: String,
        /// The missing capability.
        what: String,
    },

    /// Input (a PostgreSQL file, a record, a configuration) is not acceptable.
    #[error("{what}")]
    InvalidInput {
        /// What is wrong, with where.
        what: String,
    },

    /// The operation was cancelled.
    #[error("cancelled: {what}")]
    Cancelled {
        /// What was cancelled.
        what: String,
    },
}

impl Error {
    /// Whether trying the same call again may succeed.
    ///
    /// Transient conditions (I/O interruptions, timeouts, a store that is down, backend errors
    /// flagged retryable) are; everything that describes the data or the request is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ),
            Error::Backend { retryable, .. } => *retryable,
            Error::Unavailable { .. } | Error::Timeout { .. } => true,
            _ => false,
        }
    }

    /// Whether this error means "the object does not exist".
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// Builds an [`Error::Io`] with context.
    pub fn io(context: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            context: context.to_string(),
            source,
        }
    }

    /// Builds an [`Error::Invalid`].
    pub fn invalid(
        kind: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            kind,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Corrupt`].
    pub fn corrupt(path: impl fmt::Display, chunk: Option<u64>, what: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.to_string(),
            chunk,
            what: what.into(),
        }
    }

    /// Builds an [`Error::InvalidInput`].
    pub fn invalid_input(what: impl Into<String>) -> Self {
        Error::InvalidInput { what: what.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classes() {
        assert!(Error::Timeout { what: "x".into() }.is_retryable());
        assert!(Error::Unavailable { what: "x".into() }.is_retryable());
        assert!(!Error::NotFound { path: "a".into() }.is_retryable());
        assert!(!Error::corrupt("a", Some(1), "crc").is_retryable());
        assert!(Error::io("read a", std::io::ErrorKind::TimedOut.into()).is_retryable());
        assert!(!Error::io("read a", std::io::ErrorKind::PermissionDenied.into()).is_retryable());
    }

    #[test]
    fn corrupt_display_names_chunk() {
        let e = Error::corrupt("wal/x", Some(3), "crc mismatch");
        assert_eq!(
            e.to_string(),
            "corrupt object wal/x (chunk 3): crc mismatch"
        );
    }
}
