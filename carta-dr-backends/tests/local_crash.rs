//! The LocalStore crash test.
//!
//! A child process (this test binary again, selected by an environment variable) writes
//! self-verifying objects to a [`LocalStore`] in a loop: create-only objects of sizes from a
//! few bytes to a few MiB, half through `put` and half streamed through `put_writer`, plus
//! overwrites of a small set of shared objects. It reports each completed write on a pipe.
//! The parent SIGKILLs it at random moments (after a random number of reported writes plus a
//! random delay, so kills land mid-write, mid-fsync and mid-rename), at least 200 times.
//!
//! After every kill, and again at the end: every visible object decodes and verifies (none is
//! partial), and every write the child reported as complete is visible. Finally the stale
//! temporary files the kills left are counted, removed by `cleanup_stale_temps`, and the
//! listing is unchanged.
//!
//! Runs with `harness = false`: `main` is the parent unless the child variable is set.
//! `CARTA_DR_CRASH_KILLS` raises the number of kills (never below 200).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use carta_dr_backends::{LocalOptions, LocalStore};
use carta_dr_core::envelope::{open, seal, EnvelopeOptions};
use carta_dr_core::{PutOptions, Store, StoreExt, StorePath};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const CHILD_ENV: &str = "CARTA_DR_CRASH_CHILD_ROOT";
const GEN_ENV: &str = "CARTA_DR_CRASH_CHILD_GENERATION";
const MIN_KILLS: usize = 200;
const MAX_SIZE: f64 = 4.0 * 1024.0 * 1024.0;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // libtest's protocol, as test runners (cargo test, nextest) use it: `--list` names the
    // test; `--list --ignored` names the ignored ones, of which there are none; `--ignored`
    // runs only ignored tests.
    let ignored = args.iter().any(|a| a == "--ignored");
    if args.iter().any(|a| a == "--list") {
        if !ignored {
            println!("local_crash: test");
        }
        return;
    }
    if ignored {
        println!("running 0 tests (local_crash is not ignored)");
        return;
    }
    // Honour a name filter the way libtest does (substring match).
    if let Some(filter) = args.iter().find(|a| !a.starts_with('-')) {
        if !"local_crash".contains(filter.as_str()) {
            println!("running 0 tests (local_crash filtered out)");
            return;
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Ok(root) = std::env::var(CHILD_ENV) {
        let generation: u32 = std::env::var(GEN_ENV)
            .expect("generation")
            .parse()
            .expect("generation number");
        rt.block_on(child(PathBuf::from(root), generation));
    } else {
        rt.block_on(parent());
        println!("test local_crash ... ok");
    }
}

fn store_at(root: &Path) -> LocalStore {
    LocalStore::open_with(
        root,
        LocalOptions {
            cleanup_at_open: None,
        },
    )
    .expect("open the local store")
}

/// A self-verifying object holding `payload`: carta-dr's envelope (CRC-32C per chunk and a
/// trailer, so a truncated or partial object never opens).
fn encode(payload: &[u8]) -> Vec<u8> {
    let opts = EnvelopeOptions::uncompressed().with_chunk_size(256 * 1024);
    seal(&opts, payload).expect("seal")
}

/// Opens and verifies an object; `Err` says what is wrong.
fn verify(path: &StorePath, bytes: &[u8]) -> Result<usize, String> {
    open(path.as_str(), bytes, None)
        .map(|payload| payload.len())
        .map_err(|e| e.to_string())
}

/// The child: writes until killed, printing `DONE <path>` after each completed write.
async fn child(root: PathBuf, generation: u32) {
    let store = store_at(&root);
    let mut rng = StdRng::seed_from_u64(u64::from(generation) ^ 0x5eed_cafe);
    println!("READY");
    for k in 0u32.. {
        let size = MAX_SIZE.powf(rng.gen::<f64>()) as usize; // log-uniform, 1 B .. 4 MiB
        let mut payload = vec![0u8; size];
        rng.fill_bytes(&mut payload);
        let overwrite = k % 4 == 3;
        let path = if overwrite {
            StorePath::new(format!("shared/{}", k % 8)).expect("path")
        } else {
            StorePath::new(format!("c/{generation:04}/{k:05}")).expect("path")
        };
        let body = encode(&payload);
        let opts = if overwrite {
            PutOptions::overwrite()
        } else {
            PutOptions::create()
        };
        if k % 2 == 0 {
            store
                .put(&path, Bytes::from(body), opts)
                .await
                .unwrap_or_else(|e| panic!("put {path}: {e}"));
        } else {
            let mut w = store
                .put_writer(&path, opts)
                .await
                .unwrap_or_else(|e| panic!("put_writer {path}: {e}"));
            let body = Bytes::from(body);
            let mut off = 0;
            while off < body.len() {
                let end = (off + 256 * 1024).min(body.len());
                w.write(body.slice(off..end))
                    .await
                    .unwrap_or_else(|e| panic!("write {path}: {e}"));
                off = end;
            }
            w.complete()
                .await
                .unwrap_or_else(|e| panic!("complete {path}: {e}"));
        }
        println!("DONE {path}");
    }
}

/// Verifies every object under `prefix`; returns the paths seen.
async fn verify_all(store: &LocalStore, prefix: Option<&StorePath>) -> BTreeSet<StorePath> {
    let mut seen = BTreeSet::new();
    for meta in store.list(prefix).await.expect("list") {
        let bytes = store
            .get_bytes(&meta.path)
            .await
            .unwrap_or_else(|e| panic!("read {}: {e}", meta.path));
        assert_eq!(bytes.len() as u64, meta.size, "{}: size changed", meta.path);
        if let Err(e) = verify(&meta.path, &bytes) {
            panic!(
                "{} is visible but does not verify ({} bytes): {e}",
                meta.path,
                bytes.len()
            );
        }
        seen.insert(meta.path);
    }
    seen
}

fn temps_on_disk(dir: &Path) -> usize {
    let mut n = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("dir entry");
            if e.file_type().expect("file type").is_dir() {
                dirs.push(e.path());
            } else if e.file_name().to_string_lossy().starts_with(".carta-tmp.") {
                n += 1;
            }
        }
    }
    n
}

