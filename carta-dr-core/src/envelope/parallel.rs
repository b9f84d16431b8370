//! Whole-buffer sealing and opening on several threads.
//!
//! Chunks are independent once the header is known (each frame binds the header's CRC and
//! its own index), so [`seal_parallel`] compresses (and encrypts) them on up to `threads`
//! threads and [`open_parallel`] verifies and decompresses them the same way. The bytes
//! produced are exactly those of [`seal`](super::seal) (for encrypted objects: given the
//! same random salt), and opening performs every check [`open`](super::open) performs:
//! header, each frame header, each payload's stored and raw CRC-32C (and authentication),
//! the chunk order and sizes, the trailer and the whole-content CRC-32C, nothing after the
//! trailer. Only the order in which several independent faults of one object are found may
//! differ.
//!
//! Threads are scoped (`std::thread::scope`): nothing outlives the call, and the calling
//! thread works too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use zstd::zstd_safe::{self, DCtx, ResetDirective};

use super::codec::Compressor;
use super::decode::DecoderCore;
use super::encode::{chunk_aad, seal_all, trailer_aad};
use super::format::{
    self, Frame, Header, Trailer, CHUNK_STORED, CIPHER_AES_256_GCM, CIPHER_NONE, CODEC_NONE,
    CODEC_ZSTD, FRAME_HEADER_LEN, HEADER_LEN, KEY_CHECK_LEN, KIND_CHUNK, KIND_TRAILER,
    MAX_CHUNK_SIZE, RAW_LEN_UNKNOWN, SALT_LEN, TAG_LEN, TRAILER_LEN_ENCRYPTED, TRAILER_LEN_PLAIN,
};
use super::key::{Key, ObjectCipher};
use super::{Codec, EnvelopeOptions, SealStats};
use crate::{Error, Result};

/// The largest object [`open_parallel`] decodes into one buffer; larger ones (and objects
/// whose header does not announce their length) are opened sequentially.
const PARALLEL_OPEN_MAX: u64 = 1 << 30;

/// The number of threads worth using on this machine (at least 1).
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1)
}

/// Seals a whole buffer like [`seal_with_stats`](super::seal_with_stats), compressing and
/// encrypting its chunks on up to `threads` threads (the caller's included).
///
/// The output is byte for byte what the sequential sealer writes for the same options (and,
/// with a key, the same salt).
pub fn seal_parallel(
    opts: &EnvelopeOptions,
    data: &[u8],
    threads: usize,
) -> Result<(Vec<u8>, SealStats)> {
    let cs = opts.chunk_size;
    if cs == 0 || cs > MAX_CHUNK_SIZE {
        // The sequential sealer reports the error.
        return seal_all(opts, data);
    }
    let n = data.len().div_ceil(cs);
    let threads = threads.min(n);
    if threads <= 1 {
        return seal_all(opts, data);
    }
    let (header, cipher, codec, level) = object_header(opts, data.len() as u64);
    seal_chunks(
        &header,
        cipher.as_ref(),
        codec,
        level,
        Source::Slice(data),
        cs,
        threads,
    )
}

/// Reads `buf.len()` bytes of the content at `offset` (a whole chunk, or the last one).
pub type ReadAt<'a> = dyn Fn(u64, &mut [u8]) -> std::io::Result<()> + Sync + 'a;

/// Seals content of `raw_len` bytes that `read_at` reads chunk by chunk (from a file, say),
/// on up to `threads` threads (the caller's included; 1: on the calling thread alone). Each
/// thread reads its chunks into one reused chunk-sized buffer, so memory stays at one chunk
/// per thread plus the sealed output, and no buffer of the whole content is allocated.
///
/// The output is byte for byte what [`seal_parallel`] and the sequential sealer write for the
/// same content and options (with a key, given the same salt). A read error fails the call
/// (`Error::Io`, with the offset).
pub fn seal_parallel_read(
    opts: &EnvelopeOptions,
    raw_len: u64,
    read_at: &ReadAt<'_>,
    threads: usize,
) -> Result<(Vec<u8>, SealStats)> {
    let cs = opts.chunk_size;
    let len = usize::try_from(raw_len)
        .map_err(|_| Error::invalid_input(format!("{raw_len} bytes: too large to seal here")))?;
    if len == 0 {
        return seal_all(opts, &[]);
    }
    if cs == 0 || cs > MAX_CHUNK_SIZE {
        return Err(Error::invalid_input(format!(
            "chunk size {cs} is not between 1 and {MAX_CHUNK_SIZE}"
        )));
    }
    let n = len.div_ceil(cs);
    let (header, cipher, codec, level) = object_header(opts, raw_len);
    seal_chunks(
        &header,
        cipher.as_ref(),
        codec,
        level,
        Source::Reader { len, read_at },
        cs,
        threads.clamp(1, n),
    )
}

