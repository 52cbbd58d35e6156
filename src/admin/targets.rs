//! What the admin API names and what it does to any of them: the kinds of
//! its entity routes ([`Kind`]), a budget a spend view, reset or top-up
//! names ([`Target`]: an entity, a budget on a model or a tag, an owner's
//! budget on a model), its id in the books, its spend view, and the small
//! answers every route gives. The routes (`api`) and the budgets beside the
//! organisation chart (`budgets_api`) both import it; it imports neither,
//! so the arrows run one way.

use serde_json::{json, Map, Value};

use super::{adjustment_key, ChangeError, Governance};
use crate::error::ApiError;
use crate::ledger::{Command, EntityKind, EntityView, Reply};
use crate::money::Money;

/// An answer: status and JSON body.
pub type AdminResponse = (u16, Vec<u8>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Customers,
    Teams,
    Keys,
    Providers,
}

impl Kind {
    pub(super) fn parse(s: &str) -> Option<Kind> {
        match s {
            "customers" => Some(Kind::Customers),
            "teams" => Some(Kind::Teams),
            "keys" | "virtual_keys" => Some(Kind::Keys),
            "providers" => Some(Kind::Providers),
            _ => None,
        }
    }

    pub(super) fn entity_kind(self) -> EntityKind {
        match self {
            Kind::Customers => EntityKind::Customer,
            Kind::Teams => EntityKind::Team,
            Kind::Keys => EntityKind::Key,
            Kind::Providers => EntityKind::Provider,
        }
    }

    pub(super) fn singular(self) -> &'static str {
        match self {
            Kind::Customers => "customer",
            Kind::Teams => "team",
            Kind::Keys => "virtual key",
            Kind::Providers => "provider",
        }
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> ApiError {
        match e {
            ChangeError::Invalid(m) => ApiError::bad_request("invalid_value", m),
            ChangeError::Conflict(m) => ApiError::conflict(m),
            ChangeError::NotFound(m) => ApiError::not_found("not_found", m),
            ChangeError::Internal(m) => ApiError::internal(m),
            ChangeError::Unavailable(m) => ApiError::service_unavailable(m),
        }
    }
}

pub(super) fn ok(status: u16, v: &Value) -> Result<AdminResponse, ApiError> {
    Ok((status, serde_json::to_vec(v).unwrap_or_default()))
}

pub(super) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "invalid_request_body",
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(
            "invalid_request_body",
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

pub(super) fn not_found(kind: Kind, name: &str) -> ApiError {
    ApiError::not_found(
        "not_found",
        format!("no {} named {name:?}", kind.singular()),
    )
}

/// What a spend view, a reset or a top-up names: a customer, team, key or
/// provider; a gateway-wide budget on a model; a budget on a tag value; or a
/// customer's, team's or key's budget on a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    Entity(Kind, String),
    /// `[[model_budgets]]`, by model.
    Model(String),
    /// `[[tag_budgets]]`, by `key=value`.
    Tag(String),
    /// An owner's (`Customers`, `Teams` or `Keys`) budget on a model.
    OwnerModel(Kind, String, String),
}

impl Target {
    pub(super) fn entity_kind(&self) -> EntityKind {
        match self {
            Target::Entity(kind, _) => kind.entity_kind(),
            Target::Model(_) => EntityKind::Model,
            Target::Tag(_) => EntityKind::Tag,
            Target::OwnerModel(Kind::Customers, ..) => EntityKind::CustomerModel,
            Target::OwnerModel(Kind::Teams, ..) => EntityKind::TeamModel,
            Target::OwnerModel(Kind::Keys | Kind::Providers, ..) => EntityKind::KeyModel,
        }
    }

    /// Its name in the books and in the spend view.
    pub(super) fn books_name(&self) -> String {
        match self {
            Target::Entity(_, name) | Target::Model(name) | Target::Tag(name) => name.clone(),
            Target::OwnerModel(_, owner, model) => {
                crate::config::dimensions::owner_model_name(owner, model)
            }
        }
    }

