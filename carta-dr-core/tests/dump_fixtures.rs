//! The dump verifier over real pg_dump 15 archives (tests/fixtures/dump, made by
//! tests/fixtures/generate.sh).

use carta_dr_core::dump::{verify_bytes, ArchiveFormat, Compression, DataOffset, DumpCheck};
use carta_dr_core::traits::{Location, Verdict};

fn fixture(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dump")
        .join(format!("{name}.dump.zst"));
    let z = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    zstd::decode_all(&z[..]).expect("fixture decompresses")
}

#[test]
fn clean_archives_are_clean() {
    for name in ["shop", "shop_z0", "shop_pipe"] {
        let data = fixture(name);
        let (report, summary) = verify_bytes(name, &data);
        for f in &report.findings {
            eprintln!("{name}: {:?} {} {}", f.severity, f.location, f.what);
        }
        assert_eq!(report.verdict(), Verdict::Clean, "{name}");
        let h = summary.header.as_ref().expect("header");
        assert_eq!(h.format, ArchiveFormat::Custom);
        assert_eq!((h.version.major, h.version.minor), (1, 14));
        assert_eq!(h.database.as_deref(), Some("shop"));
        assert!(h.server_version.as_deref().unwrap_or("").starts_with("15."));
        let tables: Vec<_> = summary.tables().collect();
        assert_eq!(tables.len(), 5, "{name}: 5 tables with data");
        for (e, b) in &tables {
            let b = b.unwrap_or_else(|| panic!("{name}: no block for {}", e.qualified_name()));
            eprintln!(
                "{name}: {:<22} id {:>4} at {:>6}: {:>6} stored, {:>6} data bytes, {} rows",
                b.name, b.dump_id, b.offset, b.stored_bytes, b.data_bytes, b.rows
            );
        }
        let rows = |t: &str| {
            tables
                .iter()
                .find(|(e, _)| e.qualified_name() == t)
                .and_then(|(_, b)| *b)
                .map(|b| b.rows)
        };
        assert_eq!(rows("public.customers"), Some(600));
        assert_eq!(rows("public.orders"), Some(700));
        assert_eq!(rows("public.Mixed Case"), Some(2));
        assert_eq!(rows("public.empty_table"), Some(0));
        assert_eq!(rows("audit.log"), Some(200));
        let blobs = summary
            .blocks
            .iter()
            .find(|b| b.desc == "BLOBS")
            .expect("BLOBS block");
        assert_eq!(blobs.rows, 2, "two large objects");
        let offsets_set = summary
            .toc
            .iter()
            .filter(|e| e.had_dumper)
            .all(|e| matches!(e.data_offset, Some(DataOffset::Set { .. })));
        assert_eq!(
            offsets_set,
            name != "shop_pipe",
            "{name}: offsets set unless piped"
        );
        assert_eq!(h.compression == Compression::None, name == "shop_z0");
    }
}

#[test]
fn feeding_in_any_pieces_gives_the_same_result() {
    let data = fixture("shop");
    let whole = verify_bytes("shop", &data).1;
    for piece in [1usize, 7, 4096, 65537] {
        let mut c = DumpCheck::new();
        for p in data.chunks(piece) {
            c.feed(p);
        }
        let s = c.finish();
        assert_eq!(s.blocks, whole.blocks, "piece size {piece}");
        assert!(
            s.findings.is_empty(),
            "piece size {piece}: {:?}",
            s.findings
        );
    }
}

#[test]
fn a_changed_byte_in_table_data_names_the_table() {
    let mut data = fixture("shop");
    let s = verify_bytes("shop", &data).1;
    let b = s
        .blocks
        .iter()
        .find(|b| b.name == "public.orders")
        .expect("orders block");
    // The block type byte, the Int id, the first chunk length: then compressed payload.
    let at = b.offset as usize + 1 + 5 + 5 + 100;
    data[at] ^= 0x20;
    let (report, _) = verify_bytes("shop", &data);
    assert_eq!(report.verdict(), Verdict::Corrupt);
    let f = &report.findings[0];
    match &f.location {
        Location::Dump { name, dump_id, .. } => {
            assert_eq!(name.as_deref(), Some("public.orders"));
            assert_eq!(*dump_id, Some(b.dump_id));
        }
        other => panic!("unexpected location {other:?}"),
    }
}
