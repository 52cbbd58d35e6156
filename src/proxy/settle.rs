//! Phase 5, settle: what a request is charged once its cost is known, for
//! every way a response can end (the provider's usage, the tokenizer's
//! count, or no count at all), and the plan the forward and stream phases
//! carry to it.

use std::time::Instant;

use super::{RequestId, Worker};

/// How a response's tokens are counted.
pub struct MeterPlan<'a> {
    pub protocol: crate::tokens::Protocol,
    /// The gateway asked for usage the client did not: remove that chunk.
    pub strip_usage_chunk: bool,
    pub model: &'a str,
    /// The model's price, `None` when unpriced.
    pub price: Option<&'a crate::prices::Price>,
    /// The rate-limit permit, to record the request's tokens against.
    pub permit: &'a crate::ratelimit::Permit,
    /// The body to send upstream (the client's, or with usage requested).
    pub body: &'a [u8],
    /// The client's body as it came: what a prompt estimate reads (the
    /// gateway's own additions are not prompt).
    pub client_body: &'a [u8],
    /// The request's budget reservation, settled (taken) when its cost is known.
    pub hold: Option<super::books::Hold<'a>>,
    /// The output cap was lowered to this to fit a strict budget.
    pub lowered_cap: Option<u64>,
    /// For the request log: the status answered, when the first response
    /// byte went to the client, and what was charged.
    pub status: u16,
    pub first_byte_at: Option<Instant>,
    pub charged: Option<Charged>,
    /// For the response's routing headers: the provider answering (its
    /// header line, made once), the attempt this is (1 for the first), and
    /// the fallback model used instead of the one asked for.
    pub provider: &'a [u8],
    pub attempts: u32,
    pub downgraded_to: Option<&'a str>,
    /// Where a successful answer with the provider's usage is stored in the
    /// response cache (`None`: not cacheable, or not to be stored).
    pub cache: Option<&'a crate::cache::Store>,
}

/// What a request was charged, for the request log.
#[derive(Debug, Clone, Copy)]
pub struct Charged {
    pub usage: crate::tokens::Usage,
    pub cost: crate::money::Money,
    pub estimated: bool,
}

/// Settles the request's cost: `usage` priced at the model's price, or, with
/// no usage, the reservation's worst case marked estimated (a bound, never
/// $0). Unpriced models (admitted by `[pricing] unpriced = "allow"`) are
/// released uncharged and counted. `None` when nothing was charged.
pub async fn charge(
    w: &Worker,
    plan: &mut MeterPlan<'_>,
    rid: &RequestId,
    usage: Option<crate::tokens::Usage>,
    estimated: bool,
) -> Option<super::books::Settled> {
    let hold = plan.hold.take()?;
    let Some(price) = plan.price else {
        // Counted by `bursar_unpriced_responses_total` where the usage is read.
        drop(hold);
        return None;
    };
    let (cost, estimated) = match usage {
        Some(u) => match price.cost(&crate::prices::TokenCounts::from(&u)) {
            Some(c) => (c, estimated),
            None => (hold.worst(), true),
        },
        None => (hold.worst(), true),
    };
    plan.charged = Some(Charged {
        usage: usage.unwrap_or_default(),
        cost,
        estimated,
    });
    Some(w.books.settle(hold, rid.as_u128(), cost, estimated).await)
}

/// Adds the hidden reasoning a stream's visible text cannot show, when the
/// gateway counted the completion itself (the provider's usage never came:
/// the stream was cut or abandoned, or the provider omits usage) and the
/// model bills reasoning it does not stream ([`Price::hidden_reasoning`]).
///
/// How much it reasoned is unknown; what bounds it is the output the request
/// allowed (`output_tokens_max`: its cap, as sent upstream or reserved, times
/// the outputs billed), of which the visible text used its share. That bound
/// is charged, as reasoning, marked estimated: the books may then say more
/// than the invoice, never less. A request that turned reasoning off
/// (`reasoning_effort: "none"`, or `reasoning: {"effort": "none"}`) is charged
/// none.
///
/// [`Price::hidden_reasoning`]: crate::prices::Price::hidden_reasoning
pub fn add_hidden_reasoning(
    o: &mut crate::tokens::MeterOutcome,
    price: Option<&crate::prices::Price>,
    output_tokens_max: u64,
    body: &[u8],
) {
    if !price.is_some_and(|p| p.hidden_reasoning)
        || o.completion_source != crate::tokens::UsageSource::Estimated
        || output_tokens_max <= o.usage.completion_tokens
        || reasoning_off(body)
    {
        return;
    }
    o.usage.reasoning_tokens = output_tokens_max - o.usage.completion_tokens;
    o.usage.completion_tokens = output_tokens_max;
    o.estimated = true;
}

/// Whether the request body turned reasoning off: chat's
/// `"reasoning_effort":"none"` or the Responses API's
/// `"reasoning":{"effort":"none"}`. Read only on the rare path of a stream
/// without usage; a name it cannot read (escaped) leaves reasoning on,
/// which charges more, not less.
fn reasoning_off(body: &[u8]) -> bool {
    use crate::tokens::json;
    let none = |(s, e): (usize, usize)| &body[s..e] == b"\"none\"";
    json::top_member(body, b"reasoning_effort").is_some_and(none)
        || json::top_member(body, b"reasoning")
            .filter(|&(s, _)| body[s] == b'{')
            .and_then(|(s, _)| json::member(body, s, b"effort"))
            .is_some_and(none)
}
