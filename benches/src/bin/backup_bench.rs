//! End-to-end backup benchmark on a real PostgreSQL 15: carta-dr against `pg_basebackup`
//! (server-side zstd) and pgBackRest (zstd, two processes).
//!
//! For each data set (pgbench at `--scale`, and an incompressible table of about the same
//! size) it measures: full backup wall time, throughput, stored size and peak RSS; restore
//! time; an incremental backup after 1% of the rows changed. Every measurement runs three
//! rounds with the tools interleaved (A, B, C, A, B, C, ...) and reports the median.
//!
//! ```text
//! cargo build --release -p carta-dr-cli
//! cargo run --release -p carta-dr-benches --bin backup_bench -- --scale 100
//! ```
//!
//! Needs PostgreSQL 15 and pgbackrest installed; runs the servers as the test user when root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use carta_dr_testkit::{as_test_user, scratch_dir, PgCluster, ScratchDir};

/// One measured command.
#[derive(Clone, Copy, Debug)]
struct Run {
    secs: f64,
    max_rss_kib: u64,
}

/// Runs `cmd` to completion and returns its wall time and peak RSS (from `wait4`).
fn measure(cmd: &mut Command, what: &str) -> Run {
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
    assert!(r == pid, "{what}: wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{what} failed with status {status}"
    );
    std::mem::forget(child);
    Run {
        secs,
        max_rss_kib: ru.ru_maxrss as u64,
    }
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

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

struct Dataset {
    name: &'static str,
    pg: PgCluster,
    carta_repo: ScratchDir,
    bin: PathBuf,
}

fn carta(d: &Dataset, args: &[&str]) -> Command {
    let mut c = Command::new(&d.bin);
    c.arg("--repo")
        .arg(format!("file://{}", d.carta_repo.path().display()))
        .args(args)
        .stdout(std::process::Stdio::null());
    as_test_user(&mut c);
    c
}

fn cluster(label: &str, bin: &Path, repo: &Path) -> PgCluster {
    let cmd = format!(
        "{} --repo file://{} wal-push %p",
        bin.display(),
        repo.display()
    );
    PgCluster::builder()
        .label(label)
        .data_checksums(true)
        .conf("archive_mode", "on")
        .conf("archive_command", &cmd)
        .conf("max_wal_size", "4GB")
        .conf("shared_buffers", "256MB")
        .conf("checkpoint_timeout", "30min")
        .start()
}

fn sh(pg: &PgCluster, bin: &str, args: &[&str]) {
    let out = pg.command(bin).args(args).output().expect(bin);
    assert!(
        out.status.success(),
        "{bin} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rounds per measurement: every tool runs once per round, interleaved, and the median is
/// reported (the machine is shared, so a single run says little).
const ROUNDS: usize = 3;

/// The median of the runs' wall times, with the median peak RSS.
fn median(runs: &[Run]) -> Run {
    let mut s: Vec<f64> = runs.iter().map(|r| r.secs).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    let mut m: Vec<u64> = runs.iter().map(|r| r.max_rss_kib).collect();
    m.sort();
    Run {
        secs: s.get(s.len() / 2).copied().unwrap_or(0.0),
        max_rss_kib: m.get(m.len() / 2).copied().unwrap_or(0),
    }
}

fn row(d: &Dataset, tool: &str, runs: &[Run], db_size: u64, stored: Option<f64>) -> String {
    let m = median(runs);
    let all: Vec<String> = runs.iter().map(|r| format!("{:.1}", r.secs)).collect();
    format!(
        "| {} | {tool} | {:.1} ({}) | {:.0} | {} | {:.0} |",
        d.name,
        m.secs,
        all.join(", "),
        mb(db_size) / m.secs,
        stored
            .map(|s| format!("{s:.1}"))
            .unwrap_or_else(|| "-".into()),
        m.max_rss_kib as f64 / 1024.0
    )
}

fn carta_stored(d: &Dataset) -> u64 {
    du(&d.carta_repo.path().join("chunks")) + du(&d.carta_repo.path().join("bundles"))
}

fn bench(d: &Dataset, change_sql: &str) -> Vec<String> {
    eprintln!("benchmarking {}", d.name);
    // Set hint bits and freeze once, as on any cluster that has been running a while;
    // otherwise the first statement after loading rewrites every page.
    d.pg.psql("postgres", "vacuum (freeze, analyze)");
    d.pg.psql("postgres", "checkpoint");
    let mut rows = Vec::new();
    let db_size: u64 =
        d.pg.psql(
            "postgres",
            "select sum(pg_database_size(oid)) from pg_database",
        )
        .parse()
        .unwrap_or(0);
    let conn = format!("host=127.0.0.1 port={} user=postgres", d.pg.port());

    // pgBackRest's stanza.
    let pbr = scratch_dir(&format!("{}-pgbackrest", d.name));
    let conf = pbr.path().join("pgbackrest.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={0}/repo\nlock-path={0}/lock\nlog-path={0}/log\nspool-path={0}/spool\n\
             log-level-console=warn\nlog-level-file=off\ncompress-type=zst\nprocess-max=2\n\
             start-fast=y\narchive-check=n\nrepo1-retention-full=1\n\n[bench]\npg1-path={1}\npg1-port={2}\npg1-socket-path={3}\npg1-user=postgres\n",
            pbr.path().display(),
            d.pg.data_dir().display(),
            d.pg.port(),
            d.pg.socket_dir().display()
        ),
    )
    .expect("write pgbackrest.conf");
    for sub in ["repo", "lock", "log", "spool"] {
        let _ = std::fs::create_dir_all(pbr.path().join(sub));
    }
    chown_tree(pbr.path());
    let pgbr = |args: &[&str]| {
        let mut c = Command::new("pgbackrest");
        c.arg(format!("--config={}", conf.display()))
            .arg("--stanza=bench")
            .args(args)
            .stdout(std::process::Stdio::null());
        as_test_user(&mut c);
        c
    };
    measure(&mut pgbr(&["stanza-create"]), "pgbackrest stanza-create");
    let pbr_backups = pbr.path().join("repo/backup");

    // Full backups, interleaved: carta-dr (from an empty repository each time: no chunk is
    // found already stored), pg_basebackup, pgBackRest.
    let (mut carta_full, mut pgb_full, mut pbr_full) = (Vec::new(), Vec::new(), Vec::new());
    let (mut carta_size, mut pgb_size, mut pbr_size) = (0, 0, 0);
    for round in 0..ROUNDS {
        eprintln!("  full backups, round {}", round + 1);
        for sub in ["chunks", "bundles", "backups"] {
            let _ = std::fs::remove_dir_all(d.carta_repo.path().join(sub));
        }
        carta_full.push(measure(
            &mut carta(d, &["backup", "--pg", &conn]),
            "carta-dr backup",
        ));
        carta_size = carta_stored(d);

        let pgb = scratch_dir(&format!("{}-pgbb", d.name));
        let out = pgb.path().join("b");
        let mut c = d.pg.command("pg_basebackup");
        c.args([
            "-Ft",
            "-Z",
            "server-zstd:workers=2",
            "-X",
            "none",
            "-c",
            "fast",
            "-D",
        ])
        .arg(&out);
        pgb_full.push(measure(&mut c, "pg_basebackup"));
        pgb_size = du(&out);
        drop(pgb);

        pbr_full.push(measure(
            &mut pgbr(&["--type=full", "backup"]),
            "pgbackrest backup",
        ));
    }
    // pgBackRest's size: the newest full backup's directory alone.
    if let Some(newest) = std::fs::read_dir(pbr_backups.join("bench"))
        .ok()
        .and_then(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir() && p.to_string_lossy().ends_with('F'))
                .max()
        })
    {
        pbr_size = du(&newest);
    }
    rows.push(row(
        d,
        "carta-dr full",
        &carta_full,
        db_size,
        Some(mb(carta_size)),
    ));
    rows.push(row(
        d,
        "pg_basebackup -Ft -Z server-zstd:workers=2",
        &pgb_full,
        db_size,
        Some(mb(pgb_size)),
    ));
    rows.push(row(
        d,
        "pgbackrest backup (zst, process-max=2)",
        &pbr_full,
        db_size,
        Some(mb(pbr_size)),
    ));

    // Restores of the full backups, interleaved.
    let (mut carta_rest, mut pbr_rest) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        eprintln!("  restores, round {}", round + 1);
        let target = scratch_dir(&format!("{}-restore", d.name));
        let dir = target.path().join("data");
        carta_rest.push(measure(
            &mut carta(d, &["restore", "--to", &dir.display().to_string()]),
            "carta-dr restore",
        ));
        drop(target);
        let target = scratch_dir(&format!("{}-pbr-restore", d.name));
        let rdir = target.path().join("data");
        pbr_rest.push(measure(
            &mut pgbr(&[&format!("--pg1-path={}", rdir.display()), "restore"]),
            "pgbackrest restore",
        ));
        drop(target);
    }
    rows.push(row(d, "carta-dr restore", &carta_rest, db_size, None));
    rows.push(row(d, "pgbackrest restore", &pbr_rest, db_size, None));

    // 1% changed, then an incremental of each, interleaved; each round changes another 1%.
    let (mut carta_incr, mut pbr_incr) = (Vec::new(), Vec::new());
    let (mut carta_isize, mut pbr_isize) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        eprintln!("  incrementals, round {}", round + 1);
        d.pg.psql("postgres", change_sql);
        d.pg.psql("postgres", "checkpoint");
        let before = carta_stored(d);
        carta_incr.push(measure(
            &mut carta(d, &["backup", "--pg", &conn]),
            "carta-dr incremental",
        ));
        carta_isize.push(carta_stored(d).saturating_sub(before));
        let before = du(&pbr_backups);
        pbr_incr.push(measure(
            &mut pgbr(&["--type=incr", "backup"]),
            "pgbackrest incr",
        ));
        pbr_isize.push(du(&pbr_backups).saturating_sub(before));
    }
    let mid = |v: &mut Vec<u64>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    rows.push(row(
        d,
        "carta-dr incremental (1% rows changed)",
        &carta_incr,
        db_size,
        Some(mb(mid(&mut carta_isize))),
    ));
    rows.push(row(
        d,
        "pgbackrest incr (1% rows changed)",
        &pbr_incr,
        db_size,
        Some(mb(mid(&mut pbr_isize))),
    ));
    drop(pbr);
    rows
}

