//! [`PgPromoter`]: the PostgreSQL implementation of [`Promoter`].
//!
//! Steps, each timed in the [`PromotionReport`]:
//!
//! 1. `precheck`: every standby must be in recovery; its receive and replay LSNs are read
//!    (the replication monitor's standby poll). The last known primary position is the live
//!    primary's `pg_current_wal_lsn()` when it answers, else the position supplied by the
//!    caller (the monitor's last poll, or the end of the archive's newest segment). The most
//!    advanced standby (by the larger of its receive and replay LSN: WAL it has flushed is
//!    replayed before promotion completes) is chosen. The estimated loss is the WAL between
//!    that position and the primary's; above `max_lag_bytes` the promotion is refused unless
//!    forced, and the report says exactly which bytes and LSN range would be lost.
//! 2. `fence`: the configured [`Fencer`]. A failed fence stops the promotion unless forced.
//! 3. `promote`: `SELECT pg_promote(wait => true, wait_seconds => N)`, then the new timeline
//!    is read with [`sql::TIMELINE_SQL`] (the WAL insertion timeline, which is the new one the
//!    moment recovery ends).
//! 4. `repoint`: the configured [`Repointer`].
//! 5. `verify`: a write through the repointed path (or directly, when the repointer offers no
//!    client path; the step then says so), and that path's timeline must be the new one.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use carta_dr_core::traits::{PromoteRequest, PromotionReport, StepOutcome, TimedStep};
use carta_dr_core::{Error, Lsn, Promoter, Result, TimelineId};

use super::fence::{FenceTarget, Fencer};
use super::repoint::{RepointTarget, Repointer};
use super::sql;
use crate::monitor::pg::PgTarget;
use crate::monitor::snapshot::Probe;

/// One PostgreSQL server of the topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgNode {
    /// Its name in reports.
    pub name: String,
    /// A superuser connection string carta-dr uses.
    pub conninfo: String,
    /// Its data directory, when it is on this machine.
    pub data_dir: Option<PathBuf>,
    /// The connection string clients use to reach it directly (default: `conninfo`).
    pub client_conninfo: Option<String>,
}

impl PgNode {
    /// A node reached through `conninfo`.
    pub fn new(name: impl Into<String>, conninfo: impl Into<String>) -> Self {
        PgNode {
            name: name.into(),
            conninfo: conninfo.into(),
            data_dir: None,
            client_conninfo: None,
        }
    }

    /// Sets the local data directory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Sets the client connection string.
    pub fn client_conninfo(mut self, conninfo: impl Into<String>) -> Self {
        self.client_conninfo = Some(conninfo.into());
        self
    }

    fn client(&self) -> &str {
        self.client_conninfo.as_deref().unwrap_or(&self.conninfo)
    }
}

/// The write the `verify` step runs through the repointed path (simple protocol, so it works
/// through transaction-pooling pgbouncers). It needs CREATE on the `public` schema the first
/// time; override with [`PgPromoter::verify_sql`].
pub const DEFAULT_VERIFY_SQL: &str = "CREATE TABLE IF NOT EXISTS carta_dr_promotion_check \
     (at timestamptz NOT NULL DEFAULT now(), note text); \
     INSERT INTO carta_dr_promotion_check (note) VALUES ('carta-dr promote write check')";

/// Promotes a PostgreSQL standby: pre-checks, fence, promote, repoint, verify.
#[derive(Debug, Clone)]
pub struct PgPromoter {
    primary: PgNode,
    standbys: Vec<PgNode>,
    last_known_primary_lsn: Option<Lsn>,
    fencer: Option<Arc<dyn Fencer>>,
    repointer: Option<Arc<dyn Repointer>>,
    connect_timeout: Duration,
    promote_timeout: Duration,
    verify_sql: Option<String>,
}

