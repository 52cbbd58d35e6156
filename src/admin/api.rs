//! The admin API: JSON over HTTP on the control-plane listener, behind the
//! bearer admin token. Routes (kind: `customers`, `teams`, `keys`):
//!
//! - `GET /admin/<kind>`, `POST /admin/<kind>` (create; a key's secret is
//!   returned once, only its SHA-256 is stored)
//! - `GET`, `PATCH`, `DELETE /admin/<kind>/<name>` (PATCH: the members given
//!   replace the entity's; `null` removes one, e.g. `"budget": null`)
//! - `POST /admin/<kind>/<name>/reset` (the budget's spend starts over now)
//! - `POST /admin/<kind>/<name>/top-up` `{"amount_usd": "5"}` (prepaid budgets)
//! - `GET /admin/spend/<kind>/<name>` (kind may also be `providers`): the
//!   current period's spend, limit, remaining and reset time, exact decimals.
//! - `GET /admin/providers[/<name>]`, `PATCH /admin/providers/<name>` with
//!   `{"budget": {...} | null}`, and reset / top-up: providers are defined in
//!   the file (they hold credentials, never shown); their budgets change here.
//!
//! Budgets on other dimensions (`<model>` may hold `/`: the segments after
//! the prefix are joined with `/`, then percent-decoded, so
//! `meta-llama/Llama-3` and `meta-llama%2FLlama-3` name the same model; a
//! tag is `<key>=<value>`, percent-decoded):
//!
//! - `GET /admin/spend/models/<model>` (kind `model`),
//!   `GET /admin/spend/tags/<key>=<value>` (kind `tag`),
//!   `GET /admin/spend/<kind>/<name>/models/<model>` (kinds `key_model`,
//!   `team_model`, `customer_model`; named `<name>/<model>`): spend views as
//!   above; a budget the config in force does not have is a 404.
//! - `GET /admin/model_budgets[/<model>]`, `PUT /admin/model_budgets/<model>`
//!   `{"budget": {...}}` (create or replace), `DELETE
//!   /admin/model_budgets/<model>`, `POST /admin/model_budgets/<model>/reset`
//!   and `/top-up`; the same under `/admin/tag_budgets/<key>=<value>`
//!   (see [`super::budgets_api`] for who wins, the file or the API).
//! - `POST /admin/<kind>/<name>/models/<model>/reset` and `/top-up`: a
//!   customer's, team's or key's budget on a model (set in its
//!   `model_budgets` list, which the entity routes above read and write).
//!
//! - `GET /admin/budgets`: every budget with its spend view, burn rate,
//!   projected exhaustion and whether it is at risk, those at risk first
//!   ([`super::budget_list`]).
//! - `GET /admin/logs` (the request log, filtered and paged),
//!   `GET /admin/spend/totals` and `GET /admin/spend/series` (spend over the
//!   request log, grouped and bucketed; `key=` / `team=` / `customer=` /
//!   `model=` sum only the rows that match (a key's spend on one model over
//!   time: `key=<name>&model=<model>`); `group_by=tags` groups by every tag as
//!   `key=value`, a row counting once per tag). Each group (and bucket) has
//!   `cost_usd` and `avoided_usd`, the spend its cache hits avoided.
//!
//! Query values are checked before anything is computed from them: a time
//! (unix ms or RFC 3339) must lie in 1970..=9999 ([`TIME_MS_MIN`],
//! [`TIME_MS_MAX`]), a range must go forwards, a series may hold at most
//! [`LOG_SERIES_POINTS_MAX`] buckets, `limit` and `status` have their bounds;
//! anything else is a 400 `invalid_value` naming the parameter, and every
//! sum or difference of them is checked.
//!
//! Errors are OpenAI-shaped. The handlers run on the control-plane thread and
//! may block on the ledger thread (milliseconds); request log queries run on
//! the query thread (`reqlog::reader`) and are awaited, so the control plane
//! serves other requests meanwhile (a full query queue is a 503
//! `log_queries_busy` with `retry-after`); workers are never involved.

use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::budgets_api::Dimension;
use super::targets::{
    bad, not_found, ok, parse_object, path_name, reset, spend, top_up, AdminResponse, Kind, Target,
};
use super::{ChangeError, Governance, LogQueryError, Overlay};
use crate::budget::period::{DAY_MS, TIME_MS_MAX, TIME_MS_MIN};
use crate::config::file::{BudgetSection, CustomerSection, FileConfig, KeySection, TeamSection};
use crate::error::ApiError;
use crate::http::Method;
use crate::reqlog::{LOG_QUERY_LIMIT_MAX, LOG_SERIES_POINTS_MAX};

