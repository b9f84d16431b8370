//! Faults around `wal-push` / `wal-fetch`: a push killed with SIGKILL mid-upload, a corrupt
//! object, an unreachable store, and the disk safety valve with a real PostgreSQL 15.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use carta_dr_testkit::{as_test_user, scratch_dir, test_user, ScratchDir};
use support::*;

const LONG: Duration = Duration::from_secs(240);

/// Writes a WAL segment of `size` bytes for `name` whose first page is a valid PostgreSQL 15
/// long header and whose rest is incompressible, into a `pg_wal`-like directory.
fn synthetic_segment(dir: &Path, name: &str, size: u64, sysid: u64) -> PathBuf {
    let seg: u64 = u64::from_str_radix(&name[16..24], 16).unwrap();
    let log: u64 = u64::from_str_radix(&name[8..16], 16).unwrap();
    let per_log = 0x1_0000_0000 / size;
    let pageaddr = (log * per_log + seg) * size;
    let mut v = vec![0u8; size as usize];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ sysid;
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let mut h = Vec::new();
    h.extend_from_slice(&0xD110u16.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&pageaddr.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sysid.to_le_bytes());
    h.extend_from_slice(&(size as u32).to_le_bytes());
    h.extend_from_slice(&8192u32.to_le_bytes());
    v[..h.len()].copy_from_slice(&h);
    let p = dir.join(name);
    std::fs::write(&p, &v).unwrap();
    if let Some(u) = test_user() {
        std::os::unix::fs::chown(&p, Some(u.uid), Some(u.gid)).unwrap();
    }
    p
}

