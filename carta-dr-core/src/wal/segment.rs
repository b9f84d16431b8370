//! Validation of a WAL segment before it is archived, and the cluster identity it carries.

use serde::{Deserialize, Serialize};

use super::page::{pg_major_from_magic, PageHeader, SIZE_OF_XLOG_LONG_PHD, XLP_LONG_HEADER};
use crate::{Error, Result, TimelineId, WalSegmentName, WalSegmentSize};

/// What every segment's long header says about its cluster. Stored once per archive
/// (`wal/cluster.json`) by the first push; every later segment must agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    /// `pg_control`'s database system identifier (`xlp_sysid`), as `pg_controldata` prints
    /// it. Serialized as a decimal string: the value does not fit a JSON double.
    #[serde(with = "u64_as_string")]
    pub system_identifier: u64,
    /// The PostgreSQL major version, derived from the page magic.
    pub pg_major: u32,
    /// `XLOG_PAGE_MAGIC` of that version.
    pub xlog_page_magic: u16,
    /// The WAL segment size (`xlp_seg_size`).
    pub wal_segment_size: WalSegmentSize,
    /// The WAL page size (`xlp_xlog_blcksz`).
    pub wal_block_size: u32,
}

mod u64_as_string {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl ClusterIdentity {
    /// Checks that a segment's identity (`found`, from `file`) belongs to this cluster.
    /// Another system identifier is an [`Error::Conflict`] naming both; another version,
    /// segment size or page size is [`Error::InvalidInput`].
    pub fn check(&self, file: &str, found: &ClusterIdentity) -> Result<()> {
        if found.system_identifier != self.system_identifier {
            return Err(Error::Conflict {
                path: file.to_string(),
                what: format!(
                    "WAL from another cluster: the segment's system identifier is {}, the \
                     archive belongs to system identifier {}",
                    found.system_identifier, self.system_identifier
                ),
            });
        }
        if found.xlog_page_magic != self.xlog_page_magic {
            return Err(Error::invalid_input(format!(
                "{file}: page magic {:04X} (PostgreSQL {}) but the archive holds PostgreSQL {} \
                 WAL (magic {:04X})",
                found.xlog_page_magic, found.pg_major, self.pg_major, self.xlog_page_magic
            )));
        }
        if found.wal_segment_size != self.wal_segment_size {
            return Err(Error::invalid_input(format!(
                "{file}: segment size {} but the archive's is {}",
                found.wal_segment_size.bytes(),
                self.wal_segment_size.bytes()
            )));
        }
        if found.wal_block_size != self.wal_block_size {
            return Err(Error::invalid_input(format!(
                "{file}: WAL block size {} but the archive's is {}",
                found.wal_block_size, self.wal_block_size
            )));
        }
        Ok(())
    }
}

/// What the first page of a valid segment says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeaderInfo {
    /// The cluster identity from the long header.
    pub identity: ClusterIdentity,
    /// The first page's header.
    pub header: PageHeader,
}

