//! Driving `BASE_BACKUP` on a [`ReplicationConnection`]: the result set before the COPY
//! stream (start LSN and timeline, tablespaces), the stream itself, and the result set after it
//! (end LSN and timeline). Layout in `shared/formats.md` §5.3.

use carta_dr_core::{Error, Lsn, Result, TimelineId};
use postgres_protocol::message::backend::Message;

use super::conn::{copy_bytes, data_row, ReplicationConnection};
use super::copy::{parse_copy_data, CopyEvent};

/// Options of `BASE_BACKUP` (PostgreSQL 15 syntax).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseBackupOptions {
    /// `LABEL`.
    pub label: String,
    /// `CHECKPOINT 'fast'` instead of `'spread'`.
    pub fast_checkpoint: bool,
    /// `MANIFEST 'yes'` with CRC-32C checksums.
    pub manifest: bool,
    /// `MAX_RATE` in kB/s (32..=1048576).
    pub max_rate_kbps: Option<u32>,
    /// `VERIFY_CHECKSUMS` (data page checksums, when enabled on the cluster).
    pub verify_checksums: bool,
}

impl Default for BaseBackupOptions {
    fn default() -> Self {
        BaseBackupOptions {
            label: "carta-dr".into(),
            fast_checkpoint: true,
            manifest: true,
            max_rate_kbps: None,
            verify_checksums: true,
        }
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl BaseBackupOptions {
    /// The command text.
    pub fn command(&self) -> String {
        let mut o = vec![
            format!("LABEL {}", quote(&self.label)),
            format!(
                "CHECKPOINT '{}'",
                if self.fast_checkpoint {
                    "fast"
                } else {
                    "spread"
                }
            ),
            "PROGRESS".to_string(),
            "TABLESPACE_MAP".to_string(),
            format!("VERIFY_CHECKSUMS {}", self.verify_checksums),
        ];
        if self.manifest {
            o.push("MANIFEST 'yes'".into());
            o.push("MANIFEST_CHECKSUMS 'CRC32C'".into());
        }
        if let Some(r) = self.max_rate_kbps {
            o.push(format!("MAX_RATE {}", r.clamp(32, 1_048_576)));
        }
        format!("BASE_BACKUP ({})", o.join(", "))
    }
}

/// A tablespace as `BASE_BACKUP` lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tablespace {
    /// Its OID (`None` for the main data directory).
    pub oid: Option<u32>,
    /// Its location (`None` for the main data directory).
    pub location: Option<String>,
    /// Estimated size in bytes (with `PROGRESS`).
    pub size: Option<u64>,
}

/// What the server says before streaming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupStart {
    /// Where WAL replay must start.
    pub start_lsn: Lsn,
    /// The timeline at start.
    pub timeline: TimelineId,
    /// Tablespaces, the main data directory included.
    pub tablespaces: Vec<Tablespace>,
}

/// An event of the stream, or its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamItem {
    /// A decoded `CopyData`.
    Event(CopyEvent),
    /// The COPY stream ended: end LSN and timeline.
    End {
        /// The stop LSN (minimum recovery point).
        stop_lsn: Lsn,
        /// The timeline at stop.
        timeline: TimelineId,
    },
}

/// A running `BASE_BACKUP`.
#[derive(Debug)]
pub struct BaseBackupStream<'a> {
    conn: &'a mut ReplicationConnection,
    in_copy: bool,
    finished: bool,
}

fn lsn_tli(row: &[Option<String>], what: &str) -> Result<(Lsn, TimelineId)> {
    let lsn: Lsn = row
        .first()
        .and_then(|v| v.as_deref())
        .ok_or_else(|| Error::invalid_input(format!("BASE_BACKUP {what}: no LSN")))?
        .parse()?;
    let tli = row
        .get(1)
        .and_then(|v| v.as_deref())
        .and_then(|t| t.parse::<u32>().ok())
        .and_then(TimelineId::new)
        .ok_or_else(|| Error::invalid_input(format!("BASE_BACKUP {what}: bad timeline")))?;
    Ok((lsn, tli))
}

