//! Restore of a physical backup: the data directory (mode 0700), tablespace links, the
//! recovery configuration (`restore_command`, recovery target) and the signal file.
//!
//! Safety rules:
//!
//! * Every path from the store is validated ([`validate_relative_path`]); a record with `..`,
//!   an absolute path or a NUL is refused before anything is written.
//! * Nothing is written outside the target directory, except tablespace files, which go to the
//!   tablespace location the record names (absolute) and nowhere else. Symlinks are accepted
//!   only at `pg_tblspc/<oid>` of a recorded tablespace; no write follows a symlink inside the
//!   target directory.
//! * Every chunk's SHA-256 and every file's CRC-32C are checked while writing.
//! * A non-empty target is refused unless `delta` is set; then only files whose checksum
//!   differs are rewritten, and files that are not in the backup are removed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

use bytes::Bytes;
use carta_dr_core::catalog::{
    bundle_path, chunk_path, time_to_secs, validate_relative_path, BackupRecord, ChunkRef, Content,
    FileKind, FileRecord,
};
use carta_dr_core::{BackupId, Error, Lsn, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::replication::Repo;

/// Which backup to restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupSelector {
    /// The newest backup that can reach the recovery target (by time or LSN), else the newest.
    Latest,
    /// This one.
    Id(BackupId),
}

/// Where recovery stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay all archived WAL.
    EndOfWal,
    /// Stop as soon as the backup is consistent.
    Immediate,
    /// `recovery_target_time` (PostgreSQL timestamp text) and its Unix time, when known, to
    /// choose the backup.
    Time {
        /// As PostgreSQL parses it, e.g. `2026-11-23 12:00:00+00`.
        text: String,
        /// Seconds since the epoch, to pick a backup that ends before it.
        unix: Option<u64>,
    },
    /// `recovery_target_lsn`.
    Lsn(Lsn),
    /// `recovery_target_xid`.
    Xid(u64),
    /// `recovery_target_name` (a restore point).
    Name(String),
}

/// `recovery_target_action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetAction {
    /// Promote at the target.
    Promote,
    /// Pause at the target.
    Pause,
    /// Shut down at the target.
    Shutdown,
}

impl TargetAction {
    fn as_str(self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// What to restore, where, and how.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The data directory to write.
    pub target_dir: PathBuf,
    /// Which backup.
    pub backup: BackupSelector,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// What PostgreSQL does at the target (default: PostgreSQL's, `pause`).
    pub action: Option<TargetAction>,
    /// Write `standby.signal` instead of `recovery.signal`.
    pub standby: bool,
    /// Rewrite only files whose checksum differs; remove files not in the backup.
    pub delta: bool,
    /// The `restore_command` to configure (`None`: leave the configuration alone).
    pub restore_command: Option<String>,
    /// Further `key = 'value'` settings for `postgresql.auto.conf` (never secrets).
    pub extra_settings: Vec<(String, String)>,
    /// Files restored at once.
    pub concurrency: usize,
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// The backup restored.
    pub backup: Option<BackupId>,
    /// Files written.
    pub files_written: u64,
    /// Files left as they were (delta, checksum equal).
    pub files_unchanged: u64,
    /// Files removed (delta, not in the backup).
    pub files_removed: u64,
    /// Bytes written.
    pub bytes_written: u64,
}

/// Picks the backup to restore.
pub fn select_backup<'a>(
    records: &'a [BackupRecord],
    sel: BackupSelector,
    target: &RecoveryTarget,
) -> Result<&'a BackupRecord> {
    match sel {
        BackupSelector::Id(id) => {
            records
                .iter()
                .find(|r| r.id == id)
                .ok_or_else(|| Error::NotFound {
                    path: format!("backup {id}"),
                })
        }
        BackupSelector::Latest => {
            let fits = |r: &&BackupRecord| match target {
                RecoveryTarget::Time { unix: Some(t), .. } => r.stop_time <= *t,
                RecoveryTarget::Lsn(l) => r.stop_lsn <= *l,
                _ => true,
            };
            records
                .iter()
                .filter(fits)
                .max_by_key(|r| r.id)
                .ok_or_else(|| Error::NotFound {
                    path: "a backup that ends before the recovery target".into(),
                })
        }
    }
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> Error {
    Error::io(format!("{what} {}", p.display()), e)
}

