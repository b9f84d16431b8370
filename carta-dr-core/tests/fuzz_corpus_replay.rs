//! Replays every file of the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! very harness functions the cargo-fuzz targets call (`carta_dr_core::fuzzing`), on stable
//! and in every test run. Fails if the corpus is missing or a target's directory is empty.
//!
//! Also holds the regression tests of what fuzzing found; the offending inputs are in the
//! corpus as `crash-*` / `regression-*` files too.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use carta_dr_core::{fuzzing, BackupId};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

fn harness(target: &str) -> Option<fn(&[u8])> {
    match target {
        "envelope" => Some(fuzzing::envelope),
        "dump" => Some(fuzzing::dump),
        "store_path" => Some(fuzzing::store_path),
        "wal_segment_name" => Some(fuzzing::wal_names),
        "manifest" => Some(fuzzing::manifest),
        _ => None,
    }
}

fn replay(target: &str) -> usize {
    let f = harness(target).expect("known target");
    let dir = corpus_root().join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "fuzz corpus {} is missing ({e}); it is committed with the repository",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "fuzz corpus {} is empty", dir.display());
    for p in &files {
        let data = std::fs::read(p).expect("read corpus file");
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "{target}: {} fails the harness", p.display());
    }
    files.len()
}

#[test]
fn every_corpus_directory_belongs_to_a_target() {
    let root = corpus_root();
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("fuzz corpus {} is missing: {e}", root.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(
        dirs,
        [
            "dump",
            "envelope",
            "manifest",
            "store_path",
            "wal_segment_name"
        ]
    );
    for d in &dirs {
        assert!(harness(d).is_some(), "no harness for corpus directory {d}");
    }
}

#[test]
fn replay_envelope_corpus() {
    let n = replay("envelope");
    eprintln!("envelope: {n} inputs");
}

#[test]
fn replay_dump_corpus() {
    let n = replay("dump");
    eprintln!("dump: {n} inputs");
}

#[test]
fn replay_manifest_corpus() {
    let n = replay("manifest");
    eprintln!("manifest: {n} inputs");
}

#[test]
fn replay_store_path_corpus() {
    let n = replay("store_path");
    eprintln!("store_path: {n} inputs");
}

#[test]
fn replay_wal_segment_name_corpus() {
    let n = replay("wal_segment_name");
    eprintln!("wal_segment_name: {n} inputs");
}

/// Found by the `wal_segment_name` target: `u32::from_str` accepts a leading `+`, so the
/// suffix `-+0241` parsed as sequence 241 and printed back as `-241` (two names, one id).
#[test]
fn regression_backup_id_suffix_with_plus_sign_is_rejected() {
    assert!(BackupId::from_str("20240229T235959Z-+0241").is_err());
    assert!(BackupId::from_str("20240229T235959Z-+1").is_err());
    assert_eq!(
        BackupId::from_str("20240229T235959Z-241")
            .unwrap()
            .to_string(),
        "20240229T235959Z-241"
    );
}

/// A 16-byte stamp with a multi-byte character across a field boundary made the fixed
/// byte-range slicing panic (not a char boundary); it must be a plain parse error.
#[test]
fn regression_backup_id_with_multibyte_character_does_not_panic() {
    let s = "202\u{e9}112T132400Z";
    assert_eq!(s.len(), 16);
    assert!(BackupId::from_str(s).is_err());
    assert!(BackupId::from_str("20261123T13240\u{e9}").is_err());
}
