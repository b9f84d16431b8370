//! The drill log in the store: one sealed, create-only object per drill,
//! `drills/restore/<id>.json`. Appending never rewrites an existing object, so concurrent
//! drills and a crash mid-write cannot damage earlier entries (a torn write leaves at most an
//! object that fails its envelope check, which the listing reports and skips).

use bytes::Bytes;
use carta_dr_core::{Error, Result, StoreExt, StorePath};

use super::report::DrillReport;
use crate::replication::Repo;

/// Where restore drills are recorded.
pub const RESTORE_DRILLS_PREFIX: &str = "drills/restore";

/// A drill id: `YYYYMMDDTHHMMSSZ-xxxxxx` (sorts by time).
pub fn new_id(unix: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(unix ^ u64::from(std::process::id()));
    let t = format_utc(unix).replace(['-', ':'], "").replace(' ', "T");
    format!("{t}Z-{:06x}", h.finish() & 0xff_ffff)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time.
pub use carta_dr_core::types::format_utc;

fn path_of(id: &str) -> Result<StorePath> {
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::invalid("drill id", id, "not [A-Za-z0-9_-]+"));
    }
    StorePath::new(format!("{RESTORE_DRILLS_PREFIX}/{id}.json"))
}

/// Appends a drill to the log (sealed, create-only).
pub async fn record(repo: &Repo, report: &DrillReport) -> Result<StorePath> {
    let path = path_of(&report.id)?;
    let json = serde_json::to_vec_pretty(report)
        .map_err(|e| Error::invalid_input(format!("encoding drill {}: {e}", report.id)))?;
    match repo.put_create(&path, Bytes::from(json)).await? {
        Some(_) => Ok(path),
        None => Err(Error::AlreadyExists {
            path: path.to_string(),
        }),
    }
}

/// A drill log entry that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// The object.
    pub path: String,
    /// Why.
    pub error: String,
}

/// Every recorded restore drill, oldest first, and the entries that failed to open.
pub async fn list(repo: &Repo) -> Result<(Vec<DrillReport>, Vec<Unreadable>)> {
    let prefix = StorePath::new(RESTORE_DRILLS_PREFIX)?;
    let mut paths: Vec<StorePath> = repo
        .store()
        .list_paths(Some(&prefix))
        .await?
        .into_iter()
        .filter(|p| p.file_name().ends_with(".json"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for p in paths {
        let parsed = match repo.get(&p).await {
            Ok(bytes) => serde_json::from_slice::<DrillReport>(&bytes)
                .map_err(|e| Error::corrupt(&p, None, format!("not a drill record: {e}"))),
            Err(e) => Err(e),
        };
        match parsed {
            Ok(r) => out.push(r),
            Err(e) => bad.push(Unreadable {
                path: p.to_string(),
                error: e.to_string(),
            }),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((out, bad))
}

/// A text table of drills with the trend of RTO and RPO (change against the previous drill
/// of the same scenario).
pub fn render_table(drills: &[DrillReport]) -> String {
    use std::collections::HashMap;
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<24} {:<15} {:<10} {:>9} {:>9} {:>9} {:>9} {:>5}  verdict",
        "drill", "scenario", "target", "RTO s", "ΔRTO", "RPO s", "ΔRPO", "lost"
    );
    let mut last: HashMap<&str, (f64, f64)> = HashMap::new();
    for d in drills {
        let delta = |now: f64, before: Option<f64>| match before {
            Some(b) => format!("{:+.2}", now - b),
            None => "-".into(),
        };
        let prev = last.get(d.scenario.as_str()).copied();
        let target: String = d.target.chars().take(10).collect();
        let _ = writeln!(
            s,
            "{:<24} {:<15} {:<10} {:>9.2} {:>9} {:>9.2} {:>9} {:>5}  {}{}",
            d.id,
            d.scenario,
            target,
            d.rto_seconds,
            delta(d.rto_seconds, prev.map(|p| p.0)),
            d.rpo.seconds,
            delta(d.rpo.seconds, prev.map(|p| p.1)),
            d.rpo.transactions_lost,
            if d.verdict.pass { "PASS" } else { "FAIL" },
            if d.fallback.is_some() {
                " (fallback)"
            } else {
                ""
            }
        );
        last.insert(d.scenario.as_str(), (d.rto_seconds, d.rpo.seconds));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20");
    }

    #[test]
    fn ids_are_store_safe_and_sort_by_time() {
        let a = new_id(1_700_000_000);
        let b = new_id(1_700_000_001);
        assert!(a.starts_with("20231114T221320Z-"), "{a}");
        assert!(a < b);
        assert!(path_of(&a).is_ok());
        assert!(path_of("../x").is_err());
    }
}