/// The CRC-32C of `len` bytes that `read_at` reads, in pieces of 1 MiB on up to `threads`
/// threads (the caller's included), each reading into one reused buffer.
pub fn crc32c_parallel_read(
    len: u64,
    read_at: &ReadAt<'_>,
    threads: usize,
) -> std::io::Result<u32> {
    const PIECE: usize = 1 << 20;
    let total = usize::try_from(len).map_err(std::io::Error::other)?;
    let n = total.div_ceil(PIECE);
    let next = AtomicUsize::new(0);
    let work = || -> std::io::Result<Vec<(usize, u32)>> {
        let mut buf = Vec::new();
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return Ok(done);
            }
            let start = i * PIECE;
            let len = PIECE.min(total - start);
            buf.resize(len, 0);
            read_at(start as u64, &mut buf[..len])?;
            done.push((i, super::crc::crc32c(&buf[..len])));
        }
    };
    let results: Vec<std::io::Result<Vec<(usize, u32)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads.clamp(1, n.max(1)))
            .map(|_| s.spawn(work))
            .collect();
        let mut all = vec![work()];
        for h in handles {
            all.push(
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a checksum thread panicked"))),
            );
        }
        all
    });
    let mut crcs = vec![None; n];
    for r in results {
        for (i, crc) in r? {
            if let Some(slot) = crcs.get_mut(i) {
                *slot = Some(crc);
            }
        }
    }
    let mut crc = 0u32;
    let mut left = total;
    for slot in crcs {
        let piece = slot.ok_or_else(|| std::io::Error::other("a piece was not read"))?;
        let len = left.min(PIECE);
        left -= len;
        crc = super::crc::crc32c_combine(crc, piece, len);
    }
    Ok(crc)
}

/// The encoded header of an object of `raw_len` bytes sealed with `opts` (a fresh random salt
/// with a key), its cipher, codec id and level.
fn object_header(
    opts: &EnvelopeOptions,
    raw_len: u64,
) -> ([u8; HEADER_LEN], Option<ObjectCipher>, u8, i32) {
    let (codec, level) = match opts.codec {
        Codec::None => (CODEC_NONE, 0),
        Codec::Zstd { level } => (CODEC_ZSTD, level),
    };
    let mut salt = [0u8; SALT_LEN];
    let (cipher_id, cipher, key_check) = match &opts.key {
        None => (CIPHER_NONE, None, [0u8; KEY_CHECK_LEN]),
        Some(key) => {
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
            let (c, check) = key.derive(&salt);
            (CIPHER_AES_256_GCM, Some(c), check)
        }
    };
    let header = Header {
        codec,
        level,
        cipher: cipher_id,
        chunk_size: opts.chunk_size as u32,
        raw_len,
        salt,
        key_check,
    }
    .encode();
    (header, cipher, codec, level)
}

/// Where [`seal_chunks`] takes the content from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// A buffer holding it all.
    Slice(&'a [u8]),
    /// `len` bytes read chunk by chunk.
    Reader { len: usize, read_at: &'a ReadAt<'a> },
}

impl Source<'_> {
    fn len(&self) -> usize {
        match self {
            Source::Slice(d) => d.len(),
            Source::Reader { len, .. } => *len,
        }
    }
}

/// Seals the chunks of `data` under an encoded `header` and appends the trailer.
fn seal_chunks(
    header: &[u8; HEADER_LEN],
    cipher: Option<&ObjectCipher>,
    codec: u8,
    level: i32,
    data: Source<'_>,
    cs: usize,
    threads: usize,
) -> Result<(Vec<u8>, SealStats)> {
    let header_crc = Header::crc_of(header);
    let total = data.len();
    let n = total.div_ceil(cs);
    let next = AtomicUsize::new(0);
    let work = || -> Result<SealedFrames> {
        let mut compressor = if codec == CODEC_ZSTD {
            Some(Compressor::new(level)?)
        } else {
            None
        };
        let mut buf = Vec::new();
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return Ok(done);
            }
            let start = i * cs;
            let len = cs.min(total - start);
            let raw: &[u8] = match data {
                Source::Slice(d) => &d[start..start + len],
                Source::Reader { read_at, .. } => {
                    buf.resize(len, 0);
                    read_at(start as u64, &mut buf[..len]).map_err(|e| {
                        Error::io(format!("reading {len} bytes at offset {start} to seal"), e)
                    })?;
                    &buf[..len]
                }
            };
            let (frame, crc) = encode_frame(
                header,
                header_crc,
                compressor.as_mut(),
                cipher,
                i as u64,
                raw,
            )?;
            done.push((i, frame, crc));
        }
    };
    let results: Vec<Result<SealedFrames>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut all = vec![work()];
        for h in handles {
            all.push(
                h.join()
                    .unwrap_or_else(|_| Err(Error::invalid_input("a sealing thread panicked"))),
            );
        }
        all
    });
    let mut frames: Vec<Option<(Vec<u8>, u32)>> = (0..n).map(|_| None).collect();
    for r in results {
        for (i, frame, crc) in r? {
            if let Some(slot) = frames.get_mut(i) {
                *slot = Some((frame, crc));
            }
        }
    }
    let body: usize = frames.iter().flatten().map(|(f, _)| f.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + body + TRAILER_LEN_ENCRYPTED);
    out.extend_from_slice(header);
    let mut content_crc = 0u32;
    let mut raw_left = total;
    for slot in frames {
        let (frame, crc) =
            slot.ok_or_else(|| Error::invalid_input("a chunk was not sealed (internal error)"))?;
        let len = raw_left.min(cs);
        raw_left -= len;
        content_crc = super::crc::crc32c_combine(content_crc, crc, len);
        out.extend_from_slice(&frame);
    }
    let mut trailer = Trailer {
        chunks: n as u64,
        raw_len: total as u64,
        content_crc: content_crc.to_le_bytes(),
    };
    let mut tag = None;
    if let Some(c) = cipher {
        let aad = trailer_aad(header, &trailer);
        let nonce = format::nonce(format::NONCE_TRAILER, n as u64);
        tag = Some(c.seal(&nonce, &aad, &mut trailer.content_crc)?);
    }
    out.extend_from_slice(&trailer.encode(header_crc));
    if let Some(tag) = tag {
        out.extend_from_slice(&tag);
    }
    let stats = SealStats {
        raw_len: total as u64,
        stored_len: out.len() as u64,
        chunks: n as u64,
        crc32c: content_crc,
    };
    Ok((out, stats))
}

