//! [`S3Store`]: S3-compatible object storage, on `object_store`'s `AmazonS3`.
//!
//! * Addressing is path-style (`http://endpoint/bucket/key`), which every S3-compatible
//!   server accepts; plain HTTP is allowed only when asked for (loopback test servers).
//! * Credentials come from the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and,
//!   for temporary credentials, `AWS_SESSION_TOKEN`. The region falls back to `AWS_REGION`,
//!   then `AWS_DEFAULT_REGION`, then `us-east-1`.
//! * Create-only puts are conditional PUTs (`If-None-Match: *`); the server decides
//!   atomically, and a loser gets [`Error::AlreadyExists`].
//! * Large objects are uploaded in parts (multipart upload), a few parts in flight at a time,
//!   so memory stays bounded. A multipart upload cannot be made create-only through
//!   `object_store`, so [`Store::put_writer`] with [`PutMode::Create`] is
//!   [`Error::NotSupported`] and `atomic_create_streaming` is false; a create-only
//!   [`Store::put`] of up to 5 GiB is one conditional PUT.
//! * An aborted or dropped streaming write aborts its multipart upload; nothing becomes
//!   visible. (A killed process leaves an incomplete upload that the bucket's
//!   `AbortIncompleteMultipartUpload` lifecycle rule should remove.)

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use carta_dr_core::store::clamp_range;
use carta_dr_core::{
    Capabilities, Error, GetResult, ObjectMeta, ObjectWriter, PutMode, PutOptions, Result, Store,
    StorePath,
};
use futures::stream::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as OsPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, PutPayload, RetryConfig,
    WriteMultipart,
};

const BACKEND: &str = "S3";
/// The largest object a single PUT may carry.
const MAX_SINGLE_PUT: u64 = 5 << 30;
/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u64 = 10_000;

/// How to reach a bucket. Build one by hand or let [`crate::open`] parse an `s3://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// A prefix applied to every key (no leading or trailing `/`), or `None`.
    pub prefix: Option<StorePath>,
    /// The endpoint URL (`http://127.0.0.1:9000`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// The region; `None` reads `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Allow plain `http://` endpoints.
    pub allow_http: bool,
    /// Objects written by `put` above this size are uploaded in parts (default 64 MiB).
    pub multipart_threshold: u64,
    /// The size of each part of a multipart upload (default 16 MiB; S3's minimum is 5 MiB,
    /// and at most 10,000 parts make an object, so this bounds the largest streamed object
    /// to 10,000 times the part size).
    pub part_size: usize,
    /// How many parts of one upload are in flight at once (default 4). Memory per writer is
    /// about `part_size * (part_concurrency + 1)`.
    pub part_concurrency: usize,
    /// How many times one HTTP request is retried on connection errors and 5xx answers
    /// before the error surfaces (default 2). Wrap the store in a retry layer for a policy
    /// over whole calls.
    pub request_retries: usize,
}

impl S3Config {
    /// A configuration for `bucket` with the defaults.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            prefix: None,
            endpoint: None,
            region: None,
            allow_http: false,
            multipart_threshold: 64 << 20,
            part_size: 16 << 20,
            part_concurrency: 4,
            request_retries: 2,
        }
    }
}

/// A [`Store`] in an S3-compatible bucket (feature `s3`). Displays as `S3(bucket/prefix)`.
#[derive(Clone)]
pub struct S3Store {
    client: Arc<AmazonS3>,
    cfg: Arc<S3Config>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client holds credentials; show the configuration only.
        f.debug_struct("S3Store").field("cfg", &self.cfg).finish()
    }
}

