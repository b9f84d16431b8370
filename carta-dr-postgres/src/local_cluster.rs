//! Throwaway local PostgreSQL clusters, as product code: the drills build one to practise on
//! (`carta-dr drill restore` with no target) and start restored data directories beside the
//! real server.
//!
//! * [`PgInstall`]: where the server binaries are (`--pg-bin`, else `pg_config --bindir`, else
//!   [`DEBIAN_PG15_BIN`]) and which OS user runs them. PostgreSQL refuses to run as root, so
//!   when this process is root the programs run as an unprivileged user (`postgres` unless
//!   another is named); otherwise as this process's user.
//! * [`ScratchArea`]: a private temporary directory that user owns, removed on drop.
//! * [`LocalCluster`]: one data directory and its postmaster: `initdb`, start on a free
//!   loopback port, fast stop, crash (`SIGKILL` of the whole process tree), connect.
//!
//! A started cluster is killed when its [`LocalCluster`] is dropped, so an error or a
//! cancelled task never leaves a server behind. The postmaster runs in its own process group,
//! so a Ctrl-C at the terminal reaches carta-dr, which then cleans up, not the server directly.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use carta_dr_core::{Error, Result};

/// Where Debian's `postgresql-15` package puts the server binaries.
pub const DEBIAN_PG15_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The user PostgreSQL runs as when carta-dr runs as root and none is named.
pub const DEFAULT_RUN_AS: &str = "postgres";

/// Attempts to start on a fresh port when the chosen one was taken meanwhile.
const BIND_ATTEMPTS: usize = 5;

/// An OS user the PostgreSQL programs run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsUser {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory (`HOME` for the programs).
    pub home: PathBuf,
}

