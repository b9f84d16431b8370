//! A parser of PostgreSQL's `backup_manifest` (PostgreSQL 13+; layout in `shared/formats.md`
//! §2, source `src/backend/backup/backup_manifest.c` and
//! `src/bin/pg_verifybackup/parse_manifest.c`).
//!
//! It checks what `pg_verifybackup` checks when it parses: the version key comes first,
//! unknown keys, duplicate keys and duplicate paths are errors, `Path` xor `Encoded-Path`,
//! a checksum needs an algorithm, and the `Manifest-Checksum` (SHA-256 over the bytes up to and
//! including the second-to-last newline) matches. It never panics, whatever the input.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};

use crate::{Error, Lsn, Result, TimelineId};

/// The checksum algorithms a manifest may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    /// CRC-32C; the hex text is the byte-reversed CRC on little-endian hosts.
    Crc32c,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

/// One file of the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    /// The relative path (decoded from `Encoded-Path` when that was used).
    pub path: Vec<u8>,
    /// Size in bytes.
    pub size: u64,
    /// `Last-Modified`, as written.
    pub last_modified: Option<String>,
    /// Algorithm and raw checksum bytes.
    pub checksum: Option<(ChecksumAlgorithm, Vec<u8>)>,
}

impl ManifestFile {
    /// The path as text (lossy for non-UTF-8 paths).
    pub fn path_str(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// The CRC-32C value, when that is the algorithm (undoing the host-order byte layout of
    /// the hex text).
    pub fn crc32c(&self) -> Option<u32> {
        match &self.checksum {
            Some((ChecksumAlgorithm::Crc32c, b)) => {
                let arr: [u8; 4] = b.as_slice().try_into().ok()?;
                Some(u32::from_le_bytes(arr))
            }
            _ => None,
        }
    }
}

/// One WAL range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalRange {
    /// Timeline.
    pub timeline: TimelineId,
    /// Start LSN.
    pub start: Lsn,
    /// End LSN.
    pub end: Lsn,
}

/// A parsed manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupManifest {
    /// 1 (PostgreSQL 13–16) or 2 (17+).
    pub version: u32,
    /// `System-Identifier` (version 2).
    pub system_identifier: Option<u64>,
    /// The files.
    pub files: Vec<ManifestFile>,
    /// The WAL ranges, newest first.
    pub wal_ranges: Vec<WalRange>,
}

/// Parses and verifies a manifest.
pub fn parse_manifest(bytes: &[u8]) -> Result<BackupManifest> {
    let bad = |what: String| Error::invalid_input(format!("backup_manifest: {what}"));
    // Checksum coverage: up to and including the second-to-last newline.
    if bytes.last() != Some(&b'\n') {
        return Err(bad("last line not newline-terminated".into()));
    }
    let nls: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    if nls.len() < 2 {
        return Err(bad("expected at least 2 lines".into()));
    }
    let p = nls[nls.len() - 2];
    let covered = bytes.get(..=p).unwrap_or(&[]);
    let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let digest = Sha256::digest(covered);
    let stored =
        hex::decode(&raw.checksum).map_err(|_| bad("Manifest-Checksum is not hex".into()))?;
    if stored.as_slice() != digest.as_slice() {
        return Err(bad("manifest checksum mismatch".into()));
    }
    let mut seen = HashSet::new();
    for f in &raw.files {
        if !seen.insert(f.path.clone()) {
            return Err(bad(format!(
                "duplicate path {:?}",
                String::from_utf8_lossy(&f.path)
            )));
        }
    }
    Ok(BackupManifest {
        version: raw.version,
        system_identifier: raw.system_identifier,
        files: raw.files,
        wal_ranges: raw.wal_ranges,
    })
}

struct RawManifest {
    version: u32,
    system_identifier: Option<u64>,
    files: Vec<ManifestFile>,
    wal_ranges: Vec<WalRange>,
    checksum: String,
}

fn dup<E: de::Error>(k: &str) -> E {
    E::custom(format!("duplicate key {k:?}"))
}

