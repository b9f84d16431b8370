//! A physical replication connection: startup with `replication=true`, authentication (trust,
//! cleartext, MD5, SCRAM-SHA-256), simple queries, and the raw message stream that
//! `BASE_BACKUP` answers with.
//!
//! Built directly on `postgres-protocol` over a tokio socket (TCP or Unix domain), because the
//! replication sub-protocol only speaks the simple Query protocol and streams `COPY` data that
//! general-purpose clients do not expose.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use carta_dr_core::{Error, Lsn, Result, TimelineId};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::{backend::Message, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest protocol message accepted from the server (a CopyData carries at most a few
/// hundred kB; anything far larger is a broken or hostile peer).
const MAX_MESSAGE: usize = 64 << 20;

/// Where and how to connect: libpq's environment variables and `key=value` connection strings.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnParams {
    /// Host name, IP address, or a directory holding the Unix socket (starts with `/`).
    pub host: String,
    /// TCP port, also the suffix of the Unix socket name.
    pub port: u16,
    /// Role name.
    pub user: String,
    /// Password, for MD5, cleartext or SCRAM authentication.
    pub password: Option<String>,
    /// Database name (optional for physical replication).
    pub dbname: Option<String>,
    /// `application_name` reported to the server.
    pub application_name: String,
    /// Connection timeout.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl ConnParams {
    /// Parameters from `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
    /// `PGAPPNAME` and `PGCONNECT_TIMEOUT`, with libpq's defaults.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`ConnParams::from_env`], reading variables through `get` (testable).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let host = get("PGHOST").filter(|h| !h.is_empty()).unwrap_or_else(|| {
            if std::path::Path::new("/var/run/postgresql").is_dir() {
                "/var/run/postgresql".to_string()
            } else {
                "localhost".to_string()
            }
        });
        let port = get("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432);
        let user = get("PGUSER")
            .filter(|u| !u.is_empty())
            .or_else(|| get("USER"))
            .unwrap_or_else(|| "postgres".to_string());
        let connect_timeout = get("PGCONNECT_TIMEOUT")
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|t| *t > 0)
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(30));
        ConnParams {
            host,
            port,
            user,
            password: get("PGPASSWORD"),
            dbname: get("PGDATABASE").filter(|d| !d.is_empty()),
            application_name: get("PGAPPNAME").unwrap_or_else(|| "carta-dr".to_string()),
            connect_timeout,
        }
    }

    /// Applies a libpq `key=value` connection string on top of these parameters. Values may be
    /// single-quoted with `\'` and `\\` escapes. Unknown keys are an error, except a few that do
    /// not concern this client (`sslmode=disable|prefer|allow`, `replication`).
    pub fn apply_conninfo(mut self, conninfo: &str) -> Result<Self> {
        for (k, v) in parse_conninfo(conninfo)? {
            match k.as_str() {
                "host" | "hostaddr" => self.host = v,
                "port" => {
                    self.port = v
                        .parse()
                        .map_err(|_| Error::invalid("port", v.clone(), "not a TCP port number"))?
                }
                "user" => self.user = v,
                "password" => self.password = Some(v),
                "dbname" => self.dbname = Some(v),
                "application_name" => self.application_name = v,
                "connect_timeout" => {
                    let secs: u64 = v.parse().map_err(|_| {
                        Error::invalid("connect_timeout", v.clone(), "not a number of seconds")
                    })?;
                    self.connect_timeout = Duration::from_secs(secs.max(1));
                }
                "sslmode" if matches!(v.as_str(), "disable" | "allow" | "prefer") => {}
                "replication" => {}
                _ => {
                    return Err(Error::invalid(
                        "connection parameter",
                        k,
                        "not supported by the replication client",
                    ))
                }
            }
        }
        Ok(self)
    }

    /// The Unix socket path when `host` is a directory.
    fn socket_path(&self) -> Option<PathBuf> {
        self.host
            .starts_with('/')
            .then(|| PathBuf::from(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }

    /// `host:port` or the socket path, for messages.
    pub fn target(&self) -> String {
        match self.socket_path() {
            Some(p) => p.display().to_string(),
            None => format!("{}:{}", self.host, self.port),
        }
    }
}

/// Parses a libpq `key=value ...` string.
pub fn parse_conninfo(s: &str) -> Result<Vec<(String, String)>> {
    let bad = |why: &str| Error::invalid("connection string", redact(s), why.to_string());
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            it.next();
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.next() != Some('=') {
            return Err(bad("expected key=value"));
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut val = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            loop {
                match it.next() {
                    None => return Err(bad("unterminated quoted value")),
                    Some('\\') => match it.next() {
                        Some(c) => val.push(c),
                        None => return Err(bad("trailing backslash")),
                    },
                    Some('\'') => break,
                    Some(c) => val.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    it.next();
                    match it.next() {
                        Some(c) => val.push(c),
                        None => return Err(bad("trailing backslash")),
                    }
                    continue;
                }
                val.push(c);
                it.next();
            }
        }
        if key.is_empty() {
            return Err(bad("empty key"));
        }
        out.push((key, val));
    }
    Ok(out)
}