impl OsUser {
    /// Looks a user up by name (`getpwnam_r`).
    pub fn lookup(name: &str) -> Result<OsUser> {
        let cname = CString::new(name)
            .map_err(|_| Error::invalid("OS user", name, "contains a NUL byte"))?;
        let mut buf = vec![0u8; 16 * 1024];
        // SAFETY: passwd is plain old data; getpwnam_r fills it in.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and buf's length is passed.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            return Err(Error::invalid("OS user", name, "no such user"));
        }
        // SAFETY: on success pw_dir points into buf, which is alive and NUL-terminated.
        let home = unsafe { CStr::from_ptr(pwd.pw_dir) };
        Ok(OsUser {
            name: name.to_string(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home: PathBuf::from(OsStr::new(&*home.to_string_lossy())),
        })
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The PostgreSQL server binaries and the OS user that runs them.
#[derive(Clone, Debug)]
pub struct PgInstall {
    /// The bin directory (`initdb`, `postgres`, `pg_ctl`, `pg_amcheck`...).
    pub bin_dir: PathBuf,
    /// Who runs them; `None`: this process's user.
    pub run_as: Option<OsUser>,
}

impl PgInstall {
    /// Finds the binaries: `bin_dir`, else `pg_config --bindir` when it holds `initdb`, else
    /// [`DEBIAN_PG15_BIN`]. As root, the programs run as `run_as` (default
    /// [`DEFAULT_RUN_AS`]); naming a user without being root is an error.
    pub fn discover(bin_dir: Option<&Path>, run_as: Option<&str>) -> Result<PgInstall> {
        let dir = match bin_dir {
            Some(d) => d.to_path_buf(),
            None => Command::new("pg_config")
                .arg("--bindir")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
                .filter(|d| d.join("initdb").is_file())
                .unwrap_or_else(|| PathBuf::from(DEBIAN_PG15_BIN)),
        };
        for prog in ["initdb", "postgres"] {
            if !dir.join(prog).is_file() {
                return Err(Error::invalid_input(format!(
                    "PostgreSQL server binaries not found: no {prog} in {} (install \
                     postgresql-15, or give --pg-bin DIR)",
                    dir.display()
                )));
            }
        }
        let run_as = if is_root() {
            let name = run_as.unwrap_or(DEFAULT_RUN_AS);
            Some(OsUser::lookup(name).map_err(|_| {
                Error::invalid_input(format!(
                    "running as root, and PostgreSQL refuses to run as root; the OS user \
                     `{name}` to run it as does not exist: create it (useradd --system {name}) \
                     or name another with --run-as"
                ))
            })?)
        } else if let Some(name) = run_as {
            return Err(Error::invalid(
                "OS user",
                name,
                "running PostgreSQL as another user needs root",
            ));
        } else {
            None
        };
        Ok(PgInstall {
            bin_dir: dir,
            run_as,
        })
    }

    /// A command for `program`, a binary of [`PgInstall::bin_dir`] or else any program from
    /// `PATH`, run as [`PgInstall::run_as`].
    pub fn command(&self, program: &str) -> Command {
        let in_dir = self.bin_dir.join(program);
        let mut cmd = if in_dir.is_file() {
            Command::new(in_dir)
        } else {
            Command::new(program)
        };
        self.apply_user(&mut cmd);
        cmd
    }

    /// Whether `program` exists in [`PgInstall::bin_dir`].
    pub fn has(&self, program: &str) -> bool {
        self.bin_dir.join(program).is_file()
    }

    /// Makes `cmd` run as [`PgInstall::run_as`] (supplementary groups dropped, `setgid`,
    /// `setuid` before exec; `HOME`, `USER`, `LOGNAME` set; working directory `/` unless set).
    pub fn apply_user(&self, cmd: &mut Command) {
        let Some(user) = &self.run_as else {
            return;
        };
        cmd.env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
        if cmd.get_current_dir().is_none() {
            cmd.current_dir("/");
        }
        let (uid, gid) = (user.uid, user.gid);
        // SAFETY: the closure only makes async-signal-safe syscalls and does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Hands `path` to [`PgInstall::run_as`] (no-op without one).
    pub fn give(&self, path: &Path) -> Result<()> {
        match &self.run_as {
            Some(u) => std::os::unix::fs::lchown(path, Some(u.uid), Some(u.gid))
                .map_err(|e| Error::io(format!("chown {} to {}", path.display(), u.name), e)),
            None => Ok(()),
        }
    }

    /// Hands `path` and everything below it to [`PgInstall::run_as`] (symlinks themselves,
    /// never their targets).
    pub fn give_tree(&self, path: &Path) -> Result<()> {
        if self.run_as.is_none() {
            return Ok(());
        }
        self.give(path)?;
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            for e in entries {
                let e = e.map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                self.give_tree(&e.path())?;
            }
        }
        Ok(())
    }

    /// Runs `cmd` off the async runtime; a failure to start is an error, a non-zero exit is
    /// not (look at `status`).
    pub async fn output(&self, mut cmd: Command, what: &str) -> Result<Output> {
        let what = what.to_string();
        tokio::task::spawn_blocking(move || {
            cmd.output()
                .map_err(|e| Error::io(format!("running {what} ({:?})", cmd.get_program()), e))
        })
        .await
        .map_err(|e| Error::invalid_input(format!("running a command: {e}")))?
    }

    /// Like [`PgInstall::output`], but a non-zero exit is an error carrying the output.
    pub async fn run_checked(&self, cmd: Command, what: &str) -> Result<Output> {
        let out = self.output(cmd, what).await?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(Error::invalid_input(format!(
                "{what} failed ({}): {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            )))
        }
    }
}

/// A private temporary directory (mode 0700) owned by the user PostgreSQL runs as, removed
/// with everything in it on drop unless [`ScratchArea::keep`] was called.
#[derive(Debug)]
pub struct ScratchArea {
    path: PathBuf,
    keep: bool,
}

impl ScratchArea {
    /// Creates `carta-dr-<label>-<unique>` under `parent`, or under `/tmp` when root (its
    /// parents must be traversable by the unprivileged user) or the usual temp dir otherwise.
    pub fn create(install: &PgInstall, label: &str, parent: Option<&Path>) -> Result<ScratchArea> {
        let root = match parent {
            Some(p) => p.to_path_buf(),
            None if is_root() => PathBuf::from("/tmp"),
            None => std::env::temp_dir(),
        };
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(24)
            .collect();
        let path = root.join(format!("carta-dr-{label}-{}", unique_suffix()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let area = ScratchArea { path, keep: false };
        std::fs::set_permissions(&area.path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("chmod {}", area.path.display()), e))?;
        install.give(&area.path)?;
        Ok(area)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates `name` below the area (mode 0700, owned by the PostgreSQL user).
    pub fn subdir(&self, install: &PgInstall, name: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&p)
            .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        install.give(&p)?;
        Ok(p)
    }

    /// Leaves the directory on disk after drop.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for ScratchArea {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove scratch dir");
            }
        }
    }
}

fn unique_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{}-{n}-{:06x}", std::process::id(), h.finish() & 0xff_ffff)
}

/// A free loopback TCP port (bind `127.0.0.1:0`, read it, release it). Another program may
/// take it before the server binds; [`LocalCluster::start`] retries on a fresh one.
pub fn free_port() -> Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::io("binding a loopback TCP socket to find a free port", e))
}

