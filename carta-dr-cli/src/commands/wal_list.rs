//! `carta-dr wal-list`: what the WAL archive holds, per timeline: contiguous ranges, gaps,
//! sizes; history, partial and backup history files; dropped segments.

use std::collections::BTreeMap;
use std::time::Duration;

use carta_dr_core::archive::DroppedWal;
use carta_dr_core::traits::ArchivedWal;
use carta_dr_core::wal::ClusterIdentity;
use carta_dr_core::{WalArchive, WalFileName, WalSegmentName, WalSegmentSize};
use serde::Serialize;

use crate::context::Context;
use crate::error::CliError;

/// List the WAL archive: timelines, ranges, gaps, sizes.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A run of consecutive segments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Range {
    /// The first segment.
    pub first: WalSegmentName,
    /// The last segment.
    pub last: WalSegmentName,
    /// How many segments.
    pub count: u64,
}

/// One timeline's segments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimelineSummary {
    /// The timeline.
    pub timeline: u32,
    /// Runs of archived segments.
    pub ranges: Vec<Range>,
    /// Runs of missing segments between the first and the last archived one.
    pub gaps: Vec<Range>,
    /// Archived segments.
    pub segments: u64,
    /// Their original size.
    pub raw_bytes: u64,
    /// Their stored size.
    pub stored_bytes: u64,
}

/// The whole listing.
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    /// The archive's cluster, once a segment was pushed.
    pub cluster: Option<ClusterIdentity>,
    /// Per timeline.
    pub timelines: Vec<TimelineSummary>,
    /// Timeline history files.
    pub history: Vec<WalFileName>,
    /// Partial segments.
    pub partial: Vec<WalFileName>,
    /// Backup history files.
    pub backup: Vec<WalFileName>,
    /// Segments the disk safety valve dropped.
    pub dropped: Vec<DroppedWal>,
}

