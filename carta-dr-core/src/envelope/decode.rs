//! Opening: the sans-IO [`Decoder`], the streaming [`Opener`] and the one-shot path.

use std::io::{self, Read};

use super::codec::Decompressor;
use super::encode::{chunk_aad, trailer_aad};
use super::format::{
    self, Frame, Header, Trailer, CHUNK_STORED, CIPHER_NONE, FRAME_HEADER_LEN, HEADER_LEN,
    KIND_CHUNK, KIND_TRAILER, RAW_LEN_UNKNOWN, TAG_LEN, TRAILER_LEN_PLAIN,
};
use super::key::{Key, ObjectCipher};
use super::{HeaderInfo, SealStats};
use crate::{Error, Result};

/// Verifies one object frame by frame. Knows nothing about buffering.
pub(crate) struct DecoderCore {
    path: String,
    key: Option<Key>,
    header: Option<(Header, [u8; HEADER_LEN])>,
    header_crc: u32,
    cipher: Option<ObjectCipher>,
    dctx: Option<Decompressor>,
    chunks: u64,
    raw_len: u64,
    stored_len: u64,
    content_crc: u32,
    /// A chunk shorter than `chunk_size` was seen: only the trailer may follow.
    saw_short: bool,
    done: bool,
    /// Decryption buffer when the payload cannot be decrypted in place.
    scratch: Vec<u8>,
}

impl DecoderCore {
    pub fn new(path: String, key: Option<&Key>) -> Self {
        DecoderCore {
            path,
            key: key.cloned(),
            header: None,
            header_crc: 0,
            cipher: None,
            dctx: None,
            chunks: 0,
            raw_len: 0,
            stored_len: 0,
            content_crc: 0,
            saw_short: false,
            done: false,
            scratch: Vec::new(),
        }
    }

    fn corrupt(&self, chunk: Option<u64>, what: impl Into<String>) -> Error {
        Error::corrupt(&self.path, chunk, what)
    }

