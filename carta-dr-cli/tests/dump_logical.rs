//! `carta-dr dump` against PostgreSQL 15 and a local repository: a logical backup with row
//! counts from the dump's own snapshot, its listing, a restore that reproduces the data, and a
//! failing pg_dump that leaves nothing that looks complete.

use std::process::Command;

use carta_dr_testkit::{pg_bin_dir, scratch_dir, PgCluster};

fn carta_dr(repo: &str, pg: &PgCluster) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_carta-dr"));
    c.env("CARTA_DR_REPO", repo)
        .env(
            "CARTA_DR_PG",
            format!("host=127.0.0.1 port={} user=postgres", pg.port()),
        )
        .env("CARTA_DR_PG_BIN", pg_bin_dir())
        .env_remove("CARTA_DR_KEY")
        .env_remove("CARTA_DR_KEY_FILE");
    c
}

fn objects(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn dump_list_restore_and_failure() {
    let pg = PgCluster::builder().label("dump-logical").start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 30000) g;
         CREATE TABLE \"Mixed Case\" (k text); INSERT INTO \"Mixed Case\" VALUES ('a'), ('b');",
    );
    let repo_dir = scratch_dir("dump-repo");
    let repo = format!("file://{}", repo_dir.path().display());

    let out = carta_dr(&repo, &pg)
        .args(["dump", "--db", "shop", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = rec["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("shop/"));
    assert!(rec["server_version"].as_str().unwrap().starts_with("15."));
    assert!(rec["pg_dump_version"].as_str().unwrap().contains("15."));
    let rows = |t: &str| {
        rec["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["table"] == t)
            .map(|x| x["rows"].as_i64().unwrap())
    };
    assert_eq!(rows("orders"), Some(30000));
    assert_eq!(rows("Mixed Case"), Some(2));

    // The stored dump verifies by ID, through the envelope.
    let out = carta_dr(&repo, &pg)
        .args(["verify", "--dump", &id])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = carta_dr(&repo, &pg)
        .args(["dump", "list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());

    // Restore into a new database; the data matches the counts of the snapshot.
    pg.psql("postgres", "CREATE DATABASE shop_copy");
    let out = carta_dr(&repo, &pg)
        .args(["dump", "restore", &id, "--into", "shop_copy"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg.psql("shop_copy", "SELECT count(*) FROM orders"), "30000");
    assert_eq!(
        pg.psql(
            "shop_copy",
            "SELECT md5(string_agg(note, ',' ORDER BY id)) FROM orders"
        ),
        pg.psql(
            "shop",
            "SELECT md5(string_agg(note, ',' ORDER BY id)) FROM orders"
        )
    );

    // pg_dump fails (no such database): non-zero exit, nothing new in the repository.
    let before = objects(repo_dir.path());
    let out = carta_dr(&repo, &pg)
        .args(["dump", "--db", "no_such_db"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let after = objects(repo_dir.path());
    assert_eq!(
        before.iter().filter(|p| p.starts_with("dumps")).count(),
        after.iter().filter(|p| p.starts_with("dumps")).count(),
        "a failed dump leaves no object: {after:?}"
    );

    // pg_dump dies after writing part of the archive (exit 1), or claims success with a cut
    // archive (exit 0): neither leaves a dump object or a record.
    let fake = scratch_dir("fake-pg-dump");
    for (name, code) in [("dies", 1), ("lies", 0)] {
        let bin = fake.path().join(name);
        std::fs::create_dir_all(&bin).unwrap();
        let script = format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {real}/pg_dump --version; fi\n{real}/pg_dump \"$@\" | head -c 20000\nexit {code}\n",
            real = pg_bin_dir().display()
        );
        let p = bin.join("pg_dump");
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let out = carta_dr(&repo, &pg)
            .args(["dump", "--db", "shop"])
            .env("CARTA_DR_PG_BIN", &bin)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}: the dump must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if code == 0 {
            assert!(stderr.contains("fails verification"), "{name}: {stderr}");
        }
        let now = objects(repo_dir.path());
        assert_eq!(
            now.iter().filter(|p| p.starts_with("dumps")).count(),
            2,
            "{name}: only the first dump and its record remain: {now:?}"
        );
    }
    let out = carta_dr(&repo, &pg)
        .args(["dump", "list", "--json"])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
}