fn chown_tree(p: &Path) {
    let Some(u) = carta_dr_testkit::test_user() else {
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

fn main() {
    let mut scale = 100u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--scale" => scale = args.next().and_then(|s| s.parse().ok()).expect("--scale N"),
            other => panic!("unknown argument {other}"),
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
    let mut rows = vec![
        "| data | tool | seconds, median (runs) | MB/s (of database size) | stored MB | peak RSS MiB |"
            .to_string(),
        "|---|---|---|---|---|---|".to_string(),
    ];

    // pgbench.
    let repo = scratch_dir("bench-pgbench-repo");
    let pg = cluster("bench-pgbench", &bin, repo.path());
    let t = Instant::now();
    sh(&pg, "pgbench", &["-i", "-q", "-s", &scale.to_string()]);
    eprintln!("pgbench -i -s {scale}: {:.0} s", t.elapsed().as_secs_f64());
    let d = Dataset {
        name: "pgbench",
        pg,
        carta_repo: repo,
        bin: bin.clone(),
    };
    rows.extend(bench(
        &d,
        "update pgbench_accounts set abalance = abalance + 1 where aid % 100 = 0",
    ));
    let size_mb: u64 =
        d.pg.psql("postgres", "select pg_database_size('postgres') / 1000000")
            .parse()
            .unwrap_or(1500);
    drop(d);

    // Incompressible: random bytes, about the same size.
    let repo = scratch_dir("bench-random-repo");
    let pg = cluster("bench-random", &bin, repo.path());
    pg.psql("postgres", "create extension pgcrypto");
    pg.psql(
        "postgres",
        "create table rnd (id bigint primary key, b bytea) with (autovacuum_enabled = off); \
         alter table rnd alter column b set storage external",
    );
    // About 1.17 kB of heap per row (seven 1 kB rows per 8 kB page).
    let rows_total = size_mb * 1_000_000 / 1_170;
    let step = 100_000u64;
    let mut i = 0;
    while i < rows_total {
        pg.psql(
            "postgres",
            &format!(
                "insert into rnd select g, gen_random_bytes(1024) from generate_series({}, {}) g",
                i + 1,
                (i + step).min(rows_total)
            ),
        );
        i += step;
    }
    let d = Dataset {
        name: "random",
        pg,
        carta_repo: repo,
        bin,
    };
    rows.extend(bench(
        &d,
        // A contiguous 1% of the rows (the pgbench case above scatters its 1% over every page).
        &format!(
            "update rnd set b = gen_random_bytes(1024) where id <= {}",
            rows_total / 100
        ),
    ));
    drop(d);

    println!("scale {scale}\n{}", rows.join("\n"));
    std::thread::sleep(Duration::from_millis(10));
}
