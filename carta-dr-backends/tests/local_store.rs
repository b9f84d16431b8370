//! LocalStore durability and atomicity specifics, on real files.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use carta_dr_backends::{LocalOptions, LocalStore};
use carta_dr_core::{Error, PutOptions, Store, StoreExt, StorePath};

const RACE_CHILD_ENV: &str = "CARTA_DR_LOCAL_RACE_CHILD";

fn p(s: &str) -> StorePath {
    StorePath::new(s).unwrap()
}

fn open_quiet(root: &Path) -> LocalStore {
    LocalStore::open_with(
        root,
        LocalOptions {
            cleanup_at_open: None,
        },
    )
    .unwrap()
}

/// Every regular file under `dir`, recursively.
fn files_on_disk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn temps_on_disk(dir: &Path) -> Vec<PathBuf> {
    files_on_disk(dir)
        .into_iter()
        .filter(|f| {
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".carta-tmp.")
        })
        .collect()
}

#[tokio::test]
async fn temp_files_are_never_listed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_quiet(dir.path());
    store
        .put(
            &p("a/done"),
            Bytes::from_static(b"x"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let mut w = store
        .put_writer(&p("a/pending"), PutOptions::create())
        .await
        .unwrap();
    w.write(Bytes::from(vec![7u8; 3 << 20])).await.unwrap();
    // The pending write's bytes are in a temporary file beside the final name.
    let temps = temps_on_disk(dir.path());
    assert_eq!(temps.len(), 1, "{temps:?}");
    assert_eq!(temps[0].parent().unwrap(), store.root().join("a"));
    assert!(std::fs::metadata(&temps[0]).unwrap().len() >= 3 << 20);
    assert_eq!(store.list_paths(None).await.unwrap(), [p("a/done")]);
    assert_eq!(
        store.list_paths(Some(&p("a"))).await.unwrap(),
        [p("a/done")]
    );
    assert!(store
        .head(&p("a/pending"))
        .await
        .unwrap_err()
        .is_not_found());
    w.complete().await.unwrap();
    assert!(temps_on_disk(dir.path()).is_empty());
    assert_eq!(
        store.list_paths(None).await.unwrap(),
        [p("a/done"), p("a/pending")]
    );
    assert_eq!(store.head(&p("a/pending")).await.unwrap().size, 3 << 20);
}

#[tokio::test]
async fn reserved_names_are_rejected_and_junk_on_disk_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_quiet(dir.path());
    let reserved = p("x/.carta-tmp.y");
    assert!(matches!(
        store
            .put(&reserved, Bytes::new(), PutOptions::default())
            .await,
        Err(Error::Invalid { .. })
    ));
    assert!(store
        .put_writer(&reserved, PutOptions::default())
        .await
        .is_err());
    // Files that are not valid store paths (a backslash, a control character) and a stray
    // reserved file are skipped by listings, not returned and not fatal.
    std::fs::write(dir.path().join("back\\slash"), b"1").unwrap();
    std::fs::write(dir.path().join("bell\u{7}"), b"1").unwrap();
    std::fs::write(dir.path().join(".carta-other"), b"1").unwrap();
    store
        .put(
            &p("good/one"),
            Bytes::from_static(b"1"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(store.list_paths(None).await.unwrap(), [p("good/one")]);
}

#[tokio::test]
async fn nested_paths_ranges_and_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_quiet(&dir.path().join("new/repo"));
    assert_eq!(
        store.to_string(),
        format!(
            "Local({})",
            dir.path()
                .canonicalize()
                .unwrap()
                .join("new/repo")
                .display()
        )
    );
    let data: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 251) as u8).collect();
    let path = p("deep/er/still/deeper/obj");
    store
        .put(&path, Bytes::from(data.clone()), PutOptions::create())
        .await
        .unwrap();
    assert_eq!(store.get_bytes(&path).await.unwrap(), data);
    let r = store.get_range(&path, 1_000_000..3_500_001).await.unwrap();
    assert_eq!(r, data[1_000_000..3_500_001]);
    assert_eq!(
        store
            .get_range(&path, (5 << 20) - 3..u64::MAX)
            .await
            .unwrap(),
        data[(5 << 20) - 3..]
    );
    assert!(matches!(
        store.get_range(&path, (5 << 20) + 1..(6 << 20)).await,
        Err(Error::InvalidInput { .. })
    ));
    // A directory is not an object; neither is a path under a file.
    for missing in ["deep/er", "deep/er/still/deeper/obj/below", "nope"] {
        assert!(store
            .get_bytes(&p(missing))
            .await
            .unwrap_err()
            .is_not_found());
        assert!(store.head(&p(missing)).await.unwrap_err().is_not_found());
        store.delete(&p(missing)).await.unwrap();
    }
    store.delete(&path).await.unwrap();
    store.delete(&path).await.unwrap();
    assert!(store.list(None).await.unwrap().is_empty());
    assert!(LocalStore::open("relative/repo").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_only_race_of_16_tasks_has_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_quiet(dir.path());
    for round in 0..20 {
        let path = p(&format!("race/{round}"));
        let tasks: Vec<_> = (0..16u8)
            .map(|i| {
                let store = store.clone();
                let path = path.clone();
                tokio::spawn(async move {
                    let body = Bytes::from(vec![i; 64 * 1024 + usize::from(i)]);
                    // Half the racers stream, half put whole objects.
                    let r = if i % 2 == 0 {
                        store.put(&path, body, PutOptions::create()).await
                    } else {
                        match store.put_writer(&path, PutOptions::create()).await {
                            Ok(mut w) => match w.write(body).await {
                                Ok(()) => w.complete().await,
                                Err(e) => Err(e),
                            },
                            Err(e) => Err(e),
                        }
                    };
                    (i, r)
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
        let w = winners[0];
        let got = store.get_bytes(&path).await.unwrap();
        assert_eq!(got.len(), 64 * 1024 + usize::from(w));
        assert!(got.iter().all(|&b| b == w));
    }
    assert!(temps_on_disk(dir.path()).is_empty());
}

/// The body of one racing process (see the test below); a no-op unless started by it.
#[tokio::test]
async fn race_child_process_entry() {
    let Ok(root) = std::env::var(RACE_CHILD_ENV) else {
        return;
    };
    let id: u8 = std::env::var("CARTA_DR_RACE_ID").unwrap().parse().unwrap();
    let store = open_quiet(Path::new(&root));
    // Wait for the parent's start signal: one line on stdin.
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let body = Bytes::from(vec![id; 200_000]);
    match store
        .put(&p("race/processes"), body, PutOptions::create())
        .await
    {
        Ok(()) => println!("RESULT won {id}"),
        Err(Error::AlreadyExists { .. }) => println!("RESULT lost {id}"),
        Err(e) => println!("RESULT error {e}"),
    }
}

#[tokio::test]
async fn create_only_race_of_16_processes_has_one_winner() {
    use std::io::{BufRead, Write};
    let dir = tempfile::tempdir().unwrap();
    let store = open_quiet(dir.path());
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..16)
        .map(|i| {
            Command::new(&exe)
                .args(["--exact", "race_child_process_entry", "--nocapture"])
                .env(RACE_CHILD_ENV, dir.path())
                .env("CARTA_DR_RACE_ID", i.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Release all of them at once.
    for c in &mut children {
        c.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let mut won = Vec::new();
    let mut lost = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        let result = out
            .stdout
            .lines()
            .map(Result::unwrap)
            .find(|l| l.starts_with("RESULT "))
            .expect("child reported no result");
        match result.split(' ').nth(1) {
            Some("won") => won.push(result.split(' ').nth(2).unwrap().parse::<u8>().unwrap()),
            Some("lost") => lost += 1,
            _ => panic!("child failed: {result}"),
        }
    }
    assert_eq!(won.len(), 1, "winners: {won:?}");
    assert_eq!(lost, 15);
    let got = store.get_bytes(&p("race/processes")).await.unwrap();
    assert_eq!(got.len(), 200_000);
    assert!(got.iter().all(|&b| b == won[0]));
    assert!(temps_on_disk(dir.path()).is_empty());
}

#[tokio::test]
async fn dropped_or_aborted_writers_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_quiet(dir.path());
    let mut w = store
        .put_writer(&p("d/dropped"), PutOptions::default())
        .await
        .unwrap();
    w.write(Bytes::from(vec![1u8; 3 << 20])).await.unwrap();
    drop(w);
    let mut w = store
        .put_writer(&p("d/aborted"), PutOptions::create())
        .await
        .unwrap();
    w.write(Bytes::from(vec![1u8; 3 << 20])).await.unwrap();
    w.abort().await.unwrap();
    assert!(store.list(None).await.unwrap().is_empty());
    assert!(
        files_on_disk(dir.path()).is_empty(),
        "{:?}",
        files_on_disk(dir.path())
    );
    // A create-only writer that loses leaves nothing either, and the winner is untouched.
    store
        .put(
            &p("d/taken"),
            Bytes::from_static(b"first"),
            PutOptions::create(),
        )
        .await
        .unwrap();
    let late = store.put_writer(&p("d/taken"), PutOptions::create()).await;
    assert!(matches!(late, Err(Error::AlreadyExists { .. })));
    assert_eq!(store.get_bytes(&p("d/taken")).await.unwrap(), "first");
    assert_eq!(files_on_disk(dir.path()).len(), 1);
}

#[tokio::test]
async fn cleanup_removes_dead_writers_temps_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_quiet(dir.path());
    // A writer that died: a process that has exited, and its leftover temporary file.
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    std::fs::create_dir_all(store.root().join("w")).unwrap();
    let dead_temp = store
        .root()
        .join(format!("w/.carta-tmp.seg.{dead_pid}.0123456789abcdef"));
    std::fs::write(&dead_temp, b"partial").unwrap();
    // A live writer (this process) in the middle of a write.
    let mut live = store
        .put_writer(&p("w/live"), PutOptions::create())
        .await
        .unwrap();
    live.write(Bytes::from(vec![5u8; 2 << 20])).await.unwrap();
    assert_eq!(temps_on_disk(dir.path()).len(), 2);

    let removed = store
        .cleanup_stale_temps(Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(!dead_temp.exists());
    let left = temps_on_disk(dir.path());
    assert_eq!(left.len(), 1);
    assert!(left[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .contains(&format!(".{}.", std::process::id())));
    // The live writer is unharmed.
    live.complete().await.unwrap();
    assert_eq!(store.head(&p("w/live")).await.unwrap().size, 2 << 20);

    // Past the age threshold, even a live pid's temporary file is stale.
    let mut old = store
        .put_writer(&p("w/old"), PutOptions::create())
        .await
        .unwrap();
    old.write(Bytes::from(vec![5u8; 2 << 20])).await.unwrap();
    assert_eq!(store.cleanup_stale_temps(Duration::ZERO).await.unwrap(), 1);
    assert!(temps_on_disk(dir.path()).is_empty());
    // Its writer then fails instead of publishing anything.
    assert!(old.complete().await.is_err());
    assert_eq!(store.list_paths(None).await.unwrap(), [p("w/live")]);
}

#[tokio::test]
async fn open_cleans_up_dead_writers_temps() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let dead_temp = dir
        .path()
        .join(format!(".carta-tmp.obj.{dead_pid}.0123456789abcdef"));
    std::fs::write(&dead_temp, b"partial").unwrap();
    let _store = LocalStore::open(dir.path()).unwrap();
    // The clean-up at open runs in the background: poll for its effect with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dead_temp.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "open did not clean up {}",
            dead_temp.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn overwrite_replaces_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_quiet(dir.path());
    let path = p("o/obj");
    store
        .put(
            &path,
            Bytes::from(vec![1u8; 1 << 20]),
            PutOptions::overwrite(),
        )
        .await
        .unwrap();
    // A reader holding the old object keeps reading it consistently across an overwrite.
    let old = store.get(&path, None).await.unwrap();
    store
        .put(
            &path,
            Bytes::from(vec![2u8; 2 << 20]),
            PutOptions::overwrite(),
        )
        .await
        .unwrap();
    let old = old.bytes().await.unwrap();
    assert!(old.len() == 1 << 20 && old.iter().all(|&b| b == 1));
    let new = store.get_bytes(&path).await.unwrap();
    assert!(new.len() == 2 << 20 && new.iter().all(|&b| b == 2));
    assert_eq!(files_on_disk(dir.path()).len(), 1);
}