impl<'a> BaseBackupStream<'a> {
    /// Sends `BASE_BACKUP` and reads up to the start of the COPY stream.
    pub async fn start(
        conn: &'a mut ReplicationConnection,
        opts: &BaseBackupOptions,
    ) -> Result<(BaseBackupStream<'a>, BackupStart)> {
        let cmd = opts.command();
        tracing::debug!(command = %cmd, "starting base backup");
        conn.send_query(&cmd).await?;
        let mut sets: Vec<Vec<Vec<Option<String>>>> = Vec::new();
        let mut cur: Vec<Vec<Option<String>>> = Vec::new();
        loop {
            match conn.read_message().await? {
                Message::RowDescription(_) => cur = Vec::new(),
                Message::DataRow(r) => cur.push(data_row(&r)?),
                Message::CommandComplete(_) => sets.push(std::mem::take(&mut cur)),
                Message::CopyOutResponse(_) => break,
                Message::ErrorResponse(e) => {
                    let err = conn.server_error("BASE_BACKUP", &e);
                    // Drain to ReadyForQuery so the connection stays usable.
                    loop {
                        if let Message::ReadyForQuery(_) = conn.read_message().await? {
                            break;
                        }
                    }
                    return Err(err);
                }
                Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
                Message::ReadyForQuery(_) => {
                    return Err(Error::invalid_input(
                        "BASE_BACKUP ended before its COPY stream",
                    ))
                }
                _ => {}
            }
        }
        let start_row = sets
            .first()
            .and_then(|s| s.first())
            .ok_or_else(|| Error::invalid_input("BASE_BACKUP: no start position"))?;
        let (start_lsn, timeline) = lsn_tli(start_row, "start")?;
        let tablespaces = sets
            .get(1)
            .map(|rows| {
                rows.iter()
                    .map(|r| Tablespace {
                        oid: r
                            .first()
                            .and_then(|v| v.as_deref())
                            .and_then(|v| v.parse().ok()),
                        location: r.get(1).and_then(|v| v.clone()),
                        size: r
                            .get(2)
                            .and_then(|v| v.as_deref())
                            .and_then(|v| v.parse::<u64>().ok())
                            .map(|kb| kb * 1024),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok((
            BaseBackupStream {
                conn,
                in_copy: true,
                finished: false,
            },
            BackupStart {
                start_lsn,
                timeline,
                tablespaces,
            },
        ))
    }

    /// The next event; [`StreamItem::End`] once, after which the connection is idle again.
    pub async fn next(&mut self) -> Result<StreamItem> {
        if self.finished {
            return Err(Error::invalid_input("BASE_BACKUP stream already finished"));
        }
        if self.in_copy {
            loop {
                match self.conn.read_message().await? {
                    Message::CopyData(d) => {
                        return Ok(StreamItem::Event(parse_copy_data(copy_bytes(d))?))
                    }
                    Message::CopyDone => {
                        self.in_copy = false;
                        break;
                    }
                    Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
                    Message::ErrorResponse(e) => {
                        return Err(self.conn.server_error("BASE_BACKUP stream", &e))
                    }
                    _ => {
                        return Err(Error::invalid_input(
                            "BASE_BACKUP: unexpected message inside the COPY stream",
                        ))
                    }
                }
            }
        }
        let mut end: Option<(Lsn, TimelineId)> = None;
        let mut err = None;
        loop {
            match self.conn.read_message().await? {
                Message::DataRow(r) if end.is_none() => {
                    end = Some(lsn_tli(&data_row(&r)?, "end")?);
                }
                Message::ErrorResponse(e) => {
                    err = Some(self.conn.server_error("finishing BASE_BACKUP", &e))
                }
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        self.finished = true;
        if let Some(e) = err {
            return Err(e);
        }
        let (stop_lsn, timeline) =
            end.ok_or_else(|| Error::invalid_input("BASE_BACKUP: no end position"))?;
        Ok(StreamItem::End { stop_lsn, timeline })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_text() {
        let o = BaseBackupOptions {
            label: "it's".into(),
            ..Default::default()
        };
        let c = o.command();
        assert!(c.starts_with("BASE_BACKUP (LABEL 'it''s', CHECKPOINT 'fast'"));
        assert!(c.contains("MANIFEST 'yes'"));
    }
}