/// Options for [`LocalCluster::init`].
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// `initdb --data-checksums`.
    pub data_checksums: bool,
    /// `key = value` lines appended to `postgresql.conf` (values are quoted for you).
    pub settings: Vec<(String, String)>,
}

/// The fields of `postmaster.pid` read here (layout: `src/include/utils/pidfile.h`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PidFile {
    /// Line 1: the postmaster's pid.
    pub pid: u32,
    /// Line 8 (`LOCK_FILE_LINE_PM_STATUS`): `starting`, `stopping`, `ready` or `standby`.
    pub status: String,
}

/// Reads `DATADIR/postmaster.pid`; `None` when absent or unreadable.
pub fn read_pid_file(data_dir: &Path) -> Option<PidFile> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let status = lines
        .nth(6)
        .map(|l| l.trim().to_string())
        .unwrap_or_default();
    Some(PidFile { pid, status })
}

/// One data directory and, once started, its postmaster on `127.0.0.1`.
///
/// The port, socket directory and `listen_addresses` are passed on the `postgres` command
/// line, so any data directory (a fresh `initdb`, a restored backup carrying another server's
/// `postgresql.conf`) starts beside other servers without editing its configuration.
#[derive(Debug)]
pub struct LocalCluster {
    install: PgInstall,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    overrides: Vec<(String, String)>,
    postmaster: Option<Child>,
}

impl LocalCluster {
    /// Runs `initdb` (superuser `postgres`, trust authentication for local and loopback
    /// connections, replication included, UTF8, locale C) into `data_dir`, which must not
    /// exist or be empty, and appends `opts.settings` to `postgresql.conf`. The server log
    /// and the Unix socket go to `socket_dir`. Not started.
    pub async fn init(
        install: &PgInstall,
        data_dir: &Path,
        socket_dir: &Path,
        opts: &InitOptions,
    ) -> Result<LocalCluster> {
        let mut cmd = install.command("initdb");
        cmd.arg("-D").arg(data_dir).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        if opts.data_checksums {
            cmd.arg("--data-checksums");
        }
        install.run_checked(cmd, "initdb").await?;
        let mut conf = String::from("\n# carta-dr local cluster\n");
        for (k, v) in &opts.settings {
            conf.push_str(&format!("{k} = {}\n", conf_quote(v)));
        }
        append(&data_dir.join("postgresql.conf"), &conf)?;
        Ok(Self::existing(install, data_dir, socket_dir))
    }

