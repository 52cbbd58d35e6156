//! `GET /v1/bursar/usage`: a key holder's own spend and last requests, on
//! the data plane, with the key itself as the bearer.
//!
//! ```json
//! {"object": "usage", "key": "search-prod", "team": "search", "customer": "acme",
//!  "budget": {"spent_usd": "0.0042", "limit_usd": "1", "remaining_usd": "0.9958",
//!             "reset_at": "2026-12-08T09:14:03.512Z", "period_start": "2026-12-07T09:14:03.512Z",
//!             "mode": "strict", "blocked": false},
//!  "levels": [{"kind": "team", "name": "search", ...the same fields...}],
//!  "requests": [...the key's last rows, newest first, as /admin/logs gives them...],
//!  "requests_available": true}
//! ```
//!
//! What it answers, and why:
//! - **Whose data.** Only the authenticated key's: the key is the one the
//!   bearer names, the spend views are its chain's (key, team, customer)
//!   and the log look-up filters on its name. No parameter can name another
//!   key: `limit` is the only one accepted, anything else is a 400.
//! - **`budget`** is the key's own spend view, the fields of the admin
//!   API's (`books::view::budget_fields`, shared): `limit_usd`,
//!   `remaining_usd`, `reset_at` and `mode` are `null` when the key has no
//!   budget (its spend is still counted). `null` as a whole only when the
//!   books have no entity for the key (not expected).
//! - **`levels`** are the key's team and customer, only those with a
//!   strict budget: the ones that can refuse the key's requests. When one
//!   does, its 402 names the entity, its limit and its spend, so these are
//!   facts a holder is shown anyway; here they are shown before the
//!   refusal too. A team or customer without a budget, or with a soft one
//!   (which never answers a 402), is left out: its spend is other keys'
//!   activity, and it refuses nothing of this key's. Per-model and tag
//!   budgets are not listed.
//! - **`requests`**: the key's last `limit` rows of the request log
//!   ([`USAGE_REQUESTS_DEFAULT`], at most [`USAGE_REQUESTS_MAX`]), the JSON
//!   of `/admin/logs`. The log is written in batches (every
//!   `flush_interval`), so the newest requests appear within about that
//!   long. `requests_available` is false, with `requests: []`, when they
//!   cannot be had: the log is off, the query thread is busy (the data
//!   plane's share of its queue, [`USAGE_LOG_QUERIES_MAX`], is taken, or
//!   the queue is full), it did not answer within [`USAGE_LOG_TIMEOUT`], or
//!   the store failed. The spend is the point of the answer and comes from
//!   the ledger, not the log, so a busy log never turns it into a 503.
//!
//! How it is served: authenticated exactly like the other data-plane
//! routes (401 in OpenAI's shape). Not forwarded, not charged, no budget
//! admission. It counts against the key's (and its team's)
//! requests-per-minute and concurrency limits, not tokens per minute
//! (`Permit::acquire_tokenless`): each answer costs the ledger thread a
//! view and the shared query thread a look-up, and a key holder must not
//! be able to flood them. It is not written to the request log: the log
//! records what was charged or refused on the way to a provider, and a
//! usage read would push the key's own requests out of its answer.
//!
//! A worker never blocks on it: the log look-up is queued first (one
//! non-blocking send to the query thread, which runs it meanwhile), then
//! the ledger's views are awaited (each a oneshot reply, bounded by
//! [`USAGE_LEDGER_TIMEOUT`]; no answer is a 503), then the look-up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_channel::oneshot;
use serde_json::{json, Value};

use super::{admit, RequestId, Worker};
use crate::error::ApiError;
use crate::http::response;
use crate::http::server::{ClientOut, RequestView};
use crate::ledger::{EntityKind, EntityView};
use crate::limits::{
    USAGE_LEDGER_TIMEOUT, USAGE_LOG_QUERIES_MAX, USAGE_LOG_TIMEOUT, USAGE_REQUESTS_DEFAULT,
    USAGE_REQUESTS_MAX,
};
use crate::reqlog::{LogFilter, LogReader, LogRow, StoreError};

// The data plane takes a share of the query thread's queue, never all of it,
// and never asks for more rows than one log query returns.
const _: () = assert!(USAGE_LOG_QUERIES_MAX < crate::reqlog::LOG_QUERIES_QUEUED_MAX);
const _: () = assert!(USAGE_REQUESTS_MAX <= crate::reqlog::LOG_QUERY_LIMIT_MAX);

/// The workers' handle on the request log's query thread (the one the admin
/// API uses), with the count of usage look-ups queued or running there,
/// shared by every worker (an atomic: [`USAGE_LOG_QUERIES_MAX`] at most).
#[derive(Clone)]
pub struct UsageLog {
    reader: LogReader,
    in_flight: Arc<AtomicUsize>,
}

/// One usage look-up's place in [`UsageLog`]'s count, given back when the
/// query thread has run or dropped the look-up (or it was never queued).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

type Rows = oneshot::Receiver<Result<Vec<LogRow>, StoreError>>;

