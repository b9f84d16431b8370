//! The PostgreSQL 15 `BASE_BACKUP` COPY stream (`src/backend/backup/basebackup_copy.c`):
//! every `CopyData` starts with a type byte.
//!
//! | byte | meaning | payload |
//! |---|---|---|
//! | `n` | a new archive starts | archive name, tablespace location (two C strings) |
//! | `d` | bytes of the current archive, or of the manifest after `m` | raw bytes |
//! | `p` | progress | i64 (big-endian) bytes sent so far |
//! | `m` | the backup manifest follows in `d` messages | none |

use bytes::{Buf, Bytes};
use carta_dr_core::{Error, Result};

/// `'n'`: new archive.
pub const MSG_NEW_ARCHIVE: u8 = b'n';
/// `'d'`: archive or manifest data.
pub const MSG_DATA: u8 = b'd';
/// `'p'`: progress report.
pub const MSG_PROGRESS: u8 = b'p';
/// `'m'`: the manifest follows.
pub const MSG_MANIFEST: u8 = b'm';

/// One decoded `CopyData` of a base backup stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyEvent {
    /// A new archive: `base.tar` (data directory) or `<oid>.tar` (tablespace at `location`).
    NewArchive {
        /// The archive name, with a compression suffix under server compression.
        name: String,
        /// The tablespace location (empty for the main data directory).
        location: String,
    },
    /// Bytes of the current archive (or of the manifest after [`CopyEvent::ManifestStart`]).
    Data(Bytes),
    /// Bytes sent so far.
    Progress(u64),
    /// The backup manifest follows.
    ManifestStart,
}

fn cstring(buf: &mut Bytes, offset: usize, what: &str) -> Result<String> {
    let nul = buf.iter().position(|b| *b == 0).ok_or_else(|| {
        Error::invalid_input(format!(
            "BASE_BACKUP stream: {what} at offset {offset} is not NUL-terminated"
        ))
    })?;
    let s = buf.split_to(nul);
    buf.advance(1);
    String::from_utf8(s.to_vec()).map_err(|_| {
        Error::invalid_input(format!(
            "BASE_BACKUP stream: {what} at offset {offset} is not UTF-8"
        ))
    })
}

/// Decodes one `CopyData` payload. Never panics, whatever the input.
pub fn parse_copy_data(mut data: Bytes) -> Result<CopyEvent> {
    if data.is_empty() {
        return Err(Error::invalid_input("BASE_BACKUP stream: empty CopyData"));
    }
    let kind = data.get_u8();
    match kind {
        MSG_NEW_ARCHIVE => {
            let total = data.len() + 1;
            let name = cstring(&mut data, 1, "archive name")?;
            let at = total - data.len();
            let location = cstring(&mut data, at, "tablespace location")?;
            Ok(CopyEvent::NewArchive { name, location })
        }
        MSG_DATA => Ok(CopyEvent::Data(data)),
        MSG_PROGRESS => {
            if data.len() < 8 {
                return Err(Error::invalid_input(
                    "BASE_BACKUP stream: progress message shorter than 8 bytes",
                ));
            }
            Ok(CopyEvent::Progress(data.get_i64().max(0) as u64))
        }
        MSG_MANIFEST => Ok(CopyEvent::ManifestStart),
        other => Err(Error::invalid_input(format!(
            "BASE_BACKUP stream: unknown CopyData type 0x{other:02x}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_kind() {
        assert_eq!(
            parse_copy_data(Bytes::from_static(b"nbase.tar\0\0")).unwrap(),
            CopyEvent::NewArchive {
                name: "base.tar".into(),
                location: String::new()
            }
        );
        assert_eq!(
            parse_copy_data(Bytes::from_static(b"dabc")).unwrap(),
            CopyEvent::Data(Bytes::from_static(b"abc"))
        );
        assert_eq!(
            parse_copy_data(Bytes::from_static(b"p\0\0\0\0\0\0\x01\x00")).unwrap(),
            CopyEvent::Progress(256)
        );
        assert_eq!(
            parse_copy_data(Bytes::from_static(b"m")).unwrap(),
            CopyEvent::ManifestStart
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [&b""[..], b"nbase.tar", b"p\0\0", b"z", b"nx\0"] {
            assert!(
                parse_copy_data(Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
