//! End-to-end WAL archiving benchmark: `carta-dr wal-push` / `wal-fetch` against `cp`+`fsync`
//! (the floor) and pgBackRest's `archive-push` / `archive-get`, on 64 real 16 MiB segments
//! that a PostgreSQL 15 cluster wrote under pgbench.
//!
//! ```text
//! cargo build --release -p carta-dr-cli
//! cargo run --release -p carta-dr-benches --bin wal_bench [-- --segments 64]
//! ```
//!
//! Every tool is called once per segment, the way PostgreSQL calls `archive_command` and
//! `restore_command`: from the data directory, with `pg_wal/NAME`, one after the other, each
//! call waiting for the previous one, PostgreSQL's `.ready` renamed to `.done` after each
//! successful push. Each mode runs in a child process of this program so that the peak RSS
//! of the commands it started (`getrusage(RUSAGE_CHILDREN)`) is per mode. Compression is
//! zstd level 1 for both tools; repositories are local directories; commands run as the
//! unprivileged test user.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use carta_dr_testkit::{as_test_user, scratch_dir, test_user, PgCluster};

const SEG: u64 = 16 << 20;

fn carta_dr() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe.parent().expect("exe dir").join("carta-dr");
    if !p.is_file() {
        panic!(
            "{} is missing: run `cargo build --release -p carta-dr-cli` first",
            p.display()
        );
    }
    p
}

fn chown_test_user(p: &Path) {
    if let Some(u) = test_user() {
        let _ = std::os::unix::fs::chown(p, Some(u.uid), Some(u.gid));
    }
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One mode's result.
struct Row {
    name: String,
    secs: f64,
    n: usize,
    peak_rss_kib: i64,
}

/// Runs a mode in a child process (this binary, `--mode ...`) and reads its report.
fn run_mode(args: &[String]) -> Row {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "mode {args:?} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let mut f = line.split_whitespace();
    Row {
        name: args[1].clone(),
        secs: f.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
        n: f.next().and_then(|v| v.parse().ok()).unwrap_or(0),
        peak_rss_kib: f.next().and_then(|v| v.parse().ok()).unwrap_or(0),
    }
}

fn children_maxrss_kib() -> i64 {
    // SAFETY: getrusage writes into the struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru.ru_maxrss
    }
}

/// A command run as the test user in `data` (the data directory).
fn cmd_in(data: &Path, prog: &Path) -> Command {
    let mut c = Command::new(prog);
    c.current_dir(data).stdout(Stdio::null());
    as_test_user(&mut c);
    c
}

fn set_ready(data: &Path, names: &[String]) {
    let st = data.join("pg_wal/archive_status");
    for e in std::fs::read_dir(&st).unwrap().flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    for n in names {
        let p = st.join(format!("{n}.ready"));
        std::fs::write(&p, b"").unwrap();
        chown_test_user(&p);
    }
}

fn mark_done(data: &Path, name: &str) {
    let st = data.join("pg_wal/archive_status");
    let _ = std::fs::rename(
        st.join(format!("{name}.ready")),
        st.join(format!("{name}.done")),
    );
}