/// The frame of chunk `index` (`raw`: 1 to `chunk_size` bytes) and its raw CRC-32C; the same
/// bytes as the sequential encoder's `encode_chunk`.
fn encode_frame(
    header: &[u8; HEADER_LEN],
    header_crc: u32,
    compressor: Option<&mut Compressor>,
    cipher: Option<&ObjectCipher>,
    index: u64,
    raw: &[u8],
) -> Result<(Vec<u8>, u32)> {
    let max = FRAME_HEADER_LEN + zstd_safe::compress_bound(raw.len()) + 4 + TAG_LEN;
    let mut out = Vec::with_capacity(max);
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    let body = FRAME_HEADER_LEN;
    let raw_crc = super::crc::crc32c(raw);
    let mut codec = CHUNK_STORED;
    if let Some(c) = compressor {
        let n = c.compress_append(raw, &mut out)?;
        if n < raw.len() {
            codec = CODEC_ZSTD;
        } else {
            out.truncate(body);
        }
    }
    if codec == CHUNK_STORED {
        out.extend_from_slice(raw);
    }
    let raw_len = raw.len() as u32;
    let frame = if let Some(cipher) = cipher {
        out.extend_from_slice(&raw_crc.to_le_bytes());
        let stored_len = (out.len() - body + TAG_LEN) as u32;
        let mut frame = Frame {
            codec,
            stored_len,
            raw_len,
            raw_crc: 0,
            stored_crc: 0,
        };
        let aad = chunk_aad(header, &frame, index);
        let nonce = format::nonce(format::NONCE_CHUNK, index);
        let tag = cipher.seal(&nonce, &aad, &mut out[body..])?;
        out.extend_from_slice(&tag);
        frame.stored_crc = super::crc::crc32c(&out[body..]);
        frame
    } else {
        Frame {
            codec,
            stored_len: (out.len() - body) as u32,
            raw_len,
            raw_crc,
            stored_crc: if codec == CHUNK_STORED {
                raw_crc
            } else {
                super::crc::crc32c(&out[body..])
            },
        }
    };
    frame.encode_into(header_crc, index, &mut out[..body]);
    Ok((out, raw_crc))
}

/// The frames one sealing thread produced: chunk index, frame bytes, raw CRC-32C.
type SealedFrames = Vec<(usize, Vec<u8>, u32)>;

/// One chunk located by the sequential walk over the frames.
struct Located<'a> {
    index: u64,
    frame: Frame,
    payload: &'a [u8],
}

/// An object whose header, frame headers and trailer structure were checked, ready for its
/// chunks to be decoded.
struct Walked<'a> {
    header_bytes: [u8; HEADER_LEN],
    cipher: Option<ObjectCipher>,
    chunk_size: usize,
    chunks: Vec<Located<'a>>,
    raw_total: u64,
    trailer: &'a [u8],
    tr: Trailer,
}

