//! Every single-bit flip, every truncation, and every chunk swap, reorder, duplication or
//! removal of small sealed objects is detected, and the error names the damaged chunk.

use std::ops::Range;
use std::sync::Arc;

use carta_dr_core::envelope::{open, seal, Decoder, EnvelopeOptions, Key, Opener};
use carta_dr_core::fuzzing::{fix_checksums, layout, Layout};
use carta_dr_core::Error;

const CHUNK: usize = 64;

/// ~300 bytes: compressible runs and random-looking runs, so that both compressed and
/// stored chunks occur.
fn sample() -> Vec<u8> {
    let mut v = Vec::new();
    let mut x: u32 = 0x1234_5678;
    for i in 0..300usize {
        if (i / 64) % 2 == 0 {
            v.push(b"abcabcabd "[i % 10]);
        } else {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v.push(x as u8);
        }
    }
    v
}

fn key() -> Arc<Key> {
    Arc::new(Key::from_bytes([0x5a; 32]))
}

fn variants() -> Vec<(&'static str, EnvelopeOptions)> {
    vec![
        (
            "none",
            EnvelopeOptions::uncompressed().with_chunk_size(CHUNK),
        ),
        ("zstd3", EnvelopeOptions::zstd(3).with_chunk_size(CHUNK)),
        (
            "zstd3+aes",
            EnvelopeOptions::zstd(3)
                .with_chunk_size(CHUNK)
                .with_key(key()),
        ),
        (
            "none+aes",
            EnvelopeOptions::uncompressed()
                .with_chunk_size(CHUNK)
                .with_key(key()),
        ),
    ]
}

/// Opens with both the one-shot and the streaming decoder (fed in 5-byte pieces) and
/// returns the one-shot result, asserting both agree on success or failure.
fn open_both(sealed: &[u8], key: Option<&Key>) -> Result<Vec<u8>, Error> {
    let one = open("obj", sealed, key);
    let mut d = Decoder::new("obj", key);
    let mut out = Vec::new();
    let mut streamed: Result<(), Error> = Ok(());
    'outer: for p in sealed.chunks(5) {
        d.feed(p);
        loop {
            match d.next_chunk() {
                Ok(Some(c)) => out.extend_from_slice(c),
                Ok(None) => break,
                Err(e) => {
                    streamed = Err(e);
                    break 'outer;
                }
            }
        }
    }
    let streamed = streamed.and_then(|()| d.finish().map(|_| ()));
    match (&one, &streamed) {
        (Ok(a), Ok(())) => assert_eq!(a, &out),
        (Err(_), Err(_)) => {}
        _ => panic!("one-shot {one:?} and streaming {streamed:?} disagree"),
    }
    one
}

fn region_of(l: &Layout, byte: usize) -> Option<u64> {
    l.chunks
        .iter()
        .position(|r: &Range<usize>| r.contains(&byte))
        .map(|i| i as u64)
}

#[test]
fn sample_has_several_chunks_of_both_kinds() {
    let data = sample();
    let sealed = seal(&EnvelopeOptions::zstd(3).with_chunk_size(CHUNK), &data).unwrap();
    let l = layout(&sealed).unwrap();
    assert_eq!(l.chunks.len(), 5);
    let compressed = l.chunks.iter().filter(|r| sealed[r.start + 1] == 1).count();
    let stored = l.chunks.iter().filter(|r| sealed[r.start + 1] == 0).count();
    assert!(
        compressed >= 2 && stored >= 2,
        "{compressed} compressed, {stored} stored"
    );
}

