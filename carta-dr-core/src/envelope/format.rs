//! The byte layout of an envelope: header, chunk frames and trailer.
//!
//! Pure functions only: encoding fixed-size structures into bytes and parsing them back, with
//! every field checked. All integers are little-endian. `docs/envelope.md` is the
//! specification; the constants here are the normative values.

use crate::{Error, Result};

/// The 8 magic bytes every envelope starts with. Like PNG's signature, the high-bit first
/// byte and the CR LF pair catch 7-bit and line-ending-mangling transfers.
pub const MAGIC: [u8; 8] = *b"\x89CDRENV\n";

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Size of the header in bytes.
pub const HEADER_LEN: usize = 56;

/// Size of a chunk frame header in bytes (the payload follows it).
pub const FRAME_HEADER_LEN: usize = 24;

/// Size of the trailer of an unencrypted object.
pub const TRAILER_LEN_PLAIN: usize = 28;

/// Size of the trailer of an encrypted object (the plain layout plus a 16-byte GCM tag).
pub const TRAILER_LEN_ENCRYPTED: usize = TRAILER_LEN_PLAIN + TAG_LEN;

/// Size of an AES-GCM authentication tag.
pub const TAG_LEN: usize = 16;

/// Size of the per-object random salt in the header.
pub const SALT_LEN: usize = 16;

/// Size of the key check value in the header.
pub const KEY_CHECK_LEN: usize = 8;

/// The largest chunk size the format allows (64 MiB). Bounds the decoder's memory whatever
/// a header claims.
pub const MAX_CHUNK_SIZE: usize = 64 << 20;

/// The raw-length field value meaning "not known when the header was written" (streams).
pub const RAW_LEN_UNKNOWN: u64 = u64::MAX;

/// Frame marker of a chunk (`C`).
pub const KIND_CHUNK: u8 = b'C';

/// Frame marker of the trailer (`E`, end).
pub const KIND_TRAILER: u8 = b'E';

/// Header codec id: chunks are stored as they are.
pub const CODEC_NONE: u8 = 0;

/// Header codec id (and chunk codec id): zstd.
pub const CODEC_ZSTD: u8 = 1;

/// Chunk codec id: this chunk is stored uncompressed (it did not shrink, or the codec is none).
pub const CHUNK_STORED: u8 = 0;

/// Header cipher id: not encrypted.
pub const CIPHER_NONE: u8 = 0;

/// Header cipher id: AES-256-GCM with a per-object key derived by HKDF-SHA-256.
pub const CIPHER_AES_256_GCM: u8 = 1;

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// The decoded header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub codec: u8,
    pub level: i32,
    pub cipher: u8,
    pub chunk_size: u32,
    pub raw_len: u64,
    pub salt: [u8; SALT_LEN],
    pub key_check: [u8; KEY_CHECK_LEN],
}

