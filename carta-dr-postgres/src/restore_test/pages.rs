//! The page checksum pass over a restored data directory, before its server starts.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use carta_dr_core::pagecheck::{relation_segment, RelFileCheck, BLCKSZ};
use carta_dr_core::traits::{Location, Severity, VerifyReport};
use carta_dr_core::Lsn;

use crate::local_cluster::PgInstall;

/// Failures reported per file before the rest are summed up.
const MAX_PER_FILE: usize = 20;

/// `Data page checksum version` from `pg_controldata` output.
pub(crate) fn checksum_version(controldata: &str) -> Option<u32> {
    controldata
        .lines()
        .find_map(|l| l.strip_prefix("Data page checksum version:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Checks every page of the relation files among `files` (paths relative to `data`) when the
/// cluster has data checksums; pages with `pd_lsn >= skip_from` are skipped (they changed
/// while the backup ran and replay rewrites them). Files under `pg_tblspc/<oid>/` are read
/// from `tablespaces[oid]`, where the restore put them, never through the link.
pub(crate) async fn check_pages(
    install: &PgInstall,
    data: &Path,
    tablespaces: &BTreeMap<u32, PathBuf>,
    files: &[String],
    skip_from: Lsn,
    report: &mut VerifyReport,
) {
    let mut cmd = install.command("pg_controldata");
    cmd.arg("-D").arg(data);
    let version = match install.output(cmd, "pg_controldata").await {
        Ok(out) if out.status.success() => checksum_version(&String::from_utf8_lossy(&out.stdout)),
        Ok(out) => {
            report.push(
                Severity::Warning,
                Location::File {
                    path: "global/pg_control".into(),
                    offset: None,
                    block: None,
                },
                format!(
                    "could not check page checksums: pg_controldata failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            );
            return;
        }
        Err(e) => {
            report.push(
                Severity::Warning,
                Location::Nowhere,
                format!("could not check page checksums: {e}"),
            );
            return;
        }
    };
    match version {
        Some(0) => {
            report.push(
                Severity::Info,
                Location::Nowhere,
                "the cluster has no data checksums: pages not checksum-verified",
            );
            return;
        }
        Some(_) => {}
        None => {
            report.push(
                Severity::Warning,
                Location::Nowhere,
                "could not check page checksums: pg_controldata shows no checksum version",
            );
            return;
        }
    }
    let rel: Vec<(String, u32)> = files
        .iter()
        .filter_map(|f| relation_segment(f).map(|s| (f.clone(), s)))
        .collect();
    let data = data.to_path_buf();
    let ts = tablespaces.clone();
    let result = tokio::task::spawn_blocking(move || scan(&data, &ts, &rel, skip_from)).await;
    match result {
        Ok(s) => {
            let in_ts = if tablespaces.is_empty() {
                String::new()
            } else {
                format!(" ({} in tablespaces)", s.tablespace_files)
            };
            report.checked.push(format!(
                "page checksums: {} relation files{in_ts}, {} pages verified, {} new, {} \
                 skipped (changed during the backup, LSN >= {skip_from}), {} failed",
                s.files, s.verified, s.new_pages, s.skipped, s.failed
            ));
            report.findings.extend(s.findings);
        }
        Err(e) => report.push(
            Severity::Warning,
            Location::Nowhere,
            format!("could not check page checksums: {e}"),
        ),
    }
}

#[derive(Default)]
struct Scan {
    files: u64,
    tablespace_files: u64,
    verified: u64,
    new_pages: u64,
    skipped: u64,
    failed: u64,
    findings: Vec<carta_dr_core::traits::Finding>,
}

/// Where the restore put the file recorded at `rel`: under `tablespaces[oid]` for
/// `pg_tblspc/<oid>/...` (`Err` when that tablespace has no location), else under `data`.
fn locate(
    data: &Path,
    tablespaces: &BTreeMap<u32, PathBuf>,
    rel: &str,
) -> std::result::Result<(PathBuf, bool), String> {
    let Some(rest) = rel.strip_prefix("pg_tblspc/") else {
        return Ok((data.join(rel), false));
    };
    let (oid, inner) = rest
        .split_once('/')
        .ok_or_else(|| format!("{rel} is not a file inside a tablespace"))?;
    let loc = oid
        .parse::<u32>()
        .ok()
        .and_then(|o| tablespaces.get(&o))
        .ok_or_else(|| format!("tablespace {oid} has no restored location"))?;
    Ok((loc.join(inner), true))
}

fn scan(
    data: &Path,
    tablespaces: &BTreeMap<u32, PathBuf>,
    rel: &[(String, u32)],
    skip_from: Lsn,
) -> Scan {
    let mut out = Scan::default();
    let mut buf = vec![0u8; 1 << 20];
    for (path, segno) in rel {
        let finding = |sev, offset, block, what: String| carta_dr_core::traits::Finding {
            severity: sev,
            location: Location::File {
                path: path.clone(),
                offset,
                block,
            },
            what,
        };
        let (full, in_tablespace) = match locate(data, tablespaces, path) {
            Ok(l) => l,
            Err(e) => {
                out.findings.push(finding(
                    Severity::Warning,
                    None,
                    None,
                    format!("could not check page checksums: {e}"),
                ));
                continue;
            }
        };
        let mut check = RelFileCheck::new(*segno, Some(skip_from));
        let read = std::fs::File::open(&full).and_then(|mut f| loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            check.feed(buf.get(..n).unwrap_or(&[]));
        });
        if let Err(e) = read {
            out.findings.push(finding(
                Severity::Warning,
                None,
                None,
                format!(
                    "could not check page checksums: reading {}: {e}",
                    full.display()
                ),
            ));
            continue;
        }
        out.files += 1;
        out.tablespace_files += u64::from(in_tablespace);
        let s = check.finish();
        out.verified += s.verified;
        out.new_pages += s.new_pages;
        out.skipped += s.skipped;
        out.failed += s.failures.iter().filter(|f| !f.new_not_zero).count() as u64;
        for f in s.failures.iter().take(MAX_PER_FILE) {
            // A page with a zero header half and data after it can be a torn copy of a page
            // being initialised during the backup, which replay rewrites: not proof of damage.
            let (sev, note) = if f.new_not_zero {
                (
                    Severity::Warning,
                    " (damage, or a page initialised while the backup copied it, which WAL \
                     replay rewrites)",
                )
            } else {
                (Severity::Error, "")
            };
            out.findings.push(finding(
                sev,
                Some(f.block_in_file * BLCKSZ as u64),
                Some(u64::from(f.blkno)),
                format!("block {} of the relation: {}{note}", f.blkno, f.what),
            ));
        }
        if s.failures.len() > MAX_PER_FILE {
            out.findings.push(finding(
                Severity::Error,
                None,
                None,
                format!(
                    "{} more pages fail their checksum in this file",
                    s.failures.len() - MAX_PER_FILE
                ),
            ));
        }
        if s.trailing != 0 {
            out.findings.push(finding(
                Severity::Error,
                Some(s.bytes - s.trailing as u64),
                None,
                format!(
                    "file size {} is not a multiple of {BLCKSZ}: {} trailing bytes",
                    s.bytes, s.trailing
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controldata_checksum_line() {
        let text = "pg_control version number:            1300\n\
                    Data page checksum version:           1\n\
                    Mock authentication nonce:            ab\n";
        assert_eq!(checksum_version(text), Some(1));
        assert_eq!(
            checksum_version("Data page checksum version:           0\n"),
            Some(0)
        );
        assert_eq!(checksum_version("nothing"), None);
    }

    #[test]
    fn tablespace_files_are_read_from_their_restored_location() {
        let data = Path::new("/scratch/data");
        let ts = BTreeMap::from([(16384, PathBuf::from("/scratch/tablespaces/16384"))]);
        assert_eq!(
            locate(data, &ts, "base/5/1259"),
            Ok((PathBuf::from("/scratch/data/base/5/1259"), false))
        );
        assert_eq!(
            locate(data, &ts, "pg_tblspc/16384/PG_15_202209061/5/16385.1"),
            Ok((
                PathBuf::from("/scratch/tablespaces/16384/PG_15_202209061/5/16385.1"),
                true
            ))
        );
        assert!(locate(data, &ts, "pg_tblspc/16390/PG_15_202209061/5/16385").is_err());
        assert!(locate(data, &ts, "pg_tblspc/x/PG_15_202209061/5/16385").is_err());
        assert!(locate(data, &BTreeMap::new(), "pg_tblspc/16384/PG_15_1/5/1").is_err());
    }
}
