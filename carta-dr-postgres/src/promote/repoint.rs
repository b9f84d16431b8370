//! Repointing clients at the new primary.
//!
//! A [`Repointer`] changes what clients connect to, and says through which connection string a
//! client now reaches the primary ([`Repointer::client_conninfo`]), so the promoter can prove
//! a write goes through the repointed path.
//!
//! * [`FileRepointer`]: rewrites a connection file or env file the application reads
//!   (temp file, fsync, rename, fsync of the directory: readers see the old or the new file,
//!   never a mix).
//! * [`PgBouncerRepointer`]: rewrites the database's entry in `pgbouncer.ini` the same way,
//!   then `RELOAD` through pgbouncer's admin console, then checks `SHOW DATABASES`.
//! * [`HaproxyRepointer`]: `set server BACKEND/SERVER addr IP port PORT` and `state ready`
//!   over HAProxy's runtime API (a Unix socket).
//! * [`CommandRepointer`]: any command (DNS update, service discovery...).

use std::fmt::Debug;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use carta_dr_core::{Error, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::fence::run_shell;
use super::sql;

/// The new primary, as clients should reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepointTarget {
    /// Its name in reports.
    pub name: String,
    /// The connection string clients use to reach it directly.
    pub conninfo: String,
    /// Its host (from the connection string).
    pub host: String,
    /// Its port (from the connection string; 5432 when absent).
    pub port: u16,
    /// The database name in the connection string, if any.
    pub dbname: Option<String>,
}

impl RepointTarget {
    /// Builds a target from a client connection string.
    pub fn from_conninfo(name: &str, conninfo: &str) -> Result<RepointTarget> {
        let cfg: tokio_postgres::Config = conninfo.parse().map_err(|e| {
            Error::invalid("connection string", sql::redact(conninfo), format!("{e}"))
        })?;
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        Ok(RepointTarget {
            name: name.to_string(),
            conninfo: conninfo.to_string(),
            host,
            port: cfg.get_ports().first().copied().unwrap_or(5432),
            dbname: cfg.get_dbname().map(str::to_string),
        })
    }
}

/// A way to send clients to the new primary.
#[async_trait]
pub trait Repointer: Send + Sync + Debug {
    /// A short name for reports.
    fn name(&self) -> &str;

    /// Repoints; `Ok` carries what was done.
    async fn repoint(&self, target: &RepointTarget) -> Result<String>;

    /// The connection string through which a client reaches the primary after
    /// [`Repointer::repoint`], when carta-dr can use that path itself; `None` when it cannot
    /// (the write check then connects directly and says so).
    fn client_conninfo(&self, target: &RepointTarget) -> Option<String>;
}

/// Writes `data` to `path` atomically and durably: a unique temp file in the same directory
/// (`create_new`), write, `sync_all`, rename over `path`, fsync of the directory. An existing
/// file's mode and owner are kept.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid("file path", path.display().to_string(), "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.carta-dr-{}-{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let old = std::fs::metadata(path).ok();
    let mode = old
        .as_ref()
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        f.write_all(data)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("chmod {}", tmp.display()), e))?;
        if let Some(m) = &old {
            // Best effort: only root may give a file away.
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        }
        f.sync_all()
            .map_err(|e| Error::io(format!("fsync {}", tmp.display()), e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", tmp.display(), path.display()),
                e,
            )
        })?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fills `{name}`, `{conninfo}`, `{host}`, `{port}` and `{dbname}` in a template.
pub fn render_template(template: &str, t: &RepointTarget) -> String {
    template
        .replace("{name}", &t.name)
        .replace("{conninfo}", &t.conninfo)
        .replace("{host}", &t.host)
        .replace("{port}", &t.port.to_string())
        .replace("{dbname}", t.dbname.as_deref().unwrap_or(""))
}

/// The default [`FileRepointer`] template: the connection string on one line.
pub const DEFAULT_FILE_TEMPLATE: &str = "{conninfo}\n";