impl Header {
    /// Serializes the header, computing its CRC.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8] = FORMAT_VERSION;
        h[9] = self.codec;
        h[10] = self.cipher;
        h[11] = 0; // flags, reserved
        h[12..16].copy_from_slice(&self.level.to_le_bytes());
        h[16..20].copy_from_slice(&self.chunk_size.to_le_bytes());
        h[20..28].copy_from_slice(&self.raw_len.to_le_bytes());
        h[28..44].copy_from_slice(&self.salt);
        h[44..52].copy_from_slice(&self.key_check);
        let crc = crc32c::crc32c(&h[0..52]);
        h[52..56].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parses and checks a header. `h` must hold at least [`HEADER_LEN`] bytes.
    pub fn parse(path: &str, h: &[u8]) -> Result<Header> {
        let bad = |what: String| Error::corrupt(path, None, what);
        let h = h.get(..HEADER_LEN).ok_or_else(|| {
            bad(format!(
                "header truncated: {} of {HEADER_LEN} bytes",
                h.len()
            ))
        })?;
        if h[0..8] != MAGIC {
            return Err(bad(format!(
                "not a carta-dr envelope: bad magic {:02x?}",
                &h[0..8]
            )));
        }
        let stored = le_u32(h, 52);
        let computed = crc32c::crc32c(&h[0..52]);
        if stored != computed {
            return Err(bad(format!(
                "header checksum mismatch: stored {stored:08x}, computed {computed:08x}"
            )));
        }
        if h[8] != FORMAT_VERSION {
            return Err(Error::InvalidInput {
                what: format!(
                    "{path}: envelope format version {} is not supported (this build reads version {FORMAT_VERSION})",
                    h[8]
                ),
            });
        }
        let codec = h[9];
        if codec != CODEC_NONE && codec != CODEC_ZSTD {
            return Err(bad(format!("unknown codec id {codec} in header")));
        }
        let cipher = h[10];
        if cipher != CIPHER_NONE && cipher != CIPHER_AES_256_GCM {
            return Err(bad(format!("unknown cipher id {cipher} in header")));
        }
        if h[11] != 0 {
            return Err(bad(format!("unknown header flags {:#04x}", h[11])));
        }
        let chunk_size = le_u32(h, 16);
        if chunk_size == 0 || chunk_size as usize > MAX_CHUNK_SIZE {
            return Err(bad(format!(
                "chunk size {chunk_size} out of range 1..={MAX_CHUNK_SIZE}"
            )));
        }
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&h[28..44]);
        let mut key_check = [0u8; KEY_CHECK_LEN];
        key_check.copy_from_slice(&h[44..52]);
        if cipher == CIPHER_NONE && key_check != [0u8; KEY_CHECK_LEN] {
            return Err(bad("key check set on an unencrypted object".into()));
        }
        Ok(Header {
            codec,
            level: i32::from_le_bytes([h[12], h[13], h[14], h[15]]),
            cipher,
            chunk_size,
            raw_len: le_u64(h, 20),
            salt,
            key_check,
        })
    }

    /// The CRC field of an encoded header (binds frames and trailer to their object).
    pub fn crc_of(encoded: &[u8; HEADER_LEN]) -> u32 {
        le_u32(encoded, 52)
    }

    /// Length of this object's trailer.
    pub fn trailer_len(&self) -> usize {
        if self.cipher == CIPHER_NONE {
            TRAILER_LEN_PLAIN
        } else {
            TRAILER_LEN_ENCRYPTED
        }
    }
}

/// The decoded fields of a chunk frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub codec: u8,
    pub stored_len: u32,
    pub raw_len: u32,
    /// CRC-32C of the raw bytes (unencrypted objects; 0 in encrypted ones, where it travels
    /// inside the ciphertext).
    pub raw_crc: u32,
    /// CRC-32C of the stored payload as it is on disk (compressed and/or encrypted).
    pub stored_crc: u32,
}

/// CRC of a frame header: covers the object's header CRC, the chunk index and bytes 0..20.
pub(crate) fn frame_crc(header_crc: u32, index: u64, frame20: &[u8]) -> u32 {
    let mut pre = [0u8; 12];
    pre[0..4].copy_from_slice(&header_crc.to_le_bytes());
    pre[4..12].copy_from_slice(&index.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&pre), frame20)
}

impl Frame {
    /// Writes the frame header into `out[0..FRAME_HEADER_LEN]`.
    pub fn encode_into(&self, header_crc: u32, index: u64, out: &mut [u8]) {
        out[0..12].copy_from_slice(&self.aad_prefix());
        out[12..16].copy_from_slice(&self.raw_crc.to_le_bytes());
        out[16..20].copy_from_slice(&self.stored_crc.to_le_bytes());
        let crc = frame_crc(header_crc, index, &out[0..20]);
        out[20..24].copy_from_slice(&crc.to_le_bytes());
    }

