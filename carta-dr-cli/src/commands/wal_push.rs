//! `carta-dr wal-push <path>`: PostgreSQL's `archive_command`.
//!
//! 1. Reads the file, and if a look-ahead marker in the spool says an earlier `wal-push`
//!    already stored exactly this content (same CRC-32C, size and repository), exits 0 at once.
//! 2. Otherwise validates it (segment header, history or backup history file), seals it
//!    (zstd + CRC-32C, AES-256-GCM with a key) and stores it create-only. Identical content
//!    already stored is success; different content is a conflict (exit 6) and the stored copy
//!    is kept.
//! 3. Look-ahead: pushes up to `wal.push_look_ahead` further files that PostgreSQL has marked
//!    `.ready` in `pg_wal/archive_status` (one sealed per core, `wal.push_concurrency`
//!    uploads at a time), and records each one in the spool once the store holds it durably
//!    (a marker: a cache, renamed into place without fsync). PostgreSQL's later calls for
//!    them then return at once if the file's checksum matches. PostgreSQL's `.ready`/`.done`
//!    files stay the source of truth and are never touched: a crash at any point loses
//!    nothing, it only repeats work.
//!
//! Exit 0 only once the file is durable in the store (or, with the disk safety valve armed
//! and tripped, once its drop is recorded durably; see `docs/wal-archive.md`). Every failure
//! exits between 1 and 125, so PostgreSQL keeps the file and retries.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use carta_dr_core::archive::{DroppedWal, PreparedPush, StoreWalArchive};
use carta_dr_core::WalFileName;
use futures::stream::{self, StreamExt};

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;
use crate::spool::{tune_allocator, PushedMarker, Spool, DEFAULT_SPOOL_NAME};

/// How long one push keeps retrying a failing store before giving up (PostgreSQL retries
/// the command itself afterwards).
const STORE_PATIENCE: Duration = Duration::from_secs(10);

/// Archive one WAL file (`archive_command = 'carta-dr wal-push %p'`).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The file PostgreSQL asks to archive (`%p`, relative to the data directory).
    pub path: PathBuf,
    /// Push up to N further files marked ready (overrides `wal.push_look_ahead`; 0 = off).
    #[arg(long, value_name = "N")]
    pub look_ahead: Option<usize>,
}

/// Runs `wal-push`.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    tune_allocator();
    let path = args.path;
    let name = wal_name_of(&path)?;
    let pg_wal = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let spool = Spool::new(
        ctx.config
            .wal
            .spool_dir
            .clone()
            .unwrap_or_else(|| pg_wal.join(DEFAULT_SPOOL_NAME)),
    );
    let repo = ctx.repo_url()?.to_string();
    if let Some(m) = spool.pushed_marker(&name) {
        // Checksum the file in 1 MiB reads on every core: no 16 MiB buffer for the common
        // fast path.
        let (crc, size) = crc_of_file_parallel(&path)?;
        if m.crc32c == crc && m.size == size && m.repo == repo {
            // The marker stays until PostgreSQL removes the file (see `prune_pushed`), so a
            // repeated call is as fast.
            tracing::info!(file = %name, "already stored by look-ahead");
            return Ok(());
        }
        tracing::warn!(file = %name, "look-ahead marker does not match the file; pushing again");
    }
    let file = std::fs::File::open(&path).map_err(|e| CliError::io("opening", &path, e))?;
    let size = file
        .metadata()
        .map_err(|e| CliError::io("reading the size of", &path, e))?
        .len();

    let archive = ctx.wal_archive(STORE_PATIENCE)?;
    // The look-ahead runs alongside the requested file's upload: one file sealed per core,
    // `push_concurrency` uploads at a time.
    let n = args.look_ahead.unwrap_or(ctx.config.wal.push_look_ahead);
    let ahead = async {
        if n > 0 {
            let c = ctx.config.wal.push_concurrency.max(1);
            look_ahead(&archive, &spool, &pg_wal, name, n, c, &repo).await;
        }
    };
    // The requested file is sealed right here (on the runtime's thread and one helper per
    // further core) before the look-ahead starts: a hand-off to the blocking pool would only
    // add a thread wake-up, which costs milliseconds on a busy machine. Each thread reads its
    // chunks of the file into one reused buffer (no buffer of the whole file, whose page
    // faults cost more than its compression). Its upload then overlaps the look-ahead.
    let prepared = match archive.cluster().await {
        Ok(cluster) => {
            let threads = carta_dr_core::envelope::default_threads();
            match archive.prepare_file(&name, &file, size, cluster.as_ref(), threads) {
                Ok(p) => Ok(p),
                // Reading or validating the local file: never a store failure, so never a
                // case for the safety valve.
                Err(e) => {
                    return Err(CliError::from(e)
                        .context(format!("archiving {} to {repo}", path.display())))
                }
            }
        }
        Err(e) => Err(e),
    };
    drop(file);
    let (main, ()) = match prepared {
        Ok(p) => tokio::join!(archive.commit(p), ahead),
        Err(e) => (Err(e), ()),
    };
    match main {
        Ok(outcome) => {
            tracing::info!(file = %name, ?outcome, store = %archive.store(), "archived");
            spool.clear_pushed(&name);
        }
        Err(e) => {
            let err = CliError::from(e).context(format!("archiving {} to {repo}", path.display()));
            let Ok((crc, size)) = crc_of_file(&path) else {
                return Err(err);
            };
            return safety_valve(ctx, &archive, &spool, &pg_wal, name, size, crc, err).await;
        }
    }
    flush_drop_records(&archive, &spool).await;
    Ok(())
}