/// Rewrites a file that clients read their connection settings from.
#[derive(Clone, Debug)]
pub struct FileRepointer {
    path: PathBuf,
    template: String,
}

impl FileRepointer {
    /// Writes the new primary's connection string (one line) to `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::with_template(path, DEFAULT_FILE_TEMPLATE)
    }

    /// Writes `template` to `path`, with `{conninfo}`, `{host}`, `{port}`, `{dbname}` and
    /// `{name}` filled in (for example `PGHOST={host}\nPGPORT={port}\n` for an env file).
    pub fn with_template(path: impl Into<PathBuf>, template: impl Into<String>) -> Self {
        FileRepointer {
            path: path.into(),
            template: template.into(),
        }
    }

    /// Reads the connection string back from a file written with the default template.
    pub fn read_conninfo(path: &Path) -> Result<String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Ok(text.trim().to_string())
    }
}

#[async_trait]
impl Repointer for FileRepointer {
    fn name(&self) -> &str {
        "file"
    }

    async fn repoint(&self, target: &RepointTarget) -> Result<String> {
        let body = render_template(&self.template, target);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomic(&path, body.as_bytes()))
            .await
            .map_err(|e| Error::invalid_input(format!("writing the connection file: {e}")))??;
        Ok(format!(
            "rewrote {} (atomic rename) to point at {} ({}:{})",
            self.path.display(),
            target.name,
            target.host,
            target.port
        ))
    }

    fn client_conninfo(&self, _target: &RepointTarget) -> Option<String> {
        // Read what clients will read, not what we meant to write.
        if self.template == DEFAULT_FILE_TEMPLATE {
            Self::read_conninfo(&self.path).ok()
        } else {
            None
        }
    }
}

/// Repoints a pgbouncer database: rewrites its `[databases]` line (keeping its other
/// parameters, replacing `host` and `port`), then `RELOAD` on the admin console and checks
/// `SHOW DATABASES`.
#[derive(Clone, Debug)]
pub struct PgBouncerRepointer {
    ini: PathBuf,
    database: String,
    admin_conninfo: String,
    client_conninfo: Option<String>,
    timeout: Duration,
}

impl PgBouncerRepointer {
    /// `ini`: the pgbouncer.ini; `database`: the key in `[databases]`; `admin_conninfo`: a
    /// connection to the admin console (`dbname=pgbouncer`, a user in `admin_users`).
    pub fn new(
        ini: impl Into<PathBuf>,
        database: impl Into<String>,
        admin_conninfo: impl Into<String>,
    ) -> Self {
        PgBouncerRepointer {
            ini: ini.into(),
            database: database.into(),
            admin_conninfo: admin_conninfo.into(),
            client_conninfo: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// How a client connects through pgbouncer (used by the write check).
    pub fn client_conninfo(mut self, conninfo: impl Into<String>) -> Self {
        self.client_conninfo = Some(conninfo.into());
        self
    }

    /// How long pgbouncer may take to answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Replaces (or adds) `database = ...` in the `[databases]` section of a pgbouncer.ini,
/// setting `host` and `port` and keeping the entry's other parameters.
pub fn rewrite_pgbouncer_ini(ini: &str, database: &str, host: &str, port: u16) -> Result<String> {
    let mut out = Vec::new();
    let mut in_databases = false;
    let mut seen_section = false;
    let mut done = false;
    let entry = |old: Option<&str>| -> String {
        let mut params: Vec<(String, String)> = old
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .filter(|(k, _)| *k != "host" && *k != "port")
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        params.insert(0, ("port".into(), port.to_string()));
        params.insert(0, ("host".into(), host.to_string()));
        let value: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{database} = {}", value.join(" "))
    };
    for line in ini.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            if in_databases && !done {
                out.push(entry(None));
                done = true;
            }
            in_databases = trimmed.eq_ignore_ascii_case("[databases]");
            seen_section |= in_databases;
            out.push(line.to_string());
            continue;
        }
        if in_databases && !trimmed.starts_with(';') && !trimmed.starts_with('#') {
            if let Some((k, v)) = trimmed.split_once('=') {
                if k.trim() == database {
                    if done {
                        // A duplicate key: pgbouncer would use the last; keep one only.
                        continue;
                    }
                    out.push(entry(Some(v)));
                    done = true;
                    continue;
                }
            }
        }
        out.push(line.to_string());
    }
    if in_databases && !done {
        out.push(entry(None));
        done = true;
    }
    if !seen_section || !done {
        return Err(Error::invalid_input(
            "pgbouncer.ini has no [databases] section".to_string(),
        ));
    }
    let mut s = out.join("\n");
    s.push('\n');
    Ok(s)
}

#[async_trait]
impl Repointer for PgBouncerRepointer {
    fn name(&self) -> &str {
        "pgbouncer"
    }

