//! `carta-dr verify --dump FILE` against archives written by a real pg_dump 15: a clean dump
//! passes, a single changed byte in a table's data block fails with the corruption status and
//! names the table, and the usage errors have their own status.

use std::process::Command;

use carta_dr_core::dump::verify_bytes;
use carta_dr_testkit::{scratch_dir, PgCluster};

fn carta_dr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_carta-dr"))
}

#[test]
fn verify_dump_finds_a_changed_byte_and_names_the_table() {
    let pg = PgCluster::builder().label("verify-dump").start();
    pg.psql("postgres", "CREATE DATABASE sales");
    pg.psql(
        "sales",
        "CREATE TABLE invoices (id int PRIMARY KEY, customer text, total numeric);
         INSERT INTO invoices SELECT g, 'customer ' || g, g * 1.5 FROM generate_series(1, 5000) g;
         CREATE TABLE notes (id int, body text);
         INSERT INTO notes SELECT g, repeat('note ', g % 20) FROM generate_series(1, 2000) g;",
    );
    let dir = scratch_dir("verify-dump");
    let file = dir.path().join("sales.dump");
    let out = pg
        .command("pg_dump")
        .args(["-Fc", "-d", "sales", "-f"])
        .arg(&file)
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Clean: exit 0.
    let ok = carta_dr()
        .args(["verify", "--dump"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "clean dump: {text}");
    assert!(text.contains("verdict: clean"), "{text}");

    // One byte changed inside the data block of public.invoices.
    let mut data = std::fs::read(&file).unwrap();
    let summary = verify_bytes("sales", &data).1;
    let block = summary
        .blocks
        .iter()
        .find(|b| b.name == "public.invoices")
        .expect("a data block for public.invoices");
    let at = (block.offset + block.stored_bytes / 2) as usize + 11;
    data[at] = data[at].wrapping_add(1);
    let bad = dir.path().join("sales-bad.dump");
    std::fs::write(&bad, &data).unwrap();

    let out = carta_dr()
        .args(["verify", "--dump"])
        .arg(&bad)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "corruption status: {text}");
    assert!(text.contains("public.invoices"), "names the table: {text}");
    assert!(text.contains("CORRUPT"), "{text}");
    assert!(
        !text.contains("public.notes)"),
        "the intact table is not blamed: {text}"
    );

    // The same as JSON.
    let out = carta_dr()
        .args(["verify", "--json", "--dump"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["verdict"], "corrupt");
    assert_eq!(v["findings"][0]["location"]["name"], "public.invoices");

    // pg_restore agrees that the damaged dump cannot be restored.
    let out = pg
        .command("pg_restore")
        .args(["-f", "/dev/null"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "pg_restore reads the damaged dump without error"
    );
}

#[test]
fn verify_usage_errors_exit_2() {
    let out = carta_dr().args(["verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "neither --wal nor --dump");
    let out = carta_dr()
        .args(["verify", "--wal", "--dump", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "both --wal and --dump");
}

/// `verify --wal --wal-dir` over the segments a PostgreSQL 15 cluster archived: clean, then a
/// flipped bit inside a record body is reported with its segment and exit status 5.
#[test]
fn verify_wal_dir_reports_a_damaged_record() {
    let dir = scratch_dir("verify-wal");
    let archive = dir.subdir("archive");
    let mut pg = PgCluster::builder()
        .label("verify-wal")
        .conf("archive_mode", "on")
        .conf(
            "archive_command",
            &format!("cp %p {}/%f", archive.display()),
        )
        .start();
    pg.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    );
    for _ in 0..3 {
        pg.psql(
            "postgres",
            "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g",
        );
        pg.psql("postgres", "SELECT pg_switch_wal()");
    }
    pg.wait_until(
        "three segments archived",
        std::time::Duration::from_secs(60),
        || {
            std::fs::read_dir(&archive)
                .map(|d| d.count() >= 3)
                .unwrap_or(false)
        },
    );
    pg.stop();
    let out = carta_dr()
        .args(["verify", "--wal", "--complete-segments", "--wal-dir"])
        .arg(&archive)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "clean archive: {text}");
    // Damage the middle of the second segment (inside WAL that is read).
    let mut segs: Vec<_> = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().len() == 24)
        .collect();
    segs.sort();
    let victim = &segs[1];
    let mut data = std::fs::read(victim).unwrap();
    data[8192 + 1000] ^= 0x10;
    std::fs::write(victim, &data).unwrap();
    let out = carta_dr()
        .args([
            "verify",
            "--wal",
            "--json",
            "--complete-segments",
            "--wal-dir",
        ])
        .arg(&archive)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["location"]["segment"] == name),
        "names {name}: {v}"
    );
}