/// Where the file at `rel` goes: inside `root`, or inside a tablespace location.
fn destination(root: &Path, rel: &str, tablespaces: &HashMap<u32, PathBuf>) -> Result<PathBuf> {
    validate_relative_path(rel)?;
    if let Some(rest) = rel.strip_prefix("pg_tblspc/") {
        if let Some((oid, inner)) = rest.split_once('/') {
            let oid: u32 = oid.parse().map_err(|_| {
                Error::invalid("path in backup", rel, "pg_tblspc entry is not an OID")
            })?;
            let loc = tablespaces.get(&oid).ok_or_else(|| {
                Error::invalid("path in backup", rel, "tablespace not in the record")
            })?;
            return Ok(loc.join(inner));
        }
    }
    Ok(root.join(rel))
}

/// Refuses to write through an existing symlink between `base` and `dest`.
fn check_no_symlink(base: &Path, dest: &Path) -> Result<()> {
    let rel = dest.strip_prefix(base).map_err(|_| {
        Error::invalid(
            "path in backup",
            dest.display().to_string(),
            "outside the target",
        )
    })?;
    let mut cur = base.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(n) => cur.push(n),
            _ => {
                return Err(Error::invalid(
                    "path in backup",
                    dest.display().to_string(),
                    "not a plain relative path",
                ))
            }
        }
        if let Ok(m) = std::fs::symlink_metadata(&cur) {
            if m.file_type().is_symlink() {
                return Err(Error::invalid(
                    "path in backup",
                    dest.display().to_string(),
                    "would be written through a symlink",
                ));
            }
        }
    }
    Ok(())
}

fn is_empty_dir(p: &Path) -> Result<bool> {
    match std::fs::read_dir(p) {
        Ok(mut d) => Ok(d.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io_err("reading", p, e)),
    }
}

fn file_crc(p: &Path) -> Option<(u64, u32)> {
    let mut f = std::fs::File::open(p).ok()?;
    let mut buf = vec![0u8; 1 << 20];
    let mut crc = 0u32;
    let mut n = 0u64;
    loop {
        let r = std::io::Read::read(&mut f, &mut buf).ok()?;
        if r == 0 {
            return Some((n, crc));
        }
        crc = crc32c::crc32c_append(crc, buf.get(..r)?);
        n += r as u64;
    }
}

struct Ctx {
    repo: Repo,
    root: PathBuf,
    tablespaces: HashMap<u32, PathBuf>,
    delta: bool,
}

impl Ctx {
    fn dest(&self, f: &FileRecord) -> Result<PathBuf> {
        let d = destination(&self.root, &f.path, &self.tablespaces)?;
        let base = if d.starts_with(&self.root) {
            self.root.clone()
        } else {
            self.tablespaces
                .values()
                .find(|l| d.starts_with(l))
                .cloned()
                .ok_or_else(|| {
                    Error::invalid("path in backup", f.path.clone(), "outside the target")
                })?
        };
        check_no_symlink(&base, &d)?;
        Ok(d)
    }

    /// Whether a delta restore may keep the file as it is.
    fn unchanged(&self, f: &FileRecord, dest: &Path) -> bool {
        self.delta && file_crc(dest) == Some((f.size, f.crc32c))
    }
}