impl UsageLog {
    pub fn new(reader: LogReader) -> UsageLog {
        UsageLog {
            reader,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Queues the look-up of `key`'s last `limit` rows; `None` when the
    /// data plane's share of the queue is taken or the queue is full.
    fn last_requests(&self, key: &str, limit: usize) -> Option<Rows> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= USAGE_LOG_QUERIES_MAX {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let slot = Slot(Arc::clone(&self.in_flight));
        let filter = LogFilter {
            key: Some(key.to_string()),
            limit,
            ..LogFilter::default()
        };
        // The slot lives in the job: it is given back when the query thread
        // has run it, or drops it unrun (its caller stopped waiting), or
        // here if the queue refuses it.
        self.reader
            .query(move |store| {
                let rows = store.query_logs(&filter);
                drop(slot);
                rows
            })
            .ok()
    }
}

/// `?limit=` of the request target: the number of last requests wanted.
/// No other parameter is accepted (none can name another key).
pub fn requests_limit(target: &str) -> Result<usize, ApiError> {
    let Some((_, query)) = target.split_once('?') else {
        return Ok(USAGE_REQUESTS_DEFAULT);
    };
    let mut limit = USAGE_REQUESTS_DEFAULT;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=USAGE_REQUESTS_MAX).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_value",
                            format!(
                                "limit: {v:?} is not a whole number from 1 to {USAGE_REQUESTS_MAX}"
                            ),
                        )
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_value",
                    format!("unknown parameter {other:?} (only \"limit\" is accepted)"),
                ))
            }
        }
    }
    Ok(limit)
}

/// Answers `GET /v1/bursar/usage` (see the module doc).
pub(super) async fn usage(
    w: &Worker,
    req: &RequestView<'_>,
    out: &mut ClientOut<'_>,
    rid: &RequestId,
    keep: bool,
) -> Result<bool, ApiError> {
    let catalog = w.catalog();
    let key = admit::authenticate(&catalog, req)?;
    let limit = requests_limit(req.head.target(req.bytes))?;
    let _permit =
        crate::ratelimit::Permit::acquire_tokenless(&key.limiters, crate::ratelimit::now_ms())?;
    // Queued first: the query thread looks the rows up while the ledger
    // answers.
    let rows = w
        .usage_log
        .as_ref()
        .and_then(|u| u.last_requests(&key.name, limit));
    let chain: Vec<_> = key
        .chain
        .iter()
        .filter(|l| {
            matches!(
                l.kind,
                EntityKind::Key | EntityKind::Team | EntityKind::Customer
            )
        })
        .collect();
    let ids: Vec<_> = chain.iter().map(|l| l.id).collect();
    let views = w
        .books
        .views(&ids, USAGE_LEDGER_TIMEOUT)
        .await
        .map_err(ApiError::service_unavailable)?;
    let name_of = |kind| {
        chain
            .iter()
            .find(|l| l.kind == kind)
            .map(|l| Value::String(l.name.to_string()))
            .unwrap_or(Value::Null)
    };
    let mut budget = Value::Null;
    let mut levels = Vec::new();
    for (level, view) in chain.iter().zip(&views) {
        let Some(view) = view else { continue };
        match level.kind {
            EntityKind::Key => budget = Value::Object(crate::books::view::budget_fields(view)),
            kind if can_refuse(view) => {
                let mut fields = crate::books::view::budget_fields(view);
                fields.insert("kind".into(), json!(crate::books::registry::kind_str(kind)));
                fields.insert("name".into(), json!(&*level.name));
                levels.push(Value::Object(fields));
            }
            _ => {}
        }
    }
    let requests = match rows {
        Some(rx) => match monoio::time::timeout(USAGE_LOG_TIMEOUT, rx).await {
            Ok(Ok(Ok(rows))) => Some(rows),
            _ => None,
        },
        None => None,
    };
    let body = json!({
        "object": "usage",
        "key": &*key.name,
        "team": name_of(EntityKind::Team),
        "customer": name_of(EntityKind::Customer),
        "budget": budget,
        "levels": levels,
        "requests_available": requests.is_some(),
        "requests": requests
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(LogRow::to_json)
            .collect::<Vec<_>>(),
    });
    let body = serde_json::to_vec(&body).unwrap_or_default();
    response::json(out.wbuf, 200, rid.as_str(), keep, &body);
    w.stats.response(200);
    Ok(out.flush().await.is_ok() && keep)
}

/// Whether the view's entity has a strict budget (one whose refusal, a
/// 402, names it with its limit and spend).
fn can_refuse(v: &EntityView) -> bool {
    v.limit_effective.is_some()
        && v.budget
            .is_some_and(|b| b.mode == crate::budget::Mode::Strict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_bounded_and_no_other_parameter_is_taken() {
        let ok = |target: &str| requests_limit(target).ok();
        assert_eq!(ok("/v1/bursar/usage"), Some(USAGE_REQUESTS_DEFAULT));
        assert_eq!(ok("/v1/bursar/usage?"), Some(USAGE_REQUESTS_DEFAULT));
        assert_eq!(ok("/v1/bursar/usage?limit=1"), Some(1));
        assert_eq!(
            ok(&format!("/v1/bursar/usage?limit={USAGE_REQUESTS_MAX}")),
            Some(USAGE_REQUESTS_MAX)
        );
        for bad in [
            "limit=0",
            "limit=-1",
            "limit=abc",
            "limit=",
            "limit=1.5",
            "limit=99999999999999999999999",
            &format!("limit={}", USAGE_REQUESTS_MAX + 1),
            "key=other",
            "limit=5&key=other",
        ] {
            let e = requests_limit(&format!("/v1/bursar/usage?{bad}")).unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid_value"), "{bad}");
        }
    }
}