/// Checks the header and walks the frame headers and the trailer (cheap, sequential).
/// `None`: the header does not announce a length the parallel path handles.
fn walk<'a>(path: &str, sealed: &'a [u8], key: Option<&Key>) -> Result<Option<Walked<'a>>> {
    let mut core = DecoderCore::new(path.to_string(), key);
    if sealed.len() < HEADER_LEN {
        return Err(Error::corrupt(
            path,
            None,
            format!(
                "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
                sealed.len()
            ),
        ));
    }
    // Header checks, including the key against the object (and no key for a plain one).
    core.header(sealed)?;
    let hdr = Header::parse(path, sealed)?;
    if hdr.raw_len == RAW_LEN_UNKNOWN || hdr.raw_len > PARALLEL_OPEN_MAX {
        return Ok(None);
    }
    let mut header_bytes = [0u8; HEADER_LEN];
    header_bytes.copy_from_slice(&sealed[..HEADER_LEN]);
    let header_crc = Header::crc_of(&header_bytes);
    let cipher = match (hdr.cipher != CIPHER_NONE, key) {
        (true, Some(k)) => Some(k.derive(&hdr.salt).0),
        _ => None,
    };
    let cs = hdr.chunk_size as usize;
    let truncated = |pos: usize, chunks: u64| {
        Error::corrupt(
            path,
            Some(chunks),
            format!(
                "truncated at byte {} after {chunks} complete chunks: the object ends inside a \
                 frame or before its trailer",
                sealed.len().max(pos)
            ),
        )
    };
    let mut chunks: Vec<Located<'_>> = Vec::new();
    let mut pos = HEADER_LEN;
    let mut raw_total = 0u64;
    let mut saw_short = false;
    let trailer = loop {
        let index = chunks.len() as u64;
        let rest = sealed.get(pos..).unwrap_or(&[]);
        if rest.len() < FRAME_HEADER_LEN {
            return Err(truncated(pos, index));
        }
        match rest[0] {
            KIND_CHUNK => {
                if saw_short {
                    return Err(Error::corrupt(
                        path,
                        Some(index),
                        format!(
                            "chunk {index} follows a short chunk; only the last chunk may be \
                             shorter than {cs} bytes"
                        ),
                    ));
                }
                let frame = Frame::parse(path, &hdr, header_crc, index, rest)?;
                let end = FRAME_HEADER_LEN + frame.stored_len as usize;
                let Some(payload) = rest.get(FRAME_HEADER_LEN..end) else {
                    return Err(truncated(pos, index));
                };
                raw_total += u64::from(frame.raw_len);
                if raw_total > hdr.raw_len {
                    return Err(Error::corrupt(
                        path,
                        Some(index),
                        format!(
                            "more data than the {} bytes the header announces",
                            hdr.raw_len
                        ),
                    ));
                }
                if (frame.raw_len as usize) < cs {
                    saw_short = true;
                }
                chunks.push(Located {
                    index,
                    frame,
                    payload,
                });
                pos += end;
            }
            KIND_TRAILER => {
                let Some(t) = rest.get(..hdr.trailer_len()) else {
                    return Err(truncated(pos, index));
                };
                pos += t.len();
                if pos != sealed.len() {
                    return Err(Error::corrupt(
                        path,
                        None,
                        format!("{} bytes of junk after the trailer", sealed.len() - pos),
                    ));
                }
                break t;
            }
            other => {
                return Err(Error::corrupt(
                    path,
                    Some(index),
                    format!(
                        "bad frame marker {other:#04x} at byte {pos}: expected chunk {index} or \
                         the trailer"
                    ),
                ))
            }
        }
    };
    let n = chunks.len() as u64;
    // The trailer's structure before any decoding work.
    let tr = Trailer::parse(path, header_crc, n, trailer)?;
    let structure = if tr.chunks != n {
        Some(format!(
            "trailer counts {} chunks but {n} were read (chunks missing or added)",
            tr.chunks
        ))
    } else if tr.raw_len != raw_total {
        Some(format!(
            "trailer says {} raw bytes but the chunks hold {raw_total}",
            tr.raw_len
        ))
    } else if hdr.raw_len != raw_total {
        Some(format!(
            "header announces {} raw bytes but the object holds {raw_total}",
            hdr.raw_len
        ))
    } else {
        None
    };
    if let Some(what) = structure {
        return Err(Error::corrupt(path, None, what));
    }
    Ok(Some(Walked {
        header_bytes,
        cipher,
        chunk_size: cs,
        chunks,
        raw_total,
        trailer,
        tr,
    }))
}

/// Runs `work` on the calling thread and `threads - 1` scoped helpers; combines the chunk
/// CRCs they report into the content's CRC-32C, or returns the error of the lowest chunk.
fn run_workers(
    threads: usize,
    n: usize,
    raw_total: u64,
    cs: usize,
    work: impl Fn() -> Result<Vec<(u64, u32)>> + Sync,
) -> Result<u32> {
    let results: Vec<Result<Vec<(u64, u32)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads).map(|_| s.spawn(&work)).collect();
        let mut all = vec![work()];
        for h in handles {
            all.push(
                h.join()
                    .unwrap_or_else(|_| Err(Error::invalid_input("an opening thread panicked"))),
            );
        }
        all
    });
    let mut crcs = vec![None; n];
    let mut first_err: Option<(u64, Error)> = None;
    for r in results {
        match r {
            Ok(v) => {
                for (i, crc) in v {
                    if let Some(slot) = crcs.get_mut(i as usize) {
                        *slot = Some(crc);
                    }
                }
            }
            Err(e) => {
                // Report the fault of the lowest chunk, as a sequential reader would.
                let at = match &e {
                    Error::Corrupt { chunk, .. } => chunk.unwrap_or(u64::MAX),
                    _ => u64::MAX,
                };
                if first_err.as_ref().is_none_or(|(i, _)| at < *i) {
                    first_err = Some((at, e));
                }
            }
        }
    }
    if let Some((_, e)) = first_err {
        return Err(e);
    }
    let mut content_crc = 0u32;
    let mut raw_left = raw_total as usize;
    for slot in crcs {
        let crc =
            slot.ok_or_else(|| Error::invalid_input("a chunk was not opened (internal error)"))?;
        let len = raw_left.min(cs);
        raw_left -= len;
        content_crc = super::crc::crc32c_combine(content_crc, crc, len);
    }
    Ok(content_crc)
}

