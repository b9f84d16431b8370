//! [`LocalStore`]: a store on the local file system, with durable, atomic writes.
//!
//! # The durable-write sequence
//!
//! 1. The object's parent directories are created; every directory that did not exist is made
//!    durable by fsyncing its parent, up to the store's root.
//! 2. A temporary file with a unique name (`.carta-tmp.<name>.<pid>.<random>`) is created with
//!    `O_CREAT|O_EXCL` in the object's directory, written, `fsync`ed, and closed with the
//!    result of `close(2)` checked.
//! 3. It is renamed over the final name: `rename(2)` for overwrites, and for create-only
//!    writes `renameat2(RENAME_NOREPLACE)`, falling back to `link(2)` + `unlink(2)` where the
//!    kernel or file system does not support it. Both fail if the name exists, so exactly one
//!    of many concurrent creators wins.
//! 4. The directory is fsynced, so the new name survives a power loss.
//!
//! A process killed at any moment leaves either the previous state or the complete new object
//! under the final name, never a partial one. What it may leave is a temporary file, which
//! listings never show and [`LocalStore::cleanup_stale_temps`] removes.
//!
//! Names starting with `.carta-` are reserved for the store's own files: paths with such a
//! segment are rejected, and listings skip them.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::IntoRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use carta_dr_core::store::clamp_range;
use carta_dr_core::{
    Capabilities, Error, GetResult, ObjectMeta, ObjectWriter, PutMode, PutOptions, Result, Store,
    StorePath,
};
use futures::stream::{self, StreamExt};

/// The prefix of every name the store reserves for itself.
pub const RESERVED_PREFIX: &str = ".carta-";
/// The prefix of temporary files.
pub const TEMP_PREFIX: &str = ".carta-tmp.";
/// The size of the chunks `get` reads and `put_writer` writes.
const CHUNK: usize = 1 << 20;
/// The longest part of an object's name copied into its temporary file's name, so that the
/// temporary name stays under `NAME_MAX` (255 bytes).
const TEMP_NAME_MAX: usize = 160;
/// The age past which [`LocalStore::open`] removes temporary files even if their writer
/// appears alive (its pid may have been reused).
pub const DEFAULT_STALE_TEMP_AGE: Duration = Duration::from_secs(24 * 3600);

/// The clean-up at open runs at most this often for one store.
pub const CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);

/// The reserved file at the root whose modification time records the last clean-up at open.
const CLEANUP_STAMP: &str = ".carta-cleanup-stamp";

/// Options of [`LocalStore::open_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalOptions {
    /// Remove stale temporary files when the store is opened (in a background thread):
    /// those whose writer process is gone, and those older than this age. `None` disables
    /// the clean-up at open.
    pub cleanup_at_open: Option<Duration>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            cleanup_at_open: Some(DEFAULT_STALE_TEMP_AGE),
        }
    }
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
}

/// A [`Store`] in a directory of the local file system. Cloning it yields another handle to
/// the same directory. Displays as `Local(/path/to/repo)`.
///
/// Every object path maps to a file under the root, segment by segment; blocking I/O runs on
/// tokio's blocking pool.
#[derive(Clone, Debug)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

impl fmt::Display for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Local({})", self.inner.root.display())
    }
}

