//! CRC-32C of the many short records of a WAL page.
//!
//! Most WAL records are a few dozen to a few hundred bytes. For those, the cost of a general
//! CRC-32C call (CPU feature check, alignment split, the dispatch between its 3-way and
//! serial loops) outweighs the checksum itself: [`crc_records`] checksums the records of a
//! page in one call, each short one with a plain `crc32` instruction loop over its body then
//! its header (no copy, no concatenation), and bodies of [`LONG_BODY`] bytes or more with the
//! envelope's folding CRC-32C (AVX-512 carry-less multiplication where available).

use super::{SIZE_OF_XLOG_RECORD, XL_CRC_OFFSET};
use crate::envelope::{crc32c, crc32c_append};

/// Bodies this long or longer are checksummed on their own with the folding CRC-32C.
const LONG_BODY: usize = 1024;

/// One record to checksum: its body, then the bytes of its header before the CRC field.
#[derive(Clone, Copy, Debug)]
struct Job<'a> {
    body: &'a [u8],
    head: &'a [u8],
}

/// The record of `page` at offset `off` and `len` bytes long (wholly within `page`).
fn job(page: &[u8], (off, len): (u32, u32)) -> Job<'_> {
    let (off, len) = (off as usize, len as usize);
    Job {
        body: page
            .get(off + SIZE_OF_XLOG_RECORD..off + len)
            .unwrap_or(&[]),
        head: page.get(off..off + XL_CRC_OFFSET).unwrap_or(&[]),
    }
}

impl Job<'_> {
    fn crc_alone(&self) -> u32 {
        crc32c_append(crc32c(self.body), self.head)
    }
}

/// The CRC-32C (as `xl_crc` holds it) of each record of `page` given by its offset and
/// length (`xl_tot_len`, at least 24, the record wholly within `page`), in `out` (cleared
/// first), in the order of `recs`.
pub(super) fn crc_records(page: &[u8], recs: &[(u32, u32)], out: &mut Vec<u32>) {
    out.clear();
    out.resize(recs.len(), 0);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU has SSE 4.2, the only feature `each` is compiled with.
            unsafe { x86::each(page, recs, out) };
            return;
        }
    }
    for (r, o) in recs.iter().zip(out.iter_mut()) {
        *o = job(page, *r).crc_alone();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{_mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};

    use super::{job, LONG_BODY};

    /// Less than 8 bytes, one `crc32` instruction per 4, 2 and 1 bytes.
    #[inline]
    #[target_feature(enable = "sse4.2")]
    fn tail(mut reg: u64, mut b: &[u8]) -> u64 {
        if let Some((w, rest)) = b.split_first_chunk::<4>() {
            reg = u64::from(_mm_crc32_u32(reg as u32, u32::from_le_bytes(*w)));
            b = rest;
        }
        if let Some((w, rest)) = b.split_first_chunk::<2>() {
            reg = u64::from(_mm_crc32_u16(reg as u32, u16::from_le_bytes(*w)));
            b = rest;
        }
        if let Some(&x) = b.first() {
            reg = u64::from(_mm_crc32_u8(reg as u32, x));
        }
        reg
    }

    /// A whole message part, serially.
    #[inline]
    #[target_feature(enable = "sse4.2")]
    fn serial(mut reg: u64, b: &[u8]) -> u64 {
        let mut words = b.chunks_exact(8);
        for w in words.by_ref() {
            reg = _mm_crc32_u64(reg, u64::from_le_bytes(w.try_into().unwrap_or([0; 8])));
        }
        tail(reg, words.remainder())
    }

    /// [`super::crc_records`], one record after the other.
    #[target_feature(enable = "sse4.2")]
    pub(super) fn each(page: &[u8], recs: &[(u32, u32)], out: &mut [u32]) {
        for (&r, o) in recs.iter().zip(out.iter_mut()) {
            let j = job(page, r);
            *o = if j.body.len() >= LONG_BODY {
                j.crc_alone()
            } else {
                !(serial(serial(0xFFFF_FFFF, j.body), j.head) as u32)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_crc_of_body_then_header_at_every_length() {
        let page: Vec<u8> = (0..40_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        // Lengths from 24 to 3000 bytes, around the long-body threshold, in varied orders.
        let mut seed = 7u64;
        for round in 0..300 {
            let n = round % 19;
            let mut recs = Vec::new();
            let mut off = (round * 8) % 64;
            for _ in 0..n {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let len = 24
                    + match seed >> 60 {
                        0 => (seed >> 20) as usize % 3000,
                        1 => LONG_BODY - 1 + (seed >> 40) as usize % 3,
                        _ => (seed >> 20) as usize % 300,
                    };
                recs.push((off as u32, len as u32));
                off += (len + 7) & !7;
            }
            let mut out = Vec::new();
            crc_records(&page, &recs, &mut out);
            assert_eq!(out.len(), recs.len());
            for (&(o, l), c) in recs.iter().zip(&out) {
                let (o, l) = (o as usize, l as usize);
                let mut whole = page[o + 24..o + l].to_vec();
                whole.extend_from_slice(&page[o..o + 20]);
                assert_eq!(*c, crc32c::crc32c(&whole), "round {round}");
            }
        }
    }
}