    /// The first 12 bytes of the frame header (bound into the AEAD associated data; the CRC
    /// fields are not, the stored CRC being computed over the ciphertext).
    pub fn aad_prefix(&self) -> [u8; 12] {
        let mut p = [0u8; 12];
        p[0] = KIND_CHUNK;
        p[1] = self.codec;
        p[4..8].copy_from_slice(&self.stored_len.to_le_bytes());
        p[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        p
    }

    /// Parses and checks a chunk frame header (`f` holds at least [`FRAME_HEADER_LEN`] bytes
    /// and starts with [`KIND_CHUNK`]).
    pub fn parse(path: &str, hdr: &Header, header_crc: u32, index: u64, f: &[u8]) -> Result<Frame> {
        let bad = |what: String| Error::corrupt(path, Some(index), what);
        let f = f
            .get(..FRAME_HEADER_LEN)
            .ok_or_else(|| bad("frame header truncated".into()))?;
        let stored = le_u32(f, 20);
        let computed = frame_crc(header_crc, index, &f[0..20]);
        if stored != computed {
            return Err(bad(format!(
                "frame header checksum mismatch: stored {stored:08x}, computed {computed:08x} \
                 (damaged, or a chunk moved from another position or object)"
            )));
        }
        let codec = f[1];
        let allowed = codec == CHUNK_STORED || (codec == CODEC_ZSTD && hdr.codec == CODEC_ZSTD);
        if !allowed {
            return Err(bad(format!(
                "chunk codec id {codec} not allowed by the header"
            )));
        }
        if f[2] != 0 || f[3] != 0 {
            return Err(bad("reserved frame bytes are not zero".into()));
        }
        let stored_len = le_u32(f, 4);
        let raw_len = le_u32(f, 8);
        if raw_len == 0 || raw_len > hdr.chunk_size {
            return Err(bad(format!(
                "chunk raw length {raw_len} out of range 1..={}",
                hdr.chunk_size
            )));
        }
        let encrypted = hdr.cipher != CIPHER_NONE;
        let overhead = if encrypted { 4 + TAG_LEN as u32 } else { 0 };
        let (min, max) = if codec == CHUNK_STORED {
            (raw_len, raw_len)
        } else {
            // Compressed chunks are only kept when they shrink.
            (1, raw_len - 1)
        };
        if stored_len < min + overhead || stored_len > max + overhead {
            return Err(bad(format!(
                "chunk stored length {stored_len} impossible for raw length {raw_len}"
            )));
        }
        let raw_crc = le_u32(f, 12);
        let stored_crc = le_u32(f, 16);
        if encrypted && raw_crc != 0 {
            return Err(bad("raw checksum field set in an encrypted object".into()));
        }
        if !encrypted && codec == CHUNK_STORED && raw_crc != stored_crc {
            return Err(bad(
                "stored chunk whose raw and stored checksums differ".into()
            ));
        }
        Ok(Frame {
            codec,
            stored_len,
            raw_len,
            raw_crc,
            stored_crc,
        })
    }
}

/// The decoded trailer fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Trailer {
    pub chunks: u64,
    pub raw_len: u64,
    /// Plain: CRC-32C of the whole raw content. Encrypted: that CRC, encrypted.
    pub content_crc: [u8; 4],
}

/// CRC of a trailer: covers the object's header CRC and bytes 0..24.
pub(crate) fn trailer_crc(header_crc: u32, t24: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&header_crc.to_le_bytes()), t24)
}

impl Trailer {
    /// Bytes 0..20 (bound into the AEAD associated data of the trailer).
    pub fn aad_prefix(&self) -> [u8; 20] {
        let mut p = [0u8; 20];
        p[0] = KIND_TRAILER;
        p[4..12].copy_from_slice(&self.chunks.to_le_bytes());
        p[12..20].copy_from_slice(&self.raw_len.to_le_bytes());
        p
    }

    /// Serializes bytes 0..28 (the caller appends the GCM tag for encrypted objects).
    pub fn encode(&self, header_crc: u32) -> [u8; TRAILER_LEN_PLAIN] {
        let mut t = [0u8; TRAILER_LEN_PLAIN];
        t[0..20].copy_from_slice(&self.aad_prefix());
        t[20..24].copy_from_slice(&self.content_crc);
        let crc = trailer_crc(header_crc, &t[0..24]);
        t[24..28].copy_from_slice(&crc.to_le_bytes());
        t
    }

    /// Parses and checks the first [`TRAILER_LEN_PLAIN`] bytes of a trailer.
    pub fn parse(path: &str, header_crc: u32, index: u64, t: &[u8]) -> Result<Trailer> {
        let bad = |what: String| Error::corrupt(path, None, what);
        let t = t
            .get(..TRAILER_LEN_PLAIN)
            .ok_or_else(|| bad("trailer truncated".into()))?;
        let stored = le_u32(t, 24);
        let computed = trailer_crc(header_crc, &t[0..24]);
        if stored != computed {
            return Err(bad(format!(
                "trailer checksum mismatch after {index} chunks: stored {stored:08x}, computed {computed:08x}"
            )));
        }
        if t[1..4] != [0, 0, 0] {
            return Err(bad("reserved trailer bytes are not zero".into()));
        }
        let mut content_crc = [0u8; 4];
        content_crc.copy_from_slice(&t[20..24]);
        Ok(Trailer {
            chunks: le_u64(t, 4),
            raw_len: le_u64(t, 12),
            content_crc,
        })
    }
}

/// The 12-byte AES-GCM nonce of chunk `index` (domain 0) or of the trailer (domain 1).
pub(crate) fn nonce(domain: u8, index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[0] = domain;
    n[4..12].copy_from_slice(&index.to_be_bytes());
    n
}

/// Nonce domain of chunks.
pub(crate) const NONCE_CHUNK: u8 = 0;
/// Nonce domain of the trailer.
pub(crate) const NONCE_TRAILER: u8 = 1;
