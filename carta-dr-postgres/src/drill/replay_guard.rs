//! Before the drill replays WAL beside a running server: no `CREATE TABLESPACE` in it.
//!
//! Replaying an `XLOG_TBLSPC_CREATE` record creates the tablespace at the absolute location
//! the record names, and PostgreSQL 15 first removes a `PG_15_*` directory already there:
//! beside a running server that is the server's own tablespace. Tablespaces already in the
//! backup are relocated by the restore; one created after the backup started is only in the
//! WAL, where it cannot be redirected. [`ReplayGuard`] reads the WAL the restored copy will
//! replay (from the backup's start LSN to the newest archived segment the restore may use)
//! and refuses before anything starts when it finds such a record.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use carta_dr_core::walverify::{select_segments, TablespaceCreate, TablespaceCreateScan};
use carta_dr_core::{Error, Lsn, Result, WalArchive, WalFileName, WalSegmentName, WalSegmentSize};

use crate::local_cluster::OsUser;

/// An incremental scan of the WAL a restore will replay, fed from the archive.
pub struct ReplayGuard {
    scan: TablespaceCreateScan,
    seg: WalSegmentSize,
    backup_id: String,
    start: Lsn,
    next_segno: u64,
    segments: u64,
}

/// What [`ReplayGuard::check`] allowed.
#[derive(Debug, Default)]
pub struct GuardVerdict {
    /// Segments read so far.
    pub segments: u64,
    /// Where reading stands.
    pub position: Lsn,
    /// Tablespace creations let through, because the server's OS user can neither own nor
    /// write their location (the replay stops there with an error instead of touching it).
    pub allowed: Vec<TablespaceCreate>,
}

impl ReplayGuard {
    /// A scan of the WAL replayed after the backup `backup_id` that started at `start`.
    pub fn new(backup_id: String, start: Lsn, seg: WalSegmentSize) -> Self {
        ReplayGuard {
            scan: TablespaceCreateScan::new(start, None, seg),
            seg,
            backup_id,
            start,
            next_segno: start.0 / seg.bytes(),
            segments: 0,
        }
    }

    /// The backup whose WAL this reads.
    pub fn backup_id(&self) -> &str {
        &self.backup_id
    }

    /// Reads the archived segments not read yet, up to and including `tip`, choosing for each
    /// segment number the file a recovery following `tip`'s timeline reads.
    pub async fn advance(&mut self, archive: &dyn WalArchive, tip: WalSegmentName) -> Result<()> {
        let tip_segno = tip.segno(self.seg);
        if tip_segno < self.next_segno || self.scan.is_done() {
            return Ok(());
        }
        let names: Vec<WalFileName> = archive
            .list(None)
            .await?
            .into_iter()
            .map(|w| w.name)
            .collect();
        for name in select_segments(&names, Some(tip.timeline)) {
            let Some(s) = name.segment() else { continue };
            let segno = s.segno(self.seg);
            if segno < self.next_segno || segno > tip_segno {
                continue;
            }
            let data = archive.fetch(&name).await?;
            self.scan.segment(segno, &data);
            self.segments += 1;
            self.next_segno = segno + 1;
            if self.scan.is_done() {
                break;
            }
        }
        // A segment missing from the archive shows as a stop in the next one, or here.
        if self.next_segno <= tip_segno && !self.scan.is_done() {
            return Err(Error::invalid_input(format!(
                "the archive lacks WAL segment {} that the restore would replay after backup {}",
                WalSegmentName::from_segno(tip.timeline, self.next_segno, self.seg)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| self.next_segno.to_string()),
                self.backup_id
            )));
        }
        Ok(())
    }

    /// Refuses when the WAL read so far creates a tablespace at a location the restored
    /// server could write (`server_uid` is the OS user it runs as), or when the WAL could not
    /// be read up to `tip` (what lies beyond would be unchecked).
    pub fn check(&self, tip: WalSegmentName, server_uid: u32) -> Result<GuardVerdict> {
        let mut verdict = GuardVerdict {
            segments: self.segments,
            position: self.scan.position(),
            allowed: Vec::new(),
        };
        for c in self.scan.creates() {
            if c.location.is_empty() {
                // An in-place tablespace: created under pg_tblspc of the restored copy.
                verdict.allowed.push(c.clone());
                continue;
            }
            if cannot_write(Path::new(&c.location), server_uid) {
                verdict.allowed.push(c.clone());
                continue;
            }
            return Err(Error::invalid_input(format!(
                "refusing to start the restored copy: the WAL it would replay creates \
                 tablespace {} at {} (record at {}, after backup {} started at {}). Replaying \
                 it beside the running server would create the tablespace at {}, the server's \
                 own tablespace location (PostgreSQL 15 first removes the PG_15_* directory \
                 there). Nothing was started. Take a new base backup (carta-dr backup): its \
                 tablespaces are relocated into the drill's directory. Or run the drill with \
                 --run-as an OS user that neither owns nor can write {} (the replay then \
                 stops at that record with an error).",
                c.oid, c.location, c.lsn, self.backup_id, self.start, c.location, c.location
            )));
        }
        if let Some(why) = self.scan.stopped() {
            if self.scan.position() < tip.start_lsn(self.seg) {
                return Err(Error::invalid_input(format!(
                    "refusing to start the restored copy: the WAL it would replay after backup \
                     {} cannot be read past {} ({why}), so it cannot be checked for CREATE \
                     TABLESPACE up to the end of the archive ({tip})",
                    self.backup_id,
                    self.scan.position()
                )));
            }
        }
        Ok(verdict)
    }
}

/// The OS user id the restored server runs as.
pub fn server_uid(run_as: Option<&OsUser>) -> u32 {
    match run_as {
        Some(u) => u.uid,
        // SAFETY: geteuid has no preconditions and cannot fail.
        None => unsafe { libc::geteuid() },
    }
}

/// Whether an OS user certainly cannot change `location`: it exists, the user is not root
/// and does not own it (PostgreSQL's replay first `chmod`s it, which only the owner can), and
/// neither its group nor others may write it.
fn cannot_write(location: &Path, uid: u32) -> bool {
    if uid == 0 {
        return false;
    }
    match std::fs::metadata(location) {
        Ok(m) => m.uid() != uid && m.mode() & 0o022 == 0,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_foreign_read_only_location_is_safe() {
        assert!(!cannot_write(Path::new("/nonexistent/carta-dr"), 1000));
        assert!(!cannot_write(Path::new("/"), 0));
        // "/" belongs to root and is not group- or world-writable.
        assert!(cannot_write(Path::new("/"), 4242));
        // /tmp is world-writable.
        assert!(!cannot_write(Path::new("/tmp"), 4242));
    }
}