fn write_file(dest: &Path, mode: u32, parts: &[Bytes]) -> Result<()> {
    if let Ok(m) = std::fs::symlink_metadata(dest) {
        if !m.file_type().is_file() {
            return Err(Error::invalid(
                "restore destination",
                dest.display().to_string(),
                "exists and is not a regular file",
            ));
        }
        std::fs::remove_file(dest).map_err(|e| io_err("removing", dest, e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o777)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .map_err(|e| io_err("creating", dest, e))?;
    for p in parts {
        f.write_all(p).map_err(|e| io_err("writing", dest, e))?;
    }
    // Durability comes from one syncfs() of each file system at the end of the restore.
    Ok(())
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::invalid_input(format!("restore task: {e}")))?
}

/// A chunked file being restored: its chunks are fetched, checked and written at their
/// offsets by independent jobs (any number of them at once, across files), and the job that
/// completes the last chunk checks the file's CRC-32C and renames it into place.
struct ChunkedFile {
    rec: FileRecord,
    chunks: Vec<ChunkRef>,
    offsets: Vec<u64>,
    /// Created by the first job to need it; `None` when a delta restore keeps the file.
    state: tokio::sync::OnceCell<Option<OpenTemp>>,
    /// CRC-32C of each chunk, combined in order at the end.
    crcs: std::sync::Mutex<Vec<u32>>,
    remaining: AtomicUsize,
}

/// The temporary file a chunked file is written to before being renamed into place.
struct OpenTemp {
    dest: PathBuf,
    tmp: PathBuf,
    /// Taken (and so closed) when the file is complete.
    file: std::sync::Mutex<Option<Arc<std::fs::File>>>,
}

impl ChunkedFile {
    fn new(rec: FileRecord, chunks: Vec<ChunkRef>) -> Self {
        let mut offsets = Vec::with_capacity(chunks.len());
        let mut at = 0u64;
        for c in &chunks {
            offsets.push(at);
            at = at.saturating_add(c.len);
        }
        ChunkedFile {
            crcs: std::sync::Mutex::new(vec![0; chunks.len()]),
            remaining: AtomicUsize::new(chunks.len()),
            rec,
            chunks,
            offsets,
            state: tokio::sync::OnceCell::new(),
        }
    }

    /// Creates the temporary file, or decides (delta) that the file stays as it is.
    fn prepare(&self, ctx: &Ctx) -> Result<Option<OpenTemp>> {
        let f = &self.rec;
        let dest = ctx.dest(f)?;
        if ctx.unchanged(f, &dest) {
            return Ok(None);
        }
        // `16384` and `16384.1` must not share a temporary name: append, never replace.
        let mut tmp_name = dest.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".carta-dr-tmp");
        let tmp = dest.with_file_name(tmp_name);
        let _ = std::fs::remove_file(&tmp);
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(f.mode & 0o777)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| io_err("creating", &tmp, e))?;
        Ok(Some(OpenTemp {
            dest,
            tmp,
            file: std::sync::Mutex::new(Some(Arc::new(out))),
        }))
    }

    /// Opens, checks and writes chunk `i` from its sealed bytes; completes the file when it
    /// was the last one. Returns the file's size when this call completed it.
    fn write_chunk(&self, ctx: &Ctx, t: &OpenTemp, i: usize, sealed: &[u8]) -> Result<u64> {
        let (Some(c), Some(&offset)) = (self.chunks.get(i), self.offsets.get(i)) else {
            return Err(Error::invalid_input("restore chunk index out of range"));
        };
        let path = chunk_path(&c.sha256)?;
        let data = ctx.repo.open_blocking(&path, sealed)?;
        let got = hex::encode(Sha256::digest(&data));
        if got != c.sha256 || data.len() as u64 != c.len {
            return Err(Error::corrupt(
                &path,
                Some(i as u64),
                format!("chunk of {} has SHA-256 {got}", self.rec.path),
            ));
        }
        let file = t
            .file
            .lock()
            .map_err(|_| Error::invalid_input("restore file state poisoned"))?
            .clone()
            .ok_or_else(|| Error::invalid_input("restore file already complete"))?;
        file.write_all_at(&data, offset)
            .map_err(|e| io_err("writing", &t.tmp, e))?;
        drop(file);
        let crc = crc32c::crc32c(&data);
        {
            let mut crcs = self
                .crcs
                .lock()
                .map_err(|_| Error::invalid_input("restore file state poisoned"))?;
            if let Some(slot) = crcs.get_mut(i) {
                *slot = crc;
            }
        }
        if self.remaining.fetch_sub(1, AtomicOrdering::AcqRel) != 1 {
            return Ok(0);
        }
        // The last chunk: every write is done.
        let crcs = self
            .crcs
            .lock()
            .map_err(|_| Error::invalid_input("restore file state poisoned"))?;
        let mut crc = 0u32;
        let mut n = 0u64;
        for (c, part) in self.chunks.iter().zip(crcs.iter()) {
            crc = crc32c::crc32c_combine(crc, *part, usize::try_from(c.len).unwrap_or(0));
            n = n.saturating_add(c.len);
        }
        drop(t.file.lock().ok().and_then(|mut g| g.take()));
        if crc != self.rec.crc32c || n != self.rec.size {
            return Err(Error::corrupt(
                &self.rec.path,
                None,
                "CRC-32C of the restored file differs",
            ));
        }
        std::fs::rename(&t.tmp, &t.dest).map_err(|e| io_err("renaming", &t.dest, e))?;
        Ok(n)
    }
}

