//! The JSON of an entity's spend view that every API answering one shares:
//! the admin API's spend routes (`admin::targets::spend_json`, which adds
//! the operator's fields) and the data plane's `GET /v1/bursar/usage`
//! (`proxy::usage`). Money is the exact decimal string of [`Money`]; a
//! field that does not apply (no limit, no reset) is `null`.

use serde_json::{json, Map, Value};

use crate::ledger::EntityView;
use crate::money::Money;

/// `spent_usd`, `limit_usd`, `remaining_usd`, `reset_at`, `period_start`,
/// `mode` and `blocked` of `v`.
pub fn budget_fields(v: &EntityView) -> Map<String, Value> {
    let resets = v.budget.and_then(|b| b.reset).is_some();
    let mut m = Map::new();
    m.insert("spent_usd".into(), money(v.spent));
    m.insert("limit_usd".into(), json!(v.limit_effective.map(money)));
    m.insert("remaining_usd".into(), json!(v.remaining.map(money)));
    m.insert(
        "reset_at".into(),
        json!(resets.then(|| crate::budget::period::format_rfc3339_ms(v.period.end_ms))),
    );
    m.insert(
        "period_start".into(),
        json!(crate::budget::period::format_rfc3339_ms(v.period.start_ms)),
    );
    m.insert("mode".into(), json!(v.budget.map(|b| b.mode.as_str())));
    m.insert("blocked".into(), json!(v.blocked));
    m
}

/// An amount as its exact decimal string.
pub fn money(m: Money) -> Value {
    Value::String(m.to_string())
}