/// Bytes of a generated virtual key's random part (hex-encoded: twice that).
pub const GENERATED_KEY_RANDOM_BYTES: usize = 24;
/// Prefix of generated virtual keys.
pub const GENERATED_KEY_PREFIX: &str = "sk-bursar-";
/// The range of a spend query that names no `from`: this much before `to`.
pub const SPEND_RANGE_DEFAULT_MS: i64 = DAY_MS;
/// The longest request id `GET /admin/logs/<id>` looks up (ids are
/// `req_` and 28 hex digits; anything much longer is not one).
pub const LOG_ROW_ID_BYTES_MAX: usize = 128;
/// The most groups `limit=` (totals) or `top=` (series) may ask for.
pub const SPEND_GROUPS_LIMIT_MAX: usize = 1_000;
/// `retry-after` of a 503 answered when the request log's query queue is full.
pub const LOG_QUERIES_BUSY_RETRY_AFTER_SECS: u64 = 1;
/// Lowest `status` a log query may filter on.
pub const LOG_QUERY_STATUS_MIN: u16 = 100;
/// Highest `status` a log query may filter on.
pub const LOG_QUERY_STATUS_MAX: u16 = 599;

/// One admin request, as the control plane read it.
pub struct AdminRequest<'a> {
    pub method: Method,
    pub path: &'a str,
    /// The query string, without the `?`.
    pub query: Option<&'a str>,
    pub authorization: Option<&'a [u8]>,
    pub body: &'a [u8],
}

/// Answers one admin request. Request log queries are awaited from the query
/// thread (`reqlog::reader`); everything else answers without waiting on
/// anything but the ledger thread.
pub async fn handle(gov: &Governance, req: &AdminRequest<'_>) -> Result<AdminResponse, ApiError> {
    authorize(gov, req.authorization)?;
    let rest = req.path.strip_prefix("/admin/").unwrap_or_default();
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let unknown = || ApiError::not_found("unknown_url", format!("unknown admin URL: {}", req.path));
    match (req.method, parts.as_slice()) {
        (method, ["alerts", rest @ ..]) => {
            let (status, v) =
                super::alerts_api::handle(gov, method, req.path, rest, req.query, req.body).await?;
            ok(status, &v)
        }
        (Method::Get, ["budgets"]) => super::budget_list::list(gov, &query_params(req.query)).await,
        (_, ["budgets"]) => Err(ApiError::method_not_allowed(
            "method not allowed for /admin/budgets",
        )),
        (Method::Get, ["logs"]) => logs(gov, req.query).await,
        (Method::Get, ["logs", id]) => log_row(gov, id).await,
        (_, ["logs"] | ["logs", _]) => Err(ApiError::method_not_allowed(format!(
            "method not allowed for {}",
            req.path
        ))),
        (Method::Get, ["spend", "series"]) => series(gov, req.query, true).await,
        (Method::Get, ["spend", "totals"]) => series(gov, req.query, false).await,
        (Method::Get, ["spend", "models", model @ ..]) if !model.is_empty() => {
            spend(gov, &Target::Model(path_name(model)?))
        }
        (Method::Get, ["spend", "tags", tag @ ..]) if !tag.is_empty() => {
            spend(gov, &Target::Tag(path_name(tag)?))
        }
        (Method::Get, ["spend", kind, owner, "models", model @ ..]) if !model.is_empty() => {
            let kind = Kind::parse(kind)
                .filter(|k| *k != Kind::Providers)
                .ok_or_else(unknown)?;
            let target = Target::OwnerModel(kind, (*owner).to_string(), path_name(model)?);
            spend(gov, &target)
        }
        (Method::Get, ["spend", kind, name]) => {
            let kind = Kind::parse(kind).ok_or_else(unknown)?;
            spend(gov, &Target::Entity(kind, (*name).to_string()))
        }
        (method, ["model_budgets", rest @ ..]) => {
            super::budgets_api::handle(gov, Dimension::Model, method, req.path, rest, req.body)
        }
        (method, ["tag_budgets", rest @ ..]) => {
            super::budgets_api::handle(gov, Dimension::Tag, method, req.path, rest, req.body)
        }
        (method, ["providers", rest @ ..]) => match (method, rest) {
            (Method::Get, []) => list_providers(gov),
            (Method::Get, [name]) => get_provider(gov, name),
            (Method::Patch, [name]) => patch_provider(gov, name, req.body),
            (Method::Post, [name, "reset"]) => {
                reset(gov, &Target::Entity(Kind::Providers, (*name).to_string()))
            }
            (Method::Post, [name, "top-up" | "topup"]) => top_up(
                gov,
                &Target::Entity(Kind::Providers, (*name).to_string()),
                req.body,
            ),
            (_, [] | [_] | [_, "reset" | "top-up" | "topup"]) => {
                Err(ApiError::method_not_allowed(format!(
                    "method not allowed for {} (providers are defined in the config file)",
                    req.path
                )))
            }
            _ => Err(unknown()),
        },
        (method, [kind, rest @ ..]) => {
            let kind = Kind::parse(kind)
                .filter(|k| *k != Kind::Providers)
                .ok_or_else(unknown)?;
            let entity = |name: &str| Target::Entity(kind, name.to_string());
            match (method, rest) {
                (Method::Get, []) => list(gov, kind),
                (Method::Post, []) => create(gov, kind, req.body),
                (Method::Get, [name]) => get(gov, kind, name),
                (Method::Patch, [name]) => patch(gov, kind, name, req.body),
                (Method::Delete, [name]) => delete(gov, kind, name),
                (Method::Post, [name, "reset"]) => reset(gov, &entity(name)),
                (Method::Post, [name, "top-up" | "topup"]) => top_up(gov, &entity(name), req.body),
                // The owner's budget on a model (set in its `model_budgets`).
                (
                    Method::Post,
                    [owner, "models", model @ .., action @ ("reset" | "top-up" | "topup")],
                ) if !model.is_empty() => {
                    let target = Target::OwnerModel(kind, (*owner).to_string(), path_name(model)?);
                    if *action == "reset" {
                        reset(gov, &target)
                    } else {
                        top_up(gov, &target, req.body)
                    }
                }
                (_, [] | [_] | [_, "reset" | "top-up" | "topup"]) => Err(
                    ApiError::method_not_allowed(format!("method not allowed for {}", req.path)),
                ),
                (_, [_, "models", model @ .., "reset" | "top-up" | "topup"])
                    if !model.is_empty() =>
                {
                    Err(ApiError::method_not_allowed(format!(
                        "method not allowed for {} (POST)",
                        req.path
                    )))
                }
                _ => Err(unknown()),
            }
        }
        _ => Err(unknown()),
    }
}