/// Restores chunk `i` of `file`. Returns (files written, files unchanged, bytes written).
async fn restore_chunk(ctx: Arc<Ctx>, file: Arc<ChunkedFile>, i: usize) -> Result<(u64, u64, u64)> {
    let state = file
        .state
        .get_or_try_init(|| {
            let (ctx, file) = (ctx.clone(), file.clone());
            async move { blocking(move || file.prepare(&ctx)).await }
        })
        .await?;
    let Some(t) = state else {
        return Ok((0, u64::from(i == 0), 0));
    };
    let path = chunk_path(
        &file
            .chunks
            .get(i)
            .ok_or_else(|| Error::invalid_input("restore chunk index out of range"))?
            .sha256,
    )?;
    let sealed = match ctx.repo.get_sealed(&path).await {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&t.tmp);
            return Err(e);
        }
    };
    let (c2, f2) = (ctx.clone(), file.clone());
    let r = blocking(move || {
        let Some(Some(t)) = f2.state.get() else {
            return Err(Error::invalid_input("restore file state"));
        };
        f2.write_chunk(&c2, t, i, &sealed)
    })
    .await;
    match r {
        Ok(0) => Ok((0, 0, 0)),
        Ok(n) => Ok((1, 0, n)),
        Err(e) => {
            let _ = std::fs::remove_file(&t.tmp);
            Err(e)
        }
    }
}