impl LocalStore {
    /// Opens (creating it durably if needed) the store rooted at the absolute path `root`,
    /// and starts removing stale temporary files in the background (see [`LocalOptions`]).
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(root, LocalOptions::default())
    }

    /// Opens the store rooted at the absolute path `root` with `opts`.
    pub fn open_with(root: impl AsRef<Path>, opts: LocalOptions) -> Result<Self> {
        let root = root.as_ref();
        if !root.is_absolute() {
            return Err(Error::invalid(
                "local store root",
                root.display().to_string(),
                "must be an absolute path",
            ));
        }
        create_dirs_durably(Path::new("/"), root)?;
        let root = root
            .canonicalize()
            .map_err(|e| Error::io(format!("resolve local store root {}", root.display()), e))?;
        let meta = std::fs::metadata(&root)
            .map_err(|e| Error::io(format!("stat local store root {}", root.display()), e))?;
        if !meta.is_dir() {
            return Err(Error::invalid(
                "local store root",
                root.display().to_string(),
                "is not a directory",
            ));
        }
        let store = LocalStore {
            inner: Arc::new(Inner { root }),
        };
        if let Some(age) = opts.cleanup_at_open.filter(|_| store.cleanup_due()) {
            let bg = store.clone();
            let spawned = std::thread::Builder::new()
                .name("carta-dr-local-cleanup".into())
                .spawn(move || match bg.cleanup_stale_temps_blocking(age) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(store = %bg, removed = n, "removed stale temporary files"),
                    Err(e) => tracing::warn!(store = %bg, error = %e, "stale temporary file clean-up failed"),
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start the stale temporary file clean-up");
            }
        }
        Ok(store)
    }

    /// Whether the clean-up at open is due: at most once per [`CLEANUP_INTERVAL`] per store,
    /// so that short-lived processes (one `wal-push` per WAL segment) do not walk the whole
    /// tree every time. Claims the slot by touching a reserved stamp file at the root.
    fn cleanup_due(&self) -> bool {
        let stamp = self.inner.root.join(CLEANUP_STAMP);
        let recent = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < CLEANUP_INTERVAL);
        if recent {
            return false;
        }
        // Best effort: if the stamp cannot be written (read-only store), clean up anyway.
        if let Err(e) = std::fs::write(&stamp, b"") {
            tracing::debug!(path = %stamp.display(), error = %e, "could not touch the clean-up stamp");
        }
        true
    }

    /// The store's root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The file an object path maps to. Fails for paths with a reserved segment.
    pub fn file_path(&self, path: &StorePath) -> Result<PathBuf> {
        let mut out = self.inner.root.clone();
        for seg in path.segments() {
            if seg.starts_with(RESERVED_PREFIX) {
                return Err(Error::invalid(
                    "store path",
                    path.as_str(),
                    format!(
                        "names starting with {RESERVED_PREFIX:?} are reserved by the local store"
                    ),
                ));
            }
            // StorePath guarantees the segment is not empty, `.`, `..`, and has no `/`.
            out.push(seg);
        }
        Ok(out)
    }

    /// Removes temporary files left by writers that died (their pid is not alive) and those
    /// older than `older_than`, anywhere in the store. Returns how many were removed.
    ///
    /// Safe to run while other processes write: a live writer's temporary file younger than
    /// `older_than` is never touched. (Pid liveness is checked on this host; a repository
    /// shared between hosts should use an `older_than` longer than any write.)
    pub async fn cleanup_stale_temps(&self, older_than: Duration) -> Result<usize> {
        let this = self.clone();
        blocking(move || this.cleanup_stale_temps_blocking(older_than)).await
    }

    fn cleanup_stale_temps_blocking(&self, older_than: Duration) -> Result<usize> {
        let mut removed = 0;
        let mut dirs = vec![self.inner.root.clone()];
        let now = SystemTime::now();
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("read directory {}", dir.display()), e)),
            };
            let mut removed_here = false;
            for entry in entries {
                let entry =
                    entry.map_err(|e| Error::io(format!("read directory {}", dir.display()), e))?;
                let name = entry.file_name();
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    dirs.push(entry.path());
                    continue;
                }
                let Some(pid) = temp_writer_pid(&name) else {
                    continue;
                };
                let path = entry.path();
                let old = match entry.metadata().and_then(|m| m.modified()) {
                    Ok(mtime) => now.duration_since(mtime).unwrap_or_default() >= older_than,
                    Err(_) => continue, // gone meanwhile
                };
                if !old && pid_alive(pid) {
                    continue;
                }
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::debug!(path = %path.display(), pid, "removed stale temporary file");
                        removed += 1;
                        removed_here = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Error::io(
                            format!("remove stale temporary file {}", path.display()),
                            e,
                        ))
                    }
                }
            }
            if removed_here {
                fsync_dir(&dir)?;
            }
        }
        Ok(removed)
    }

    fn put_blocking(&self, path: &StorePath, data: &[u8], mode: PutMode) -> Result<()> {
        let target = self.file_path(path)?;
        if mode == PutMode::Create && target.symlink_metadata().is_ok() {
            return Err(already_exists(path));
        }
        let (file, tmp) = self.create_temp(&target)?;
        let mut guard = TempGuard(Some(tmp));
        write_all(&file, data, guard.path())?;
        finish_and_commit(file, &mut guard, &target, path, mode)
    }

    /// Creates the parent directories of `target` and a fresh temporary file beside it.
    fn create_temp(&self, target: &Path) -> Result<(File, PathBuf)> {
        let dir = target
            .parent()
            .ok_or_else(|| Error::invalid_input(format!("{} has no parent", target.display())))?;
        create_dirs_durably(&self.inner.root, dir)?;
        let name = target.file_name().map(OsStr::as_bytes).unwrap_or_default();
        let mut short = String::from_utf8_lossy(name).into_owned();
        if short.len() > TEMP_NAME_MAX {
            let mut cut = TEMP_NAME_MAX;
            while !short.is_char_boundary(cut) {
                cut -= 1;
            }
            short.truncate(cut);
        }
        loop {
            let tmp = dir.join(format!(
                "{TEMP_PREFIX}{short}.{}.{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(f) => return Ok((f, tmp)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::io(
                        format!("create temporary file {}", tmp.display()),
                        e,
                    ))
                }
            }
        }
    }

    fn open_blocking(
        &self,
        path: &StorePath,
        range: Option<Range<u64>>,
    ) -> Result<(File, ObjectMeta, Range<u64>)> {
        let file_path = self.file_path(path)?;
        let mut file = File::open(&file_path).map_err(|e| map_io(e, "open", path, &file_path))?;
        let md = file
            .metadata()
            .map_err(|e| map_io(e, "stat", path, &file_path))?;
        if !md.is_file() {
            return Err(not_found(path));
        }
        let meta = to_meta(path, &md);
        let range = clamp_range(path, range, meta.size)?;
        if range.start > 0 {
            file.seek(SeekFrom::Start(range.start))
                .map_err(|e| map_io(e, &format!("seek to {}", range.start), path, &file_path))?;
        }
        Ok((file, meta, range))
    }

    fn head_blocking(&self, path: &StorePath) -> Result<ObjectMeta> {
        let file_path = self.file_path(path)?;
        let md = std::fs::metadata(&file_path).map_err(|e| map_io(e, "stat", path, &file_path))?;
        if !md.is_file() {
            return Err(not_found(path));
        }
        Ok(to_meta(path, &md))
    }

    fn delete_blocking(&self, path: &StorePath) -> Result<()> {
        let file_path = self.file_path(path)?;
        match std::fs::remove_file(&file_path) {
            Ok(()) => {
                if let Some(dir) = file_path.parent() {
                    fsync_dir(dir)?;
                }
                Ok(())
            }
            // Absent, a directory (no object of that name), or a parent that is a file.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound
                        | io::ErrorKind::IsADirectory
                        | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::io(
                format!("delete {path} ({})", file_path.display()),
                e,
            )),
        }
    }

    fn list_blocking(&self, prefix: Option<&StorePath>) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let (start, start_path) = match prefix {
            None => (self.inner.root.clone(), None),
            Some(p) => {
                let fp = match self.file_path(p) {
                    Ok(fp) => fp,
                    // No object can live under a reserved name.
                    Err(_) => return Ok(out),
                };
                match std::fs::metadata(&fp) {
                    Ok(md) if md.is_file() => {
                        out.push(to_meta(p, &md));
                        return Ok(out);
                    }
                    Ok(md) if md.is_dir() => (fp, Some(p.clone())),
                    Ok(_) => return Ok(out),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                        ) =>
                    {
                        return Ok(out)
                    }
                    Err(e) => return Err(Error::io(format!("list {p}: stat {}", fp.display()), e)),
                }
            }
        };
        let mut dirs = vec![(start, start_path)];
        while let Some((dir, dir_path)) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                // Removed meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Error::io(
                        format!("list: read directory {}", dir.display()),
                        e,
                    ))
                }
            };
            for entry in entries {
                let entry = entry
                    .map_err(|e| Error::io(format!("list: read directory {}", dir.display()), e))?;
                let name = entry.file_name();
                let full = entry.path();
                let Some(name) = name.to_str() else {
                    tracing::warn!(path = %full.display(), "skipping a file whose name is not UTF-8");
                    continue;
                };
                if name.starts_with(RESERVED_PREFIX) {
                    continue;
                }
                let candidate = match &dir_path {
                    None => StorePath::new(name),
                    Some(d) => d.join(name),
                };
                let sp = match candidate {
                    Ok(sp) => sp,
                    Err(e) => {
                        tracing::warn!(path = %full.display(), error = %e, "skipping a file that is not a valid store path");
                        continue;
                    }
                };
                let md = match entry.file_type() {
                    Ok(ft) if ft.is_symlink() => std::fs::metadata(&full),
                    Ok(_) => entry.metadata(),
                    Err(e) => Err(e),
                };
                match md {
                    Ok(md) if md.is_file() => out.push(to_meta(&sp, &md)),
                    Ok(md) if md.is_dir() && !entry.file_type().is_ok_and(|t| t.is_symlink()) => {
                        dirs.push((full, Some(sp)))
                    }
                    Ok(_) => {
                        tracing::warn!(path = %full.display(), "skipping something that is neither a file nor a directory");
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(format!("list: stat {}", full.display()), e)),
                }
            }
        }
        out.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