async fn parent() {
    let kills = std::env::var("CARTA_DR_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MIN_KILLS)
        .max(MIN_KILLS);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    let store = store_at(&root);
    let exe = std::env::current_exe().expect("current_exe");
    let mut rng = rand::thread_rng();
    let mut acknowledged = BTreeSet::new();
    let mut killed_with_temp = 0usize;
    let started = Instant::now();

    let mut unreported = 0usize;
    for generation in 0..kills {
        let temps_before = temps_on_disk(&root);
        let mut child = Command::new(&exe)
            .env(CHILD_ENV, &root)
            .env(GEN_ENV, generation.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the writer");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next_line = || {
            lines
                .next()
                .map(|l| l.expect("read the writer's report"))
                .unwrap_or_else(|| panic!("writer {generation} ended early"))
        };
        assert_eq!(next_line(), "READY");
        // Let it complete a random number of writes, then kill it after a random delay.
        let wait_for = rng.gen_range(0..4);
        let mut done = Vec::new();
        while done.len() < wait_for {
            let l = next_line();
            done.push(l);
        }
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..20_000)));
        // SAFETY: signalling our own child process by its pid.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill failed");
        let status = child.wait().expect("wait for the writer");
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "writer {generation} exited on its own ({status}); it must only stop when killed"
        );
        // Writes it reported before it died must be visible.

        for l in lines {
            done.push(l.expect("read the writer's report"));
        }
        for l in done {
            let p = l
                .strip_prefix("DONE ")
                .unwrap_or_else(|| panic!("odd report {l:?}"));
            acknowledged.insert(StorePath::new(p).expect("reported path"));
        }
        if temps_on_disk(&root) > temps_before {
            killed_with_temp += 1;
        }
        let prefix = StorePath::new(format!("c/{generation:04}")).expect("path");
        let seen = verify_all(&store, Some(&prefix)).await;
        for p in acknowledged.iter().filter(|p| p.starts_with(&prefix)) {
            assert!(
                seen.contains(p),
                "{p} was reported complete but is not visible"
            );
        }
        unreported += seen.iter().filter(|p| !acknowledged.contains(*p)).count();
        verify_all(&store, Some(&StorePath::new("shared").expect("path"))).await;
    }

    let visible = verify_all(&store, None).await;
    for p in &acknowledged {
        assert!(visible.contains(p), "{p} was reported complete but is gone");
    }
    let temps = temps_on_disk(&root);
    let cleaned = store
        .cleanup_stale_temps(Duration::from_secs(3600))
        .await
        .expect("cleanup");
    assert_eq!(
        cleaned, temps,
        "every writer is dead, so every temp is stale"
    );
    assert_eq!(temps_on_disk(&root), 0);
    assert_eq!(
        verify_all(&store, None).await,
        visible,
        "clean-up changed the listing"
    );
    println!(
        "local_crash: {kills} kills in {:.1?}; {} writes acknowledged, {} objects visible and verified, \
         {unreported} visible before their writer could report them, \
         {killed_with_temp} kills left a temporary file (killed mid-write), {cleaned} temporary files cleaned",
        started.elapsed(),
        acknowledged.len(),
        visible.len(),
    );
}
