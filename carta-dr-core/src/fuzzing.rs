//! Harnesses shared by the cargo-fuzz targets in `fuzz/` and the corpus replay test, so both
//! run identical code; plus test-data helpers. Not part of the public API: no stability
//! promise.
//!
//! Each harness panics when an invariant is violated: that is what the fuzzer looks for.

use std::ops::Range;
use std::str::FromStr;

use crate::envelope::format::{
    self, Header, CIPHER_NONE, FRAME_HEADER_LEN, HEADER_LEN, KIND_CHUNK, KIND_TRAILER,
    TRAILER_LEN_PLAIN,
};
use crate::envelope::{open, seal, Cipher, Codec, Decoder, EnvelopeOptions, Key};
use crate::{BackupId, Error, Lsn, StorePath, TimelineId, WalFileName, WalSegmentName};

/// The key the `envelope` target decodes with when its mode byte asks for one.
pub const FUZZ_KEY: [u8; 32] = [
    0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c,
    0x60, 0x3d, 0xeb, 0x10, 0x15, 0xca, 0x71, 0xbe, 0x2b, 0x73, 0xae, 0xf0, 0x85, 0x7d, 0x77, 0x81,
];

/// Where the parts of a sealed object are, found by walking its length fields without
/// verifying anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The header.
    pub header: Range<usize>,
    /// Each chunk frame (frame header and payload).
    pub chunks: Vec<Range<usize>>,
    /// The trailer, when one was found.
    pub trailer: Option<Range<usize>>,
}

/// Walks the structure of `sealed`; `None` if it is too short for a header.
pub fn layout(sealed: &[u8]) -> Option<Layout> {
    let header = sealed.get(..HEADER_LEN)?;
    let trailer_len = if header[10] == CIPHER_NONE {
        TRAILER_LEN_PLAIN
    } else {
        format::TRAILER_LEN_ENCRYPTED
    };
    let mut chunks = Vec::new();
    let mut pos = HEADER_LEN;
    let mut trailer = None;
    while let Some(f) = sealed.get(pos..pos + FRAME_HEADER_LEN) {
        match f[0] {
            KIND_CHUNK => {
                let stored = u32::from_le_bytes([f[4], f[5], f[6], f[7]]) as usize;
                let end = pos + FRAME_HEADER_LEN + stored;
                if end > sealed.len() {
                    break;
                }
                chunks.push(pos..end);
                pos = end;
            }
            KIND_TRAILER => {
                if pos + trailer_len <= sealed.len() {
                    trailer = Some(pos..pos + trailer_len);
                }
                break;
            }
            _ => break,
        }
    }
    Some(Layout {
        header: 0..HEADER_LEN,
        chunks,
        trailer,
    })
}

/// Recomputes every CRC an attacker without the key could recompute: the header's, each
/// frame's (for its position), each payload's stored CRC, and the trailer's. The raw-data
/// CRCs of compressed plain chunks are left alone (they would need decompression).
pub fn fix_checksums(sealed: &mut [u8]) {
    let Some(l) = layout(sealed) else { return };
    let crc = crc32c::crc32c(&sealed[0..52]);
    sealed[52..56].copy_from_slice(&crc.to_le_bytes());
    let header_crc = crc;
    let encrypted = sealed[10] != CIPHER_NONE;
    for (i, r) in l.chunks.iter().enumerate() {
        let (f, payload) = sealed[r.clone()].split_at_mut(FRAME_HEADER_LEN);
        let stored_crc = crc32c::crc32c(payload);
        f[16..20].copy_from_slice(&stored_crc.to_le_bytes());
        if !encrypted && f[1] == format::CHUNK_STORED {
            f[12..16].copy_from_slice(&stored_crc.to_le_bytes());
        }
        let c = format::frame_crc(header_crc, i as u64, &f[0..20]);
        f[20..24].copy_from_slice(&c.to_le_bytes());
    }
    if let Some(t) = l.trailer {
        let t = &mut sealed[t];
        let c = format::trailer_crc(header_crc, &t[0..24]);
        t[24..28].copy_from_slice(&c.to_le_bytes());
    }
}

fn is_envelope_error(e: &Error) -> bool {
    matches!(
        e,
        Error::Corrupt { .. } | Error::Crypto { .. } | Error::InvalidInput { .. }
    )
}

