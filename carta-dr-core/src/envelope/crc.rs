//! CRC-32C (Castagnoli) of large buffers: the envelope's chunk checksums.
//!
//! Same values as the `crc32c` crate (which it falls back to); on x86-64 CPUs with AVX-512
//! carry-less multiplication (`vpclmulqdq`), detected at run time, buffers of
//! [`FOLD_MIN`] bytes or more are folded 256 bytes at a time with `vpclmulqdq` and the last
//! 16 bytes are reduced with the SSE 4.2 `crc32` instruction. That is several times the
//! throughput of the 3-way interleaved `crc32` loop, whose speed is bounded by the
//! instruction's latency.
//!
//! How the folding works: with the CRC register's initial value XORed into the first four
//! bytes, a CRC-32C is linear in the message, and depends only on the message polynomial
//! modulo P (the Castagnoli polynomial). A 128-bit block B that has T bits of message after
//! it may therefore be replaced by B·x^T mod P added to the block T bits further on, without
//! changing the CRC; carry-less multiplication of B's two 64-bit halves by the constants
//! x^(T+31) and x^(T-33) mod P computes that product (the constants account for the
//! bit-reflected representation and for the one-bit shift of a reflected carry-less
//! product).

/// Buffers shorter than this go to the `crc32c` crate (folding has a fixed setup cost).
pub(crate) const FOLD_MIN: usize = 1024;

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// CRC-32C of the concatenation of the bytes whose CRC-32C is `crc` and `data`.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if data.len() >= FOLD_MIN && x86::available() {
            // SAFETY: `available` checked every CPU feature the function is compiled with.
            return unsafe { x86::crc32c_fold(crc, data) };
        }
    }
    crc32c::crc32c_append(crc, data)
}

/// The CRC-32C of `A ‖ B` from `crc_a` = CRC-32C(A), `crc_b` = CRC-32C(B) and the length of
/// B: `crc_a · x^(8·len_b) mod P ⊕ crc_b` (the initial and final inversions cancel out).
/// At most one carry-less multiplication per set bit of `len_b`, from a table of x^(2^k).
pub(crate) fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    let mut n = len_b as u64;
    let mut k = 3; // 8 bits per byte: x^(8·n) = product of x^(2^(k+3)) over the bits k of n
    let mut a = crc_a;
    while n != 0 {
        if n & 1 == 1 {
            a = mulmod_p(X2N[k], a);
        }
        n >>= 1;
        k += 1;
    }
    a ^ crc_b
}

/// a·b mod P, both bit-reflected 32-bit polynomials (bit i holds the coefficient of
/// x^(31-i)).
const fn mulmod_p(a: u32, mut b: u32) -> u32 {
    let mut p = 0;
    let mut m: u32 = 1 << 31;
    while m != 0 {
        if a & m != 0 {
            p ^= b;
        }
        m >>= 1;
        b = if b & 1 == 1 {
            (b >> 1) ^ 0x82F6_3B78
        } else {
            b >> 1
        };
    }
    p
}

/// `X2N[k]` = x^(2^k) mod P, bit-reflected, for lengths up to 2^64 bytes.
const X2N: [u32; 67] = {
    let mut t = [0u32; 67];
    t[0] = 0x4000_0000; // x^1
    let mut k = 1;
    while k < 67 {
        t[k] = mulmod_p(t[k - 1], t[k - 1]);
        k += 1;
    }
    t
};

/// x^n mod P, bit-reflected (bit i holds the coefficient of x^(31-i)), as a `u64`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const fn xpow_mod_p(n: u32) -> u64 {
    let mut v: u32 = 0x8000_0000; // x^0
    let mut i = 0;
    while i < n {
        v = if v & 1 == 1 {
            (v >> 1) ^ 0x82F6_3B78
        } else {
            v >> 1
        };
        i += 1;
    }
    v as u64
}

