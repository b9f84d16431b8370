//! Reading the store: the newest archived WAL and the backup, verification and drill records
//! described in [`super::records`].

use std::collections::HashMap;

use carta_dr_core::envelope::{self, Key};
use carta_dr_core::{BackupId, Error, Result, Store, StoreExt, StorePath, WalFileName};
use serde::de::DeserializeOwned;

use super::records::{
    kind_label, BackupRecord, DrillRecord, VerificationRecord, BACKUPS_PREFIX, BACKUP_RECORD_NAME,
    DRILL_RECORD_PATH, VERIFY_RECORD_PATH, WAL_PREFIX,
};
use super::snapshot::{StoreStatus, WalArchiveStatus};
use crate::drill::history::RESTORE_DRILLS_PREFIX;

/// Reads one sealed JSON record: `Ok(None)` when absent, `Err(path)` when present but
/// unreadable (bad envelope, wrong key, bad JSON).
async fn read_record<T: DeserializeOwned>(
    store: &dyn Store,
    key: Option<&Key>,
    path: &StorePath,
) -> Result<std::result::Result<Option<T>, String>> {
    match store.get_bytes(path).await {
        Ok(sealed) => {
            let parsed = envelope::open(path.as_str(), &sealed, key).and_then(|raw| {
                serde_json::from_slice(&raw)
                    .map_err(|e| Error::corrupt(path, None, format!("bad JSON: {e}")))
            });
            match parsed {
                Ok(v) => Ok(Ok(Some(v))),
                Err(e) => {
                    tracing::warn!(%path, error = %e, "unreadable monitor record");
                    Ok(Err(path.to_string()))
                }
            }
        }
        Err(Error::NotFound { .. }) => Ok(Ok(None)),
        Err(Error::Corrupt { .. }) => Ok(Err(path.to_string())),
        Err(e) => Err(e),
    }
}

fn path(s: &str) -> Result<StorePath> {
    StorePath::new(s)
}

/// Reads everything the monitor exports about the store; `key` opens encrypted records. A
/// store error (unreachable, listing failed) is an `Err`; a record that is present but does
/// not open or parse is listed in [`StoreStatus::unreadable`] and otherwise ignored.
pub async fn read_store(store: &dyn Store, key: Option<&Key>) -> Result<StoreStatus> {
    let mut status = StoreStatus::default();

    // Archived WAL: the newest segment by modification time (the cluster record, history
    // files, partial segments and other records do not count).
    let mut wal = store.list(Some(&path(WAL_PREFIX)?)).await?;
    wal.retain(|m| matches!(m.path.file_name().parse(), Ok(WalFileName::Segment(_))));
    if let Some(newest) = wal.iter().max_by_key(|m| m.last_modified) {
        status.wal = Some(WalArchiveStatus {
            newest_path: newest.path.to_string(),
            newest_modified: newest.last_modified,
            objects: wal.len() as u64,
            bytes: wal.iter().map(|m| m.size).sum(),
        });
    }

    // Backups: ids from `backups/<id>/backup.json`, newest first.
    let listing = store.list(Some(&path(BACKUPS_PREFIX)?)).await?;
    let mut ids: Vec<(BackupId, StorePath)> = listing
        .into_iter()
        .filter(|m| m.path.file_name() == BACKUP_RECORD_NAME)
        .filter_map(|m| {
            let mut segs = m.path.segments();
            let (_, id, _) = (segs.next()?, segs.next()?, segs.next()?);
            if segs.next().is_some() {
                return None;
            }
            Some((id.parse::<BackupId>().ok()?, m.path.clone()))
        })
        .collect();
    ids.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
    status.backup_count = ids.len() as u64;
    // Read newest first until every kind seen has two records (or a bounded number of
    // reads), so the cost stays flat as backups accumulate.
    const MAX_READS: usize = 16;
    let mut per_kind: HashMap<&'static str, usize> = HashMap::new();
    for (_, p) in ids.iter().take(MAX_READS) {
        match read_record::<BackupRecord>(store, key, p).await? {
            Ok(Some(r)) => {
                let n = per_kind.entry(kind_label(r.kind)).or_default();
                if *n < 2 {
                    *n += 1;
                    status.recent_backups.push(r);
                }
            }
            Ok(None) => {}
            Err(bad) => status.unreadable.push(bad),
        }
        if per_kind.len() >= 3 && per_kind.values().all(|n| *n >= 2) {
            break;
        }
    }
    if let Some((_, p)) = ids.last() {
        match read_record::<BackupRecord>(store, key, p).await? {
            Ok(r) => status.oldest_backup = r,
            Err(bad) => {
                if !status.unreadable.contains(&bad) {
                    status.unreadable.push(bad)
                }
            }
        }
    }

    match read_record::<VerificationRecord>(store, key, &path(VERIFY_RECORD_PATH)?).await? {
        Ok(r) => status.verification = r,
        Err(bad) => status.unreadable.push(bad),
    }
    status.drill = match read_record::<DrillRecord>(store, key, &path(DRILL_RECORD_PATH)?).await? {
        Ok(Some(r)) => Some(r),
        Ok(None) => match newest_restore_drill(store, key).await? {
            Ok(r) => r,
            Err(bad) => {
                status.unreadable.push(bad);
                None
            }
        },
        Err(bad) => {
            status.unreadable.push(bad);
            None
        }
    };
    Ok(status)
}