/// The `envelope` target. Byte 0 is a mode: bit 0 decodes with [`FUZZ_KEY`], bit 1 repairs
/// the checksums first ([`fix_checksums`]) so the fuzzer gets past them, bits 2-3 choose the
/// piece size fed to the streaming [`Decoder`]. The rest is the object.
///
/// Checks: no panic; one-shot [`open`] and the streaming decoder agree (same bytes, or both
/// fail) and fail only with envelope errors; whatever opens re-seals and opens to the same
/// bytes, with consistent statistics.
pub fn envelope(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = Key::from_bytes(FUZZ_KEY);
    let key = (mode & 1 == 1).then_some(&key);
    let mut obj = rest.to_vec();
    if mode & 2 == 2 {
        fix_checksums(&mut obj);
    }
    let piece = [1usize, 7, 64, 4096][usize::from((mode >> 2) & 3)];

    let one_shot = open("fuzz", &obj, key);
    if let Err(e) = &one_shot {
        assert!(is_envelope_error(e), "unexpected error class: {e:?}");
    }

    let mut dec = Decoder::new("fuzz", key);
    let mut streamed = Vec::new();
    let mut result = Ok(());
    'feed: for p in obj.chunks(piece) {
        dec.feed(p);
        loop {
            match dec.next_chunk() {
                Ok(Some(c)) => {
                    assert!(!c.is_empty(), "empty chunk yielded");
                    streamed.extend_from_slice(c);
                }
                Ok(None) => break,
                Err(e) => {
                    result = Err(e);
                    break 'feed;
                }
            }
        }
    }
    let stats = result.and_then(|()| dec.finish());
    if let Err(e) = &stats {
        assert!(is_envelope_error(e), "unexpected error class: {e:?}");
    }
    match (&one_shot, &stats) {
        (Ok(a), Ok(st)) => {
            assert_eq!(
                a, &streamed,
                "one-shot and streaming decoders disagree on content"
            );
            assert_eq!(st.raw_len, a.len() as u64);
            assert_eq!(st.stored_len, obj.len() as u64);
            assert_eq!(st.crc32c, crc32c::crc32c(a));
            let info = crate::envelope::inspect(&obj).expect("opened object has a valid header");
            assert_eq!(dec.header(), Some(info));
            if let Some(n) = info.raw_len {
                assert_eq!(n, st.raw_len);
            }
            let opts = EnvelopeOptions {
                codec: info.codec,
                chunk_size: info.chunk_size,
                key: key.map(|k| std::sync::Arc::new(k.clone())),
            };
            assert_eq!(info.cipher == Cipher::None, key.is_none());
            if let Codec::Zstd { level } = info.codec {
                // Levels zstd rejects are no reason to fail a re-seal check.
                if !(-(1 << 17)..=22).contains(&level) {
                    return;
                }
            }
            let again = seal(&opts, a).expect("re-seal");
            assert_eq!(&open("fuzz", &again, key).expect("re-open"), a);
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "one-shot and streaming decoders disagree: {:?} vs {:?}",
            a.as_ref().map(|v| v.len()),
            b
        ),
    }
}

/// The `store_path` target: [`StorePath::new`] on arbitrary text.
///
/// Checks: no panic; an accepted path is non-empty, at most 1024 bytes, relative, has no
/// empty, `.` or `..` segment, no backslash or control character, prints as given, parses
/// back to itself, and its `parent`/`file_name`/`join` are consistent.
pub fn store_path(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = StorePath::new(s) else {
        return;
    };
    assert!(!s.is_empty() && s.len() <= 1024);
    assert!(!s.starts_with('/'));
    assert!(!s.contains('\\'));
    assert!(!s.chars().any(char::is_control));
    for seg in p.segments() {
        assert!(
            !seg.is_empty() && seg != "." && seg != "..",
            "bad segment in {s:?}"
        );
    }
    assert_eq!(p.to_string(), s);
    let text = p.to_string();
    assert_eq!(StorePath::from_str(&text).ok().as_ref(), Some(&p));
    let file = p.file_name();
    match p.parent() {
        Some(parent) => {
            assert!(p.starts_with(&parent));
            assert_eq!(format!("{parent}/{file}"), s);
            if let Ok(j) = parent.join(file) {
                assert_eq!(j, p);
            }
        }
        None => assert_eq!(file, s),
    }
    assert!(p.join("..").is_err());
}

