//! PostgreSQL data page checksums (sans-IO).
//!
//! [`pg_checksum_page`] is PostgreSQL's `pg_checksum_page()` (`src/include/storage/checksum_impl.h`):
//! 32 parallel FNV-1a-like lanes over the 8 KiB page read as host-order `u32` words, with the
//! `pd_checksum` field counted as zero, two extra rounds of zeros, the lanes XORed together,
//! XORed with the block number, and reduced to `1..=65535`.
//!
//! [`check_page`] applies the rule a restored data directory is checked with:
//!
//! * an all-zero page is a valid new page (PostgreSQL extends relations with zeroed pages);
//! * a page whose `pd_upper` is 0 but which is not all zeros is damaged (or, in an online copy,
//!   torn while being initialised: [`PageStatus::NewNotZero`] tells it apart);
//! * a page whose `pd_lsn` is at or after `skip_from` (the backup's start LSN) is skipped: it
//!   changed while the backup copied it, may be torn in the copy, and WAL replay rewrites it
//!   from a full-page image;
//! * any other page must carry the checksum [`pg_checksum_page`] computes for its block number
//!   and a sane header (known flag bits, `pd_lower <= pd_upper <= pd_special <= 8192`,
//!   `pd_special` 8-aligned), as `PageIsVerifiedExtended` demands.
//!
//! [`RelFileCheck`] feeds one relation segment file in pieces of any size and reports the
//! block of each failure; [`relation_segment`] tells which files of a data directory hold
//! checksummed pages and their segment number.

use crate::Lsn;

/// PostgreSQL's block size (the only one carta-dr supports).
pub const BLCKSZ: usize = 8192;

/// Blocks per relation segment file (`RELSEG_SIZE`: 1 GiB of 8 KiB blocks).
pub const RELSEG_BLOCKS: u32 = 131_072;

/// Lanes of the checksum.
const N_SUMS: usize = 32;

/// `FNV_PRIME` of `checksum_impl.h`.
const FNV_PRIME: u32 = 16_777_619;

/// The lanes' start values (`checksumBaseOffsets`).
const BASE: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

/// Valid bits of `pd_flags` (`PD_VALID_FLAG_BITS`).
const PD_VALID_FLAG_BITS: u16 = 0x0007;

#[inline(always)]
fn mix(s: u32, v: u32) -> u32 {
    let t = s ^ v;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

fn u16_at(page: &[u8; BLCKSZ], off: usize) -> u16 {
    let mut b = [0u8; 2];
    b.copy_from_slice(&page[off..off + 2]);
    u16::from_ne_bytes(b)
}

fn u32_at(page: &[u8; BLCKSZ], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&page[off..off + 4]);
    u32::from_ne_bytes(b)
}

/// PostgreSQL's `pg_checksum_page(page, blkno)`: the checksum the page must carry in
/// `pd_checksum` (bytes 8..10) as block `blkno` of its fork. Always in `1..=65535`.
pub fn pg_checksum_page(page: &[u8; BLCKSZ], blkno: u32) -> u16 {
    let mut sums = BASE;
    for (row_no, row) in page.chunks_exact(N_SUMS * 4).enumerate() {
        for (j, w) in row.chunks_exact(4).enumerate() {
            let mut b = [0u8; 4];
            b.copy_from_slice(w);
            let mut v = u32::from_ne_bytes(b);
            // pd_checksum (bytes 8 and 9) counts as zero: word 2 of row 0.
            if row_no == 0 && j == 2 {
                let mut bytes = v.to_ne_bytes();
                bytes[0] = 0;
                bytes[1] = 0;
                v = u32::from_ne_bytes(bytes);
            }
            sums[j] = mix(sums[j], v);
        }
    }
    for _ in 0..2 {
        for s in sums.iter_mut() {
            *s = mix(*s, 0);
        }
    }
    let r = sums.iter().fold(0u32, |a, s| a ^ s) ^ blkno;
    // (r % 65535) + 1 fits in u16.
    ((r % 65535) + 1) as u16
}

/// The page's `pd_lsn` (two host-order `u32`s: high, then low).
pub fn page_lsn(page: &[u8; BLCKSZ]) -> Lsn {
    Lsn((u64::from(u32_at(page, 0)) << 32) | u64::from(u32_at(page, 4)))
}

/// The page's stored `pd_checksum`.
pub fn page_checksum(page: &[u8; BLCKSZ]) -> u16 {
    u16_at(page, 8)
}