impl fmt::Display for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cfg.prefix {
            Some(p) => write!(f, "S3({}/{p})", self.cfg.bucket),
            None => write!(f, "S3({})", self.cfg.bucket),
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl S3Store {
    /// Connects (lazily: no request is made here) to the bucket `cfg` describes.
    pub fn new(cfg: S3Config) -> Result<Self> {
        let invalid = |what: &str| Error::invalid("S3 configuration", cfg.bucket.clone(), what);
        if cfg.bucket.is_empty() {
            return Err(invalid("the bucket name is empty"));
        }
        if cfg.part_size < 5 << 20 {
            return Err(invalid("part_size must be at least 5 MiB"));
        }
        if cfg.part_concurrency == 0 {
            return Err(invalid("part_concurrency must be at least 1"));
        }
        let region = cfg
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(region)
            .with_virtual_hosted_style_request(false)
            .with_allow_http(cfg.allow_http)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(cfg.allow_http)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120)),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: cfg.request_retries,
                retry_timeout: Duration::from_secs(60),
            });
        if let Some(ep) = &cfg.endpoint {
            b = b.with_endpoint(ep);
        }
        if let Some(v) = env("AWS_ACCESS_KEY_ID") {
            b = b.with_access_key_id(v);
        }
        if let Some(v) = env("AWS_SECRET_ACCESS_KEY") {
            b = b.with_secret_access_key(v);
        }
        if let Some(v) = env("AWS_SESSION_TOKEN") {
            b = b.with_token(v);
        }
        let client = b
            .build()
            .map_err(|e| Error::invalid("S3 configuration", cfg.bucket.clone(), e.to_string()))?;
        Ok(S3Store {
            client: Arc::new(client),
            cfg: Arc::new(cfg),
        })
    }

    /// The configuration this store was built from.
    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    fn key(&self, path: &StorePath) -> Result<OsPath> {
        let full = match &self.cfg.prefix {
            Some(p) => format!("{p}/{path}"),
            None => path.to_string(),
        };
        // A StorePath has no empty, `.` or `..` segments and no control characters, which is
        // exactly what `Path::parse` checks; the key is used verbatim.
        OsPath::parse(&full).map_err(|e| Error::invalid("store path", path.as_str(), e.to_string()))
    }

    /// The store path of a listed key, or `None` (with a warning) if it is not one.
    fn store_path(&self, key: &OsPath) -> Option<StorePath> {
        let k = key.as_ref();
        let rel = match &self.cfg.prefix {
            Some(p) => k.strip_prefix(p.as_str())?.strip_prefix('/')?,
            None => k,
        };
        match StorePath::new(rel) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(store = %self, key = k, error = %e, "skipping a key that is not a valid store path");
                None
            }
        }
    }

    fn meta(&self, path: &StorePath, m: &object_store::ObjectMeta) -> ObjectMeta {
        ObjectMeta {
            path: path.clone(),
            size: m.size,
            last_modified: SystemTime::from(m.last_modified),
            etag: m.e_tag.clone(),
        }
    }

    async fn put_multipart(&self, path: &StorePath, data: Bytes) -> Result<()> {
        let mut w = self.put_writer(path, PutOptions::overwrite()).await?;
        let part = self.cfg.part_size;
        let mut off = 0;
        while off < data.len() {
            let end = (off + part).min(data.len());
            if let Err(e) = w.write(data.slice(off..end)).await {
                let _ = w.abort().await;
                return Err(e);
            }
            off = end;
        }
        w.complete().await
    }
}

