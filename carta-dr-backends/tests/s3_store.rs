//! S3Store specifics against the real S3-compatible server (moto_server, started by
//! `scripts/test.sh`; see `carta_dr_testkit::S3Env`). Each test works under its own prefix.

use std::sync::Arc;

use bytes::Bytes;
use carta_dr_backends::{open, S3Config, S3Store};
use carta_dr_core::{Error, PutOptions, Store, StoreExt, StorePath};
use carta_dr_testkit::S3Env;

fn p(s: &str) -> StorePath {
    StorePath::new(s).unwrap()
}

fn store(label: &str) -> Arc<dyn Store> {
    let url = S3Env::require().unique_url(label);
    open(&url).unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// Deterministic, non-repeating-looking bytes.
fn pattern(len: usize, seed: u8) -> Bytes {
    let mut x = 0x9e37_79b9_u32 ^ u32::from(seed);
    Bytes::from(
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect::<Vec<u8>>(),
    )
}

#[tokio::test]
async fn round_trip_ranges_and_display() {
    let s = store("s3-roundtrip");
    assert!(s.to_string().starts_with("S3("), "{s}");
    for (i, len) in [0usize, 1, 1000, 3 << 20].into_iter().enumerate() {
        let path = p(&format!("obj/{len}"));
        let body = pattern(len, i as u8);
        s.put(&path, body.clone(), PutOptions::default())
            .await
            .unwrap();
        assert_eq!(s.get_bytes(&path).await.unwrap(), body);
        assert_eq!(s.head(&path).await.unwrap().size, len as u64);
    }
    let big = pattern(3 << 20, 3);
    let path = p("obj/3145728");
    assert_eq!(
        s.get_range(&path, 1_000_000..2_000_000).await.unwrap(),
        big.slice(1_000_000..2_000_000)
    );
    assert_eq!(
        s.get_range(&path, (3 << 20) - 10..u64::MAX).await.unwrap(),
        big.slice((3 << 20) - 10..)
    );
    assert!(s.get_range(&path, 5..5).await.unwrap().is_empty());
    assert!(matches!(
        s.get_range(&path, (3 << 20) + 1..(4 << 20)).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        s.get_range(&p("obj/0"), 1..2).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(s.get_range(&p("obj/0"), 0..10).await.unwrap().is_empty());
}

#[tokio::test]
async fn create_only_conflict_is_already_exists() {
    let s = store("s3-create");
    let path = p("wal/000000010000000000000001");
    s.put(&path, Bytes::from_static(b"first"), PutOptions::create())
        .await
        .unwrap();
    let e = s
        .put(&path, Bytes::from_static(b"second"), PutOptions::create())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e:?}");
    assert_eq!(s.get_bytes(&path).await.unwrap(), "first");
    // Overwrite still replaces.
    s.put(&path, Bytes::from_static(b"third"), PutOptions::overwrite())
        .await
        .unwrap();
    assert_eq!(s.get_bytes(&path).await.unwrap(), "third");
    // Create-only streaming cannot be made atomic here, and says so.
    assert!(!s.capabilities().atomic_create_streaming);
    assert!(matches!(
        s.put_writer(&p("wal/other"), PutOptions::create()).await,
        Err(Error::NotSupported { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_only_race_of_16_has_one_winner() {
    let s = store("s3-race");
    for round in 0..5 {
        let path = p(&format!("race/{round}"));
        let tasks: Vec<_> = (0..16u8)
            .map(|i| {
                let s = s.clone();
                let path = path.clone();
                // Small bodies: the server's create-only check is atomic for them.
                tokio::spawn(async move {
                    (
                        i,
                        s.put(&path, pattern(4096, i), PutOptions::create()).await,
                    )
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (i, Ok(())) => winners.push(i),
                (_, Err(Error::AlreadyExists { .. })) => {}
                (_, Err(e)) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        assert_eq!(s.get_bytes(&path).await.unwrap(), pattern(4096, winners[0]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multipart_upload_of_40_mib() {
    let env = S3Env::require();
    let mut cfg = S3Config::new(&env.bucket);
    cfg.endpoint = Some(env.endpoint.clone());
    cfg.region = Some(env.region.clone());
    cfg.allow_http = true;
    cfg.prefix = Some(p(&format!("s3-multipart-{}", std::process::id())));
    cfg.part_size = 5 << 20;
    cfg.multipart_threshold = 8 << 20;
    let s = S3Store::new(cfg).unwrap();
    let body = pattern(40 << 20, 9);

    // Streamed, in uneven writes.
    let path = p("big/streamed");
    let mut w = s.put_writer(&path, PutOptions::overwrite()).await.unwrap();
    let mut off = 0;
    let mut step = 1 << 20;
    while off < body.len() {
        let end = (off + step).min(body.len());
        w.write(body.slice(off..end)).await.unwrap();
        off = end;
        step = step * 3 / 2;
    }
    assert!(
        s.head(&path).await.unwrap_err().is_not_found(),
        "visible before complete"
    );
    w.complete().await.unwrap();
    let meta = s.head(&path).await.unwrap();
    assert_eq!(meta.size, 40 << 20);
    // A multipart ETag ends in -<parts>: the object really went up in parts.
    let etag = meta.etag.unwrap_or_default();
    assert!(etag.trim_matches('"').contains('-'), "etag {etag}");
    assert_eq!(s.get_bytes(&path).await.unwrap(), body);

    // Whole, above the multipart threshold.
    let path = p("big/put");
    s.put(&path, body.clone(), PutOptions::overwrite())
        .await
        .unwrap();
    let etag = s.head(&path).await.unwrap().etag.unwrap_or_default();
    assert!(etag.trim_matches('"').contains('-'), "etag {etag}");
    assert_eq!(
        s.get_range(&path, 7..(33 << 20)).await.unwrap(),
        body.slice(7..33 << 20)
    );

    // An aborted and a dropped upload leave nothing visible.
    let mut w = s
        .put_writer(&p("big/aborted"), PutOptions::overwrite())
        .await
        .unwrap();
    w.write(body.slice(..12 << 20)).await.unwrap();
    w.abort().await.unwrap();
    let mut w = s
        .put_writer(&p("big/dropped"), PutOptions::overwrite())
        .await
        .unwrap();
    w.write(body.slice(..12 << 20)).await.unwrap();
    drop(w);
    assert_eq!(
        s.list_paths(None).await.unwrap(),
        [p("big/put"), p("big/streamed")]
    );
    s.delete_prefix(&p("big")).await.unwrap();
}

#[tokio::test]
async fn not_found_and_idempotent_delete() {
    let s = store("s3-notfound");
    let path = p("missing/object");
    assert!(s.get_bytes(&path).await.unwrap_err().is_not_found());
    assert!(s.head(&path).await.unwrap_err().is_not_found());
    assert!(!s.exists(&path).await.unwrap());
    s.delete(&path).await.unwrap();
    s.put(&path, Bytes::from_static(b"x"), PutOptions::default())
        .await
        .unwrap();
    s.delete(&path).await.unwrap();
    s.delete(&path).await.unwrap();
    assert!(s.head(&path).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn list_strips_the_prefix() {
    let env = S3Env::require();
    let url = env.unique_url("s3-list");
    let s = open(&url).unwrap();
    let prefix = url
        .strip_prefix(&format!("s3://{}/", env.bucket))
        .and_then(|r| r.split('?').next())
        .unwrap()
        .to_string();
    for name in ["a", "a/b", "a/c/d", "a-b", "ab", "z"] {
        s.put(
            &p(name),
            Bytes::from(name.to_string()),
            PutOptions::default(),
        )
        .await
        .unwrap();
    }
    // An object beside the store's prefix (same string prefix, other segment) is not listed.
    let beside = open(&format!(
        "s3://{}/{prefix}x?endpoint={}&region={}&allow_http=true",
        env.bucket, env.endpoint, env.region
    ))
    .unwrap();
    beside
        .put(&p("a/b"), Bytes::from_static(b"no"), PutOptions::default())
        .await
        .unwrap();

    let all: Vec<String> = s
        .list_paths(None)
        .await
        .unwrap()
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(all, ["a", "a-b", "a/b", "a/c/d", "ab", "z"]);
    let under_a: Vec<String> = s
        .list_paths(Some(&p("a")))
        .await
        .unwrap()
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(under_a, ["a", "a/b", "a/c/d"]);
    assert!(s.list(Some(&p("nothing"))).await.unwrap().is_empty());
    // The keys really carry the prefix.
    let root = open(&format!(
        "s3://{}?endpoint={}&region={}&allow_http=true",
        env.bucket, env.endpoint, env.region
    ))
    .unwrap();
    assert_eq!(
        root.get_bytes(&p(&format!("{prefix}/a/c/d")))
            .await
            .unwrap(),
        "a/c/d"
    );
    assert_eq!(
        root.get_bytes(&p(&format!("{prefix}x/a/b"))).await.unwrap(),
        "no"
    );
}

#[tokio::test]
async fn outage_is_a_retryable_error() {
    let env = S3Env::require();
    let proxy = carta_dr_testkit::TcpProxy::start(env.addr());
    let via = env.via(&proxy);
    let mut cfg = S3Config::new(&via.bucket);
    cfg.endpoint = Some(via.endpoint.clone());
    cfg.region = Some(via.region.clone());
    cfg.allow_http = true;
    cfg.prefix = Some(p(&format!("s3-outage-{}", std::process::id())));
    cfg.request_retries = 0;
    let s = S3Store::new(cfg).unwrap();
    let path = p("k");
    s.put(&path, Bytes::from_static(b"v"), PutOptions::default())
        .await
        .unwrap();
    proxy.set_down(true);
    let e = s.get_bytes(&path).await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert!(!e.is_not_found());
    proxy.set_down(false);
    assert_eq!(s.get_bytes(&path).await.unwrap(), "v");
}