/// The `dump` target: the pg_dump custom archive verifier on arbitrary bytes.
///
/// Checks: no panic; feeding the input in one piece or byte by byte gives the same findings
/// and blocks; a report without error findings has a parsed header.
pub fn dump(data: &[u8]) {
    let (report, whole) = crate::dump::verify_bytes("fuzz", data);
    let mut c = crate::dump::DumpCheck::new();
    for piece in data.chunks(7) {
        c.feed(piece);
    }
    let pieces = c.finish();
    assert_eq!(whole.blocks, pieces.blocks);
    assert_eq!(whole.is_corrupt(), pieces.is_corrupt());
    if report.verdict() == crate::traits::Verdict::Clean {
        assert!(whole.header.is_some());
    }
}

/// The `wal_segment_name` target: the WAL and backup name parsers on arbitrary text.
///
/// Checks: no panic; whatever [`WalFileName`], [`WalSegmentName`], [`Lsn`],
/// [`TimelineId`] or [`BackupId`] accepts prints as text that parses back to the same
/// value. WAL and backup names must also print as the text given (WAL names up to the case
/// of hex digits): each value has one name.
pub fn wal_names(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = WalFileName::from_str(s) {
        let text = n.to_string();
        assert_eq!(
            WalFileName::from_str(&text).ok(),
            Some(n),
            "{s:?} -> {text:?}"
        );
        assert!(text.eq_ignore_ascii_case(s), "{s:?} prints as {text:?}");
        if let Some(seg) = n.segment() {
            assert_eq!(seg.timeline, n.timeline());
        }
    }
    if let Ok(n) = WalSegmentName::from_str(s) {
        let text = n.to_string();
        assert_eq!(text, s);
        assert_eq!(WalSegmentName::from_str(&text).ok(), Some(n));
        let size = crate::WalSegmentSize::default();
        if n.validate(size).is_ok() {
            let back = WalSegmentName::containing(n.timeline, n.start_lsn(size), size);
            assert_eq!(back, n);
        }
    }
    if let Ok(l) = Lsn::from_str(s) {
        let text = l.to_string();
        assert_eq!(Lsn::from_str(&text).ok(), Some(l), "{s:?} -> {text:?}");
    }
    if let Ok(t) = TimelineId::from_str(s) {
        assert_eq!(TimelineId::from_str(&t.to_string()).ok(), Some(t));
    }
    if let Ok(b) = BackupId::from_str(s) {
        let text = b.to_string();
        assert_eq!(text, s, "backup ids are canonical");
        assert_eq!(BackupId::from_str(&text).ok(), Some(b));
    }
}

/// The `manifest` target: PostgreSQL's `backup_manifest` parser on arbitrary bytes. Byte 0
/// is a mode: bit 0 first rewrites the 64 hex digits after the last `"Manifest-Checksum": "`
/// to the SHA-256 the parser expects ([`manifest_fix_checksum`]), so the fuzzer gets past the
/// checksum to the checks behind it. The rest is the manifest.
///
/// Checks: no panic; the parser is deterministic; whatever it accepts has a supported version,
/// non-empty and unique paths, WAL ranges that do not end before they start, and a CRC-32C
/// exactly for the files whose checksum is one.
pub fn manifest(data: &[u8]) {
    use crate::manifest::{parse_manifest, ChecksumAlgorithm};
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut m = rest.to_vec();
    if mode & 1 == 1 {
        manifest_fix_checksum(&mut m);
    }
    let first = parse_manifest(&m);
    let again = parse_manifest(&m);
    assert_eq!(
        first.is_ok(),
        again.is_ok(),
        "parse_manifest is not deterministic"
    );
    let Ok(parsed) = first else {
        return;
    };
    assert_eq!(Some(&parsed), again.as_ref().ok());
    assert!((1..=2).contains(&parsed.version));
    let mut seen = std::collections::HashSet::new();
    for f in &parsed.files {
        assert!(!f.path.is_empty(), "empty path accepted");
        assert!(seen.insert(f.path.clone()), "duplicate path accepted");
        let is_crc = matches!(&f.checksum, Some((ChecksumAlgorithm::Crc32c, _)));
        assert_eq!(f.crc32c().is_some(), is_crc);
        let _ = f.path_str();
    }
    for r in &parsed.wal_ranges {
        assert!(
            r.end >= r.start,
            "WAL range ending before its start accepted"
        );
    }
}