/// Removes the temporary file on drop unless it was committed.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(tmp) = self.0.take() {
            if let Err(e) = std::fs::remove_file(&tmp) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %tmp.display(), error = %e, "could not remove temporary file");
                }
            }
        }
    }
}

fn write_all(mut file: &File, data: &[u8], tmp: &Path) -> Result<()> {
    file.write_all(data)
        .map_err(|e| Error::io(format!("write temporary file {}", tmp.display()), e))
}

/// fsync, checked close, atomic rename (no-replace for create-only), directory fsync.
fn finish_and_commit(
    file: File,
    guard: &mut TempGuard,
    target: &Path,
    path: &StorePath,
    mode: PutMode,
) -> Result<()> {
    let tmp = guard.path().to_path_buf();
    file.sync_all()
        .map_err(|e| Error::io(format!("fsync temporary file {}", tmp.display()), e))?;
    close_checked(file)
        .map_err(|e| Error::io(format!("close temporary file {}", tmp.display()), e))?;
    match mode {
        PutMode::Overwrite => std::fs::rename(&tmp, target).map_err(|e| {
            Error::io(
                format!(
                    "put {path}: rename {} to {}",
                    tmp.display(),
                    target.display()
                ),
                e,
            )
        })?,
        PutMode::Create => match rename_noreplace(&tmp, target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(already_exists(path)),
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "put {path} (create-only): rename {} to {}",
                        tmp.display(),
                        target.display()
                    ),
                    e,
                ))
            }
        },
    }
    // The temporary name is gone (renamed, or unlinked after linking).
    guard.0 = None;
    if let Some(dir) = target.parent() {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Closes `file`, returning the error of `close(2)` that `File`'s drop would ignore.
fn close_checked(file: File) -> io::Result<()> {
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just released by `into_raw_fd`, so this is its only owner and it is
    // closed exactly once.
    let rc = unsafe { libc::close(fd) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Renames `from` to `to`, failing with `AlreadyExists` if `to` exists.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let (f, t) = (cstring(from)?, cstring(to)?);
        // SAFETY: both pointers are valid NUL-terminated strings that outlive the call;
        // renameat2 takes (int, const char *, int, const char *, unsigned int).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
                tracing::debug!("renameat2(RENAME_NOREPLACE) unsupported here; using link+unlink");
            }
            _ => return Err(err),
        }
    }
    link_noreplace(from, to)
}