fn authorize(gov: &Governance, presented: Option<&[u8]>) -> Result<(), ApiError> {
    let Some(token) = gov.admin_token() else {
        return Err(ApiError::forbidden(
            "admin_disabled",
            "the admin API is disabled: set [admin] token or token_env in the config",
        ));
    };
    let presented = presented
        .map(<[u8]>::trim_ascii)
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| v[7..].trim_ascii())
        .ok_or_else(|| {
            ApiError::unauthorized("the admin API needs 'Authorization: Bearer <admin token>'")
        })?;
    // Compare digests: constant time, and no length leak.
    let a = crate::config::hash_key(token.expose());
    let b: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(presented).into()
    };
    if bool::from(a.ct_eq(&b)) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("incorrect admin token"))
    }
}

/// The file's definition of `name`, as JSON.
fn file_def(file: &FileConfig, kind: Kind, name: &str) -> Option<Value> {
    match kind {
        Kind::Customers => file.customers.iter().find(|c| c.name == name).map(to_value),
        Kind::Teams => file.teams.iter().find(|t| t.name == name).map(to_value),
        Kind::Keys => file
            .virtual_keys
            .iter()
            .find(|k| k.name == name)
            .map(to_value),
        Kind::Providers => None,
    }
}

fn overlay_def(overlay: &Overlay, kind: Kind, name: &str) -> Option<Value> {
    match kind {
        Kind::Customers => overlay.customers.get(name).map(to_value),
        Kind::Teams => overlay.teams.get(name).map(to_value),
        Kind::Keys => overlay.keys.get(name).map(to_value),
        Kind::Providers => None,
    }
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// Stores `def` (a whole definition) in the overlay, checking its shape.
fn overlay_put(
    overlay: &mut Overlay,
    kind: Kind,
    name: &str,
    def: Value,
) -> Result<(), ChangeError> {
    let bad = |e: serde_json::Error| ChangeError::Invalid(format!("{}: {e}", kind.singular()));
    match kind {
        Kind::Customers => {
            let c: CustomerSection = serde_json::from_value(def).map_err(bad)?;
            overlay.customers.insert(name.to_string(), c);
        }
        Kind::Teams => {
            let t: TeamSection = serde_json::from_value(def).map_err(bad)?;
            overlay.teams.insert(name.to_string(), t);
        }
        Kind::Keys => {
            let mut k: KeySection = serde_json::from_value(def).map_err(bad)?;
            // Only the hash is ever stored.
            if let Some(secret) = k.key.take() {
                if k.key_sha256.is_some() {
                    return Err(ChangeError::Invalid(
                        "set key or key_sha256, not both".into(),
                    ));
                }
                if secret.len() < 8
                    || secret.len() > 256
                    || secret.bytes().any(|b| !(0x21..0x7f).contains(&b))
                {
                    return Err(ChangeError::Invalid(
                        "key must be 8 to 256 bytes of printable ASCII without spaces".into(),
                    ));
                }
                k.key_sha256 = Some(hex::encode(crate::config::hash_key(&secret)));
            }
            overlay.keys.insert(name.to_string(), k);
        }
        Kind::Providers => {
            return Err(ChangeError::Invalid(
                "providers are defined in the file".into(),
            ))
        }
    }
    Ok(())
}

fn overlay_remove(overlay: &mut Overlay, kind: Kind, name: &str) -> bool {
    match kind {
        Kind::Customers => overlay.customers.remove(name).is_some(),
        Kind::Teams => overlay.teams.remove(name).is_some(),
        Kind::Keys => overlay.keys.remove(name).is_some(),
        Kind::Providers => false,
    }
}

/// How an entity is shown: its definition (a key's secret never), where it
/// comes from, and whether the API's definition shadows the file's.
fn present(def: Value, from_api: bool, in_file: bool) -> Value {
    let mut v = def;
    if let Some(obj) = v.as_object_mut() {
        obj.remove("key");
        obj.insert(
            "source".into(),
            json!(if from_api { "api" } else { "file" }),
        );
        obj.insert("overrides_file".into(), json!(from_api && in_file));
    }
    v
}

fn find(overlay: &Overlay, file: &FileConfig, kind: Kind, name: &str) -> Option<Value> {
    let in_file = file_def(file, kind, name);
    match overlay_def(overlay, kind, name) {
        Some(def) => Some(present(def, true, in_file.is_some())),
        None => in_file.map(|def| present(def, false, false)),
    }
}

fn list(gov: &Governance, kind: Kind) -> Result<AdminResponse, ApiError> {
    let data = gov.read(|overlay, file, _| {
        let mut names: Vec<String> = match kind {
            Kind::Customers => file.customers.iter().map(|c| c.name.clone()).collect(),
            Kind::Teams => file.teams.iter().map(|t| t.name.clone()).collect(),
            Kind::Keys => file.virtual_keys.iter().map(|k| k.name.clone()).collect(),
            Kind::Providers => Vec::new(),
        };
        let extra: Vec<String> = match kind {
            Kind::Customers => overlay.customers.keys().cloned().collect(),
            Kind::Teams => overlay.teams.keys().cloned().collect(),
            Kind::Keys => overlay.keys.keys().cloned().collect(),
            Kind::Providers => Vec::new(),
        };
        for n in extra {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        names
            .iter()
            .filter_map(|n| find(overlay, file, kind, n))
            .collect::<Vec<_>>()
    });
    ok(200, &json!({ "object": "list", "data": data }))
}

fn get(gov: &Governance, kind: Kind, name: &str) -> Result<AdminResponse, ApiError> {
    let found = gov.read(|overlay, file, _| find(overlay, file, kind, name));
    match found {
        Some(v) => ok(200, &v),
        None => Err(not_found(kind, name)),
    }
}

fn random_key() -> Result<String, ApiError> {
    use std::io::Read;
    let mut bytes = [0u8; GENERATED_KEY_RANDOM_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ApiError::internal(format!("no randomness for a new key: {e}")))?;
    Ok(format!("{GENERATED_KEY_PREFIX}{}", hex::encode(bytes)))
}

fn create(gov: &Governance, kind: Kind, body: &[u8]) -> Result<AdminResponse, ApiError> {
    let mut def = parse_object(body)?;
    let name = def
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request("missing_name", "a name is required"))?;
    // A key without a secret gets a generated one, shown once in this reply.
    let mut secret = None;
    if kind == Kind::Keys {
        match def.get("key").and_then(Value::as_str) {
            Some(s) => secret = Some(s.to_string()),
            None if def.get("key_sha256").is_none() => {
                let s = random_key()?;
                def.insert("key".into(), json!(s));
                secret = Some(s);
            }
            None => {}
        }
    }
    let shown = gov.change(|overlay, file, _| {
        if overlay_def(overlay, kind, &name).is_some() || file_def(file, kind, &name).is_some() {
            return Err(ChangeError::Conflict(format!(
                "a {} named {name:?} exists; PATCH it instead",
                kind.singular()
            )));
        }
        overlay_put(overlay, kind, &name, Value::Object(def))?;
        Ok(find(overlay, file, kind, &name).unwrap_or(Value::Null))
    })?;
    let mut shown = shown;
    if let (Some(s), Some(obj)) = (secret, shown.as_object_mut()) {
        obj.insert("key".into(), json!(s));
    }
    ok(201, &shown)
}

fn patch(gov: &Governance, kind: Kind, name: &str, body: &[u8]) -> Result<AdminResponse, ApiError> {
    let changes = parse_object(body)?;
    if changes
        .get("name")
        .is_some_and(|n| n.as_str() != Some(name))
    {
        return Err(ApiError::bad_request(
            "invalid_value",
            "an entity cannot be renamed (its spend history is kept by name)",
        ));
    }
    let shown = gov.change(|overlay, file, _| {
        let current = overlay_def(overlay, kind, name)
            .or_else(|| file_def(file, kind, name))
            .ok_or_else(|| {
                ChangeError::NotFound(format!("no {} named {name:?}", kind.singular()))
            })?;
        let mut def = current.as_object().cloned().unwrap_or_default();
        for (k, v) in changes {
            if v.is_null() {
                def.remove(&k);
            } else {
                if k == "key" || k == "key_sha256" {
                    // A new secret replaces the old one, whichever form it had.
                    def.remove("key");
                    def.remove("key_sha256");
                }
                def.insert(k, v);
            }
        }
        overlay_put(overlay, kind, name, Value::Object(def))?;
        Ok(find(overlay, file, kind, name).unwrap_or(Value::Null))
    })?;
    ok(200, &shown)
}

fn delete(gov: &Governance, kind: Kind, name: &str) -> Result<AdminResponse, ApiError> {
    let reverted = gov.change(|overlay, file, _| {
        let in_file = file_def(file, kind, name).is_some();
        if !overlay_remove(overlay, kind, name) {
            return Err(if in_file {
                ChangeError::Conflict(format!(
                    "the {} {name:?} is defined in the config file; remove it there and reload",
                    kind.singular()
                ))
            } else {
                ChangeError::NotFound(format!("no {} named {name:?}", kind.singular()))
            });
        }
        Ok(in_file)
    })?;
    ok(
        200,
        &json!({
            "name": name,
            "deleted": !reverted,
            "reverted_to_file": reverted,
        }),
    )
}
/// A provider as shown: never its credentials.
fn present_provider(p: &crate::config::file::ProviderSection, overlay: &Overlay) -> Value {
    let overridden = overlay.provider_budgets.get(&p.name);
    let budget = match overridden {
        Some(b) => to_value(b),
        None => to_value(&p.budget),
    };
    json!({
        "name": p.name,
        "kind": p.kind,
        "base_url": p.base_url,
        "models": p.models,
        "budget": budget,
        "source": "file",
        "budget_source": if overridden.is_some() { "api" } else { "file" },
    })
}

fn list_providers(gov: &Governance) -> Result<AdminResponse, ApiError> {
    let data: Vec<Value> = gov.read(|overlay, file, _| {
        file.providers
            .iter()
            .map(|p| present_provider(p, overlay))
            .collect()
    });
    ok(200, &json!({ "object": "list", "data": data }))
}

fn get_provider(gov: &Governance, name: &str) -> Result<AdminResponse, ApiError> {
    gov.read(|overlay, file, _| {
        file.providers
            .iter()
            .find(|p| p.name == name)
            .map(|p| present_provider(p, overlay))
    })
    .map_or_else(|| Err(not_found(Kind::Providers, name)), |v| ok(200, &v))
}

fn patch_provider(gov: &Governance, name: &str, body: &[u8]) -> Result<AdminResponse, ApiError> {
    let changes = parse_object(body)?;
    if changes.keys().any(|k| k != "budget") {
        return Err(ApiError::bad_request(
            "invalid_value",
            "only a provider's budget changes through the admin API; the rest is in the config file",
        ));
    }
    let budget: Option<BudgetSection> = match changes.get("budget") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            serde_json::from_value(v.clone())
                .map_err(|e| ApiError::bad_request("invalid_value", format!("budget: {e}")))?,
        ),
    };
    let shown = gov.change(|overlay, file, _| {
        let p = file
            .providers
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| ChangeError::NotFound(format!("no provider named {name:?}")))?;
        overlay.provider_budgets.insert(name.to_string(), budget);
        Ok(present_provider(p, overlay))
    })?;
    ok(200, &shown)
}