impl<'de> de::Deserialize<'de> for RawManifest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawManifest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a backup manifest object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<RawManifest, A::Error> {
                let mut version = None;
                let mut sysid = None;
                let mut files: Option<Vec<ManifestFile>> = None;
                let mut wal: Option<Vec<WalRange>> = None;
                let mut checksum: Option<String> = None;
                let mut first = true;
                while let Some(k) = m.next_key::<String>()? {
                    if checksum.is_some() {
                        return Err(de::Error::custom("Manifest-Checksum must be the last key"));
                    }
                    if first && k != "PostgreSQL-Backup-Manifest-Version" {
                        return Err(de::Error::custom(
                            "PostgreSQL-Backup-Manifest-Version must be the first key",
                        ));
                    }
                    first = false;
                    match k.as_str() {
                        "PostgreSQL-Backup-Manifest-Version" => {
                            let v: u32 = m.next_value()?;
                            if !(1..=2).contains(&v) {
                                return Err(de::Error::custom(format!(
                                    "unsupported manifest version {v}"
                                )));
                            }
                            version = Some(v);
                        }
                        "System-Identifier" => {
                            if sysid.is_some() {
                                return Err(dup(&k));
                            }
                            sysid = Some(m.next_value::<u64>()?);
                        }
                        "Files" => {
                            if files.is_some() {
                                return Err(dup(&k));
                            }
                            files = Some(m.next_value::<Files>()?.0);
                        }
                        "WAL-Ranges" => {
                            if wal.is_some() {
                                return Err(dup(&k));
                            }
                            wal = Some(m.next_value::<Ranges>()?.0);
                        }
                        "Manifest-Checksum" => checksum = Some(m.next_value()?),
                        other => return Err(de::Error::custom(format!("unknown key {other:?}"))),
                    }
                }
                let version = version.ok_or_else(|| de::Error::custom("no version"))?;
                if version >= 2 && sysid.is_none() {
                    return Err(de::Error::custom("version 2 needs System-Identifier"));
                }
                Ok(RawManifest {
                    version,
                    system_identifier: sysid,
                    files: files.ok_or_else(|| de::Error::custom("no Files"))?,
                    wal_ranges: wal.ok_or_else(|| de::Error::custom("no WAL-Ranges"))?,
                    checksum: checksum.ok_or_else(|| de::Error::custom("no Manifest-Checksum"))?,
                })
            }
        }
        d.deserialize_map(V)
    }
}

struct Files(Vec<ManifestFile>);
impl<'de> de::Deserialize<'de> for Files {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Files;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of files")
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> std::result::Result<Files, A::Error> {
                let mut v = Vec::new();
                while let Some(f) = s.next_element::<FileObj>()? {
                    v.push(f.0);
                }
                Ok(Files(v))
            }
        }
        d.deserialize_seq(V)
    }
}

struct FileObj(ManifestFile);
impl<'de> de::Deserialize<'de> for FileObj {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FileObj;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a file object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<FileObj, A::Error> {
                let mut path: Option<Vec<u8>> = None;
                let mut size = None;
                let mut lm = None;
                let mut algo: Option<String> = None;
                let mut sum: Option<String> = None;
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "Path" | "Encoded-Path" => {
                            if path.is_some() {
                                return Err(de::Error::custom(
                                    "both Path and Encoded-Path, or a duplicate",
                                ));
                            }
                            let s: String = m.next_value()?;
                            path = Some(if k == "Path" {
                                s.into_bytes()
                            } else {
                                hex::decode(&s)
                                    .map_err(|_| de::Error::custom("Encoded-Path is not hex"))?
                            });
                        }
                        "Size" => {
                            if size.is_some() {
                                return Err(dup(&k));
                            }
                            size = Some(m.next_value::<u64>()?)
                        }
                        "Last-Modified" => {
                            if lm.is_some() {
                                return Err(dup(&k));
                            }
                            lm = Some(m.next_value::<String>()?)
                        }
                        "Checksum-Algorithm" => {
                            if algo.is_some() {
                                return Err(dup(&k));
                            }
                            algo = Some(m.next_value()?)
                        }
                        "Checksum" => {
                            if sum.is_some() {
                                return Err(dup(&k));
                            }
                            sum = Some(m.next_value()?)
                        }
                        other => {
                            let _: IgnoredAny = m.next_value()?;
                            return Err(de::Error::custom(format!("unknown file key {other:?}")));
                        }
                    }
                }
                let path = path.ok_or_else(|| de::Error::custom("file without Path"))?;
                if path.is_empty() {
                    return Err(de::Error::custom("empty Path"));
                }
                let size = size.ok_or_else(|| de::Error::custom("file without Size"))?;
                let checksum = match (algo, sum) {
                    (None, None) => None,
                    (None, Some(_)) => return Err(de::Error::custom("checksum without algorithm")),
                    (Some(a), s) => {
                        let alg = match a.to_ascii_uppercase().as_str() {
                            "CRC32C" => Some(ChecksumAlgorithm::Crc32c),
                            "SHA224" => Some(ChecksumAlgorithm::Sha224),
                            "SHA256" => Some(ChecksumAlgorithm::Sha256),
                            "SHA384" => Some(ChecksumAlgorithm::Sha384),
                            "SHA512" => Some(ChecksumAlgorithm::Sha512),
                            "NONE" => None,
                            _ => {
                                return Err(de::Error::custom(format!(
                                    "unknown checksum algorithm {a:?}"
                                )))
                            }
                        };
                        match (alg, s) {
                            (None, _) => None,
                            (Some(alg), Some(s)) => {
                                let raw = hex::decode(&s)
                                    .map_err(|_| de::Error::custom("checksum is not hex"))?;
                                let want = match alg {
                                    ChecksumAlgorithm::Crc32c => 4,
                                    ChecksumAlgorithm::Sha224 => 28,
                                    ChecksumAlgorithm::Sha256 => 32,
                                    ChecksumAlgorithm::Sha384 => 48,
                                    ChecksumAlgorithm::Sha512 => 64,
                                };
                                if raw.len() != want {
                                    return Err(de::Error::custom("checksum has the wrong length"));
                                }
                                Some((alg, raw))
                            }
                            (Some(_), None) => {
                                return Err(de::Error::custom("algorithm without checksum"))
                            }
                        }
                    }
                };
                Ok(FileObj(ManifestFile {
                    path,
                    size,
                    last_modified: lm,
                    checksum,
                }))
            }
        }
        d.deserialize_map(V)
    }
}

