//! zstd contexts reused across chunks, writing straight into the caller's buffers.

use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, ResetDirective, WriteBuf};

use crate::{Error, Result};

/// A compression context, created once per object and reused for every chunk.
pub(crate) struct Compressor {
    cctx: CCtx<'static>,
}

impl Compressor {
    /// A context compressing at `level`. Frames carry their content size and no checksum of
    /// their own (the envelope's CRC-32C covers the raw bytes).
    pub fn new(level: i32) -> Result<Self> {
        let mut cctx = CCtx::try_create()
            .ok_or_else(|| Error::invalid_input("cannot allocate a zstd compression context"))?;
        let set = |cctx: &mut CCtx<'static>, p| {
            cctx.set_parameter(p).map_err(|code| {
                Error::invalid_input(format!(
                    "zstd rejected a parameter (level {level}): {}",
                    zstd_safe::get_error_name(code)
                ))
            })
        };
        set(&mut cctx, CParameter::CompressionLevel(level))?;
        set(&mut cctx, CParameter::ChecksumFlag(false))?;
        set(&mut cctx, CParameter::ContentSizeFlag(true))?;
        Ok(Compressor { cctx })
    }

    /// Compresses `src` as one zstd frame appended to `out`; returns the frame's length.
    pub fn compress_append(&mut self, src: &[u8], out: &mut Vec<u8>) -> Result<usize> {
        let start = out.len();
        let mut tail = SpareTail::new(out, zstd_safe::compress_bound(src.len()));
        match self.cctx.compress2(&mut tail, src) {
            Ok(n) => Ok(n),
            Err(code) => {
                out.truncate(start);
                let _ = self.cctx.reset(ResetDirective::SessionOnly);
                Err(Error::invalid_input(format!(
                    "zstd compression failed: {}",
                    zstd_safe::get_error_name(code)
                )))
            }
        }
    }
}

/// A decompression context, created once per object and reused for every chunk.
pub(crate) struct Decompressor {
    dctx: DCtx<'static>,
}

impl Decompressor {
    /// A new context.
    pub fn new() -> Result<Self> {
        let dctx = DCtx::try_create()
            .ok_or_else(|| Error::invalid_input("cannot allocate a zstd decompression context"))?;
        Ok(Decompressor { dctx })
    }

    /// Decompresses `src`, which must expand to exactly `raw_len` bytes, appending them to
    /// `out`. Never writes more than `raw_len` bytes; on error `out` is left as it was and
    /// the message says why.
    pub fn decompress_append(
        &mut self,
        src: &[u8],
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), String> {
        let start = out.len();
        // Exactly `raw_len` bytes of room: a frame that expands further fails instead of
        // writing on.
        let mut tail = SpareTail::new(out, raw_len);
        let res = self.dctx.decompress(&mut tail, src);
        match res {
            Ok(n) if n == raw_len => Ok(()),
            Ok(n) => {
                out.truncate(start);
                Err(format!(
                    "zstd data decompresses to {n} bytes, the frame says {raw_len}"
                ))
            }
            Err(code) => {
                out.truncate(start);
                let _ = self.dctx.reset(ResetDirective::SessionOnly);
                Err(format!(
                    "zstd data does not decompress: {}",
                    zstd_safe::get_error_name(code)
                ))
            }
        }
    }
}

/// The spare capacity of a `Vec` after its length, limited to `limit` bytes, as a zstd output
/// buffer: zstd writes straight after the existing content, never zero-filling first and
/// never past `limit`.
struct SpareTail<'a> {
    vec: &'a mut Vec<u8>,
    start: usize,
    limit: usize,
}

impl<'a> SpareTail<'a> {
    fn new(vec: &'a mut Vec<u8>, limit: usize) -> Self {
        vec.reserve(limit);
        let start = vec.len();
        SpareTail { vec, start, limit }
    }
}

// SAFETY: `as_mut_ptr` points at index `start` (== the vec's length when created) of the
// vec's allocation, and `capacity` is `limit`, which `reserve` guaranteed to be available
// after `start`. zstd-safe calls `filled_until(n)` only after `n <= capacity()` bytes were
// written contiguously from `as_mut_ptr`, so `start + n <= vec.capacity()` and the bytes
// `0..start + n` are initialized when the length is set. `as_slice` covers only the
// initialized bytes after `start`.
unsafe impl WriteBuf for SpareTail<'_> {
    fn as_slice(&self) -> &[u8] {
        self.vec.get(self.start..).unwrap_or(&[])
    }

    fn capacity(&self) -> usize {
        self.limit
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.vec.as_mut_ptr().wrapping_add(self.start)
    }

    unsafe fn filled_until(&mut self, n: usize) {
        debug_assert!(n <= self.limit);
        // SAFETY: see the impl's comment; the caller wrote `n` bytes after `start`.
        unsafe { self.vec.set_len(self.start + n) }
    }
}