/// What [`check_page`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageStatus {
    /// Checksum and header are right.
    Ok,
    /// An all-zero page (a new page).
    New,
    /// `pd_lsn` is at or after the skip point: the page changed during the backup.
    Skipped(Lsn),
    /// The stored checksum differs from the computed one.
    BadChecksum {
        /// `pd_checksum` on the page.
        stored: u16,
        /// What [`pg_checksum_page`] computes.
        computed: u16,
    },
    /// The checksum matches but the header is impossible.
    BadHeader(String),
    /// `pd_upper` is 0 (a new page) but the page is not all zeros. Damage, or, in an online
    /// copy, a torn read of a page being initialised while the copy ran (its header half
    /// still zero, so its LSN cannot tell).
    NewNotZero,
}

impl PageStatus {
    /// Whether this is a failure.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            PageStatus::BadChecksum { .. } | PageStatus::BadHeader(_) | PageStatus::NewNotZero
        )
    }
}

/// Checks one page as block `blkno` of its fork; pages with `pd_lsn >= skip_from` are skipped
/// (see the [module docs](self)).
pub fn check_page(page: &[u8; BLCKSZ], blkno: u32, skip_from: Option<Lsn>) -> PageStatus {
    let upper = u16_at(page, 14);
    if upper == 0 {
        if page.iter().all(|b| *b == 0) {
            return PageStatus::New;
        }
        return PageStatus::NewNotZero;
    }
    let lsn = page_lsn(page);
    if let Some(s) = skip_from {
        if lsn >= s {
            return PageStatus::Skipped(lsn);
        }
    }
    let stored = page_checksum(page);
    let computed = pg_checksum_page(page, blkno);
    if stored != computed {
        return PageStatus::BadChecksum { stored, computed };
    }
    let flags = u16_at(page, 10);
    let lower = u16_at(page, 12);
    let special = u16_at(page, 16);
    if flags & !PD_VALID_FLAG_BITS != 0 {
        return PageStatus::BadHeader(format!("unknown pd_flags bits {flags:#06x}"));
    }
    if !(lower <= upper && upper <= special && usize::from(special) <= BLCKSZ) {
        return PageStatus::BadHeader(format!(
            "pd_lower {lower}, pd_upper {upper}, pd_special {special} out of order"
        ));
    }
    if !special.is_multiple_of(8) {
        return PageStatus::BadHeader(format!("pd_special {special} is not 8-aligned"));
    }
    PageStatus::Ok
}

/// One failing page of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageFailure {
    /// Block number within the file (0-based).
    pub block_in_file: u64,
    /// Block number within the fork (what the checksum covers).
    pub blkno: u32,
    /// What is wrong.
    pub what: String,
    /// The failure is [`PageStatus::NewNotZero`].
    pub new_not_zero: bool,
}

/// The outcome of [`RelFileCheck`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelFileSummary {
    /// Bytes fed.
    pub bytes: u64,
    /// Pages whose checksum and header were checked and right.
    pub verified: u64,
    /// All-zero pages.
    pub new_pages: u64,
    /// Pages skipped because of their LSN.
    pub skipped: u64,
    /// The failures.
    pub failures: Vec<PageFailure>,
    /// Bytes after the last whole page (a file size not a multiple of 8 KiB).
    pub trailing: usize,
}

/// Checks the pages of one relation segment file, fed in pieces of any size.
#[derive(Debug)]
pub struct RelFileCheck {
    segno: u32,
    skip_from: Option<Lsn>,
    buf: Box<[u8; BLCKSZ]>,
    filled: usize,
    block: u64,
    sum: RelFileSummary,
}

impl RelFileCheck {
    /// A check of segment `segno` (the `.N` suffix; 0 without one) of a fork.
    pub fn new(segno: u32, skip_from: Option<Lsn>) -> Self {
        RelFileCheck {
            segno,
            skip_from,
            buf: Box::new([0u8; BLCKSZ]),
            filled: 0,
            block: 0,
            sum: RelFileSummary::default(),
        }
    }

    /// Feeds the next bytes of the file.
    pub fn feed(&mut self, mut data: &[u8]) {
        self.sum.bytes += data.len() as u64;
        while !data.is_empty() {
            if self.filled == 0 && data.len() >= BLCKSZ {
                let (page, rest) = data.split_at(BLCKSZ);
                if let Ok(p) = <&[u8; BLCKSZ]>::try_from(page) {
                    self.page(&p.clone());
                }
                data = rest;
                continue;
            }
            let n = (BLCKSZ - self.filled).min(data.len());
            let (head, rest) = data.split_at(n);
            self.buf[self.filled..self.filled + n].copy_from_slice(head);
            self.filled += n;
            data = rest;
            if self.filled == BLCKSZ {
                let page = *self.buf;
                self.page(&page);
                self.filled = 0;
            }
        }
    }

