//! [`open`]: a store from a URL.
//!
//! | URL | store |
//! |---|---|
//! | `file:///var/lib/carta-dr/repo` | [`LocalStore`] rooted at that absolute path |
//! | `s3://bucket` or `s3://bucket/some/prefix?endpoint=http://127.0.0.1:9000&region=eu-west-1&allow_http=true` | `S3Store` (feature `s3`) |
//! | `memory://` | a fresh, empty [`MemoryStore`] |
//! | `memory://NAME` | the [`MemoryStore`] named `NAME` in this process (shared by every `open` of that URL) |
//!
//! `s3://` query parameters: `endpoint` (URL of an S3-compatible server), `region`,
//! `allow_http` (`true`/`false`; plain-HTTP endpoints on a loopback address are allowed
//! without it). Credentials are never part of the URL: they come from `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.

use std::sync::Arc;

use carta_dr_core::{Error, Result, Store};
use url::Url;

use crate::{LocalStore, MemoryStore};

fn bad(url: &str, reason: impl Into<String>) -> Error {
    Error::invalid("store URL", url, reason)
}

/// Opens the store a URL names (see the [module docs](self) for the forms).
///
/// ```
/// let store = carta_dr_backends::open("memory://").unwrap();
/// assert_eq!(store.to_string(), "Memory");
/// assert!(carta_dr_backends::open("file://relative/repo").is_err());
/// assert!(carta_dr_backends::open("ftp://host/repo").is_err());
/// ```
pub fn open(url: &str) -> Result<Arc<dyn Store>> {
    let parsed = Url::parse(url).map_err(|e| {
        let hint = if url.starts_with('/') {
            format!("{e}; for a directory write file://{url}")
        } else {
            e.to_string()
        };
        bad(url, hint)
    })?;
    match parsed.scheme() {
        "file" => open_file(url, &parsed),
        "memory" => open_memory(url, &parsed),
        "s3" => open_s3(url, &parsed),
        other => Err(bad(
            url,
            format!("unknown scheme {other:?}; expected file://, s3:// or memory://"),
        )),
    }
}

fn open_file(url: &str, parsed: &Url) -> Result<Arc<dyn Store>> {
    if let Some(host) = parsed
        .host_str()
        .filter(|h| !h.is_empty() && *h != "localhost")
    {
        return Err(bad(
            url,
            format!(
                "a file URL needs an absolute path, file:///path (three slashes); {host:?} was read as a host name"
            ),
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad(url, "a file URL takes no query or fragment"));
    }
    let path = parsed
        .to_file_path()
        .map_err(|()| bad(url, "not an absolute file path"))?;
    Ok(Arc::new(LocalStore::open(path)?))
}

fn open_memory(url: &str, parsed: &Url) -> Result<Arc<dyn Store>> {
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad(url, "a memory URL takes no query or fragment"));
    }
    let name = parsed.host_str().unwrap_or("");
    let rest = parsed.path().trim_start_matches('/');
    if !rest.is_empty() {
        return Err(bad(url, "a memory URL is memory:// or memory://NAME"));
    }
    Ok(Arc::new(if name.is_empty() {
        MemoryStore::new()
    } else {
        MemoryStore::named(name)
    }))
}

#[cfg(not(feature = "s3"))]
fn open_s3(url: &str, _parsed: &Url) -> Result<Arc<dyn Store>> {
    Err(Error::NotSupported {
        backend: "carta-dr-backends".into(),
        what: format!("{url}: built without the `s3` feature"),
    })
}

#[cfg(feature = "s3")]
fn open_s3(url: &str, parsed: &Url) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(crate::S3Store::new(s3_config(url, parsed)?)?))
}

