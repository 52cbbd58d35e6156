//! Spend alerts: budget crossings found on the books' single writer, kept in a
//! persistent outbox, delivered off every request path.
//!
//! - [`event`]: what an alert is (type, id, data), shared by every part.
//! - [`channel`]: the channels (signed webhook, Slack, Teams, PagerDuty,
//!   Discord, email): configuration, rendering, one delivery attempt, the
//!   SSRF guard.
//! - [`outbox`]: the outbox files in `state_dir/alerts/`: alerts the ledger
//!   thread emitted (appended and synced before anything is sent) and every
//!   delivery attempt.
//! - [`backoff`]: when a failed delivery is tried again (exponential
//!   backoff, full jitter, `Retry-After`).
//! - [`delivery`]: the `bursar-alerts` thread: sends what the outbox holds,
//!   retries with backoff and jitter, dead-letters, rate-limits per channel,
//!   keeps the history the admin API shows.
//! - [`report`]: daily and weekly spend reports: the periods due and their
//!   alerts, from the request log's spend totals.
//! - [`operational`]: the `bursar-opsalerts` sampler: unpriced models,
//!   strict overruns, dropped log rows, provider error rates.

pub mod backoff;
pub mod channel;
pub mod delivery;
pub mod eval;
pub mod event;
pub mod ledger_side;
pub mod operational;
pub mod outbox;
pub mod report;
pub mod rules;

pub use event::{
    Alert, AlertData, AlertKey, AlertKind, BudgetData, EntityRef, KeyFact, Route, Severity,
};