    async fn repoint(&self, target: &RepointTarget) -> Result<String> {
        let ini = self.ini.clone();
        let text = tokio::fs::read_to_string(&ini)
            .await
            .map_err(|e| Error::io(format!("reading {}", ini.display()), e))?;
        let new = rewrite_pgbouncer_ini(&text, &self.database, &target.host, target.port)
            .map_err(|e| Error::invalid_input(format!("{}: {e}", ini.display())))?;
        tokio::task::spawn_blocking(move || write_atomic(&ini, new.as_bytes()))
            .await
            .map_err(|e| Error::invalid_input(format!("writing pgbouncer.ini: {e}")))??;
        let admin_target = sql::redact(&self.admin_conninfo);
        let admin = sql::connect(&self.admin_conninfo, self.timeout).await?;
        sql::simple_column(&admin, "RELOAD", self.timeout, &admin_target).await?;
        let msgs = admin
            .simple_query("SHOW DATABASES")
            .await
            .map_err(|e| sql::pg_err(&admin_target, "SHOW DATABASES", &e))?;
        let mut seen = None;
        for m in msgs {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                if r.try_get("name").ok().flatten() == Some(self.database.as_str()) {
                    seen = Some((
                        r.try_get("host").ok().flatten().unwrap_or("").to_string(),
                        r.try_get("port").ok().flatten().unwrap_or("").to_string(),
                    ));
                }
            }
        }
        match seen {
            Some((h, p)) if h == target.host && p == target.port.to_string() => Ok(format!(
                "pgbouncer database {} now points at {}:{} ({}; RELOAD applied)",
                self.database,
                h,
                p,
                self.ini.display()
            )),
            other => Err(Error::invalid_input(format!(
                "pgbouncer database {} after RELOAD: SHOW DATABASES says {:?}, expected {}:{}",
                self.database, other, target.host, target.port
            ))),
        }
    }

    fn client_conninfo(&self, _target: &RepointTarget) -> Option<String> {
        self.client_conninfo.clone()
    }
}

/// Repoints an HAProxy server slot through the runtime API (`stats socket ... level admin`):
/// `set server BACKEND/SERVER addr HOST port PORT`, then `set server BACKEND/SERVER state
/// ready`. One command per connection, as HAProxy closes non-interactive sessions.
#[derive(Clone, Debug)]
pub struct HaproxyRepointer {
    socket: PathBuf,
    backend: String,
    server: String,
    client_conninfo: Option<String>,
    timeout: Duration,
}

impl HaproxyRepointer {
    /// `socket`: the runtime API's Unix socket; `backend`/`server`: the slot to repoint.
    pub fn new(
        socket: impl Into<PathBuf>,
        backend: impl Into<String>,
        server: impl Into<String>,
    ) -> Self {
        HaproxyRepointer {
            socket: socket.into(),
            backend: backend.into(),
            server: server.into(),
            client_conninfo: None,
            timeout: Duration::from_secs(5),
        }
    }

    /// How a client connects through HAProxy (used by the write check).
    pub fn client_conninfo(mut self, conninfo: impl Into<String>) -> Self {
        self.client_conninfo = Some(conninfo.into());
        self
    }