/// CRC-32C and size of a file, read in 256 KiB pieces.
fn crc_of_file(path: &Path) -> Result<(u32, u64), CliError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| CliError::io("opening", path, e))?;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut crc, mut size) = (0u32, 0u64);
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| CliError::io("reading", path, e))?;
        if n == 0 {
            return Ok((crc, size));
        }
        crc = carta_dr_core::envelope::crc32c_append(crc, &buf[..n]);
        size += n as u64;
    }
}

/// CRC-32C and size of a file, read in 1 MiB pieces on every core.
fn crc_of_file_parallel(path: &Path) -> Result<(u32, u64), CliError> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(|e| CliError::io("opening", path, e))?;
    let size = f
        .metadata()
        .map_err(|e| CliError::io("reading the size of", path, e))?
        .len();
    let read_at = |offset: u64, buf: &mut [u8]| f.read_exact_at(buf, offset);
    let threads = carta_dr_core::envelope::default_threads();
    let crc = carta_dr_core::envelope::crc32c_parallel_read(size, &read_at, threads)
        .map_err(|e| CliError::io("reading", path, e))?;
    Ok((crc, size))
}

fn wal_name_of(path: &Path) -> Result<WalFileName, CliError> {
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    file.parse().map_err(|e| {
        CliError::new(
            ErrorClass::InvalidInput,
            format!(
                "{}: not a WAL file name PostgreSQL archives ({e})",
                path.display()
            ),
        )
    })
}

/// Validates and seals the file at `path` on the blocking pool, on up to `threads` threads,
/// reading it chunk by chunk; `None` if the file is gone (PostgreSQL archived and removed it
/// meanwhile).
pub async fn seal_file(
    archive: &Arc<StoreWalArchive>,
    name: WalFileName,
    path: PathBuf,
    threads: usize,
) -> Result<Option<PreparedPush>, carta_dr_core::Error> {
    let cluster = archive.cluster().await?;
    let a = archive.clone();
    tokio::task::spawn_blocking(move || {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(carta_dr_core::Error::io(format!("opening {name}"), e)),
        };
        let len = file
            .metadata()
            .map_err(|e| carta_dr_core::Error::io(format!("reading the size of {name}"), e))?
            .len();
        a.prepare_file(&name, &file, len, cluster.as_ref(), threads)
            .map(Some)
    })
    .await
    .map_err(|e| carta_dr_core::Error::invalid_input(format!("sealing {name}: {e}")))?
}

/// The files PostgreSQL marked ready, sorted, without `except`.
fn ready_files(pg_wal: &Path, except: WalFileName) -> Vec<WalFileName> {
    let Ok(entries) = std::fs::read_dir(pg_wal.join("archive_status")) else {
        return Vec::new();
    };
    let mut names: Vec<WalFileName> = entries
        .flatten()
        .filter_map(|e| {
            let f = e.file_name();
            let n: WalFileName = f.to_str()?.strip_suffix(".ready")?.parse().ok()?;
            (n != except).then_some(n)
        })
        .collect();
    names.sort_by_cached_key(|n| n.to_string());
    names
}

