//! `wal-push` look-ahead on a local repository, with real files: the files PostgreSQL marked
//! ready are stored and recorded in the spool, a later call for one of them is acknowledged
//! only if the file still has the content that was stored, and a damaged marker counts as
//! none.

mod support;

use std::path::{Path, PathBuf};

use carta_dr_core::wal::page::{
    encode_page_header, LongHeaderFields, PageHeader, XLOG_PAGE_MAGIC_PG15, XLP_LONG_HEADER,
};
use carta_dr_core::{WalSegmentName, WalSegmentSize};
use carta_dr_testkit::scratch_dir;
use support::Repo;

const SEG: u64 = 1 << 20;
const SYSID: u64 = 7_310_391_390_467_375_236;

/// A 1 MiB segment whose first page header is what PostgreSQL 15 writes for `name`.
fn segment(name: &str, fill: u8) -> Vec<u8> {
    let n: WalSegmentName = name.parse().unwrap();
    let h = PageHeader {
        magic: XLOG_PAGE_MAGIC_PG15,
        info: XLP_LONG_HEADER,
        tli: n.timeline.get(),
        pageaddr: n.start_lsn(WalSegmentSize::new(SEG).unwrap()),
        rem_len: 0,
        long: Some(LongHeaderFields {
            system_identifier: SYSID,
            seg_size: SEG as u32,
            xlog_blcksz: 8192,
        }),
    };
    let mut v = vec![0u8; SEG as usize];
    let hb = encode_page_header(&h);
    v[..hb.len()].copy_from_slice(&hb);
    for (i, b) in v[64..200_000].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(fill) ^ (i >> 9) as u8;
    }
    v
}

fn name(i: u32) -> String {
    format!("0000000100000000{i:08X}")
}

fn stored(repo: &Repo, n: &str) -> PathBuf {
    repo.root().unwrap().join("wal/00000001/00000000").join(n)
}

fn marker(pg_wal: &Path, n: &str) -> PathBuf {
    pg_wal.join("carta-dr-spool/pushed").join(n)
}

#[test]
fn look_ahead_stores_ready_files_and_trusts_a_marker_only_for_the_same_content() {
    let repo = Repo::local("wal-lookahead");
    let dir = scratch_dir("wal-lookahead-data");
    let pg_wal = dir.subdir("pg_wal");
    let status = dir.subdir("pg_wal/archive_status");
    for i in 1..=5 {
        std::fs::write(pg_wal.join(name(i)), segment(&name(i), i as u8)).unwrap();
        std::fs::write(status.join(format!("{}.ready", name(i))), b"").unwrap();
    }
    let push = |i: u32| repo.run(&["wal-push", pg_wal.join(name(i)).to_str().unwrap()]);

    // The call for the first file stores it and the four others marked ready.
    let out = push(1);
    assert!(out.status.success(), "{out:?}");
    for i in 1..=5 {
        assert!(stored(&repo, &name(i)).is_file(), "{} not stored", name(i));
    }
    assert!(!marker(&pg_wal, &name(1)).exists());
    for i in 2..=5 {
        let m = std::fs::read_to_string(marker(&pg_wal, &name(i))).unwrap();
        assert!(m.contains(&repo.url), "marker {m:?}");
    }

    // PostgreSQL's call for a file pushed ahead: acknowledged from the marker.
    let before = std::fs::metadata(stored(&repo, &name(2)))
        .unwrap()
        .modified()
        .unwrap();
    let out = push(2);
    assert!(out.status.success(), "{out:?}");
    let after = std::fs::metadata(stored(&repo, &name(2)))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "the stored copy was rewritten");

    // The same name with other content: the marker does not match, the push is a conflict
    // (exit 6) naming both checksums, and the stored copy is kept.
    let kept = std::fs::read(stored(&repo, &name(3))).unwrap();
    std::fs::write(pg_wal.join(name(3)), segment(&name(3), 99)).unwrap();
    let out = push(3);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CRC-32C"), "{err}");
    assert_eq!(std::fs::read(stored(&repo, &name(3))).unwrap(), kept);

    // A damaged marker counts as none: the file is compared with the stored copy instead.
    std::fs::write(marker(&pg_wal, &name(4)), b"\0\0garbage").unwrap();
    let out = push(4);
    assert!(out.status.success(), "{out:?}");

    // A marker of another repository is not trusted for this one: the call compares with
    // this repository's copy, and with that copy removed it stores the file again.
    let m = std::fs::read_to_string(marker(&pg_wal, &name(5))).unwrap();
    std::fs::write(
        marker(&pg_wal, &name(5)),
        m.replace(&repo.url, "file:///elsewhere"),
    )
    .unwrap();
    std::fs::remove_file(stored(&repo, &name(5))).unwrap();
    let out = push(5);
    assert!(out.status.success(), "{out:?}");
    assert!(stored(&repo, &name(5)).is_file());
}
