//! The restore drill's RTO against its floor, on pgbench data at `--scale` (100 by default).
//!
//! Each run: `carta-dr drill restore --scale N --keep-work-dir` (the release binary, embedded
//! default, crash scenario) gives the RTO and its phases; then, on the same data in the same
//! run, the floor:
//!
//! * **copy**: the backup the drill restored, written out uncompressed (`carta-dr restore`,
//!   not timed) with the WAL segments the drill replayed placed in its `pg_wal` (fetched, not
//!   timed), then `cp -a` of that directory plus `sync` — the bytes a restore must write;
//! * **replay**: PostgreSQL started on the copy: it replays the same WAL from `pg_wal` to the
//!   same end point (crash recovery from the backup label to the end of the WAL), timed from
//!   launch to a server out of recovery that commits an `INSERT`.
//!
//! The ratio is RTO / (copy + replay); the goal is at most 1.2. `cp -a` copies one file at a
//! time while the drill's restore writes several at once, so a stricter floor is printed too:
//! the same bytes copied by 4 threads plus `sync`, with the same replay. Runs are interleaved (drill,
//! floor, drill, floor...) and the medians reported.
//!
//! ```text
//! cargo build --release -p carta-dr-cli
//! cargo run --release -p carta-dr-benches --bin drill_bench -- --scale 100 --runs 3
//! ```
//!
//! Data goes under `--dir` (default `/work/bench/D`), removed at the end. Needs PostgreSQL 15;
//! as root, the servers run as the test user.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use carta_dr_testkit::{as_test_user, pg_bin_dir, test_user};

struct Opts {
    scale: u32,
    runs: usize,
    dir: PathBuf,
    bin: PathBuf,
    extra: Vec<String>,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        scale: 100,
        runs: 3,
        dir: PathBuf::from("/work/bench/D"),
        bin: PathBuf::from("target/release/carta-dr"),
        extra: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--scale" => o.scale = val().parse().expect("--scale N"),
            "--runs" => o.runs = val().parse().expect("--runs N"),
            "--dir" => o.dir = PathBuf::from(val()),
            "--bin" => o.bin = PathBuf::from(val()),
            // Passed to `drill restore` as is (e.g. --drill-arg --no-amcheck).
            "--drill-arg" => o.extra.push(val()),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

/// One drill: the RTO, its phases, and what the floor needs.
struct Drill {
    rto: f64,
    phases: Vec<(String, f64)>,
    checks: Vec<(String, f64)>,
    backup: String,
    area: PathBuf,
    restored_bytes: u64,
    wal_segments: u64,
}

fn run_drill(o: &Opts, parent: &Path) -> Drill {
    let mut cmd = Command::new(&o.bin);
    cmd.args(["drill", "restore", "--json", "--keep-work-dir"])
        .args(["--scale", &o.scale.to_string()])
        .args(["--rto", "1h"])
        .arg("--work-dir")
        .arg(parent)
        .arg("--report")
        .arg(parent.join("report.md"))
        .arg("--history")
        .arg(format!("file://{}", parent.join("history").display()))
        .args(&o.extra)
        .env("CARTA_DR_STATE_DIR", parent.join("state"));
    if let Some(u) = test_user() {
        cmd.args(["--run-as", &u.name]);
    }
    let out = cmd.output().expect("run carta-dr drill restore");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill restore ({}): no JSON report ({e}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    if !out.status.success() {
        eprintln!(
            "warning: drill verdict FAIL: {}",
            serde_json::to_string(&v["checks"]).unwrap_or_default()
        );
    }
    let area = std::fs::read_dir(parent)
        .expect("bench dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("carta-dr-drill-restore-"))
        })
        .expect("the kept drill directory");
    let f = |x: &serde_json::Value| x.as_f64().unwrap_or(0.0);
    Drill {
        rto: f(&v["rto_seconds"]),
        phases: v["phases"]
            .as_array()
            .expect("phases")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("?").to_string(),
                    f(&p["seconds"]),
                )
            })
            .collect(),
        checks: v["checks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| {
                        Some((
                            c["name"].as_str()?.to_string(),
                            c["millis"].as_u64()? as f64 / 1000.0,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        backup: v["backup_used"].as_str().expect("backup_used").to_string(),
        area,
        restored_bytes: v["restored_bytes"].as_u64().unwrap_or(0),
        wal_segments: v["wal_segments_fetched"].as_u64().unwrap_or(0),
    }
}

fn carta(o: &Opts, repo: &str, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(&o.bin);
    c.arg("--repo").arg(repo).args(args);
    as_test_user(&mut c);
    c.output().expect("run carta-dr")
}

/// The WAL segment after `name` (24 hex digits, 16 MiB segments).
fn next_segment(name: &str) -> String {
    let tli = &name[..8];
    let log = u64::from_str_radix(&name[8..16], 16).expect("hex");
    let seg = u64::from_str_radix(&name[16..24], 16).expect("hex");
    let (log, seg) = if seg == 0xFF {
        (log + 1, 0)
    } else {
        (log, seg + 1)
    };
    format!("{tli}{log:08X}{seg:08X}")
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "{cmd} failed");
}