    /// A cluster over an existing data directory (for example one just restored); its log
    /// and socket go to `socket_dir`. Not started.
    pub fn existing(install: &PgInstall, data_dir: &Path, socket_dir: &Path) -> LocalCluster {
        LocalCluster {
            install: install.clone(),
            data_dir: data_dir.to_path_buf(),
            socket_dir: socket_dir.to_path_buf(),
            log_path: socket_dir.join(format!(
                "{}.log",
                data_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "postgres".into())
            )),
            port: 0,
            overrides: Vec::new(),
            postmaster: None,
        }
    }

    /// Adds a `-c key=value` to the `postgres` command line of the next start (overrides the
    /// configuration files).
    pub fn set(&mut self, key: &str, value: &str) {
        self.overrides.push((key.to_string(), value.to_string()));
    }

    /// The installation this cluster runs from.
    pub fn install(&self) -> &PgInstall {
        &self.install
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The TCP port (0 before the first start).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's pid while this process runs it.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.as_ref().map(|c| c.id())
    }

    /// A connection string: `host=127.0.0.1 port=P user=postgres dbname=DB`.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// Connects with `tokio-postgres` (the connection task is spawned on the runtime).
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        connect(&self.conninfo(db)).await
    }

    /// The log written since byte `from`.
    pub fn log_since(&self, from: u64) -> String {
        let mut buf = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            if f.seek(SeekFrom::Start(from)).is_ok() {
                let _ = f.read_to_end(&mut buf);
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The log's current length.
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log_path)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_since(0);
        let all: Vec<&str> = text.lines().collect();
        all.get(all.len().saturating_sub(lines)..)
            .map(|l| l.join("\n"))
            .unwrap_or_default()
    }

    /// `unix_socket_directories` for the server: the socket directory, or none (TCP on
    /// loopback only) when the socket's path would exceed the kernel's limit of 107 bytes.
    fn socket_setting(&self) -> String {
        let dir = self.socket_dir.display().to_string();
        if dir.len() + format!("/.s.PGSQL.{}", self.port).len() > 107 {
            tracing::debug!(dir, "socket path too long: TCP only");
            String::new()
        } else {
            dir
        }
    }

    /// Launches the postmaster on a free port without waiting; see [`LocalCluster::wait`].
    pub fn launch(&mut self) -> Result<()> {
        if self.running() {
            return Err(Error::invalid(
                "cluster",
                self.data_dir.display().to_string(),
                "is already running",
            ));
        }
        if let Some(pf) = read_pid_file(&self.data_dir) {
            if process_alive(pf.pid) {
                return Err(Error::invalid(
                    "cluster",
                    self.data_dir.display().to_string(),
                    format!("a postmaster (pid {}) already runs on it", pf.pid),
                ));
            }
            let _ = std::fs::remove_file(self.data_dir.join("postmaster.pid"));
        }
        self.port = free_port()?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| Error::io(format!("opening {}", self.log_path.display()), e))?;
        self.install.give(&self.log_path)?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io("duplicating the log descriptor", e))?;
        let mut cmd = self.install.command("postgres");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-c")
            .arg(format!("port={}", self.port))
            .arg("-c")
            .arg("listen_addresses=127.0.0.1")
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.socket_setting()));
        for (k, v) in &self.overrides {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        let child = cmd.spawn().map_err(|e| {
            Error::io(
                format!("starting postgres on {}", self.data_dir.display()),
                e,
            )
        })?;
        self.postmaster = Some(child);
        Ok(())
    }

    /// Waits until the postmaster reports one of `statuses` (`ready`: accepts writes;
    /// `standby`: read-only during recovery) in `postmaster.pid`. Returns an error with the
    /// log's tail when it exits or `timeout` passes.
    pub async fn wait(&mut self, statuses: &[&str], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(child) = self.postmaster.as_mut() else {
                return Err(Error::invalid_input("the cluster was not started"));
            };
            let pid = child.id();
            if let Ok(Some(status)) = child.try_wait() {
                self.postmaster = None;
                return Err(Error::invalid_input(format!(
                    "postgres on {} exited ({status}); server log {}:\n{}",
                    self.data_dir.display(),
                    self.log_path.display(),
                    self.log_tail(30)
                )));
            }
            if matches!(read_pid_file(&self.data_dir), Some(pf) if pf.pid == pid
                && statuses.contains(&pf.status.as_str()))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "postgres on {} did not reach {statuses:?} within {timeout:?}; log:\n{}",
                        self.data_dir.display(),
                        self.log_tail(30)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the server and waits until it accepts connections (`ready` or `standby`),
    /// retrying on a fresh port when the chosen one was taken meanwhile.
    pub async fn start(&mut self, timeout: Duration) -> Result<()> {
        for attempt in 1..=BIND_ATTEMPTS {
            let log_start = self.log_len();
            self.launch()?;
            match self.wait(&["ready", "standby"], timeout).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let text = self.log_since(log_start);
                    let taken = text.contains("could not bind")
                        || text.contains("Address already in use")
                        || text.contains("could not create any TCP/IP sockets");
                    self.kill();
                    if !(taken && attempt < BIND_ATTEMPTS) {
                        return Err(e);
                    }
                }
            }
        }
        Err(Error::invalid_input("postgres could not bind a port"))
    }

    /// Whether this process's postmaster is still alive.
    pub fn running(&mut self) -> bool {
        match self.postmaster.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Fast shutdown (`SIGINT`: roll back sessions, checkpoint, exit); after `timeout`, a
    /// crash-style kill. Does nothing when not running.
    pub async fn stop(&mut self, timeout: Duration) -> Result<()> {
        let Some(child) = self.postmaster.as_mut() else {
            return Ok(());
        };
        signal(child.id(), libc::SIGINT);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                self.postmaster = None;
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(Error::Timeout {
                    what: format!(
                        "postgres on {} did not stop within {timeout:?}; killed",
                        self.data_dir.display()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Crashes the server the way a power cut does: `SIGSTOP` on the postmaster and every
    /// descendant (so none can react), then `SIGKILL` on all, then reaps the postmaster.
    /// Returns the pids signalled (empty when not running).
    pub fn kill(&mut self) -> Vec<u32> {
        let Some(mut child) = self.postmaster.take() else {
            return Vec::new();
        };
        let pids = kill_tree(child.id());
        let _ = child.wait();
        pids
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.postmaster.is_some() {
            tracing::debug!(data_dir = %self.data_dir.display(), "killing a cluster left running");
            self.kill();
        }
    }
}

/// Connects to `conninfo` with `tokio-postgres` without TLS; the connection task is spawned.
pub async fn connect(conninfo: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .map_err(|e| Error::Unavailable {
            what: format!("connecting to PostgreSQL ({}): {e}", redact(conninfo)),
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// `conninfo` with any `password=...` value hidden.
pub fn redact(conninfo: &str) -> String {
    conninfo
        .split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes a value for `postgresql.conf`.
pub fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| Error::io(format!("appending to {}", path.display()), e))
}

/// Whether `pid` is alive and not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_state(&stat), Some('Z') | Some('X') | None),
        Err(_) => false,
    }
}

fn after_comm(stat: &str) -> Option<&str> {
    stat.rfind(')').and_then(|i| stat.get(i + 1..))
}

fn stat_state(stat: &str) -> Option<char> {
    after_comm(stat)?.trim_start().chars().next()
}

fn stat_ppid(stat: &str) -> Option<u32> {
    after_comm(stat)?.split_whitespace().nth(1)?.parse().ok()
}

fn process_children() -> HashMap<u32, Vec<u32>> {
    let mut map: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                if let Some(ppid) = stat_ppid(&stat) {
                    map.entry(ppid).or_default().push(pid);
                }
            }
        }
    }
    map
}

fn signal(pid: u32, sig: i32) {
    if let Ok(p) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(p, sig) };
    }
}