/// Bytes the process wrote through write(2)-family calls (files and sockets).
fn wchar(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("wchar: ")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

fn segment_objects(repo: &Repo) -> u64 {
    let out = repo.run(&["wal-list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["timelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["segments"].as_u64().unwrap())
        .sum()
}

/// SIGKILL while the object is being uploaded: nothing half-written becomes visible, the next
/// attempt succeeds and the store holds exactly one good copy.
fn sigkill_mid_upload(repo: Repo, size: u64) {
    let dir = scratch_dir("kill");
    let wal = dir.subdir("pg_wal");
    let name = "000000010000000000000001";
    let seg = synthetic_segment(&wal, name, size, 7_000_000_000_000_000_001);

    let mut cmd = Command::new(bin());
    cmd.args(["wal-push", "--look-ahead", "0"])
        .arg(&seg)
        .env("CARTA_DR_REPO", &repo.url);
    as_test_user(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + LONG;
    // The upload has started once 32 MiB went out through write calls.
    while wchar(pid) < 32 << 20 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "wal-push finished before it could be killed mid-upload"
        );
        assert!(Instant::now() < deadline, "upload never started");
        std::thread::yield_now();
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert_eq!(
        segment_objects(&repo),
        0,
        "a killed upload left a visible object"
    );

    let out = repo.run(&["wal-push", "--look-ahead", "0", seg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(segment_objects(&repo), 1);
    let fetch = scratch_dir("fetch");
    assert!(fetch_back(&repo, name, fetch.path()) == std::fs::read(&seg).unwrap());
}

#[test]
fn local_sigkill_mid_upload_leaves_one_good_copy() {
    sigkill_mid_upload(Repo::local("wal-kill"), 1 << 30);
}

#[test]
fn s3_sigkill_mid_upload_leaves_one_good_copy() {
    sigkill_mid_upload(Repo::s3("wal-kill"), 256 << 20);
}

/// Damages the stored object of `name` (one bit in the middle).
fn corrupt_stored(repo: &Repo, name: &str) {
    let path = format!("wal/00000001/00000000/{name}");
    match repo.root() {
        Some(root) => {
            let f = root.join(&path);
            let len = std::fs::metadata(&f).unwrap().len();
            carta_dr_testkit::corrupt::flip_bit(&f, len / 2, 3);
        }
        None => {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                use carta_dr_core::{PutOptions, StoreExt, StorePath};
                let store = carta_dr_backends::open(&repo.url).unwrap();
                let p = StorePath::new(path).unwrap();
                let mut b = store.get_bytes(&p).await.unwrap().to_vec();
                let mid = b.len() / 2;
                b[mid] ^= 0x08;
                store
                    .put(&p, b.into(), PutOptions::overwrite())
                    .await
                    .unwrap();
            });
        }
    }
}

fn fetch_status(repo: &Repo, name: &str, dest: &Path) -> (Option<i32>, String) {
    let out = repo.run(&["wal-fetch", "--prefetch", "0", name, dest.to_str().unwrap()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A corrupt object makes wal-fetch exit with the abort status (> 125) and never write dest;
/// a missing one exits 1; an unreachable store exits with the abort status.
fn fetch_failures(repo: Repo) {
    let dir: ScratchDir = scratch_dir("fetchfail");
    let wal = dir.subdir("pg_wal");
    let name = "000000010000000000000003";
    let seg = synthetic_segment(&wal, name, 16 << 20, 7_000_000_000_000_000_002);
    let out = repo.run(&["wal-push", seg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dest = wal.join("RECOVERYXLOG");
    let (code, err) = fetch_status(&repo, "000000010000000000000004", &dest);
    assert_eq!(code, Some(1), "missing file: {err}");
    assert!(!dest.exists());

    corrupt_stored(&repo, name);
    let (code, err) = fetch_status(&repo, name, &dest);
    assert_eq!(code, Some(200), "corrupt object: {err}");
    assert!(err.contains(name) && err.contains("corrupt"), "{err}");
    assert!(!dest.exists(), "dest written despite a failed checksum");
    // Nothing else was left in the destination directory either.
    let leftovers: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy() != name)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Unreachable store: local root unreadable, or the S3 proxy down.
    match repo.root() {
        Some(root) => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o000)).unwrap();
            let (code, err) = fetch_status(&repo, name, &dest);
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
            assert_eq!(code, Some(200), "unreadable store: {err}");
        }
        None => {
            repo.set_down(true);
            let (code, err) = fetch_status(&repo, name, &dest);
            repo.set_down(false);
            assert_eq!(code, Some(200), "unreachable store: {err}");
        }
    }
    assert!(!dest.exists());
}

#[test]
fn local_corrupt_object_or_unreadable_store_aborts_recovery() {
    fetch_failures(Repo::local("wal-corrupt"));
}

#[test]
fn s3_corrupt_object_or_unreachable_store_aborts_recovery() {
    fetch_failures(Repo::s3("wal-corrupt"));
}

/// The disk safety valve: with the store down and the ready backlog over the limit, the oldest
/// segments are reported archived without being stored, loudly, and recorded as dropped;
/// once the store is back the records reach it and everything else is archived.
#[test]
fn safety_valve_drops_oldest_segments_and_records_them() {
    let repo = Repo::local("wal-valve");
    let conf_dir = scratch_dir("valve-conf");
    let conf = conf_dir.path().join("carta-dr.toml");
    std::fs::write(
        &conf,
        "[wal]\npush_look_ahead = 0\nmax_pg_wal_bytes = 50331648\nstore_attempts = 1\n",
    )
    .unwrap();
    if let Some(u) = test_user() {
        std::os::unix::fs::chown(&conf, Some(u.uid), Some(u.gid)).unwrap();
    }
    let pg = archiving_cluster(&repo, &format!("--config {}", conf.display()));
    switch_wal(&pg);
    wait_archived(&pg, LONG);
    let before = archiver_stats(&pg);

    repo.set_down(true);
    let mut during = Vec::new();
    for _ in 0..6 {
        during.push(switch_wal(&pg));
    }
    let spool_dropped = pg.data_dir().join("pg_wal/carta-dr-spool/dropped");
    let count_local = || {
        std::fs::read_dir(&spool_dropped)
            .map(|d| d.count())
            .unwrap_or(0)
    };
    // 6 x 16 MiB ready against a 48 MiB limit: the oldest 3 are dropped, the rest wait.
    pg.wait_until("the valve to drop three segments", LONG, || {
        archiver_stats(&pg).archived >= before.archived + 3
    });
    let f0 = archiver_stats(&pg).failed;
    pg.wait_until("archiving to stall on the rest", LONG, || {
        archiver_stats(&pg).failed > f0
    });
    assert_eq!(count_local(), 3);
    let st = archiver_stats(&pg);
    assert_eq!(st.archived, before.archived + 3, "{st:?}");
    assert_eq!(st.last_archived, during[2]);
    assert!(
        pg.log_tail(400).contains("DROPPED"),
        "no loud message in the server log"
    );

    repo.set_down(false);
    let last = switch_wal(&pg);
    pg.wait_until("the rest to be archived", LONG, || {
        archiver_stats(&pg).last_archived >= last
    });
    wait_archived(&pg, LONG);
    assert_eq!(
        count_local(),
        0,
        "local drop records were not moved to the store"
    );

    let out = repo.run(&["wal-list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dropped: Vec<String> = v["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dropped, during[..3].to_vec());
    let fetch = scratch_dir("fetch");
    for s in &during[..3] {
        let (code, _) = fetch_status(&repo, s, &fetch.path().join("x"));
        assert_eq!(code, Some(1), "{s} was dropped, yet is archived");
    }
    for s in during[3..].iter().chain(std::iter::once(&last)) {
        let orig = std::fs::read(pg.data_dir().join("pg_wal").join(s)).unwrap();
        assert!(fetch_back(&repo, s, fetch.path()) == orig, "{s}");
    }
    // The gap is visible in the listing.
    assert_eq!(v["timelines"][0]["gaps"][0]["count"], 3, "{v}");
}
