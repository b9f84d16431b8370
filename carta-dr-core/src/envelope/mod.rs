//! The stored-object envelope: the self-verifying format of every object carta-dr writes.
//!
//! An envelope is a header, a sequence of chunks and a trailer:
//!
//! * the **header** (56 bytes) names the format version, codec, cipher, chunk size and raw
//!   length ("unknown" for streams) and carries its own CRC-32C;
//! * each **chunk** holds at most `chunk_size` raw bytes (1 MiB by default), compressed with
//!   zstd when that makes it smaller, with its lengths and the CRC-32C of its raw bytes in a
//!   frame header that has its own CRC, bound to the chunk's index and to the object;
//! * the **trailer** closes the object with the chunk count, the total raw length and the
//!   CRC-32C of the whole content, and its own CRC.
//!
//! A truncated object is always detected (the trailer is missing or does not match), and
//! corruption is located to the chunk ([`Error::Corrupt`] with `chunk`). With a [`Key`],
//! chunks and trailer are encrypted and authenticated with AES-256-GCM under a per-object
//! key; the header and each chunk's position are bound as associated data, so reordering,
//! truncating, extending or swapping chunks (also between objects sealed with the same key)
//! fails with [`Error::Crypto`].
//!
//! `docs/envelope.md` specifies the byte layout, the key derivation and nonce scheme, and
//! what each check catches.
//!
//! # Entry points
//!
//! * Whole buffers: [`seal`] and [`open`]; [`inspect`] reads just the header.
//! * Whole buffers on several threads: [`seal_parallel`] and [`open_parallel`] (the same
//!   bytes and the same checks).
//! * Streams with bounded memory (objects of many GB): [`Sealer`] (an `io::Write`) and
//!   [`Opener`] (an `io::Read`), both built on the sans-IO [`Decoder`].
//! * Over a [`Store`](crate::Store): [`put_sealed`] / [`get_opened`] for whole objects,
//!   [`SealedWriter`] / [`get_opened_stream`] for streams.
//!
//! ```
//! use std::sync::Arc;
//! use carta_dr_core::envelope::{inspect, open, seal, Cipher, EnvelopeOptions, Key};
//!
//! let key = Arc::new(Key::from_bytes([7; 32]));
//! let opts = EnvelopeOptions::zstd(3).with_key(key.clone());
//! let sealed = seal(&opts, b"some WAL bytes")?;
//! assert_eq!(inspect(&sealed)?.cipher, Cipher::Aes256Gcm);
//! assert_eq!(open("wal/x", &sealed, Some(&key))?, b"some WAL bytes");
//! # Ok::<(), carta_dr_core::Error>(())
//! ```

mod codec;
mod crc;
mod decode;
mod encode;
pub(crate) mod format;
mod key;
mod parallel;
mod store_io;

use std::sync::Arc;

pub use crc::{crc32c, crc32c_append};
pub use decode::{Decoder, Opener};
pub use encode::Sealer;
pub use format::{FORMAT_VERSION, HEADER_LEN, MAX_CHUNK_SIZE};
pub use key::Key;
pub use parallel::{
    crc32c_parallel_read, default_threads, open_parallel, open_parallel_to, seal_parallel,
    seal_parallel_read, ReadAt,
};
pub use store_io::{get_opened, get_opened_stream, put_sealed, SealedWriter};

use crate::{Error, Result};

/// The default raw bytes per chunk: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;

/// The default zstd level: 3, zstd's own default, a good ratio at several hundred MB/s per
/// core. Level 1 is faster and slightly larger; use [`EnvelopeOptions::zstd`] to choose.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// How chunks are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Not compressed.
    None,
    /// zstd at `level` (negative levels are zstd's fast modes). A chunk that does not shrink
    /// is stored uncompressed.
    Zstd {
        /// The compression level.
        level: i32,
    },
}

impl Default for Codec {
    fn default() -> Self {
        Codec::Zstd {
            level: DEFAULT_ZSTD_LEVEL,
        }
    }
}

/// How chunks are encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    /// Not encrypted (CRC-32C checksums only).
    None,
    /// AES-256-GCM under a per-object key derived with HKDF-SHA-256.
    Aes256Gcm,
}

/// How to seal objects.
#[derive(Clone, Debug)]
pub struct EnvelopeOptions {
    /// Compression.
    pub codec: Codec,
    /// Raw bytes per chunk, 1 to [`MAX_CHUNK_SIZE`].
    pub chunk_size: usize,
    /// Encrypt with this key when set.
    pub key: Option<Arc<Key>>,
}

