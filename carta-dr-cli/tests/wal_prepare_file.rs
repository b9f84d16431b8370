//! `StoreWalArchive::prepare_file` (what `wal-push` runs: each thread reads and seals its
//! chunks of the file) against `prepare` (the whole file in memory), on real files.

use std::sync::Arc;

use carta_dr_backends::LocalStore;
use carta_dr_core::archive::StoreWalArchive;
use carta_dr_core::envelope::{open, EnvelopeOptions};
use carta_dr_core::wal::page::{
    encode_page_header, LongHeaderFields, PageHeader, XLOG_PAGE_MAGIC_PG15, XLP_LONG_HEADER,
};
use carta_dr_core::{Error, WalFileName, WalSegmentName, WalSegmentSize};

const MIB: u64 = 1 << 20;
const SYSID: u64 = 7_310_391_390_467_375_236;

/// A 16 MiB segment whose first page header is what PostgreSQL 15 writes for `name`, with
/// varied bytes after it.
fn segment(name: &str) -> Vec<u8> {
    let n: WalSegmentName = name.parse().unwrap();
    let size = 16 * MIB;
    let h = PageHeader {
        magic: XLOG_PAGE_MAGIC_PG15,
        info: XLP_LONG_HEADER,
        tli: n.timeline.get(),
        pageaddr: n.start_lsn(WalSegmentSize::new(size).unwrap()),
        rem_len: 0,
        long: Some(LongHeaderFields {
            system_identifier: SYSID,
            seg_size: size as u32,
            xlog_blcksz: 8192,
        }),
    };
    let mut v = vec![0u8; size as usize];
    let hb = encode_page_header(&h);
    v[..hb.len()].copy_from_slice(&hb);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for (i, b) in v[64..].iter_mut().enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = if (i / 8192) % 2 == 0 {
            (i % 251) as u8
        } else {
            x as u8
        };
    }
    v
}

fn archive(dir: &std::path::Path) -> StoreWalArchive {
    let store = LocalStore::open(dir.join("repo")).unwrap();
    StoreWalArchive::new(Arc::new(store), EnvelopeOptions::zstd(1))
}

#[test]
fn prepare_file_seals_exactly_what_prepare_seals() {
    let dir = tempfile::tempdir().unwrap();
    let a = archive(dir.path());
    let name: WalFileName = "000000010000000A00000042".parse().unwrap();
    let data = segment("000000010000000A00000042");
    let path = dir.path().join("seg");
    std::fs::write(&path, &data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let whole = a.prepare(&name, &data, None).unwrap();
    for threads in [1, 2, 3] {
        let p = a
            .prepare_file(&name, &file, data.len() as u64, None, threads)
            .unwrap();
        assert!(p.sealed == whole.sealed, "threads {threads}");
        assert_eq!(p.crc32c, whole.crc32c);
        assert_eq!(p.raw_len, 16 * MIB);
        assert_eq!(p.identity, whole.identity);
        assert!(p.identity.is_some());
        assert!(open("t", &p.sealed, None).unwrap() == data);
    }
}

#[test]
fn prepare_file_refuses_what_prepare_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let a = archive(dir.path());
    // The content of segment 0x42 under the name of 0x43: the page address does not match.
    let data = segment("000000010000000A00000042");
    let path = dir.path().join("seg");
    std::fs::write(&path, &data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let other: WalFileName = "000000010000000A00000043".parse().unwrap();
    let e = a
        .prepare_file(&other, &file, data.len() as u64, None, 2)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
    assert!(a.prepare(&other, &data, None).is_err());

    // A file shorter than it was when its size was taken fails, it is not sealed short.
    let name: WalFileName = "000000010000000A00000042".parse().unwrap();
    std::fs::write(&path, &data[..(15 * MIB) as usize]).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    assert!(a
        .prepare_file(&name, &file, data.len() as u64, None, 2)
        .is_err());
}

#[test]
fn prepare_file_reads_history_files_whole() {
    let dir = tempfile::tempdir().unwrap();
    let a = archive(dir.path());
    let name: WalFileName = "00000002.history".parse().unwrap();
    let data = b"1\t0/3000000\tno recovery target specified\n".to_vec();
    let path = dir.path().join("h");
    std::fs::write(&path, &data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let p = a
        .prepare_file(&name, &file, data.len() as u64, None, 2)
        .unwrap();
    let whole = a.prepare(&name, &data, None).unwrap();
    assert!(p.sealed == whole.sealed);
    assert_eq!(p.crc32c, whole.crc32c);
    assert!(p.identity.is_none());
}