async fn restore_bundle(
    ctx: Arc<Ctx>,
    bundle: String,
    files: Vec<FileRecord>,
) -> Result<(u64, u64, u64)> {
    let c2 = ctx.clone();
    let (todo, unchanged) = blocking(move || {
        let mut todo = Vec::new();
        let mut unchanged = 0;
        for f in files {
            let d = c2.dest(&f)?;
            if c2.unchanged(&f, &d) {
                unchanged += 1;
            } else {
                todo.push((f, d));
            }
        }
        Ok((todo, unchanged))
    })
    .await?;
    if todo.is_empty() {
        return Ok((0, unchanged, 0));
    }
    let path = bundle_path(&bundle)?;
    let data = ctx.repo.get(&path).await?;
    blocking(move || {
        if hex::encode(Sha256::digest(&data)) != bundle {
            return Err(Error::corrupt(
                &path,
                None,
                "bundle SHA-256 differs from its name",
            ));
        }
        let (mut written, mut bytes) = (0, 0);
        for (f, dest) in todo {
            let Content::Bundled { offset, sha256, .. } = &f.content else {
                continue;
            };
            let start = usize::try_from(*offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(usize::try_from(f.size).unwrap_or(usize::MAX));
            let slice = data.get(start..end).ok_or_else(|| {
                Error::corrupt(
                    &path,
                    None,
                    format!("{} lies beyond the bundle's end", f.path),
                )
            })?;
            if crc32c::crc32c(slice) != f.crc32c || &hex::encode(Sha256::digest(slice)) != sha256 {
                return Err(Error::corrupt(
                    &path,
                    None,
                    format!("{}: checksum differs", f.path),
                ));
            }
            write_file(&dest, f.mode, &[data.slice(start..end)])?;
            written += 1;
            bytes += f.size;
        }
        Ok((written, unchanged, bytes))
    })
    .await
}

fn quote_conf(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// The lines appended to `postgresql.auto.conf`.
pub fn recovery_settings(opts: &RestoreOptions) -> Vec<(String, String)> {
    let mut s = Vec::new();
    if let Some(rc) = &opts.restore_command {
        s.push(("restore_command".into(), rc.clone()));
    }
    match &opts.target {
        RecoveryTarget::EndOfWal => {}
        RecoveryTarget::Immediate => s.push(("recovery_target".into(), "immediate".into())),
        RecoveryTarget::Time { text, .. } => s.push(("recovery_target_time".into(), text.clone())),
        RecoveryTarget::Lsn(l) => s.push(("recovery_target_lsn".into(), l.to_string())),
        RecoveryTarget::Xid(x) => s.push(("recovery_target_xid".into(), x.to_string())),
        RecoveryTarget::Name(n) => s.push(("recovery_target_name".into(), n.clone())),
    }
    if opts.target != RecoveryTarget::EndOfWal {
        if let Some(a) = opts.action {
            s.push(("recovery_target_action".into(), a.as_str().into()));
        }
    }
    s.extend(opts.extra_settings.iter().cloned());
    s
}

/// Restores a backup from `repo` as `opts` says, each tablespace to its original location.
pub async fn restore(repo: &Repo, opts: &RestoreOptions) -> Result<RestoreReport> {
    restore_with_tablespaces(repo, opts, &[]).await
}

/// One tablespace relocation: the tablespace named by `from` (its OID, or its original
/// location as recorded in the backup) is restored to `to` (an absolute directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablespaceRelocation {
    /// The OID (decimal) or the original absolute location.
    pub from: String,
    /// The new location.
    pub to: PathBuf,
}

impl std::str::FromStr for TablespaceRelocation {
    type Err = Error;

    /// Parses `FROM=TO` (`16385=/new/dir` or `/old/dir=/new/dir`).
    fn from_str(s: &str) -> Result<Self> {
        let (from, to) = s.split_once('=').ok_or_else(|| {
            Error::invalid(
                "tablespace relocation",
                s,
                "expected OLD=NEW (OID or directory)",
            )
        })?;
        if from.is_empty() || to.is_empty() {
            return Err(Error::invalid(
                "tablespace relocation",
                s,
                "expected OLD=NEW (OID or directory)",
            ));
        }
        Ok(TablespaceRelocation {
            from: from.trim_end_matches('/').to_string(),
            to: PathBuf::from(to),
        })
    }
}

/// `tablespace_map` as PostgreSQL 15 writes it: `OID PATH` per line, with `\`, `\n` and
/// `\r` in the path escaped by a backslash.
fn tablespace_map_text(entries: &[(u32, &Path)]) -> Result<String> {
    let mut out = String::new();
    for (oid, p) in entries {
        let p = p.to_str().ok_or_else(|| {
            Error::invalid("tablespace location", p.display().to_string(), "not UTF-8")
        })?;
        out.push_str(&oid.to_string());
        out.push(' ');
        for c in p.chars() {
            if matches!(c, '\\' | '\n' | '\r') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('\n');
    }
    Ok(out)
}

/// Restores a backup from `repo` as `opts` says, moving the tablespaces `relocate` names
/// to their new locations: the links under `pg_tblspc` point there, and the backup's
/// `tablespace_map` (which PostgreSQL applies when it starts from the backup, re-creating
/// those links) is rewritten to name them too. A relocation that matches no tablespace of
/// the backup is an error.
pub async fn restore_with_tablespaces(
    repo: &Repo,
    opts: &RestoreOptions,
    relocate: &[TablespaceRelocation],
) -> Result<RestoreReport> {
    let records = repo.load_all().await?;
    let rec = select_backup(&records, opts.backup, &opts.target)?.clone();
    drop(records);
    rec.validate()?;
    let root = opts.target_dir.clone();
    if !is_empty_dir(&root)? && !opts.delta {
        return Err(Error::invalid(
            "restore target",
            root.display().to_string(),
            "is not empty (use --delta to restore over it)",
        ));
    }
    if root.join("postmaster.pid").exists() {
        return Err(Error::invalid(
            "restore target",
            root.display().to_string(),
            "holds postmaster.pid: stop the server first",
        ));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .map_err(|e| io_err("creating", &root, e))?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io_err("chmod", &root, e))?;
    let root = root
        .canonicalize()
        .map_err(|e| io_err("resolving", &root, e))?;

    for r in relocate {
        let known = rec
            .tablespaces
            .iter()
            .any(|t| t.oid.to_string() == r.from || t.location.trim_end_matches('/') == r.from);
        if !known {
            return Err(Error::invalid(
                "tablespace relocation",
                r.from.clone(),
                format!(
                    "backup {} has no tablespace with this OID or location",
                    rec.id
                ),
            ));
        }
    }
    let mut tablespaces = HashMap::new();
    let mut relocated = false;
    for t in &rec.tablespaces {
        let moved = relocate
            .iter()
            .find(|r| t.oid.to_string() == r.from || t.location.trim_end_matches('/') == r.from);
        relocated |= moved.is_some();
        let loc = moved
            .map(|r| r.to.clone())
            .unwrap_or_else(|| PathBuf::from(&t.location));
        let shown = loc.display().to_string();
        if !loc.is_absolute() || loc.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(Error::invalid(
                "tablespace location",
                shown,
                "not a plain absolute path",
            ));
        }
        if loc.starts_with(&root) || root.starts_with(&loc) {
            return Err(Error::invalid(
                "tablespace location",
                shown,
                "overlaps the target data directory",
            ));
        }
        if tablespaces
            .values()
            .any(|o: &PathBuf| o.starts_with(&loc) || loc.starts_with(o))
        {
            return Err(Error::invalid(
                "tablespace location",
                shown,
                "overlaps another tablespace's location",
            ));
        }
        if !is_empty_dir(&loc)? && !opts.delta {
            return Err(Error::invalid("tablespace location", shown, "is not empty"));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&loc)
            .map_err(|e| io_err("creating", &loc, e))?;
        tablespaces.insert(t.oid, loc);
    }
    let ctx = Arc::new(Ctx {
        repo: repo.clone(),
        root: root.clone(),
        tablespaces,
        delta: opts.delta,
    });

    // Validate everything, and symlinks only where tablespaces live, before writing.
    let links: HashSet<String> = rec
        .tablespaces
        .iter()
        .map(|t| format!("pg_tblspc/{}", t.oid))
        .collect();
    for f in &rec.files {
        validate_relative_path(&f.path)?;
        if f.kind == FileKind::Symlink && !links.contains(&f.path) {
            return Err(Error::invalid(
                "path in backup",
                f.path.clone(),
                "symlink outside pg_tblspc",
            ));
        }
        if f.kind != FileKind::Symlink {
            if let Some(l) = links.iter().find(|l| f.path == **l) {
                return Err(Error::invalid(
                    "path in backup",
                    l.clone(),
                    "tablespace link is not a symlink",
                ));
            }
        }
    }

    // Directories, then tablespace links.
    let mut dirs: Vec<&FileRecord> = rec
        .files
        .iter()
        .filter(|f| f.kind == FileKind::Dir)
        .collect();
    dirs.sort_by(|a, b| a.path.cmp(&b.path));
    for d in dirs {
        let p = ctx.dest(d)?;
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                if opts.delta {
                    std::fs::remove_file(&p).map_err(|e| io_err("removing", &p, e))?;
                } else {
                    return Err(Error::invalid(
                        "restore destination",
                        p.display().to_string(),
                        "exists",
                    ));
                }
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&p)
                    .map_err(|e| io_err("creating", &p, e))?;
            }
            Err(_) => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(|e| io_err("creating", &p, e))?,
        }
        std::fs::set_permissions(
            &p,
            std::fs::Permissions::from_mode((d.mode & 0o777) | 0o700),
        )
        .map_err(|e| io_err("chmod", &p, e))?;
    }
    for t in &rec.tablespaces {
        let link = root.join(format!("pg_tblspc/{}", t.oid));
        if let Some(parent) = link.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| io_err("creating", parent, e))?;
        }
        if std::fs::symlink_metadata(&link).is_ok() {
            std::fs::remove_file(&link).map_err(|e| io_err("removing", &link, e))?;
        }
        let loc = ctx
            .tablespaces
            .get(&t.oid)
            .ok_or_else(|| Error::invalid_input("tablespace state"))?;
        std::os::unix::fs::symlink(loc, &link).map_err(|e| io_err("linking", &link, e))?;
    }

    // Files: one job per chunked file, one per bundle.
    let mut bundles: BTreeMap<String, Vec<FileRecord>> = BTreeMap::new();
    let mut chunked = Vec::new();
    let mut empty = Vec::new();
    for f in rec.files.iter().filter(|f| f.kind == FileKind::File) {
        match &f.content {
            Content::Bundled { bundle, .. } => {
                bundles.entry(bundle.clone()).or_default().push(f.clone())
            }
            Content::Chunks { chunks } if !chunks.is_empty() => {
                chunked.push(ChunkedFile::new(f.clone(), chunks.clone()))
            }
            Content::Chunks { .. } | Content::None => empty.push(f.clone()),
        }
    }
    let mut report = RestoreReport {
        backup: Some(rec.id),
        ..Default::default()
    };
    for f in &empty {
        if f.size != 0 {
            return Err(Error::corrupt(
                &f.path,
                None,
                "file has a size but no content",
            ));
        }
        let d = ctx.dest(f)?;
        if ctx.unchanged(f, &d) {
            report.files_unchanged += 1;
        } else {
            write_file(&d, f.mode, &[])?;
            report.files_written += 1;
        }
    }
    let conc = opts.concurrency.max(1);
    let results: Vec<(u64, u64, u64)> = stream::iter(
        bundles
            .into_iter()
            .map(|(b, fs)| {
                let ctx = ctx.clone();
                futures::future::Either::Left(async move { restore_bundle(ctx, b, fs).await })
            })
            .chain(chunked.into_iter().flat_map(|f| {
                let n = f.chunks.len();
                let f = Arc::new(f);
                let ctx = ctx.clone();
                (0..n).map(move |i| {
                    futures::future::Either::Right(restore_chunk(ctx.clone(), f.clone(), i))
                })
            })),
    )
    .buffer_unordered(conc)
    .try_collect()
    .await?;
    for (w, u, b) in results {
        report.files_written += w;
        report.files_unchanged += u;
        report.bytes_written += b;
    }

    if opts.delta {
        let keep: HashSet<PathBuf> = rec
            .files
            .iter()
            .filter_map(|f| destination(&root, &f.path, &ctx.tablespaces).ok())
            .collect();
        report.files_removed = remove_extra(&root, &keep)?;
        for loc in ctx.tablespaces.values() {
            report.files_removed += remove_extra(loc, &keep)?;
        }
    }

    // PostgreSQL re-creates the pg_tblspc links from tablespace_map when it starts from the
    // backup: it must name the new locations.
    let map_file = root.join("tablespace_map");
    if relocated && rec.files.iter().any(|f| f.path == "tablespace_map") {
        let mut entries: Vec<(u32, &Path)> = ctx
            .tablespaces
            .iter()
            .map(|(oid, p)| (*oid, p.as_path()))
            .collect();
        entries.sort();
        let text = tablespace_map_text(&entries)?;
        write_file(&map_file, 0o600, &[Bytes::from(text)])?;
    }

    // Recovery configuration.
    let auto = root.join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto).unwrap_or_default();
    let settings = recovery_settings(opts);
    if !settings.is_empty() {
        conf.push_str(&format!(
            "\n# Recovery settings written by carta-dr restore of backup {}\n",
            rec.id
        ));
        for (k, v) in settings {
            conf.push_str(&format!("{k} = {}\n", quote_conf(&v)));
        }
    }
    write_file(&auto, 0o600, &[Bytes::from(conf)])?;
    let signal = root.join(if opts.standby {
        "standby.signal"
    } else {
        "recovery.signal"
    });
    write_file(&signal, 0o600, &[])?;
    let other = root.join(if opts.standby {
        "recovery.signal"
    } else {
        "standby.signal"
    });
    let _ = std::fs::remove_file(other);
    sync_fs(&root)?;
    for loc in ctx.tablespaces.values() {
        sync_fs(loc)?;
    }
    tracing::info!(backup = %rec.id, written = report.files_written, unchanged = report.files_unchanged,
        removed = report.files_removed, at = time_to_secs(std::time::SystemTime::now()), "restore complete");
    Ok(report)
}