    async fn command(&self, line: &str) -> Result<String> {
        let io = async {
            let mut s = tokio::net::UnixStream::connect(&self.socket).await?;
            s.write_all(format!("{line}\n").as_bytes()).await?;
            s.shutdown().await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        let out = match tokio::time::timeout(self.timeout, io).await {
            Ok(r) => r.map_err(|e| {
                Error::io(
                    format!("HAProxy runtime API {} ({line})", self.socket.display()),
                    e,
                )
            })?,
            Err(_) => {
                return Err(Error::Timeout {
                    what: format!("HAProxy runtime API {} ({line})", self.socket.display()),
                })
            }
        };
        let answer = out.trim().to_string();
        if haproxy_error(&answer) {
            return Err(Error::invalid_input(format!(
                "HAProxy refused `{line}`: {answer}"
            )));
        }
        Ok(answer)
    }
}

/// Whether a runtime API answer is an error message.
fn haproxy_error(answer: &str) -> bool {
    let a = answer.to_ascii_lowercase();
    [
        "no such",
        "require",
        "unknown command",
        "permission denied",
        "invalid",
        "error",
        "unsupported",
    ]
    .iter()
    .any(|p| a.starts_with(p))
}

#[async_trait]
impl Repointer for HaproxyRepointer {
    fn name(&self) -> &str {
        "haproxy"
    }

    async fn repoint(&self, target: &RepointTarget) -> Result<String> {
        let slot = format!("{}/{}", self.backend, self.server);
        let a = self
            .command(&format!(
                "set server {slot} addr {} port {}",
                target.host, target.port
            ))
            .await?;
        let b = self
            .command(&format!("set server {slot} state ready"))
            .await?;
        Ok(format!(
            "HAProxy {slot} -> {}:{} ({}{}{})",
            target.host,
            target.port,
            a,
            if b.is_empty() { "" } else { "; " },
            b
        ))
    }

    fn client_conninfo(&self, _target: &RepointTarget) -> Option<String> {
        self.client_conninfo.clone()
    }
}

/// Runs a user command through `sh -c`; exit 0 means repointed. The command sees
/// `CARTA_DR_NEW_PRIMARY_NAME`, `_CONNINFO`, `_HOST` and `_PORT`.
#[derive(Clone, Debug)]
pub struct CommandRepointer {
    command: String,
    client_conninfo: Option<String>,
    timeout: Duration,
}

impl CommandRepointer {
    /// A repointer running `command` with `timeout`.
    pub fn new(command: impl Into<String>, timeout: Duration) -> Self {
        CommandRepointer {
            command: command.into(),
            client_conninfo: None,
            timeout,
        }
    }

    /// How a client reaches the primary once the command ran (used by the write check).
    pub fn client_conninfo(mut self, conninfo: impl Into<String>) -> Self {
        self.client_conninfo = Some(conninfo.into());
        self
    }
}

#[async_trait]
impl Repointer for CommandRepointer {
    fn name(&self) -> &str {
        "command"
    }

    async fn repoint(&self, target: &RepointTarget) -> Result<String> {
        let env = [
            ("CARTA_DR_NEW_PRIMARY_NAME", target.name.clone()),
            ("CARTA_DR_NEW_PRIMARY_CONNINFO", target.conninfo.clone()),
            ("CARTA_DR_NEW_PRIMARY_HOST", target.host.clone()),
            ("CARTA_DR_NEW_PRIMARY_PORT", target.port.to_string()),
        ];
        run_shell(&self.command, &env, self.timeout, "repoint command").await
    }