/// The floor's parts, in seconds: copy (cp -a + sync), replay (launch to redo done), start
/// (redo done to an INSERT committed out of recovery).
struct Floor {
    /// `carta-dr restore` of the same backup on its own (not part of the floor).
    restore: f64,
    copy: f64,
    par_copy: f64,
    replay: f64,
    start: f64,
    bytes: u64,
    segments: usize,
}

fn du(p: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-sb"])
        .arg(p)
        .output()
        .expect("du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn measure_floor(o: &Opts, d: &Drill, parent: &Path) -> Floor {
    let repo = format!("file://{}", d.area.join("store").display());
    let base = parent.join("floor-base");
    let copy = parent.join("floor-copy");
    sh("sync");
    let t = Instant::now();
    let out = carta(
        o,
        &repo,
        &[
            "restore",
            "--backup",
            &d.backup,
            "--to",
            &base.display().to_string(),
        ],
    );
    let restore_secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "restore for the floor: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Crash recovery from the backup label over the WAL in pg_wal, not archive recovery.
    std::fs::remove_file(base.join("recovery.signal")).ok();
    std::fs::remove_file(base.join("standby.signal")).ok();
    let label = std::fs::read_to_string(base.join("backup_label")).expect("backup_label");
    let mut seg = label
        .lines()
        .find_map(|l| {
            l.strip_prefix("START WAL LOCATION:")
                .and_then(|r| r.split("(file ").nth(1))
                .map(|r| r.trim_end_matches(')').trim().to_string())
        })
        .expect("START WAL LOCATION in backup_label");
    let mut segments = 0;
    loop {
        let dest = base.join("pg_wal").join(&seg);
        let out = carta(
            o,
            &repo,
            &[
                "wal-fetch",
                "--prefetch",
                "0",
                &seg,
                &dest.display().to_string(),
            ],
        );
        if !out.status.success() {
            break;
        }
        segments += 1;
        seg = next_segment(&seg);
    }
    std::fs::remove_dir_all(base.join("pg_wal").join("carta-dr-spool")).ok();
    let bytes = du(&base);

    sh("sync");
    let t = Instant::now();
    sh(&format!(
        "cp -a {} {} && sync",
        base.display(),
        copy.display()
    ));
    let copy_secs = t.elapsed().as_secs_f64();

    // The same bytes written by 4 threads (the drill's restore writes in parallel too), for
    // a stricter floor; the copy is then discarded.
    let par = parent.join("floor-par");
    sh("sync");
    let t = Instant::now();
    parallel_copy(&base, &par, 4);
    sh("sync");
    let par_secs = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&par).ok();

    let sock = parent.join("floor-sock");
    std::fs::create_dir_all(&sock).expect("socket dir");
    if let Some(u) = test_user() {
        sh(&format!("chown {} {}", u.name, sock.display()));
    }
    let port = free_port();
    let log = parent.join("floor.log");
    let logf = std::fs::File::create(&log).expect("log");
    let mut pg = Command::new(pg_bin_dir().join("postgres"));
    pg.arg("-D")
        .arg(&copy)
        .args(["-c", &format!("port={port}")])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", &format!("unix_socket_directories={}", sock.display())])
        .args(["-c", "archive_mode=off"])
        .stdin(Stdio::null())
        .stdout(logf.try_clone().expect("log"))
        .stderr(logf)
        .process_group(0);
    as_test_user(&mut pg);
    let t = Instant::now();
    let mut child: Child = pg.spawn().expect("start postgres");
    let mut redo_done: Option<f64> = None;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        if redo_done.is_none() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("redo done at") || text.contains("redo is not required") {
                redo_done = Some(t.elapsed().as_secs_f64());
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "floor postgres exited ({st}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let mut q = Command::new(pg_bin_dir().join("psql"));
        q.args([
            "-XAtq",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
        ])
        .args([
            "-c",
            "create table floor_probe (x int); insert into floor_probe values (1); \
                 select not pg_is_in_recovery()",
            "postgres",
        ])
        .stderr(Stdio::null());
        if let Ok(out) = q.output() {
            if String::from_utf8_lossy(&out.stdout).trim() == "t" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "floor server never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready = t.elapsed().as_secs_f64();
    let replay = redo_done.unwrap_or(ready).min(ready);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let _ = child.wait();
    std::fs::remove_dir_all(&base).ok();
    std::fs::remove_dir_all(&copy).ok();
    std::fs::remove_dir_all(&sock).ok();
    Floor {
        restore: restore_secs,
        copy: copy_secs,
        par_copy: par_secs,
        replay,
        start: ready - replay,
        bytes,
        segments,
    }
}

/// Copies the tree `from` to `to` (directories first, then files on `threads` threads; modes
/// and owners kept).
fn parallel_copy(from: &Path, to: &Path, threads: usize) {
    use std::os::unix::fs::MetadataExt;
    fn walk(from: &Path, to: &Path, files: &mut Vec<(PathBuf, PathBuf)>) {
        let meta = std::fs::metadata(from).expect("stat");
        std::fs::create_dir(to).expect("mkdir");
        std::fs::set_permissions(to, meta.permissions()).expect("chmod");
        std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid())).expect("chown");
        for e in std::fs::read_dir(from).expect("read_dir").flatten() {
            let (src, dst) = (e.path(), to.join(e.file_name()));
            if e.file_type().expect("type").is_dir() {
                walk(&src, &dst, files);
            } else {
                files.push((src, dst));
            }
        }
    }
    let mut files = Vec::new();
    walk(from, to, &mut files);
    let files = std::sync::Mutex::new(files);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let next = files.lock().expect("lock").pop();
                let Some((src, dst)) = next else { break };
                std::fs::copy(&src, &dst).expect("copy");
                let m = std::fs::metadata(&src).expect("stat");
                std::os::unix::fs::chown(&dst, Some(m.uid()), Some(m.gid())).expect("chown");
            });
        }
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() {
    let mut o = parse_args();
    o.bin = o.bin.canonicalize().unwrap_or(o.bin);
    assert!(
        o.bin.is_file(),
        "{} not found: cargo build --release -p carta-dr-cli",
        o.bin.display()
    );
    std::fs::create_dir_all(&o.dir).expect("bench dir");
    let parent = o.dir.join(format!("drill-bench-{}", std::process::id()));
    std::fs::create_dir_all(&parent).expect("bench dir");
    sh(&format!(
        "chmod 755 {} {}",
        o.dir.display(),
        parent.display()
    ));
    if let Some(u) = test_user() {
        sh(&format!("chown {} {}", u.name, parent.display()));
    }
    let mut drills = Vec::new();
    let mut floors = Vec::new();
    for i in 1..=o.runs {
        eprintln!("run {i}/{}: drill at scale {}", o.runs, o.scale);
        let d = run_drill(&o, &parent);
        eprintln!(
            "  RTO {:.2}s {:?}",
            d.rto,
            d.phases
                .iter()
                .map(|(n, s)| format!("{n} {s:.2}"))
                .collect::<Vec<_>>()
        );
        eprintln!("run {i}/{}: floor", o.runs);
        let f = measure_floor(&o, &d, &parent);
        eprintln!(
            "  restore alone {:.2}s; floor copy {:.2}s (parallel {:.2}s) replay {:.2}s start {:.2}s ({} bytes, {} segments)",
            f.restore, f.copy, f.par_copy, f.replay, f.start, f.bytes, f.segments
        );
        std::fs::remove_dir_all(&d.area).ok();
        drills.push(d);
        floors.push(f);
    }
    std::fs::remove_dir_all(&parent).ok();

    let n = drills.len();
    println!(
        "\nrestore drill at pgbench scale {} — median of {n} interleaved runs (drill, floor, ...)\n",
        o.scale
    );
    println!("| RTO phase | seconds (median) | runs |");
    println!("|---|---:|---|");
    let names: Vec<String> = drills[0].phases.iter().map(|p| p.0.clone()).collect();
    for name in &names {
        let vals: Vec<f64> = drills
            .iter()
            .filter_map(|d| d.phases.iter().find(|p| &p.0 == name).map(|p| p.1))
            .collect();
        println!(
            "| {name} | {:.2} | {} |",
            median(vals.clone()),
            vals.iter()
                .map(|v| format!("{v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let rto: Vec<f64> = drills.iter().map(|d| d.rto).collect();
    println!(
        "| **RTO** | **{:.2}** | {} |",
        median(rto.clone()),
        rto.iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let check_names: Vec<String> = drills[0].checks.iter().map(|c| c.0.clone()).collect();
    if drills[0].checks.iter().any(|c| c.1 > 0.0) {
        println!("\n| verify check | seconds (median) |");
        println!("|---|---:|");
        for c in &check_names {
            let vals: Vec<f64> = drills
                .iter()
                .filter_map(|d| d.checks.iter().find(|x| &x.0 == c).map(|x| x.1))
                .collect();
            println!("| {c} | {:.2} |", median(vals));
        }
    }
    let copy: Vec<f64> = floors.iter().map(|f| f.copy).collect();
    let replay: Vec<f64> = floors.iter().map(|f| f.replay).collect();
    let start: Vec<f64> = floors.iter().map(|f| f.start).collect();
    let total: Vec<f64> = floors.iter().map(|f| f.copy + f.replay + f.start).collect();
    let par_copy: Vec<f64> = floors.iter().map(|f| f.par_copy).collect();
    let par_total: Vec<f64> = floors
        .iter()
        .map(|f| f.par_copy + f.replay + f.start)
        .collect();
    println!("\n| floor component | seconds (median) | runs |");
    println!("|---|---:|---|");
    for (name, v) in [
        ("copy (cp -a + sync)", &copy),
        ("WAL replay (launch to redo done)", &replay),
        ("start (redo done to INSERT committed)", &start),
        ("**floor**", &total),
        ("copy with 4 threads + sync (stricter)", &par_copy),
        (
            "**stricter floor** (4-thread copy + replay + start)",
            &par_total,
        ),
    ] {
        println!(
            "| {name} | {:.2} | {} |",
            median(v.clone()),
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let ratios: Vec<f64> = drills
        .iter()
        .zip(&floors)
        .map(|(d, f)| d.rto / (f.copy + f.replay + f.start))
        .collect();
    let strict: Vec<f64> = drills
        .iter()
        .zip(&floors)
        .map(|(d, f)| d.rto / (f.par_copy + f.replay + f.start))
        .collect();
    let without_verify: Vec<f64> = drills
        .iter()
        .zip(&floors)
        .map(|(d, f)| {
            let v = d
                .phases
                .iter()
                .find(|p| p.0 == "verify")
                .map(|p| p.1)
                .unwrap_or(0.0);
            (d.rto - v) / (f.copy + f.replay + f.start)
        })
        .collect();
    let restores: Vec<f64> = floors.iter().map(|f| f.restore).collect();
    println!(
        "\n`carta-dr restore` of the same backup alone (not part of the floor): {:.2} s median (runs {})",
        median(restores.clone()),
        restores
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "\ndata: {} bytes restored by the drill, {} WAL segments fetched by it; floor copy {} bytes, {} segments",
        drills[0].restored_bytes, drills[0].wal_segments, floors[0].bytes, floors[0].segments
    );
    println!(
        "ratio RTO / floor: {:.2} (runs {}); goal <= 1.20",
        median(ratios.clone()),
        ratios
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "ratio RTO / stricter floor: {:.2} (runs {})",
        median(strict.clone()),
        strict
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "ratio without the verify phase: {:.2} (runs {})",
        median(without_verify.clone()),
        without_verify
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