/// `SIGSTOP`s `root` and its descendants until no new ones appear, then `SIGKILL`s them all.
/// Returns every pid signalled.
pub fn kill_tree(root: u32) -> Vec<u32> {
    signal(root, libc::SIGSTOP);
    let mut all: HashSet<u32> = HashSet::from([root]);
    loop {
        let children = process_children();
        let mut fresh = Vec::new();
        let mut stack = vec![root];
        while let Some(p) = stack.pop() {
            for c in children.get(&p).into_iter().flatten() {
                stack.push(*c);
                if all.insert(*c) {
                    fresh.push(*c);
                }
            }
        }
        if fresh.is_empty() {
            break;
        }
        for p in fresh {
            signal(p, libc::SIGSTOP);
        }
    }
    signal(root, libc::SIGKILL);
    for p in &all {
        signal(*p, libc::SIGKILL);
    }
    all.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_handles_odd_comm() {
        let stat = "123 (postgres: x (y)) S 77 123 123 0";
        assert_eq!(stat_state(stat), Some('S'));
        assert_eq!(stat_ppid(stat), Some(77));
        assert_eq!(stat_state("garbage"), None);
    }

    #[test]
    fn redaction_hides_passwords() {
        assert_eq!(
            redact("host=h password=secret user=u"),
            "host=h password=*** user=u"
        );
    }

    #[test]
    fn conf_values_are_quoted() {
        assert_eq!(conf_quote("it's"), "'it''s'");
    }
}
