//! The CLI's error: a class (which picks the exit status) and a message that says what failed
//! and where.

use std::fmt;

use crate::exit::ErrorClass;

/// A failed command.
#[derive(Debug)]
pub struct CliError {
    /// Picks the exit status (see [`crate::exit::TABLE`]).
    pub class: ErrorClass,
    /// What failed and where; printed to stderr. Empty for a failure that was already
    /// reported (see [`CliError::silent`]).
    pub message: String,
}

impl CliError {
    /// An error of `class`.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        CliError {
            class,
            message: message.into(),
        }
    }

    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Config, message)
    }

    /// A failure whose report the command has already printed; only the status remains.
    #[allow(dead_code)] // for commands that print their own report (verify, ...)
    pub fn silent(class: ErrorClass) -> Self {
        Self::new(class, String::new())
    }

    /// A local I/O error on `path`.
    pub fn io(what: impl fmt::Display, path: &std::path::Path, e: std::io::Error) -> Self {
        let class = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorClass::NotFound
        } else {
            ErrorClass::Io
        };
        Self::new(class, format!("{what} {}: {e}", path.display()))
    }

    /// The same error with `context` ("pushing 0000...07 to file:///repo") in front.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = if self.message.is_empty() {
            context.to_string()
        } else {
            format!("{context}: {}", self.message)
        };
        self
    }

    /// The same error with another class (used by `wal-fetch` to turn every failure other
    /// than absence into [`ErrorClass::RecoveryAbort`]).
    pub fn with_class(mut self, class: ErrorClass) -> Self {
        self.class = class;
        self
    }

    /// The exit status.
    pub fn exit_code(&self) -> u8 {
        self.class.exit_code()
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl From<carta_dr_core::Error> for CliError {
    fn from(e: carta_dr_core::Error) -> Self {
        CliError::new(ErrorClass::of(&e), e.to_string())
    }
}

/// Adds context to a result's error, converting it to a [`CliError`].
#[allow(dead_code)] // part of the command API
pub trait ResultExt<T> {
    /// Converts the error and puts `context` in front of it.
    fn context(self, context: impl fmt::Display) -> Result<T, CliError>;
    /// Like [`ResultExt::context`], building the context lazily.
    fn with_context<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T, CliError>;
}

impl<T, E: Into<CliError>> ResultExt<T> for Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T, CliError> {
        self.map_err(|e| e.into().context(context))
    }
    fn with_context<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T, CliError> {
        self.map_err(|e| e.into().context(f()))
    }
}