/// The two constants that fold a 128-bit block forward by `t` bits: (high-degree half,
/// low-degree half).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const fn fold_consts(t: u32) -> (u64, u64) {
    (xpow_mod_p(t + 31), xpow_mod_p(t - 33))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::fold_consts;

    const K128: (u64, u64) = fold_consts(128);
    const K256: (u64, u64) = fold_consts(256);
    const K384: (u64, u64) = fold_consts(384);
    const K512: (u64, u64) = fold_consts(512);
    const K1024: (u64, u64) = fold_consts(1024);
    const K1536: (u64, u64) = fold_consts(1536);
    const K2048: (u64, u64) = fold_consts(2048);

    /// Whether the CPU has every feature [`crc32c_fold`] is compiled with.
    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("vpclmulqdq")
            && is_x86_feature_detected!("pclmulqdq")
            && is_x86_feature_detected!("sse4.2")
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn k128((hi, lo): (u64, u64)) -> __m128i {
        // Low quadword: the constant for the block's first (high-degree) 8 bytes.
        _mm_set_epi64x(lo as i64, hi as i64)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn k512(k: (u64, u64)) -> __m512i {
        _mm512_broadcast_i32x4(k128(k))
    }

    /// `x` folded forward by the distance of `k`, XORed with `next`.
    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    fn fold512(x: __m512i, k: __m512i, next: __m512i) -> __m512i {
        let a = _mm512_clmulepi64_epi128::<0x00>(x, k);
        let b = _mm512_clmulepi64_epi128::<0x11>(x, k);
        _mm512_ternarylogic_epi64::<0x96>(a, b, next)
    }

    /// `x` folded forward by the distance of `k`, XORed with `next`.
    #[inline]
    #[target_feature(enable = "sse2,pclmulqdq")]
    fn fold128(x: __m128i, k: __m128i, next: __m128i) -> __m128i {
        let a = _mm_clmulepi64_si128::<0x00>(x, k);
        let b = _mm_clmulepi64_si128::<0x11>(x, k);
        _mm_xor_si128(_mm_xor_si128(a, b), next)
    }

    /// CRC-32C by folding; `data` must hold at least 256 bytes.
    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.2")]
    pub(super) unsafe fn crc32c_fold(crc: u32, data: &[u8]) -> u32 {
        debug_assert!(data.len() >= 256);
        let mut blocks = data.chunks_exact(256);
        let Some(first) = blocks.next() else {
            return crc32c::crc32c_append(crc, data);
        };
        let load = |b: &[u8], i: usize| -> __m512i {
            debug_assert!(b.len() >= (i + 1) * 64);
            // SAFETY: `b` is a 256-byte block and `i < 4`, so the 64 bytes read are in it;
            // the load is unaligned.
            unsafe { _mm512_loadu_si512(b.as_ptr().add(i * 64).cast()) }
        };
        // The register's initial value XORed into the first four bytes.
        let init = _mm512_zextsi128_si512(_mm_cvtsi32_si128(!crc as i32));
        let mut x0 = _mm512_xor_si512(load(first, 0), init);
        let mut x1 = load(first, 1);
        let mut x2 = load(first, 2);
        let mut x3 = load(first, 3);
        let k = k512(K2048);
        for b in blocks.by_ref() {
            x0 = fold512(x0, k, load(b, 0));
            x1 = fold512(x1, k, load(b, 1));
            x2 = fold512(x2, k, load(b, 2));
            x3 = fold512(x3, k, load(b, 3));
        }
        // Four 512-bit accumulators into one, then four 128-bit lanes into one.
        let x = fold512(x0, k512(K1536), x3);
        let x = fold512(x1, k512(K1024), x);
        let x = fold512(x2, k512(K512), x);
        let mut acc = _mm512_extracti32x4_epi32::<3>(x);
        acc = fold128(_mm512_extracti32x4_epi32::<0>(x), k128(K384), acc);
        acc = fold128(_mm512_extracti32x4_epi32::<1>(x), k128(K256), acc);
        acc = fold128(_mm512_extracti32x4_epi32::<2>(x), k128(K128), acc);
        // Whole 16-byte blocks left.
        let rest = blocks.remainder();
        let mut sixteens = rest.chunks_exact(16);
        let k = k128(K128);
        for b in sixteens.by_ref() {
            // SAFETY: `b` holds exactly 16 bytes; the load is unaligned.
            let next = unsafe { _mm_loadu_si128(b.as_ptr().cast()) };
            acc = fold128(acc, k, next);
        }
        // The last 16 folded bytes through the crc32 instruction from a zero register,
        // then the bytes that do not fill a block.
        let lo = _mm_cvtsi128_si64(acc) as u64;
        let hi = _mm_extract_epi64::<1>(acc) as u64;
        let reg = _mm_crc32_u64(_mm_crc32_u64(0, lo), hi) as u32;
        crc32c::crc32c_append(!reg, sixteens.remainder())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_crc32c_crate_at_every_length_and_offset() {
        let data: Vec<u8> = (0..40_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut lens: Vec<usize> = (0..1300).collect();
        lens.extend([
            2047,
            2048,
            2049,
            4096 + 15,
            4096 + 16,
            4096 + 17,
            33_333,
            39_990,
        ]);
        for &len in &lens {
            for off in [0, 1, 7] {
                let d = &data[off..off + len];
                assert_eq!(crc32c(d), crc32c::crc32c(d), "len {len} offset {off}");
                assert_eq!(
                    crc32c_append(0xDEAD_BEEF, d),
                    crc32c::crc32c_append(0xDEAD_BEEF, d),
                    "append, len {len} offset {off}"
                );
            }
        }
    }

    #[test]
    fn combine_matches_the_crc32c_crate() {
        for (a, b, len) in [
            (0u32, 0u32, 0usize),
            (0x1234_5678, 0x9ABC_DEF0, 1),
            (0xFFFF_FFFF, 0x0F0F_0F0F, 3),
            (0xE306_9283, 0x1111_2222, 1 << 20),
            (0xDEAD_BEEF, 0xCAFE_F00D, (1 << 20) + 17),
            (0x0BAD_F00D, 0x7777_0000, 64 << 20),
            (0x5555_AAAA, 0x0000_0001, usize::MAX / 3),
        ] {
            assert_eq!(
                crc32c_combine(a, b, len),
                crc32c::crc32c_combine(a, b, len),
                "len {len}"
            );
        }
        let data = b"The quick brown fox jumps over the lazy dog".repeat(99);
        for split in [0, 1, 100, 2000, data.len()] {
            let (x, y) = data.split_at(split);
            assert_eq!(crc32c_combine(crc32c(x), crc32c(y), y.len()), crc32c(&data));
        }
    }

    #[test]
    fn known_value() {
        // The CRC-32C check value, and a long buffer of it.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        let long = b"123456789".repeat(1000);
        assert_eq!(crc32c(&long), crc32c::crc32c(&long));
    }
}
