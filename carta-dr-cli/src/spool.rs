//! The local spool directory: small durable files that let a later `wal-push` / `wal-fetch`
//! process finish at once.
//!
//! ```text
//! <spool>/pushed/<NAME>            look-ahead marker: "<crc32c hex> <size> <repo URL>"
//! <spool>/fetched/<NAME>.<CRC>     a prefetched file, raw, named with its CRC-32C
//! <spool>/dropped/<NAME>.json      a safety-valve drop record not yet copied to the store
//! ```
//!
//! Drop records are written durably (temporary name, fsync, rename, fsync of the directory),
//! so a crash leaves either the old state or the new one. Markers are written only after the
//! store confirmed the object durable, atomically (temporary name renamed into place) but
//! without fsync: they are a cache whose loss costs one repeated upload (the create-only put
//! then finds identical content), and a marker a crash damaged or emptied does not parse or
//! does not match, so it counts as none. A marker is only ever trusted together with a
//! matching CRC-32C and size of the file PostgreSQL hands over. Prefetched files are a cache:
//! written under a temporary name and renamed into place without fsync, and trusted only
//! after their CRC-32C (in the name) and, for segments, their first page verify again, so a
//! copy damaged by a crash is refetched, never handed to PostgreSQL. Nothing here touches
//! PostgreSQL's own `archive_status` files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use carta_dr_core::WalFileName;

use crate::error::CliError;

/// The spool directory's default name, inside `pg_wal` (PostgreSQL ignores directories
/// there, and `pg_basebackup` does not copy them).
pub const DEFAULT_SPOOL_NAME: &str = "carta-dr-spool";

/// A spool directory.
#[derive(Clone, Debug)]
pub struct Spool {
    root: PathBuf,
}

