use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Lsn, Result, TimelineId};

/// What to promote, and the limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteRequest {
    /// The most WAL bytes the promotion may lose against the last known primary position;
    /// `None` for no limit.
    pub max_lag_bytes: Option<u64>,
    /// Go on even when the loss budget is exceeded or the fence fails.
    pub force: bool,
    /// Only run the pre-checks and say what would happen.
    pub dry_run: bool,
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StepOutcome {
    /// It worked.
    Ok,
    /// It was skipped, and why.
    Skipped {
        /// Why.
        why: String,
    },
    /// It failed, and why.
    Failed {
        /// Why.
        why: String,
    },
}

/// One timed phase of a promotion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimedStep {
    /// `precheck`, `fence`, `promote`, `repoint`, `verify`...
    pub name: String,
    /// How long it took.
    pub duration: Duration,
    /// How it ended.
    pub outcome: StepOutcome,
    /// Details for the operator.
    pub detail: String,
}

/// The result of a promotion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionReport {
    /// The standby that was (or would be) promoted.
    pub promoted: String,
    /// The new timeline, once visible.
    pub new_timeline: Option<TimelineId>,
    /// The last known primary position used for the loss estimate.
    pub primary_lsn: Option<Lsn>,
    /// The promoted standby's position at promotion.
    pub standby_lsn: Option<Lsn>,
    /// Estimated WAL bytes lost.
    pub estimated_loss_bytes: Option<u64>,
    /// Every step, in order, timed.
    pub steps: Vec<TimedStep>,
}

impl PromotionReport {
    /// The sum of the step durations.
    pub fn total(&self) -> Duration {
        self.steps.iter().map(|s| s.duration).sum()
    }
}

/// Promotes a standby: pre-checks, fence the old primary, promote, repoint clients, verify.
///
/// A fence that fails stops the promotion unless [`PromoteRequest::force`] is set; so does an
/// estimated loss above [`PromoteRequest::max_lag_bytes`]. The report is returned for
/// refusals too, with the failing step marked; `Err` is for the promoter being unable to run
/// at all.
#[async_trait]
pub trait Promoter: Send + Sync {
    /// Runs the promotion.
    async fn promote(&self, request: PromoteRequest) -> Result<PromotionReport>;
}