/// The query string's parameters, percent-decoded.
fn query_params(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A client-supplied time: unix milliseconds or RFC 3339, within the times
/// bursar represents ([`TIME_MS_MIN`]..=[`TIME_MS_MAX`], 1970 to 9999), so
/// nothing computed from it can overflow.
fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    let t = v
        .parse::<i64>()
        .ok()
        .or_else(|| crate::budget::period::parse_rfc3339_ms(v))
        .ok_or_else(|| bad(format!("{name}: {v:?} is not an RFC 3339 time or unix ms")))?;
    if !(TIME_MS_MIN..=TIME_MS_MAX).contains(&t) {
        return Err(bad(format!(
            "{name}: {v:?} is outside the times bursar keeps \
             ({TIME_MS_MIN} to {TIME_MS_MAX} unix ms: 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z)"
        )));
    }
    Ok(t)
}

fn time_param(params: &[(String, String)], name: &str) -> Result<Option<i64>, ApiError> {
    param(params, name).map(|v| parse_time(name, v)).transpose()
}

/// Refuses an empty or backwards range `[from, to)`.
fn check_range(from: i64, to: i64) -> Result<(), ApiError> {
    if from >= to {
        return Err(bad(format!(
            "from ({}) must be before to ({}): the range is [from, to)",
            crate::budget::period::format_rfc3339_ms(from),
            crate::budget::period::format_rfc3339_ms(to)
        )));
    }
    Ok(())
}

