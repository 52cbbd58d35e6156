//! Phase 2b and 5, the books on the worker: reserve a request's worst case
//! before it is forwarded, settle its actual cost when the response ends.
//!
//! Admission runs against the worker's own [`LeaseShard`] (no lock, no
//! message) and asks the ledger thread for lease only when a strict level's
//! free lease does not cover the worst case: on a cold shard or near the
//! limit. Settling publishes the charges in the worker's memory-mapped ring
//! before the response's last bytes are written, so a charge the client saw
//! survives SIGKILL (docs/decisions/0003).
//!
//! A [`Hold`] owns a request's reservation. Settle it or let it drop: a hold
//! dropped unsettled (the request failed before anything was generated)
//! releases its reservation, so no path can strand reserved budget.

use std::cell::RefCell;
use std::time::Duration;

use crate::books::shard::{Admission, LeaseShard, Reservation};
use crate::books::thread::WorkerLink;
use crate::books::PushError;
use crate::budget::Mode;
use crate::catalog::Level;
use crate::error::ApiError;
use crate::ledger::{Charges, Command, EntityId, EntityView, Reply};
use crate::money::Money;
use crate::prices::Price;

/// Most levels one request is charged to: key, team, customer, provider;
/// the model gateway-wide and the key's, team's and customer's budgets on
/// it; one tag budget per budgeted tag key.
pub const LEVELS_MAX: usize = crate::ledger::messages::CHARGES_PER_SETTLE_MAX;
/// Most lease requests one admission makes before it gives up: each level
/// needs at most one grant (a cold worker asks once per strict level), and
/// as many again are headroom for concurrent admissions taking what was
/// granted first. It must grow with [`LEVELS_MAX`]: at 8 rounds a cold
/// request on more than 8 strict levels was refused with a 402 while every
/// budget had room.
pub const ADMIT_ROUNDS_MAX: u32 = 2 * LEVELS_MAX as u32;
const _: () = assert!(ADMIT_ROUNDS_MAX as usize >= 2 * LEVELS_MAX);
/// How long a refused admission waits once for other workers to hand back
/// the free lease they hold (they do on the ledger's Blocked broadcast)
/// before it retries and, failing again, answers 402.
pub const LEASE_RETRY_WAIT: Duration = Duration::from_millis(10);
/// Longest wait for the ledger thread's answer to a lease request.
pub const LEDGER_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// While the settle ring is full (the ledger thread is behind), retry every...
pub const RING_FULL_RETRY: Duration = Duration::from_millis(1);
/// ... for at most this long, then send the settle over the command channel
/// instead (it is still journaled, only without the ring's crash safety).
pub const RING_FULL_WAIT_MAX: Duration = Duration::from_secs(10);
/// Degrading a request below this many output tokens helps nobody: refuse.
pub const DEGRADE_OUTPUT_TOKENS_MIN: u64 = 16;

/// The levels of one request, in a fixed array (no allocation per request).
#[derive(Debug, Clone, Copy)]
pub struct Levels {
    items: [(EntityId, Mode); LEVELS_MAX],
    len: u8,
}

impl Levels {
    /// The levels of `chain`, each once, in order; `None` when there are
    /// more than [`LEVELS_MAX`]. The config bounds a request's levels (four
    /// of the organisation, four of the model, one per budgeted tag key), so
    /// `None` is a bug, and the caller refuses the request rather than
    /// admit it without a level.
    pub fn of<'l>(chain: impl IntoIterator<Item = &'l Level>) -> Option<Levels> {
        let mut levels = Levels {
            items: [(EntityId(0), Mode::Soft); LEVELS_MAX],
            len: 0,
        };
        for level in chain {
            let len = usize::from(levels.len);
            if levels.items[..len].iter().any(|&(id, _)| id == level.id) {
                continue;
            }
            *levels.items.get_mut(len)? = (level.id, level.mode);
            levels.len += 1;
        }
        Some(levels)
    }

    pub fn as_slice(&self) -> &[(EntityId, Mode)] {
        &self.items[..usize::from(self.len)]
    }

    pub fn has_strict(&self) -> bool {
        self.as_slice().iter().any(|&(_, m)| m == Mode::Strict)
    }
}