/// Writes `data` to `path` durably and atomically: a temporary file in the same directory
/// (created exclusively), fsync, rename over `path`, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), CliError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.carta-dr-tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| CliError::io("creating", &tmp, e))?;
        f.write_all(data)
            .map_err(|e| CliError::io("writing", &tmp, e))?;
        f.sync_all().map_err(|e| CliError::io("syncing", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| CliError::io("renaming into place", path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `data` to `path` atomically but not durably: a temporary file in the same directory
/// (created exclusively) renamed over `path`. For caches, whose loss after a crash costs only
/// repeated work.
pub fn write_atomic_cache(path: &Path, data: &[u8]) -> Result<(), CliError> {
    let tmp = temp_beside(path);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| CliError::io("creating", &tmp, e))?;
        f.write_all(data)
            .map_err(|e| CliError::io("writing", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| CliError::io("renaming into place", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A temporary name next to `path`, unique to this process.
pub fn temp_beside(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{file_name}.carta-dr-tmp.{}", std::process::id()))
}

/// Keeps the allocator from holding on to freed segment-sized buffers: blocks of 4 MiB and
/// more are mapped and unmapped on their own (glibc otherwise raises this threshold after
/// the first large free and keeps later 16 MiB buffers in its heaps), and at most two heaps
/// serve the worker threads. Lowers the peak RSS of `wal-push` and `wal-fetch`.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts glibc's allocator parameters; called before other threads
    // allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Keeps small blocks freed at the top of a heap (up to 16 MiB) instead of returning them to
/// the kernel at once, so that the 1 MiB pieces a store read allocates one after the other
/// reuse pages already mapped instead of faulting in fresh zeroed ones each time (a sixth of
/// the page faults of a `wal-fetch`). For `wal-fetch`, whose live set is small; `wal-push`
/// look-ahead keeps several sealed objects alive at once and does without.
pub fn retain_freed_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: as in `tune_allocator`.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

/// Fsyncs a directory so that a rename in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), CliError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CliError::io("syncing directory", dir, e))
}

fn ensure_dir(dir: &Path) -> Result<(), CliError> {
    fs::create_dir_all(dir).map_err(|e| CliError::io("creating spool directory", dir, e))
}

/// A look-ahead marker's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedMarker {
    /// CRC-32C of the pushed content.
    pub crc32c: u32,
    /// Its size.
    pub size: u64,
    /// The repository it was pushed to.
    pub repo: String,
}

impl Spool {
    /// The spool at `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        Spool { root }
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn pushed_path(&self, name: &WalFileName) -> PathBuf {
        self.root.join("pushed").join(name.to_string())
    }

    /// The look-ahead marker of `name`, if any (an unreadable marker counts as none).
    pub fn pushed_marker(&self, name: &WalFileName) -> Option<PushedMarker> {
        let text = fs::read_to_string(self.pushed_path(name)).ok()?;
        let mut parts = text.trim_end().splitn(3, ' ');
        let crc32c = u32::from_str_radix(parts.next()?, 16).ok()?;
        let size = parts.next()?.parse().ok()?;
        let repo = parts.next()?.to_string();
        Some(PushedMarker { crc32c, size, repo })
    }

    /// Records that `name` is durable in the store (call only once the store confirmed it).
    /// Atomic, not fsynced: see the module docs.
    pub fn mark_pushed(&self, name: &WalFileName, m: &PushedMarker) -> Result<(), CliError> {
        let dir = self.root.join("pushed");
        ensure_dir(&dir)?;
        write_atomic_cache(
            &self.pushed_path(name),
            format!("{:08x} {} {}\n", m.crc32c, m.size, m.repo).as_bytes(),
        )
    }

    /// Removes the marker of `name` (PostgreSQL has its own `.done` from now on).
    pub fn clear_pushed(&self, name: &WalFileName) {
        let _ = fs::remove_file(self.pushed_path(name));
    }

    /// Removes markers of files PostgreSQL no longer has in `pg_wal` (it removed or recycled
    /// them after archiving), so the spool does not grow.
    pub fn prune_pushed(&self, pg_wal: &Path) {
        let Ok(entries) = fs::read_dir(self.root.join("pushed")) else {
            return;
        };
        for e in entries.flatten() {
            let n = e.file_name();
            if !pg_wal.join(&n).exists() {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    fn fetched_dir(&self) -> PathBuf {
        self.root.join("fetched")
    }

    /// The prefetched copy of `name`: its path and the CRC-32C in its name.
    pub fn fetched(&self, name: &WalFileName) -> Option<(PathBuf, u32)> {
        let prefix = format!("{name}.");
        let entries = fs::read_dir(self.fetched_dir()).ok()?;
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if let Some(crc) = file.strip_prefix(&prefix) {
                if crc.len() == 8 {
                    if let Ok(crc) = u32::from_str_radix(crc, 16) {
                        return Some((e.path(), crc));
                    }
                }
            }
        }
        None
    }

    /// Stores a prefetched file (not fsynced: see the module docs).
    #[cfg(test)]
    pub fn put_fetched(&self, name: &WalFileName, crc: u32, data: &[u8]) -> Result<(), CliError> {
        self.put_fetched_with(name, |f| {
            f.write_all(data)
                .map_err(|e| CliError::io("writing", Path::new("spool"), e))?;
            Ok(crc)
        })
    }

    /// Stores a prefetched file that `write` writes into an open temporary file (readable
    /// and writable), returning the content's CRC-32C; it is renamed to its spool name only if `write` succeeds (not
    /// fsynced: see the module docs).
    pub fn put_fetched_with(
        &self,
        name: &WalFileName,
        write: impl FnOnce(&mut fs::File) -> Result<u32, CliError>,
    ) -> Result<(), CliError> {
        let dir = self.fetched_dir();
        ensure_dir(&dir)?;
        let tmp = temp_beside(&dir.join(name.to_string()));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| CliError::io("creating", &tmp, e))?;
            let crc = write(&mut f)?;
            drop(f);
            let target = dir.join(format!("{name}.{crc:08X}"));
            fs::rename(&tmp, &target).map_err(|e| CliError::io("renaming into place", &target, e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// The prefetched files: name, path, size.
    pub fn fetched_entries(&self) -> Vec<(WalFileName, PathBuf, u64)> {
        let Ok(entries) = fs::read_dir(self.fetched_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let file = e.file_name().to_string_lossy().into_owned();
                let (n, _) = file.rsplit_once('.')?;
                let name: WalFileName = n.parse().ok()?;
                let size = e.metadata().ok()?.len();
                Some((name, e.path(), size))
            })
            .collect()
    }

    /// Removes leftovers of interrupted writes (temporary files of dead processes are never
    /// read; removing them keeps the spool within its budget).
    pub fn remove_temporaries(&self) {
        for dir in [self.fetched_dir(), self.root.join("pushed")] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                if file.starts_with('.') && file.contains(".carta-dr-tmp.") {
                    let pid_alive = file
                        .rsplit('.')
                        .next()
                        .and_then(|p| p.parse::<i32>().ok())
                        .is_some_and(|pid| {
                            // SAFETY: kill with signal 0 only checks that the process exists.
                            unsafe { libc::kill(pid, 0) == 0 }
                        });
                    if !pid_alive {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
    }

    fn dropped_dir(&self) -> PathBuf {
        self.root.join("dropped")
    }

    /// Records a drop locally (when the store cannot take the record).
    pub fn put_dropped(&self, name: &WalFileName, json: &[u8]) -> Result<(), CliError> {
        let dir = self.dropped_dir();
        ensure_dir(&dir)?;
        write_atomic(&dir.join(format!("{name}.json")), json)
    }

    /// Drop records waiting to be copied to the store: path and content.
    pub fn dropped_entries(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let Ok(entries) = fs::read_dir(self.dropped_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| Some((e.path(), fs::read(e.path()).ok()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_and_fetched_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("spool"));
        let n: WalFileName = "000000010000000000000003".parse().unwrap();
        assert!(spool.pushed_marker(&n).is_none());
        let m = PushedMarker {
            crc32c: 0xabcd_0123,
            size: 16 << 20,
            repo: "s3://b/p?region=x y".into(),
        };
        spool.mark_pushed(&n, &m).unwrap();
        assert_eq!(spool.pushed_marker(&n), Some(m));
        spool.clear_pushed(&n);
        assert!(spool.pushed_marker(&n).is_none());

        spool.put_fetched(&n, 0x1234_5678, b"abc").unwrap();
        let (p, crc) = spool.fetched(&n).unwrap();
        assert_eq!(crc, 0x1234_5678);
        assert_eq!(fs::read(p).unwrap(), b"abc");
        assert_eq!(spool.fetched_entries().len(), 1);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(spool.root().join("fetched"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }
}
