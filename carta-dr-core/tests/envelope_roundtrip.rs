//! Round trips through every entry point (one-shot, `Sealer`/`Opener`, `Decoder`) for the
//! edge sizes, every codec, with and without a key; statistics and header fields agree.

use std::io::{Read, Write};
use std::sync::Arc;

use carta_dr_core::envelope::{
    inspect, open, seal, seal_with_stats, Cipher, Codec, Decoder, EnvelopeOptions, Key, Opener,
    Sealer, DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL, MAX_CHUNK_SIZE,
};
use carta_dr_core::fuzzing::{layout, wal_like_data};
use carta_dr_core::Error;

const CS: usize = 1024;

fn codecs() -> [Codec; 4] {
    [
        Codec::None,
        Codec::Zstd { level: 1 },
        Codec::Zstd { level: 3 },
        Codec::Zstd { level: -3 },
    ]
}

fn sizes() -> [usize; 8] {
    [0, 1, CS - 1, CS, CS + 1, 2 * CS, 3 * CS + 5, 20 * CS + 7]
}

fn key() -> Arc<Key> {
    Arc::new(Key::from_bytes(*b"0123456789abcdef0123456789abcdef"))
}

fn all_options() -> Vec<EnvelopeOptions> {
    let mut v = Vec::new();
    for codec in codecs() {
        for with_key in [false, true] {
            let o = EnvelopeOptions {
                codec,
                chunk_size: CS,
                key: with_key.then(key),
            };
            v.push(o);
        }
    }
    v
}

/// Seals through `Sealer`, writing in pieces of `piece` bytes.
fn seal_streaming(opts: &EnvelopeOptions, data: &[u8], piece: usize) -> (Vec<u8>, u64) {
    let mut s = Sealer::new(opts, Vec::new()).unwrap();
    for p in data.chunks(piece.max(1)) {
        s.write_all(p).unwrap();
    }
    let (sealed, stats) = s.finish().unwrap();
    assert_eq!(stats.stored_len, sealed.len() as u64);
    (sealed, stats.raw_len)
}

fn open_streaming(sealed: &[u8], key: Option<&Key>, buf: usize) -> Vec<u8> {
    let mut r = Opener::new("obj", sealed, key);
    let mut out = Vec::new();
    let mut b = vec![0u8; buf];
    loop {
        let n = r.read(&mut b).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[..n]);
    }
    // End of file stays end of file.
    assert_eq!(r.read(&mut b).unwrap(), 0);
    assert_eq!(r.stats().raw_len, out.len() as u64);
    out
}

fn decode_pieces(sealed: &[u8], key: Option<&Key>, piece: usize) -> Vec<u8> {
    let mut d = Decoder::new("obj", key);
    let mut out = Vec::new();
    for p in sealed.chunks(piece) {
        d.feed(p);
        while let Some(c) = d.next_chunk().unwrap() {
            out.extend_from_slice(c);
        }
    }
    let st = d.finish().unwrap();
    assert_eq!(st.raw_len, out.len() as u64);
    assert_eq!(st.stored_len, sealed.len() as u64);
    assert_eq!(st.crc32c, crc32c::crc32c(&out));
    out
}

#[test]
fn every_size_codec_and_key_round_trips_through_every_entry_point() {
    let source = wal_like_data(20 * CS + 7, 1);
    for opts in all_options() {
        let k = opts.key.clone();
        let key = k.as_deref();
        for n in sizes() {
            let data = &source[..n];
            let ctx = format!("{:?} key={} n={n}", opts.codec, key.is_some());
            let (sealed, stats) = seal_with_stats(&opts, data).unwrap();
            assert_eq!(stats.raw_len, n as u64, "{ctx}");
            assert_eq!(stats.stored_len, sealed.len() as u64, "{ctx}");
            assert_eq!(stats.chunks, n.div_ceil(CS) as u64, "{ctx}");
            assert_eq!(stats.crc32c, crc32c::crc32c(data), "{ctx}");
            assert_eq!(layout(&sealed).unwrap().chunks.len() as u64, stats.chunks);

            assert_eq!(open("obj", &sealed, key).unwrap(), data, "{ctx}");
            assert_eq!(open_streaming(&sealed, key, 100), data, "{ctx}");
            assert_eq!(open_streaming(&sealed, key, 1 << 16), data, "{ctx}");
            for piece in [1, 13, CS + 24, 1 << 20] {
                assert_eq!(
                    decode_pieces(&sealed, key, piece),
                    data,
                    "{ctx} piece {piece}"
                );
            }

            let info = inspect(&sealed).unwrap();
            assert_eq!(info.raw_len, Some(n as u64));
            assert_eq!(info.chunk_size, CS);
            assert_eq!(info.codec, opts.codec);
            let cipher = if key.is_some() {
                Cipher::Aes256Gcm
            } else {
                Cipher::None
            };
            assert_eq!(info.cipher, cipher);
            if let Some(k) = key {
                assert!(info.key_matches(k));
                assert!(!info.key_matches(&Key::from_bytes([0; 32])));
            }

            for piece in [1, 100, CS, 3 * CS + 1] {
                let (streamed, raw) = seal_streaming(&opts, data, piece);
                assert_eq!(raw, n as u64);
                assert_eq!(inspect(&streamed).unwrap().raw_len, None, "stream: unknown");
                assert_eq!(
                    open("obj", &streamed, key).unwrap(),
                    data,
                    "{ctx} piece {piece}"
                );
                if key.is_none() {
                    // Same chunking, same payloads (the header's length field differs, and
                    // with it the CRCs that bind frames to their header).
                    assert_eq!(streamed.len(), sealed.len());
                    let (a, b) = (layout(&streamed).unwrap(), layout(&sealed).unwrap());
                    assert_eq!(a.chunks, b.chunks);
                    for r in &a.chunks {
                        assert_eq!(streamed[r.start + 24..r.end], sealed[r.start + 24..r.end]);
                    }
                }
            }
        }
    }
}

