//! `carta-dr wal-fetch <name> <dest>`: PostgreSQL's `restore_command`.
//!
//! 1. Serves the file from the spool if an earlier call prefetched it (re-verifying its
//!    CRC-32C and, for segments, its first page), else fetches it from the store, verifying
//!    every envelope checksum and the segment's first page.
//! 2. Writes `dest` atomically: a temporary file in `dest`'s directory, fsync, rename, fsync
//!    of the directory. `dest` is never written with unverified bytes, and never partially.
//! 3. Prefetch: fetches the next `wal.fetch_prefetch` segments of the same timeline into the
//!    spool, `wal.fetch_concurrency` at a time, within `wal.spool_max_bytes`.
//!
//! # Exit statuses
//!
//! | status | meaning | PostgreSQL then |
//! |---|---|---|
//! | 0 | restored | replays it |
//! | 1 | not in the archive | ends recovery or moves on (streaming, `pg_wal`, next timeline) |
//! | 200 | any other failure: store unreachable after retries, corrupt or undecryptable object, bad destination, bad command line | aborts recovery (status > 125, see `exit.rs`) |

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use carta_dr_core::archive::StoreWalArchive;
use carta_dr_core::wal::inspect_segment;
use carta_dr_core::{WalFileName, WalSegmentName, WalSegmentSize};
use futures::stream::{self, StreamExt};

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;
use crate::spool::{write_atomic, Spool, DEFAULT_SPOOL_NAME};

/// How long one fetch keeps retrying a failing store before giving up.
const STORE_PATIENCE: Duration = Duration::from_secs(30);

/// Restore one WAL file (`restore_command = 'carta-dr wal-fetch %f %p'`).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The file name PostgreSQL asks for (`%f`).
    pub name: String,
    /// Where to write it (`%p`).
    pub dest: PathBuf,
    /// Prefetch up to N following segments (overrides `wal.fetch_prefetch`; 0 = off).
    #[arg(long, value_name = "N")]
    pub prefetch: Option<usize>,
}

/// Runs `wal-fetch`. Every failure other than "not in the archive" becomes
/// [`ErrorClass::RecoveryAbort`].
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    fetch(ctx, args).await.map_err(|e| {
        if e.class == ErrorClass::NotFound {
            e
        } else {
            e.with_class(ErrorClass::RecoveryAbort)
        }
    })
}

async fn fetch(ctx: &Context, args: Args) -> Result<(), CliError> {
    let name: WalFileName = args.name.parse().map_err(|e| {
        CliError::new(
            ErrorClass::InvalidInput,
            format!("{:?} is not a WAL file name: {e}", args.name),
        )
    })?;
    let dest = args.dest;
    let dest_dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let spool = Spool::new(
        ctx.config
            .wal
            .spool_dir
            .clone()
            .unwrap_or_else(|| dest_dir.join(DEFAULT_SPOOL_NAME)),
    );
    let repo = ctx.repo_url()?.to_string();

    let mut archive: Option<Arc<StoreWalArchive>> = None;
    let data = match from_spool(&spool, &name) {
        Some(d) => {
            tracing::info!(file = %name, "served from the prefetch spool");
            d
        }
        None => {
            let a = ctx.wal_archive(STORE_PATIENCE)?;
            let (d, _) = fetch_one(&a, name).await.map_err(|e| {
                let e = CliError::from(e);
                if e.class == ErrorClass::NotFound {
                    CliError::new(
                        ErrorClass::NotFound,
                        format!("{name} is not in the archive {repo}"),
                    )
                } else {
                    e.context(format!("fetching {name} from {repo}"))
                }
            })?;
            archive = Some(a);
            d
        }
    };
    write_atomic(&dest, &data).map_err(|e| e.with_class(ErrorClass::Io))?;
    tracing::info!(file = %name, dest = %dest.display(), "restored");

    let k = args.prefetch.unwrap_or(ctx.config.wal.fetch_prefetch);
    if let (WalFileName::Segment(seg), true) = (name, k > 0) {
        let seg_size = inspect_segment(&seg, false, &data)
            .map(|i| i.identity.wal_segment_size)
            .unwrap_or_default();
        let archive = match archive {
            Some(a) => a,
            None => ctx.wal_archive(STORE_PATIENCE)?,
        };
        prefetch(ctx, &archive, &spool, seg, seg_size, k).await;
    }
    Ok(())
}