    fn crypto(&self, what: impl Into<String>) -> Error {
        Error::Crypto {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    /// Parses the header (`bytes`: at least [`HEADER_LEN`] bytes) and sets up the codec and
    /// cipher.
    pub fn header(&mut self, bytes: &[u8]) -> Result<()> {
        let h = Header::parse(&self.path, bytes)?;
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&bytes[..HEADER_LEN]);
        match (h.cipher != CIPHER_NONE, &self.key) {
            (true, None) => {
                return Err(self.crypto("object is encrypted (AES-256-GCM) and no key was given"))
            }
            (false, Some(_)) => {
                return Err(self.crypto(
                    "object is not encrypted but a key was given; refusing it, since anyone \
                     able to write the store could otherwise substitute unauthenticated data",
                ))
            }
            (true, Some(key)) => {
                let (cipher, check) = key.derive(&h.salt);
                if check != h.key_check {
                    return Err(self.crypto(format!(
                        "wrong key: key {} does not match the key this object was sealed with",
                        key.fingerprint()
                    )));
                }
                self.cipher = Some(cipher);
            }
            (false, None) => {}
        }
        if h.codec != format::CODEC_NONE {
            self.dctx = Some(Decompressor::new()?);
        }
        self.header_crc = Header::crc_of(&raw);
        self.header = Some((h, raw));
        self.stored_len = HEADER_LEN as u64;
        Ok(())
    }

    fn hdr(&self) -> Result<&(Header, [u8; HEADER_LEN])> {
        self.header
            .as_ref()
            .ok_or_else(|| self.corrupt(None, "frame before header"))
    }

    /// Looks at the next frame's first [`FRAME_HEADER_LEN`] bytes. A chunk frame header is
    /// verified and returned with the length of the payload that follows it; for the trailer
    /// the whole trailer length is returned.
    pub fn frame_head(&self, f: &[u8]) -> Result<FrameHead> {
        let (hdr, _) = self.hdr()?;
        let kind = f.first().copied().unwrap_or(0);
        if self.done {
            return Err(self.corrupt(None, "data after the trailer"));
        }
        match kind {
            KIND_CHUNK => {
                if self.saw_short {
                    return Err(self.corrupt(
                        Some(self.chunks),
                        format!(
                            "chunk {} follows a short chunk; only the last chunk may be shorter than {} bytes",
                            self.chunks, hdr.chunk_size
                        ),
                    ));
                }
                let frame = Frame::parse(&self.path, hdr, self.header_crc, self.chunks, f)?;
                Ok(FrameHead::Chunk(frame))
            }
            KIND_TRAILER => Ok(FrameHead::Trailer(hdr.trailer_len())),
            other => Err(self.corrupt(
                Some(self.chunks),
                format!(
                    "bad frame marker {other:#04x} at byte {}: expected chunk {} or the trailer",
                    self.stored_len, self.chunks
                ),
            )),
        }
    }

    /// Verifies and decodes one chunk (`payload`: exactly `frame.stored_len` bytes),
    /// appending its raw bytes to `out`. Encrypted payloads are decrypted in place when
    /// writable, else in a scratch copy.
    pub fn chunk(&mut self, frame: &Frame, payload: Payload<'_>, out: &mut Vec<u8>) -> Result<()> {
        let index = self.chunks;
        let Some((hdr, hdr_bytes)) = self.header.as_ref() else {
            return Err(self.corrupt(None, "frame before header"));
        };
        let path = self.path.as_str();
        let raw_len = frame.raw_len as usize;
        let stored_len = payload.len();
        let stored_crc = match (&self.cipher, frame.codec) {
            // Plain stored chunks: payload == raw, checked once below.
            (None, CHUNK_STORED) => frame.stored_crc,
            _ => super::crc::crc32c(payload.as_slice()),
        };
        if stored_crc != frame.stored_crc {
            return Err(Error::corrupt(
                path,
                Some(index),
                format!(
                    "stored data checksum mismatch: frame says {:08x}, payload has {stored_crc:08x}",
                    frame.stored_crc
                ),
            ));
        }
        let (body, expect_crc): (&[u8], u32) = match (&self.cipher, payload) {
            (None, p) => (p.into_shared(), frame.raw_crc),
            (Some(cipher), p) => {
                let buf: &mut [u8] = match p {
                    Payload::Mut(m) => m,
                    Payload::Shared(s) => {
                        self.scratch.clear();
                        self.scratch.extend_from_slice(s);
                        &mut self.scratch
                    }
                };
                let split = buf.len().saturating_sub(TAG_LEN);
                let (ct, tag) = buf.split_at_mut(split);
                let aad = chunk_aad(hdr_bytes, frame, index);
                let nonce = format::nonce(format::NONCE_CHUNK, index);
                if !cipher.open(&nonce, &aad, ct, tag) {
                    return Err(Error::Crypto {
                        path: path.to_string(),
                        what: format!(
                            "chunk {index}: authentication failed (data altered, or the chunk \
                             was moved from another position or object)"
                        ),
                    });
                }
                let n = ct.len().saturating_sub(4);
                let (body, crc) = ct.split_at(n);
                let mut c = [0u8; 4];
                c.copy_from_slice(crc);
                (body, u32::from_le_bytes(c))
            }
        };
        let start = out.len();
        if frame.codec == CHUNK_STORED {
            if body.len() != raw_len {
                return Err(Error::corrupt(
                    path,
                    Some(index),
                    format!(
                        "stored chunk holds {} bytes, the frame says {raw_len}",
                        body.len()
                    ),
                ));
            }
            out.extend_from_slice(body);
        } else {
            let Some(d) = self.dctx.as_mut() else {
                return Err(Error::corrupt(
                    path,
                    Some(index),
                    "compressed chunk in an object without a codec",
                ));
            };
            d.decompress_append(body, raw_len, out)
                .map_err(|what| Error::corrupt(path, Some(index), what))?;
        }
        let got = super::crc::crc32c(&out[start..]);
        if got != expect_crc {
            out.truncate(start);
            return Err(Error::corrupt(
                path,
                Some(index),
                format!("raw data checksum mismatch: stored {expect_crc:08x}, computed {got:08x}"),
            ));
        }
        let new_raw = self.raw_len + raw_len as u64;
        if hdr.raw_len != RAW_LEN_UNKNOWN && new_raw > hdr.raw_len {
            out.truncate(start);
            return Err(Error::corrupt(
                path,
                Some(index),
                format!(
                    "more data than the {} bytes the header announces",
                    hdr.raw_len
                ),
            ));
        }
        if raw_len < hdr.chunk_size as usize {
            self.saw_short = true;
        }
        self.content_crc = super::crc::crc32c_combine(self.content_crc, got, raw_len);
        self.raw_len = new_raw;
        self.stored_len += (FRAME_HEADER_LEN + stored_len) as u64;
        self.chunks += 1;
        Ok(())
    }

    /// Verifies the trailer (`t`: exactly the trailer's length).
    pub fn trailer(&mut self, t: &[u8]) -> Result<()> {
        let (hdr, hdr_bytes) = self.hdr()?;
        let mut tr = Trailer::parse(&self.path, self.header_crc, self.chunks, t)?;
        // Structure first (a missing or extra chunk is plain corruption), then authenticity,
        // then the content checksum (which, encrypted, is only readable once authenticated).
        let structure = if tr.chunks != self.chunks {
            Some(format!(
                "trailer counts {} chunks but {} were read (chunks missing or added)",
                tr.chunks, self.chunks
            ))
        } else if tr.raw_len != self.raw_len {
            Some(format!(
                "trailer says {} raw bytes but the chunks hold {}",
                tr.raw_len, self.raw_len
            ))
        } else if hdr.raw_len != RAW_LEN_UNKNOWN && hdr.raw_len != self.raw_len {
            Some(format!(
                "header announces {} raw bytes but the object holds {}",
                hdr.raw_len, self.raw_len
            ))
        } else {
            None
        };
        if let Some(what) = structure {
            return Err(self.corrupt(None, what));
        }
        if let Some(cipher) = &self.cipher {
            let aad = trailer_aad(hdr_bytes, &tr);
            let nonce = format::nonce(format::NONCE_TRAILER, self.chunks);
            let tag = t.get(TRAILER_LEN_PLAIN..).unwrap_or(&[]);
            if !cipher.open(&nonce, &aad, &mut tr.content_crc, tag) {
                return Err(self.crypto(format!(
                    "trailer after {} chunks: authentication failed (object truncated, \
                     extended or altered)",
                    self.chunks
                )));
            }
        }
        let content_crc = u32::from_le_bytes(tr.content_crc);
        if content_crc != self.content_crc {
            return Err(self.corrupt(
                None,
                format!(
                    "whole-content checksum mismatch: trailer {content_crc:08x}, computed {:08x} \
                     (a chunk from another object?)",
                    self.content_crc
                ),
            ));
        }
        self.stored_len += t.len() as u64;
        self.done = true;
        Ok(())
    }

    pub fn info(&self) -> Option<HeaderInfo> {
        self.header
            .as_ref()
            .map(|(h, _)| HeaderInfo::from_header(h))
    }

    pub fn stats(&self) -> SealStats {
        SealStats {
            raw_len: self.raw_len,
            stored_len: self.stored_len,
            chunks: self.chunks,
            crc32c: self.content_crc,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// A plausible initial capacity for the whole raw content of an object of
    /// `sealed_len` bytes (never trusting the header's claim beyond what the frames could
    /// hold).
    pub fn capacity_hint(&self, sealed_len: usize) -> usize {
        match &self.header {
            Some((h, _)) => {
                let frames = sealed_len / (FRAME_HEADER_LEN + 1) + 1;
                let bound = (frames as u64).saturating_mul(u64::from(h.chunk_size));
                let claim = if h.raw_len == RAW_LEN_UNKNOWN {
                    bound
                } else {
                    h.raw_len
                };
                claim.min(bound).min(256 << 20) as usize
            }
            None => 0,
        }
    }
}

/// What the first bytes of a frame announce.
pub(crate) enum FrameHead {
    /// A verified chunk frame header; its payload follows.
    Chunk(Frame),
    /// The trailer, of this total length (including the 20 bytes looked at).
    Trailer(usize),
}

/// Opens a whole sealed buffer (see [`open`](super::open)).
pub(crate) fn open_all(path: &str, sealed: &[u8], key: Option<&Key>) -> Result<Vec<u8>> {
    let mut core = DecoderCore::new(path.to_string(), key);
    if sealed.len() < HEADER_LEN {
        return Err(core.corrupt(
            None,
            format!(
                "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
                sealed.len()
            ),
        ));
    }
    core.header(sealed)?;
    let mut out = Vec::with_capacity(core.capacity_hint(sealed.len()));
    let mut pos = HEADER_LEN;
    loop {
        let rest = &sealed[pos..];
        if rest.len() < FRAME_HEADER_LEN {
            return Err(truncated(&core, pos, rest.len()));
        }
        match core.frame_head(rest)? {
            FrameHead::Chunk(frame) => {
                let end = FRAME_HEADER_LEN + frame.stored_len as usize;
                let payload = match rest.get(FRAME_HEADER_LEN..end) {
                    Some(p) => p,
                    None => return Err(truncated(&core, pos, rest.len())),
                };
                core.chunk(&frame, Payload::Shared(payload), &mut out)?;
                pos += end;
            }
            FrameHead::Trailer(len) => {
                let t = match rest.get(..len) {
                    Some(t) => t,
                    None => return Err(truncated(&core, pos, rest.len())),
                };
                core.trailer(t)?;
                pos += len;
                if pos != sealed.len() {
                    return Err(core.corrupt(
                        None,
                        format!("{} bytes of junk after the trailer", sealed.len() - pos),
                    ));
                }
                return Ok(out);
            }
        }
    }
}

fn truncated(core: &DecoderCore, pos: usize, have: usize) -> Error {
    core.corrupt(
        Some(core.chunks),
        format!(
            "truncated at byte {} after {} complete chunks: the object ends inside a frame or \
             before its trailer",
            pos + have,
            core.chunks
        ),
    )
}

/// A chunk payload: decrypted in place when writable.
pub(crate) enum Payload<'a> {
    /// Read-only bytes (copied before decryption).
    Shared(&'a [u8]),
    /// Bytes that may be decrypted in place.
    Mut(&'a mut [u8]),
}

impl<'a> Payload<'a> {
    fn len(&self) -> usize {
        match self {
            Payload::Shared(s) => s.len(),
            Payload::Mut(m) => m.len(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Shared(s) => s,
            Payload::Mut(m) => m,
        }
    }

    fn into_shared(self) -> &'a [u8] {
        match self {
            Payload::Shared(s) => s,
            Payload::Mut(m) => m,
        }
    }
}

/// How much a streaming reader asks for beyond what the decoder strictly needs, to keep
/// read calls few.
const READ_AHEAD: usize = 64 << 10;

#[derive(Clone, Copy)]
enum State {
    Header,
    FrameHead,
    Chunk(Frame),
    Trailer(usize),
    Done,
}

/// A sans-IO, push-style envelope decoder.
///
/// Feed it bytes in pieces of any size ([`Decoder::feed`], or [`Decoder::read_from`] which
/// reads straight into its buffer), then call [`Decoder::next_chunk`] until it returns
/// `Ok(None)`; each `Some` is one chunk's raw bytes, already verified. After the input ends,
/// [`Decoder::finish`] says whether the object was complete: only then is the content whole.
///
/// Memory: the decoder holds what was fed and not yet decoded (at most one frame plus the
/// last piece fed, when pieces are drained as they come) and one decoded chunk.
///
/// The first error is final: every later call fails too.
///
/// ```
/// use carta_dr_core::envelope::{seal, Decoder, EnvelopeOptions};
///
/// let sealed = seal(&EnvelopeOptions::zstd(3).with_chunk_size(4), b"0123456789")?;
/// let mut d = Decoder::new("example", None);
/// let mut raw = Vec::new();
/// for piece in sealed.chunks(7) {
///     d.feed(piece);
///     while let Some(chunk) = d.next_chunk()? {
///         raw.extend_from_slice(chunk);
///     }
/// }
/// let stats = d.finish()?;
/// assert_eq!((raw.as_slice(), stats.chunks), (&b"0123456789"[..], 3));
/// # Ok::<(), carta_dr_core::Error>(())
/// ```
pub struct Decoder {
    core: DecoderCore,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    state: State,
    out: Vec<u8>,
    failed: Option<String>,
}

impl Decoder {
    /// A decoder for the object at `path` (used in error messages). `key` is required for
    /// encrypted objects, and refused for unencrypted ones.
    pub fn new(path: impl Into<String>, key: Option<&Key>) -> Decoder {
        Decoder {
            core: DecoderCore::new(path.into(), key),
            buf: Vec::new(),
            start: 0,
            end: 0,
            state: State::Header,
            out: Vec::new(),
            failed: None,
        }
    }

    /// Makes room for `n` more bytes after `end`.
    fn make_room(&mut self, n: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end < n && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < n {
            self.buf.resize(self.end + n, 0);
        }
    }

    /// Appends input bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.make_room(data.len());
        self.buf[self.end..self.end + data.len()].copy_from_slice(data);
        self.end += data.len();
    }

    /// Reads from `r` straight into the decoder's buffer: one `read` call of at least the
    /// bytes the next step needs (plus some read-ahead). Returns what `read` returned; 0
    /// means the reader is at its end.
    pub fn read_from<R: Read + ?Sized>(&mut self, r: &mut R) -> io::Result<usize> {
        let want = self.wants().max(1) + READ_AHEAD;
        self.make_room(want);
        let n = r.read(&mut self.buf[self.end..self.end + want])?;
        self.end += n.min(want);
        Ok(n)
    }

    /// How many more input bytes the next step needs (0 when it can run, or when the
    /// object is complete).
    pub fn wants(&self) -> usize {
        let avail = self.end - self.start;
        let need = match self.state {
            State::Header => HEADER_LEN,
            State::FrameHead => FRAME_HEADER_LEN,
            State::Chunk(f) => f.stored_len as usize,
            State::Trailer(len) => len,
            State::Done => 0,
        };
        need.saturating_sub(avail)
    }

    /// The next verified chunk, or `Ok(None)` when more input is needed or the trailer has
    /// been verified ([`Decoder::is_done`]).
    pub fn next_chunk(&mut self) -> Result<Option<&[u8]>> {
        if let Some(msg) = &self.failed {
            return Err(Error::corrupt(
                self.core.path(),
                None,
                format!("decoding failed earlier: {msg}"),
            ));
        }
        match self.advance() {
            Ok(true) => Ok(Some(&self.out)),
            Ok(false) => Ok(None),
            Err(e) => {
                self.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Runs steps until a chunk is decoded (`true`) or input runs out (`false`).
    fn advance(&mut self) -> Result<bool> {
        loop {
            let avail = &mut self.buf[self.start..self.end];
            match self.state {
                State::Header => {
                    if avail.len() < HEADER_LEN {
                        return Ok(false);
                    }
                    self.core.header(avail)?;
                    self.start += HEADER_LEN;
                    self.state = State::FrameHead;
                }
                State::FrameHead => {
                    if avail.len() < FRAME_HEADER_LEN {
                        return Ok(false);
                    }
                    match self.core.frame_head(avail)? {
                        FrameHead::Chunk(f) => {
                            self.start += FRAME_HEADER_LEN;
                            self.state = State::Chunk(f);
                        }
                        FrameHead::Trailer(len) => self.state = State::Trailer(len),
                    }
                }
                State::Chunk(f) => {
                    let n = f.stored_len as usize;
                    let Some(payload) = avail.get_mut(..n) else {
                        return Ok(false);
                    };
                    self.out.clear();
                    self.core.chunk(&f, Payload::Mut(payload), &mut self.out)?;
                    self.start += n;
                    self.state = State::FrameHead;
                    return Ok(true);
                }
                State::Trailer(len) => {
                    let Some(t) = avail.get(..len) else {
                        return Ok(false);
                    };
                    self.core.trailer(t)?;
                    self.start += len;
                    self.state = State::Done;
                }
                State::Done => {
                    if !avail.is_empty() {
                        return Err(Error::corrupt(
                            self.core.path(),
                            None,
                            format!("{} bytes of junk after the trailer", avail.len()),
                        ));
                    }
                    return Ok(false);
                }
            }
        }
    }

    /// Whether the trailer has been verified (the content is complete).
    pub fn is_done(&self) -> bool {
        self.core.is_done()
    }

    /// The header's fields, once the header has been read.
    pub fn header(&self) -> Option<HeaderInfo> {
        self.core.info()
    }

    /// Statistics of what has been verified so far.
    pub fn stats(&self) -> SealStats {
        self.core.stats()
    }

    /// Call when the input has ended. Decodes (and drops) any chunk still buffered, then
    /// succeeds only if the trailer was verified and nothing follows it; the error of a
    /// truncated object names the chunk where it ends.
    pub fn finish(&mut self) -> Result<SealStats> {
        while self.next_chunk()?.is_some() {}
        if !self.core.is_done() {
            let what = match self.state {
                State::Header => format!(
                    "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
                    self.end - self.start
                ),
                _ => format!(
                    "truncated after {} complete chunks: the object ends inside a frame or \
                     before its trailer",
                    self.core.chunks
                ),
            };
            let chunk = match self.state {
                State::Header => None,
                _ => Some(self.core.chunks),
            };
            let e = Error::corrupt(self.core.path(), chunk, what);
            self.failed = Some(e.to_string());
            return Err(e);
        }
        Ok(self.core.stats())
    }

    /// The chunk most recently returned by [`Decoder::next_chunk`].
    pub(crate) fn current(&self) -> &[u8] {
        &self.out
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("path", &self.core.path())
            .field("stats", &self.core.stats())
            .field("done", &self.core.is_done())
            .finish_non_exhaustive()
    }
}

/// Streaming decoder: reads a sealed object from `R` and yields its raw content.
///
/// Yields only verified bytes (a chunk is returned once its checksums, and for encrypted
/// objects its authentication tag, have passed), and returns end-of-file only after a valid
/// trailer with nothing after it. Errors are `io::Error`s of kind `InvalidData` wrapping the
/// [`Error`] (recover it with [`io_error_to_error`](super::io_error_to_error)). Memory stays
/// at about two chunks.
pub struct Opener<R: Read> {
    dec: Decoder,
    reader: R,
    pos: usize,
    eof: bool,
}

impl<R: Read> Opener<R> {
    /// An opener for the object at `path` (named in errors).
    pub fn new(path: impl Into<String>, reader: R, key: Option<&Key>) -> Self {
        Opener {
            dec: Decoder::new(path, key),
            reader,
            pos: 0,
            eof: false,
        }
    }

    /// The header, once read.
    pub fn header(&self) -> Option<HeaderInfo> {
        self.dec.header()
    }

    /// Statistics of what has been verified so far (complete once `read` returned 0).
    pub fn stats(&self) -> SealStats {
        self.dec.stats()
    }

    /// The underlying reader.
    pub fn into_inner(self) -> R {
        self.reader
    }

    fn fill(&mut self) -> Result<bool> {
        loop {
            if self.dec.next_chunk()?.is_some() {
                self.pos = 0;
                return Ok(true);
            }
            let n = self
                .dec
                .read_from(&mut self.reader)
                .map_err(|e| Error::io(format!("reading {}", self.dec.core.path()), e))?;
            if n == 0 {
                self.dec.finish()?;
                return Ok(false);
            }
        }
    }
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let cur = self.dec.current();
            if self.pos < cur.len() {
                let n = (cur.len() - self.pos).min(buf.len());
                buf[..n].copy_from_slice(&cur[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            match self.fill() {
                Ok(true) => {}
                Ok(false) => {
                    self.eof = true;
                    self.pos = usize::MAX;
                    return Ok(0);
                }
                Err(Error::Io { source, .. }) => return Err(source),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }
}