    /// Whether the config in force has it (with a budget, for the budgets
    /// on models and tags).
    pub(super) fn exists(&self, config: &crate::config::Config) -> bool {
        !matches!(self, Target::OwnerModel(Kind::Providers, ..))
            && config.has_entity(self.entity_kind(), &self.books_name())
    }

    pub(super) fn not_found(&self) -> ApiError {
        match self {
            Target::Entity(kind, name) => not_found(*kind, name),
            Target::Model(model) => {
                ApiError::not_found("not_found", format!("no budget on model {model:?}"))
            }
            Target::Tag(tag) => {
                ApiError::not_found("not_found", format!("no budget on tag {tag:?}"))
            }
            Target::OwnerModel(kind, owner, model) => ApiError::not_found(
                "not_found",
                format!(
                    "no {} named {owner:?} with a budget on model {model:?}",
                    kind.singular()
                ),
            ),
        }
    }
}

/// The ledger id of `target`, if the config in force has it.
pub(super) fn entity_id(
    gov: &Governance,
    target: &Target,
) -> Result<crate::ledger::EntityId, ApiError> {
    let exists = gov.read(|_, _, config| target.exists(config));
    if !exists {
        return Err(target.not_found());
    }
    gov.entities
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .lookup(target.entity_kind(), &target.books_name())
        .ok_or_else(|| target.not_found())
}

pub(super) fn ledger_error(e: crate::books::thread::BooksError) -> ApiError {
    ApiError::service_unavailable(format!("the ledger is unavailable: {e}"))
}

/// Starts the budget's spend over now; answers the spend view after. In
/// cluster mode every node must start over at the same instant: the reset
/// goes into the cluster's definitions ([`super::BudgetAdjustment`]), which every
/// node applies to its books (this one before answering).
pub(super) fn reset(gov: &Governance, target: &Target) -> Result<AdminResponse, ApiError> {
    let id = entity_id(gov, target)?;
    if gov.is_shared() {
        let view = shared_budget_view(gov, target, id)?;
        let key = adjustment_key(target.entity_kind(), &target.books_name());
        let now = crate::ratelimit::now_ms();
        gov.change(|overlay, _, _| {
            let adj = overlay.budget_adjustments.entry(key).or_default();
            // Later than any reset before it and than the period's start,
            // so every node applies it (once).
            let at = now
                .max(adj.reset_at_ms.map_or(0, |t| t + 1))
                .max(view.period.start_ms + 1);
            adj.reset_at_ms = Some(at);
            Ok(())
        })?;
        return spend(gov, target);
    }
    match gov
        .books
        .apply(Command::Reset { entity: id })
        .map_err(ledger_error)?
    {
        Reply::Rejected(e) => Err(ApiError::bad_request("invalid_value", e.to_string())),
        _ => spend(gov, target),
    }
}

/// Cluster mode: the entity's view, which must have a budget (only
/// budgets are shared: an entity without one keeps each node's spend).
fn shared_budget_view(
    gov: &Governance,
    target: &Target,
    id: crate::ledger::EntityId,
) -> Result<EntityView, ApiError> {
    match gov.books.view(id).map_err(ledger_error)? {
        Some(v) if v.budget.is_some() => Ok(v),
        _ => Err(ApiError::bad_request(
            "invalid_value",
            format!(
                "{} has no budget: in cluster mode only budgets are shared, so there is \
                 nothing to reset or top up on every node",
                target.books_name()
            ),
        )),
    }
}

