//! End-to-end verification benchmark on a real PostgreSQL 15: `carta-dr verify` against
//! `pg_verifybackup`, `pgbackrest verify` and `pg_waldump` on the same database and WAL.
//!
//! One cluster (pgbench at `--scale`, then `pgbench -T` for OLTP WAL) archives every segment
//! three ways: `carta-dr wal-push`, `pgbackrest archive-push` (zst) and a plain copy. Then it
//! takes a `pg_basebackup` (plain format, manifest with CRC-32C), a `pgbackrest backup`
//! (compress-type=zst, process-max=2) and a `carta-dr backup`, and times, interleaved
//! (A, B, C, ..., A, B, C, ...) over `--runs` rounds, from the page cache:
//!
//! * `pg_verifybackup` on the pg_basebackup (file CRC-32Cs, then `pg_waldump` over the
//!   backup's WAL);
//! * `pgbackrest verify` (every backup file and every archived segment);
//! * `carta-dr verify ID` (every stored object, every file against `backup_manifest`, the
//!   manifest's SHA-256, the record-level pass over the WAL the backup needs);
//! * `carta-dr verify --wal` over the repository's archive, and `--wal --wal-dir` over the
//!   plain copy (the record-level pass alone);
//! * `pg_waldump -q` over the plain copy (which also decodes every record).
//!
//! It prints the median wall time of each, MB/s of the backup's data (the pg_basebackup's
//! size without its WAL) or of WAL (the archived segments), and the ratios.
//!
//! ```text
//! cargo build --release -p carta-dr-cli
//! cargo run --release -p carta-dr-benches --bin verify_bench -- --scale 100 --dir /work/bench/S
//! ```
//!
//! Needs PostgreSQL 15 and pgbackrest; runs the servers and tools as the test user when root.
//! Everything it creates lives in one scratch directory under `--dir`, removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use carta_dr_testkit::{as_test_user, scratch_dir, test_user, PgCluster};

/// Runs `cmd` to completion and returns its wall time and CPU time (user + system, from
/// `wait4`); panics with its stderr on failure unless `ok_stderr` accepts the stderr of a
/// failed run.
fn timed(cmd: &mut Command, what: &str, ok_stderr: Option<&dyn Fn(&str) -> bool>) -> (f64, f64) {
    let errf = tempfile_path(what);
    let errfile = std::fs::File::create(&errf).expect("stderr file");
    cmd.stdout(Stdio::null()).stderr(errfile);
    let start = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, pointers are valid for the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let secs = start.elapsed().as_secs_f64();
    std::mem::forget(child);
    assert!(r == pid, "{what}: wait4 failed");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
    let err = std::fs::read_to_string(&errf).unwrap_or_default();
    let _ = std::fs::remove_file(&errf);
    let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let ok = success || ok_stderr.is_some_and(|f| f(&err));
    assert!(ok, "{what} failed (status {status}): {err}");
    (secs, cpu)
}

/// A file for a command's stderr.
fn tempfile_path(what: &str) -> PathBuf {
    let name: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    std::env::temp_dir().join(format!("verify-bench-{}-{name}.err", std::process::id()))
}

fn output(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn du(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if m.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| du(&e.path())).sum())
            .unwrap_or(0)
    } else {
        m.len()
    }
}

fn chown_tree(p: &Path) {
    let Some(u) = test_user() else {
        return;
    };
    let _ = std::os::unix::fs::lchown(p, Some(u.uid), Some(u.gid));
    if p.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                chown_tree(&e.path());
            }
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// WAL segment file names (24 hex digits) in `dir`, sorted.
fn segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Accepts the stderr of a run that exited non-zero as a success.
type StderrOk = Box<dyn Fn(&str) -> bool>;

/// One timed tool.
struct Tool {
    name: &'static str,
    /// What it checks.
    scope: &'static str,
    /// Bytes the MB/s figure is computed from, and what they are.
    bytes: u64,
    unit: &'static str,
    cmd: Box<dyn Fn() -> Command>,
    ok_stderr: Option<StderrOk>,
    secs: Vec<f64>,
    cpu: Vec<f64>,
}