/// The fallback of [`rename_noreplace`]: `link(2)` fails if `to` exists; then the temporary
/// name is removed.
fn link_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::hard_link(from, to)?;
    if let Err(e) = std::fs::remove_file(from) {
        // The object is in place; the extra name is a temporary that clean-up removes.
        tracing::warn!(path = %from.display(), error = %e, "could not remove temporary link");
    }
    Ok(())
}

/// fsyncs a directory, so entries created or removed in it are durable.
fn fsync_dir(dir: &Path) -> Result<()> {
    let d =
        File::open(dir).map_err(|e| Error::io(format!("open directory {}", dir.display()), e))?;
    d.sync_all()
        .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))
}

/// Creates `dir` and its missing ancestors below `base`; each directory that did not exist
/// is made durable by fsyncing its parent.
fn create_dirs_durably(base: &Path, dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    // Collect the missing ancestors, nearest `base` first.
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.is_dir() {
        missing.push(cur.to_path_buf());
        match cur.parent() {
            Some(p) if cur != base => cur = p,
            _ => break,
        }
    }
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(Error::io(format!("create directory {}", d.display()), e)),
        }
    }
    // Whoever created them, fsync the parent of every directory that was missing, so the
    // object we are about to write is reachable after a crash.
    for d in &missing {
        if let Some(parent) = d.parent() {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

/// The writer pid encoded in a temporary file's name, if `name` is one.
fn temp_writer_pid(name: &OsStr) -> Option<u32> {
    let name = name.to_str()?;
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let mut parts = rest.rsplitn(3, '.');
    let _rand = parts.next()?;
    parts.next()?.parse().ok()
}

/// Whether a process with this pid exists (on this host).
fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for the process's existence.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn to_meta(path: &StorePath, md: &std::fs::Metadata) -> ObjectMeta {
    let last_modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    ObjectMeta {
        path: path.clone(),
        size: md.len(),
        last_modified,
        etag: Some(format!(
            "{:x}-{:x}-{:x}.{:x}",
            md.ino(),
            md.len(),
            md.mtime(),
            md.mtime_nsec()
        )),
    }
}

fn not_found(path: &StorePath) -> Error {
    Error::NotFound {
        path: path.to_string(),
    }
}

fn already_exists(path: &StorePath) -> Error {
    Error::AlreadyExists {
        path: path.to_string(),
    }
}

/// Maps an I/O error of a read operation: absence (including "a parent is a file") is
/// `NotFound`; anything else keeps the operation and both paths.
fn map_io(e: io::Error, op: &str, path: &StorePath, file: &Path) -> Error {
    if matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) {
        return not_found(path);
    }
    Error::io(format!("{op} {path} ({})", file.display()), e)
}