/// The tag budgets a request meets: one per budgeted tag key at most, so
/// at most [`TAG_BUDGET_KEYS_MAX`](crate::ledger::messages::TAG_BUDGET_KEYS_MAX).
#[derive(Debug, Clone, Copy, Default)]
pub struct TagLevels<'c> {
    items: [Option<&'c Level>; crate::ledger::messages::TAG_BUDGET_KEYS_MAX],
}

impl<'c> TagLevels<'c> {
    /// The budgets on the request's `tags` (sorted, unique keys).
    pub fn of(catalog: &'c crate::catalog::Catalog, tags: &[(String, String)]) -> TagLevels<'c> {
        let mut out = TagLevels::default();
        if !catalog.has_tag_budgets() {
            return out;
        }
        let mut n = 0;
        for (k, v) in tags {
            if let Some(l) = catalog.tag_level(k, v) {
                // Tags have unique keys and budgets name at most
                // TAG_BUDGET_KEYS_MAX keys: `n` stays in bounds.
                if let Some(slot) = out.items.get_mut(n) {
                    *slot = Some(l);
                    n += 1;
                }
            }
        }
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = &'c Level> + '_ {
        self.items.iter().map_while(|l| *l)
    }
}

/// The worker's side of the books: its ledger link and its lease shard.
pub struct WorkerBooks {
    link: RefCell<WorkerLink>,
    shard: RefCell<LeaseShard>,
}

/// The 503's message while the ledger cannot write its journal.
pub const JOURNAL_DOWN: &str = "the gateway cannot write its books to disk (disk full or an I/O \
     error): no new request is admitted until it can; every charge so far is kept";

/// Why admission refused a request.
#[derive(Debug)]
pub enum Refusal {
    /// A level cannot afford the worst case (402, or degrade).
    Exhausted {
        entity: EntityId,
        /// What the worker believes is left at that level (free lease plus
        /// what the ledger had left to grant), when known.
        available: Option<Money>,
    },
    /// The ledger thread is overloaded or gone (503).
    Unavailable(&'static str),
}

/// A request's reservation. Settle it with [`WorkerBooks::settle`]; dropped
/// unsettled, it is released.
pub struct Hold<'w> {
    books: &'w WorkerBooks,
    reservation: Option<Reservation>,
    /// The output tokens the request may generate in all (its cap, as sent
    /// upstream or assumed, times the outputs billed): what hidden reasoning
    /// is charged at when a stream ends without the provider's usage.
    output_tokens_max: u64,
}

impl Hold<'_> {
    pub fn worst(&self) -> Money {
        self.reservation
            .as_ref()
            .map_or(Money::ZERO, Reservation::worst)
    }

    pub fn output_tokens_max(&self) -> u64 {
        self.output_tokens_max
    }

    /// Records the output bound the reservation was made for.
    pub fn set_output_tokens_max(&mut self, tokens: u64) {
        self.output_tokens_max = tokens;
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.books.shard.borrow_mut().release(r);
        }
    }
}

/// What a settle charged, for the response headers.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    pub charged: Money,
    /// The tightest budget left across the request's levels, as of the
    /// worker's last news from the ledger; `None` when no level has a limit.
    pub remaining: Option<Money>,
}

impl WorkerBooks {
    pub fn new(link: WorkerLink) -> WorkerBooks {
        let shard = LeaseShard::new(link.worker);
        WorkerBooks {
            link: RefCell::new(link),
            shard: RefCell::new(shard),
        }
    }

    /// Resolves once the ledger has posted events (or asked for a resync).
    pub async fn events_posted(&self) {
        std::future::poll_fn(|cx| self.link.borrow().poll_events_posted(cx)).await
    }

    /// Applies the ledger's broadcasts to the shard, handing back free lease
    /// of blocked entities. Cheap when there is nothing (one atomic load).
    pub fn drain_events(&self) {
        let link = self.link.borrow();
        let mut shard = self.shard.borrow_mut();
        if link.resync.swap(false, std::sync::atomic::Ordering::AcqRel) {
            shard.resync();
        }
        while let Ok(event) = link.events.try_recv() {
            if let Some(cmd) = shard.on_event(&event) {
                if let Err(e) = link.tell(cmd) {
                    // The lease stays recorded in the ledger as this worker's;
                    // it is not lost, only unavailable to others until the
                    // next period or a restart.
                    log::warn!("worker {}: cannot return lease: {e}", link.worker);
                }
            }
        }
    }

