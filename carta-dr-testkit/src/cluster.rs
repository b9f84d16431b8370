//! Throwaway PostgreSQL clusters: initdb, start, stop, kill -9, standbys.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::port::{reserve_port, ReservedPort};
use crate::user::{as_test_user, give_to_test_user, scratch_dir, ScratchDir};
use crate::wait::poll_until;

/// How long `start` waits for the server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a standby may take to start streaming.
const STREAM_TIMEOUT: Duration = Duration::from_secs(120);
/// Attempts to start on a fresh port when the chosen one was taken meanwhile.
const BIND_ATTEMPTS: usize = 6;

/// The PostgreSQL bin directory: `$CARTA_DR_PG_BIN`, else `pg_config --bindir` when that holds
/// `initdb`, else `/usr/lib/postgresql/15/bin`.
///
/// # Panics
///
/// When `initdb` is not in the chosen directory, with a message saying to install PostgreSQL 15.
pub fn pg_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = if let Some(d) = std::env::var_os("CARTA_DR_PG_BIN") {
            PathBuf::from(d)
        } else {
            let from_pg_config = Command::new("pg_config")
                .arg("--bindir")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
                .filter(|d| d.join("initdb").is_file());
            from_pg_config.unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
        };
        if !dir.join("initdb").is_file() {
            panic!(
                "PostgreSQL server binaries not found: no initdb in {} — install postgresql-15 \
                 (apt-get install postgresql-15), or set CARTA_DR_PG_BIN to its bin directory, \
                 or run the test command scripts/test.sh, which installs it",
                dir.display()
            );
        }
        dir
    })
    .clone()
}

/// Single-quotes a postgresql.conf value (PostgreSQL accepts every setting quoted), unless the
/// caller already quoted it.
fn conf_value(value: &str) -> String {
    if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

/// Configures a [`PgCluster`] before `initdb`.
///
/// Defaults: `listen_addresses = '127.0.0.1'`, a free port, `unix_socket_directories` = the
/// cluster's own directory, `wal_level = replica`, `max_wal_senders = 10`,
/// `max_replication_slots = 10`, trust authentication for local and 127.0.0.1 connections
/// (replication too), superuser `postgres`, encoding UTF8, locale C. `fsync` stays on.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PgClusterBuilder {
    label: Option<String>,
    conf: Vec<(String, String)>,
    data_checksums: bool,
    wal_segsize_mb: Option<u32>,
    initdb_args: Vec<String>,
}

impl PgClusterBuilder {
    /// A name part for the cluster's scratch directory (default `pg`).
    pub fn label(mut self, label: &str) -> Self {
        self.label = Some(label.to_string());
        self
    }

    /// Adds `key = value` to postgresql.conf. Values are single-quoted for you
    /// (`.conf("archive_command", "cp %p /a/%f")` works); already quoted values are written as
    /// given. Later settings override earlier ones and the defaults.
    pub fn conf(mut self, key: &str, value: &str) -> Self {
        self.conf.push((key.to_string(), value.to_string()));
        self
    }

    /// Enables data page checksums (`initdb --data-checksums`); off by default, as in PostgreSQL.
    pub fn data_checksums(mut self, on: bool) -> Self {
        self.data_checksums = on;
        self
    }

    /// WAL segment size in MiB (`initdb --wal-segsize`); PostgreSQL's default is 16.
    pub fn wal_segsize_mb(mut self, mb: u32) -> Self {
        self.wal_segsize_mb = Some(mb);
        self
    }

    /// Passes an extra argument to `initdb`.
    pub fn initdb_arg(mut self, arg: &str) -> Self {
        self.initdb_args.push(arg.to_string());
        self
    }

    /// Runs `initdb` and writes the configuration; the cluster is not started.
    pub fn init(self) -> PgCluster {
        let label = self.label.as_deref().unwrap_or("pg");
        let dir = scratch_dir(label);
        let data_dir = dir.path().join("data");
        let port = reserve_port();

        let mut initdb = Command::new(pg_bin_dir().join("initdb"));
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            // initdb's own fsync only matters for an OS crash, which tests do not simulate.
            .arg("--no-sync");
        if self.data_checksums {
            initdb.arg("--data-checksums");
        }
        if let Some(mb) = self.wal_segsize_mb {
            initdb.arg(format!("--wal-segsize={mb}"));
        }
        initdb.args(&self.initdb_args);
        as_test_user(&mut initdb);
        run_checked(&mut initdb, "initdb");

        let mut conf = String::from("\n# carta-dr-testkit\n");
        let socket_dir = dir.path().display().to_string();
        let defaults = [
            ("listen_addresses", "127.0.0.1".to_string()),
            ("port", port.port().to_string()),
            ("unix_socket_directories", socket_dir),
            ("wal_level", "replica".to_string()),
            ("max_wal_senders", "10".to_string()),
            ("max_replication_slots", "10".to_string()),
            ("logging_collector", "off".to_string()),
            ("log_line_prefix", "%m [%p] ".to_string()),
        ];
        for (k, v) in defaults.iter().map(|(k, v)| (*k, v.as_str())) {
            conf.push_str(&format!("{k} = {}\n", conf_value(v)));
        }
        for (k, v) in &self.conf {
            conf.push_str(&format!("{k} = {}\n", conf_value(v)));
        }
        append_file(&data_dir.join("postgresql.conf"), &conf);

        PgCluster {
            data_dir,
            port: port.port(),
            _port: port,
            postmaster: Mutex::new(None),
            dir,
        }
    }