/// Runs blocking file-system work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io("local store blocking task", io::Error::other(e.to_string())))?
}

/// A streaming write to a [`LocalStore`]: buffered in chunks of 1 MiB into a temporary file,
/// committed by [`ObjectWriter::complete`].
struct LocalWriter {
    path: StorePath,
    target: PathBuf,
    mode: PutMode,
    /// `None` only while a blocking write owns it, or after a failed write.
    file: Option<File>,
    guard: TempGuard,
    buf: BytesMut,
}

impl LocalWriter {
    async fn flush_buf(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = self.buf.split().freeze();
        let file = self.file.take().ok_or_else(|| {
            Error::io(
                format!("write {}", self.path),
                io::Error::other("writer failed earlier"),
            )
        })?;
        let tmp = self.guard.path().to_path_buf();
        let file = blocking(move || {
            write_all(&file, &data, &tmp)?;
            Ok(file)
        })
        .await?;
        self.file = Some(file);
        Ok(())
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.buf.extend_from_slice(&data);
        if self.buf.len() >= CHUNK {
            self.flush_buf().await?;
        }
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<()> {
        self.flush_buf().await?;
        let file = self.file.take().ok_or_else(|| {
            Error::io(
                format!("complete {}", self.path),
                io::Error::other("writer failed earlier"),
            )
        })?;
        let mut this = *self;
        blocking(move || {
            finish_and_commit(file, &mut this.guard, &this.target, &this.path, this.mode)
        })
        .await
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        // Dropping the guard removes the temporary file.
        drop(self);
        Ok(())
    }
}

#[async_trait]
impl Store for LocalStore {
    async fn put(&self, path: &StorePath, data: Bytes, opts: PutOptions) -> Result<()> {
        let this = self.clone();
        let path = path.clone();
        blocking(move || this.put_blocking(&path, &data, opts.mode)).await
    }

