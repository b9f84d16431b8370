//! `carta-dr wal-fetch <name> <dest>`: PostgreSQL's `restore_command`.
//!
//! 1. Serves the file from the spool if an earlier call prefetched it (re-verifying its
//!    CRC-32C and, for segments, its first page), else fetches it from the store, verifying
//!    every envelope checksum and the segment's first page.
//! 2. Writes `dest` atomically: a temporary file in `dest`'s directory renamed over `dest`
//!    (a prefetched copy is renamed into place directly). `dest` is never written with
//!    unverified bytes, and never partially. It is not fsynced: PostgreSQL moves every
//!    restored file into `pg_wal` with `durable_rename`, which fsyncs it (see
//!    [`restore_into`]).
//! 3. Prefetch: fetches the next `wal.fetch_prefetch` segments of the same timeline into the
//!    spool, `wal.fetch_concurrency` at a time, within `wal.spool_max_bytes`, each verified
//!    and decoded on every core straight to its chunks' offsets in its spool file (memory
//!    stays at about one sealed object per download and one chunk per thread).
//!
//! # Exit statuses
//!
//! | status | meaning | PostgreSQL then |
//! |---|---|---|
//! | 0 | restored | replays it |
//! | 1 | not in the archive | ends recovery or moves on (streaming, `pg_wal`, next timeline) |
//! | 200 | any other failure: store unreachable after retries, corrupt or undecryptable object, bad destination, bad command line | aborts recovery (status > 125, see `exit.rs`) |

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use carta_dr_core::archive::StoreWalArchive;
use carta_dr_core::wal::inspect_segment;
use carta_dr_core::{WalFileName, WalSegmentName, WalSegmentSize};
use futures::stream::{self, StreamExt};

use crate::context::Context;
use crate::error::CliError;
use crate::exit::ErrorClass;
use crate::spool::{retain_freed_pages, temp_beside, tune_allocator, Spool, DEFAULT_SPOOL_NAME};

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
    tune_allocator();
    retain_freed_pages();
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
    let seg_size = match serve_from_spool(&spool, &name, &dest) {
        Some(size) => {
            tracing::info!(file = %name, "served from the prefetch spool");
            size
        }
        None => {
            let a = ctx.wal_archive(STORE_PATIENCE)?;
            let sealed = a.fetch_sealed(&name).await.map_err(|e| {
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
            let len = restore_into(&a, &name, &sealed, &dest)
                .map_err(|e| e.context(format!("fetching {name} from {repo}")))?;
            drop(sealed);
            archive = Some(a);
            WalSegmentSize::new(len).unwrap_or_default()
        }
    };
    tracing::info!(file = %name, dest = %dest.display(), "restored");

    let k = args.prefetch.unwrap_or(ctx.config.wal.fetch_prefetch);
    if let (WalFileName::Segment(seg), true) = (name, k > 0) {
        let archive = match archive {
            Some(a) => a,
            None => ctx.wal_archive(STORE_PATIENCE)?,
        };
        prefetch(ctx, &archive, &spool, seg, seg_size, k).await;
    }
    Ok(())
}

/// Fetches one file into the spool: the sealed object is verified and decoded (on the
/// blocking pool, chunks on every core) straight to their offsets in a spool file, which
/// gets its name only once every checksum (and, for a segment, the first page) passed.
async fn prefetch_one(
    archive: &Arc<StoreWalArchive>,
    spool: &Spool,
    name: WalFileName,
) -> Result<(), carta_dr_core::Error> {
    let sealed = archive.fetch_sealed(&name).await?;
    let a = archive.clone();
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || {
        spool
            .put_fetched_with(&name, |f| {
                let (_, crc) = a
                    .open_verified_into(&name, &sealed, f)
                    .map_err(CliError::from)?;
                Ok(crc)
            })
            .map_err(|e| carta_dr_core::Error::invalid_input(e.to_string()))
    })
    .await
    .map_err(|e| carta_dr_core::Error::invalid_input(format!("prefetching {name}: {e}")))?
}