    /// [`init`](Self::init) then [`PgCluster::start`].
    pub fn start(self) -> PgCluster {
        let mut c = self.init();
        c.start();
        c
    }
}

/// A PostgreSQL cluster in a scratch directory, run by the test user when the tests run as root.
///
/// Dropping it (also while unwinding from a panic) stops the server with `pg_ctl stop -m
/// immediate`, falling back to SIGKILL, and removes its directory. The server log is
/// `postgres.log` next to the data directory; when a test panics, its tail is printed.
#[derive(Debug)]
pub struct PgCluster {
    data_dir: PathBuf,
    port: u16,
    _port: ReservedPort,
    /// The postmaster, when this process started it.
    postmaster: Mutex<Option<Child>>,
    // Last: dropped after the server is stopped.
    dir: ScratchDir,
}

impl PgCluster {
    /// A builder with the defaults described on [`PgClusterBuilder`].
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder::default()
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The Unix socket directory (the cluster's scratch directory, parent of the data directory).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&std::fs::read(self.log_path()).unwrap_or_default(), lines)
    }

    /// A libpq connection string: `host=127.0.0.1 port=P user=postgres dbname=DB`.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// Runs `sql` through `psql -XAtq -v ON_ERROR_STOP=1` and returns its output without the
    /// trailing newline (rows on lines, columns separated by `|`).
    ///
    /// # Panics
    ///
    /// When psql fails, with its stderr.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql on port {} failed: {e}\nSQL: {sql}", self.port))
    }

    /// Like [`psql`](Self::psql) but returns psql's stderr as the error.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut cmd = self.command("psql");
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
            "-d",
        ])
        .arg(self.conninfo(db))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("cannot run psql: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(sql.as_bytes())
                .map_err(|e| format!("cannot write to psql: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            let s = String::from_utf8_lossy(&out.stdout);
            Ok(s.strip_suffix('\n').unwrap_or(&s).to_string())
        } else {
            Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// A command for `bin` — a PostgreSQL binary (`pgbench`, `pg_basebackup`, `pg_ctl`...) from
    /// [`pg_bin_dir`], or any other program looked up in `PATH` — run as the test user, with
    /// `PGHOST=127.0.0.1`, `PGPORT`, `PGUSER=postgres`, `PGDATABASE=postgres` and `PGDATA` set.
    pub fn command(&self, bin: &str) -> Command {
        let in_pg = pg_bin_dir().join(bin);
        let mut cmd = if in_pg.is_file() {
            Command::new(in_pg)
        } else {
            Command::new(bin)
        };
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", "postgres")
            .env("PGDATA", &self.data_dir);
        as_test_user(&mut cmd);
        cmd
    }

    /// Appends `line` to postgresql.conf; reloading or restarting is the caller's job.
    pub fn append_conf(&self, line: &str) {
        append_file(&self.data_dir.join("postgresql.conf"), &format!("{line}\n"));
    }

    /// Reloads the configuration (`pg_ctl reload`).
    pub fn reload(&self) {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).arg("reload");
        run_checked(&mut cmd, "pg_ctl reload");
    }

    /// Starts the server and waits until it accepts connections (status `ready`, or `standby`
    /// for a hot standby). When the port was taken meanwhile, retries on a fresh one.
    ///
    /// # Panics
    ///
    /// When it is already running or does not come up, with the tail of the server log.
    pub fn start(&mut self) {
        if self.is_running() {
            panic!("cluster on port {} is already running", self.port);
        }
        self.reap();
        // A postmaster.pid left by a crash whose process is gone or a zombie (PID 1 of a
        // container may never reap it) would make postgres refuse to start.
        if read_pid_file(&self.data_dir).is_some_and(|pf| !process_alive(pf.pid)) {
            let _ = std::fs::remove_file(self.data_dir.join("postmaster.pid"));
        }
        for attempt in 1..=BIND_ATTEMPTS {
            let log_path = self.log_path();
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
            give_to_test_user(&log_path);
            let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
            let log_err = log
                .try_clone()
                .unwrap_or_else(|e| panic!("cannot dup log fd: {e}"));
            let mut cmd = Command::new(pg_bin_dir().join("postgres"));
            cmd.arg("-D")
                .arg(&self.data_dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err);
            as_test_user(&mut cmd);
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start postgres: {e}"));
            let pid = child.id();
            let mut exited = None;
            let up = poll_until(START_TIMEOUT, || {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                    return true;
                }
                matches!(read_pid_file(&self.data_dir), Some(pf) if pf.pid == pid
                    && (pf.status == "ready" || pf.status == "standby"))
            });
            if up && exited.is_none() {
                *self.lock_postmaster() = Some(child);
                return;
            }
            let log_text = read_from(&log_path, log_start);
            if exited.is_none() {
                kill_tree(pid);
                let _ = child.wait();
                panic!(
                    "postgres (port {}) did not accept connections within {START_TIMEOUT:?}; \
                     server log:\n{}",
                    self.port,
                    tail(&log_text, 40)
                );
            }
            let text = String::from_utf8_lossy(&log_text);
            let port_taken = text.contains("could not bind")
                || text.contains("Address already in use")
                || text.contains("could not create any TCP/IP sockets");
            if port_taken && attempt < BIND_ATTEMPTS {
                let fresh = reserve_port();
                self.port = fresh.port();
                self._port = fresh;
                self.append_conf(&format!("port = {}", self.port));
                continue;
            }
            panic!(
                "postgres failed to start ({}); server log {}:\n{}",
                exited.map(|s| s.to_string()).unwrap_or_default(),
                log_path.display(),
                tail(&log_text, 40)
            );
        }
    }

    /// Stops the server (`pg_ctl stop -m fast -w`); does nothing when it is not running.
    ///
    /// # Panics
    ///
    /// When pg_ctl fails while the server still runs.
    pub fn stop(&mut self) {
        if !self.is_running() {
            self.reap();
            return;
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "-t", "120", "stop"]);
        let out = cmd.output();
        // pg_ctl reports "server stopped" once postmaster.pid is gone; the postmaster process
        // removes that file on its way out and may live a moment longer. Wait for it to exit.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.is_running() {
            panic!(
                "pg_ctl stop failed ({out:?}); server log:\n{}",
                self.log_tail(40)
            );
        }
        self.reap();
    }

    /// Stops and starts the server.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Simulates a crash: stops the postmaster and every process it started (SIGSTOP so none can
    /// fork or clean up), then SIGKILLs them all and waits until they are gone. `postmaster.pid`
    /// stays behind, as after a real crash; the next [`start`](Self::start) runs crash recovery.
    pub fn kill9(&mut self) {
        let pid = self
            .lock_postmaster()
            .as_ref()
            .map(|c| c.id())
            .or_else(|| read_pid_file(&self.data_dir).map(|p| p.pid));
        if let Some(pid) = pid {
            let all = kill_tree(pid);
            self.reap();
            let gone = poll_until(Duration::from_secs(30), || {
                all.iter().all(|p| !process_alive(*p))
            });
            if !gone {
                panic!(
                    "processes {all:?} of the cluster on port {} survived SIGKILL",
                    self.port
                );
            }
        }
    }

    /// Whether a postmaster is running on this data directory.
    pub fn is_running(&self) -> bool {
        if let Some(child) = self.lock_postmaster().as_mut() {
            if let Ok(None) = child.try_wait() {
                return true;
            }
        }
        read_pid_file(&self.data_dir).is_some_and(|pf| process_alive(pf.pid))
    }

    /// Promotes a standby (`pg_ctl promote -w`) and waits until it leaves recovery.
    pub fn promote(&self) {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "120", "promote"]);
        run_checked(&mut cmd, "pg_ctl promote");
        self.wait_until("promotion to finish", Duration::from_secs(60), || {
            self.try_psql("postgres", "SELECT pg_is_in_recovery()")
                .is_ok_and(|s| s == "f")
        });
    }

    /// Makes a streaming standby of this cluster: `pg_basebackup -R -X stream` (with `-C -S
    /// slot` when a slot name is given) into a new scratch directory, on its own port; starts it
    /// and waits until its WAL receiver is streaming.
    pub fn create_standby(&self, slot: Option<&str>) -> PgCluster {
        let dir = scratch_dir("pg-standby");
        let data_dir = dir.path().join("data");
        let port = reserve_port();
        let mut cmd = self.command("pg_basebackup");
        cmd.arg("-D")
            .arg(&data_dir)
            .args([
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string());
        if let Some(slot) = slot {
            cmd.args(["-C", "-S", slot]);
        }
        run_checked(&mut cmd, "pg_basebackup");
        let mut standby = PgCluster {
            data_dir,
            port: port.port(),
            _port: port,
            postmaster: Mutex::new(None),
            dir,
        };
        standby.append_conf(&format!(
            "\n# carta-dr-testkit standby\nport = {}\nunix_socket_directories = {}\nhot_standby = on",
            standby.port,
            conf_value(&standby.dir.path().display().to_string())
        ));
        standby.start();
        standby.wait_until("the standby to stream WAL", STREAM_TIMEOUT, || {
            standby
                .try_psql(
                    "postgres",
                    "SELECT pg_is_in_recovery() AND EXISTS \
                     (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')",
                )
                .is_ok_and(|s| s == "t")
        });
        standby
    }

    /// Polls `cond` until it is true.
    ///
    /// # Panics
    ///
    /// After `timeout`, with `what` and the tail of the server log.
    pub fn wait_until(&self, what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
        if !poll_until(timeout, cond) {
            panic!(
                "timed out after {timeout:?} waiting for {what} (cluster on port {}); server log:\n{}",
                self.port,
                self.log_tail(30)
            );
        }
    }

    fn lock_postmaster(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.postmaster
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for our postmaster child once it has exited, so it leaves no zombie.
    fn reap(&self) {
        let mut guard = self.lock_postmaster();
        if let Some(child) = guard.as_mut() {
            if !matches!(child.try_wait(), Ok(None)) {
                *guard = None;
            }
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- server log of the cluster on port {} ({}):\n{}",
                self.port,
                self.log_path().display(),
                self.log_tail(30)
            );
        }
        if self.is_running() {
            let mut cmd = self.command("pg_ctl");
            cmd.arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = cmd.status();
            if self.is_running() {
                let pid = self
                    .lock_postmaster()
                    .as_ref()
                    .map(|c| c.id())
                    .or_else(|| read_pid_file(&self.data_dir).map(|p| p.pid));
                if let Some(pid) = pid {
                    kill_tree(pid);
                }
            }
        }
        let mut guard = self.lock_postmaster();
        if let Some(child) = guard.as_mut() {
            let _ = child.wait();
        }
        *guard = None;
    }
}