fn main() {
    let mut scale = 100u32;
    let mut runs = 3usize;
    let mut oltp_secs = 60u32;
    let mut dir = PathBuf::from("/work/bench/S");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a}: value missing"));
        match a.as_str() {
            "--scale" => scale = val().parse().expect("--scale N"),
            "--runs" => runs = val().parse().expect("--runs N"),
            "--oltp-seconds" => oltp_secs = val().parse().expect("--oltp-seconds N"),
            "--dir" => dir = PathBuf::from(val()),
            other => panic!(
                "unknown argument {other} (--scale N, --runs N, --oltp-seconds N, --dir DIR)"
            ),
        }
    }
    let bin = std::env::var_os("CARTA_DR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/carta-dr")
        });
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build --release -p carta-dr-cli` first or set CARTA_DR_BIN",
        bin.display()
    );
    let bin = bin.canonicalize().expect("binary path");
    let pg_bin = carta_dr_testkit::pg_bin_dir();
    assert!(
        Command::new("pgbackrest")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "pgbackrest missing: apt-get install pgbackrest"
    );
    // Every scratch directory (cluster, repositories, backups) goes under --dir.
    std::fs::create_dir_all(&dir).expect("create --dir");
    chown_tree(&dir);
    std::env::set_var("CARTA_DR_TEST_TMP", &dir);

    let root = scratch_dir("verify-bench");
    let carta_repo = root.subdir("carta-repo");
    let plain_wal = root.subdir("wal");
    let pbr = root.subdir("pgbackrest");
    for sub in ["repo", "lock", "log", "spool"] {
        root.subdir(&format!("pgbackrest/{sub}"));
    }
    let conf = pbr.join("pgbackrest.conf");
    let archive_command = format!(
        "{bin} --repo file://{repo} wal-push %p && pgbackrest --config={conf} --stanza=bench archive-push %p && cp %p {plain}/%f",
        bin = bin.display(),
        repo = carta_repo.display(),
        conf = conf.display(),
        plain = plain_wal.display(),
    );
    let pg = PgCluster::builder()
        .label("verify-bench")
        .data_checksums(true)
        .conf("archive_mode", "on")
        .conf("archive_command", &archive_command)
        .conf("max_wal_size", "4GB")
        .conf("shared_buffers", "256MB")
        .conf("checkpoint_timeout", "30min")
        .init();
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={0}/repo\nlock-path={0}/lock\nlog-path={0}/log\nspool-path={0}/spool\n\
             log-level-console=warn\nlog-level-file=off\ncompress-type=zst\nprocess-max=2\n\
             start-fast=y\n\n[bench]\npg1-path={1}\npg1-port={2}\npg1-socket-path={3}\npg1-user=postgres\n",
            pbr.display(),
            pg.data_dir().display(),
            pg.port(),
            pg.socket_dir().display()
        ),
    )
    .expect("write pgbackrest.conf");
    chown_tree(&pbr);
    let mut pg = pg;
    pg.start();
    let pgbr = {
        let conf = conf.clone();
        move |args: &[&str]| {
            let mut c = Command::new("pgbackrest");
            c.arg(format!("--config={}", conf.display()))
                .arg("--stanza=bench")
                .args(args);
            as_test_user(&mut c);
            c
        }
    };
    output(&mut pgbr(&["stanza-create"]), "pgbackrest stanza-create");

    // The data, then OLTP WAL (small records) on top of the load's (large ones).
    let t = Instant::now();
    output(
        pg.command("pgbench")
            .args(["-i", "-q", "-s", &scale.to_string(), "postgres"]),
        "pgbench -i",
    );
    pg.psql("postgres", "vacuum (freeze, analyze)");
    pg.psql("postgres", "checkpoint");
    eprintln!("pgbench -i -s {scale}: {:.0} s", t.elapsed().as_secs_f64());
    if oltp_secs > 0 {
        output(
            pg.command("pgbench")
                .args(["-c", "2", "-T", &oltp_secs.to_string(), "postgres"]),
            "pgbench -T",
        );
    }

    // The three backups.
    let conn = format!("host=127.0.0.1 port={} user=postgres", pg.port());
    let t = Instant::now();
    let mut c = Command::new(&bin);
    c.arg("--repo")
        .arg(format!("file://{}", carta_repo.display()))
        .args(["backup", "--pg", &conn, "--json"]);
    as_test_user(&mut c);
    let rec: serde_json::Value =
        serde_json::from_str(&output(&mut c, "carta-dr backup")).expect("backup --json output");
    let carta_id = rec
        .get("id")
        .and_then(|v| v.as_str())
        .expect("backup id in --json output")
        .to_string();
    eprintln!(
        "carta-dr backup {carta_id}: {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    output(&mut pgbr(&["--type=full", "backup"]), "pgbackrest backup");
    eprintln!("pgbackrest backup: {:.0} s", t.elapsed().as_secs_f64());
    let pgbb = root.subdir("pg_basebackup").join("b");
    let t = Instant::now();
    output(
        pg.command("pg_basebackup")
            .args([
                "-Fp",
                "-X",
                "stream",
                "-c",
                "fast",
                "--manifest-checksums=CRC32C",
                "-D",
            ])
            .arg(&pgbb),
        "pg_basebackup",
    );
    eprintln!("pg_basebackup: {:.0} s", t.elapsed().as_secs_f64());

    // Close the last segment and wait until all three archives hold it.
    let last = pg.psql("postgres", "select pg_walfile_name(pg_switch_wal())");
    pg.wait_until(
        "the last segment archived",
        Duration::from_secs(300),
        || {
            pg.psql(
                "postgres",
                "select coalesce(last_archived_wal, '') from pg_stat_archiver",
            )
            .as_str()
                >= last.as_str()
        },
    );
    pg.stop();

    let data_bytes = du(&pgbb) - du(&pgbb.join("pg_wal"));
    let segs = segments(&plain_wal);
    let wal_bytes = du(&plain_wal);
    let (first, lastseg) = (
        segs.first().cloned().expect("archived segments"),
        segs.last().cloned().expect("archived segments"),
    );
    eprintln!(
        "backup data {:.0} MB (pg_basebackup without pg_wal), archive {} segments {:.0} MB ({first}..{lastseg})",
        data_bytes as f64 / 1e6,
        segs.len(),
        wal_bytes as f64 / 1e6
    );
    chown_tree(root.path());

    let carta = {
        let bin = bin.clone();
        let repo = carta_repo.clone();
        move |args: &[&str]| {
            let mut c = Command::new(&bin);
            c.arg("--repo")
                .arg(format!("file://{}", repo.display()))
                .args(args);
            as_test_user(&mut c);
            c
        }
    };
    let mut tools: Vec<Tool> = Vec::new();
    {
        let pg_bin = pg_bin.clone();
        let pgbb = pgbb.clone();
        tools.push(Tool {
            name: "pg_verifybackup",
            scope: "pg_basebackup -Fp: file CRC-32Cs, then pg_waldump over its WAL",
            bytes: data_bytes,
            unit: "backup data",
            cmd: Box::new(move || {
                let mut c = Command::new(pg_bin.join("pg_verifybackup"));
                c.arg(&pgbb);
                as_test_user(&mut c);
                c
            }),
            ok_stderr: None,
            secs: Vec::new(),
            cpu: Vec::new(),
        });
    }
    {
        let pgbr = pgbr.clone();
        tools.push(Tool {
            name: "pgbackrest verify",
            scope: "every backup file and archived segment (zst)",
            bytes: data_bytes,
            unit: "backup data",
            cmd: Box::new(move || pgbr(&["verify"])),
            ok_stderr: None,
            secs: Vec::new(),
            cpu: Vec::new(),
        });
    }
    {
        let carta = carta.clone();
        let id = carta_id.clone();
        tools.push(Tool {
            name: "carta-dr verify ID",
            scope: "objects, files vs backup_manifest, manifest SHA-256, record pass over the backup's WAL",
            bytes: data_bytes,
            unit: "backup data",
            cmd: Box::new(move || carta(&["verify", &id])),
            ok_stderr: None,
            secs: Vec::new(),
            cpu: Vec::new(),
        });
    }
    {
        let carta = carta.clone();
        tools.push(Tool {
            name: "carta-dr verify --wal",
            scope: "record pass over the repository's archive (envelope, zstd)",
            bytes: wal_bytes,
            unit: "WAL",
            cmd: Box::new(move || carta(&["verify", "--wal"])),
            ok_stderr: None,
            secs: Vec::new(),
            cpu: Vec::new(),
        });
    }
    {
        let carta = carta.clone();
        let dir = plain_wal.display().to_string();
        tools.push(Tool {
            name: "carta-dr verify --wal --wal-dir",
            scope: "record pass over the plain segments",
            bytes: wal_bytes,
            unit: "WAL",
            cmd: Box::new(move || carta(&["verify", "--wal", "--wal-dir", &dir])),
            ok_stderr: None,
            secs: Vec::new(),
            cpu: Vec::new(),
        });
    }
    {
        let pg_bin = pg_bin.clone();
        let dir = plain_wal.clone();
        let (first, lastseg) = (first.clone(), lastseg.clone());
        tools.push(Tool {
            name: "pg_waldump -q",
            scope: "decodes and CRC-checks every record of the plain segments",
            bytes: wal_bytes,
            unit: "WAL",
            cmd: Box::new(move || {
                let mut c = Command::new(pg_bin.join("pg_waldump"));
                c.arg("-q").arg("-p").arg(&dir).arg(&first).arg(&lastseg);
                as_test_user(&mut c);
                c
            }),
            // It reports where WAL ends in the last segment (after the switch, nothing).
            ok_stderr: Some(Box::new(|e: &str| {
                e.lines().count() == 1 && e.contains("error in WAL record")
            })),
            secs: Vec::new(),
            cpu: Vec::new(),
        });
    }

    for round in 0..runs {
        for t in tools.iter_mut() {
            let (s, c) = timed(&mut (t.cmd)(), t.name, t.ok_stderr.as_deref());
            eprintln!(
                "round {}: {} {:.2} s (CPU {:.2} s)",
                round + 1,
                t.name,
                s,
                c
            );
            t.secs.push(s);
            t.cpu.push(c);
        }
    }

    let mut out = vec![
        format!(
            "pgbench scale {scale} (+{oltp_secs} s of pgbench -c 2): backup data {:.0} MB, archived WAL {:.0} MB ({} segments); median of {runs} interleaved runs, page cache warm",
            data_bytes as f64 / 1e6,
            wal_bytes as f64 / 1e6,
            segs.len()
        ),
        String::new(),
        "| tool | checks | median s | MB/s | of | runs (s) | median CPU s | MB per CPU s |"
            .to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for t in &tools {
        let m = median(&t.secs);
        let c = median(&t.cpu);
        out.push(format!(
            "| {} | {} | {:.2} | {:.0} | {} | {} | {:.2} | {:.0} |",
            t.name,
            t.scope,
            m,
            t.bytes as f64 / 1e6 / m,
            t.unit,
            t.secs
                .iter()
                .map(|s| format!("{s:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            c,
            t.bytes as f64 / 1e6 / c
        ));
    }
    let m = |name: &str, cpu: bool| {
        tools
            .iter()
            .find(|t| t.name == name)
            .map(|t| median(if cpu { &t.cpu } else { &t.secs }))
            .unwrap_or(f64::NAN)
    };
    out.push(String::new());
    for (a, b) in [
        ("carta-dr verify ID", "pg_verifybackup"),
        ("carta-dr verify ID", "pgbackrest verify"),
        ("carta-dr verify --wal --wal-dir", "pg_waldump -q"),
        ("carta-dr verify --wal", "pg_waldump -q"),
    ] {
        out.push(format!(
            "{a} vs {b}: {:.2}x as fast (wall), {:.2}x less CPU",
            m(b, false) / m(a, false),
            m(b, true) / m(a, true)
        ));
    }
    println!("{}", out.join("\n"));
    drop(pg);
    drop(root);
}