/// How many buckets of `width_ms` the range `[from, to)` touches (aligned to
/// the epoch, as the stores bucket); `None` on overflow or a bad width.
fn buckets_in_range(from: i64, to: i64, width_ms: i64) -> Option<i64> {
    if width_ms <= 0 || from >= to {
        return None;
    }
    let last = to.checked_sub(1)?.checked_div_euclid(width_ms)?;
    let first = from.checked_div_euclid(width_ms)?;
    last.checked_sub(first)?.checked_add(1)
}

/// A request log query's failure as the client sees it.
fn log_query_error(e: LogQueryError) -> ApiError {
    use crate::reqlog::{QueryRefused, StoreError};
    match e {
        LogQueryError::Off => ApiError::not_found(
            "log_disabled",
            "the request log is off ([log] sink = \"off\")",
        ),
        LogQueryError::Refused(QueryRefused::Busy) => {
            let mut e = ApiError::service_unavailable(format!(
                "the request log is busy: {} queries are waiting; try again shortly",
                crate::reqlog::LOG_QUERIES_QUEUED_MAX
            ));
            e.code = "log_queries_busy";
            e.retry_after_secs = Some(LOG_QUERIES_BUSY_RETRY_AFTER_SECS);
            e
        }
        // The answer would pass its bound: the client's range is too wide.
        LogQueryError::Store(StoreError::TooLarge(m)) => {
            bad(format!("the answer would be too large: {m}"))
        }
        LogQueryError::Store(e) => {
            ApiError::service_unavailable(format!("the request log is unavailable: {e}"))
        }
        e @ (LogQueryError::Refused(QueryRefused::Gone) | LogQueryError::Start(_)) => {
            ApiError::service_unavailable(format!("the request log is unavailable: {e}"))
        }
    }
}