/// Rewrites the checksum of a `backup_manifest` in place to the SHA-256 of its bytes up to
/// and including the second-to-last newline, when the last `"Manifest-Checksum": "` is
/// followed by 64 bytes. For fuzzing and corruption tests.
pub fn manifest_fix_checksum(m: &mut [u8]) {
    use sha2::{Digest, Sha256};
    const KEY: &[u8] = b"\"Manifest-Checksum\": \"";
    let Some(at) = m.windows(KEY.len()).rposition(|w| w == KEY) else {
        return;
    };
    let start = at + KEY.len();
    if m.len() < start + 64 {
        return;
    }
    let nls: Vec<usize> = m
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    let Some(&p) = nls.len().checked_sub(2).and_then(|i| nls.get(i)) else {
        return;
    };
    if p >= start {
        return;
    }
    let sum = hex::encode(Sha256::digest(m.get(..=p).unwrap_or(&[])));
    if let Some(dst) = m.get_mut(start..start + 64) {
        dst.copy_from_slice(sum.as_bytes());
    }
}

/// The seed corpus: `(target, name, bytes)`. Envelope seeds are a mode byte (see
/// [`envelope`]) followed by a valid, truncated or extended sealed object.
pub fn seed_corpus() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut v = Vec::new();
    let key = std::sync::Arc::new(Key::from_bytes(FUZZ_KEY));
    let data = wal_like_data(700, 7);
    let objects: Vec<(&str, EnvelopeOptions, &[u8])> = vec![
        ("empty-zstd", EnvelopeOptions::zstd(3), &[]),
        ("one-byte", EnvelopeOptions::zstd(1), b"x"),
        (
            "none-16",
            EnvelopeOptions::uncompressed().with_chunk_size(16),
            &data[..100],
        ),
        (
            "zstd-64",
            EnvelopeOptions::zstd(3).with_chunk_size(64),
            &data[..300],
        ),
        (
            "zstd-128",
            EnvelopeOptions::zstd(1).with_chunk_size(128),
            &data,
        ),
        (
            "zstd-neg",
            EnvelopeOptions::zstd(-5).with_chunk_size(100),
            &data[..250],
        ),
        (
            "exact-chunk",
            EnvelopeOptions::zstd(3).with_chunk_size(50),
            &data[..100],
        ),
        (
            "aes-zstd-64",
            EnvelopeOptions::zstd(3)
                .with_chunk_size(64)
                .with_key(key.clone()),
            &data[..300],
        ),
        (
            "aes-none-32",
            EnvelopeOptions::uncompressed()
                .with_chunk_size(32)
                .with_key(key.clone()),
            &data[..90],
        ),
        (
            "aes-empty",
            EnvelopeOptions::zstd(3).with_key(key.clone()),
            &[],
        ),
    ];
    for (name, opts, raw) in objects {
        let Ok(sealed) = seal(&opts, raw) else {
            continue;
        };
        let mode_key = u8::from(opts.key.is_some());
        for (suffix, mode) in [("", 0u8), ("-p7", 4), ("-fix", 2), ("-p64", 8)] {
            let mut b = vec![mode | mode_key];
            b.extend_from_slice(&sealed);
            v.push(("envelope", format!("{name}{suffix}"), b));
        }
        let mut cut = vec![mode_key];
        cut.extend_from_slice(&sealed[..sealed.len() * 2 / 3]);
        v.push(("envelope", format!("{name}-truncated"), cut));
        let mut junk = vec![mode_key | 2];
        junk.extend_from_slice(&sealed);
        junk.extend_from_slice(b"junk");
        v.push(("envelope", format!("{name}-junk"), junk));
    }
    for (i, p) in [
        "a",
        "wal/00000001/000000010000000000000007",
        "backup/20261123T132400Z/base/1/1259",
        "\u{fc}/\u{e9}",
        "a/../b",
        "./a",
        "a//b",
        "/abs",
        "a/",
        "a\\b",
        "a\nb",
        "..",
        "x.y-z_1/..a/a..",
    ]
    .iter()
    .enumerate()
    {
        v.push(("store_path", format!("{i:02}"), p.as_bytes().to_vec()));
    }
    for (i, n) in [
        "000000010000000000000007",
        "000000010000000000000007.partial",
        "00000002.history",
        "000000010000000000000007.00000028.backup",
        "0000000100000000000000FF",
        "00000000000000000000000A",
        "000000010000000a00000001",
        "FFFFFFFFFFFFFFFFFFFFFFFF",
        "16/B374D848",
        "0/0",
        "FFFFFFFF/FFFFFFFF",
        "20261123T132400Z",
        "20261123T132400Z-1",
        "20240229T235959Z-12",
        "20230229T000000Z",
        "42",
    ]
    .iter()
    .enumerate()
    {
        v.push(("wal_segment_name", format!("{i:02}"), n.as_bytes().to_vec()));
    }
    v
}

/// Whether `bytes` start with a parseable envelope header (used by corpus tooling).
pub fn has_header(bytes: &[u8]) -> bool {
    Header::parse("", bytes).is_ok()
}