/// Removes files under `dir` that are not in `keep` (not following symlinks).
fn remove_extra(dir: &Path, keep: &HashSet<PathBuf>) -> Result<u64> {
    let mut n = 0;
    let rd = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("reading", dir, e)),
    };
    for e in rd {
        let e = e.map_err(|e| io_err("reading", dir, e))?;
        let p = e.path();
        let ft = e.file_type().map_err(|e| io_err("stat", &p, e))?;
        if ft.is_dir() {
            n += remove_extra(&p, keep)?;
            if !keep.contains(&p) && is_empty_dir(&p)? {
                std::fs::remove_dir(&p).map_err(|e| io_err("removing", &p, e))?;
                n += 1;
            }
        } else if !keep.contains(&p) {
            std::fs::remove_file(&p).map_err(|e| io_err("removing", &p, e))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Flushes the whole file system holding `dir` (`syncfs(2)`): one call instead of an fsync per
/// file, as `initdb --sync-method=syncfs` does.
fn sync_fs(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir).map_err(|e| io_err("opening", dir, e))?;
    // SAFETY: the descriptor is valid for the duration of the call.
    let r = unsafe { libc::syncfs(f.as_raw_fd()) };
    if r != 0 {
        return Err(io_err("syncing", dir, std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_stay_inside() {
        let root = Path::new("/r");
        let ts: HashMap<u32, PathBuf> = [(16384, PathBuf::from("/ts"))].into();
        assert_eq!(
            destination(root, "base/1/2", &ts).unwrap(),
            Path::new("/r/base/1/2")
        );
        assert_eq!(
            destination(root, "pg_tblspc/16384/PG_15_1/5/1", &ts).unwrap(),
            Path::new("/ts/PG_15_1/5/1")
        );
        assert!(destination(root, "pg_tblspc/99/x", &ts).is_err());
        assert!(destination(root, "../etc/passwd", &ts).is_err());
        assert!(destination(root, "/etc/passwd", &ts).is_err());
    }

    #[test]
    fn tablespace_relocations_and_map() {
        let r: TablespaceRelocation = "16385=/new/ts".parse().unwrap();
        assert_eq!(r.from, "16385");
        assert_eq!(r.to, Path::new("/new/ts"));
        let r: TablespaceRelocation = "/old/ts/=/new/ts".parse().unwrap();
        assert_eq!(r.from, "/old/ts");
        assert!("nothing".parse::<TablespaceRelocation>().is_err());
        assert!("=/x".parse::<TablespaceRelocation>().is_err());
        let text = tablespace_map_text(&[
            (16385, Path::new("/a/b")),
            (16386, Path::new("/odd\\name\nx")),
        ])
        .unwrap();
        assert_eq!(text, "16385 /a/b\n16386 /odd\\\\name\\\nx\n");
    }

    #[test]
    fn settings_are_quoted() {
        let o = RestoreOptions {
            target_dir: "/x".into(),
            backup: BackupSelector::Latest,
            target: RecoveryTarget::Name("it's".into()),
            action: Some(TargetAction::Promote),
            standby: false,
            delta: false,
            restore_command: Some("/bin/carta-dr wal-fetch %f %p".into()),
            extra_settings: vec![],
            concurrency: 2,
        };
        let s = recovery_settings(&o);
        assert_eq!(s[1], ("recovery_target_name".into(), "it's".into()));
        assert_eq!(quote_conf("it's"), "'it''s'");
        assert_eq!(s[2].1, "promote");
    }
}