/// Fetches, verifies (on the blocking pool) and returns one file.
async fn fetch_one(
    archive: &Arc<StoreWalArchive>,
    name: WalFileName,
) -> Result<(Bytes, u32), carta_dr_core::Error> {
    let sealed = archive.fetch_sealed(&name).await?;
    let a = archive.clone();
    tokio::task::spawn_blocking(move || a.open_verified(&name, &sealed))
        .await
        .map_err(|e| carta_dr_core::Error::invalid_input(format!("opening {name}: {e}")))?
}

/// The prefetched copy of `name`, re-verified; it is removed from the spool either way.
fn from_spool(spool: &Spool, name: &WalFileName) -> Option<Bytes> {
    let (path, crc) = spool.fetched(name)?;
    let data = std::fs::read(&path).ok();
    let _ = std::fs::remove_file(&path);
    let data = data?;
    if crc32c::crc32c(&data) != crc {
        tracing::warn!(file = %name, "prefetched copy fails its checksum; fetching again");
        return None;
    }
    if let WalFileName::Segment(s) = name {
        if let Err(e) = inspect_segment(s, false, &data) {
            tracing::warn!(file = %name, error = %e, "prefetched copy fails validation; fetching again");
            return None;
        }
    }
    Some(Bytes::from(data))
}

async fn prefetch(
    ctx: &Context,
    archive: &Arc<StoreWalArchive>,
    spool: &Spool,
    current: WalSegmentName,
    seg_size: WalSegmentSize,
    k: usize,
) {
    spool.remove_temporaries();
    // Drop what recovery has passed (any timeline), and count what stays.
    let cur_segno = current.segno(seg_size);
    let mut used = 0u64;
    let mut have = Vec::new();
    for (n, path, size) in spool.fetched_entries() {
        match n {
            WalFileName::Segment(s) if s.segno(seg_size) > cur_segno => {
                used += size;
                have.push(n);
            }
            _ => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let budget = ctx.config.wal.spool_max_bytes.saturating_sub(used);
    let room = usize::try_from(budget / seg_size.bytes()).unwrap_or(usize::MAX);
    let mut wanted = Vec::new();
    let mut next = current;
    for _ in 0..k {
        let Some(n) = next.next(seg_size) else { break };
        next = n;
        if !have.contains(&WalFileName::Segment(n)) {
            wanted.push(n);
        }
    }
    // Refill in batches: only once fewer than half of the window is spooled, so that each
    // batch runs `fetch_concurrency` downloads and decompressions at once.
    if k - wanted.len() > k / 2 {
        return;
    }
    wanted.truncate(room);
    if wanted.is_empty() {
        return;
    }
    let results: Vec<bool> = stream::iter(wanted)
        .map(|seg| async move {
            let name = WalFileName::Segment(seg);
            match fetch_one(archive, name).await {
                Ok((data, crc)) => match spool.put_fetched(&name, crc, &data) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(file = %name, error = %e, "could not spool prefetched file");
                        false
                    }
                },
                Err(e) if e.is_not_found() => false,
                Err(e) => {
                    // Recovery will ask for it and get the error then.
                    tracing::warn!(file = %name, error = %e, "prefetch failed");
                    false
                }
            }
        })
        .buffer_unordered(ctx.config.wal.fetch_concurrency.max(1))
        .collect()
        .await;
    tracing::info!(
        prefetched = results.iter().filter(|ok| **ok).count(),
        spool = %spool.root().display(),
        "prefetch"
    );
}
