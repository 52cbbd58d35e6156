//! The admin API's alert routes (`/admin/alerts/...`):
//!
//! - `GET /admin/alerts/channels`, `POST /admin/alerts/channels` (create or
//!   replace by name; the body is a `[[alerts.channels]]` table as JSON),
//!   `DELETE /admin/alerts/channels/<name>`: secrets are masked in every
//!   answer and never logged.
//! - `GET /admin/alerts/rules`, `POST /admin/alerts/rules`,
//!   `DELETE /admin/alerts/rules/<name>`.
//! - `POST /admin/alerts/channels/<name>/test`: sends an `alert.test` to that
//!   channel now and answers with the attempt.
//! - `GET /admin/alerts/history?limit=` (newest first, with every delivery's
//!   state and attempts), `GET /admin/alerts/state` (per covered entity: what
//!   fired this period; and the delivery queue), `POST
//!   /admin/alerts/<id>/replay` (queues the alert again, same id).
//!
//! Definitions made here persist in the governance overlay like customers,
//! teams and keys, and win over the file's by name. Only API definitions can
//! be deleted (the file's are the file's).

use serde_json::{json, Value};

use super::{ChangeError, Governance};
use crate::alerts::channel::ChannelSection;
use crate::alerts::delivery::{Refused, HISTORY_MAX};
use crate::alerts::rules::RuleSection;
use crate::error::ApiError;
use crate::http::Method;

/// `limit` of a history query that names none.
pub const ALERT_HISTORY_LIMIT_DEFAULT: usize = 100;