/// Groups archived files into per-timeline ranges and gaps.
pub fn summarize(
    files: &[ArchivedWal],
    seg_size: WalSegmentSize,
) -> (
    Vec<TimelineSummary>,
    Vec<WalFileName>,
    Vec<WalFileName>,
    Vec<WalFileName>,
) {
    let mut by_tl: BTreeMap<u32, Vec<(u64, &ArchivedWal, WalSegmentName)>> = BTreeMap::new();
    let (mut history, mut partial, mut backup) = (Vec::new(), Vec::new(), Vec::new());
    for f in files {
        match f.name {
            WalFileName::Segment(s) => {
                by_tl
                    .entry(s.timeline.get())
                    .or_default()
                    .push((s.segno(seg_size), f, s))
            }
            WalFileName::Partial(_) => partial.push(f.name),
            WalFileName::History(_) => history.push(f.name),
            WalFileName::Backup { .. } => backup.push(f.name),
        }
    }
    let mut out = Vec::new();
    for (tl, mut segs) in by_tl {
        segs.sort_by_key(|(n, _, _)| *n);
        let mut ranges: Vec<Range> = Vec::new();
        let mut gaps = Vec::new();
        let mut prev: Option<(u64, WalSegmentName)> = None;
        for &(n, _, s) in &segs {
            match prev {
                Some((p, _)) if n == p + 1 => {
                    if let Some(r) = ranges.last_mut() {
                        r.last = s;
                        r.count += 1;
                    }
                }
                Some((p, ps)) => {
                    let first = ps.next(seg_size).unwrap_or(ps);
                    let last = WalSegmentName::from_segno(s.timeline, n - 1, seg_size).unwrap_or(s);
                    gaps.push(Range {
                        first,
                        last,
                        count: n - p - 1,
                    });
                    ranges.push(Range {
                        first: s,
                        last: s,
                        count: 1,
                    });
                }
                None => ranges.push(Range {
                    first: s,
                    last: s,
                    count: 1,
                }),
            }
            prev = Some((n, s));
        }
        out.push(TimelineSummary {
            timeline: tl,
            ranges,
            gaps,
            segments: segs.len() as u64,
            raw_bytes: segs.iter().map(|(_, f, _)| f.size.unwrap_or(0)).sum(),
            stored_bytes: segs.iter().map(|(_, f, _)| f.stored_size).sum(),
        });
    }
    (out, history, partial, backup)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Runs `wal-list`.
pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let repo = ctx.repo_url()?.to_string();
    let archive = ctx.wal_archive(Duration::from_secs(30))?;
    let ctxmsg = |e: carta_dr_core::Error| CliError::from(e).context(format!("listing {repo}"));
    let cluster = archive.cluster().await.map_err(ctxmsg)?;
    let files = archive.list(None).await.map_err(ctxmsg)?;
    let dropped = archive.dropped().await.map_err(ctxmsg)?;
    let seg_size = cluster.map(|c| c.wal_segment_size).unwrap_or_default();
    let (timelines, history, partial, backup) = summarize(&files, seg_size);
    let listing = Listing {
        cluster,
        timelines,
        history,
        partial,
        backup,
        dropped,
    };
    if args.json {
        let s = serde_json::to_string_pretty(&listing).map_err(|e| {
            CliError::new(
                crate::exit::ErrorClass::Internal,
                format!("encoding JSON: {e}"),
            )
        })?;
        println!("{s}");
        return Ok(());
    }
    match &listing.cluster {
        Some(c) => println!(
            "archive {repo}: system identifier {}, PostgreSQL {}, {} MiB segments",
            c.system_identifier,
            c.pg_major,
            c.wal_segment_size.bytes() >> 20
        ),
        None => println!("archive {repo}: no segments yet"),
    }
    for t in &listing.timelines {
        println!(
            "timeline {}: {} segments, {} ({} stored)",
            t.timeline,
            t.segments,
            mib(t.raw_bytes),
            mib(t.stored_bytes)
        );
        for r in &t.ranges {
            println!("  {} .. {}  {} segments", r.first, r.last, r.count);
        }
        for g in &t.gaps {
            println!("  GAP {} .. {}  {} missing", g.first, g.last, g.count);
        }
    }
    for (what, names) in [
        ("history", &listing.history),
        ("partial", &listing.partial),
        ("backup", &listing.backup),
    ] {
        if !names.is_empty() {
            let list: Vec<String> = names.iter().map(ToString::to_string).collect();
            println!("{what}: {}", list.join(" "));
        }
    }
    for d in &listing.dropped {
        println!(
            "DROPPED {} ({} bytes): not restorable; {}",
            d.name, d.size, d.reason
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(s: &str) -> ArchivedWal {
        ArchivedWal {
            name: s.parse().unwrap(),
            size: Some(16 << 20),
            stored_size: 1000,
        }
    }

    #[test]
    fn ranges_and_gaps() {
        let files = [
            seg("000000010000000000000001"),
            seg("000000010000000000000002"),
            seg("000000010000000000000005"),
            seg("0000000100000000000000FF"),
            seg("000000010000000100000000"),
            seg("000000020000000000000005"),
            seg("00000002.history"),
        ];
        let (tls, history, _, _) = summarize(&files, WalSegmentSize::DEFAULT);
        assert_eq!(history.len(), 1);
        assert_eq!(tls.len(), 2);
        let t1 = &tls[0];
        assert_eq!(t1.segments, 5);
        assert_eq!(t1.ranges.len(), 3);
        assert_eq!(t1.ranges[2].first.to_string(), "0000000100000000000000FF");
        assert_eq!(t1.ranges[2].last.to_string(), "000000010000000100000000");
        assert_eq!(t1.gaps.len(), 2);
        assert_eq!(t1.gaps[0].first.to_string(), "000000010000000000000003");
        assert_eq!(t1.gaps[0].last.to_string(), "000000010000000000000004");
        assert_eq!(t1.gaps[0].count, 2);
        assert_eq!(t1.gaps[1].count, 0xFF - 6);
        assert_eq!(tls[1].timeline, 2);
        assert_eq!(t1.stored_bytes, 5000);
    }
}