    /// Reserves `worst` at every strict level of `levels` (soft levels only
    /// check they are not blocked), asking the ledger for lease as needed.
    pub async fn admit(&self, levels: &Levels, worst: Money) -> Result<Hold<'_>, Refusal> {
        if self
            .link
            .borrow()
            .journal_down
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Refusal::Unavailable(JOURNAL_DOWN));
        }
        let mut rounds = 0;
        let mut waited = false;
        loop {
            self.drain_events();
            let outcome = self.shard.borrow_mut().try_admit(levels.as_slice(), worst);
            let refused_at = match outcome {
                Ok(Admission::Admitted(r)) => {
                    return Ok(Hold {
                        books: self,
                        reservation: Some(r),
                        output_tokens_max: 0,
                    })
                }
                Ok(Admission::NeedLease { entity, need }) => {
                    rounds += 1;
                    if rounds > ADMIT_ROUNDS_MAX {
                        entity
                    } else {
                        match self.request_lease(entity, need).await? {
                            true => continue,
                            false => entity,
                        }
                    }
                }
                Ok(Admission::Blocked { entity }) => entity,
                Err(e) => {
                    log::error!("admission refused a well-formed chain: {e}");
                    return Err(Refusal::Unavailable(
                        "the request's budget levels are invalid",
                    ));
                }
            };
            if !waited {
                // Other workers may hold free lease; they return it on the
                // ledger's Blocked broadcast. Give them one chance.
                waited = true;
                monoio::time::sleep(LEASE_RETRY_WAIT).await;
                self.drain_events();
                continue;
            }
            let available = self.available(refused_at);
            return Err(Refusal::Exhausted {
                entity: refused_at,
                available,
            });
        }
    }

    /// Asks the ledger for at least `need` of `entity`; true when granted.
    async fn request_lease(&self, entity: EntityId, need: Money) -> Result<bool, Refusal> {
        let rx = {
            let link = self.link.borrow();
            link.request(Command::LeaseRequest {
                worker: link.worker,
                entity,
                need,
                // The ledger caps a grant at a fair share of what is left
                // (which shrinks near the limit), or `need` if more.
                want: Money::MAX,
            })
            .map_err(|_| Refusal::Unavailable("the ledger is overloaded"))?
        };
        let reply = monoio::time::timeout(LEDGER_REPLY_TIMEOUT, rx)
            .await
            .map_err(|_| Refusal::Unavailable("the ledger did not answer in time"))?
            .map_err(|_| Refusal::Unavailable("the ledger is gone"))?;
        match reply {
            Reply::LeaseGrant {
                entity,
                granted,
                remaining,
                ..
            } => {
                self.shard.borrow_mut().grant(entity, granted, remaining);
                Ok(granted.is_positive())
            }
            other => {
                log::error!("lease request for {entity} answered {other:?}");
                Err(Refusal::Unavailable("the ledger refused a lease request"))
            }
        }
    }

    /// What this worker believes is left at `entity`.
    pub fn available(&self, entity: EntityId) -> Option<Money> {
        self.shard
            .borrow()
            .tightest_remaining(&[(entity, Mode::Strict)])
    }

    /// Tells the ledger this worker refuses a request at `entity` (a 402)
    /// and returns its view of the entity now (for the refusal's details).
    pub async fn refused(&self, entity: EntityId) -> Option<EntityView> {
        let rx = self.link.borrow().refused(entity).ok()?;
        monoio::time::timeout(LEDGER_REPLY_TIMEOUT, rx)
            .await
            .ok()?
            .ok()?
    }

    /// The views of `entities` as of now (a key holder's usage): every
    /// request is queued before any reply is awaited, and the whole wait is
    /// bounded by `timeout`. `Err` (why) when the ledger's queue is full,
    /// the ledger is gone, or it did not answer in time.
    pub async fn views(
        &self,
        entities: &[EntityId],
        timeout: Duration,
    ) -> Result<Vec<Option<EntityView>>, &'static str> {
        let mut asked = Vec::with_capacity(entities.len());
        for &entity in entities {
            let rx = self
                .link
                .borrow()
                .view(entity)
                .map_err(|_| "the ledger is overloaded")?;
            asked.push(rx);
        }
        monoio::time::timeout(timeout, async move {
            let mut views = Vec::with_capacity(asked.len());
            for rx in asked {
                views.push(rx.await.map_err(|_| "the ledger is gone")?);
            }
            Ok(views)
        })
        .await
        .map_err(|_| "the ledger did not answer in time")?
    }

    /// Charges `cost` at every level of the hold, durably (the worker's ring)
    /// before returning. Call before the response's last bytes are written.
    ///
    /// The common path awaits nothing: the settle goes into the ring at
    /// once. Only a full ring waits, in a boxed future of its own, so the
    /// request's future does not carry the charges' room for a rare path.
    pub async fn settle(
        &self,
        mut hold: Hold<'_>,
        request_id: u128,
        cost: Money,
        estimated: bool,
    ) -> Settled {
        let Some(reservation) = hold.reservation.take() else {
            return Settled {
                charged: Money::ZERO,
                remaining: None,
            };
        };
        drop(hold);
        let (remaining, refused) = self.settle_now(reservation, request_id, cost, estimated);
        if let Some(refused) = refused {
            let (e, charges) = *refused;
            Box::pin(self.settle_when_ring_refuses(e, request_id, estimated, charges)).await;
        }
        Settled {
            charged: cost,
            remaining,
        }
    }

    /// Settles in the shard and publishes in the ring, synchronously: the
    /// tightest budget left, and what the ring refused, if it did.
    #[allow(clippy::type_complexity)]
    fn settle_now(
        &self,
        reservation: Reservation,
        request_id: u128,
        cost: Money,
        estimated: bool,
    ) -> (Option<Money>, Option<Box<(PushError, Charges)>>) {
        let mut charges = Charges::new();
        let remaining =
            self.shard
                .borrow_mut()
                .settle_and_remaining(reservation, cost, &mut charges);
        let pushed = self
            .link
            .borrow_mut()
            .settle(request_id, estimated, &charges);
        (remaining, pushed.err().map(|e| Box::new((e, charges))))
    }

    /// The ring refused a settle: while it is full, retry every
    /// [`RING_FULL_RETRY`] for up to [`RING_FULL_WAIT_MAX`]; then, or when
    /// the settle cannot go in a ring (an older build's smaller slots), send
    /// it over the command channel (journaled all the same, without the
    /// ring's crash safety).
    async fn settle_when_ring_refuses(
        &self,
        mut refused: PushError,
        request_id: u128,
        estimated: bool,
        charges: Charges,
    ) {
        let mut waited = Duration::ZERO;
        while matches!(refused, PushError::Full(_)) && waited < RING_FULL_WAIT_MAX {
            monoio::time::sleep(RING_FULL_RETRY).await;
            waited += RING_FULL_RETRY;
            match self
                .link
                .borrow_mut()
                .settle(request_id, estimated, &charges)
            {
                Ok(_) => return,
                Err(e) => refused = e,
            }
        }
        let link = self.link.borrow();
        log::error!(
            "worker {}: {refused} (waited {waited:?}); settling request {request_id:032x} over the command channel",
            link.worker
        );
        let cmd = Command::Settle {
            request_id,
            worker: link.worker,
            estimated,
            charges,
        };
        if let Err(e) = link.tell(cmd) {
            log::error!("request {request_id:032x}: charges NOT recorded: {e} ({charges:?})");
        }
    }
}