/// The trailer's authenticity and the whole-content checksum; the object's statistics.
fn finish(path: &str, sealed: &[u8], w: Walked<'_>, content_crc: u32) -> Result<SealStats> {
    let n = w.chunks.len() as u64;
    let mut tr = w.tr;
    if let Some(c) = &w.cipher {
        let aad = trailer_aad(&w.header_bytes, &tr);
        let nonce = format::nonce(format::NONCE_TRAILER, n);
        let tag = w.trailer.get(TRAILER_LEN_PLAIN..).unwrap_or(&[]);
        if !c.open(&nonce, &aad, &mut tr.content_crc, tag) {
            return Err(Error::Crypto {
                path: path.to_string(),
                what: format!(
                    "trailer after {n} chunks: authentication failed (object truncated, \
                     extended or altered)"
                ),
            });
        }
    }
    let stored_crc = u32::from_le_bytes(tr.content_crc);
    if stored_crc != content_crc {
        return Err(Error::corrupt(
            path,
            None,
            format!(
                "whole-content checksum mismatch: trailer {stored_crc:08x}, computed \
                 {content_crc:08x} (a chunk from another object?)"
            ),
        ));
    }
    Ok(SealStats {
        raw_len: w.raw_total,
        stored_len: sealed.len() as u64,
        chunks: n,
        crc32c: content_crc,
    })
}

/// Opens a whole sealed object like [`open`](super::open), verifying and decompressing its
/// chunks on up to `threads` threads (the caller's included). Returns the content and the
/// object's statistics (`crc32c` is the CRC-32C of the content).
pub fn open_parallel(
    path: &str,
    sealed: &[u8],
    key: Option<&Key>,
    threads: usize,
) -> Result<(Vec<u8>, SealStats)> {
    let Some(w) = walk(path, sealed, key)? else {
        let data = super::decode::open_all(path, sealed, key)?;
        let cs = super::inspect(sealed)?.chunk_size.max(1);
        let stats = SealStats {
            raw_len: data.len() as u64,
            stored_len: sealed.len() as u64,
            chunks: data.len().div_ceil(cs) as u64,
            crc32c: super::crc::crc32c(&data),
        };
        return Ok((data, stats));
    };
    // Every chunk, in parallel, into its place in the output (all chunks but the last are
    // exactly `chunk_size` bytes, as the walk checked).
    let cs = w.chunk_size;
    let n = w.chunks.len();
    let mut out = vec![0u8; w.raw_total as usize];
    let jobs: Vec<(&Located<'_>, &mut [u8])> = w.chunks.iter().zip(out.chunks_mut(cs)).collect();
    let threads = threads.clamp(1, n.max(1));
    let queue = Mutex::new(jobs.into_iter());
    let (header_bytes, cipher) = (&w.header_bytes, w.cipher.as_ref());
    let work = || -> Result<Vec<(u64, u32)>> {
        let mut dctx: Option<DCtx<'static>> = None;
        let mut scratch = Vec::new();
        let mut done = Vec::new();
        loop {
            let job = match queue.lock() {
                Ok(mut q) => q.next(),
                Err(_) => return Err(Error::invalid_input("an opening thread panicked")),
            };
            let Some((c, dst)) = job else {
                return Ok(done);
            };
            let crc = open_chunk(path, header_bytes, cipher, &mut dctx, &mut scratch, c, dst)?;
            done.push((c.index, crc));
        }
    };
    let content_crc = run_workers(threads, n, w.raw_total, cs, work)?;
    let stats = finish(path, sealed, w, content_crc)?;
    Ok((out, stats))
}

/// Opens a whole sealed object like [`open_parallel`], handing each verified chunk to
/// `write_at(offset, bytes)` instead of collecting the content: memory stays at one chunk
/// per thread. Chunks arrive in any order; the content is good only if this returns `Ok`
/// (the trailer and the whole-content checksum are verified last), so the caller writes to a
/// place nobody reads before then (a temporary file).
pub fn open_parallel_to(
    path: &str,
    sealed: &[u8],
    key: Option<&Key>,
    threads: usize,
    write_at: &(dyn Fn(u64, &[u8]) -> std::io::Result<()> + Sync),
) -> Result<SealStats> {
    let io_err = |e| Error::io(format!("writing the content of {path}"), e);
    let Some(w) = walk(path, sealed, key)? else {
        // Sequentially, for objects without an announced length.
        let mut dec = super::Decoder::new(path, key);
        let mut offset = 0u64;
        for piece in sealed.chunks(1 << 20) {
            dec.feed(piece);
            while let Some(chunk) = dec.next_chunk()? {
                write_at(offset, chunk).map_err(io_err)?;
                offset += chunk.len() as u64;
            }
        }
        return dec.finish();
    };
    let cs = w.chunk_size;
    let n = w.chunks.len();
    let threads = threads.clamp(1, n.max(1));
    let next = AtomicUsize::new(0);
    let (header_bytes, cipher, chunks) = (&w.header_bytes, w.cipher.as_ref(), &w.chunks);
    let work = || -> Result<Vec<(u64, u32)>> {
        let mut dctx: Option<DCtx<'static>> = None;
        let mut scratch = Vec::new();
        let mut buf = Vec::new();
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(c) = chunks.get(i) else {
                return Ok(done);
            };
            let raw_len = c.frame.raw_len as usize;
            buf.resize(raw_len, 0);
            let crc = open_chunk(
                path,
                header_bytes,
                cipher,
                &mut dctx,
                &mut scratch,
                c,
                &mut buf,
            )?;
            write_at(c.index * cs as u64, &buf).map_err(io_err)?;
            done.push((c.index, crc));
        }
    };
    let content_crc = run_workers(threads, n, w.raw_total, cs, work)?;
    finish(path, sealed, w, content_crc)
}