    fn page(&mut self, page: &[u8; BLCKSZ]) {
        let blkno64 = u64::from(self.segno) * u64::from(RELSEG_BLOCKS) + self.block;
        // Block numbers are 32-bit in PostgreSQL; the checksum covers the low 32 bits.
        let blkno = (blkno64 & 0xffff_ffff) as u32;
        match check_page(page, blkno, self.skip_from) {
            PageStatus::Ok => self.sum.verified += 1,
            PageStatus::New => self.sum.new_pages += 1,
            PageStatus::Skipped(_) => self.sum.skipped += 1,
            PageStatus::BadChecksum { stored, computed } => self.sum.failures.push(PageFailure {
                block_in_file: self.block,
                blkno,
                what: format!(
                    "page checksum mismatch: stored {stored:#06x}, computed {computed:#06x}"
                ),
                new_not_zero: false,
            }),
            PageStatus::BadHeader(what) => self.sum.failures.push(PageFailure {
                block_in_file: self.block,
                blkno,
                what: format!("invalid page header: {what}"),
                new_not_zero: false,
            }),
            PageStatus::NewNotZero => self.sum.failures.push(PageFailure {
                block_in_file: self.block,
                blkno,
                what: "pd_upper is 0 (a new page) but the page is not all zeros".into(),
                new_not_zero: true,
            }),
        }
        self.block += 1;
    }

    /// The summary; a partial last page is reported in [`RelFileSummary::trailing`].
    pub fn finish(mut self) -> RelFileSummary {
        self.sum.trailing = self.filled;
        self.sum
    }
}

/// Convenience: checks a whole file's bytes.
pub fn check_file(bytes: &[u8], segno: u32, skip_from: Option<Lsn>) -> RelFileSummary {
    let mut c = RelFileCheck::new(segno, skip_from);
    c.feed(bytes);
    c.finish()
}

