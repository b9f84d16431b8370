//! End-to-end WAL archiving benchmark: `carta-dr wal-push` / `wal-fetch` against `cp`+`fsync`
//! (the floor) and pgBackRest's `archive-push` / `archive-get`, on real 16 MiB segments that a
//! PostgreSQL 15 cluster wrote under pgbench.
//!
//! ```text
//! cargo build --release -p carta-dr-cli -p carta-dr-benches
//! target/release/wal_bench [--segments 64] [--rounds 3] [--data DIR] [--modes push-carta,...]
//! ```
//!
//! Every tool is called once per segment, the way PostgreSQL calls `archive_command` and
//! `restore_command`: from the data directory, with `pg_wal/NAME`, one after the other, each
//! call waiting for the previous one, PostgreSQL's `.ready` renamed to `.done` after each
//! successful push. Each mode runs in a child process of this program so that the peak RSS
//! of the commands it started (`getrusage(RUSAGE_CHILDREN)`) is per mode. Compression is
//! zstd level 1 for both tools; repositories are local directories; commands run as the
//! unprivileged test user.
//!
//! Each round runs every mode once, the tools alternating, into fresh repositories and
//! spools (no acknowledgement, marker or prefetched copy of an earlier run is reused); the
//! report shows the median of the rounds. With `--data DIR` the generated segments are kept
//! in DIR and reused by later runs.

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
    // No look-ahead marker or prefetched copy of an earlier run is reused.
    let _ = std::fs::remove_dir_all(data.join("pg_wal/carta-dr-spool"));
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

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// Creates `dir` (and its parents) owned by the test user.
fn user_dir(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    chown_test_user(dir);
    dir.to_path_buf()
}

/// Writes a pgBackRest configuration for `repo` with its own spool (so that no acknowledgement
/// or queued file of an earlier run is reused) and, for a new repository, creates the stanza
/// offline (from the copied `pg_control`).
fn pgbr_conf(round: &Path, label: &str, repo: &Path, pgdata: &Path, create: bool) -> String {
    let spool = user_dir(&round.join(format!("{label}-spool")));
    user_dir(repo);
    let conf = round.join(format!("{label}.conf"));
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={}\nspool-path={s}\nlock-path={s}\nlog-path={s}\n\
             log-level-console=warn\nlog-level-file=off\ncompress-type=zst\n\
             compress-level=1\nprocess-max=2\narchive-check=n\nstart-fast=y\n\
             archive-get-queue-max=256MiB\nrepo1-retention-full=1\n\n[bench]\npg1-path={}\n",
            repo.display(),
            pgdata.display(),
            s = spool.display(),
        ),
    )
    .unwrap();
    chown_test_user(&conf);
    if create {
        run_ok(
            as_test_user(
                Command::new("pgbackrest")
                    .arg(format!("--config={}", conf.display()))
                    .args(["--stanza=bench", "--no-online", "stanza-create"]),
            ),
            "pgbackrest stanza-create",
        );
    }
    conf.display().to_string()
}