/// The fields of a restore-drill log entry (`drills/restore/<id>.json`, written by
/// `carta-dr drill restore`) that the monitor exports.
#[derive(serde::Deserialize)]
struct DrillLogEntry {
    started_at: u64,
    rto_seconds: f64,
    rpo: DrillLogRpo,
    verdict: DrillLogVerdict,
}

#[derive(serde::Deserialize)]
struct DrillLogRpo {
    seconds: f64,
}

#[derive(serde::Deserialize)]
struct DrillLogVerdict {
    rto_met: bool,
    rpo_met: bool,
    checks_passed: bool,
}

/// The newest restore drill in the drill log, as a [`DrillRecord`]. Drill ids sort by time.
async fn newest_restore_drill(
    store: &dyn Store,
    key: Option<&Key>,
) -> Result<std::result::Result<Option<DrillRecord>, String>> {
    let prefix = path(RESTORE_DRILLS_PREFIX)?;
    let newest = store
        .list_paths(Some(&prefix))
        .await?
        .into_iter()
        .filter(|p| p.file_name().ends_with(".json"))
        .max();
    let Some(newest) = newest else {
        return Ok(Ok(None));
    };
    Ok(read_record::<DrillLogEntry>(store, key, &newest)
        .await?
        .map(|entry| {
            entry.map(|e| DrillRecord {
                finished_at: e.started_at,
                success: e.verdict.rto_met && e.verdict.rpo_met && e.verdict.checks_passed,
                rto_seconds: e.rto_seconds,
                rpo_seconds: Some(e.rpo.seconds),
            })
        }))
}

#[cfg(test)]
mod drill_log_tests {
    use super::*;
    use bytes::Bytes;
    use carta_dr_backends::MemoryStore;
    use carta_dr_core::envelope::{seal, EnvelopeOptions};

    async fn put_json(store: &MemoryStore, p: &str, v: serde_json::Value) {
        let raw = serde_json::to_vec(&v).unwrap();
        let sealed = seal(&EnvelopeOptions::default(), &raw).unwrap();
        store
            .put(&path(p).unwrap(), Bytes::from(sealed), Default::default())
            .await
            .unwrap();
    }

    fn entry(started_at: u64, rto: f64, rpo: f64, ok: bool) -> serde_json::Value {
        serde_json::json!({
            "id": "x", "started_at": started_at, "rto_seconds": rto,
            "rpo": { "seconds": rpo, "transactions_lost": 2 },
            "verdict": { "rto_met": true, "rpo_met": ok, "checks_passed": true },
        })
    }

    #[tokio::test]
    async fn the_newest_restore_drill_in_the_log_is_exported() {
        let store = MemoryStore::new();
        assert!(read_store(&store, None).await.unwrap().drill.is_none());
        put_json(
            &store,
            "drills/restore/20261101T000000Z-aaaaaa.json",
            entry(100, 9.0, 1.0, true),
        )
        .await;
        put_json(
            &store,
            "drills/restore/20261102T000000Z-bbbbbb.json",
            entry(200, 12.5, 400.0, false),
        )
        .await;
        let d = read_store(&store, None).await.unwrap().drill.unwrap();
        assert_eq!(d.finished_at, 200);
        assert_eq!(d.rto_seconds, 12.5);
        assert_eq!(d.rpo_seconds, Some(400.0));
        assert!(!d.success, "an RPO miss is a failed drill");
    }
}