/// Whether `rel` (a path relative to the data directory, `/`-separated) is a relation file
/// with checksummed pages, and its segment number. Covers every fork (main, `_fsm`, `_vm`,
/// `_init`) and segment (`.N`) under `global/`, `base/<db>/` and
/// `pg_tblspc/<oid>/<version dir>/<db>/`; leaves out `pg_control`, `pg_filenode.map`,
/// `pg_internal.init*`, `PG_VERSION`, temporary relations (`t<N>_<node>`) and `pgsql_tmp*`.
pub fn relation_segment(rel: &str) -> Option<u32> {
    let parts: Vec<&str> = rel.split('/').collect();
    let name = match parts.as_slice() {
        ["global", name] => *name,
        ["base", db, name] if is_number(db) => *name,
        ["pg_tblspc", oid, _version, db, name] if is_number(oid) && is_number(db) => *name,
        _ => return None,
    };
    let (stem, segno) = match name.split_once('.') {
        Some((s, n)) if is_number(n) => (s, n.parse().ok()?),
        Some(_) => return None,
        None => (name, 0),
    };
    let node = match stem.split_once('_') {
        Some((n, "fsm" | "vm" | "init")) => n,
        Some(_) => return None,
        None => stem,
    };
    if !is_number(node) {
        return None;
    }
    Some(segno)
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real pages of a PostgreSQL 15.18 cluster initialised with --data-checksums: a heap of
    // 600 rows (5 blocks), its primary-key btree (4 blocks) and the heap's free space map.
    const HEAP: &[u8] = include_bytes!("../tests/fixtures/pagecheck/heap_16384");
    const BTREE: &[u8] = include_bytes!("../tests/fixtures/pagecheck/btree_16389");
    const FSM: &[u8] = include_bytes!("../tests/fixtures/pagecheck/heap_16384_fsm");

    fn page(bytes: &[u8], i: usize) -> [u8; BLCKSZ] {
        let mut p = [0u8; BLCKSZ];
        p.copy_from_slice(&bytes[i * BLCKSZ..(i + 1) * BLCKSZ]);
        p
    }

    #[test]
    fn test_vector_from_formats() {
        let mut p = [0u8; BLCKSZ];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (i & 0xff) as u8;
        }
        assert_eq!(pg_checksum_page(&p, 0), 0xE706);
        assert_eq!(pg_checksum_page(&p, 7), 0xE70D);
    }

    #[test]
    fn real_pages_verify() {
        for (name, bytes) in [("heap", HEAP), ("btree", BTREE), ("fsm", FSM)] {
            assert_eq!(bytes.len() % BLCKSZ, 0);
            let s = check_file(bytes, 0, None);
            assert!(s.failures.is_empty(), "{name}: {:?}", s.failures);
            assert_eq!(s.verified + s.new_pages, (bytes.len() / BLCKSZ) as u64);
            assert!(s.verified >= 3, "{name}: {s:?}");
            for i in 0..bytes.len() / BLCKSZ {
                let p = page(bytes, i);
                if p.iter().any(|b| *b != 0) {
                    assert_eq!(pg_checksum_page(&p, i as u32), page_checksum(&p));
                }
            }
        }
    }

    #[test]
    fn flipped_bits_are_caught_at_their_block() {
        // Single-bit flips of every real page (every 11th bit: all byte offsets and bit
        // positions are covered across pages). The checksum is 16 bits (a 32-bit hash
        // reduced modulo 65535), so a flip goes unseen with probability about 1/65535: PostgreSQL
        // itself cannot see those. Each one missed here must be such a collision, and they
        // must stay that rare; every other flip is reported at its block.
        let (mut flips, mut missed) = (0u64, 0u64);
        for bytes in [HEAP, BTREE, FSM] {
            for blk in 0..bytes.len() / BLCKSZ {
                let clean = page(bytes, blk);
                if clean.iter().all(|b| *b == 0) {
                    continue;
                }
                assert_eq!(check_page(&clean, blk as u32, None), PageStatus::Ok);
                for bit in (blk % 11..BLCKSZ * 8).step_by(11) {
                    let mut p = clean;
                    p[bit / 8] ^= 1 << (bit % 8);
                    flips += 1;
                    if check_page(&p, blk as u32, None).is_failure() {
                        continue;
                    }
                    missed += 1;
                    assert_eq!(
                        pg_checksum_page(&p, blk as u32),
                        page_checksum(&p),
                        "bit {bit} of block {blk} unseen without a checksum collision"
                    );
                }
            }
        }
        println!("{flips} single-bit flips, {missed} unseen (16-bit checksum collisions)");
        assert!(flips >= 9 * 65536 / 11);
        assert!(missed * 4000 < flips, "{missed} of {flips} unseen");
        // One flip in the middle of a file's data page: reported with that block.
        let mut whole = HEAP.to_vec();
        whole[2 * BLCKSZ + 4000] ^= 0x08;
        let s = check_file(&whole, 0, None);
        assert_eq!(s.failures.len(), 1);
        assert_eq!(s.failures[0].block_in_file, 2);
        assert!(s.failures[0].what.contains("checksum mismatch"));
    }

    #[test]
    fn wrong_block_number_is_caught() {
        let p = page(HEAP, 1);
        assert!(check_page(&p, 2, None).is_failure());
        // A segment number moves every block: block 1 of segment 1 is another block.
        assert_eq!(
            check_file(HEAP, 1, None).failures.len(),
            HEAP.len() / BLCKSZ
        );
    }

    #[test]
    fn new_pages_and_skips() {
        let zero = [0u8; BLCKSZ];
        assert_eq!(check_page(&zero, 3, None), PageStatus::New);
        let mut almost = zero;
        almost[100] = 1;
        assert_eq!(check_page(&almost, 3, None), PageStatus::NewNotZero);
        assert!(check_page(&almost, 3, None).is_failure());
        let s = check_file(&almost, 0, None);
        assert!(s.failures[0].new_not_zero);
        let p = page(HEAP, 0);
        let lsn = page_lsn(&p);
        assert_eq!(check_page(&p, 0, Some(lsn)), PageStatus::Skipped(lsn));
        assert_eq!(check_page(&p, 0, Some(Lsn(lsn.0 + 1))), PageStatus::Ok);
    }

    #[test]
    fn pieces_of_any_size() {
        let mut whole = HEAP.to_vec();
        whole[3 * BLCKSZ + 5000] ^= 0x10;
        whole.extend_from_slice(&[1, 2, 3]);
        let one = check_file(&whole, 0, None);
        for step in [1usize, 7, 4096, 8191, 8193, 20000] {
            let mut c = RelFileCheck::new(0, None);
            for piece in whole.chunks(step) {
                c.feed(piece);
            }
            assert_eq!(c.finish(), one, "step {step}");
        }
        assert_eq!(one.failures.len(), 1);
        assert_eq!(one.failures[0].block_in_file, 3);
        assert_eq!(one.trailing, 3);
    }

    #[test]
    fn relation_paths() {
        assert_eq!(relation_segment("base/5/16384"), Some(0));
        assert_eq!(relation_segment("base/5/16384.3"), Some(3));
        assert_eq!(relation_segment("base/5/16384_fsm"), Some(0));
        assert_eq!(relation_segment("base/5/16384_vm.1"), Some(1));
        assert_eq!(relation_segment("global/1262"), Some(0));
        assert_eq!(
            relation_segment("pg_tblspc/16400/PG_15_202209061/5/16401"),
            Some(0)
        );
        for no in [
            "global/pg_control",
            "global/pg_filenode.map",
            "base/5/pg_filenode.map",
            "base/5/PG_VERSION",
            "base/5/pg_internal.init",
            "base/5/t3_16384",
            "base/pgsql_tmp/pgsql_tmp1.0",
            "pg_wal/000000010000000000000001",
            "base/5/16384_xx",
        ] {
            assert_eq!(relation_segment(no), None, "{no}");
        }
    }
}