/// Deterministic, semi-compressible test data resembling PostgreSQL WAL written by a
/// pgbench workload: 24-byte record headers with a random CRC field and increasing
/// transaction ids, `pgbench_accounts`-like tuples (three int4 columns and a blank-padded
/// `char(84)` filler), occasional 8 KiB full-page images (tuples, then a zeroed hole), and
/// incompressible runs standing in for TOAST or already-compressed data. zstd level 1
/// compresses it about 3-4x.
pub fn wal_like_data(len: usize, seed: u64) -> Vec<u8> {
    let mut g = WalLike::new(seed);
    let mut v = Vec::with_capacity(len + 9000);
    while v.len() < len {
        g.record(&mut v);
    }
    v.truncate(len);
    v
}

/// An endless stream of [`wal_like_data`]-style bytes, generated as it is read.
#[derive(Debug)]
pub struct WalLikeReader {
    gen: WalLike,
    buf: Vec<u8>,
    pos: usize,
    left: u64,
}

impl WalLikeReader {
    /// `len` bytes from `seed`.
    pub fn new(len: u64, seed: u64) -> Self {
        WalLikeReader {
            gen: WalLike::new(seed),
            buf: Vec::new(),
            pos: 0,
            left: len,
        }
    }
}

impl std::io::Read for WalLikeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 || out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            while self.buf.len() < 64 << 10 {
                self.gen.record(&mut self.buf);
            }
        }
        let n = (self.buf.len() - self.pos)
            .min(out.len())
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.left -= n as u64;
        Ok(n)
    }
}

#[derive(Debug)]
struct WalLike {
    state: u64,
    xid: u32,
    aid: u32,
    lsn: u64,
}

impl WalLike {
    fn new(seed: u64) -> Self {
        WalLike {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
            xid: 1000,
            aid: 1,
            lsn: 0x0100_0000,
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn tuple(&mut self, v: &mut Vec<u8>) {
        let r = self.next();
        self.aid = self.aid.wrapping_add(1 + (r % 7) as u32);
        v.extend_from_slice(&(self.xid).to_le_bytes());
        v.extend_from_slice(&[0, 0, 0, 0, 3, 0, 0x02, 0x09, 0x18, 0]);
        v.extend_from_slice(&self.aid.to_le_bytes());
        v.extend_from_slice(&((self.aid / 100_000) + 1).to_le_bytes());
        v.extend_from_slice(&(((r >> 16) % 10_001) as i32 - 5000).to_le_bytes());
        v.push(0xab); // varlena header of char(84)
        v.extend_from_slice(&[b' '; 84]);
    }

    fn record(&mut self, v: &mut Vec<u8>) {
        let r = self.next();
        self.xid = self.xid.wrapping_add(1);
        let kind = r % 100;
        let start = v.len();
        // XLogRecord: xl_tot_len, xl_xid, xl_prev, xl_info, xl_rmid, 2 pad, xl_crc.
        v.extend_from_slice(&[0u8; 4]);
        v.extend_from_slice(&self.xid.to_le_bytes());
        v.extend_from_slice(&self.lsn.to_le_bytes());
        v.extend_from_slice(&[0x20, 10, 0, 0]);
        v.extend_from_slice(&(self.next() as u32).to_le_bytes());
        if kind < 62 {
            self.tuple(v);
        } else if kind < 66 {
            // Full-page image of a full heap page (fillfactor 100): page header, the line
            // pointer array, then tuples up to 8 KiB.
            v.extend_from_slice(&self.lsn.to_le_bytes());
            v.extend_from_slice(&[0u8; 16]);
            for i in 0..60u32 {
                let off = 8192 - (i + 1) * 120;
                v.extend_from_slice(&(off | (2 << 15) | (118 << 17)).to_le_bytes());
            }
            while v.len() < start + 24 + 8192 {
                self.tuple(v);
            }
            v.truncate(start + 24 + 8192);
        } else {
            // Incompressible payload (TOAST, already-compressed values, random keys).
            let n = 64 + (r >> 8) as usize % 448;
            for _ in 0..n.div_ceil(8) {
                v.extend_from_slice(&self.next().to_le_bytes());
            }
        }
        let tot = (v.len() - start) as u32;
        v[start..start + 4].copy_from_slice(&tot.to_le_bytes());
        // MAXALIGN padding.
        while !v.len().is_multiple_of(8) {
            v.push(0);
        }
        self.lsn += (v.len() - start) as u64;
    }
}