impl PgPromoter {
    /// A promoter for `primary` (which may be unreachable) and its `standbys`. No fence and
    /// no repointer until set: [`PgPromoter::fencer`] is required unless the caller accepts
    /// the risk of two primaries.
    pub fn new(primary: PgNode, standbys: Vec<PgNode>) -> Self {
        PgPromoter {
            primary,
            standbys,
            last_known_primary_lsn: None,
            fencer: None,
            repointer: None,
            connect_timeout: Duration::from_secs(3),
            promote_timeout: Duration::from_secs(60),
            verify_sql: Some(DEFAULT_VERIFY_SQL.to_string()),
        }
    }

    /// The primary's last known WAL position, used when the primary does not answer.
    pub fn last_known_primary_lsn(mut self, lsn: Option<Lsn>) -> Self {
        self.last_known_primary_lsn = lsn;
        self
    }

    /// How the old primary is fenced.
    pub fn fencer(mut self, fencer: Arc<dyn Fencer>) -> Self {
        self.fencer = Some(fencer);
        self
    }

    /// How clients are repointed.
    pub fn repointer(mut self, repointer: Arc<dyn Repointer>) -> Self {
        self.repointer = Some(repointer);
        self
    }

    /// How long a server may take to accept a connection or answer a poll (default 3 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// How long `pg_promote` may take (default 60 s).
    pub fn promote_timeout(mut self, t: Duration) -> Self {
        self.promote_timeout = t;
        self
    }

    /// The write the verify step runs; `None` skips the verify step.
    pub fn verify_sql(mut self, sql: Option<String>) -> Self {
        self.verify_sql = sql;
        self
    }
}

/// Whether the report describes a completed promotion (a new timeline is visible).
pub fn promoted(report: &PromotionReport) -> bool {
    report.new_timeline.is_some()
}

/// Whether no step failed.
pub fn clean(report: &PromotionReport) -> bool {
    report
        .steps
        .iter()
        .all(|s| !matches!(s.outcome, StepOutcome::Failed { .. }))
}

struct Candidate {
    node: PgNode,
    receive: Option<Lsn>,
    replay: Option<Lsn>,
}

