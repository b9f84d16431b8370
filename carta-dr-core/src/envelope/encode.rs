//! Sealing: the chunk encoder shared by [`seal`](super::seal) and [`Sealer`].

use std::io::{self, Write};

use super::codec::Compressor;
use super::format::{
    self, Frame, Header, Trailer, CHUNK_STORED, CIPHER_AES_256_GCM, CIPHER_NONE, CODEC_NONE,
    CODEC_ZSTD, FRAME_HEADER_LEN, HEADER_LEN, KEY_CHECK_LEN, MAX_CHUNK_SIZE, RAW_LEN_UNKNOWN,
    SALT_LEN, TAG_LEN, TRAILER_LEN_ENCRYPTED,
};
use super::key::ObjectCipher;
use super::{Codec, EnvelopeOptions, SealStats};
use crate::{Error, Result};

/// Encodes the frames of one object into caller-provided buffers.
pub(crate) struct EncoderCore {
    header: [u8; HEADER_LEN],
    header_crc: u32,
    chunk_size: usize,
    compressor: Option<Compressor>,
    cipher: Option<ObjectCipher>,
    expected_len: Option<u64>,
    chunks: u64,
    raw_len: u64,
    stored_len: u64,
    content_crc: u32,
}

impl EncoderCore {
    /// Checks the options and prepares the header; `raw_len` is written into the header
    /// when known.
    pub fn new(opts: &EnvelopeOptions, raw_len: Option<u64>) -> Result<Self> {
        if opts.chunk_size == 0 || opts.chunk_size > MAX_CHUNK_SIZE {
            return Err(Error::invalid_input(format!(
                "envelope chunk size {} out of range 1..={MAX_CHUNK_SIZE}",
                opts.chunk_size
            )));
        }
        if raw_len == Some(RAW_LEN_UNKNOWN) {
            return Err(Error::invalid_input(
                "raw length u64::MAX is reserved for \"unknown\"",
            ));
        }
        let (codec, level, compressor) = match opts.codec {
            Codec::None => (CODEC_NONE, 0, None),
            Codec::Zstd { level } => (CODEC_ZSTD, level, Some(Compressor::new(level)?)),
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
            raw_len: raw_len.unwrap_or(RAW_LEN_UNKNOWN),
            salt,
            key_check,
        }
        .encode();
        Ok(EncoderCore {
            header_crc: Header::crc_of(&header),
            header,
            chunk_size: opts.chunk_size,
            compressor,
            cipher,
            expected_len: raw_len,
            chunks: 0,
            raw_len: 0,
            stored_len: 0,
            content_crc: 0,
        })
    }