/// A connection string with any password value masked, for error messages.
fn redact(s: &str) -> String {
    match s.find("password") {
        Some(i) => format!("{}password=<hidden>", &s[..i]),
        None => s.to_string(),
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// What `IDENTIFY_SYSTEM` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The database system identifier.
    pub system_identifier: u64,
    /// The current timeline.
    pub timeline: TimelineId,
    /// The current WAL flush location.
    pub xlogpos: Lsn,
}

/// A physical replication connection.
pub struct ReplicationConnection {
    io: Pin<Box<dyn Io>>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    server_params: HashMap<String, String>,
    target: String,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// One result set of a simple query: rows of text values (NULL is `None`).
pub type Rows = Vec<Vec<Option<String>>>;

/// Turns a server `ErrorResponse` into an error naming the server and what was being done.
fn server_error(target: &str, context: &str, fields: HashMap<u8, String>) -> Error {
    let sev = fields.get(&b'S').cloned().unwrap_or_default();
    let code = fields.get(&b'C').cloned().unwrap_or_default();
    let msg = fields.get(&b'M').cloned().unwrap_or_default();
    let detail = fields
        .get(&b'D')
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    // 08xxx connection exceptions, 57P0x shutdown/cannot connect now, 53xxx resources.
    let retryable = code.starts_with("08") || code.starts_with("57P") || code.starts_with("53");
    Error::Backend {
        backend: "postgresql",
        context: format!("{context} on {target}"),
        message: format!("{sev} {code}: {msg}{detail}"),
        retryable,
    }
}

fn error_fields(
    mut it: postgres_protocol::message::backend::ErrorFields<'_>,
) -> HashMap<u8, String> {
    let mut m = HashMap::new();
    while let Ok(Some(f)) = it.next() {
        m.insert(
            f.type_(),
            String::from_utf8_lossy(f.value_bytes()).into_owned(),
        );
    }
    m
}

impl ReplicationConnection {
    /// Connects, authenticates and waits for `ReadyForQuery`.
    pub async fn connect(params: &ConnParams) -> Result<Self> {
        let target = params.target();
        let io: Pin<Box<dyn Io>> = tokio::time::timeout(params.connect_timeout, async {
            match params.socket_path() {
                Some(p) => tokio::net::UnixStream::connect(&p)
                    .await
                    .map(|s| Box::pin(s) as Pin<Box<dyn Io>>),
                None => {
                    let s =
                        tokio::net::TcpStream::connect((params.host.as_str(), params.port)).await?;
                    s.set_nodelay(true)?;
                    Ok(Box::pin(s) as Pin<Box<dyn Io>>)
                }
            }
        })
        .await
        .map_err(|_| Error::Timeout {
            what: format!("connecting to {target}"),
        })?
        .map_err(|e| Error::io(format!("connecting to {target}"), e))?;
        let mut conn = ReplicationConnection {
            io,
            rbuf: BytesMut::with_capacity(128 << 10),
            wbuf: BytesMut::new(),
            server_params: HashMap::new(),
            target,
        };
        conn.startup(params).await?;
        Ok(conn)
    }

    async fn startup(&mut self, params: &ConnParams) -> Result<()> {
        let mut kv: Vec<(&str, &str)> = vec![
            ("user", params.user.as_str()),
            ("replication", "true"),
            ("application_name", params.application_name.as_str()),
        ];
        if let Some(db) = &params.dbname {
            kv.push(("database", db.as_str()));
        }
        frontend::startup_message(kv, &mut self.wbuf)
            .map_err(|e| Error::invalid_input(format!("startup message: {e}")))?;
        self.flush().await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.read_message().await? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let pw = self.password(params)?;
                    frontend::password_message(pw.as_bytes(), &mut self.wbuf)
                        .map_err(|e| Error::invalid_input(format!("password message: {e}")))?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let pw = self.password(params)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        params.user.as_bytes(),
                        pw.as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                        .map_err(|e| Error::invalid_input(format!("password message: {e}")))?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechs = body.mechanisms();
                    let mut has_scram = false;
                    while let Ok(Some(m)) = mechs.next() {
                        has_scram |= m == sasl::SCRAM_SHA_256;
                    }
                    if !has_scram {
                        return Err(self.auth_error("the server offers no SCRAM-SHA-256"));
                    }
                    let pw = self.password(params)?;
                    let s = ScramSha256::new(pw.as_bytes(), sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut self.wbuf)
                        .map_err(|e| Error::invalid_input(format!("SASL message: {e}")))?;
                    scram = Some(s);
                    self.flush().await?;
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| self.auth_error("SASL continue without SASL start"))?;
                    s.update(body.data())
                        .map_err(|e| self.auth_error(&format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf)
                        .map_err(|e| Error::invalid_input(format!("SASL message: {e}")))?;
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| self.auth_error("SASL final without SASL start"))?;
                    s.finish(body.data())
                        .map_err(|e| self.auth_error(&format!("SCRAM server proof: {e}")))?;
                }
                Message::ParameterStatus(p) => {
                    if let (Ok(n), Ok(v)) = (p.name(), p.value()) {
                        self.server_params.insert(n.to_string(), v.to_string());
                    }
                }
                Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(e) => {
                    return Err(server_error(
                        &self.target,
                        "connecting for replication",
                        error_fields(e.fields()),
                    ))
                }
                _ => {
                    return Err(self.auth_error(
                        "unsupported authentication method (trust, password, md5 and SCRAM-SHA-256 are)",
                    ))
                }
            }
        }
    }

    fn password<'a>(&self, params: &'a ConnParams) -> Result<&'a str> {
        params
            .password
            .as_deref()
            .ok_or_else(|| self.auth_error("the server asks for a password; set PGPASSWORD"))
    }

    fn auth_error(&self, what: &str) -> Error {
        Error::Backend {
            backend: "postgresql",
            context: format!("authenticating to {}", self.target),
            message: what.to_string(),
            retryable: false,
        }
    }

    /// Server parameters reported at startup (`server_version`, ...).
    pub fn server_param(&self, name: &str) -> Option<&str> {
        self.server_params.get(name).map(String::as_str)
    }

    /// The server version as `PG_VERSION_NUM` (`150018` for 15.18).
    pub fn server_version_num(&self) -> Option<u32> {
        parse_server_version(self.server_param("server_version")?)
    }

    /// Where this connection goes, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    async fn flush(&mut self) -> Result<()> {
        let buf = self.wbuf.split();
        self.io
            .write_all(&buf)
            .await
            .map_err(|e| Error::io(format!("writing to {}", self.target), e))?;
        self.io
            .flush()
            .await
            .map_err(|e| Error::io(format!("writing to {}", self.target), e))
    }

    /// Reads the next backend message.
    pub(crate) async fn read_message(&mut self) -> Result<Message> {
        loop {
            if self.rbuf.len() >= 5 {
                let len =
                    u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
                if len as usize > MAX_MESSAGE {
                    return Err(Error::invalid_input(format!(
                        "message of {len} bytes from {} exceeds the {MAX_MESSAGE}-byte limit",
                        self.target
                    )));
                }
            }
            match Message::parse(&mut self.rbuf) {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(e) => {
                    return Err(Error::invalid_input(format!(
                        "malformed message from {}: {e}",
                        self.target
                    )))
                }
            }
            if self.rbuf.capacity() - self.rbuf.len() < 16 << 10 {
                self.rbuf.reserve(64 << 10);
            }
            let n = self
                .io
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| Error::io(format!("reading from {}", self.target), e))?;
            if n == 0 {
                return Err(Error::io(
                    format!("reading from {}", self.target),
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
        }
    }

    /// Sends a simple query.
    pub(crate) async fn send_query(&mut self, sql: &str) -> Result<()> {
        frontend::query(sql, &mut self.wbuf)
            .map_err(|e| Error::invalid_input(format!("query {sql:?}: {e}")))?;
        self.flush().await
    }

    /// Runs a simple query and returns every result set.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Rows>> {
        self.send_query(sql).await?;
        let mut sets = Vec::new();
        let mut cur: Option<Rows> = None;
        let mut err = None;
        loop {
            match self.read_message().await? {
                Message::RowDescription(_) => cur = Some(Vec::new()),
                Message::DataRow(row) => {
                    let vals = data_row(&row)?;
                    cur.get_or_insert_with(Vec::new).push(vals);
                }
                Message::CommandComplete(_) | Message::EmptyQueryResponse => {
                    if let Some(r) = cur.take() {
                        sets.push(r);
                    }
                }
                Message::ErrorResponse(e) => {
                    err = Some(server_error(&self.target, sql, error_fields(e.fields())))
                }
                Message::ReadyForQuery(_) => break,
                Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone => {
                    return Err(Error::invalid_input(format!(
                        "{sql:?} on {} answered with COPY data",
                        self.target
                    )))
                }
                _ => {}
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(sets),
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let sets = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = sets
            .first()
            .and_then(|s| s.first())
            .ok_or_else(|| Error::invalid_input("IDENTIFY_SYSTEM returned no row"))?;
        let col = |i: usize| row.get(i).and_then(|v| v.as_deref()).unwrap_or("");
        let system_identifier = col(0).parse::<u64>().map_err(|_| {
            Error::invalid("system identifier", col(0), "IDENTIFY_SYSTEM: not a u64")
        })?;
        let tli: u32 = col(1)
            .parse()
            .map_err(|_| Error::invalid("timeline", col(1), "IDENTIFY_SYSTEM: not a number"))?;
        let timeline = TimelineId::new(tli)
            .ok_or_else(|| Error::invalid("timeline", col(1), "IDENTIFY_SYSTEM: zero"))?;
        let xlogpos: Lsn = col(2).parse()?;
        Ok(SystemIdentity {
            system_identifier,
            timeline,
            xlogpos,
        })
    }

    /// `SHOW name` (accepted by walsenders since PostgreSQL 10).
    pub async fn show(&mut self, name: &str) -> Result<String> {
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(Error::invalid("setting name", name, "not an identifier"));
        }
        let sets = self.simple_query(&format!("SHOW {name}")).await?;
        sets.first()
            .and_then(|s| s.first())
            .and_then(|r| r.first())
            .and_then(|v| v.clone())
            .ok_or_else(|| Error::invalid_input(format!("SHOW {name} returned no value")))
    }

    /// Sends `Terminate` and closes the socket.
    pub async fn close(mut self) -> Result<()> {
        frontend::terminate(&mut self.wbuf);
        self.flush().await?;
        let _ = self.io.shutdown().await;
        Ok(())
    }

    pub(crate) fn server_error(
        &self,
        context: &str,
        body: &postgres_protocol::message::backend::ErrorResponseBody,
    ) -> Error {
        server_error(&self.target, context, error_fields(body.fields()))
    }
}

/// The text values of a `DataRow`.
pub(crate) fn data_row(
    row: &postgres_protocol::message::backend::DataRowBody,
) -> Result<Vec<Option<String>>> {
    let buf = row.buffer();
    let mut out = Vec::new();
    let mut ranges = row.ranges();
    loop {
        match ranges.next() {
            Ok(Some(Some(r))) => {
                let v = buf
                    .get(r)
                    .ok_or_else(|| Error::invalid_input("DataRow value out of bounds"))?;
                out.push(Some(String::from_utf8_lossy(v).into_owned()));
            }
            Ok(Some(None)) => out.push(None),
            Ok(None) => break,
            Err(e) => return Err(Error::invalid_input(format!("malformed DataRow: {e}"))),
        }
    }
    Ok(out)
}

/// Parses `server_version` (`15.18 (Debian 15.18-1.pgdg120+1)`, `16beta1`) into
/// `PG_VERSION_NUM` form.
pub fn parse_server_version(v: &str) -> Option<u32> {
    let head: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = head.split('.').filter(|p| !p.is_empty());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if major >= 10 {
        Some(major * 10000 + minor)
    } else {
        let patch: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(major * 10000 + minor * 100 + patch)
    }
}

/// Parses a size setting as `SHOW` prints it (`16MB`, `1GB`, `8kB`) into bytes.
pub fn parse_size_setting(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let n: u64 = v.get(..split)?.parse().ok()?;
    let mult = match v.get(split..)?.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Converts the raw bytes of a `CopyData` into an owned buffer.
pub(crate) fn copy_bytes(body: postgres_protocol::message::backend::CopyDataBody) -> Bytes {
    body.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_parsing() {
        let kv =
            parse_conninfo("host=/tmp port=5433 user='a b' password='it\\'s' dbname=x").unwrap();
        assert_eq!(kv[0], ("host".into(), "/tmp".into()));
        assert_eq!(kv[2], ("user".into(), "a b".into()));
        assert_eq!(kv[3], ("password".into(), "it's".into()));
        assert!(parse_conninfo("host").is_err());
        assert!(parse_conninfo("host='x").is_err());
        let p = ConnParams::from_lookup(|k| (k == "PGPORT").then(|| "6000".into()))
            .apply_conninfo("host=127.0.0.1 user=u")
            .unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.user.as_str()),
            ("127.0.0.1", 6000, "u")
        );
        assert!(ConnParams::from_env().apply_conninfo("bogus=1").is_err());
        assert!(!format!("{p:?}").contains("it's"));
    }

    #[test]
    fn versions_and_sizes() {
        assert_eq!(
            parse_server_version("15.18 (Debian 15.18-1.pgdg120+1)"),
            Some(150018)
        );
        assert_eq!(parse_server_version("16beta1"), Some(160000));
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_size_setting("16MB"), Some(16 << 20));
        assert_eq!(parse_size_setting("1GB"), Some(1 << 30));
        assert_eq!(parse_size_setting("x"), None);
    }
}