impl Default for EnvelopeOptions {
    /// zstd level [`DEFAULT_ZSTD_LEVEL`], 1 MiB chunks, no encryption.
    fn default() -> Self {
        EnvelopeOptions {
            codec: Codec::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            key: None,
        }
    }
}

impl EnvelopeOptions {
    /// zstd at `level`, 1 MiB chunks, no encryption.
    pub fn zstd(level: i32) -> Self {
        EnvelopeOptions {
            codec: Codec::Zstd { level },
            ..Default::default()
        }
    }

    /// No compression, 1 MiB chunks, no encryption.
    pub fn uncompressed() -> Self {
        EnvelopeOptions {
            codec: Codec::None,
            ..Default::default()
        }
    }

    /// The same options with another chunk size.
    pub fn with_chunk_size(mut self, chunk_size: usize) -> Self {
        self.chunk_size = chunk_size;
        self
    }

    /// The same options, encrypting with `key`.
    pub fn with_key(mut self, key: Arc<Key>) -> Self {
        self.key = Some(key);
        self
    }
}

/// What sealing (or fully opening) an object produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SealStats {
    /// Raw (content) bytes.
    pub raw_len: u64,
    /// Bytes of the sealed object.
    pub stored_len: u64,
    /// Number of chunks.
    pub chunks: u64,
    /// CRC-32C of the whole raw content (the same value as `crc32c::crc32c(content)`).
    pub crc32c: u32,
}

/// The fields of an envelope header, as [`inspect`] reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeaderInfo {
    /// Format version.
    pub version: u8,
    /// The codec chunks were compressed with (level as recorded by the writer).
    pub codec: Codec,
    /// The cipher.
    pub cipher: Cipher,
    /// Raw bytes per chunk.
    pub chunk_size: usize,
    /// The raw length, when the writer knew it up front (the trailer always has it).
    pub raw_len: Option<u64>,
    salt: [u8; format::SALT_LEN],
    key_check: [u8; format::KEY_CHECK_LEN],
}

impl HeaderInfo {
    fn from_header(h: &format::Header) -> Self {
        HeaderInfo {
            version: FORMAT_VERSION,
            codec: if h.codec == format::CODEC_ZSTD {
                Codec::Zstd { level: h.level }
            } else {
                Codec::None
            },
            cipher: if h.cipher == format::CIPHER_NONE {
                Cipher::None
            } else {
                Cipher::Aes256Gcm
            },
            chunk_size: h.chunk_size as usize,
            raw_len: (h.raw_len != format::RAW_LEN_UNKNOWN).then_some(h.raw_len),
            salt: h.salt,
            key_check: h.key_check,
        }
    }

    /// Whether `key` is the key this (encrypted) object was sealed with. Always false for
    /// unencrypted objects.
    pub fn key_matches(&self, key: &Key) -> bool {
        self.cipher != Cipher::None && key.derive(&self.salt).1 == self.key_check
    }
}

/// Seals a whole buffer.
pub fn seal(opts: &EnvelopeOptions, data: &[u8]) -> Result<Vec<u8>> {
    encode::seal_all(opts, data).map(|(v, _)| v)
}

/// Seals a whole buffer and returns the statistics too.
pub fn seal_with_stats(opts: &EnvelopeOptions, data: &[u8]) -> Result<(Vec<u8>, SealStats)> {
    encode::seal_all(opts, data)
}

/// Opens a whole sealed object, verifying everything: header, every chunk, the trailer, and
/// that nothing follows it. `path` names the object in errors.
///
/// `key` must be given for encrypted objects and must not be given for unencrypted ones
/// (a reader that expects encryption refuses plain objects, so a writer to the store cannot
/// substitute unauthenticated data).
pub fn open(path: &str, sealed: &[u8], key: Option<&Key>) -> Result<Vec<u8>> {
    decode::open_all(path, sealed, key)
}

/// Reads the header from the first [`HEADER_LEN`] (or more) bytes of a sealed object,
/// checking its magic, CRC and version. Does not need the key.
pub fn inspect(sealed_prefix: &[u8]) -> Result<HeaderInfo> {
    let h = format::Header::parse("(envelope header)", sealed_prefix)?;
    Ok(HeaderInfo::from_header(&h))
}

/// Recovers the [`Error`] an [`Opener`] (or other envelope `io` adapter) wrapped in an
/// `io::Error`; other I/O errors become [`Error::Io`] with `context`.
pub fn io_error_to_error(context: &str, e: std::io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(err) = inner.downcast::<Error>() {
                return *err;
            }
        }
        return Error::invalid_input(format!("{context}: unreadable wrapped error"));
    }
    Error::io(context, e)
}

#[cfg(test)]
mod tests;