    /// The raw bytes per chunk.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Appends the header to `out`.
    pub fn write_header(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header);
        self.stored_len += HEADER_LEN as u64;
    }

    /// An upper bound of the stored size of a chunk of `raw` bytes.
    pub fn max_frame_len(raw: usize) -> usize {
        FRAME_HEADER_LEN + zstd::zstd_safe::compress_bound(raw) + 4 + TAG_LEN
    }

    /// Appends the frame of the next chunk (`raw`: 1 to `chunk_size` bytes; only the last
    /// chunk may be shorter than `chunk_size`, which the caller guarantees) to `out`.
    pub fn encode_chunk(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<()> {
        debug_assert!(!raw.is_empty() && raw.len() <= self.chunk_size);
        let start = out.len();
        let index = self.chunks;
        out.reserve(Self::max_frame_len(raw.len()));
        out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        let body = start + FRAME_HEADER_LEN;
        let raw_crc = super::crc::crc32c(raw);

        let mut codec = CHUNK_STORED;
        if let Some(c) = self.compressor.as_mut() {
            let n = c.compress_append(raw, out)?;
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
        let frame = if let Some(cipher) = &self.cipher {
            out.extend_from_slice(&raw_crc.to_le_bytes());
            let stored_len = (out.len() - body + TAG_LEN) as u32;
            let mut frame = Frame {
                codec,
                stored_len,
                raw_len,
                raw_crc: 0,
                stored_crc: 0,
            };
            let aad = chunk_aad(&self.header, &frame, index);
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
        frame.encode_into(self.header_crc, index, &mut out[start..body]);

        self.chunks += 1;
        self.raw_len += raw.len() as u64;
        self.stored_len += (out.len() - start) as u64;
        self.content_crc = super::crc::crc32c_combine(self.content_crc, raw_crc, raw.len());
        Ok(())
    }

    /// Appends the trailer to `out` and returns the object's statistics. Fails if a raw
    /// length was announced in the header and the content differs from it.
    pub fn encode_trailer(&mut self, out: &mut Vec<u8>) -> Result<SealStats> {
        if let Some(expected) = self.expected_len {
            if expected != self.raw_len {
                return Err(Error::invalid_input(format!(
                    "envelope header announced {expected} raw bytes but {} were written",
                    self.raw_len
                )));
            }
        }
        let mut trailer = Trailer {
            chunks: self.chunks,
            raw_len: self.raw_len,
            content_crc: self.content_crc.to_le_bytes(),
        };
        let mut tag = None;
        if let Some(cipher) = &self.cipher {
            let aad = trailer_aad(&self.header, &trailer);
            let nonce = format::nonce(format::NONCE_TRAILER, self.chunks);
            tag = Some(cipher.seal(&nonce, &aad, &mut trailer.content_crc)?);
        }
        let start = out.len();
        out.reserve(TRAILER_LEN_ENCRYPTED);
        out.extend_from_slice(&trailer.encode(self.header_crc));
        if let Some(tag) = tag {
            out.extend_from_slice(&tag);
        }
        self.stored_len += (out.len() - start) as u64;
        Ok(SealStats {
            raw_len: self.raw_len,
            stored_len: self.stored_len,
            chunks: self.chunks,
            crc32c: self.content_crc,
        })
    }
}

/// Associated data of chunk `index`: the whole header, the frame's first 12 bytes (marker,
/// codec, lengths) and the index.
pub(crate) fn chunk_aad(header: &[u8; HEADER_LEN], frame: &Frame, index: u64) -> [u8; 76] {
    let mut aad = [0u8; HEADER_LEN + 12 + 8];
    aad[..HEADER_LEN].copy_from_slice(header);
    aad[HEADER_LEN..HEADER_LEN + 12].copy_from_slice(&frame.aad_prefix());
    aad[HEADER_LEN + 12..].copy_from_slice(&index.to_le_bytes());
    aad
}

/// Associated data of the trailer: the whole header and the trailer's first 20 bytes
/// (marker, chunk count, raw length).
pub(crate) fn trailer_aad(header: &[u8; HEADER_LEN], trailer: &Trailer) -> [u8; 76] {
    let mut aad = [0u8; HEADER_LEN + 20];
    aad[..HEADER_LEN].copy_from_slice(header);
    aad[HEADER_LEN..].copy_from_slice(&trailer.aad_prefix());
    aad
}

/// Seals a whole buffer (see [`seal`](super::seal)).
pub(crate) fn seal_all(opts: &EnvelopeOptions, data: &[u8]) -> Result<(Vec<u8>, SealStats)> {
    let mut core = EncoderCore::new(opts, Some(data.len() as u64))?;
    let cs = core.chunk_size();
    let chunks = data.len().div_ceil(cs);
    // An upper bound, so the buffer never moves; pages never written are never touched.
    let cap = HEADER_LEN
        + chunks.saturating_sub(1) * EncoderCore::max_frame_len(cs)
        + EncoderCore::max_frame_len(cs.min(data.len()))
        + TRAILER_LEN_ENCRYPTED;
    let mut out = Vec::with_capacity(cap);
    core.write_header(&mut out);
    for raw in data.chunks(cs) {
        core.encode_chunk(raw, &mut out)?;
    }
    let stats = core.encode_trailer(&mut out)?;
    Ok((out, stats))
}

/// Streaming encoder: everything written to it is sealed into `W`.
///
/// Memory stays at about two chunks (the pending raw chunk and one encoded frame) whatever
/// the object's size. Nothing is complete until [`Sealer::finish`] has written the trailer;
/// an object whose sealer was dropped unfinished fails to open ("truncated").
///
/// ```
/// use std::io::Write;
/// use carta_dr_core::envelope::{open, EnvelopeOptions, Sealer};
///
/// let mut s = Sealer::new(&EnvelopeOptions::zstd(3), Vec::new())?;
/// s.write_all(b"hello ")?;
/// s.write_all(b"world")?;
/// let (sealed, stats) = s.finish()?;
/// assert_eq!(stats.raw_len, 11);
/// assert_eq!(open("example", &sealed, None)?, b"hello world");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Sealer<W: Write> {
    core: EncoderCore,
    writer: W,
    pending: Vec<u8>,
    frame: Vec<u8>,
    header_written: bool,
    failed: bool,
}

impl<W: Write> Sealer<W> {
    /// A sealer whose header says "raw length unknown" (the trailer carries it).
    pub fn new(opts: &EnvelopeOptions, writer: W) -> Result<Self> {
        Self::build(opts, writer, None)
    }

    /// A sealer that announces `raw_len` in the header; [`Sealer::finish`] fails if a
    /// different number of bytes was written.
    pub fn with_raw_len(opts: &EnvelopeOptions, writer: W, raw_len: u64) -> Result<Self> {
        Self::build(opts, writer, Some(raw_len))
    }

    fn build(opts: &EnvelopeOptions, writer: W, raw_len: Option<u64>) -> Result<Self> {
        let core = EncoderCore::new(opts, raw_len)?;
        let cs = core.chunk_size();
        Ok(Sealer {
            pending: Vec::with_capacity(cs),
            frame: Vec::with_capacity(EncoderCore::max_frame_len(cs).max(HEADER_LEN)),
            core,
            writer,
            header_written: false,
            failed: false,
        })
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.writer
    }

    /// The underlying writer, mutably. Writing to it directly corrupts the object; this is
    /// for draining a buffer writer between writes.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.writer
    }

    fn emit(&mut self, raw: Option<&[u8]>) -> Result<()> {
        self.frame.clear();
        if !self.header_written {
            self.core.write_header(&mut self.frame);
            self.header_written = true;
        }
        let raw = match raw {
            Some(r) => r,
            None => &self.pending[..],
        };
        self.core.encode_chunk(raw, &mut self.frame)?;
        self.writer
            .write_all(&self.frame)
            .map_err(|e| Error::io("writing sealed object", e))
    }

    fn guard(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(
                "an earlier write to this sealer failed; the object is incomplete",
            ));
        }
        Ok(())
    }

    /// Writes the last chunk and the trailer, flushes, and returns the writer and the
    /// object's statistics.
    pub fn finish(mut self) -> Result<(W, SealStats)> {
        self.guard()
            .map_err(|e| Error::io("finishing sealed object", e))?;
        if !self.pending.is_empty() {
            self.emit(None)?;
            self.pending.clear();
        }
        self.frame.clear();
        if !self.header_written {
            self.core.write_header(&mut self.frame);
        }
        let stats = self.core.encode_trailer(&mut self.frame)?;
        self.writer
            .write_all(&self.frame)
            .and_then(|()| self.writer.flush())
            .map_err(|e| Error::io("writing sealed object", e))?;
        Ok((self.writer, stats))
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.guard()?;
        if buf.is_empty() {
            return Ok(0);
        }
        let cs = self.core.chunk_size();
        let res = if self.pending.is_empty() && buf.len() >= cs {
            // A whole chunk straight from the caller's buffer: no copy.
            self.emit(Some(&buf[..cs])).map(|()| cs)
        } else {
            let n = (cs - self.pending.len()).min(buf.len());
            self.pending.extend_from_slice(&buf[..n]);
            if self.pending.len() == cs {
                let r = self.emit(None);
                self.pending.clear();
                r.map(|()| n)
            } else {
                Ok(n)
            }
        };
        res.map_err(|e| {
            self.failed = true;
            match e {
                Error::Io { source, .. } => source,
                other => io::Error::other(other),
            }
        })
    }

    /// Flushes the underlying writer. A partial chunk stays pending: every chunk but the
    /// last is full, which keeps chunk offsets computable.
    fn flush(&mut self) -> io::Result<()> {
        self.guard()?;
        self.writer.flush()
    }
}