/// The [`crate::S3Config`] an `s3://` URL describes.
#[cfg(feature = "s3")]
pub(crate) fn s3_config(url: &str, parsed: &Url) -> Result<crate::S3Config> {
    use carta_dr_core::StorePath;

    let bucket = parsed.host_str().unwrap_or("");
    if bucket.is_empty() {
        return Err(bad(url, "no bucket; expected s3://BUCKET[/PREFIX]"));
    }
    if parsed.username() != "" || parsed.password().is_some() || parsed.port().is_some() {
        return Err(bad(
            url,
            "s3://BUCKET takes no user, password or port (credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; the server from ?endpoint=)",
        ));
    }
    let mut cfg = crate::S3Config::new(bucket);
    let prefix = parsed.path().trim_matches('/');
    if !prefix.is_empty() {
        let decoded =
            percent_decode(prefix).ok_or_else(|| bad(url, "prefix is not valid UTF-8"))?;
        cfg.prefix =
            Some(StorePath::new(decoded).map_err(|e| bad(url, format!("bad prefix: {e}")))?);
    }
    let mut allow_http = None;
    for (k, v) in parsed.query_pairs() {
        match &*k {
            "endpoint" => {
                let ep =
                    Url::parse(&v).map_err(|e| bad(url, format!("bad endpoint {v:?}: {e}")))?;
                if !matches!(ep.scheme(), "http" | "https") {
                    return Err(bad(
                        url,
                        format!("endpoint {v:?} must be http:// or https://"),
                    ));
                }
                cfg.endpoint = Some(v.trim_end_matches('/').to_string());
            }
            "region" => cfg.region = Some(v.into_owned()),
            "allow_http" => {
                allow_http = Some(match &*v {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => {
                        return Err(bad(
                            url,
                            format!("allow_http={v:?}: expected true or false"),
                        ))
                    }
                })
            }
            other => {
                return Err(bad(
                    url,
                    format!("unknown parameter {other:?}; expected endpoint, region, allow_http"),
                ))
            }
        }
    }
    let http_endpoint = cfg
        .endpoint
        .as_deref()
        .and_then(|e| Url::parse(e).ok())
        .filter(|e| e.scheme() == "http");
    cfg.allow_http = match (allow_http, &http_endpoint) {
        (Some(a), _) => a,
        (None, Some(ep)) => is_loopback(ep),
        (None, None) => false,
    };
    if let Some(ep) = &http_endpoint {
        if !cfg.allow_http {
            return Err(bad(
                url,
                format!("endpoint {ep} is plain HTTP; add allow_http=true if that is intended"),
            ));
        }
    }
    Ok(cfg)
}

#[cfg(feature = "s3")]
fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

#[cfg(feature = "s3")]
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b.get(i).copied()?;
        if c == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        match open(url) {
            Ok(s) => panic!("{url} opened {s}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn memory_urls() {
        assert_eq!(open("memory://").unwrap().to_string(), "Memory");
        let a = open("memory://open-test").unwrap();
        let b = open("memory://open-test").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let p = carta_dr_core::StorePath::new("k").unwrap();
            a.put(&p, bytes::Bytes::from_static(b"v"), Default::default())
                .await
                .unwrap();
            assert!(b.head(&p).await.is_ok());
            assert!(open("memory://").unwrap().head(&p).await.is_err());
        });
        assert!(err("memory://x/y").contains("memory://NAME"));
    }

    #[test]
    fn file_urls() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/repo%20one", dir.path().display());
        let s = open(&url).unwrap();
        assert!(s.to_string().starts_with("Local(/"));
        assert!(s.to_string().ends_with("/repo one)"));
        assert!(dir.path().join("repo one").is_dir());
        assert!(err("file://relative/repo").contains("three slashes"));
        assert!(err("/abs/path").contains("file:///abs/path"));
        assert!(err("relative/path").contains("store URL"));
        assert!(err("gs://bucket").contains("unknown scheme"));
    }

    #[cfg(feature = "s3")]
    #[test]
    fn s3_urls() {
        let cfg = |u: &str| s3_config(u, &Url::parse(u).unwrap());
        let c = cfg("s3://bkt/a/b%20c/?endpoint=http://127.0.0.1:9000/&region=eu-west-1").unwrap();
        assert_eq!(c.bucket, "bkt");
        assert_eq!(c.prefix.as_ref().unwrap().as_str(), "a/b c");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert!(c.allow_http, "loopback http is allowed");
        let c = cfg("s3://bkt").unwrap();
        assert_eq!((c.prefix, c.endpoint, c.allow_http), (None, None, false));
        assert!(cfg("s3://bkt?endpoint=http://s3.example.com")
            .unwrap_err()
            .to_string()
            .contains("allow_http=true"));
        assert!(
            cfg("s3://bkt?endpoint=http://s3.example.com&allow_http=true")
                .unwrap()
                .allow_http
        );
        assert!(cfg("s3://bkt?bogus=1")
            .unwrap_err()
            .to_string()
            .contains("unknown parameter"));
        assert!(cfg("s3:///prefix")
            .unwrap_err()
            .to_string()
            .contains("no bucket"));
        assert!(cfg("s3://bkt/a//b")
            .unwrap_err()
            .to_string()
            .contains("bad prefix"));
        assert!(cfg("s3://bkt/a%ZZ").is_err());
        let s = open("s3://bkt/pre/fix?endpoint=http://127.0.0.1:1").unwrap();
        assert_eq!(s.to_string(), "S3(bkt/pre/fix)");
    }
}