pub async fn handle(
    gov: &Governance,
    method: Method,
    path: &str,
    parts: &[&str],
    query: Option<&str>,
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    match (method, parts) {
        (Method::Get, ["channels"]) => Ok((200, list_channels(gov))),
        (Method::Post, ["channels"]) => put_channel(gov, body),
        (Method::Delete, ["channels", name]) => delete_channel(gov, name),
        (Method::Post, ["channels", name, "test"]) => test_channel(gov, name).await,
        (Method::Get, ["rules"]) => Ok((200, list_rules(gov))),
        (Method::Post, ["rules"]) => put_rule(gov, body),
        (Method::Delete, ["rules", name]) => delete_rule(gov, name),
        (Method::Get, ["history"]) => history(gov, query).await,
        (Method::Get, ["state"]) => state(gov).await,
        (Method::Post, [id, "replay"]) => replay(gov, id).await,
        (_, ["channels" | "rules"] | ["channels" | "rules", _] | ["channels", _, "test"])
        | (_, ["history" | "state"] | [_, "replay"]) => Err(ApiError::method_not_allowed(format!(
            "method not allowed for {path}"
        ))),
        _ => Err(ApiError::not_found(
            "unknown_url",
            format!("unknown admin URL: {path}"),
        )),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_request_body", format!("{what}: {e}")))
}

fn list_channels(gov: &Governance) -> Value {
    gov.read(|overlay, file, config| {
        let channels: Vec<Value> = config
            .alerts
            .channels
            .iter()
            .map(|c| {
                let mut v = c.masked();
                let from_api = overlay.alert_channels.contains_key(&c.name);
                let in_file = file.alerts.channels.iter().any(|f| f.name == c.name);
                if let Value::Object(m) = &mut v {
                    m.insert(
                        "source".into(),
                        json!(if from_api { "api" } else { "file" }),
                    );
                    m.insert("overrides_file".into(), json!(from_api && in_file));
                }
                v
            })
            .collect();
        json!({ "object": "list", "data": channels })
    })
}

fn list_rules(gov: &Governance) -> Value {
    gov.read(|overlay, file, config| {
        let rules: Vec<Value> = config
            .alerts
            .rules
            .iter()
            .map(|r| {
                let from_api = overlay.alert_rules.contains_key(&r.name);
                let in_file = file.alerts.rules.iter().any(|f| f.name == r.name);
                json!({
                    "name": r.name,
                    "scope": r.section.scope,
                    "thresholds": r.thresholds,
                    "soft_limit": r.soft_limit,
                    "exhausted": r.exhausted,
                    "forecast": r.forecast,
                    "recovery": r.recovery,
                    "channels": r.channels,
                    "source": if from_api { "api" } else { "file" },
                    "overrides_file": from_api && in_file,
                })
            })
            .collect();
        json!({ "object": "list", "data": rules })
    })
}

fn put_channel(gov: &Governance, body: &[u8]) -> Result<(u16, Value), ApiError> {
    let section: ChannelSection = parse(body, "alert channel")?;
    // Before anything reads the environment the section names.
    let allow_private = gov.read(|_, file, _| file.alerts.api_channels_allow_private);
    super::check_api_channel(&section, allow_private)
        .map_err(|e| ApiError::bad_request("invalid_value", e.to_string()))?;
    // Checked on its own first, so the error names the body's field.
    let checked = section.validate().map_err(|e| {
        ApiError::bad_request("invalid_value", format!("{}: {}", e.field, e.message))
    })?;
    let name = checked.name.clone();
    let existed = gov.change(|overlay, _file, config| {
        let existed = config.alerts.channels.iter().any(|c| c.name == name);
        overlay.alert_channels.insert(name.clone(), section);
        Ok(existed)
    })?;
    Ok((if existed { 200 } else { 201 }, checked.masked()))
}

fn delete_channel(gov: &Governance, name: &str) -> Result<(u16, Value), ApiError> {
    gov.change(|overlay, file, _config| {
        if overlay.alert_channels.remove(name).is_some() {
            return Ok(());
        }
        if file.alerts.channels.iter().any(|c| c.name == name) {
            return Err(ChangeError::Conflict(format!(
                "alert channel {name:?} is defined in the config file; remove it there"
            )));
        }
        Err(ChangeError::NotFound(format!("no alert channel {name:?}")))
    })?;
    Ok((200, json!({ "deleted": name })))
}

fn put_rule(gov: &Governance, body: &[u8]) -> Result<(u16, Value), ApiError> {
    let section: RuleSection = parse(body, "alert rule")?;
    let name = section.name.clone();
    let existed = gov.change(|overlay, _file, config| {
        let channels: Vec<&str> = config
            .alerts
            .channels
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        section
            .validate(&channels)
            .map_err(|e| ChangeError::Invalid(format!("{}: {}", e.field, e.message)))?;
        let existed = config.alerts.rules.iter().any(|r| r.name == name);
        overlay.alert_rules.insert(name.clone(), section);
        Ok(existed)
    })?;
    let rule = gov.read(|_, _, config| {
        config
            .alerts
            .rules
            .iter()
            .find(|r| r.name == name)
            .map(|r| serde_json::to_value(&r.section).unwrap_or(Value::Null))
    });
    Ok((if existed { 200 } else { 201 }, rule.unwrap_or(Value::Null)))
}

fn delete_rule(gov: &Governance, name: &str) -> Result<(u16, Value), ApiError> {
    gov.change(|overlay, file, _config| {
        if overlay.alert_rules.remove(name).is_some() {
            return Ok(());
        }
        if file.alerts.rules.iter().any(|r| r.name == name) {
            return Err(ChangeError::Conflict(format!(
                "alert rule {name:?} is defined in the config file; remove it there"
            )));
        }
        Err(ChangeError::NotFound(format!("no alert rule {name:?}")))
    })?;
    Ok((200, json!({ "deleted": name })))
}

fn refused(e: Refused) -> ApiError {
    let mut err = ApiError::service_unavailable(format!("alerts: {e}"));
    if e == Refused::Busy {
        err.code = "alerts_busy";
        err.retry_after_secs = Some(1);
    }
    err
}

fn delivery(gov: &Governance) -> Result<&crate::alerts::delivery::DeliveryHandle, ApiError> {
    gov.delivery
        .as_ref()
        .ok_or_else(|| ApiError::service_unavailable("alert delivery is not running"))
}

fn gone() -> ApiError {
    refused(Refused::Gone)
}

async fn test_channel(gov: &Governance, name: &str) -> Result<(u16, Value), ApiError> {
    let rx = delivery(gov)?.test(name).map_err(refused)?;
    match rx.await.map_err(|_| gone())? {
        Ok(result) => Ok((200, serde_json::to_value(result).unwrap_or(Value::Null))),
        Err(message) => Err(ApiError::not_found("not_found", message)),
    }
}

async fn history(gov: &Governance, query: Option<&str>) -> Result<(u16, Value), ApiError> {
    let mut limit = ALERT_HISTORY_LIMIT_DEFAULT;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=HISTORY_MAX).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_value",
                            format!("limit must be a whole number in 1..={HISTORY_MAX}, got {v:?}"),
                        )
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_value",
                    format!("unknown query parameter {other:?} (this URL takes limit)"),
                ))
            }
        }
    }
    let rx = delivery(gov)?.history(limit).map_err(refused)?;
    let entries = rx.await.map_err(|_| gone())?;
    Ok((200, json!({ "object": "list", "data": entries })))
}

async fn state(gov: &Governance) -> Result<(u16, Value), ApiError> {
    let entities = gov
        .books
        .alert_state()
        .map_err(|e| ApiError::internal(format!("the ledger did not answer: {e}")))?;
    let deliveries = match &gov.delivery {
        Some(d) => {
            let rx = d.state().map_err(refused)?;
            serde_json::to_value(rx.await.map_err(|_| gone())?).unwrap_or(Value::Null)
        }
        None => Value::Null,
    };
    Ok((200, json!({ "entities": entities, "delivery": deliveries })))
}

async fn replay(gov: &Governance, id: &str) -> Result<(u16, Value), ApiError> {
    let rx = delivery(gov)?.replay(id).map_err(refused)?;
    match rx.await.map_err(|_| gone())? {
        Ok(queued) => Ok((202, json!({ "id": id, "queued": queued }))),
        Err(message) => Err(ApiError::not_found("not_found", message)),
    }
}