/// `GET /admin/logs`: the request log, newest first, filtered and paged.
async fn logs(gov: &Governance, query: Option<&str>) -> Result<AdminResponse, ApiError> {
    let params = query_params(query);
    let mut filter = crate::reqlog::LogFilter::default();
    for (k, v) in &params {
        match k.as_str() {
            "key" => filter.key = Some(v.clone()),
            "team" => filter.team = Some(v.clone()),
            "customer" => filter.customer = Some(v.clone()),
            "provider" => filter.provider = Some(v.clone()),
            "model" => filter.model = Some(v.clone()),
            "status" => {
                filter.status = Some(
                    v.parse::<u16>()
                        .ok()
                        .filter(|s| (LOG_QUERY_STATUS_MIN..=LOG_QUERY_STATUS_MAX).contains(s))
                        .ok_or_else(|| {
                            bad(format!(
                                "status: {v:?} is not an HTTP status \
                                 ({LOG_QUERY_STATUS_MIN} to {LOG_QUERY_STATUS_MAX})"
                            ))
                        })?,
                )
            }
            "tag" => {
                let (tk, tv) = v
                    .split_once('=')
                    .ok_or_else(|| bad("tag: use tag=key=value"))?;
                filter.tag = Some((tk.to_string(), tv.to_string()));
            }
            "limit" => {
                filter.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=LOG_QUERY_LIMIT_MAX).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "limit: {v:?} is not a whole number from 1 to {LOG_QUERY_LIMIT_MAX}"
                        ))
                    })?;
            }
            "before" => {
                let (t, id) = v
                    .split_once(':')
                    .ok_or_else(|| bad("before: use the `next` value of the previous page"))?;
                let time_ms = t
                    .parse::<i64>()
                    .ok()
                    .filter(|t| (TIME_MS_MIN..=TIME_MS_MAX).contains(t))
                    .ok_or_else(|| {
                        bad("before: not a cursor; use the `next` value of the previous page")
                    })?;
                filter.before = Some(crate::reqlog::LogCursor {
                    time_ms,
                    id: id.to_string(),
                });
            }
            "from" | "to" => {}
            other => return Err(bad(format!("unknown parameter {other:?}"))),
        }
    }
    filter.from_ms = time_param(&params, "from")?;
    filter.to_ms = time_param(&params, "to")?;
    if let (Some(from), Some(to)) = (filter.from_ms, filter.to_ms) {
        check_range(from, to)?;
    }
    let page = gov
        .query_log(move |store| store.query_log_page(&filter))
        .await
        .map_err(log_query_error)?;
    // A page may end short of `limit` with a `next`: it stopped at its scan
    // bound (reqlog::LOG_QUERY_SCAN_ROWS_MAX); keep paging while `next` is set.
    let next = page.next.map(|c| format!("{}:{}", c.time_ms, c.id));
    let data: Vec<Value> = page
        .rows
        .iter()
        .map(crate::reqlog::LogRow::to_json)
        .collect();
    ok(
        200,
        &json!({ "object": "list", "data": data, "next": next }),
    )
}