async fn look_ahead(
    archive: &Arc<StoreWalArchive>,
    spool: &Spool,
    pg_wal: &Path,
    current: WalFileName,
    n: usize,
    concurrency: usize,
    repo: &str,
) {
    spool.prune_pushed(pg_wal);
    let candidates: Vec<WalFileName> = ready_files(pg_wal, current)
        .into_iter()
        .filter(|f| spool.pushed_marker(f).is_none_or(|m| m.repo != repo))
        .take(n)
        .collect();
    if candidates.is_empty() {
        return;
    }
    // Two stages: one file sealed per core (each on one thread, so the cores stay busy
    // without more sealing threads than cores), and up to `concurrency` uploads, so that a
    // core starts sealing the next file while the previous one is being written and synced.
    let sealers = carta_dr_core::envelope::default_threads().max(1);
    let results: Vec<bool> = stream::iter(candidates)
        .map(|name| async move {
            let sealed = seal_file(archive, name, pg_wal.join(name.to_string()), 1).await;
            (name, sealed)
        })
        .buffer_unordered(sealers)
        .map(|(name, sealed)| async move {
            let outcome = match sealed {
                // PostgreSQL archived and removed it meanwhile: nothing to do.
                Ok(None) => return false,
                Ok(Some(p)) => {
                    let (crc, size) = (p.crc32c, p.raw_len);
                    archive.commit(p).await.map(|_| (crc, size))
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok((crc, size)) => {
                    // Only now is the file durable in the store.
                    let m = PushedMarker {
                        crc32c: crc,
                        size,
                        repo: repo.to_string(),
                    };
                    if let Err(e) = spool.mark_pushed(&name, &m) {
                        tracing::warn!(file = %name, error = %e, "could not record look-ahead push");
                    }
                    true
                }
                Err(e) => {
                    // PostgreSQL will ask for it itself and get the error then.
                    tracing::warn!(file = %name, error = %e, "look-ahead push failed");
                    false
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let done = results.iter().filter(|ok| **ok).count();
    tracing::info!(pushed = done, tried = results.len(), "look-ahead");
}

/// Copies drop records kept locally (the store was down when they were made) to the store.
async fn flush_drop_records(archive: &StoreWalArchive, spool: &Spool) {
    for (path, json) in spool.dropped_entries() {
        let Ok(rec) = serde_json::from_slice::<DroppedWal>(&json) else {
            tracing::error!(file = %path.display(), "unreadable local drop record; left in place");
            continue;
        };
        match archive.record_dropped(&rec).await {
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
                tracing::info!(file = %rec.name, "drop record copied to the store");
            }
            Err(e) => {
                tracing::warn!(file = %rec.name, error = %e, "drop record still not in the store");
                return;
            }
        }
    }
}

/// The bytes of the files in `pg_wal` that are waiting to be archived.
fn ready_backlog_bytes(pg_wal: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(pg_wal.join("archive_status")) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| {
            let f = e.file_name();
            let name = f.to_str()?.strip_suffix(".ready")?.to_string();
            std::fs::metadata(pg_wal.join(name)).ok().map(|m| m.len())
        })
        .sum()
}

/// The disk safety valve (off unless `wal.max_pg_wal_bytes` is set). When the store is
/// failing and the ready backlog in `pg_wal` exceeds the limit, reports the segment archived
/// without storing it, after recording the drop durably (in the store, else in the spool,
/// copied to the store later). If the drop cannot be recorded anywhere, the original error
/// stands.
#[allow(clippy::too_many_arguments)]
async fn safety_valve(
    ctx: &Context,
    archive: &StoreWalArchive,
    spool: &Spool,
    pg_wal: &Path,
    name: WalFileName,
    size: u64,
    crc: u32,
    err: CliError,
) -> Result<(), CliError> {
    let Some(limit) = ctx.config.wal.max_pg_wal_bytes else {
        return Err(err);
    };
    let store_failure = matches!(err.class, ErrorClass::Unavailable | ErrorClass::Io);
    let droppable = matches!(name, WalFileName::Segment(_) | WalFileName::Partial(_));
    if !store_failure || !droppable {
        return Err(err);
    }
    let backlog = ready_backlog_bytes(pg_wal);
    if backlog <= limit {
        tracing::warn!(
            backlog,
            limit,
            "store failing; pg_wal backlog still under the safety-valve limit"
        );
        return Err(err);
    }
    let rec = DroppedWal {
        name,
        size,
        crc32c: crc,
        dropped_at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        reason: format!(
            "disk safety valve: pg_wal ready backlog {backlog} bytes over max_pg_wal_bytes \
             {limit} while the store failed: {err}"
        ),
    };
    let json = serde_json::to_vec_pretty(&rec)
        .map_err(|e| CliError::new(ErrorClass::Internal, format!("encoding drop record: {e}")))?;
    let recorded_where = match archive.record_dropped(&rec).await {
        Ok(()) => "the store".to_string(),
        Err(_) => {
            if let Err(e) = spool.put_dropped(&name, &json) {
                return Err(err.context(format!("safety valve could not record the drop: {e}")));
            }
            format!("{} (copied to the store later)", spool.root().display())
        }
    };
    tracing::error!(
        file = %name,
        backlog,
        limit,
        "DROPPED WITHOUT ARCHIVING: point-in-time recovery across this segment is impossible"
    );
    eprintln!(
        "carta-dr wal-push: DROPPED {name} WITHOUT ARCHIVING IT (disk safety valve: pg_wal \
         backlog {backlog} bytes > max_pg_wal_bytes {limit}; store error: {}). Point-in-time \
         recovery across this segment is no longer possible; the drop is recorded in \
         {recorded_where}. Take a new base backup once the store is back.",
        err.message
    );
    Ok(())
}
