//! Retention: removes expired backups, the WAL no retained backup needs, and chunks and
//! bundles no retained backup references. The rules themselves are sans-IO in
//! [`carta_dr_core::catalog`].
//!
//! Order of work, so that a crash at any point leaves a consistent repository:
//! 1. the records of expired backups (they leave the catalog first);
//! 2. WAL older than the start segment of the oldest retained backup (never what a retained
//!    backup needs to reach consistency, nor anything after it);
//! 3. chunks and bundles referenced by no retained record and older than a grace period, so a
//!    backup running concurrently (whose record is not written yet) keeps its objects.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use carta_dr_core::catalog::{
    expirable_wal, plan_expiry, record_path, BackupSummary, RetentionPolicy, BACKUPS_PREFIX,
    BUNDLES_PREFIX, CHUNKS_PREFIX,
};
use carta_dr_core::{
    BackupId, Result, StoreExt, StorePath, WalArchive, WalFileName, WalSegmentSize,
};

use super::repo::Repo;

/// How to expire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpireOptions {
    /// The retention rules.
    pub policy: RetentionPolicy,
    /// Report only; delete nothing.
    pub dry_run: bool,
    /// Unreferenced chunks and bundles younger than this are kept (a running backup may be
    /// about to reference them).
    pub gc_grace: Duration,
}

/// What expiry did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpireReport {
    /// Backups retained.
    pub kept: Vec<BackupId>,
    /// Backups expired.
    pub expired: Vec<BackupId>,
    /// WAL files removed.
    pub wal_removed: Vec<WalFileName>,
    /// Chunks and bundles removed.
    pub objects_removed: u64,
    /// Bytes of chunks and bundles removed.
    pub bytes_removed: u64,
}

/// Applies retention to the repository and its WAL archive. `wal_path` maps a WAL file name
/// to its object in the store (the archive's layout).
pub async fn expire(
    repo: &Repo,
    archive: &dyn WalArchive,
    wal_path: &(dyn Fn(&WalFileName) -> Result<StorePath> + Sync),
    opts: &ExpireOptions,
    now: SystemTime,
) -> Result<ExpireReport> {
    let records = repo.load_all().await?;
    let summaries: Vec<BackupSummary> = records.iter().map(|r| r.summary()).collect();
    let plan = plan_expiry(&summaries, &opts.policy, now);
    let mut report = ExpireReport {
        kept: plan.keep.clone(),
        expired: plan.expire.clone(),
        ..Default::default()
    };
    if records.is_empty() {
        return Ok(report);
    }
    let retained: Vec<_> = records
        .iter()
        .filter(|r| plan.keep.contains(&r.id))
        .collect();
    let store = repo.store();

    // 1. Records.
    for id in &plan.expire {
        tracing::info!(backup = %id, dry_run = opts.dry_run, "expiring backup");
        if !opts.dry_run {
            // The record first, so the backup leaves the catalog before anything it names
            // goes; then whatever else lives under its prefix (the restore test's row counts).
            store.delete(&record_path(*id)?).await?;
            let prefix = StorePath::new(format!("{BACKUPS_PREFIX}/{id}"))?;
            for path in store.list_paths(Some(&prefix)).await? {
                store.delete(&path).await?;
            }
        }
    }

    // 2. WAL. Segment numbering depends on the segment size the retained backups recorded.
    let seg_size = retained
        .iter()
        .map(|r| r.wal_segment_size)
        .next()
        .map(WalSegmentSize::new)
        .transpose()?
        .unwrap_or_default();
    let retained_summaries: Vec<BackupSummary> = retained.iter().map(|r| r.summary()).collect();
    let wal: Vec<WalFileName> = archive
        .list(None)
        .await?
        .into_iter()
        .map(|w| w.name)
        .collect();
    let gone = expirable_wal(&wal, &retained_summaries, seg_size);
    for name in &gone {
        if !opts.dry_run {
            store.delete(&wal_path(name)?).await?;
        }
    }
    report.wal_removed = gone;

    // 3. Chunks and bundles.
    let mut referenced: HashSet<StorePath> = HashSet::new();
    for r in &retained {
        referenced.extend(r.referenced_objects()?);
    }
    let cutoff = now
        .checked_sub(opts.gc_grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    for prefix in [CHUNKS_PREFIX, BUNDLES_PREFIX] {
        for meta in store.list(Some(&StorePath::new(prefix)?)).await? {
            if referenced.contains(&meta.path) || meta.last_modified > cutoff {
                continue;
            }
            report.objects_removed += 1;
            report.bytes_removed += meta.size;
            if !opts.dry_run {
                store.delete(&meta.path).await?;
            }
        }
    }
    tracing::info!(
        kept = report.kept.len(),
        expired = report.expired.len(),
        wal_removed = report.wal_removed.len(),
        objects_removed = report.objects_removed,
        dry_run = opts.dry_run,
        "expire complete"
    );
    Ok(report)
}