/// `GET /admin/logs/<id>`: one request's row, or a 404.
async fn log_row(gov: &Governance, id: &str) -> Result<AdminResponse, ApiError> {
    let id = super::targets::percent_decode(id)?;
    if id.is_empty() || id.len() > LOG_ROW_ID_BYTES_MAX {
        return Err(bad(format!(
            "a request id is 1 to {LOG_ROW_ID_BYTES_MAX} bytes"
        )));
    }
    let wanted = id.clone();
    let row = gov
        .query_log(move |store| store.log_by_id(&wanted))
        .await
        .map_err(log_query_error)?;
    match row {
        Some(row) => ok(200, &row.to_json()),
        None => Err(ApiError::not_found(
            "not_found",
            format!("no request {id:?} in the request log"),
        )),
    }
}

/// `GET /admin/spend/series` (bucketed) and `/admin/spend/totals`.
async fn series(
    gov: &Governance,
    query: Option<&str>,
    bucketed: bool,
) -> Result<AdminResponse, ApiError> {
    use crate::reqlog::{Bucket, GroupBy};
    let params = query_params(query);
    let group = param(&params, "group_by").unwrap_or("key");
    let group_by = match group {
        "key" => GroupBy::Key,
        "team" => GroupBy::Team,
        "customer" => GroupBy::Customer,
        "provider" => GroupBy::Provider,
        "model" => GroupBy::Model,
        "tags" => GroupBy::Tags,
        "none" => GroupBy::None,
        "tag" => GroupBy::Tag(
            param(&params, "tag")
                .ok_or_else(|| bad("group_by=tag needs tag=<key>"))?
                .to_string(),
        ),
        other => match other.strip_prefix("tag:") {
            Some(t) if !t.is_empty() => GroupBy::Tag(t.to_string()),
            _ => {
                return Err(bad(format!(
                "group_by {other:?}: use key, team, customer, provider, model, tag, tags or none"
            )))
            }
        },
    };
    // Without `to`: up to now (inclusive). Without `from`: the
    // SPEND_RANGE_DEFAULT_MS before `to`, or from the epoch if that is less.
    let to = match time_param(&params, "to")? {
        Some(t) => t,
        None => crate::ratelimit::now_ms()
            .clamp(TIME_MS_MIN, TIME_MS_MAX)
            .saturating_add(1),
    };
    let from = match time_param(&params, "from")? {
        Some(f) => f,
        None => to
            .checked_sub(SPEND_RANGE_DEFAULT_MS)
            .map_or(TIME_MS_MIN, |f| f.max(TIME_MS_MIN)),
    };
    check_range(from, to)?;
    // Only the rows of one key, team, customer or model (a spend report's
    // scope; a key's spend on one model: key= and model=).
    let tag = param(&params, "tag")
        .filter(|_| group != "tag")
        .map(|v| {
            v.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| bad("tag: use tag=key=value"))
        })
        .transpose()?;
    let filter = crate::reqlog::SpendFilter {
        key: param(&params, "key").map(str::to_string),
        team: param(&params, "team").map(str::to_string),
        customer: param(&params, "customer").map(str::to_string),
        model: param(&params, "model").map(str::to_string),
        provider: param(&params, "provider").map(str::to_string),
        tag: tag.clone(),
    };
    let mut range = json!({
        "from": crate::budget::period::format_rfc3339_ms(from),
        "to": crate::budget::period::format_rfc3339_ms(to),
        "group_by": group,
    });
    for (name, value) in [
        ("key", &filter.key),
        ("team", &filter.team),
        ("customer", &filter.customer),
        ("model", &filter.model),
        ("provider", &filter.provider),
    ] {
        if let Some(v) = value {
            range[name] = json!(v);
        }
    }
    if let Some((k, v)) = &tag {
        range["tag"] = json!(format!("{k}={v}"));
    }
    let usd = |p: i128| crate::reqlog::row::format_usd(p);
    if !bucketed {
        // `order=cost&limit=N`: the top N groups by cost, most first (ties
        // by name); without them every group, in the store's order.
        let order_by_cost = match param(&params, "order") {
            None => false,
            Some("cost") => true,
            Some(other) => return Err(bad(format!("order {other:?}: use order=cost"))),
        };
        let limit = count_param(&params, "limit", SPEND_GROUPS_LIMIT_MAX)?;
        let totals = gov
            .query_log(move |store| match (order_by_cost, limit) {
                (true, Some(n)) => {
                    crate::reqlog::top::spend_totals_top(store, &group_by, &filter, from, to, n)
                }
                _ => {
                    let mut totals = store.spend_totals_where(&group_by, &filter, from, to)?;
                    if order_by_cost {
                        totals.sort_by(crate::reqlog::top::by_cost);
                    }
                    if let Some(n) = limit {
                        totals.truncate(n);
                    }
                    Ok(totals)
                }
            })
            .await
            .map_err(log_query_error)?;
        let data: Vec<Value> = totals
            .iter()
            .map(|t| {
                json!({"group": t.group, "requests": t.requests, "errors": t.errors,
                       "cache_hits": t.cache_hits, "cost_usd": usd(t.cost_picodollars),
                       "avoided_usd": usd(t.avoided_picodollars),
                       "prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens})
            })
            .collect();
        return ok(
            200,
            &json!({ "object": "list", "range": range, "data": data }),
        );
    }
    let bucket = match param(&params, "bucket").unwrap_or("hour") {
        "minute" => Bucket::Minute,
        "hour" => Bucket::Hour,
        "day" => Bucket::Day,
        other => return Err(bad(format!("bucket {other:?}: use minute, hour or day"))),
    };
    let bucket_name = param(&params, "bucket").unwrap_or("hour");
    let points_max = i64::try_from(LOG_SERIES_POINTS_MAX).unwrap_or(i64::MAX);
    match buckets_in_range(from, to, bucket.ms()) {
        Some(n) if n <= points_max => {}
        n => {
            return Err(bad(format!(
                "the range holds {} {bucket_name} buckets, more than a series returns \
                 ({LOG_SERIES_POINTS_MAX}); use a coarser bucket or a narrower range",
                n.map_or_else(|| "too many".to_string(), |n| n.to_string())
            )))
        }
    }
    let top = count_param(&params, "top", SPEND_GROUPS_LIMIT_MAX)?;
    let points = gov
        .query_log(move |store| match top {
            Some(n) => crate::reqlog::top::spend_series_top(
                store,
                &group_by,
                &filter,
                bucket,
                from,
                to,
                n,
                SERIES_OTHER_GROUP,
            ),
            None => store.spend_series_where(&group_by, &filter, bucket, from, to),
        })
        .await
        .map_err(log_query_error)?;
    let data: Vec<Value> = points
        .iter()
        .map(|p| {
            json!({"bucket_start": crate::budget::period::format_rfc3339_ms(p.bucket_start_ms),
                   "group": p.group, "requests": p.requests, "errors": p.errors,
                   "cache_hits": p.cache_hits, "cost_usd": usd(p.cost_picodollars),
                   "avoided_usd": usd(p.avoided_picodollars),
                   "prompt_tokens": p.prompt_tokens, "completion_tokens": p.completion_tokens})
        })
        .collect();
    ok(
        200,
        &json!({ "object": "list", "range": range, "bucket": bucket_name, "data": data }),
    )
}

/// A whole-number parameter from 1 to `max`, if given.
fn count_param(
    params: &[(String, String)],
    name: &str,
    max: usize,
) -> Result<Option<usize>, ApiError> {
    param(params, name)
        .map(|v| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    bad(format!(
                        "{name}: {v:?} is not a whole number from 1 to {max}"
                    ))
                })
        })
        .transpose()
}