/// `--mode NAME DATA REPO_OR_CONF`: runs one mode over the segments listed in DATA/segments.
fn mode_main(args: &[String]) {
    let mode = args[1].as_str();
    let data = PathBuf::from(&args[2]);
    let target = PathBuf::from(&args[3]);
    let names: Vec<String> = std::fs::read_to_string(data.join("../segments.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let bin = carta_dr();
    let pgbr = PathBuf::from("/usr/bin/pgbackrest");
    let repo = format!("file://{}", target.display());
    let push = mode.ends_with("push") || mode.starts_with("push");
    if push {
        set_ready(&data, &names);
    }
    let started = Instant::now();
    for n in &names {
        let wal = format!("pg_wal/{n}");
        if !push {
            // PostgreSQL removes the destination before it runs restore_command
            // (`RestoreArchivedFile` in xlogarchive.c), so every tool writes a new file.
            let _ = std::fs::remove_file(data.join("pg_wal/RECOVERYXLOG"));
        }
        let mut c = match mode {
            "push-carta" | "push-carta-lookahead" => {
                let mut c = cmd_in(&data, &bin);
                c.args(["wal-push", &wal])
                    .env("CARTA_DR_REPO", &repo)
                    .env("CARTA_DR_CONFIG", data.join("../carta-dr.toml"));
                if mode == "push-carta" {
                    c.args(["--look-ahead", "0"]);
                }
                c
            }
            "push-cp-fsync" => {
                let mut c = cmd_in(&data, Path::new("/bin/sh"));
                c.arg("-c").arg(format!(
                    "cp {wal} {dst}/{n} && sync {dst}/{n}",
                    dst = target.display()
                ));
                c
            }
            "push-pgbackrest" | "push-pgbackrest-async" => {
                let mut c = cmd_in(&data, &pgbr);
                c.arg(format!("--config={}", target.display()))
                    .arg("--stanza=bench")
                    .arg(format!(
                        "--archive-async={}",
                        if mode.ends_with("async") { "y" } else { "n" }
                    ))
                    .args(["archive-push", &wal]);
                c
            }
            "fetch-carta" | "fetch-carta-prefetch" => {
                let mut c = cmd_in(&data, &bin);
                c.args(["wal-fetch", n, "pg_wal/RECOVERYXLOG"])
                    .env("CARTA_DR_REPO", &repo)
                    .env("CARTA_DR_CONFIG", data.join("../carta-dr.toml"));
                if mode == "fetch-carta" {
                    c.args(["--prefetch", "0"]);
                }
                c
            }
            "fetch-pgbackrest" | "fetch-pgbackrest-async" => {
                let mut c = cmd_in(&data, &pgbr);
                c.arg(format!("--config={}", target.display()))
                    .arg("--stanza=bench")
                    .arg(format!(
                        "--archive-async={}",
                        if mode.ends_with("async") { "y" } else { "n" }
                    ))
                    .args(["archive-get", n, "pg_wal/RECOVERYXLOG"]);
                c
            }
            other => panic!("unknown mode {other}"),
        };
        run_ok(&mut c, &format!("{mode} {n}"));
        if push {
            mark_done(&data, n);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{secs} {} {}", names.len(), children_maxrss_kib());
}

fn median_ms(mut f: impl FnMut(), n: usize) -> f64 {
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v[n / 2].as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--mode") {
        return mode_main(&args);
    }
    let count: usize = args
        .iter()
        .position(|a| a == "--segments")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let bin = carta_dr();
    if !Path::new("/usr/bin/pgbackrest").is_file() {
        panic!("pgbackrest is missing: apt-get install -y pgbackrest");
    }

    // 1. Real segments from PostgreSQL 15 under pgbench.
    eprintln!("generating {count} segments with PostgreSQL 15 + pgbench ...");
    let work = scratch_dir("wal-bench");
    let mut pg = PgCluster::builder()
        .label("wal-bench")
        .conf("wal_keep_size", "8GB")
        .conf("max_wal_size", "8GB")
        .conf("checkpoint_timeout", "1h")
        .start();
    let first: String = pg.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    // Scale 4 per wanted segment: the load writes about a segment per unit of scale.
    let scale = (count as u64 * 4 / 5).max(4).to_string();
    run_ok(
        pg.command("pgbench").args(["-i", "-s", &scale, "-q"]),
        "pgbench -i",
    );
    loop {
        run_ok(
            pg.command("pgbench")
                .args(["-n", "-c", "2", "-T", "5", "-M", "prepared"]),
            "pgbench",
        );
        let cur = pg.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
        let segno = |s: &str| {
            u64::from_str_radix(&s[16..24], 16).unwrap()
                + (u64::from_str_radix(&s[8..16], 16).unwrap() << 8)
        };
        if segno(&cur) > segno(&first) + count as u64 + 1 {
            break;
        }
    }
    // Register the stanza while the server runs, then stop it: the benchmark reads files only.
    let pgbr_repo = work.subdir("pgbackrest-repo");
    let pgbr_spool = work.subdir("pgbackrest-spool");
    let pgbr_conf = work.path().join("pgbackrest.conf");
    let (pg_data, pg_port, pg_sock) = (
        pg.data_dir().display().to_string(),
        pg.port(),
        pg.socket_dir().display().to_string(),
    );
    let write_pgbr_conf = |repo: &Path| {
        std::fs::write(
            &pgbr_conf,
            format!(
                "[global]\nrepo1-path={}\nspool-path={}\nlock-path={}\nlog-path={}\n\
                 log-level-console=warn\nlog-level-file=off\ncompress-type=zst\n\
                 compress-level=1\nprocess-max=2\narchive-check=n\nstart-fast=y\n\
                 archive-get-queue-max=256MiB\nrepo1-retention-full=1\n\n[bench]\n\
                 pg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user=postgres\n",
                repo.display(),
                pgbr_spool.display(),
                pgbr_spool.display(),
                pgbr_spool.display(),
                pg_data,
                pg_port,
                pg_sock
            ),
        )
        .unwrap();
        chown_test_user(&pgbr_conf);
    };
    write_pgbr_conf(&pgbr_repo);
    run_ok(
        as_test_user(
            Command::new("pgbackrest")
                .arg(format!("--config={}", pgbr_conf.display()))
                .args(["--stanza=bench", "stanza-create"]),
        ),
        "pgbackrest stanza-create",
    );
    pg.stop();
    let data = pg.data_dir().to_path_buf();
    let names: Vec<String> = {
        let mut v: Vec<String> = std::fs::read_dir(data.join("pg_wal"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 24 && n.as_str() >= first.as_str())
            .collect();
        v.sort();
        v.truncate(count);
        v
    };
    assert_eq!(names.len(), count, "not enough segments");
    std::fs::write(data.join("../segments.txt"), names.join("\n")).unwrap();
    let carta_conf = data.join("../carta-dr.toml");
    std::fs::write(
        &carta_conf,
        "compression_level = 1\n[wal]\npush_look_ahead = 8\npush_concurrency = 2\n\
         fetch_prefetch = 8\nfetch_concurrency = 2\n",
    )
    .unwrap();
    chown_test_user(&carta_conf);
    let raw_bytes = count as u64 * SEG;

    // 2. Push modes, each into a fresh repository.
    let mut rows = Vec::new();
    let d = data.display().to_string();
    let fresh = |label: &str| work.subdir(label).display().to_string();
    let carta_repo = fresh("carta-repo");
    rows.push(run_mode(&[
        "--mode".into(),
        "push-carta".into(),
        d.clone(),
        carta_repo.clone(),
    ]));
    rows.push(run_mode(&[
        "--mode".into(),
        "push-carta-lookahead".into(),
        d.clone(),
        fresh("carta-repo-la"),
    ]));
    rows.push(run_mode(&[
        "--mode".into(),
        "push-cp-fsync".into(),
        d.clone(),
        fresh("cp-repo"),
    ]));
    rows.push(run_mode(&[
        "--mode".into(),
        "push-pgbackrest".into(),
        d.clone(),
        pgbr_conf.display().to_string(),
    ]));
    // Async into a second stanza repository (the first already holds every segment).
    let pgbr_repo2 = work.subdir("pgbackrest-repo2");
    write_pgbr_conf(&pgbr_repo2);
    pg.start();
    run_ok(
        as_test_user(
            Command::new("pgbackrest")
                .arg(format!("--config={}", pgbr_conf.display()))
                .args(["--stanza=bench", "stanza-create"]),
        ),
        "pgbackrest stanza-create (2)",
    );
    pg.stop();
    rows.push(run_mode(&[
        "--mode".into(),
        "push-pgbackrest-async".into(),
        d.clone(),
        pgbr_conf.display().to_string(),
    ]));

    // 3. Fetch modes (carta-dr from its first repository, pgBackRest from its second).
    for e in std::fs::read_dir(data.join("pg_wal/archive_status"))
        .unwrap()
        .flatten()
    {
        let _ = std::fs::remove_file(e.path());
    }
    rows.push(run_mode(&[
        "--mode".into(),
        "fetch-carta".into(),
        d.clone(),
        carta_repo.clone(),
    ]));
    rows.push(run_mode(&[
        "--mode".into(),
        "fetch-carta-prefetch".into(),
        d.clone(),
        carta_repo.clone(),
    ]));
    rows.push(run_mode(&[
        "--mode".into(),
        "fetch-pgbackrest".into(),
        d.clone(),
        pgbr_conf.display().to_string(),
    ]));
    rows.push(run_mode(&[
        "--mode".into(),
        "fetch-pgbackrest-async".into(),
        d.clone(),
        pgbr_conf.display().to_string(),
    ]));

    // 4. Start-up: --version, and wal-push of an already-archived segment.
    let version_ms = median_ms(
        || {
            let _ = Command::new(&bin)
                .arg("--version")
                .stdout(Stdio::null())
                .status();
        },
        101,
    );
    // Already archived, as PostgreSQL meets it after a look-ahead push: the spool marker.
    let la_repo = fresh("carta-repo-startup");
    set_ready(&data, &names[..9.min(names.len())]);
    run_ok(
        cmd_in(&data, &bin)
            .args(["wal-push", &format!("pg_wal/{}", names[0])])
            .env("CARTA_DR_REPO", format!("file://{la_repo}"))
            .env("CARTA_DR_CONFIG", &carta_conf),
        "wal-push with look-ahead",
    );
    let again_ms = median_ms(
        || {
            run_ok(
                cmd_in(&data, &bin)
                    .args(["wal-push", &format!("pg_wal/{}", names[1])])
                    .env("CARTA_DR_REPO", format!("file://{la_repo}"))
                    .env("CARTA_DR_CONFIG", &carta_conf),
                "wal-push again",
            )
        },
        51,
    );
    // Already archived without a marker: the stored copy is read back and compared.
    let again_nomarker_ms = median_ms(
        || {
            run_ok(
                cmd_in(&data, &bin)
                    .args([
                        "wal-push",
                        "--look-ahead",
                        "0",
                        &format!("pg_wal/{}", names[0]),
                    ])
                    .env("CARTA_DR_REPO", format!("file://{carta_repo}"))
                    .env("CARTA_DR_CONFIG", &carta_conf),
                "wal-push again (no marker)",
            )
        },
        21,
    );
    let true_ms = median_ms(
        || {
            let _ = Command::new("/bin/true").status();
        },
        101,
    );
    let pgbr_version_ms = median_ms(
        || {
            let _ = Command::new("pgbackrest")
                .arg("version")
                .stdout(Stdio::null())
                .status();
        },
        101,
    );

    let stored = |dir: &str| -> u64 {
        let out = Command::new("du").args(["-sb", dir]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };

    let mut t = String::new();
    writeln!(
        t,
        "\n{count} x 16 MiB real PostgreSQL 15 segments ({} MiB), zstd level 1, local repositories, 2 cores\n",
        raw_bytes >> 20
    )
    .unwrap();
    writeln!(
        t,
        "{:<24} {:>9} {:>10} {:>10} {:>12}",
        "mode", "seconds", "segments/s", "MB/s", "peak RSS MiB"
    )
    .unwrap();
    for r in &rows {
        writeln!(
            t,
            "{:<24} {:>9.2} {:>10.1} {:>10.1} {:>12.1}",
            r.name,
            r.secs,
            r.n as f64 / r.secs,
            (r.n as u64 * SEG) as f64 / 1e6 / r.secs,
            r.peak_rss_kib as f64 / 1024.0
        )
        .unwrap();
    }
    let by = |n: &str| {
        rows.iter()
            .find(|r| r.name == n)
            .map(|r| r.secs)
            .unwrap_or(f64::NAN)
    };
    writeln!(t, "\nratios (time of pgBackRest / time of carta-dr):").unwrap();
    writeln!(
        t,
        "  push sync:   {:.2}x",
        by("push-pgbackrest") / by("push-carta")
    )
    .unwrap();
    writeln!(
        t,
        "  push async:  {:.2}x (carta-dr look-ahead vs pgBackRest archive-async)",
        by("push-pgbackrest-async") / by("push-carta-lookahead")
    )
    .unwrap();
    writeln!(
        t,
        "  fetch sync:  {:.2}x",
        by("fetch-pgbackrest") / by("fetch-carta")
    )
    .unwrap();
    writeln!(
        t,
        "  fetch async: {:.2}x (carta-dr prefetch vs pgBackRest archive-async)",
        by("fetch-pgbackrest-async") / by("fetch-carta-prefetch")
    )
    .unwrap();
    writeln!(
        t,
        "  floor: cp+fsync is {:.2}x faster than carta-dr push",
        by("push-carta") / by("push-cp-fsync")
    )
    .unwrap();
    writeln!(
        t,
        "\nstart-up (median): carta-dr --version {version_ms:.2} ms; wal-push of a segment \
         already pushed by look-ahead {again_ms:.2} ms, already archived without a spool \
         marker {again_nomarker_ms:.2} ms; pgbackrest version {pgbr_version_ms:.2} ms; /bin/true {true_ms:.2} ms"
    )
    .unwrap();
    writeln!(
        t,
        "stored bytes: carta-dr {} MiB, pgBackRest {} MiB",
        stored(&carta_repo) >> 20,
        stored(&pgbr_repo.display().to_string()) >> 20
    )
    .unwrap();
    println!("{t}");
}