/// Verifies one chunk and decodes it into `dst` (exactly its raw length); returns the CRC-32C
/// of its raw bytes.
fn open_chunk(
    path: &str,
    header: &[u8; HEADER_LEN],
    cipher: Option<&ObjectCipher>,
    dctx: &mut Option<DCtx<'static>>,
    scratch: &mut Vec<u8>,
    c: &Located<'_>,
    dst: &mut [u8],
) -> Result<u32> {
    let (index, frame) = (c.index, &c.frame);
    let bad = |what: String| Error::corrupt(path, Some(index), what);
    let raw_len = frame.raw_len as usize;
    if dst.len() != raw_len {
        return Err(bad(format!(
            "chunk raw length {raw_len} does not fit its place ({} bytes)",
            dst.len()
        )));
    }
    if !(cipher.is_none() && frame.codec == CHUNK_STORED) {
        let got = super::crc::crc32c(c.payload);
        if got != frame.stored_crc {
            return Err(bad(format!(
                "stored data checksum mismatch: frame says {:08x}, payload has {got:08x}",
                frame.stored_crc
            )));
        }
    }
    let (body, expect_crc): (&[u8], u32) = match cipher {
        None => (c.payload, frame.raw_crc),
        Some(cipher) => {
            scratch.clear();
            scratch.extend_from_slice(c.payload);
            let split = scratch.len().saturating_sub(TAG_LEN);
            let (ct, tag) = scratch.split_at_mut(split);
            let aad = chunk_aad(header, frame, index);
            let nonce = format::nonce(format::NONCE_CHUNK, index);
            if !cipher.open(&nonce, &aad, ct, tag) {
                return Err(Error::Crypto {
                    path: path.to_string(),
                    what: format!(
                        "chunk {index}: authentication failed (data altered, or the chunk was \
                         moved from another position or object)"
                    ),
                });
            }
            let n = ct.len().saturating_sub(4);
            let (body, crc) = ct.split_at(n);
            let mut b = [0u8; 4];
            b.copy_from_slice(crc);
            (body, u32::from_le_bytes(b))
        }
    };
    if frame.codec == CHUNK_STORED {
        if body.len() != raw_len {
            return Err(bad(format!(
                "stored chunk holds {} bytes, the frame says {raw_len}",
                body.len()
            )));
        }
        dst.copy_from_slice(body);
    } else {
        if dctx.is_none() {
            *dctx = Some(DCtx::try_create().ok_or_else(|| {
                Error::invalid_input("cannot allocate a zstd decompression context")
            })?);
        }
        let Some(d) = dctx.as_mut() else {
            return Err(Error::invalid_input("no zstd decompression context"));
        };
        match d.decompress(dst, body) {
            Ok(got) if got == raw_len => {}
            Ok(got) => {
                return Err(bad(format!(
                    "zstd data decompresses to {got} bytes, the frame says {raw_len}"
                )))
            }
            Err(code) => {
                let _ = d.reset(ResetDirective::SessionOnly);
                return Err(bad(format!(
                    "zstd data does not decompress: {}",
                    zstd_safe::get_error_name(code)
                )));
            }
        }
    }
    let got = super::crc::crc32c(dst);
    if got != expect_crc {
        return Err(bad(format!(
            "raw data checksum mismatch: stored {expect_crc:08x}, computed {got:08x}"
        )));
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::envelope::{open, seal, seal_with_stats};

    /// WAL-like content: page headers, compressible runs and noise.
    fn sample(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match (i / 4096) % 3 {
                    0 => (i % 251) as u8,
                    1 => 0,
                    _ => x as u8,
                }
            })
            .collect()
    }

    #[test]
    fn byte_identical_to_the_sequential_sealer() {
        for (len, cs) in [
            (16 << 20, 1 << 20),
            ((3 << 20) + 17, 1 << 20),
            (1000, 64),
            (64, 64),
            (65, 64),
            (1, 64),
        ] {
            let data = sample(len);
            for opts in [
                EnvelopeOptions::zstd(1).with_chunk_size(cs),
                EnvelopeOptions::zstd(3).with_chunk_size(cs),
                EnvelopeOptions::uncompressed().with_chunk_size(cs),
            ] {
                let (seq, seq_stats) = seal_with_stats(&opts, &data).unwrap();
                for threads in [1, 2, 3, 8] {
                    let (par, par_stats) = seal_parallel(&opts, &data, threads).unwrap();
                    assert!(par == seq, "len {len} cs {cs} threads {threads}");
                    assert_eq!(par_stats, seq_stats);
                    let (back, stats) = open_parallel("t", &par, None, threads).unwrap();
                    assert!(back == data);
                    assert_eq!(stats, seq_stats);
                    let read_at = |off: u64, buf: &mut [u8]| {
                        let off = off as usize;
                        buf.copy_from_slice(&data[off..off + buf.len()]);
                        Ok(())
                    };
                    let (rd, rd_stats) =
                        seal_parallel_read(&opts, len as u64, &read_at, threads).unwrap();
                    assert!(rd == seq, "read: len {len} cs {cs} threads {threads}");
                    assert_eq!(rd_stats, seq_stats);
                }
            }
        }
    }

    #[test]
    fn parallel_read_checksum_is_the_crc32c() {
        for len in [0usize, 1, (1 << 20) - 1, 1 << 20, (3 << 20) + 5] {
            let data = sample(len);
            let read_at = |off: u64, buf: &mut [u8]| {
                let off = off as usize;
                buf.copy_from_slice(&data[off..off + buf.len()]);
                Ok(())
            };
            for threads in [1, 2, 3] {
                let crc = crc32c_parallel_read(len as u64, &read_at, threads).unwrap();
                assert_eq!(crc, crate::envelope::crc32c(&data), "len {len}");
            }
        }
    }

    #[test]
    fn sealing_from_a_reader_reports_read_errors_and_seals_empty_content() {
        let opts = EnvelopeOptions::zstd(1).with_chunk_size(64);
        let failing = |off: u64, _: &mut [u8]| {
            if off >= 128 {
                Err(std::io::Error::other("device gone"))
            } else {
                Ok(())
            }
        };
        for threads in [1, 2] {
            let e = seal_parallel_read(&opts, 1000, &failing, threads).unwrap_err();
            assert!(matches!(e, Error::Io { .. }), "{e}");
        }
        let nothing = |_: u64, _: &mut [u8]| -> std::io::Result<()> { unreachable!() };
        let (empty, stats) = seal_parallel_read(&opts, 0, &nothing, 2).unwrap();
        assert_eq!(empty, seal(&opts, &[]).unwrap());
        assert_eq!(stats.raw_len, 0);
    }

    #[test]
    fn encrypted_byte_identical_given_the_salt() {
        let key = Arc::new(Key::from_bytes([9; 32]));
        let data = sample((5 << 20) + 3);
        let cs = 1 << 20;
        let opts = EnvelopeOptions::zstd(1).with_key(key.clone());
        let seq = seal(&opts, &data).unwrap();
        // Rebuild the sequential object's header (same salt) and seal its chunks in parallel.
        let hdr = Header::parse("t", &seq).unwrap();
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&seq[..HEADER_LEN]);
        let (cipher, _) = key.derive(&hdr.salt);
        let (par, _) = seal_chunks(
            &header,
            Some(&cipher),
            CODEC_ZSTD,
            1,
            Source::Slice(&data),
            cs,
            2,
        )
        .unwrap();
        assert!(par == seq);
        // A fresh parallel seal (new salt) opens with both openers.
        let (fresh, _) = seal_parallel(&opts, &data, 2).unwrap();
        assert_eq!(open("t", &fresh, Some(&key)).unwrap(), data);
        assert_eq!(open_parallel("t", &fresh, Some(&key), 2).unwrap().0, data);
        assert!(matches!(
            open_parallel("t", &fresh, None, 2),
            Err(Error::Crypto { .. })
        ));
        let other = Key::from_bytes([8; 32]);
        assert!(matches!(
            open_parallel("t", &fresh, Some(&other), 2),
            Err(Error::Crypto { .. })
        ));
    }

    #[test]
    fn corruption_is_detected_like_the_sequential_opener() {
        let data = sample((4 << 20) + 100);
        let key = Arc::new(Key::from_bytes([5; 32]));
        for opts in [
            EnvelopeOptions::zstd(1),
            EnvelopeOptions::uncompressed(),
            EnvelopeOptions::zstd(1).with_key(key.clone()),
        ] {
            let k = opts.key.as_deref();
            let sealed = seal_parallel(&opts, &data, 2).unwrap().0;
            // Flip one bit at many positions: header, frame headers, payloads, trailer.
            let step = (sealed.len() / 97).max(1);
            let mut positions: Vec<usize> = (0..sealed.len()).step_by(step).collect();
            positions.extend([0, 10, HEADER_LEN, HEADER_LEN + 5, sealed.len() - 1]);
            for p in positions {
                let mut bad = sealed.clone();
                bad[p] ^= 0x10;
                assert!(
                    open("t", &bad, k).is_err(),
                    "sequential accepts flip at {p}"
                );
                let r = open_parallel("t", &bad, k, 2);
                assert!(r.is_err(), "parallel accepts flip at {p}");
            }
            // Truncation anywhere, and junk after the trailer.
            for cut in [
                0,
                HEADER_LEN - 1,
                HEADER_LEN + 30,
                sealed.len() / 2,
                sealed.len() - 1,
            ] {
                assert!(
                    open_parallel("t", &sealed[..cut], k, 2).is_err(),
                    "cut at {cut}"
                );
            }
            let mut longer = sealed.clone();
            longer.push(0);
            assert!(open_parallel("t", &longer, k, 2).is_err());
        }
    }

    /// `open_parallel_to` into a buffer.
    fn open_to_vec(
        sealed: &[u8],
        key: Option<&Key>,
        threads: usize,
    ) -> Result<(Vec<u8>, SealStats)> {
        let out = Mutex::new(Vec::new());
        let write_at = |off: u64, b: &[u8]| {
            let mut o = out.lock().unwrap();
            let end = off as usize + b.len();
            if o.len() < end {
                o.resize(end, 0);
            }
            o[off as usize..end].copy_from_slice(b);
            Ok(())
        };
        let stats = open_parallel_to("t", sealed, key, threads, &write_at)?;
        Ok((out.into_inner().unwrap(), stats))
    }

    #[test]
    fn streamed_opening_writes_the_content_and_detects_corruption() {
        let key = Arc::new(Key::from_bytes([4; 32]));
        let data = sample((5 << 20) + 77);
        for opts in [
            EnvelopeOptions::zstd(1),
            EnvelopeOptions::uncompressed().with_chunk_size(1 << 16),
            EnvelopeOptions::zstd(1).with_key(key.clone()),
        ] {
            let k = opts.key.as_deref();
            let (sealed, seq_stats) = seal_with_stats(&opts, &data).unwrap();
            for threads in [1, 2, 4] {
                let (back, stats) = open_to_vec(&sealed, k, threads).unwrap();
                assert!(back == data);
                assert_eq!(stats, seq_stats);
            }
            let step = (sealed.len() / 61).max(1);
            for p in (0..sealed.len()).step_by(step).chain([sealed.len() - 1]) {
                let mut bad = sealed.clone();
                bad[p] ^= 0x04;
                assert!(open_to_vec(&bad, k, 2).is_err(), "flip at {p} accepted");
            }
            assert!(open_to_vec(&sealed[..sealed.len() - 3], k, 2).is_err());
        }
        // A stream (no length in the header) goes the sequential way, same checks.
        let mut s = crate::envelope::Sealer::new(&EnvelopeOptions::zstd(1), Vec::new()).unwrap();
        std::io::Write::write_all(&mut s, &data).unwrap();
        let (streamed, _) = s.finish().unwrap();
        assert!(open_to_vec(&streamed, None, 2).unwrap().0 == data);
        assert!(open_parallel("t", &streamed, None, 2).unwrap().0 == data);
        let mut bad = streamed.clone();
        bad[streamed.len() / 2] ^= 1;
        assert!(open_to_vec(&bad, None, 2).is_err());
    }

    #[test]
    fn a_damaged_chunk_is_located() {
        let data = sample(4 << 20);
        let opts = EnvelopeOptions::zstd(1);
        let sealed = seal_parallel(&opts, &data, 2).unwrap().0;
        // The payload of chunk 2: walk the frames.
        let mut pos = HEADER_LEN;
        for _ in 0..2 {
            let stored = u32::from_le_bytes(sealed[pos + 4..pos + 8].try_into().unwrap());
            pos += FRAME_HEADER_LEN + stored as usize;
        }
        let mut bad = sealed.clone();
        bad[pos + FRAME_HEADER_LEN + 7] ^= 1;
        match open_parallel("wal/x", &bad, None, 2) {
            Err(Error::Corrupt { chunk, .. }) => assert_eq!(chunk, Some(2)),
            other => panic!("expected Corrupt at chunk 2, got {other:?}"),
        }
    }

    #[test]
    fn swapped_chunks_are_refused() {
        let data = sample(3 << 20);
        let sealed = seal_parallel(&EnvelopeOptions::zstd(1), &data, 2)
            .unwrap()
            .0;
        let mut frames = Vec::new();
        let mut pos = HEADER_LEN;
        for _ in 0..3 {
            let stored = u32::from_le_bytes(sealed[pos + 4..pos + 8].try_into().unwrap());
            let end = pos + FRAME_HEADER_LEN + stored as usize;
            frames.push(sealed[pos..end].to_vec());
            pos = end;
        }
        let mut swapped = sealed[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&frames[1]);
        swapped.extend_from_slice(&frames[0]);
        swapped.extend_from_slice(&frames[2]);
        swapped.extend_from_slice(&sealed[pos..]);
        assert!(open_parallel("t", &swapped, None, 2).is_err());
    }
}
