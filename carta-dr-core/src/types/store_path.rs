use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The longest path a store accepts, in bytes (S3's key limit).
pub const MAX_STORE_PATH_LEN: usize = 1024;

/// A validated object path inside a store: `/`-separated, relative, and safe to map onto a
/// file system or an object key.
///
/// Rejected: the empty path, absolute paths, empty segments (`a//b`, a trailing `/`), the
/// segments `.` and `..`, control characters, backslashes, and paths over
/// [`MAX_STORE_PATH_LEN`] bytes. A path read back from a store is validated again before it
/// is used, so a crafted listing cannot escape a restore directory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath(String);

impl StorePath {
    /// Validates `s` as a store path.
    pub fn new(s: impl Into<String>) -> Result<Self, Error> {
        let s = s.into();
        validate(&s)?;
        Ok(StorePath(s))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This path with one or more segments appended (`child` is validated as a path).
    pub fn join(&self, child: &str) -> Result<Self, Error> {
        StorePath::new(format!("{}/{}", self.0, child))
    }

    /// The path's segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The parent path, or `None` for a single-segment path.
    pub fn parent(&self) -> Option<StorePath> {
        self.0
            .rsplit_once('/')
            .map(|(p, _)| StorePath(p.to_string()))
    }

    /// Whether this path lies under `prefix` as whole segments (`a/b` is under `a`, `ab` is
    /// not).
    pub fn starts_with(&self, prefix: &StorePath) -> bool {
        self.0 == prefix.0
            || (self.0.starts_with(&prefix.0)
                && self.0.as_bytes().get(prefix.0.len()) == Some(&b'/'))
    }
}

fn validate(s: &str) -> Result<(), Error> {
    let bad = |r: &str| Err(Error::invalid("store path", s, r));
    if s.is_empty() {
        return bad("empty");
    }
    if s.len() > MAX_STORE_PATH_LEN {
        return bad("longer than 1024 bytes");
    }
    if s.starts_with('/') {
        return bad("absolute paths are not allowed");
    }
    if s.contains('\\') {
        return bad("backslashes are not allowed");
    }
    if s.chars().any(char::is_control) {
        return bad("control characters are not allowed");
    }
    for seg in s.split('/') {
        match seg {
            "" => return bad("empty segment"),
            "." | ".." => return bad("'.' and '..' segments are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for StorePath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        StorePath::new(s)
    }
}

impl AsRef<str> for StorePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for StorePath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StorePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        StorePath::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for ok in [
            "a",
            "wal/00000001/000000010000000000000007",
            "backup/x.y-z_1",
            "ü/é",
        ] {
            assert_eq!(StorePath::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_escapes_and_junk() {
        let long = "a".repeat(1025);
        for bad in [
            "", "/a", "a/", "a//b", "..", "a/../b", ".", "./a", "a/.", "a\\b", "a\nb", "a\u{7f}b",
            "a\0", &long,
        ] {
            assert!(StorePath::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn prefix_is_segment_wise() {
        let a = StorePath::new("a").unwrap();
        assert!(StorePath::new("a/b").unwrap().starts_with(&a));
        assert!(StorePath::new("a").unwrap().starts_with(&a));
        assert!(!StorePath::new("ab").unwrap().starts_with(&a));
        assert_eq!(
            StorePath::new("a/b/c").unwrap().parent().unwrap().as_str(),
            "a/b"
        );
        assert_eq!(StorePath::new("a/b/c").unwrap().file_name(), "c");
        assert!(a.join("../x").is_err());
    }
}