/// The group of a series' points folded together beyond its `top` groups.
pub const SERIES_OTHER_GROUP: &str = "(other)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_outside_what_bursar_keeps_are_refused_whatever_their_form() {
        assert_eq!(parse_time("to", "0"), Ok(0));
        assert_eq!(parse_time("to", "253402300799999"), Ok(TIME_MS_MAX));
        assert_eq!(
            parse_time("to", "2026-11-27T00:00:00Z"),
            Ok(1_795_737_600_000)
        );
        for v in [
            "-1",
            "253402300800000",
            &i64::MIN.to_string(),
            &i64::MAX.to_string(),
            "99999999999999999999",
            "0000-01-01T00:00:00Z",
            "1970-01-01T00:00:00+00:01",
            "yesterday",
            "",
        ] {
            let e = parse_time("from", v).unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid_value"), "{v}");
            assert!(e.message.starts_with("from: "), "{v}: {}", e.message);
        }
    }

    #[test]
    fn ranges_must_go_forwards() {
        assert!(check_range(0, 1).is_ok());
        assert!(check_range(1, 1).is_err());
        let e = check_range(TIME_MS_MAX, 0).unwrap_err();
        assert!(e.message.contains("must be before to"), "{}", e.message);
    }

    #[test]
    fn buckets_are_counted_exactly_and_never_overflow() {
        let minute = crate::reqlog::Bucket::Minute.ms();
        assert_eq!(buckets_in_range(0, 1, minute), Some(1));
        assert_eq!(buckets_in_range(0, minute, minute), Some(1));
        assert_eq!(buckets_in_range(0, minute + 1, minute), Some(2));
        // A minute's width that straddles a boundary touches two buckets.
        assert_eq!(buckets_in_range(30_000, 90_000, minute), Some(2));
        assert_eq!(buckets_in_range(0, 100_000 * minute, minute), Some(100_000));
        assert_eq!(buckets_in_range(i64::MIN, i64::MAX, 1), None);
        assert!(buckets_in_range(i64::MIN, i64::MAX, minute).is_some_and(|n| n > 0));
        assert_eq!(buckets_in_range(5, 5, minute), None);
        assert_eq!(buckets_in_range(0, 5, 0), None);
        assert_eq!(buckets_in_range(0, 5, -1), None);
    }
}