    async fn put_writer(
        &self,
        path: &StorePath,
        opts: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>> {
        let this = self.clone();
        let p = path.clone();
        let (file, tmp, target) = blocking(move || {
            let target = this.file_path(&p)?;
            if opts.mode == PutMode::Create && target.symlink_metadata().is_ok() {
                return Err(already_exists(&p));
            }
            let (file, tmp) = this.create_temp(&target)?;
            Ok((file, tmp, target))
        })
        .await?;
        Ok(Box::new(LocalWriter {
            path: path.clone(),
            target,
            mode: opts.mode,
            file: Some(file),
            guard: TempGuard(Some(tmp)),
            buf: BytesMut::with_capacity(CHUNK),
        }))
    }

    async fn get(&self, path: &StorePath, range: Option<Range<u64>>) -> Result<GetResult> {
        let this = self.clone();
        let p = path.clone();
        let (file, meta, range) = blocking(move || this.open_blocking(&p, range)).await?;
        let remaining = range.end - range.start;
        let state = (Some(file), remaining, range.start, path.clone());
        let stream = stream::try_unfold(state, |(file, remaining, offset, path)| async move {
            let Some(mut file) = file else {
                return Ok(None);
            };
            if remaining == 0 {
                return Ok(None);
            }
            let want = usize::try_from(remaining.min(CHUNK as u64)).unwrap_or(CHUNK);
            let p = path.clone();
            let (file, chunk) = blocking(move || {
                let mut buf = vec![0u8; want];
                let mut got = 0;
                while got < want {
                    match file.read(&mut buf[got..]) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            return Err(Error::io(
                                format!("read {p} at offset {}", offset + got as u64),
                                e,
                            ))
                        }
                    }
                }
                if got < want {
                    return Err(Error::corrupt(
                        &p,
                        None,
                        format!("file ended at offset {} while reading", offset + got as u64),
                    ));
                }
                Ok((file, Bytes::from(buf)))
            })
            .await?;
            let n = chunk.len() as u64;
            Ok(Some((chunk, (Some(file), remaining - n, offset + n, path))))
        });
        Ok(GetResult {
            meta,
            range,
            stream: stream.boxed(),
        })
    }

    async fn head(&self, path: &StorePath) -> Result<ObjectMeta> {
        let this = self.clone();
        let path = path.clone();
        blocking(move || this.head_blocking(&path)).await
    }

    async fn list(&self, prefix: Option<&StorePath>) -> Result<Vec<ObjectMeta>> {
        let this = self.clone();
        let prefix = prefix.cloned();
        blocking(move || this.list_blocking(prefix.as_ref())).await
    }

    async fn delete(&self, path: &StorePath) -> Result<()> {
        let this = self.clone();
        let path = path.clone();
        blocking(move || this.delete_blocking(&path)).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_create: true,
            atomic_create_streaming: true,
            range_reads: true,
            streaming_writes: true,
            durable: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_parse() {
        assert_eq!(
            temp_writer_pid(OsStr::new(".carta-tmp.a.b.c.1234.00ff00ff00ff00ff")),
            Some(1234)
        );
        assert_eq!(temp_writer_pid(OsStr::new(".carta-tmp.x")), None);
        assert_eq!(temp_writer_pid(OsStr::new("object.12.34")), None);
    }

    #[test]
    fn link_fallback_refuses_to_replace() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, b"new").unwrap();
        std::fs::write(&b, b"old").unwrap();
        let e = link_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).unwrap(), b"old");
        link_noreplace(&a, &c).unwrap();
        assert_eq!(std::fs::read(&c).unwrap(), b"new");
        assert!(!a.exists());
    }

    #[test]
    fn renameat2_refuses_to_replace() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"new").unwrap();
        std::fs::write(&b, b"old").unwrap();
        assert_eq!(
            rename_noreplace(&a, &b).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(&b).unwrap(), b"old");
    }

    #[test]
    fn own_pid_is_alive() {
        assert!(pid_alive(std::process::id()));
    }
}