#[test]
fn every_bit_flip_of_a_plain_object_is_corrupt_and_names_its_chunk() {
    let data = sample();
    for (name, opts) in variants().into_iter().filter(|(_, o)| o.key.is_none()) {
        let sealed = seal(&opts, &data).unwrap();
        let l = layout(&sealed).unwrap();
        assert_eq!(open("obj", &sealed, None).unwrap(), data);
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[byte] ^= 1 << bit;
                match open_both(&bad, None) {
                    Err(Error::Corrupt { chunk, path, what }) => {
                        assert_eq!(path, "obj");
                        if let Some(c) = region_of(&l, byte) {
                            assert_eq!(
                                chunk,
                                Some(c),
                                "{name}: flip at byte {byte} bit {bit} blamed on {chunk:?}: {what}"
                            );
                        }
                    }
                    other => panic!("{name}: flip at byte {byte} bit {bit}: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn every_bit_flip_of_an_encrypted_object_fails() {
    let data = sample();
    let k = key();
    for (name, opts) in variants().into_iter().filter(|(_, o)| o.key.is_some()) {
        let sealed = seal(&opts, &data).unwrap();
        let l = layout(&sealed).unwrap();
        assert_eq!(open("obj", &sealed, Some(&k)).unwrap(), data);
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[byte] ^= 1 << bit;
                match open_both(&bad, Some(&k)) {
                    Err(Error::Corrupt { chunk, .. }) => {
                        if let Some(c) = region_of(&l, byte) {
                            assert_eq!(chunk, Some(c), "{name}: byte {byte} bit {bit}");
                        }
                    }
                    Err(Error::Crypto { .. }) => {}
                    other => panic!("{name}: flip at byte {byte} bit {bit}: {other:?}"),
                }
            }
        }
    }
}

/// An attacker without the key recomputes every CRC after the change: authentication
/// still fails, for every bit of every byte.
#[test]
fn forged_bit_flips_with_recomputed_checksums_fail_authentication() {
    let data = sample();
    let k = key();
    for (name, opts) in variants().into_iter().filter(|(_, o)| o.key.is_some()) {
        let sealed = seal(&opts, &data).unwrap();
        let l = layout(&sealed).unwrap();
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[byte] ^= 1 << bit;
                fix_checksums(&mut bad);
                if bad == sealed {
                    // The flip hit a CRC field that fix_checksums restored.
                    continue;
                }
                match open_both(&bad, Some(&k)) {
                    Err(Error::Crypto { what, .. }) => {
                        // A flip inside a chunk's ciphertext or tag is blamed on that chunk.
                        if let Some(c) = region_of(&l, byte) {
                            let payload = l.chunks[c as usize].start + 24;
                            if byte >= payload {
                                assert!(
                                    what.contains(&format!("chunk {c}")),
                                    "{name}: byte {byte}: {what}"
                                );
                            }
                        }
                    }
                    // The version byte is checked before anything else.
                    Err(Error::InvalidInput { .. }) if byte == 8 => {}
                    // Length and marker changes break the framing before decryption.
                    Err(Error::Corrupt { .. }) => {
                        // (Frame header fields are either authenticated as associated data or
                        // structurally checked, e.g. the raw CRC field must be zero.)
                        let framing = region_of(&l, byte)
                            .map(|c| byte < l.chunks[c as usize].start + 24)
                            .unwrap_or(true);
                        assert!(framing, "{name}: byte {byte} bit {bit} not authenticated");
                    }
                    other => panic!("{name}: forged flip at byte {byte} bit {bit}: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn every_truncation_fails() {
    let data = sample();
    let k = key();
    for (name, opts) in variants() {
        let key = opts.key.as_ref().map(|_| &*k);
        let sealed = seal(&opts, &data).unwrap();
        let l = layout(&sealed).unwrap();
        for len in 0..sealed.len() {
            let cut = &sealed[..len];
            match open_both(cut, key) {
                Err(Error::Corrupt { chunk, what, .. }) => {
                    assert!(what.contains("truncated"), "{name}: len {len}: {what}");
                    if let Some(c) = region_of(&l, len) {
                        if len > l.chunks[c as usize].start {
                            assert_eq!(chunk, Some(c), "{name}: cut at {len}");
                        }
                    }
                }
                other => panic!("{name}: truncated to {len}: {other:?}"),
            }
            // The streaming reader never reports a clean end either.
            let mut r = Opener::new("obj", cut, key);
            let mut sink = Vec::new();
            let e = std::io::Read::read_to_end(&mut r, &mut sink).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{name}: {len}");
            assert!(data.starts_with(&sink), "{name}: unverified bytes yielded");
        }
    }
}

fn rebuild(sealed: &[u8], l: &Layout, order: &[usize]) -> Vec<u8> {
    let mut v = sealed[l.header.clone()].to_vec();
    for &i in order {
        v.extend_from_slice(&sealed[l.chunks[i].clone()]);
    }
    v.extend_from_slice(&sealed[l.trailer.clone().unwrap()]);
    v
}

#[test]
fn swapped_reordered_duplicated_or_dropped_chunks_fail() {
    let data = sample();
    let k = key();
    let cases: [(&str, &[usize], u64); 6] = [
        ("swap 1 and 2", &[0, 2, 1, 3, 4], 1),
        ("rotate", &[1, 2, 3, 4, 0], 0),
        ("duplicate 1", &[0, 1, 1, 2, 3, 4], 2),
        ("drop 2", &[0, 1, 3, 4], 2),
        ("drop last", &[0, 1, 2, 3], 4),
        ("last first", &[4, 0, 1, 2, 3], 0),
    ];
    for (name, opts) in variants() {
        let key = opts.key.as_ref().map(|_| &*k);
        let sealed = seal(&opts, &data).unwrap();
        let l = layout(&sealed).unwrap();
        for (case, order, blamed) in cases {
            let bad = rebuild(&sealed, &l, order);
            match open_both(&bad, key) {
                Err(Error::Corrupt { chunk, what, .. }) => {
                    if case != "drop last" {
                        assert_eq!(chunk, Some(blamed), "{name} {case}: {what}");
                    }
                }
                other => panic!("{name} {case}: {other:?}"),
            }
            if key.is_some() {
                // With every CRC recomputed, authentication catches it.
                let mut forged = bad.clone();
                if order.len() != 5 {
                    // Also make the header's and trailer's lengths agree with the chunks.
                    let raw: u64 = order.iter().map(|&i| if i == 4 { 44 } else { 64 }).sum();
                    let t = layout(&forged).unwrap().trailer.unwrap();
                    forged[t.start + 4..t.start + 12]
                        .copy_from_slice(&(order.len() as u64).to_le_bytes());
                    forged[t.start + 12..t.start + 20].copy_from_slice(&raw.to_le_bytes());
                    forged[20..28].copy_from_slice(&raw.to_le_bytes());
                }
                fix_checksums(&mut forged);
                match open_both(&forged, key) {
                    Err(Error::Crypto { what, .. }) => {
                        assert!(what.contains("chunk") || what.contains("trailer"), "{what}")
                    }
                    other => panic!("{name} {case} forged: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn chunks_swapped_between_objects_fail() {
    let data = sample();
    let k = key();
    for (name, opts) in variants() {
        let key = opts.key.as_ref().map(|_| &*k);
        // Same content, same key, same options: only the per-object salt differs (and, for
        // plain objects, nothing: the trailer's whole-content CRC must catch the swap).
        let a = seal(&opts, &data).unwrap();
        let mut other = data.clone();
        other[70] ^= 0xff; // chunk 1 differs
        let b = seal(&opts, &other).unwrap();
        let (la, lb) = (layout(&a).unwrap(), layout(&b).unwrap());
        let mut mixed = a[..la.chunks[1].start].to_vec();
        mixed.extend_from_slice(&b[lb.chunks[1].clone()]);
        mixed.extend_from_slice(&a[la.chunks[2].start..]);
        let r = open_both(&mixed, key);
        assert!(
            matches!(r, Err(Error::Corrupt { .. }) | Err(Error::Crypto { .. })),
            "{name}: {r:?}"
        );
        if key.is_some() {
            let mut forged = mixed.clone();
            fix_checksums(&mut forged);
            match open_both(&forged, key) {
                Err(Error::Crypto { what, .. }) => assert!(what.contains("chunk 1"), "{what}"),
                other => panic!("{name}: forged cross-object swap: {other:?}"),
            }
            // Same content sealed twice with the same key: chunks still do not transplant.
            let c = seal(&opts, &data).unwrap();
            let lc = layout(&c).unwrap();
            let mut mixed = a[..la.chunks[1].start].to_vec();
            mixed.extend_from_slice(&c[lc.chunks[1].clone()]);
            mixed.extend_from_slice(&a[la.chunks[2].start..]);
            fix_checksums(&mut mixed);
            assert!(matches!(open_both(&mixed, key), Err(Error::Crypto { .. })));
        }
    }
}

#[test]
fn appended_junk_fails() {
    let data = sample();
    let k = key();
    for (name, opts) in variants() {
        let key = opts.key.as_ref().map(|_| &*k);
        let sealed = seal(&opts, &data).unwrap();
        let mut twice = sealed.clone();
        twice.extend_from_slice(&sealed);
        for junk in [
            vec![0u8],
            vec![b'C'; 20],
            vec![0xff; 1000],
            sealed[56..].to_vec(),
            twice,
        ] {
            let mut bad = sealed.clone();
            bad.extend_from_slice(&junk);
            match open_both(&bad, key) {
                Err(Error::Corrupt { what, .. }) => {
                    assert!(what.contains("after the trailer"), "{name}: {what}")
                }
                other => panic!("{name}: {} junk bytes: {other:?}", junk.len()),
            }
            let mut r = Opener::new("obj", &bad[..], key);
            let mut sink = Vec::new();
            assert!(std::io::Read::read_to_end(&mut r, &mut sink).is_err());
        }
    }
}

#[test]
fn wrong_missing_or_unexpected_key_is_a_crypto_error() {
    let data = sample();
    let enc = seal(
        &EnvelopeOptions::zstd(3)
            .with_chunk_size(CHUNK)
            .with_key(key()),
        &data,
    )
    .unwrap();
    let plain = seal(&EnvelopeOptions::zstd(3).with_chunk_size(CHUNK), &data).unwrap();
    let other = Key::from_bytes([0x5b; 32]);
    let e = open("obj", &enc, Some(&other)).unwrap_err();
    assert!(
        matches!(e, Error::Crypto { .. }) && e.to_string().contains("wrong key"),
        "{e}"
    );
    let e = open("obj", &enc, None).unwrap_err();
    assert!(
        matches!(e, Error::Crypto { .. }) && e.to_string().contains("no key"),
        "{e}"
    );
    let e = open("obj", &plain, Some(&key())).unwrap_err();
    assert!(
        matches!(e, Error::Crypto { .. }) && e.to_string().contains("not encrypted"),
        "{e}"
    );
}