struct Ranges(Vec<WalRange>);
impl<'de> de::Deserialize<'de> for Ranges {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct R {
            #[serde(rename = "Timeline")]
            timeline: u32,
            #[serde(rename = "Start-LSN")]
            start: String,
            #[serde(rename = "End-LSN")]
            end: String,
        }
        let v: Vec<R> = de::Deserialize::deserialize(d)?;
        let mut out = Vec::with_capacity(v.len());
        for r in v {
            let timeline =
                TimelineId::new(r.timeline).ok_or_else(|| de::Error::custom("timeline 0"))?;
            let start: Lsn = r.start.parse().map_err(de::Error::custom)?;
            let end: Lsn = r.end.parse().map_err(de::Error::custom)?;
            if end < start {
                return Err(de::Error::custom("WAL range ends before it starts"));
            }
            out.push(WalRange {
                timeline,
                start,
                end,
            });
        }
        Ok(Ranges(out))
    }
}

/// Builds a manifest the way PostgreSQL writes it (for tests and fixtures).
pub fn build_manifest(files: &[(&str, &[u8])], ranges: &[WalRange]) -> Vec<u8> {
    let mut s = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n");
    for (i, (p, data)) in files.iter().enumerate() {
        let crc = crc32c::crc32c(data).to_le_bytes();
        s.push_str(&format!(
            "{{ \"Path\": {}, \"Size\": {}, \"Last-Modified\": \"2026-11-23 12:17:18 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}{}\n",
            serde_json::Value::String((*p).to_string()),
            data.len(),
            hex::encode(crc),
            if i + 1 < files.len() { "," } else { "" }
        ));
    }
    s.push_str("],\n\"WAL-Ranges\": [\n");
    for (i, r) in ranges.iter().enumerate() {
        s.push_str(&format!(
            "{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}{}\n",
            r.timeline.get(),
            r.start,
            r.end,
            if i + 1 < ranges.len() { "," } else { "" }
        ));
    }
    s.push_str("],\n");
    let sum = hex::encode(Sha256::digest(s.as_bytes()));
    s.push_str(&format!("\"Manifest-Checksum\": \"{sum}\"}}\n"));
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        build_manifest(
            &[("PG_VERSION", b"15\n"), ("base/1/1259", b"abc")],
            &[WalRange {
                timeline: TimelineId::ONE,
                start: Lsn(0x2000028),
                end: Lsn(0x2000138),
            }],
        )
    }

    #[test]
    fn parses_what_postgres_writes() {
        let m = parse_manifest(&sample()).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files[0].crc32c(), Some(0x2247748A));
        assert!(String::from_utf8(sample())
            .unwrap()
            .contains("\"8a744722\""));
        assert_eq!(m.wal_ranges[0].end, Lsn(0x2000138));
    }

    #[test]
    fn rejects_tampering_and_never_panics() {
        let s = sample();
        let mut t = s.clone();
        let i = t.iter().position(|b| *b == b'1').unwrap();
        t[i] = b'2';
        assert!(parse_manifest(&t).is_err());
        for cut in 0..s.len() {
            let _ = parse_manifest(&s[..cut]);
        }
        for i in 0..s.len() {
            let mut m = s.clone();
            m[i] ^= 0x21;
            let _ = parse_manifest(&m);
        }
        let dup = String::from_utf8(s)
            .unwrap()
            .replace("base/1/1259", "PG_VERSION");
        assert!(parse_manifest(dup.as_bytes()).is_err());
    }
}