/// The fields of `postmaster.pid` we need (layout: src/include/utils/pidfile.h).
struct PidFile {
    pid: u32,
    /// LOCK_FILE_LINE_PM_STATUS (line 8): "starting", "stopping", "ready" or "standby".
    status: String,
}

fn read_pid_file(data_dir: &Path) -> Option<PidFile> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let status = lines.nth(6).unwrap_or("").trim().to_string();
    Some(PidFile { pid, status })
}

/// Alive and not a zombie.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_state(&stat), Some('Z') | Some('X') | None),
        Err(_) => false,
    }
}

/// Process state letter from /proc/PID/stat ("pid (comm) S ppid ...").
fn stat_state(stat: &str) -> Option<char> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

fn stat_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// pid -> children, from /proc.
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

/// SIGSTOPs `root` and its descendants until no new ones appear, then SIGKILLs them all.
/// Returns every pid signalled.
fn kill_tree(root: u32) -> Vec<u32> {
    let signal = |pid: u32, sig: i32| {
        if let Ok(p) = libc::pid_t::try_from(pid) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(p, sig) };
        }
    };
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

fn append_file(path: &Path, text: &str) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("cannot append to {}: {e}", path.display()));
}

fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut buf);
        }
    }
    buf
}

fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `cmd`, panicking with its output when it fails.
fn run_checked(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({:?}): {e}", cmd.get_program()));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_values_are_quoted_when_needed() {
        assert_eq!(conf_value("on"), "'on'");
        assert_eq!(conf_value("127.0.0.1"), "'127.0.0.1'");
        assert_eq!(conf_value("cp %p /a/%f"), "'cp %p /a/%f'");
        assert_eq!(conf_value("'x'"), "'x'");
        assert_eq!(conf_value("it's"), "'it''s'");
        assert_eq!(conf_value(""), "''");
    }

    #[test]
    fn stat_parsing_handles_spaces_in_comm() {
        let stat = "123 (postgres: walwriter (x)) S 77 123 123 0";
        assert_eq!(stat_state(stat), Some('S'));
        assert_eq!(stat_ppid(stat), Some(77));
    }
}
