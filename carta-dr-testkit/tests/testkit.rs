//! Tests of the test harness itself, against real PostgreSQL 15 and the real moto_server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use carta_dr_testkit::{
    as_test_user, pg_bin_dir, reserve_port, scratch_dir, test_user, PgCluster, S3Env, TcpProxy,
};

#[test]
fn cluster_starts_answers_psql_and_survives_kill9() {
    let mut pg = PgCluster::builder().data_checksums(true).start();
    assert!(pg.is_running());
    assert_eq!(pg.psql("postgres", "SELECT 1 + 1"), "2");
    assert_eq!(pg.psql("postgres", "SHOW data_checksums"), "on");
    assert_eq!(pg.psql("postgres", "SHOW wal_level"), "replica");
    assert_eq!(
        pg.psql("postgres", "SHOW port"),
        pg.port().to_string(),
        "the server listens on the port it reports"
    );
    if let Some(user) = test_user() {
        assert_eq!(
            pg.psql("postgres", "SELECT current_setting('data_directory')"),
            pg.data_dir().display().to_string()
        );
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(pg.data_dir()).unwrap());
        assert_eq!(
            owner, user.uid,
            "the data directory belongs to the test user"
        );
    }

    pg.psql(
        "postgres",
        "CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 1000);",
    );
    let err = pg
        .try_psql("postgres", "SELECT * FROM missing_table")
        .unwrap_err();
    assert!(err.contains("missing_table"), "{err}");

    pg.kill9();
    assert!(!pg.is_running(), "kill9 leaves the cluster not running");
    assert!(
        pg.data_dir().join("postmaster.pid").exists(),
        "a crash leaves postmaster.pid behind"
    );
    pg.start();
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM t"),
        "1000",
        "committed rows survive the crash"
    );
    pg.stop();
    assert!(!pg.is_running());
    assert!(!pg.data_dir().join("postmaster.pid").exists());
}

#[test]
fn drop_stops_the_server_and_removes_its_directory() {
    let pg = PgCluster::builder().conf("work_mem", "8MB").start();
    assert_eq!(pg.psql("postgres", "SHOW work_mem"), "8MB");
    let dir = pg.data_dir().parent().unwrap().to_path_buf();
    let pid: i32 = std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    drop(pg);
    assert!(!dir.exists(), "{} removed", dir.display());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "postmaster {pid} still running: {stat}"
    );
}

#[test]
fn drop_during_a_panic_still_cleans_up() {
    let dir = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let pg = PgCluster::builder().start();
        *dir.lock().unwrap() = Some((pg.data_dir().parent().unwrap().to_path_buf(), pg.port()));
        panic!("test failure inside a test");
    });
    assert!(result.is_err());
    let (dir, port) = dir.into_inner().unwrap().unwrap();
    assert!(!dir.exists());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens on the dropped cluster's port"
    );
}

#[test]
fn custom_conf_values_and_wal_segment_size() {
    let archive = scratch_dir("archive");
    let pg = PgCluster::builder()
        .wal_segsize_mb(1)
        .conf("archive_mode", "on")
        .conf(
            "archive_command",
            &format!("cp %p {}/%f", archive.path().display()),
        )
        .start();
    assert_eq!(pg.psql("postgres", "SHOW wal_segment_size"), "1MB");
    pg.psql(
        "postgres",
        "SELECT pg_switch_wal(); CREATE TABLE a(); SELECT pg_switch_wal();",
    );
    pg.wait_until(
        "a WAL segment in the archive",
        Duration::from_secs(60),
        || {
            std::fs::read_dir(archive.path())
                .map(|d| d.count() > 0)
                .unwrap_or(false)
        },
    );
}

#[test]
fn standby_streams_from_its_primary() {
    let primary = PgCluster::builder().start();
    primary.psql(
        "postgres",
        "CREATE TABLE s(x int); INSERT INTO s VALUES (1);",
    );
    let standby = primary.create_standby(Some("standby_1"));
    assert_ne!(standby.port(), primary.port());
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "t");
    assert_eq!(
        primary.psql(
            "postgres",
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'standby_1'"
        ),
        "t"
    );
    primary.psql("postgres", "INSERT INTO s VALUES (2);");
    standby.wait_until("the insert to replicate", Duration::from_secs(30), || {
        standby
            .try_psql("postgres", "SELECT count(*) FROM s")
            .as_deref()
            == Ok("2")
    });
    standby.promote();
    standby.psql("postgres", "INSERT INTO s VALUES (3);");
}

#[test]
fn commands_run_as_the_test_user() {
    let mut cmd = std::process::Command::new("id");
    cmd.arg("-un");
    let out = as_test_user(&mut cmd).output().unwrap();
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match test_user() {
        Some(u) => assert_eq!(name, u.name),
        None => assert!(!name.is_empty()),
    }
    assert!(pg_bin_dir().join("initdb").is_file());
}

#[test]
fn reserved_ports_are_distinct_while_held() {
    let held: Vec<_> = (0..20).map(|_| reserve_port()).collect();
    let mut ports: Vec<u16> = held.iter().map(|p| p.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 20);
}

#[test]
fn s3_env_reaches_moto() {
    let s3 = S3Env::require();
    let other = S3Env::require();
    assert_ne!(
        s3.bucket, other.bucket,
        "each S3Env has a bucket of its own"
    );
    assert_ne!(
        Some(&s3.bucket),
        std::env::var("CARTA_DR_TEST_S3_BUCKET").ok().as_ref()
    );
    let url = s3.unique_url("testkit");
    assert!(url.starts_with(&format!("s3://{}/testkit-", s3.bucket)));
    // Put and get an object over plain HTTP (moto accepts unsigned requests).
    let key = url
        .strip_prefix(&format!("s3://{}/", s3.bucket))
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let put = http(
        &s3,
        &format!(
            "PUT /{}/{key}/obj HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            s3.bucket
        ),
    );
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");
    // A real S3 endpoint: an unknown bucket is a 404 NoSuchBucket.
    let missing = http(
        &s3,
        "GET /carta-dr-no-such-bucket HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        missing.starts_with("HTTP/1.1 404") && missing.contains("NoSuchBucket"),
        "{missing}"
    );
}

fn http(s3: &S3Env, request: &str) -> String {
    let mut s = TcpStream::connect(s3.addr()).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn proxy_forwards_and_goes_down_and_up() {
    // An echo server as the target.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in server.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let proxy = TcpProxy::start(target);
    let echo = |c: &mut TcpStream, msg: &[u8]| -> std::io::Result<Vec<u8>> {
        c.write_all(msg)?;
        let mut buf = vec![0u8; msg.len()];
        c.read_exact(&mut buf)?;
        Ok(buf)
    };

    let mut open = TcpStream::connect(proxy.addr()).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(echo(&mut open, b"ping").unwrap(), b"ping");

    proxy.set_down(true);
    assert!(proxy.is_down());
    assert!(
        echo(&mut open, b"ping").is_err(),
        "an open connection fails while the proxy is down"
    );
    let fresh = TcpStream::connect(proxy.addr()).and_then(|mut c| {
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        echo(&mut c, b"ping")
    });
    assert!(
        fresh.is_err(),
        "a new connection fails while down: {fresh:?}"
    );

    proxy.set_down(false);
    let mut again = TcpStream::connect(proxy.addr()).unwrap();
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(echo(&mut again, b"pong").unwrap(), b"pong");

    let via = S3Env {
        endpoint: "http://127.0.0.1:1".into(),
        bucket: "b".into(),
        region: "r".into(),
    }
    .via(&proxy);
    assert_eq!(via.endpoint, format!("http://{}", proxy.addr()));
}
