//! The local S3-compatible server (moto_server) that the test command starts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::proxy::TcpProxy;
use crate::user::unique_suffix;

/// What to do when the S3 server is missing.
const HOW_TO_GET_S3: &str = "S3 tests need the local S3-compatible server moto_server. Run the \
tests through the test command `scripts/test.sh`, which installs moto into target/moto-venv, \
starts it and exports CARTA_DR_TEST_S3_ENDPOINT, CARTA_DR_TEST_S3_BUCKET and the AWS_* variables. \
To run it by hand: `pip install 'moto[server]==5.2.5'`, `moto_server -H 127.0.0.1 -p 5000 &`, \
`curl -X PUT http://127.0.0.1:5000/carta-dr-test`, then export \
CARTA_DR_TEST_S3_ENDPOINT=http://127.0.0.1:5000 CARTA_DR_TEST_S3_BUCKET=carta-dr-test \
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true";

/// The S3-compatible server the test command started (moto_server on 127.0.0.1) and the bucket
/// it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Env {
    /// Endpoint URL, e.g. `http://127.0.0.1:5000`.
    pub endpoint: String,
    /// The bucket of this `S3Env`, created by [`S3Env::require`] (each call its own).
    pub bucket: String,
    /// Region name (`AWS_REGION`, default `us-east-1`).
    pub region: String,
}

impl S3Env {
    /// Reads `CARTA_DR_TEST_S3_ENDPOINT` and `CARTA_DR_TEST_S3_BUCKET` (set by `scripts/test.sh`,
    /// which also exports `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`), checks
    /// that the endpoint answers and that bucket exists, then creates a fresh bucket
    /// (`carta-dr-t-PID-N-RAND`) for this `S3Env`, so each test works in a bucket of its own.
    ///
    /// # Panics
    ///
    /// When the variables are unset or the server does not answer, saying to run
    /// `scripts/test.sh` or to `pip install 'moto[server]==5.2.5'`.
    pub fn require() -> S3Env {
        let endpoint = std::env::var("CARTA_DR_TEST_S3_ENDPOINT").ok();
        let bucket = std::env::var("CARTA_DR_TEST_S3_BUCKET").ok();
        let (Some(endpoint), Some(bucket)) = (endpoint, bucket) else {
            panic!(
                "CARTA_DR_TEST_S3_ENDPOINT / CARTA_DR_TEST_S3_BUCKET are not set. {HOW_TO_GET_S3}"
            );
        };
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| "us-east-1".to_string());
        let env = S3Env {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            bucket,
            region,
        };
        match env.request("HEAD", &env.bucket) {
            Ok(404) => panic!(
                "the S3 server at {} answers but bucket `{}` does not exist (HTTP 404). {HOW_TO_GET_S3}",
                env.endpoint, env.bucket
            ),
            Ok(_) => {}
            Err(e) => panic!(
                "the S3 server at {} does not answer: {e}. {HOW_TO_GET_S3}",
                env.endpoint
            ),
        }
        // A bucket of its own: moto lists a prefix by scanning every key of the bucket, so a
        // shared bucket makes every test's listings slower as the whole suite writes.
        let own = format!("carta-dr-t-{}", unique_suffix());
        match env.request("PUT", &own) {
            Ok(200) => S3Env { bucket: own, ..env },
            other => panic!(
                "cannot create test bucket {own} on {}: {other:?}. {HOW_TO_GET_S3}",
                env.endpoint
            ),
        }
    }

    /// Sends an unsigned `METHOD /BUCKET` (moto accepts those) and returns the HTTP status.
    fn request(&self, method: &str, bucket: &str) -> Result<u16, String> {
        let addr = endpoint_addr(&self.endpoint)?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let req = format!(
            "{method} /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            match s.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(format!("read from {addr}: {e}")),
            }
        }
        let head = String::from_utf8_lossy(&buf[..n]);
        if !head.starts_with("HTTP/1.") {
            return Err(format!("not an HTTP server at {addr} (answered {head:?})"));
        }
        head.get(9..12)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad HTTP status line {head:?}"))
    }

    /// A store URL under a prefix unique to this call (label, pid, counter, random):
    /// `s3://BUCKET/LABEL-PID-N-RAND?endpoint=...&region=...&allow_http=true`.
    pub fn unique_url(&self, label: &str) -> String {
        format!(
            "s3://{}/{label}-{}?endpoint={}&region={}&allow_http=true",
            self.bucket,
            unique_suffix(),
            self.endpoint,
            self.region
        )
    }

    /// The same bucket reached through `proxy` (which must point at this endpoint).
    pub fn via(&self, proxy: &TcpProxy) -> S3Env {
        S3Env {
            endpoint: format!("http://{}", proxy.addr()),
            ..self.clone()
        }
    }

    /// The endpoint's socket address (to put a [`TcpProxy`] in front of it).
    ///
    /// # Panics
    ///
    /// When the endpoint is not `http://HOST:PORT`.
    pub fn addr(&self) -> SocketAddr {
        endpoint_addr(&self.endpoint).unwrap_or_else(|e| panic!("{e}"))
    }
}

fn endpoint_addr(endpoint: &str) -> Result<SocketAddr, String> {
    let hostport = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| format!("endpoint {endpoint:?} is not http://HOST:PORT"))?
        .split('/')
        .next()
        .unwrap_or_default();
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("endpoint {endpoint:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("endpoint {endpoint:?} resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_urls_differ_and_carry_the_endpoint() {
        let env = S3Env {
            endpoint: "http://127.0.0.1:5000".into(),
            bucket: "b".into(),
            region: "us-east-1".into(),
        };
        let a = env.unique_url("wal");
        let b = env.unique_url("wal");
        assert_ne!(a, b);
        assert!(a.starts_with("s3://b/wal-"), "{a}");
        assert!(
            a.ends_with("?endpoint=http://127.0.0.1:5000&region=us-east-1&allow_http=true"),
            "{a}"
        );
        assert_eq!(env.addr(), "127.0.0.1:5000".parse().unwrap());
    }
}
