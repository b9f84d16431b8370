//! Checking one stored object: every envelope check (header, each chunk frame and its
//! CRC-32C, decompression, the trailer), and the CRC-32C of the byte ranges files occupy in it.

use crate::envelope::{Decoder, Key};
use crate::{Error, Result};

/// A byte range of an object's raw content that a file occupies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Slice {
    /// Offset in the raw content.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// What decoding an object established.
#[derive(Clone, Debug, Default)]
pub(crate) struct Decoded {
    /// Raw (decoded) length.
    pub raw_len: u64,
    /// Stored (sealed) length.
    pub stored_len: u64,
    /// CRC-32C of the whole raw content (computed from the decoded bytes).
    pub crc32c: u32,
    /// The CRC-32C of each requested slice, in the order asked; `None` for a slice that
    /// reaches past the end of the content.
    pub slices: Vec<Option<u32>>,
}

/// Decodes a whole sealed object, verifying everything, computing the CRC-32C of `slices`
/// (each sorted or not) on the way. The decoded content is never kept beyond one envelope
/// chunk. The error of a damaged object is [`Error::Corrupt`] (with the chunk index where
/// known) or [`Error::Crypto`].
pub(crate) fn decode(
    path: &str,
    sealed: &[u8],
    key: Option<&Key>,
    slices: &[Slice],
) -> Result<Decoded> {
    let mut d = Decoder::new(path, key);
    d.feed(sealed);
    // Slices sorted by offset, with their position in the answer.
    let mut order: Vec<usize> = (0..slices.len()).collect();
    order.sort_by_key(|&i| slices.get(i).map(|s| s.offset));
    let mut crcs: Vec<u32> = vec![0; slices.len()];
    let mut first_open = 0usize; // slices before this one end before the current chunk
    let mut pos = 0u64;
    while let Some(chunk) = d.next_chunk()? {
        let end = pos + chunk.len() as u64;
        if !slices.is_empty() {
            let mut k = first_open;
            while let Some(&i) = order.get(k) {
                let Some(s) = slices.get(i) else { break };
                if s.offset >= end {
                    break;
                }
                let s_end = s.offset.saturating_add(s.len);
                let a = s.offset.max(pos);
                let b = s_end.min(end);
                if a < b {
                    let piece = chunk
                        .get((a - pos) as usize..(b - pos) as usize)
                        .unwrap_or(&[]);
                    if let Some(c) = crcs.get_mut(i) {
                        *c = crc32c::crc32c_append(*c, piece);
                    }
                }
                if s_end <= end && k == first_open {
                    first_open += 1;
                }
                k += 1;
            }
        }
        pos = end;
    }
    let stats = d.finish()?;
    if stats.raw_len != pos {
        return Err(Error::corrupt(
            path,
            None,
            format!(
                "decoded {pos} bytes but the envelope accounts for {}",
                stats.raw_len
            ),
        ));
    }
    let answer = slices
        .iter()
        .zip(crcs)
        .map(|(s, c)| (s.offset.saturating_add(s.len) <= pos).then_some(c))
        .collect();
    Ok(Decoded {
        raw_len: stats.raw_len,
        stored_len: stats.stored_len,
        crc32c: stats.crc32c,
        slices: answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{seal, EnvelopeOptions};

    #[test]
    fn slices_across_chunks() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sealed = seal(&EnvelopeOptions::zstd(1).with_chunk_size(1000), &data).unwrap();
        let slices = [
            Slice { offset: 0, len: 10 },
            Slice {
                offset: 990,
                len: 3000,
            },
            Slice {
                offset: 500,
                len: 0,
            },
            Slice {
                offset: 9_999,
                len: 1,
            },
            Slice {
                offset: 9_999,
                len: 2,
            },
            Slice {
                offset: 400,
                len: 700,
            },
        ];
        let d = decode("x", &sealed, None, &slices).unwrap();
        assert_eq!(d.raw_len, 10_000);
        assert_eq!(d.crc32c, crc32c::crc32c(&data));
        for (s, got) in slices.iter().zip(&d.slices) {
            let end = (s.offset + s.len) as usize;
            if end <= data.len() {
                assert_eq!(*got, Some(crc32c::crc32c(&data[s.offset as usize..end])));
            } else {
                assert_eq!(*got, None);
            }
        }
        let mut bad = sealed.clone();
        let n = bad.len();
        bad[n / 2] ^= 1;
        assert!(decode("x", &bad, None, &slices).is_err());
    }
}