/// Validates the first page of segment `name` (a complete segment, or a `.partial` when
/// `partial`) holding `data`, with no knowledge of the cluster:
///
/// * a complete segment is exactly `xlp_seg_size` bytes; a `.partial` at most that, and at
///   least the long header;
/// * the first page has a known `XLOG_PAGE_MAGIC`, `XLP_LONG_HEADER`, no unknown flags, a
///   valid segment size and a power-of-two page size from 1 to 64 KiB;
/// * `xlp_pageaddr` is the first LSN of the segment the name designates (this catches
///   recycled and renamed files);
/// * `xlp_tli` is a timeline no later than the name's. It equals the name's timeline except
///   in the first segment of a new timeline, which starts with a copy of its parent's pages.
///
/// Every error names the file and the offset (always 0: the first page).
pub fn inspect_segment(
    name: &WalSegmentName,
    partial: bool,
    data: &[u8],
) -> Result<SegmentHeaderInfo> {
    let file = if partial {
        format!("{name}.partial")
    } else {
        name.to_string()
    };
    let bad = |what: String| Error::invalid_input(format!("WAL file {file}, offset 0: {what}"));
    let header = PageHeader::parse(data).map_err(|e| bad(e.to_string()))?;
    let pg_major = pg_major_from_magic(header.magic).ok_or_else(|| {
        bad(format!(
            "unknown page magic {:04X}: not a WAL segment of PostgreSQL 13 to 18 (zero-filled, \
             damaged, or from another program)",
            header.magic
        ))
    })?;
    let long = match header.long {
        Some(l) if header.info & XLP_LONG_HEADER != 0 => l,
        _ => {
            return Err(bad(format!(
                "first page lacks XLP_LONG_HEADER (info {:04X})",
                header.info
            )))
        }
    };
    let seg_size = WalSegmentSize::new(u64::from(long.seg_size)).map_err(|_| {
        bad(format!(
            "impossible segment size {} in long header",
            long.seg_size
        ))
    })?;
    if !long.xlog_blcksz.is_power_of_two() || !(1024..=65536).contains(&long.xlog_blcksz) {
        return Err(bad(format!(
            "impossible WAL block size {} in long header",
            long.xlog_blcksz
        )));
    }
    let len = data.len() as u64;
    if partial {
        if len > seg_size.bytes() || data.len() < SIZE_OF_XLOG_LONG_PHD {
            return Err(bad(format!(
                "partial segment of {len} bytes; expected {SIZE_OF_XLOG_LONG_PHD} to {}",
                seg_size.bytes()
            )));
        }
    } else if len != seg_size.bytes() {
        return Err(bad(format!(
            "file is {len} bytes but its header says segments are {} bytes (truncated or \
             still being written)",
            seg_size.bytes()
        )));
    }
    name.validate(seg_size)?;
    let expected = name.start_lsn(seg_size);
    if header.pageaddr != expected {
        return Err(bad(format!(
            "page address {} where {expected} is expected: the file does not hold the segment \
             its name says (recycled or renamed)",
            header.pageaddr
        )));
    }
    let tli = TimelineId::new(header.tli).ok_or_else(|| bad("page timeline is 0".into()))?;
    if tli > name.timeline {
        return Err(bad(format!(
            "page timeline {tli} is later than the file name's timeline {}",
            name.timeline
        )));
    }
    Ok(SegmentHeaderInfo {
        identity: ClusterIdentity {
            system_identifier: long.system_identifier,
            pg_major,
            xlog_page_magic: header.magic,
            wal_segment_size: seg_size,
            wal_block_size: long.xlog_blcksz,
        },
        header,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wal::page::{
        encode_page_header, LongHeaderFields, XLOG_PAGE_MAGIC_PG15, XLOG_PAGE_MAGIC_PG16,
    };
    use crate::Lsn;

    pub(crate) const SYSID: u64 = 7_310_391_390_467_375_236;

    /// A segment of `size` bytes whose first page header is what PostgreSQL writes for `name`.
    pub(crate) fn fake_segment(name: &str, size: u64, sysid: u64) -> Vec<u8> {
        let n: WalSegmentName = name.parse().unwrap();
        let seg = WalSegmentSize::new(size).unwrap();
        let h = PageHeader {
            magic: XLOG_PAGE_MAGIC_PG15,
            info: XLP_LONG_HEADER,
            tli: n.timeline.get(),
            pageaddr: n.start_lsn(seg),
            rem_len: 0,
            long: Some(LongHeaderFields {
                system_identifier: sysid,
                seg_size: size as u32,
                xlog_blcksz: 8192,
            }),
        };
        let mut v = vec![0u8; size as usize];
        let hb = encode_page_header(&h);
        v[..hb.len()].copy_from_slice(&hb);
        // Some record-like bytes so that segments differ.
        for (i, b) in v[40..4096].iter_mut().enumerate() {
            *b = (i as u8) ^ (n.seg as u8);
        }
        v
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn accepts_a_good_segment() {
        let d = fake_segment("000000010000000000000007", MIB, SYSID);
        let n = "000000010000000000000007".parse().unwrap();
        let info = inspect_segment(&n, false, &d).unwrap();
        assert_eq!(info.identity.system_identifier, SYSID);
        assert_eq!(info.identity.pg_major, 15);
        assert_eq!(info.identity.wal_segment_size.bytes(), MIB);
        assert_eq!(info.header.pageaddr, Lsn(7 * MIB));
    }

    #[test]
    fn refuses_wrong_size_address_magic_and_timeline() {
        let name: WalSegmentName = "000000010000000000000007".parse().unwrap();
        let good = fake_segment("000000010000000000000007", MIB, SYSID);

        let e = inspect_segment(&name, false, &good[..good.len() - 1]).unwrap_err();
        assert!(e.to_string().contains("000000010000000000000007"), "{e}");
        assert!(e.to_string().contains("truncated"), "{e}");

        // Recycled: the header is segment 5's.
        let other = fake_segment("000000010000000000000005", MIB, SYSID);
        let e = inspect_segment(&name, false, &other).unwrap_err();
        assert!(e.to_string().contains("page address 0/500000"), "{e}");

        let zeros = vec![0u8; MIB as usize];
        let e = inspect_segment(&name, false, &zeros).unwrap_err();
        assert!(e.to_string().contains("unknown page magic 0000"), "{e}");

        // A later timeline in the header than in the name.
        let tl2 = fake_segment("000000020000000000000007", MIB, SYSID);
        let e = inspect_segment(&name, false, &tl2).unwrap_err();
        assert!(e.to_string().contains("later than"), "{e}");
        // An earlier one is the first segment of a new timeline: fine.
        let name2: WalSegmentName = "000000020000000000000007".parse().unwrap();
        assert!(inspect_segment(&name2, false, &good).is_ok());

        // No long header.
        let mut d = good.clone();
        d[2] = 0;
        let e = inspect_segment(&name, false, &d).unwrap_err();
        assert!(e.to_string().contains("XLP_LONG_HEADER"), "{e}");

        // Empty and tiny inputs never panic.
        for n in 0..64 {
            assert!(inspect_segment(&name, false, &good[..n]).is_err());
            assert!(inspect_segment(&name, true, &good[..n.min(39)]).is_err());
        }
    }

    #[test]
    fn partial_segments() {
        let name: WalSegmentName = "000000010000000000000007".parse().unwrap();
        let good = fake_segment("000000010000000000000007", MIB, SYSID);
        assert!(inspect_segment(&name, true, &good).is_ok());
        assert!(inspect_segment(&name, true, &good[..8192]).is_ok());
        let mut big = good.clone();
        big.push(0);
        assert!(inspect_segment(&name, true, &big).is_err());
    }

    #[test]
    fn identity_checks_name_both_ids() {
        let name: WalSegmentName = "000000010000000000000007".parse().unwrap();
        let a = inspect_segment(&name, false, &fake_segment(&name.to_string(), MIB, SYSID))
            .unwrap()
            .identity;
        let b = ClusterIdentity {
            system_identifier: 42,
            ..a
        };
        let e = a.check("000000010000000000000007", &b).unwrap_err();
        assert!(matches!(e, Error::Conflict { .. }));
        let s = e.to_string();
        assert!(s.contains("42") && s.contains(&SYSID.to_string()), "{s}");
        let c = ClusterIdentity {
            xlog_page_magic: XLOG_PAGE_MAGIC_PG16,
            pg_major: 16,
            ..a
        };
        assert!(a
            .check("x", &c)
            .unwrap_err()
            .to_string()
            .contains("PostgreSQL 16"));
        assert!(a.check("x", &a).is_ok());
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains(&format!("\"{SYSID}\"")), "{json}");
        assert_eq!(serde_json::from_str::<ClusterIdentity>(&json).unwrap(), a);
    }
}