/// Maps an `object_store` error of operation `op` on `path`.
fn map_err(e: object_store::Error, op: &str, path: &StorePath) -> Error {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => Error::NotFound {
            path: path.to_string(),
        },
        E::AlreadyExists { .. } | E::Precondition { .. } | E::NotModified { .. } => {
            Error::AlreadyExists {
                path: path.to_string(),
            }
        }
        E::NotImplemented | E::NotSupported { .. } => Error::NotSupported {
            backend: BACKEND.into(),
            what: format!("{op} {path}: {e}"),
        },
        other => {
            let retryable = is_retryable(&other);
            Error::Backend {
                backend: BACKEND,
                context: format!("{op} {path}"),
                message: error_chain(&other),
                retryable,
            }
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Whether an error is transient: a connection, request or timeout failure, or an answer
/// of 5xx, 408 or 429.
fn is_retryable(e: &object_store::Error) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    use object_store::Error as E;
    if matches!(
        e,
        E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::InvalidPath { .. }
            | E::UnknownConfigurationKey { .. }
    ) {
        return false;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<HttpError>() {
            return matches!(
                h.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            );
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Error::io("", std::io::Error::from(io.kind())).is_retryable();
        }
        // object_store's status-bearing error type is private; its message is stable:
        // "Server returned non-2xx status code: 503 Service Unavailable: ...".
        let msg = c.to_string();
        if let Some(i) = msg.find("status code: ") {
            let code: String = msg[i + 13..].chars().take(3).collect();
            if let Ok(code) = code.parse::<u16>() {
                return code >= 500 || code == 408 || code == 429;
            }
        }
        if msg.contains("Server returned error response")
            && [
                "InternalError",
                "SlowDown",
                "ServiceUnavailable",
                "RequestTimeout",
            ]
            .iter()
            .any(|k| msg.contains(k))
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// A streaming write: a multipart upload, started with the first full part. An object
/// smaller than one part is written with a single PUT on completion.
struct S3Writer {
    store: S3Store,
    path: StorePath,
    key: OsPath,
    buf: Vec<Bytes>,
    buffered: usize,
    upload: Option<WriteMultipart>,
    written: u64,
}

impl S3Writer {
    async fn start_upload(&mut self) -> Result<&mut WriteMultipart> {
        if self.upload.is_none() {
            let up = self
                .store
                .client
                .put_multipart(&self.key)
                .await
                .map_err(|e| map_err(e, "start multipart upload of", &self.path))?;
            self.upload = Some(WriteMultipart::new_with_chunk_size(
                up,
                self.store.cfg.part_size,
            ));
        }
        self.upload.as_mut().ok_or_else(|| Error::Backend {
            backend: BACKEND,
            context: format!("upload {}", self.path),
            message: "multipart upload missing".into(),
            retryable: false,
        })
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.written += data.len() as u64;
        let max = self.store.cfg.part_size as u64 * MAX_PARTS;
        if self.written > max {
            return Err(Error::NotSupported {
                backend: BACKEND.into(),
                what: format!(
                    "{}: objects over {max} bytes (10,000 parts of {} bytes)",
                    self.path, self.store.cfg.part_size
                ),
            });
        }
        self.buffered += data.len();
        self.buf.push(data);
        if self.buffered < self.store.cfg.part_size {
            return Ok(());
        }
        let parts = std::mem::take(&mut self.buf);
        self.buffered = 0;
        let concurrency = self.store.cfg.part_concurrency;
        let path = self.path.clone();
        let up = self.start_upload().await?;
        up.wait_for_capacity(concurrency)
            .await
            .map_err(|e| map_err(e, "upload part of", &path))?;
        for p in parts {
            up.put(p);
        }
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<()> {
        match self.upload.take() {
            None => {
                let payload: PutPayload = self.buf.drain(..).collect();
                self.store
                    .client
                    .put(&self.key, payload)
                    .await
                    .map_err(|e| map_err(e, "put", &self.path))?;
            }
            Some(mut up) => {
                for p in self.buf.drain(..) {
                    up.put(p);
                }
                up.finish()
                    .await
                    .map_err(|e| map_err(e, "complete multipart upload of", &self.path))?;
            }
        }
        Ok(())
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        if let Some(up) = self.upload.take() {
            up.abort()
                .await
                .map_err(|e| map_err(e, "abort multipart upload of", &self.path))?;
        }
        Ok(())
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if let Some(up) = self.upload.take() {
            // Nothing is visible until completion; abort the upload so its parts are freed.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let path = self.path.clone();
                handle.spawn(async move {
                    if let Err(e) = up.abort().await {
                        tracing::warn!(%path, error = %e, "could not abort an abandoned multipart upload");
                    }
                });
            }
        }
    }
}

#[async_trait]
impl Store for S3Store {
    async fn put(&self, path: &StorePath, data: Bytes, opts: PutOptions) -> Result<()> {
        let key = self.key(path)?;
        let len = data.len() as u64;
        match opts.mode {
            PutMode::Overwrite if len > self.cfg.multipart_threshold => {
                self.put_multipart(path, data).await
            }
            PutMode::Create if len > MAX_SINGLE_PUT => Err(Error::NotSupported {
                backend: BACKEND.into(),
                what: format!("create-only put of {path}: objects over 5 GiB ({len} bytes)"),
            }),
            mode => {
                let os_mode = match mode {
                    PutMode::Overwrite => object_store::PutMode::Overwrite,
                    PutMode::Create => object_store::PutMode::Create,
                };
                self.client
                    .put_opts(&key, PutPayload::from(data), os_mode.into())
                    .await
                    .map(drop)
                    .map_err(|e| map_err(e, "put", path))
            }
        }
    }

    async fn put_writer(
        &self,
        path: &StorePath,
        opts: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>> {
        if opts.mode == PutMode::Create {
            return Err(Error::NotSupported {
                backend: BACKEND.into(),
                what: format!(
                    "create-only streaming write of {path} (a multipart upload cannot be made conditional); use put, or overwrite"
                ),
            });
        }
        Ok(Box::new(S3Writer {
            store: self.clone(),
            path: path.clone(),
            key: self.key(path)?,
            buf: Vec::new(),
            buffered: 0,
            upload: None,
            written: 0,
        }))
    }

    async fn get(&self, path: &StorePath, range: Option<Range<u64>>) -> Result<GetResult> {
        let key = self.key(path)?;
        if let Some(r) = &range {
            if r.start >= r.end {
                // An empty (or reversed) range: validate it against the object's size.
                let meta = self.head(path).await?;
                let range = clamp_range(path, Some(r.clone()), meta.size)?;
                return Ok(GetResult {
                    meta,
                    range,
                    stream: futures::stream::empty().boxed(),
                });
            }
        }
        let opts = GetOptions {
            range: range.clone().map(GetRange::Bounded),
            ..Default::default()
        };
        let res = match self.client.get_opts(&key, opts).await {
            Ok(res) => res,
            Err(e) => {
                let err = map_err(e, "get", path);
                // A range starting past the end: answer as every backend does.
                if range.is_some() && !err.is_not_found() {
                    if let Ok(meta) = self.head(path).await {
                        let range = clamp_range(path, range, meta.size)?;
                        if range.is_empty() {
                            return Ok(GetResult {
                                meta,
                                range,
                                stream: futures::stream::empty().boxed(),
                            });
                        }
                    }
                }
                return Err(err);
            }
        };
        let meta = self.meta(path, &res.meta);
        let want = clamp_range(path, range, meta.size)?;
        if res.range != want {
            return Err(Error::Backend {
                backend: BACKEND,
                context: format!("get {path}"),
                message: format!(
                    "asked for bytes {}..{}, got {}..{}",
                    want.start, want.end, res.range.start, res.range.end
                ),
                retryable: true,
            });
        }
        let p = path.clone();
        let stream = res
            .into_stream()
            .map_err(move |e| map_err(e, "read", &p))
            .boxed();
        Ok(GetResult {
            meta,
            range: want,
            stream,
        })
    }

    async fn head(&self, path: &StorePath) -> Result<ObjectMeta> {
        let key = self.key(path)?;
        let m = self
            .client
            .head(&key)
            .await
            .map_err(|e| map_err(e, "head", path))?;
        Ok(self.meta(path, &m))
    }

    async fn list(&self, prefix: Option<&StorePath>) -> Result<Vec<ObjectMeta>> {
        let (os_prefix, what) = match (prefix, &self.cfg.prefix) {
            (Some(p), _) => (Some(self.key(p)?), p.to_string()),
            (None, Some(sp)) => (
                Some(
                    OsPath::parse(sp.as_str())
                        .map_err(|e| Error::invalid("store path", sp.as_str(), e.to_string()))?,
                ),
                String::from("(all)"),
            ),
            (None, None) => (None, String::from("(all)")),
        };
        let ctx = |e| {
            let p = StorePath::new(what.clone()).ok();
            match p {
                Some(p) => map_err(e, "list", &p),
                None => Error::Backend {
                    backend: BACKEND,
                    context: "list the whole store".into(),
                    message: error_chain(&e),
                    retryable: is_retryable(&e),
                },
            }
        };
        let mut out = Vec::new();
        // `list` returns what lies under `prefix/`; the object named exactly `prefix`
        // belongs to the answer too.
        if let Some(p) = prefix {
            match self.head(p).await {
                Ok(m) => out.push(m),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut stream = self.client.list(os_prefix.as_ref());
        while let Some(item) = stream.next().await {
            let m = item.map_err(ctx)?;
            if let Some(sp) = self.store_path(&m.location) {
                out.push(self.meta(&sp, &m));
            }
        }
        out.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        out.dedup_by(|a, b| a.path == b.path);
        Ok(out)
    }

    async fn delete(&self, path: &StorePath) -> Result<()> {
        let key = self.key(path)?;
        match self.client.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err(e, "delete", path)),
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_create: true,
            atomic_create_streaming: false,
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
    fn display_and_keys() {
        let mut cfg = S3Config::new("bkt");
        cfg.endpoint = Some("http://127.0.0.1:1".into());
        cfg.allow_http = true;
        cfg.prefix = Some(StorePath::new("team/repo").unwrap());
        let s = S3Store::new(cfg).unwrap();
        assert_eq!(s.to_string(), "S3(bkt/team/repo)");
        let p = StorePath::new("wal/q?h#%25 x").unwrap();
        let k = s.key(&p).unwrap();
        assert_eq!(k.as_ref(), "team/repo/wal/q?h#%25 x");
        assert_eq!(s.store_path(&k), Some(p));
        assert_eq!(s.store_path(&OsPath::parse("team/repox/a").unwrap()), None);
        assert!(S3Store::new(S3Config::new("")).is_err());
    }

    #[derive(Debug)]
    struct Msg(&'static str);
    impl fmt::Display for Msg {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Msg {}

    #[test]
    fn error_classes() {
        use object_store::client::{HttpError, HttpErrorKind};
        let p = StorePath::new("k").unwrap();
        let generic =
            |source: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
                store: "S3",
                source,
            };
        let refused = HttpError::new(
            HttpErrorKind::Connect,
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert!(map_err(generic(Box::new(refused)), "get", &p).is_retryable());
        let decode = HttpError::new(HttpErrorKind::Decode, Msg("bad body"));
        assert!(!map_err(generic(Box::new(decode)), "get", &p).is_retryable());
        for (msg, retryable) in [
            (
                "Server returned non-2xx status code: 503 Service Unavailable: ",
                true,
            ),
            (
                "Server returned non-2xx status code: 500 Internal Server Error: ",
                true,
            ),
            (
                "Server returned non-2xx status code: 429 Too Many Requests: ",
                true,
            ),
            (
                "Server returned non-2xx status code: 400 Bad Request: ",
                false,
            ),
            (
                "Server returned error response: <Code>InternalError</Code>",
                true,
            ),
        ] {
            let e = map_err(generic(Box::new(Msg(msg))), "put", &p);
            assert_eq!(e.is_retryable(), retryable, "{msg}");
        }
        let nf = object_store::Error::NotFound {
            path: "x".into(),
            source: Box::new(Msg("404")),
        };
        assert!(map_err(nf, "get", &p).is_not_found());
        let pre = object_store::Error::Precondition {
            path: "x".into(),
            source: Box::new(Msg("412")),
        };
        assert!(matches!(
            map_err(pre, "put", &p),
            Error::AlreadyExists { .. }
        ));
        let denied = object_store::Error::PermissionDenied {
            path: "x".into(),
            source: Box::new(Msg("Server returned non-2xx status code: 503")),
        };
        assert!(!map_err(denied, "put", &p).is_retryable());
    }
}