/// Adds `{"amount_usd": "5"}` to a prepaid budget; answers the spend view
/// after (in cluster mode through the cluster's definitions, as a reset).
pub(super) fn top_up(
    gov: &Governance,
    target: &Target,
    body: &[u8],
) -> Result<AdminResponse, ApiError> {
    let id = entity_id(gov, target)?;
    let obj = parse_object(body)?;
    let amount = obj
        .get("amount_usd")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_value", "amount_usd (a decimal string) is required")
        })
        .and_then(|s| {
            Money::parse_usd(s)
                .map_err(|e| ApiError::bad_request("invalid_value", format!("amount_usd: {e}")))
        })?;
    if gov.is_shared() {
        let view = shared_budget_view(gov, target, id)?;
        if !view.budget.is_some_and(|b| b.is_prepaid()) {
            return Err(ApiError::bad_request(
                "invalid_value",
                crate::ledger::CommandError::TopUpNotPrepaid(id).to_string(),
            ));
        }
        if !amount.is_positive() {
            return Err(ApiError::bad_request(
                "invalid_value",
                crate::ledger::CommandError::TopUpNotPositive.to_string(),
            ));
        }
        let key = adjustment_key(target.entity_kind(), &target.books_name());
        gov.change(|overlay, _, _| {
            let adj = overlay.budget_adjustments.entry(key).or_default();
            // On top of what this node has: its books may hold credit from
            // before it joined the cluster.
            let base = adj.topup_usd.unwrap_or(Money::ZERO).max(view.topup);
            let total = base.checked_add(amount).ok_or_else(|| {
                ChangeError::Invalid(crate::ledger::CommandError::Overflow(id).to_string())
            })?;
            adj.topup_usd = Some(total);
            Ok(())
        })?;
        return spend(gov, target);
    }
    match gov
        .books
        .apply(Command::TopUp { entity: id, amount })
        .map_err(ledger_error)?
    {
        Reply::Rejected(e) => Err(ApiError::bad_request("invalid_value", e.to_string())),
        _ => spend(gov, target),
    }
}

/// The spend view of an entity: exact decimal strings, `null` where a field
/// does not apply (no limit, no reset). The budget's fields are
/// [`budget_fields`](crate::books::view::budget_fields), the ones a key
/// holder's usage view shows too; the rest are the operator's.
pub fn spend_json(kind_name: &str, name: &str, v: &EntityView) -> Value {
    let money = crate::books::view::money;
    let mut m = crate::books::view::budget_fields(v);
    m.insert("object".into(), json!("spend"));
    m.insert("kind".into(), json!(kind_name));
    m.insert("name".into(), json!(name));
    m.insert(
        "soft_limit_usd".into(),
        json!(v.budget.and_then(|b| b.soft_limit).map(money)),
    );
    m.insert("topup_usd".into(), money(v.topup));
    m.insert("leased_usd".into(), money(v.leased));
    m.insert("overshoot_usd".into(), money(v.overshoot));
    m.insert("lifetime_spent_usd".into(), money(v.lifetime_spent));
    Value::Object(m)
}

/// The spend view of `target` (see [`spend_json`]); in cluster mode, the
/// cluster's (see [`cluster_view`]).
pub(super) fn spend(gov: &Governance, target: &Target) -> Result<AdminResponse, ApiError> {
    let id = entity_id(gov, target)?;
    let mut view = gov
        .books
        .view(id)
        .map_err(ledger_error)?
        .ok_or_else(|| target.not_found())?;
    let kind_name = crate::books::registry::kind_str(target.entity_kind());
    let name = target.books_name();
    let cluster = gov
        .cluster_spend(&[(target.entity_kind(), &name, &view)])
        .pop()
        .flatten();
    let node_spent = view.node_spent;
    if let Some(c) = &cluster {
        cluster_view(&mut view, c);
    }
    let mut v = spend_json(kind_name, &name, &view);
    if let (Some(c), Value::Object(m)) = (&cluster, &mut v) {
        cluster_fields(m, node_spent, c);
    }
    ok(200, &v)
}

/// Cluster mode: `view` as the cluster sees it: spent is every node's
/// pushed spend (or this node's own, if that is more: its last charges may
/// not be pushed yet), remaining and overshoot follow.
pub fn cluster_view(view: &mut EntityView, c: &crate::admin::ClusterSpend) {
    let spent = c.spent.max(view.spent);
    view.spent = spent;
    if let Some(limit) = view.limit_effective {
        let rest = limit.picodollars() - spent.picodollars();
        view.remaining = Money::from_picodollars(rest.max(0));
        view.overshoot = Money::from_picodollars((-rest).max(0)).unwrap_or(Money::MAX);
    }
}