/// The worst case of a request: every input token the body can stand for
/// (its length; or `unbounded_input_tokens` when it refers to input it does
/// not hold) at the dearest input rate, plus `output_cap × outputs` at the
/// dearest output rate. `None` on overflow (absurd caps).
pub fn worst_case(
    price: &Price,
    body: &[u8],
    unbounded_input_tokens: u64,
    output_cap: u64,
    outputs: u64,
) -> Option<Money> {
    price.worst_case(
        input_bound(body, unbounded_input_tokens),
        output_cap.checked_mul(outputs)?,
    )
}

/// The input-token bound of `body` (see [`worst_case`]): its length, or,
/// when it points to input it does not hold, `unbounded_input_tokens` (the
/// model's context window, or the configured default) if that is more.
pub fn input_bound(body: &[u8], unbounded_input_tokens: u64) -> u64 {
    let bound = crate::tokens::prompt_upper_bound_tokens(body.len());
    if crate::tokens::prompt_bound_exception(body).is_some() {
        bound.max(unbounded_input_tokens)
    } else {
        bound
    }
}

/// The largest output cap per output, below `cap`, whose worst case fits in
/// `available`; `None` when even [`DEGRADE_OUTPUT_TOKENS_MIN`] does not fit.
pub fn affordable_output_cap(
    price: &Price,
    input_tokens: u64,
    outputs: u64,
    cap: u64,
    available: Money,
) -> Option<u64> {
    let fits = |c: u64| {
        c.checked_mul(outputs)
            .and_then(|total| price.worst_case(input_tokens, total))
            .is_some_and(|w| w <= available)
    };
    if cap <= DEGRADE_OUTPUT_TOKENS_MIN || !fits(DEGRADE_OUTPUT_TOKENS_MIN) {
        return None;
    }
    // Largest c in [MIN, cap) that fits: binary search (worst_case is monotonic).
    let (mut lo, mut hi) = (DEGRADE_OUTPUT_TOKENS_MIN, cap - 1);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

/// The 402 for a refused level, with what the ledger says about it.
pub fn budget_exceeded(level: Option<&Level>, view: Option<&EntityView>) -> ApiError {
    let (kind, name) = level.map_or(("budget", "unknown"), |l| {
        (crate::books::registry::kind_str(l.kind), &*l.name)
    });
    let limit = view.and_then(|v| v.limit_effective);
    let spent = view.map(|v| v.spent);
    let reset_at = view
        .and_then(|v| v.budget.and_then(|b| b.reset).map(|_| v.period.end_ms))
        .map(crate::budget::period::format_rfc3339_ms);
    let mut message = format!("the {kind} {name:?} has exhausted its budget");
    if let (Some(limit), Some(spent)) = (limit, spent) {
        message.push_str(&format!(" (spent ${spent} of ${limit}"));
        match &reset_at {
            Some(at) => message.push_str(&format!("; it resets at {at})")),
            None => message.push_str("; a prepaid budget: top it up)"),
        }
    }
    ApiError::budget_exceeded(
        message,
        crate::error::BudgetDetails {
            entity_kind: kind,
            entity: name.to_string(),
            limit_usd: limit.map(|m| m.to_string()),
            spent_usd: spent.map(|m| m.to_string()),
            reset_at,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: &str, output: &str) -> Price {
        Price {
            input: Money::parse_per_token_from_usd_per_mtok(input).unwrap(),
            output: Money::parse_per_token_from_usd_per_mtok(output).unwrap(),
            cached_input: Money::ZERO,
            cache_write: Money::ZERO,
            reasoning: Money::parse_per_token_from_usd_per_mtok(output).unwrap(),
            long: None,
            free: false,
            context_window: None,
            hidden_reasoning: false,
        }
    }

    #[test]
    fn worst_case_bounds_input_by_bytes_unless_the_body_refers_elsewhere() {
        let p = price("1", "2"); // $1 and $2 per million tokens
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let w = worst_case(&p, body, 200_000, 10, 3).unwrap();
        // body.len() input tokens at 1e-6, 30 output tokens at 2e-6.
        let expected = body.len() as i128 * 1_000_000 + 30 * 2_000_000;
        assert_eq!(w.picodollars(), expected);
        let img = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x"}}]}]}"#;
        assert_eq!(input_bound(img, 200_000), 200_000);
        assert!(worst_case(&p, body, 1, u64::MAX, 2).is_none());
    }

    #[test]
    fn degrade_finds_the_largest_cap_that_fits() {
        let p = price("1", "2");
        // 100 input tokens = 100 µ$; each output token 2 µ$.
        let available = Money::from_picodollars(100 * 1_000_000 + 50 * 2_000_000).unwrap();
        assert_eq!(affordable_output_cap(&p, 100, 1, 1000, available), Some(50));
        assert_eq!(affordable_output_cap(&p, 100, 2, 1000, available), Some(25));
        // Below the minimum, or not lower than the cap: no degrade.
        let tight = Money::from_picodollars(100 * 1_000_000 + 15 * 2_000_000).unwrap();
        assert_eq!(affordable_output_cap(&p, 100, 1, 1000, tight), None);
        assert_eq!(affordable_output_cap(&p, 100, 1, 16, available), None);
        // Exactly the cap minus one when everything but the last token fits.
        let almost = Money::from_picodollars(100 * 1_000_000 + 999 * 2_000_000).unwrap();
        assert_eq!(affordable_output_cap(&p, 100, 1, 1000, almost), Some(999));
    }
}
