//! Phase 2b, choose: the targets a request may be sent to, in the order
//! they are tried. A model served by one provider has one target (tried
//! again only with the provider's next API key); a model group's targets
//! are ordered by its strategy, those whose worst-case input fits their
//! model's context window first, and those cooling down left out while any
//! other is available (tried, soonest-recovering first, only when none is).

use crate::catalog::{Catalog, ModelGroup, Provider, Routed};
use crate::config::groups::Strategy;
use crate::health::{Availability, TargetHealth};
use crate::limits::UPSTREAM_ATTEMPTS_MAX;

/// One place a request may go.
#[derive(Debug, Clone, Copy)]
pub struct Target<'c, 'm> {
    pub provider: &'c Provider,
    /// The model name the provider is sent.
    pub model: &'m str,
    /// A group target's shared health (`None` for a plain route).
    pub health: Option<&'c TargetHealth>,
    /// This request holds the target's one probe after a cooldown.
    probe: bool,
}

/// What the ordering needs to know of a target for this request.
pub struct Fit {
    /// The request's worst-case input fits the target model's window.
    pub fits_window: bool,
    /// The request's worst-case cost at the target model's price, in
    /// picodollars (`None`: unpriced).
    pub worst: Option<i128>,
}

/// The targets of one request, in order.
pub struct Targets<'c, 'm> {
    /// One target (a plain route) is kept inline: no allocation per request
    /// on the common path.
    one: Option<Target<'c, 'm>>,
    many: Vec<Target<'c, 'm>>,
    next: usize,
    /// Attempts the request may make in all.
    pub attempts_max: u32,
    pub group: Option<&'c ModelGroup>,
}

impl<'c: 'm, 'm> Targets<'c, 'm> {
    /// The targets of `routed` for a request for `model`; `fit` tells each
    /// target's window and worst case; `seed` drives the weighted choice.
    pub fn new(
        catalog: &'c Catalog,
        routed: Routed<'c>,
        model: &'m str,
        now_ms: u64,
        seed: u64,
        fit: impl Fn(&str) -> Fit,
    ) -> Targets<'c, 'm> {
        let g = match routed {
            Routed::Provider(p) => {
                return Targets {
                    one: Some(Target {
                        provider: p,
                        model,
                        health: None,
                        probe: false,
                    }),
                    many: Vec::new(),
                    next: 0,
                    attempts_max: p.key_count().clamp(1, UPSTREAM_ATTEMPTS_MAX) as u32,
                    group: None,
                }
            }
            Routed::Group(g) => g,
        };
        let fits: Vec<Fit> = g.targets.iter().map(|t| fit(&t.model)).collect();
        let mut order: Vec<usize> = (0..g.targets.len()).collect();
        match g.strategy {
            Strategy::Weighted => {
                weighted_shuffle(&mut order, |i| g.targets[i].weight, seed);
            }
            // Ties (all idle, most often) go to the faster target.
            Strategy::LeastBusy => order.sort_by_key(|&i| {
                let h = &g.targets[i].health;
                (h.inflight(), h.ttfb_ewma_us())
            }),
            Strategy::LowestLatency => order.sort_by_key(|&i| g.targets[i].health.ttfb_ewma_us()),
            Strategy::Cheapest => order.sort_by_key(|&i| fits[i].worst.unwrap_or(i128::MAX)),
        }
        // Those whose window fits first (all of them if none fits: the
        // provider's answer then says so).
        order.sort_by_key(|&i| !fits[i].fits_window);
        let mut ready = Vec::with_capacity(order.len());
        let mut cooling: Vec<(u64, usize)> = Vec::new();
        for i in order {
            let t = &g.targets[i];
            match t.health.availability(now_ms) {
                Availability::Ready => ready.push((i, false)),
                Availability::Probe => ready.push((i, true)),
                Availability::CoolingDown(until) => cooling.push((until, i)),
            }
        }
        if ready.is_empty() {
            cooling.sort_unstable();
            ready.extend(cooling.into_iter().map(|(_, i)| (i, false)));
        }
        let many: Vec<Target<'c, 'm>> = ready
            .into_iter()
            .map(|(i, probe)| Target {
                provider: catalog.provider(g.targets[i].provider),
                model: &g.targets[i].model,
                health: Some(&g.targets[i].health),
                probe,
            })
            .collect();
        Targets {
            one: None,
            many,
            next: 0,
            attempts_max: (g.retries + 1).min(UPSTREAM_ATTEMPTS_MAX as u32),
            group: Some(g),
        }
    }

    fn list(&self) -> &[Target<'c, 'm>] {
        if self.group.is_some() {
            &self.many
        } else {
            self.one.as_slice()
        }
    }

    /// The next target to try.
    pub fn next_target(&mut self) -> Option<Target<'c, 'm>> {
        let t = self.list().get(self.next).copied()?;
        self.next += 1;
        Some(t)
    }

    /// Whether a target is left after the current one.
    pub fn has_more(&self) -> bool {
        self.next < self.list().len()
    }

    /// Tries the current target again next (its provider's next API key).
    pub fn again(&mut self) {
        self.next = self.next.saturating_sub(1);
        let list = if self.group.is_some() {
            &mut self.many[..]
        } else {
            self.one.as_mut_slice()
        };
        if let Some(t) = list.get_mut(self.next) {
            // A probe is used once.
            t.probe = false;
        }
    }
}

impl Drop for Targets<'_, '_> {
    fn drop(&mut self) {
        // Probes granted to targets never tried go back.
        let list = self.list();
        for t in &list[self.next.min(list.len())..] {
            if t.probe {
                if let Some(h) = t.health {
                    h.release_probe();
                }
            }
        }
    }
}

/// Orders `items` by weighted random choice without replacement: each
/// position goes to a remaining item with probability proportional to its
/// weight (weight 0 items go last, in their order).
fn weighted_shuffle(items: &mut [usize], weight: impl Fn(usize) -> u32, seed: u64) {
    let mut state = seed | 1;
    for pos in 0..items.len() {
        let total: u64 = items[pos..].iter().map(|&i| u64::from(weight(i))).sum();
        if total == 0 {
            return;
        }
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d) % total;
        let mut acc = 0u64;
        for k in pos..items.len() {
            acc += u64::from(weight(items[k]));
            if r < acc {
                items.swap(pos, k);
                // Keep the rest in their configured order.
                items[pos + 1..=k].rotate_right(usize::from(k > pos));
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::weighted_shuffle;

    #[test]
    fn weighted_choice_follows_the_weights() {
        let weights = [3u32, 1, 0];
        let mut first = [0u32; 3];
        for seed in 0..40_000u64 {
            let mut items = [0usize, 1, 2];
            weighted_shuffle(
                &mut items,
                |i| weights[i],
                seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            first[items[0]] += 1;
            // Every item appears once; the weight-0 one is always last.
            let mut sorted = items;
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2]);
            assert_eq!(items[2], 2);
        }
        assert_eq!(first[2], 0);
        let share = f64::from(first[0]) / 40_000.0;
        assert!((0.72..0.78).contains(&share), "{share}");
    }
}