/// Writes `count` real segments from PostgreSQL 15 under pgbench into `root`: `pgdata/`
/// holds what the tools read (`PG_VERSION`, `global/pg_control`, `pg_wal/<segments>`),
/// `segments.txt` their names.
fn generate(root: &Path, count: usize) {
    eprintln!("generating {count} segments with PostgreSQL 15 + pgbench ...");
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
    let segno = |s: &str| {
        u64::from_str_radix(&s[16..24], 16).unwrap()
            + (u64::from_str_radix(&s[8..16], 16).unwrap() << 8)
    };
    loop {
        run_ok(
            pg.command("pgbench")
                .args(["-n", "-c", "2", "-T", "5", "-M", "prepared"]),
            "pgbench",
        );
        let cur = pg.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
        if segno(&cur) > segno(&first) + count as u64 + 1 {
            break;
        }
    }
    pg.stop();
    let src = pg.data_dir().to_path_buf();
    let names: Vec<String> = {
        let mut v: Vec<String> = std::fs::read_dir(src.join("pg_wal"))
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
    let dst = root.join("pgdata");
    for sub in ["", "global", "pg_wal", "pg_wal/archive_status"] {
        user_dir(&dst.join(sub));
    }
    for f in ["PG_VERSION", "global/pg_control"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
        chown_test_user(&dst.join(f));
    }
    for n in &names {
        let to = dst.join("pg_wal").join(n);
        std::fs::copy(src.join("pg_wal").join(n), &to).unwrap();
        chown_test_user(&to);
    }
    chown_test_user(&dst);
    std::fs::write(root.join("segments.txt"), names.join("\n")).unwrap();
}

/// The modes, in the order each round runs them: the tools alternate (carta-dr, pgBackRest,
/// carta-dr, ...), so that a change of machine load hits both.
const MODES: [&str; 9] = [
    "push-carta",
    "push-pgbackrest",
    "push-carta-lookahead",
    "push-pgbackrest-async",
    "push-cp-fsync",
    "fetch-carta",
    "fetch-pgbackrest",
    "fetch-carta-prefetch",
    "fetch-pgbackrest-async",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--mode") {
        return mode_main(&args);
    }
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let count: usize = opt("--segments").and_then(|v| v.parse().ok()).unwrap_or(64);
    let rounds: usize = opt("--rounds").and_then(|v| v.parse().ok()).unwrap_or(3);
    let only: Option<Vec<String>> = opt("--modes").map(|m| {
        let mut v: Vec<String> = m.split(',').map(str::to_string).collect();
        // The fetch modes read what the sequential push modes stored.
        if v.iter().any(|m| m.starts_with("fetch-")) {
            v.extend(["push-carta".to_string(), "push-pgbackrest".to_string()]);
        }
        v
    });
    let wanted = |m: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == m));
    let bin = carta_dr();
    if !Path::new("/usr/bin/pgbackrest").is_file() {
        panic!("pgbackrest is missing: apt-get install -y pgbackrest");
    }

    // 1. Real segments, generated once (kept with --data DIR, reused by later runs).
    let scratch = scratch_dir("wal-bench");
    let root = match opt("--data") {
        Some(d) => user_dir(Path::new(&d)),
        None => scratch.path().to_path_buf(),
    };
    let have: usize = std::fs::read_to_string(root.join("segments.txt"))
        .map(|s| s.lines().count())
        .unwrap_or(0);
    if have != count {
        let _ = std::fs::remove_dir_all(root.join("pgdata"));
        generate(&root, count);
    }
    let data = root.join("pgdata");
    let names: Vec<String> = std::fs::read_to_string(root.join("segments.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let carta_conf = root.join("carta-dr.toml");
    std::fs::write(
        &carta_conf,
        "compression_level = 1\n[wal]\npush_look_ahead = 8\npush_concurrency = 2\n\
         fetch_prefetch = 8\nfetch_concurrency = 2\n",
    )
    .unwrap();
    chown_test_user(&carta_conf);
    let raw_bytes = count as u64 * SEG;
    let d = data.display().to_string();

    // The segments are read once before the rounds, so that the first mode of the first
    // round does not pay for a cold page cache alone.
    for n in &names {
        let _ = std::fs::read(data.join("pg_wal").join(n));
    }

    // 2. Interleaved rounds, each into fresh repositories and spools.
    let mut rows: Vec<Row> = Vec::new();
    let mut loads = Vec::new();
    let mut last_round = PathBuf::new();
    for r in 0..rounds {
        let rd = user_dir(&root.join(format!("round-{r}")));
        let before = load_average();
        let carta_repo = user_dir(&rd.join("carta-repo")).display().to_string();
        let pgbr_repo = rd.join("pgbackrest-repo");
        let mut run = |mode: &str, target: String| {
            if wanted(mode) {
                let row = run_mode(&["--mode".into(), mode.into(), d.clone(), target]);
                eprintln!("round {r}: {mode:<24} {:>7.2} s", row.secs);
                rows.push(row);
            }
        };
        run("push-carta", carta_repo.clone());
        let conf = pgbr_conf(&rd, "push-sync", &pgbr_repo, &data, true);
        run("push-pgbackrest", conf);
        run(
            "push-carta-lookahead",
            user_dir(&rd.join("carta-repo-la")).display().to_string(),
        );
        let conf = pgbr_conf(&rd, "push-async", &rd.join("pgbr-repo-async"), &data, true);
        run("push-pgbackrest-async", conf);
        let cp = user_dir(&rd.join("cp-repo"));
        run("push-cp-fsync", cp.display().to_string());
        let _ = std::fs::remove_dir_all(&cp);
        for e in std::fs::read_dir(data.join("pg_wal/archive_status"))
            .unwrap()
            .flatten()
        {
            let _ = std::fs::remove_file(e.path());
        }
        run("fetch-carta", carta_repo.clone());
        let conf = pgbr_conf(&rd, "get-sync", &pgbr_repo, &data, false);
        run("fetch-pgbackrest", conf);
        run("fetch-carta-prefetch", carta_repo.clone());
        let conf = pgbr_conf(&rd, "get-async", &pgbr_repo, &data, false);
        run("fetch-pgbackrest-async", conf);
        loads.push(format!("{before}..{}", load_average()));
        if !last_round.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&last_round);
        }
        last_round = rd;
    }
    let _ = std::fs::remove_file(data.join("pg_wal/RECOVERYXLOG"));

    // 3. Start-up: --version, and wal-push of an already-archived segment.
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
    let la_repo = user_dir(&last_round.join("carta-repo-startup"))
        .display()
        .to_string();
    let _ = std::fs::remove_dir_all(data.join("pg_wal/carta-dr-spool"));
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
                    .env("CARTA_DR_REPO", format!("file://{la_repo}"))
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
    let _ = std::fs::remove_dir_all(data.join("pg_wal/carta-dr-spool"));
    for e in std::fs::read_dir(data.join("pg_wal/archive_status"))
        .unwrap()
        .flatten()
    {
        let _ = std::fs::remove_file(e.path());
    }

    let mut t = String::new();
    writeln!(
        t,
        "\n{count} x 16 MiB real PostgreSQL 15 segments ({} MiB), zstd level 1, local \
         repositories, {rounds} interleaved rounds (median; peak RSS: the largest); load \
         average per round {}\n",
        raw_bytes >> 20,
        loads.join(", ")
    )
    .unwrap();
    writeln!(
        t,
        "{:<24} {:>9} {:>10} {:>10} {:>12}   rounds",
        "mode", "seconds", "segments/s", "MB/s", "peak RSS MiB"
    )
    .unwrap();
    let mut median = std::collections::HashMap::new();
    for m in MODES {
        let mut v: Vec<&Row> = rows.iter().filter(|r| r.name == m).collect();
        if v.is_empty() {
            continue;
        }
        let each: Vec<String> = v.iter().map(|r| format!("{:.2}", r.secs)).collect();
        v.sort_by(|a, b| a.secs.total_cmp(&b.secs));
        let mid = v[v.len() / 2];
        let rss = v.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
        median.insert(m, mid.secs);
        writeln!(
            t,
            "{:<24} {:>9.2} {:>10.1} {:>10.1} {:>12.1}   {}",
            m,
            mid.secs,
            mid.n as f64 / mid.secs,
            (mid.n as u64 * SEG) as f64 / 1e6 / mid.secs,
            rss as f64 / 1024.0,
            each.join(" ")
        )
        .unwrap();
    }
    let by = |n: &str| median.get(n).copied().unwrap_or(f64::NAN);
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
        "  floor: carta-dr push takes {:.2}x the time of cp+sync",
        by("push-carta") / by("push-cp-fsync")
    )
    .unwrap();
    writeln!(
        t,
        "\nstart-up (median): carta-dr --version {version_ms:.2} ms; wal-push of a segment \
         already pushed by look-ahead {again_ms:.2} ms, already archived without a spool \
         marker {again_nomarker_ms:.2} ms; pgbackrest version {pgbr_version_ms:.2} ms; \
         /bin/true {true_ms:.2} ms; load average {}",
        load_average()
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&last_round);
    println!("{t}");
}