impl Candidate {
    fn position(&self) -> Option<Lsn> {
        match (self.receive, self.replay) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

fn step(name: &str, start: Instant, outcome: StepOutcome, detail: String) -> TimedStep {
    TimedStep {
        name: name.to_string(),
        duration: start.elapsed(),
        outcome,
        detail,
    }
}

fn skipped(name: &str, why: &str) -> TimedStep {
    TimedStep {
        name: name.to_string(),
        duration: Duration::ZERO,
        outcome: StepOutcome::Skipped {
            why: why.to_string(),
        },
        detail: String::new(),
    }
}

fn failed(why: impl Into<String>) -> StepOutcome {
    StepOutcome::Failed { why: why.into() }
}

const LATER: [&str; 4] = ["fence", "promote", "repoint", "verify"];

fn skip_rest(report: &mut PromotionReport, from: usize, why: &str) {
    for name in LATER.iter().skip(from) {
        report.steps.push(skipped(name, why));
    }
}

impl PgPromoter {
    async fn precheck(
        &self,
        request: &PromoteRequest,
        report: &mut PromotionReport,
    ) -> Option<PgNode> {
        let start = Instant::now();
        let queries = Arc::new(AtomicU64::new(0));
        let mut notes = Vec::new();
        // The primary's position.
        let primary_lsn =
            match PgTarget::new(&self.primary.name, &self.primary.conninfo, queries.clone()) {
                Ok(t) => match t.poll_primary(self.connect_timeout).await {
                    Probe::Up { status, .. } if status.in_recovery => {
                        report.steps.push(step(
                            "precheck",
                            start,
                            failed(format!(
                                "{} is in recovery: it is not a primary",
                                self.primary.name
                            )),
                            String::new(),
                        ));
                        skip_rest(report, 0, "pre-checks failed");
                        return None;
                    }
                    Probe::Up { status, .. } => {
                        notes.push(format!(
                            "primary {} is up at {} (live pg_current_wal_lsn)",
                            self.primary.name,
                            status
                                .current_lsn
                                .map(|l| l.to_string())
                                .unwrap_or_else(|| "?".into())
                        ));
                        status.current_lsn
                    }
                    Probe::Down { error, .. } => {
                        match self.last_known_primary_lsn {
                            Some(l) => notes.push(format!(
                            "primary {} unreachable ({error}); last known position {l} (supplied)",
                            self.primary.name
                        )),
                            None => notes.push(format!(
                                "primary {} unreachable ({error}) and no last known position given",
                                self.primary.name
                            )),
                        }
                        self.last_known_primary_lsn
                    }
                },
                Err(e) => {
                    notes.push(format!("primary connection string: {e}"));
                    self.last_known_primary_lsn
                }
            };
        report.primary_lsn = primary_lsn;

        // The standbys.
        let mut candidates = Vec::new();
        for s in &self.standbys {
            let probe = match PgTarget::new(&s.name, &s.conninfo, queries.clone()) {
                Ok(t) => t.poll_standby(self.connect_timeout).await,
                Err(e) => {
                    notes.push(format!("standby {}: {e}", s.name));
                    continue;
                }
            };
            match probe {
                Probe::Up { status, .. } if !status.in_recovery => notes.push(format!(
                    "standby {} is not in recovery: not a candidate",
                    s.name
                )),
                Probe::Up { status, .. } => {
                    notes.push(format!(
                        "standby {}: received {}, replayed {}, receiver {}",
                        s.name,
                        status
                            .receive_lsn
                            .map(|l| l.to_string())
                            .unwrap_or("-".into()),
                        status
                            .replay_lsn
                            .map(|l| l.to_string())
                            .unwrap_or("-".into()),
                        status.receiver_status.as_deref().unwrap_or("not running"),
                    ));
                    candidates.push(Candidate {
                        node: s.clone(),
                        receive: status.receive_lsn,
                        replay: status.replay_lsn,
                    });
                }
                Probe::Down { error, .. } => {
                    notes.push(format!("standby {} unreachable: {error}", s.name))
                }
            }
        }
        let Some(best) = candidates
            .into_iter()
            .max_by_key(|c| c.position().unwrap_or(Lsn::INVALID))
        else {
            report.steps.push(step(
                "precheck",
                start,
                failed("no standby in recovery answered"),
                notes.join("; "),
            ));
            skip_rest(report, 0, "pre-checks failed");
            return None;
        };
        report.promoted = best.node.name.clone();
        report.standby_lsn = best.position();
        if let (Some(rcv), Some(rep)) = (best.receive, best.replay) {
            if rcv > rep {
                notes.push(format!(
                    "{} bytes received but not yet replayed ({rep}..{rcv}); promotion replays them first",
                    rcv.bytes_since(rep)
                ));
            }
        }
        let loss = match (primary_lsn, best.position()) {
            (Some(p), Some(s)) => Some(p.bytes_since(s)),
            _ => None,
        };
        report.estimated_loss_bytes = loss;
        let loss_text = match (loss, primary_lsn, best.position()) {
            (Some(0), _, _) => "estimated loss: none (the standby has all WAL up to the primary's last known position)".to_string(),
            (Some(n), Some(p), Some(s)) => format!(
                "estimated loss: {n} bytes of WAL, LSN range {s}..{p} (what the primary wrote that {} never received)",
                best.node.name
            ),
            _ => "estimated loss: unknown (no primary position)".to_string(),
        };
        notes.push(format!("chosen: {}", best.node.name));
        notes.push(loss_text.clone());
        let over = match (request.max_lag_bytes, loss) {
            (Some(max), Some(l)) if l > max => Some(format!("{loss_text} exceeds --max-lag {max}")),
            (Some(max), None) => Some(format!(
                "{loss_text}; cannot check it against --max-lag {max}"
            )),
            _ => None,
        };
        let detail = notes.join("; ");
        match over {
            Some(why) if !request.force => {
                report.steps.push(step(
                    "precheck",
                    start,
                    failed(format!("refused: {why}")),
                    detail,
                ));
                skip_rest(report, 0, "refused by the loss budget");
                return None;
            }
            Some(why) => report.steps.push(step(
                "precheck",
                start,
                StepOutcome::Ok,
                format!("FORCED past: {why}; {detail}"),
            )),
            None => report
                .steps
                .push(step("precheck", start, StepOutcome::Ok, detail)),
        }
        Some(best.node)
    }

    async fn promote_node(&self, node: &PgNode) -> Result<(TimelineId, String)> {
        let t = sql::redact(&node.conninfo);
        let client = sql::connect(&node.conninfo, self.connect_timeout).await?;
        let secs = self.promote_timeout.as_secs().max(1);
        let ok = sql::simple_value(
            &client,
            &format!("SELECT pg_promote(wait => true, wait_seconds => {secs})"),
            self.promote_timeout + self.connect_timeout,
            &t,
        )
        .await?;
        if ok != "t" {
            return Err(Error::Timeout {
                what: format!("pg_promote on {} did not finish within {secs} s", node.name),
            });
        }
        // pg_promote(wait) returns once recovery ended; poll until the insertion timeline is
        // readable (it errors while in recovery).
        let deadline = Instant::now() + self.promote_timeout;
        loop {
            match sql::insertion_timeline(&client, self.connect_timeout, &t).await {
                Ok(tli) => {
                    return Ok((
                        tli,
                        format!(
                            "pg_promote(wait => true) on {}; now on timeline {tli}",
                            node.name
                        ),
                    ))
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    async fn verify(
        &self,
        node: &PgNode,
        new_tli: TimelineId,
        verify_sql: &str,
        target: &RepointTarget,
    ) -> Result<String> {
        let (conninfo, path) = match self
            .repointer
            .as_ref()
            .and_then(|r| r.client_conninfo(target))
        {
            Some(c) => (c, "through the repointed path"),
            None => (
                node.client().to_string(),
                "directly (the repointer offers no client path to check)",
            ),
        };
        let t = sql::redact(&conninfo);
        // A pooler may need a moment to drop its old server connections: retry briefly.
        let deadline = Instant::now() + self.connect_timeout * 3;
        loop {
            let attempt = async {
                let client = sql::connect(&conninfo, self.connect_timeout).await?;
                let tli = sql::insertion_timeline(&client, self.connect_timeout, &t).await?;
                if tli != new_tli {
                    return Err(Error::Conflict {
                        path: t.clone(),
                        what: format!("reaches timeline {tli}, not the new timeline {new_tli}"),
                    });
                }
                client
                    .batch_execute(verify_sql)
                    .await
                    .map_err(|e| sql::pg_err(&t, "write check", &e))?;
                Ok::<_, Error>(())
            };
            match attempt.await {
                Ok(()) => {
                    return Ok(format!(
                        "a write succeeded {path} ({t}), on timeline {new_tli}"
                    ))
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "write check failed, retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
            }
        }
    }
}

#[async_trait]
impl Promoter for PgPromoter {
    async fn promote(&self, request: PromoteRequest) -> Result<PromotionReport> {
        if self.standbys.is_empty() {
            return Err(Error::invalid_input("no standby to promote"));
        }
        let mut report = PromotionReport {
            promoted: String::new(),
            new_timeline: None,
            primary_lsn: None,
            standby_lsn: None,
            estimated_loss_bytes: None,
            steps: Vec::new(),
        };
        let Some(node) = self.precheck(&request, &mut report).await else {
            return Ok(report);
        };
        if request.dry_run {
            skip_rest(&mut report, 0, "dry run");
            return Ok(report);
        }

        // Fence.
        let start = Instant::now();
        match &self.fencer {
            None => report.steps.push(step(
                "fence",
                start,
                StepOutcome::Skipped {
                    why: "no fence configured: the old primary may still accept writes".into(),
                },
                String::new(),
            )),
            Some(f) => {
                let target = FenceTarget {
                    name: self.primary.name.clone(),
                    conninfo: self.primary.conninfo.clone(),
                    data_dir: self.primary.data_dir.clone(),
                };
                match f.fence(&target).await {
                    Ok(detail) => report.steps.push(step(
                        "fence",
                        start,
                        StepOutcome::Ok,
                        format!("{}: {detail}", f.name()),
                    )),
                    Err(e) if request.force => report.steps.push(step(
                        "fence",
                        start,
                        failed(format!("{}: {e}", f.name())),
                        "FORCED: promoting although the old primary may still accept writes".into(),
                    )),
                    Err(e) => {
                        report.steps.push(step(
                            "fence",
                            start,
                            failed(format!("{}: {e}", f.name())),
                            "promotion stopped: the old primary may still accept writes".into(),
                        ));
                        skip_rest(&mut report, 1, "the fence failed");
                        return Ok(report);
                    }
                }
            }
        }

        // Promote.
        let start = Instant::now();
        let new_tli = match self.promote_node(&node).await {
            Ok((tli, detail)) => {
                report.new_timeline = Some(tli);
                report
                    .steps
                    .push(step("promote", start, StepOutcome::Ok, detail));
                tli
            }
            Err(e) => {
                report
                    .steps
                    .push(step("promote", start, failed(e.to_string()), String::new()));
                skip_rest(&mut report, 2, "the promotion failed");
                return Ok(report);
            }
        };

        // Repoint.
        let start = Instant::now();
        let target = RepointTarget::from_conninfo(&node.name, node.client())?;
        match &self.repointer {
            None => report
                .steps
                .push(skipped("repoint", "no repointer configured")),
            Some(r) => match r.repoint(&target).await {
                Ok(detail) => report.steps.push(step(
                    "repoint",
                    start,
                    StepOutcome::Ok,
                    format!("{}: {detail}", r.name()),
                )),
                Err(e) => report.steps.push(step(
                    "repoint",
                    start,
                    failed(format!("{}: {e}", r.name())),
                    "clients still point at the old primary".into(),
                )),
            },
        }

        // Verify.
        let start = Instant::now();
        match &self.verify_sql {
            None => report
                .steps
                .push(skipped("verify", "no write check configured")),
            Some(v) => match self.verify(&node, new_tli, v, &target).await {
                Ok(detail) => report
                    .steps
                    .push(step("verify", start, StepOutcome::Ok, detail)),
                Err(e) => {
                    report
                        .steps
                        .push(step("verify", start, failed(e.to_string()), String::new()))
                }
            },
        }
        Ok(report)
    }
}

/// Renders a report for people: one line per step with its duration.
pub fn render_report(r: &PromotionReport) -> String {
    let mut s = String::new();
    let verdict = if promoted(r) && clean(r) {
        "PROMOTED"
    } else if promoted(r) {
        "PROMOTED WITH FAILURES"
    } else {
        "NOT PROMOTED"
    };
    s.push_str(&format!(
        "{verdict}: {}\n",
        if r.promoted.is_empty() {
            "-"
        } else {
            &r.promoted
        }
    ));
    let opt = |l: Option<Lsn>| l.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into());
    s.push_str(&format!(
        "  new timeline: {}\n  primary LSN:  {}\n  standby LSN:  {}\n  est. loss:    {}\n",
        r.new_timeline
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into()),
        opt(r.primary_lsn),
        opt(r.standby_lsn),
        r.estimated_loss_bytes
            .map(|b| format!("{b} bytes"))
            .unwrap_or_else(|| "unknown".into())
    ));
    for st in &r.steps {
        let outcome = match &st.outcome {
            StepOutcome::Ok => "ok".to_string(),
            StepOutcome::Skipped { why } => format!("skipped ({why})"),
            StepOutcome::Failed { why } => format!("FAILED: {why}"),
        };
        s.push_str(&format!(
            "  {:<8} {:>9.3} s  {outcome}\n",
            st.name,
            st.duration.as_secs_f64()
        ));
        if !st.detail.is_empty() {
            s.push_str(&format!("           {}\n", st.detail));
        }
    }
    s.push_str(&format!("  total    {:>9.3} s\n", r.total().as_secs_f64()));
    s
}