#[test]
fn default_options_and_large_chunks_round_trip() {
    let opts = EnvelopeOptions::default();
    assert_eq!(opts.chunk_size, DEFAULT_CHUNK_SIZE);
    assert_eq!(
        opts.codec,
        Codec::Zstd {
            level: DEFAULT_ZSTD_LEVEL
        }
    );
    let data = wal_like_data(3 * DEFAULT_CHUNK_SIZE + 12345, 2);
    let (sealed, stats) = seal_with_stats(&opts, &data).unwrap();
    assert_eq!(stats.chunks, 4);
    assert!(
        sealed.len() < data.len() / 2,
        "WAL-like data compresses: {} -> {}",
        data.len(),
        sealed.len()
    );
    assert_eq!(open("obj", &sealed, None).unwrap(), data);
    assert_eq!(open_streaming(&sealed, None, 4096), data);
}

#[test]
fn incompressible_chunks_are_stored_with_small_overhead() {
    let mut x: u64 = 99;
    let data: Vec<u8> = (0..10 * CS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let sealed = seal(&EnvelopeOptions::zstd(19).with_chunk_size(CS), &data).unwrap();
    // 56 header + 10 x 24 frame headers + 28 trailer.
    assert_eq!(sealed.len(), data.len() + 56 + 10 * 24 + 28);
    assert_eq!(open("obj", &sealed, None).unwrap(), data);
}

#[test]
fn plain_sealing_is_deterministic_and_encrypted_is_not() {
    let data = wal_like_data(5000, 3);
    let plain = EnvelopeOptions::zstd(3).with_chunk_size(CS);
    assert_eq!(seal(&plain, &data).unwrap(), seal(&plain, &data).unwrap());
    let enc = plain.with_key(key());
    let (a, b) = (seal(&enc, &data).unwrap(), seal(&enc, &data).unwrap());
    assert_ne!(a, b, "a fresh salt per object");
    assert_eq!(a.len(), b.len());
}

#[test]
fn announced_length_is_enforced() {
    let opts = EnvelopeOptions::zstd(1).with_chunk_size(CS);
    let mut s = Sealer::with_raw_len(&opts, Vec::new(), 10).unwrap();
    s.write_all(b"0123456789").unwrap();
    let (sealed, _) = s.finish().unwrap();
    assert_eq!(inspect(&sealed).unwrap().raw_len, Some(10));
    assert_eq!(open("obj", &sealed, None).unwrap(), b"0123456789");

    let mut s = Sealer::with_raw_len(&opts, Vec::new(), 10).unwrap();
    s.write_all(b"012345678").unwrap();
    let e = s.finish().unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
}

#[test]
fn invalid_options_are_rejected() {
    for cs in [0, MAX_CHUNK_SIZE + 1] {
        let opts = EnvelopeOptions::zstd(3).with_chunk_size(cs);
        assert!(matches!(seal(&opts, b"x"), Err(Error::InvalidInput { .. })));
        assert!(Sealer::new(&opts, Vec::new()).is_err());
    }
}

#[test]
fn opener_errors_unwrap_to_envelope_errors() {
    let sealed = seal(&EnvelopeOptions::zstd(3).with_chunk_size(CS), &[7u8; 3000]).unwrap();
    let mut bad = sealed.clone();
    let l = layout(&sealed).unwrap();
    bad[l.chunks[2].start + 30] ^= 1;
    let mut r = Opener::new("wal/x", &bad[..], None);
    let mut out = Vec::new();
    let e = r.read_to_end(&mut out).unwrap_err();
    // Chunks 0 and 1 were verified and delivered; nothing of chunk 2.
    assert_eq!(out.len(), 2 * CS);
    match carta_dr_core::envelope::io_error_to_error("reading", e) {
        Error::Corrupt { path, chunk, .. } => {
            assert_eq!(path, "wal/x");
            assert_eq!(chunk, Some(2));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn inspect_reads_only_the_header() {
    let sealed = seal(&EnvelopeOptions::uncompressed(), b"abc").unwrap();
    let info = inspect(&sealed[..56]).unwrap();
    assert_eq!(info.codec, Codec::None);
    assert_eq!(info.raw_len, Some(3));
    assert!(matches!(inspect(&sealed[..55]), Err(Error::Corrupt { .. })));
    assert!(matches!(
        inspect(b"PK\x03\x04 not an envelope at all, but long enough to hold a header......"),
        Err(Error::Corrupt { .. })
    ));
}