/// Verifies and decodes the sealed object of `name` into a temporary file beside `dest`,
/// chunk by chunk at their offsets, and renames it to `dest` once every check passed.
/// Returns the content's length.
///
/// Neither the file nor the directory is fsynced: PostgreSQL makes the file durable itself.
/// It moves every file `restore_command` restored into place with `durable_rename`
/// (`KeepFileRestoredFromArchive` in `xlogarchive.c`), which fsyncs the file and the
/// directory, and a restored file it has not moved yet is fetched again after a crash.
///
/// The work runs right here, on the runtime's thread and one helper per further core, since
/// nothing else runs yet: a hand-off to the blocking pool would only add a thread wake-up,
/// which costs milliseconds on a busy machine.
fn restore_into(
    archive: &StoreWalArchive,
    name: &WalFileName,
    sealed: &[u8],
    dest: &Path,
) -> Result<u64, CliError> {
    let tmp = temp_beside(dest);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| CliError::io("creating", &tmp, e).with_class(ErrorClass::Io))?;
    let result = archive
        .open_verified_into(name, sealed, &file)
        .map_err(CliError::from)
        .and_then(|(len, _)| {
            drop(file);
            std::fs::rename(&tmp, dest).map_err(|e| {
                CliError::io("renaming into place", dest, e).with_class(ErrorClass::Io)
            })?;
            Ok(len)
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Serves `name` from the prefetch spool: the copy is re-verified (its CRC-32C, and for a
/// segment its first page) and then renamed to `dest` (or written there, if the spool is
/// on another file system). Returns the segment size, or `None` (fetch from the store) when
/// there is no usable copy; a copy that fails is removed.
fn serve_from_spool(spool: &Spool, name: &WalFileName, dest: &Path) -> Option<WalSegmentSize> {
    let (path, crc) = spool.fetched(name)?;
    let checked = check_spooled(name, &path, crc);
    let len = match checked {
        Ok(len) => len,
        Err(why) => {
            tracing::warn!(file = %name, error = %why, "prefetched copy unusable; fetching again");
            let _ = std::fs::remove_file(&path);
            return None;
        }
    };
    // Only this program writes the spool, and only through temporary names renamed into
    // place, so the file renamed is the file just verified.
    if let Err(e) = std::fs::rename(&path, dest) {
        tracing::warn!(file = %name, error = %e, "could not move the prefetched copy into place; fetching again");
        return None;
    }
    Some(WalSegmentSize::new(len).unwrap_or_default())
}

/// Re-verifies a spooled copy of `name`: its CRC-32C (read in 1 MiB pieces on every core)
/// and, for a segment, its first page against the name. Returns its length.
fn check_spooled(name: &WalFileName, path: &Path, crc: u32) -> Result<u64, String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let read_at = |offset: u64, buf: &mut [u8]| f.read_exact_at(buf, offset);
    let threads = carta_dr_core::envelope::default_threads();
    let got = carta_dr_core::envelope::crc32c_parallel_read(len, &read_at, threads)
        .map_err(|e| e.to_string())?;
    if got != crc {
        return Err(format!(
            "checksum mismatch: spooled as {crc:08x}, reads {got:08x}"
        ));
    }
    if let WalFileName::Segment(s) = name {
        // `inspect_segment` reads the first page and the length: a lazily zeroed buffer of
        // the file's length (pages never touched cost nothing) holds the first page.
        let mut probe = vec![0u8; usize::try_from(len).map_err(|e| e.to_string())?];
        let head = probe.len().min(8192);
        f.read_exact_at(&mut probe[..head], 0)
            .map_err(|e| e.to_string())?;
        inspect_segment(s, false, &probe).map_err(|e| e.to_string())?;
    }
    Ok(len)
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
            match prefetch_one(archive, spool, name).await {
                Ok(()) => true,
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