/// Cluster mode's fields of a spend view: this node's share, and the
/// cluster's leases and held money.
pub fn cluster_fields(
    m: &mut serde_json::Map<String, Value>,
    node_spent: Money,
    c: &crate::admin::ClusterSpend,
) {
    let money = crate::books::view::money;
    m.insert("node_spent_usd".into(), money(node_spent));
    m.insert(
        "cluster".into(),
        json!({
            "spent_usd": money(c.spent),
            "leased_usd": money(c.leased),
            "held_usd": money(c.held),
            "nodes": c.nodes,
        }),
    );
}

/// Path segments joined with `/` and percent-decoded: a model name (which
/// may hold `/`, given as is or as `%2F`) or a tag `key=value`.
pub(super) fn path_name(segments: &[&str]) -> Result<String, ApiError> {
    percent_decode(&segments.join("/"))
}

/// `%XX` escapes decoded; anything else is kept as it is. A `%` not
/// followed by two hex digits, or bytes that are not UTF-8, are a 400.
pub(super) fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let digit = |j: usize| bytes.get(j).and_then(|b| char::from(*b).to_digit(16));
            let (Some(hi), Some(lo)) = (digit(i + 1), digit(i + 2)) else {
                return Err(bad(format!("{s:?}: '%' must start an escape like %2F")));
            };
            // Two hex digits: at most 0xFF.
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(u8::MAX));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(format!("{s:?}: the decoded name is not UTF-8")))
}

pub(super) fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_value", message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Alignment, Budget, Mode, Period, Reset};

    /// The admin spend view, every field pinned: the budget's part comes
    /// from `books::view` (shared with the usage route), the rest is the
    /// operator's.
    #[test]
    fn spend_json_keeps_every_field() {
        let usd = |s| Money::parse_usd(s).unwrap();
        let v = EntityView {
            id: crate::ledger::EntityId(3),
            kind: EntityKind::Key,
            budget: Some(Budget {
                limit: usd("1"),
                reset: Some(Reset::parse("1d").unwrap()),
                alignment: Alignment::Rolling,
                mode: Mode::Strict,
                soft_limit: Some(usd("0.5")),
            }),
            period: Period {
                start_ms: 0,
                end_ms: 86_400_000,
            },
            epoch: 0,
            spent: usd("0.25"),
            node_spent: usd("0.25"),
            leased: usd("0.01"),
            topup: usd("0"),
            lifetime_spent: usd("2.25"),
            limit_effective: Some(usd("1")),
            remaining: Some(usd("0.75")),
            overshoot: usd("0"),
            excess: usd("0"),
            blocked: false,
        };
        assert_eq!(
            spend_json("key", "k", &v),
            json!({
                "object": "spend",
                "kind": "key",
                "name": "k",
                "spent_usd": "0.25",
                "limit_usd": "1",
                "remaining_usd": "0.75",
                "reset_at": "1970-01-02T00:00:00Z",
                "period_start": "1970-01-01T00:00:00Z",
                "mode": "strict",
                "soft_limit_usd": "0.5",
                "topup_usd": "0",
                "leased_usd": "0.01",
                "overshoot_usd": "0",
                "lifetime_spent_usd": "2.25",
                "blocked": false,
            })
        );
        // No budget: its fields are null, the spend is still there.
        let none = EntityView {
            budget: None,
            limit_effective: None,
            remaining: None,
            ..v
        };
        let j = spend_json("key", "k", &none);
        for f in [
            "limit_usd",
            "remaining_usd",
            "reset_at",
            "mode",
            "soft_limit_usd",
        ] {
            assert_eq!(j[f], Value::Null, "{f}");
        }
        assert_eq!(j["spent_usd"], "0.25");
    }
}