    fn client_conninfo(&self, _target: &RepointTarget) -> Option<String> {
        self.client_conninfo.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbouncer_entry_is_replaced_keeping_other_parameters() {
        let ini = "[databases]\n; comment\napp = host=10.0.0.1 port=5432 dbname=app pool_size=5\nother = host=x\n\n[pgbouncer]\nlisten_port = 6432\n";
        let out = rewrite_pgbouncer_ini(ini, "app", "10.0.0.2", 5433).unwrap();
        assert!(out.contains("app = host=10.0.0.2 port=5433 dbname=app pool_size=5\n"));
        assert!(out.contains("other = host=x\n"));
        assert!(out.contains("; comment\n"));
        assert!(out.contains("[pgbouncer]\nlisten_port = 6432\n"));
    }

    #[test]
    fn pgbouncer_entry_is_added_when_missing() {
        let ini = "[databases]\nother = host=x\n[pgbouncer]\n";
        let out = rewrite_pgbouncer_ini(ini, "app", "h", 1).unwrap();
        assert!(out.contains("other = host=x\napp = host=h port=1\n[pgbouncer]"));
        assert!(rewrite_pgbouncer_ini("[pgbouncer]\n", "app", "h", 1).is_err());
    }

    #[test]
    fn templates_fill_every_placeholder() {
        let t = RepointTarget::from_conninfo("s1", "host=127.0.0.1 port=5433 dbname=app").unwrap();
        assert_eq!(
            render_template("PGHOST={host}\nPGPORT={port}\nDB={dbname} {name}", &t),
            "PGHOST=127.0.0.1\nPGPORT=5433\nDB=app s1"
        );
    }

    #[test]
    fn atomic_write_replaces_and_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("conn");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn haproxy_errors_are_recognised() {
        assert!(haproxy_error("No such backend."));
        assert!(haproxy_error("Require 'backend/server'."));
        assert!(!haproxy_error("IP changed from '1.1.1.1' to '2.2.2.2'"));
        assert!(!haproxy_error(""));
    }

    /// A fake runtime API (HAProxy is not installed here): records the commands it gets and
    /// answers as HAProxy 2.x does.
    #[tokio::test]
    async fn haproxy_repointer_speaks_the_runtime_api() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("admin.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut line = String::new();
                s.read_to_string(&mut line).await.unwrap();
                let answer = if line.contains(" addr ") {
                    "IP changed from '127.0.0.1' to '127.0.0.2', port changed from '5432' to '5433' by 'stats socket command'\n"
                } else {
                    "\n"
                };
                s.write_all(answer.as_bytes()).await.unwrap();
                got.push(line);
            }
            got
        });
        let r = HaproxyRepointer::new(&sock, "pg", "primary");
        let t = RepointTarget::from_conninfo("s1", "host=127.0.0.2 port=5433").unwrap();
        let detail = r.repoint(&t).await.unwrap();
        assert!(detail.contains("IP changed"), "{detail}");
        let got = server.await.unwrap();
        assert_eq!(
            got,
            vec![
                "set server pg/primary addr 127.0.0.2 port 5433\n".to_string(),
                "set server pg/primary state ready\n".to_string()
            ]
        );
    }

    #[tokio::test]
    async fn haproxy_refusal_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("admin.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut line = String::new();
            s.read_to_string(&mut line).await.unwrap();
            s.write_all(b"No such backend.\n").await.unwrap();
        });
        let r = HaproxyRepointer::new(&sock, "nope", "x");
        let t = RepointTarget::from_conninfo("s1", "host=127.0.0.2 port=5433").unwrap();
        let e = r.repoint(&t).await.unwrap_err().to_string();
        assert!(e.contains("No such backend"), "{e}");
    }

    #[tokio::test]
    async fn command_repointer_passes_the_target_and_fails_on_nonzero() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let cmd = format!(
            "echo \"$CARTA_DR_NEW_PRIMARY_HOST:$CARTA_DR_NEW_PRIMARY_PORT\" > {}",
            out.display()
        );
        let t = RepointTarget::from_conninfo("s1", "host=10.1.1.1 port=6000").unwrap();
        CommandRepointer::new(cmd, Duration::from_secs(5))
            .repoint(&t)
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "10.1.1.1:6000\n");
        assert!(CommandRepointer::new("exit 3", Duration::from_secs(5))
            .repoint(&t)
            .await
            .is_err());
    }
}
